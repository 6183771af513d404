//! ACPI devices: the power button.

pub mod button;

//! ACPI devices: the power button.

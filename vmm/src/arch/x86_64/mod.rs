//! x86_64 machine: guest-physical layout, boot protocol (PVH), ACPI tables, CPUID, boot registers.
pub mod acpi;
pub mod cpuid;
pub mod layout;
pub mod pvh;
pub mod regs;

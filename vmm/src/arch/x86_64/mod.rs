//! x86_64 machine: guest-physical layout, boot protocols (PVH, Linux bzImage), ACPI tables, CPUID,
//! boot registers.
pub mod acpi;
pub mod cpuid;
pub mod layout;
pub mod linux_boot;
pub mod pvh;
pub mod regs;

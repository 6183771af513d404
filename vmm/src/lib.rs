//! lull-vmm: the microVM monitor that hosts Lull on /dev/kvm.
//!
//! Layers: `arch` (x86 layout, PVH, ACPI, CPUID, boot registers) → `vstate` (KVM VM, vCPUs,
//! guest memory) and `devices` (COM1, ACPI PM) → `machine` (a running VM: boot, restore,
//! pause, snapshot, power button, metrics) and `migration` (live migration, pre-copy) → `api` (REST over a Unix socket) and the CLI.
//! Every stateful piece implements [`persist::Persist`].

pub mod api;
pub mod arch;
pub mod bench;
pub mod cli;
pub mod console;
pub mod devices;
pub mod lazy;
pub mod lazy_bench;
pub mod machine;
pub mod metrics;
pub mod migration;
pub mod persist;
pub mod snapshot;
pub mod tap_bench;
pub mod test_guest;
pub mod testing;
pub mod vstate;

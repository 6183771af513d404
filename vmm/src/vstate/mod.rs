//! KVM-backed VM state: guest memory, the VM (irqchip, PIT, clock) and the vCPUs.
pub mod async_pf;
pub mod dirty_log;
pub mod hypercall;
pub mod memory;
pub mod uffd;
pub mod vcpu;
pub mod vm;

//! Lull's KVM paravirt guest logic: the parts of "running well as a KVM guest" that are
//! protocol rather than hardware access, kept here so they can be tested on the host.
//!
//! A KVM guest learns from CPUID leaf 0x4000_0001 (Linux `Documentation/virt/kvm/x86/cpuid.rst`)
//! which paravirtual interfaces the host offers, and enables each by writing the address of a
//! shared memory area to a KVM-specific MSR (`Documentation/virt/kvm/x86/msr.rst`). The kernel
//! owns the MSR writes, the shared pages and the hypercalls; this crate owns what happens to
//! the values: it is handed raw bytes, words and MSR numbers, and never touches hardware. It
//! is `no_std` + `alloc`, free of `unsafe`, and has no dependencies. The Linux guest code
//! (`arch/x86/kernel/kvm.c`, `kvmclock.c`, `pvclock.c`) was read to understand the ABI; the
//! code here is Lull's own design.
//!
//! | module | ABI | the kernel... |
//! |---|---|---|
//! | [`pvclock`] | `pvclock_vcpu_time_info`, `pvclock_wall_clock`; MSRs `0x4b564d00/01` | reads its record with [`pvclock::read_at_tsc`], turns it into ns with [`pvclock::MonotonicClamp`] (its clocksource), sets realtime from the wall clock, and clears `GUEST_STOPPED` in the watchdog |
//! | [`steal`] | `kvm_steal_time`; MSR `0x4b564d03` | feeds each scheduler clock update through a per-CPU [`steal::StealAccount`] and charges tasks only for time they ran |
//! | [`pv_eoi`] | the PV EOI word; MSR `0x4b564d04` | ends interrupts with [`pv_eoi::guest_eoi`], writing the APIC EOI register only when told |
//! | [`async_pf`] | `kvm_vcpu_pv_apf_data`; MSRs `0x4b564d02/06/07` | keeps one [`async_pf::AsyncPfTable`] behind an IRQ-safe spinlock: #PF "not present" sleeps the task, the ready interrupt wakes it |
//! | [`pv_spinlock`] | `KVM_HC_KICK_CPU`, PV_UNHALT | makes `SpinCell` a [`pv_spinlock::PvTicketLock`]: FIFO tickets whose waiters halt after spinning and are kicked by the unlocker |
//!
//! Each module's documentation says why the mechanism exists, the exact boot-time and
//! run-time calls the kernel makes, and what it must guarantee (memory ordering, copy order of
//! shared records, locking).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod async_pf;
pub mod pv_eoi;
pub mod pv_spinlock;
pub mod pvclock;
pub mod steal;

/// CPUID leaf whose EBX/ECX/EDX spell "KVMKVMKVM\0\0\0" under KVM; EAX is the highest leaf.
pub const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
/// CPUID leaf whose EAX holds the `KVM_FEATURE_*` bits each module names.
pub const KVM_CPUID_FEATURES: u32 = 0x4000_0001;

/// Whether CPUID 0x4000_0000's EBX, ECX, EDX are KVM's signature.
pub fn is_kvm_signature(ebx: u32, ecx: u32, edx: u32) -> bool {
    ebx == u32::from_le_bytes(*b"KVMK")
        && ecx == u32::from_le_bytes(*b"VMKV")
        && edx == u32::from_le_bytes(*b"M\0\0\0")
}

/// Whether `feature` (a `KVM_FEATURE_*` bit number) is set in CPUID 0x4000_0001 EAX.
pub fn has_feature(features_eax: u32, feature: u32) -> bool {
    feature < 32 && features_eax & (1 << feature) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_kvm_signature() {
        // "KVMKVMKVM\0\0\0" as CPUID returns it, little-endian per register.
        assert!(is_kvm_signature(0x4b4d_564b, 0x564b_4d56, 0x0000_004d));
        assert!(!is_kvm_signature(0x7263_694d, 0x666f_736f, 0x7648_2074)); // "Microsoft Hv"
    }

    #[test]
    fn feature_bits() {
        let eax = 1 << pvclock::KVM_FEATURE_CLOCKSOURCE2 | 1 << pv_spinlock::KVM_FEATURE_PV_UNHALT;
        assert!(has_feature(eax, 3) && has_feature(eax, 7));
        assert!(!has_feature(eax, steal::KVM_FEATURE_STEAL_TIME));
        assert!(!has_feature(u32::MAX, 40));
    }
}

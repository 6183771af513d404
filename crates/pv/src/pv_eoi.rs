//! PV EOI: ending an interrupt without the APIC write (and its VM exit), when the host allows.
//!
//! Every interrupt handler ends with a write to the local APIC's EOI register, and under a
//! hypervisor without APIC virtualization that write is a VM exit. KVM's PV EOI (Linux
//! `Documentation/virt/kvm/x86/msr.rst`, MSR_KVM_PV_EOI_EN) shares one 32-bit word per vCPU:
//! when the host injects an interrupt whose EOI has no side effect it needs to see right away,
//! it sets bit 0; the guest, at EOI time, tests and clears that bit in one instruction. If the
//! bit was set the EOI is done: the host notices the cleared bit at its next exit and retires
//! the vector then. If not, the guest must write the EOI register as usual. The host only
//! touches the word while this vCPU is outside guest mode, so the guest needs neither a `lock`
//! prefix nor barriers, only a single read-modify-write instruction (here an atomic `fetch_and`
//! with relaxed ordering; a non-atomic read then write could be split by an exit between them).
//!
//! [`host::SimLapic`] models the host side (a local APIC with IRR, ISR and TMR, and KVM's rule
//! for when the bit may be set: the injected vector is the only one in service, nothing is
//! pending behind it, and it is edge-triggered, because a level-triggered EOI must reach the
//! I/O APIC). The tests drive it with the guest side through random interrupt sequences.
//!
//! What the kernel does with this module: per vCPU, if CPUID 0x4000_0001 EAX has
//! [`KVM_FEATURE_PV_EOI`], keep a zeroed `AtomicU32` (4-byte aligned, in RAM), write
//! [`pv_eoi_msr_value`] of its physical address to [`MSR_KVM_PV_EOI_EN`], and make the APIC
//! EOI hook `if guest_eoi(word) == WriteApicEoi { apic.write_eoi() }`. Write
//! [`PV_EOI_DISABLE`] to the MSR before the word's memory is reused (kexec, CPU offline).

use core::sync::atomic::{AtomicU32, Ordering};

use crate::pvclock::{aligned, Misaligned};

/// MSR that registers the PV EOI word (4-byte aligned address, bit 0 = enable, bit 1 reserved).
pub const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;
/// CPUID 0x4000_0001 EAX bit: [`MSR_KVM_PV_EOI_EN`] exists.
pub const KVM_FEATURE_PV_EOI: u32 = 6;
/// The bit of the shared word that the host sets when the EOI write may be skipped.
pub const KVM_PV_EOI_BIT: u32 = 1 << 0;
/// MSR value that turns PV EOI off.
pub const PV_EOI_DISABLE: u64 = 0;

/// Value for [`MSR_KVM_PV_EOI_EN`]: the word's address with the enable bit.
pub fn pv_eoi_msr_value(gpa: u64) -> Result<u64, Misaligned> {
    Ok(aligned(gpa, 4)? | 1)
}

/// What the guest's EOI must still do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EoiAction {
    /// The host's bit was set and is now cleared: the EOI is done, no APIC write.
    Skipped,
    /// No bit: write the local APIC's EOI register.
    WriteApicEoi,
}

/// The shared PV EOI word, as the guest sees it.
pub trait EoiWord {
    /// Clears [`KVM_PV_EOI_BIT`] and returns whether it was set, in one instruction.
    fn test_and_clear_pending(&self) -> bool;
}

impl EoiWord for AtomicU32 {
    fn test_and_clear_pending(&self) -> bool {
        // Relaxed: the host reads the word only after this vCPU exits, which orders everything.
        self.fetch_and(!KVM_PV_EOI_BIT, Ordering::Relaxed) & KVM_PV_EOI_BIT != 0
    }
}

/// The guest's EOI: skip the APIC write if the host allowed it for this interrupt.
pub fn guest_eoi(word: &impl EoiWord) -> EoiAction {
    if word.test_and_clear_pending() {
        EoiAction::Skipped
    } else {
        EoiAction::WriteApicEoi
    }
}

pub mod host {
    //! A host-side model of PV EOI: a local APIC whose VM entry may set the guest's bit and
    //! whose VM exit retires the vector the guest ended through it. Written for tests (here
    //! and possibly Lull's VMM); it follows KVM's rules, not its code.

    use core::sync::atomic::{AtomicU32, Ordering};

    use super::KVM_PV_EOI_BIT;

    /// A 256-bit vector register (IRR, ISR, TMR).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    struct Bits([u64; 4]);

    impl Bits {
        fn set(&mut self, v: u8) {
            self.0[usize::from(v / 64)] |= 1 << (v % 64);
        }
        fn clear(&mut self, v: u8) {
            self.0[usize::from(v / 64)] &= !(1 << (v % 64));
        }
        fn get(&self, v: u8) -> bool {
            self.0[usize::from(v / 64)] & (1 << (v % 64)) != 0
        }
        fn highest(&self) -> Option<u8> {
            (0..4).rev().find_map(|i| {
                let word = self.0[i];
                // `i < 4` and the bit index `< 64`, so the vector fits in a u8.
                (word != 0).then(|| (i * 64 + 63 - word.leading_zeros() as usize) as u8)
            })
        }
        fn count(&self) -> u32 {
            self.0.iter().map(|w| w.count_ones()).sum()
        }
    }

    /// The guest wrote the EOI register with nothing in service: an EOI too many.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct SpuriousEoi;

    /// How an in-service vector was retired.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Retired {
        /// The vector that left the ISR.
        pub vector: u8,
        /// Whether it was level-triggered (the EOI is forwarded to the I/O APIC).
        pub level: bool,
        /// Whether the guest ended it through the PV word rather than the EOI register.
        pub via_pv: bool,
    }

    /// One vCPU's local APIC as the host emulates it, with PV EOI enabled.
    #[derive(Clone, Debug, Default)]
    pub struct SimLapic {
        irr: Bits,
        isr: Bits,
        tmr: Bits,
        /// The host set the guest's bit at the last entry and has not looked at it since.
        pv_pending: Option<u8>,
    }

    impl SimLapic {
        /// Nothing pending, nothing in service.
        pub fn new() -> Self {
            Self::default()
        }

        /// A device asserts `vector` (32..=255); a vector already pending is coalesced, as on
        /// hardware. Returns whether it became pending (false when coalesced).
        pub fn raise(&mut self, vector: u8, level: bool) -> bool {
            assert!(vector >= 32, "vectors 0-31 are exceptions");
            let newly = !self.irr.get(vector);
            self.irr.set(vector);
            if level {
                self.tmr.set(vector);
            } else {
                self.tmr.clear(vector);
            }
            newly
        }

        /// VM entry: injects the highest pending vector if its priority class beats the
        /// highest in service and the guest accepts interrupts, then decides whether the
        /// guest may end the (single) in-service vector through the PV word. Returns the
        /// injected vector.
        pub fn enter(&mut self, word: &AtomicU32, interrupts_enabled: bool) -> Option<u8> {
            let mut injected = None;
            if let Some(v) = self.irr.highest() {
                let beats = self.isr.highest().is_none_or(|s| v >> 4 > s >> 4);
                if interrupts_enabled && beats {
                    self.irr.clear(v);
                    self.isr.set(v);
                    injected = Some(v);
                }
            }
            // KVM's rule: only when the EOI needs no immediate host work — one vector in
            // service (so EOI retires exactly it), none pending (EOI would have to re-evaluate
            // and inject it), edge-triggered (a level EOI must reach the I/O APIC now).
            if let Some(v) = self.isr.highest() {
                if self.isr.count() == 1 && self.irr.count() == 0 && !self.tmr.get(v) {
                    word.fetch_or(KVM_PV_EOI_BIT, Ordering::Relaxed);
                    self.pv_pending = Some(v);
                }
            }
            injected
        }

        /// VM exit: if the bit set at entry was cleared by the guest, the guest has ended the
        /// vector and it is retired now; if it is still set, the host takes it back (the next
        /// entry decides again).
        pub fn exit(&mut self, word: &AtomicU32) -> Option<Retired> {
            let vector = self.pv_pending.take()?;
            let still_set = word.fetch_and(!KVM_PV_EOI_BIT, Ordering::Relaxed) & KVM_PV_EOI_BIT;
            if still_set != 0 {
                return None;
            }
            debug_assert_eq!(self.isr.highest(), Some(vector));
            self.isr.clear(vector);
            Some(Retired {
                vector,
                level: false,
                via_pv: true,
            })
        }

        /// The guest wrote the EOI register (an exit: call [`exit`](Self::exit) first).
        /// Retires the highest vector in service.
        pub fn apic_eoi(&mut self) -> Result<Retired, SpuriousEoi> {
            let vector = self.isr.highest().ok_or(SpuriousEoi)?;
            self.isr.clear(vector);
            Ok(Retired {
                vector,
                level: self.tmr.get(vector),
                via_pv: false,
            })
        }

        /// The highest vector in service.
        pub fn highest_in_service(&self) -> Option<u8> {
            self.isr.highest()
        }

        /// How many vectors are in service.
        pub fn in_service_count(&self) -> u32 {
            self.isr.count()
        }

        /// How many vectors are pending.
        pub fn pending_count(&self) -> u32 {
            self.irr.count()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host::SimLapic;
    use super::*;

    #[test]
    fn msr_value_is_address_plus_enable() {
        assert_eq!(pv_eoi_msr_value(0x7000_0004), Ok(0x7000_0005));
        assert!(pv_eoi_msr_value(0x7000_0006).is_err());
    }

    #[test]
    fn set_bit_is_consumed_once() {
        let word = AtomicU32::new(KVM_PV_EOI_BIT);
        assert_eq!(guest_eoi(&word), EoiAction::Skipped);
        assert_eq!(word.load(Ordering::Relaxed), 0, "the clear is the EOI");
        assert_eq!(guest_eoi(&word), EoiAction::WriteApicEoi);
    }

    #[test]
    fn other_bits_of_the_word_are_left_alone() {
        let word = AtomicU32::new(0xF0 | KVM_PV_EOI_BIT);
        assert_eq!(guest_eoi(&word), EoiAction::Skipped);
        assert_eq!(word.load(Ordering::Relaxed), 0xF0);
    }

    #[test]
    fn host_sets_the_bit_only_for_a_lone_edge_vector() {
        let word = AtomicU32::new(0);
        let mut lapic = SimLapic::new();
        lapic.raise(0x40, false);
        assert_eq!(lapic.enter(&word, true), Some(0x40));
        assert_eq!(word.load(Ordering::Relaxed), KVM_PV_EOI_BIT);
        // Guest ends it through the word; the host retires it at the next exit.
        assert_eq!(guest_eoi(&word), EoiAction::Skipped);
        let retired = lapic.exit(&word).unwrap();
        assert_eq!((retired.vector, retired.via_pv), (0x40, true));
        assert_eq!(lapic.in_service_count(), 0);

        // Level-triggered: never through the word.
        lapic.raise(0x50, true);
        assert_eq!(lapic.enter(&word, true), Some(0x50));
        assert_eq!(guest_eoi(&word), EoiAction::WriteApicEoi);
        assert_eq!(lapic.exit(&word), None);
        assert!(lapic.apic_eoi().unwrap().level);

        // Something pending behind the in-service vector: no bit either.
        lapic.raise(0x60, false);
        lapic.raise(0x61, false);
        assert_eq!(lapic.enter(&word, true), Some(0x61));
        assert_eq!(word.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_unused_bit_is_taken_back_at_exit() {
        let word = AtomicU32::new(0);
        let mut lapic = SimLapic::new();
        lapic.raise(0x40, false);
        lapic.enter(&word, true);
        // Exit before the handler finished: the host clears the bit, nothing is retired.
        assert_eq!(lapic.exit(&word), None);
        assert_eq!(word.load(Ordering::Relaxed), 0);
        assert_eq!(lapic.in_service_count(), 1);
        // Next entry offers it again.
        lapic.enter(&word, true);
        assert_eq!(guest_eoi(&word), EoiAction::Skipped);
        assert!(lapic.exit(&word).is_some());
    }
}

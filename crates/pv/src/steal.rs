//! Steal time: how long this vCPU was runnable but not running because the host ran something
//! else.
//!
//! A guest's clock keeps going while its vCPU waits for a host CPU, so without help the fair
//! scheduler charges that wait to whichever task happened to be current: a task on a vCPU the
//! host keeps preempting looks like it ran far longer than it did and loses its share. KVM
//! publishes a per-vCPU `struct kvm_steal_time` (Linux `Documentation/virt/kvm/x86/msr.rst`,
//! MSR_KVM_STEAL_TIME) whose `steal` counter grows by the host's run-queue delay of the vCPU
//! thread; the guest subtracts its growth from each slice. The same record carries the
//! `preempted` byte the host sets while the vCPU is scheduled out (spinning on a lock held by a
//! preempted vCPU is pointless; `vcpu_is_preempted`) and the "flush TLB on resume" request of
//! PV TLB shootdown.
//!
//! What the kernel does with this module:
//!
//! * boot, per vCPU, if CPUID 0x4000_0001 EAX has [`KVM_FEATURE_STEAL_TIME`]: zero a 64-byte
//!   aligned record, write [`steal_time_msr_value`] to [`MSR_KVM_STEAL_TIME`].
//! * scheduler clock update: [`read_consistent`] the record, then
//!   [`StealAccount::charge_slice`] with the ns the current task seemed to run; charge the
//!   result. ([`charge`] is the same rule without the carry, for one-off uses.)
//! * `/proc/stat`'s steal column: [`StealAccount::total`] through [`ns_to_user_hz`].

use crate::pvclock::{aligned, u32_at, u64_at, Misaligned};

/// MSR that registers this vCPU's steal time record (64-byte aligned address, bit 0 = enable).
pub const MSR_KVM_STEAL_TIME: u32 = 0x4b56_4d03;
/// CPUID 0x4000_0001 EAX bit: [`MSR_KVM_STEAL_TIME`] exists.
pub const KVM_FEATURE_STEAL_TIME: u32 = 5;
/// `preempted` bit: the vCPU is scheduled out by the host right now.
pub const KVM_VCPU_PREEMPTED: u8 = 1 << 0;
/// `preempted` bit: the host asks for a TLB flush when the vCPU resumes (PV TLB flush).
pub const KVM_VCPU_FLUSH_TLB: u8 = 1 << 1;
/// Size of `struct kvm_steal_time`.
pub const STEAL_TIME_SIZE: usize = 64;
/// Offset of the `preempted` byte (for a live `AtomicU8` view of it).
pub const PREEMPTED_OFFSET: usize = 16;
/// `/proc/stat` time unit: 100 ticks per second whatever the kernel's HZ.
pub const USER_HZ: u64 = 100;

/// Value for [`MSR_KVM_STEAL_TIME`]: the record's address with the enable bit.
pub fn steal_time_msr_value(gpa: u64) -> Result<u64, Misaligned> {
    Ok(aligned(gpa, 64)? | 1)
}

/// One consistent copy of `struct kvm_steal_time` (steal u64, version u32, flags u32,
/// preempted u8, `pad: [u8; 3]`, `pad: [u32; 11]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StealTime {
    /// Total ns this vCPU was runnable but not running, since registration.
    pub steal: u64,
    /// Sequence counter: odd while the host updates the record.
    pub version: u32,
    /// Reserved by the ABI (zero today).
    pub flags: u32,
    /// [`KVM_VCPU_PREEMPTED`], [`KVM_VCPU_FLUSH_TLB`].
    pub preempted: u8,
}

impl StealTime {
    /// Parses the record's 64 little-endian bytes.
    pub fn from_bytes(bytes: &[u8; STEAL_TIME_SIZE]) -> Self {
        Self {
            steal: u64_at(bytes, 0),
            version: u32_at(bytes, 8),
            flags: u32_at(bytes, 12),
            preempted: bytes[PREEMPTED_OFFSET],
        }
    }

    /// The record's bytes (pads zero).
    pub fn to_bytes(&self) -> [u8; STEAL_TIME_SIZE] {
        let mut bytes = [0; STEAL_TIME_SIZE];
        bytes[0..8].copy_from_slice(&self.steal.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.version.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.flags.to_le_bytes());
        bytes[PREEMPTED_OFFSET] = self.preempted;
        bytes
    }

    /// Whether the host had this vCPU scheduled out when the record was read.
    pub fn is_preempted(&self) -> bool {
        self.preempted & KVM_VCPU_PREEMPTED != 0
    }

    /// Whether the host asked for a TLB flush on resume.
    pub fn should_flush_tlb(&self) -> bool {
        self.preempted & KVM_VCPU_FLUSH_TLB != 0
    }
}

/// Seqlock read of the record: `read_bytes` copies the 64 bytes in ascending address order
/// (volatile loads); it is called until a copy's even `version` is seen again by the next
/// copy. `steal` (which sits before `version`) is taken from the later copy, the one loaded
/// between the two equal versions. Unbounded like the pvclock reader, for the same reason: the
/// host updates the record only while this vCPU is out of guest mode.
pub fn read_consistent(read_bytes: impl FnMut() -> [u8; STEAL_TIME_SIZE]) -> StealTime {
    match crate::pvclock::seqlock_read(8, read_bytes, || (), None) {
        Ok((bytes, ())) => StealTime::from_bytes(&bytes),
        Err(_) => unreachable!("an unbounded read only returns consistent copies"),
    }
}

/// The time a task really ran: `ran_ns` minus what the host stole during it, never below 0
/// (a steal reading larger than the slice means the steal straddled the slice's start: none
/// of the slice is charged).
pub fn charge(ran_ns: u64, steal_delta_ns: u64) -> u64 {
    ran_ns.saturating_sub(steal_delta_ns)
}

/// Nanoseconds to `/proc/stat` ticks ([`USER_HZ`]), rounded down.
pub fn ns_to_user_hz(ns: u64) -> u64 {
    ns / (1_000_000_000 / USER_HZ)
}

/// Default cap on steal carried into later slices; see [`StealAccount::charge_slice`].
pub const DEFAULT_CARRY_LIMIT_NS: u64 = 1_000_000_000;

/// One vCPU's steal bookkeeping: successive readings of the host's counter become deltas.
///
/// Kept per CPU and touched only by its CPU (`&mut self`), so no atomics. The host counter
/// only grows while the record stays registered, but a restore from a snapshot or a migration
/// to a host that re-registers the record can bring it back to a smaller value: that reading
/// becomes the new baseline (delta 0) instead of an enormous wrapped delta that would make
/// every task's time free for centuries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StealAccount {
    last: Option<u64>,
    total: u64,
    pending: u64,
    carry_limit: u64,
    resets: u32,
}

impl Default for StealAccount {
    fn default() -> Self {
        Self::new()
    }
}

impl StealAccount {
    /// No reading yet: the first [`observe`](Self::observe) only sets the baseline.
    pub const fn new() -> Self {
        Self::with_carry_limit(DEFAULT_CARRY_LIMIT_NS)
    }

    /// As [`new`](Self::new), carrying at most `carry_limit_ns` of unconsumed steal.
    pub const fn with_carry_limit(carry_limit_ns: u64) -> Self {
        Self {
            last: None,
            total: 0,
            pending: 0,
            carry_limit: carry_limit_ns,
            resets: 0,
        }
    }

    /// Steal since the previous reading; 0 for the first reading and for a reading below the
    /// previous one (a reset: it becomes the baseline).
    pub fn observe(&mut self, steal_reading: u64) -> u64 {
        let delta = match self.last {
            Some(last) if steal_reading >= last => steal_reading - last,
            Some(_) => {
                self.resets = self.resets.saturating_add(1);
                0
            }
            None => 0,
        };
        self.last = Some(steal_reading);
        self.total = self.total.saturating_add(delta);
        delta
    }

    /// The scheduler's step: takes a new reading, and returns how much of `ran_ns` to charge.
    ///
    /// Steal larger than the slice is not lost but carried to the next slices (as Linux does:
    /// the host updates the counter at VM entry, so steal that happened just before a slice is
    /// often reported inside it), up to the carry limit, so that a host reporting absurd steal
    /// can make at most that much run time free.
    pub fn charge_slice(&mut self, ran_ns: u64, steal_reading: u64) -> u64 {
        let delta = self.observe(steal_reading);
        let pending = self.pending.saturating_add(delta);
        let consumed = pending.min(ran_ns);
        self.pending = (pending - consumed).min(self.carry_limit);
        charge(ran_ns, consumed)
    }

    /// Steal accumulated since the first reading (resets do not subtract), in ns.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Steal reported but not yet subtracted from a slice.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// How many times the host counter went backwards.
    pub fn resets(&self) -> u32 {
        self.resets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_abi_layout() {
        let mut bytes = [0xAAu8; 64];
        bytes[0..8].copy_from_slice(&123_456_789u64.to_le_bytes());
        bytes[8..12].copy_from_slice(&4u32.to_le_bytes());
        bytes[12..16].copy_from_slice(&0u32.to_le_bytes());
        bytes[16] = KVM_VCPU_PREEMPTED | KVM_VCPU_FLUSH_TLB;
        let st = StealTime::from_bytes(&bytes);
        assert_eq!(
            st,
            StealTime {
                steal: 123_456_789,
                version: 4,
                flags: 0,
                preempted: 3
            }
        );
        assert!(st.is_preempted() && st.should_flush_tlb());
        assert_eq!(StealTime::from_bytes(&st.to_bytes()), st);
    }

    #[test]
    fn msr_value_needs_64_byte_alignment() {
        assert_eq!(steal_time_msr_value(0x3040), Ok(0x3041));
        assert!(steal_time_msr_value(0x3044).is_err());
    }

    fn copies(list: Vec<StealTime>) -> impl FnMut() -> [u8; 64] {
        let mut at = 0;
        move || {
            let copy = list[at.min(list.len() - 1)].to_bytes();
            at += 1;
            copy
        }
    }

    fn st(steal: u64, version: u32) -> StealTime {
        StealTime {
            steal,
            version,
            ..StealTime::default()
        }
    }

    #[test]
    fn seqlock_read_retries_odd_and_changed_versions() {
        let got = read_consistent(copies(vec![
            st(1, 3),
            st(2, 3),
            st(5, 4),
            st(7, 6),
            st(7, 6),
        ]));
        assert_eq!((got.steal, got.version), (7, 6));
    }

    #[test]
    fn steal_is_taken_from_between_the_two_versions() {
        // `steal` precedes `version`: in the first copy it was loaded before the version that
        // validated it, so the second copy's (loaded between the two) is the one returned.
        let got = read_consistent(copies(vec![st(100, 8), st(150, 8)]));
        assert_eq!(got.steal, 150);
    }

    #[test]
    fn deltas_are_differences_of_readings() {
        let mut acct = StealAccount::new();
        assert_eq!(acct.observe(1_000), 0, "first reading is the baseline");
        assert_eq!(acct.observe(1_000), 0);
        assert_eq!(acct.observe(4_500), 3_500);
        assert_eq!(acct.total(), 3_500);
    }

    #[test]
    fn a_counter_reset_becomes_the_new_baseline() {
        let mut acct = StealAccount::new();
        acct.observe(100);
        assert_eq!(acct.observe(300), 200);
        assert_eq!(acct.observe(50), 0, "restored VM: counter went back");
        assert_eq!(acct.observe(80), 30, "deltas resume from the new baseline");
        assert_eq!((acct.total(), acct.resets()), (230, 1));
    }

    #[test]
    fn charge_subtracts_steal_and_clamps_at_zero() {
        assert_eq!(charge(1_000_000, 250_000), 750_000);
        assert_eq!(charge(1_000_000, 0), 1_000_000);
        assert_eq!(charge(1_000_000, 1_000_000), 0);
        assert_eq!(charge(1_000_000, 5_000_000), 0);
    }

    #[test]
    fn steal_beyond_a_slice_is_carried_up_to_the_limit() {
        let mut acct = StealAccount::with_carry_limit(2_000);
        acct.observe(0);
        // 5000 stolen, 1000 run: nothing charged, 4000 left, capped to 2000.
        assert_eq!(acct.charge_slice(1_000, 5_000), 0);
        assert_eq!(acct.pending(), 2_000);
        // No new steal: the carried 2000 eats the next 1500-ns slice and 500 of another.
        assert_eq!(acct.charge_slice(1_500, 5_000), 0);
        assert_eq!(acct.charge_slice(1_500, 5_000), 1_000);
        assert_eq!(acct.charge_slice(1_500, 5_000), 1_500);
        // A reset neither charges nor credits anything.
        assert_eq!(acct.charge_slice(1_500, 10), 1_500);
    }

    #[test]
    fn user_hz_ticks_are_ten_milliseconds() {
        assert_eq!(ns_to_user_hz(9_999_999), 0);
        assert_eq!(ns_to_user_hz(10_000_000), 1);
        assert_eq!(ns_to_user_hz(1_234_000_000_000), 123_400);
    }
}

//! kvmclock: the per-vCPU `pvclock_vcpu_time_info` page and the boot wall clock.
//!
//! KVM publishes, for each vCPU, a 32-byte record saying "at TSC value `tsc_timestamp` the
//! guest's system time was `system_time` ns, and one TSC tick is `mul / 2^32 * 2^shift` ns".
//! The guest extrapolates from it with its own `rdtsc`, so reading the clock costs no exit. The
//! host rewrites the record (on vCPU migration between host CPUs, on frequency changes, after the
//! VM was paused) under a sequence counter, exactly like a seqlock: `version` is odd while an
//! update is in progress and changes across one. Sources: Linux's
//! `Documentation/virt/kvm/x86/msr.rst` (MSR_KVM_SYSTEM_TIME_NEW, MSR_KVM_WALL_CLOCK_NEW) and
//! the reader in `arch/x86/kernel/pvclock.c`; the code here is Lull's own.
//!
//! What the kernel does with this module:
//!
//! * boot: if CPUID 0x4000_0001 EAX has [`KVM_FEATURE_CLOCKSOURCE2`], write
//!   [`system_time_msr_value`] of each vCPU's record to [`MSR_KVM_SYSTEM_TIME_NEW`] on that vCPU,
//!   and [`wall_clock_msr_value`] to [`MSR_KVM_WALL_CLOCK_NEW`] once; trust the record's
//!   [`PVCLOCK_TSC_STABLE_BIT`] only if [`KVM_FEATURE_CLOCKSOURCE_STABLE_BIT`] is also set.
//! * clock read: [`read_at_tsc`] (the closure copies the 32 bytes with volatile loads, in
//!   address order; the TSC is read inside the same read section), then
//!   [`MonotonicClamp::read`].
//! * realtime at boot: [`PvclockWallClock::read_consistent`], then
//!   [`PvclockWallClock::realtime`] with the system time just read.
//! * watchdog: [`take_guest_stopped`] on the live flags byte; if it returns `true` the VM was
//!   paused by the host, and the soft-lockup/RCU stall watchdogs must be touched, not fired.

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// MSR that registers the boot wall clock record (4-byte aligned guest-physical address).
pub const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
/// MSR that registers this vCPU's time record (4-byte aligned address, bit 0 = enable).
pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
/// CPUID 0x4000_0001 EAX bit: the two MSRs above exist.
pub const KVM_FEATURE_CLOCKSOURCE2: u32 = 3;
/// CPUID 0x4000_0001 EAX bit: the record's [`PVCLOCK_TSC_STABLE_BIT`] may be trusted.
pub const KVM_FEATURE_CLOCKSOURCE_STABLE_BIT: u32 = 24;

/// Record flag: readings on different vCPUs are mutually monotonic (no clamp needed).
pub const PVCLOCK_TSC_STABLE_BIT: u8 = 1 << 0;
/// Record flag: the host paused the VM; the guest clears it after touching its watchdogs.
pub const PVCLOCK_GUEST_STOPPED: u8 = 1 << 1;

/// Size of `struct pvclock_vcpu_time_info`.
pub const VCPU_TIME_INFO_SIZE: usize = 32;
/// Offset of the `flags` byte in the time record (for [`take_guest_stopped`]).
pub const VCPU_TIME_INFO_FLAGS_OFFSET: usize = 29;
/// Size of `struct pvclock_wall_clock` (packed).
pub const WALL_CLOCK_SIZE: usize = 12;

const NSEC_PER_SEC: u64 = 1_000_000_000;

/// An address given to a registration MSR is not aligned as the ABI requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Misaligned {
    /// The address refused.
    pub gpa: u64,
    /// The alignment the MSR requires, in bytes.
    pub required: u64,
}

impl core::fmt::Display for Misaligned {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "guest-physical address {:#x} is not {}-byte aligned",
            self.gpa, self.required
        )
    }
}

/// Checks `gpa` against `align` (a power of two) and returns it.
pub(crate) fn aligned(gpa: u64, align: u64) -> Result<u64, Misaligned> {
    if gpa & (align - 1) == 0 {
        Ok(gpa)
    } else {
        Err(Misaligned {
            gpa,
            required: align,
        })
    }
}

/// Value for [`MSR_KVM_SYSTEM_TIME_NEW`]: the record's address with the enable bit.
pub fn system_time_msr_value(gpa: u64) -> Result<u64, Misaligned> {
    Ok(aligned(gpa, 4)? | 1)
}

/// Value for [`MSR_KVM_WALL_CLOCK_NEW`]: the wall clock record's address (no enable bit; the
/// host fills the record once per write).
pub fn wall_clock_msr_value(gpa: u64) -> Result<u64, Misaligned> {
    aligned(gpa, 4)
}

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// TSC ticks → nanoseconds as the ABI defines it: shift `delta` left by `shift` (right when
/// negative), then multiply by `mul` and drop 32 fraction bits.
///
/// Linux shifts in 64 bits and multiplies in 128; this does both in 128 bits, so a large
/// delta with a positive shift is exact instead of losing its top bits. A result beyond
/// `u64::MAX` ns (585 years) saturates.
pub fn scale_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    let delta = u128::from(delta);
    let shifted = if shift < 0 {
        // Shifting right by 64 or more leaves nothing (`checked_shr` only refuses ≥ 128).
        delta
            .checked_shr(u32::from(shift.unsigned_abs()))
            .unwrap_or(0)
    } else {
        // `delta < 2^64`: any shift up to 63 fits in 128 bits; the host uses at most ~32.
        match delta.checked_shl(u32::from(shift.unsigned_abs())) {
            Some(v) if shift < 64 => v,
            _ => return u64::MAX,
        }
    };
    // `shifted < 2^127` and `mul < 2^32` can overflow u128 only for shifts above 31.
    match shifted.checked_mul(u128::from(mul)) {
        Some(product) => u64::try_from(product >> 32).unwrap_or(u64::MAX),
        None => u64::MAX,
    }
}

/// One consistent copy of `struct pvclock_vcpu_time_info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PvclockSnapshot {
    /// Sequence counter: odd while the host is updating the record.
    pub version: u32,
    /// TSC value at which `system_time` was taken.
    pub tsc_timestamp: u64,
    /// Guest system time (ns since the VM's clock started) at `tsc_timestamp`.
    pub system_time: u64,
    /// TSC → ns multiplier, a 32.32 fixed-point fraction applied after the shift.
    pub tsc_to_system_mul: u32,
    /// Power-of-two pre-scale of the TSC delta; negative means shift right.
    pub tsc_shift: i8,
    /// [`PVCLOCK_TSC_STABLE_BIT`], [`PVCLOCK_GUEST_STOPPED`].
    pub flags: u8,
}

impl PvclockSnapshot {
    /// Parses the record's 32 little-endian bytes (layout: version u32, pad u32,
    /// tsc_timestamp u64, system_time u64, tsc_to_system_mul u32, tsc_shift i8, flags u8,
    /// `pad: [u8; 2]`).
    pub fn from_bytes(bytes: &[u8; VCPU_TIME_INFO_SIZE]) -> Self {
        Self {
            version: u32_at(bytes, 0),
            tsc_timestamp: u64_at(bytes, 8),
            system_time: u64_at(bytes, 16),
            tsc_to_system_mul: u32_at(bytes, 24),
            tsc_shift: i8::from_le_bytes([bytes[28]]),
            flags: bytes[29],
        }
    }

    /// The record's bytes (pads zero); what a host (or a test) writes.
    pub fn to_bytes(&self) -> [u8; VCPU_TIME_INFO_SIZE] {
        let mut bytes = [0; VCPU_TIME_INFO_SIZE];
        bytes[0..4].copy_from_slice(&self.version.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.tsc_timestamp.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.system_time.to_le_bytes());
        bytes[24..28].copy_from_slice(&self.tsc_to_system_mul.to_le_bytes());
        bytes[28] = self.tsc_shift.to_le_bytes()[0];
        bytes[29] = self.flags;
        bytes
    }

    /// Guest system time in ns when the TSC reads `tsc`.
    ///
    /// The delta is taken modulo 2^64 as the ABI does, so `tsc` must not be below
    /// `tsc_timestamp`: read it after copying the record, on the vCPU that owns the record
    /// (see [`read_at_tsc`]). The sum saturates.
    pub fn nanoseconds_at(&self, tsc: u64) -> u64 {
        let delta = tsc.wrapping_sub(self.tsc_timestamp);
        self.system_time
            .saturating_add(scale_delta(delta, self.tsc_to_system_mul, self.tsc_shift))
    }

    /// Whether the host says readings are monotonic across vCPUs (only meaningful when CPUID
    /// has [`KVM_FEATURE_CLOCKSOURCE_STABLE_BIT`]).
    pub fn tsc_stable(&self) -> bool {
        self.flags & PVCLOCK_TSC_STABLE_BIT != 0
    }

    /// Whether the host paused the VM since the flag was last cleared.
    pub fn guest_stopped(&self) -> bool {
        self.flags & PVCLOCK_GUEST_STOPPED != 0
    }
}

/// The host kept the record under update for every one of the allowed tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Torn {
    /// How many copies were taken.
    pub tries: u32,
}

/// Seqlock read of a record whose `version` is the u32 at `version_at`: copies until one copy had
/// an even version that the next copy still shows, and returns that copy.
///
/// `read` must copy the record in ascending address order with loads that are not reordered
/// with each other (x86 does not reorder loads; volatile reads keep the compiler from doing so),
/// so the next copy's version is loaded after this copy's fields: that is the seqlock's
/// "version, fields, version" sequence. For a record whose version is not first (steal time),
/// the fields before it are taken from the next copy, which loaded them between the two
/// versions. `Err` when `max_tries` copies were not enough.
///
/// `inside` runs between a copy and the next one, i.e. inside the read section: its result is
/// returned with the copy it was taken under.
pub(crate) fn seqlock_read<const N: usize, T>(
    version_at: usize,
    mut read: impl FnMut() -> [u8; N],
    mut inside: impl FnMut() -> T,
    max_tries: Option<u32>,
) -> Result<([u8; N], T), Torn> {
    let mut copy = read();
    let mut tries = 1u32;
    loop {
        let taken = inside();
        let next = read();
        tries = tries.saturating_add(1);
        let version = u32_at(&copy, version_at);
        if version & 1 == 0 && version == u32_at(&next, version_at) {
            // The bytes loaded between the two equal versions: this copy's from the version
            // on, and the next copy's before it.
            copy[..version_at].copy_from_slice(&next[..version_at]);
            return Ok((copy, taken));
        }
        if max_tries.is_some_and(|max| tries >= max) {
            return Err(Torn { tries });
        }
        copy = next;
    }
}

/// Reads the time record consistently (see [`try_read_consistent`] for the copy rules).
///
/// Unbounded, as Linux's reader is: the host updates a vCPU's record only while that vCPU is
/// outside guest mode, so a reader of its own record retries only if it migrated mid-read, and
/// a host that kept `version` odd forever could as well never run the vCPU. Use
/// [`try_read_consistent`] where a bound matters (e.g. reading another vCPU's record).
pub fn read_consistent(read_bytes: impl FnMut() -> [u8; VCPU_TIME_INFO_SIZE]) -> PvclockSnapshot {
    match seqlock_read(0, read_bytes, || (), None) {
        Ok((bytes, ())) => PvclockSnapshot::from_bytes(&bytes),
        Err(_) => unreachable!("an unbounded read only returns consistent copies"),
    }
}

/// The clock reading proper: copies the record and reads the TSC (`read_tsc`, which should be
/// an ordered `rdtsc`) inside the same read section, so the TSC value belongs to the record it
/// is scaled with even if the host updates the record right after. Returns the record and the
/// TSC; [`MonotonicClamp::read`] turns them into ns.
pub fn read_at_tsc(
    read_bytes: impl FnMut() -> [u8; VCPU_TIME_INFO_SIZE],
    read_tsc: impl FnMut() -> u64,
) -> (PvclockSnapshot, u64) {
    match seqlock_read(0, read_bytes, read_tsc, None) {
        Ok((bytes, tsc)) => (PvclockSnapshot::from_bytes(&bytes), tsc),
        Err(_) => unreachable!("an unbounded read only returns consistent copies"),
    }
}

/// [`read_consistent`] with at most `max_tries` copies (at least 2 are always taken).
///
/// `read_bytes` is called repeatedly; each call must copy the 32 bytes in ascending address
/// order with loads kept in program order, so that one call's `version` is loaded after the
/// previous call's fields.
pub fn try_read_consistent(
    read_bytes: impl FnMut() -> [u8; VCPU_TIME_INFO_SIZE],
    max_tries: u32,
) -> Result<PvclockSnapshot, Torn> {
    seqlock_read(0, read_bytes, || (), Some(max_tries.max(2)))
        .map(|(bytes, ())| PvclockSnapshot::from_bytes(&bytes))
}

/// Makes kvmclock readings monotonic across vCPUs when the host does not promise it.
///
/// Without [`PVCLOCK_TSC_STABLE_BIT`] each vCPU's record extrapolates from its own host
/// sample, so vCPU B can read a time earlier than vCPU A read just before. Like Linux, every
/// reading then goes through one shared "last value returned": a reading below it returns it
/// instead. Relaxed atomics suffice: it is a single location, and coherence orders it.
#[derive(Debug, Default)]
pub struct MonotonicClamp {
    last: AtomicU64,
    stable_bit_valid: bool,
}

impl MonotonicClamp {
    /// A clamp that has returned nothing yet. `stable_bit_valid` says whether CPUID has
    /// [`KVM_FEATURE_CLOCKSOURCE_STABLE_BIT`] (otherwise the record's flag is ignored).
    pub const fn new(stable_bit_valid: bool) -> Self {
        Self {
            last: AtomicU64::new(0),
            stable_bit_valid,
        }
    }

    /// `max(last returned, now)`, recording `now` if it is the new maximum.
    pub fn clamp(&self, now: u64) -> u64 {
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            if now <= last {
                return last;
            }
            match self
                .last
                .compare_exchange_weak(last, now, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return now,
                Err(seen) => last = seen,
            }
        }
    }

    /// The clock at `tsc`: straight from the record when it is (validly) TSC-stable, clamped
    /// otherwise.
    pub fn read(&self, snapshot: &PvclockSnapshot, tsc: u64) -> u64 {
        let now = snapshot.nanoseconds_at(tsc);
        if self.stable_bit_valid && snapshot.tsc_stable() {
            now
        } else {
            self.clamp(now)
        }
    }

    /// The largest value returned so far.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }
}

/// Check-and-clear of [`PVCLOCK_GUEST_STOPPED`] on a copy of the flags byte: `Some(new
/// flags)` (to write back) when it was set, `None` when it was not.
pub fn guest_stopped_cleared(flags: u8) -> Option<u8> {
    (flags & PVCLOCK_GUEST_STOPPED != 0).then_some(flags & !PVCLOCK_GUEST_STOPPED)
}

/// Check-and-clear of [`PVCLOCK_GUEST_STOPPED`] on the live flags byte (offset
/// [`VCPU_TIME_INFO_FLAGS_OFFSET`] of this vCPU's record). `true` means the host paused the
/// VM since the last call: the caller must touch its watchdogs (soft lockup, RCU stall, hung
/// task) before they judge the pause as a hang. One atomic RMW, so a host write of the other
/// flag bits in between cannot be lost.
pub fn take_guest_stopped(flags: &AtomicU8) -> bool {
    flags.fetch_and(!PVCLOCK_GUEST_STOPPED, Ordering::Relaxed) & PVCLOCK_GUEST_STOPPED != 0
}

/// One consistent copy of `struct pvclock_wall_clock`: the wall-clock time at which the guest's
/// system time was zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PvclockWallClock {
    /// Sequence counter, as in the time record.
    pub version: u32,
    /// Seconds since the Unix epoch at system time 0.
    pub sec: u32,
    /// Nanoseconds within `sec`.
    pub nsec: u32,
}

impl PvclockWallClock {
    /// Parses the 12 packed little-endian bytes (version, sec, nsec).
    pub fn from_bytes(bytes: &[u8; WALL_CLOCK_SIZE]) -> Self {
        Self {
            version: u32_at(bytes, 0),
            sec: u32_at(bytes, 4),
            nsec: u32_at(bytes, 8),
        }
    }

    /// The record's bytes.
    pub fn to_bytes(&self) -> [u8; WALL_CLOCK_SIZE] {
        let mut bytes = [0; WALL_CLOCK_SIZE];
        bytes[0..4].copy_from_slice(&self.version.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.sec.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.nsec.to_le_bytes());
        bytes
    }

    /// Seqlock read, same rules and bound argument as [`read_consistent`].
    pub fn read_consistent(read_bytes: impl FnMut() -> [u8; WALL_CLOCK_SIZE]) -> Self {
        match seqlock_read(0, read_bytes, || (), None) {
            Ok((bytes, ())) => Self::from_bytes(&bytes),
            Err(_) => unreachable!("an unbounded read only returns consistent copies"),
        }
    }

    /// Realtime in ns since the epoch, given the system time (ns) read from the time record
    /// at the same moment: wall clock at boot + time since boot. Saturates.
    pub fn realtime_ns(&self, system_time_ns: u64) -> u64 {
        (u64::from(self.sec) * NSEC_PER_SEC + u64::from(self.nsec)).saturating_add(system_time_ns)
    }

    /// [`realtime_ns`](Self::realtime_ns) as (seconds, nanoseconds); a host `nsec` above one
    /// second is normalised rather than trusted.
    pub fn realtime(&self, system_time_ns: u64) -> (u64, u32) {
        let ns = self.realtime_ns(system_time_ns);
        (ns / NSEC_PER_SEC, (ns % NSEC_PER_SEC) as u32)
    }
}

#[cfg(test)]
mod tests;

use super::*;
use std::sync::Arc;

fn record(
    version: u32,
    tsc_timestamp: u64,
    system_time: u64,
    mul: u32,
    shift: i8,
    flags: u8,
) -> PvclockSnapshot {
    PvclockSnapshot {
        version,
        tsc_timestamp,
        system_time,
        tsc_to_system_mul: mul,
        tsc_shift: shift,
        flags,
    }
}

#[test]
fn parses_the_abi_layout_little_endian() {
    let mut bytes = [0u8; 32];
    bytes[0..4].copy_from_slice(&6u32.to_le_bytes());
    bytes[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes()); // pad: ignored
    bytes[8..16].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
    bytes[16..24].copy_from_slice(&0x1111_2222_3333_4444u64.to_le_bytes());
    bytes[24..28].copy_from_slice(&0x8000_0001u32.to_le_bytes());
    bytes[28] = 0xfe; // -2
    bytes[29] = PVCLOCK_TSC_STABLE_BIT | PVCLOCK_GUEST_STOPPED;
    bytes[30] = 0x55; // pad
    let snap = PvclockSnapshot::from_bytes(&bytes);
    assert_eq!(
        snap,
        record(
            6,
            0x0102_0304_0506_0708,
            0x1111_2222_3333_4444,
            0x8000_0001,
            -2,
            3
        )
    );
    assert!(snap.tsc_stable() && snap.guest_stopped());
    let mut clean = bytes;
    clean[4..8].fill(0);
    clean[30] = 0;
    assert_eq!(snap.to_bytes(), clean);
    assert_eq!(VCPU_TIME_INFO_FLAGS_OFFSET, 29);
}

#[test]
fn scale_matches_hand_computed_values() {
    // 2 GHz TSC: 0.5 ns per tick, mul = 2^31, no shift.
    assert_eq!(scale_delta(2_000_000_000, 0x8000_0000, 0), 1_000_000_000);
    // Positive shift: ×2 then ×0.5.
    assert_eq!(scale_delta(12_345, 0x8000_0000, 1), 12_345);
    // Negative shift: 1000 >> 2 = 250, × 0.75 = 187.5 → 187.
    assert_eq!(scale_delta(1000, 0xC000_0000, -2), 187);
    // 3 GHz as KVM encodes it: shift -1, mul = floor(2/3 · 2^32) = 2863311530; one second of
    // ticks is 1.5e9 × 2863311530 / 2^32 = 999_999_999.77 → 999_999_999.
    assert_eq!(scale_delta(3_000_000_000, 2_863_311_530, -1), 999_999_999);
    // Shifts past the width leave nothing.
    assert_eq!(scale_delta(u64::MAX, u32::MAX, -64), 0);
    assert_eq!(scale_delta(u64::MAX, u32::MAX, -128), 0);
    assert_eq!(scale_delta(u64::MAX, u32::MAX, -63), 0); // 1 × (2^32-1) >> 32
}

#[test]
fn scale_is_exact_for_huge_deltas() {
    // (2^64-1)(2^32-1) = (2^64 - 2^32 - 1)·2^32 + 1: a 64-bit product would overflow.
    assert_eq!(scale_delta(u64::MAX, u32::MAX, 0), 0xFFFF_FFFE_FFFF_FFFF);
    // 2^63 << 1 is 2^64, which a 64-bit shift would turn into 0; ×0.5 gives 2^63 back.
    assert_eq!(scale_delta(1 << 63, 0x8000_0000, 1), 1 << 63);
    // (12345678901234567890 >> 3) × 0x99999999 >> 32, computed by hand in 128 bits.
    assert_eq!(
        scale_delta(12_345_678_901_234_567_890, 0x9999_9999, -3),
        925_925_917_377_008_664
    );
    // Beyond u64 ns: saturates rather than wrapping.
    assert_eq!(scale_delta(u64::MAX, u32::MAX, 31), u64::MAX);
    assert_eq!(scale_delta(1, 1, 127), u64::MAX);
}

#[test]
fn nanoseconds_extrapolate_from_the_record() {
    let snap = record(2, 1_000_000, 5_000, 0x8000_0000, 0, 0);
    assert_eq!(snap.nanoseconds_at(1_000_000), 5_000);
    assert_eq!(snap.nanoseconds_at(1_000_000 + 2_000), 6_000);
    // A record taken near the top of the TSC range: the delta across the wrap is small.
    let wrapped = record(2, u64::MAX - 9, 7, 0x8000_0000, 1, 0);
    assert_eq!(wrapped.nanoseconds_at(10), 7 + 20);
    // System time near the top saturates instead of wrapping to a tiny value.
    let late = record(2, 0, u64::MAX - 1, 0x8000_0000, 0, 0);
    assert_eq!(late.nanoseconds_at(1_000), u64::MAX);
}

/// Hands out the queued copies in order, then repeats the last one.
fn copies(list: Vec<[u8; 32]>) -> impl FnMut() -> [u8; 32] {
    let mut at = 0;
    move || {
        let copy = list[at.min(list.len() - 1)];
        at += 1;
        copy
    }
}

#[test]
fn seqlock_read_skips_copies_taken_during_an_update() {
    let torn = record(3, 111, 222, 1, 0, 0).to_bytes(); // odd: host mid-update
    let good = record(4, 1_000, 2_000, 0x8000_0000, 0, 0).to_bytes();
    // Odd twice in a row (the same odd version is seen by both reads) must not be accepted.
    let snap = read_consistent(copies(vec![torn, torn, good, good]));
    assert_eq!(snap, PvclockSnapshot::from_bytes(&good));
}

#[test]
fn seqlock_read_skips_a_copy_whose_version_changed_after_it() {
    let old = record(2, 1, 10, 0x8000_0000, 0, 0).to_bytes();
    let new = record(4, 2, 20, 0x8000_0000, 0, 0).to_bytes();
    let snap = read_consistent(copies(vec![old, new, new]));
    assert_eq!(snap.version, 4);
    assert_eq!(snap.system_time, 20);
}

#[test]
fn bounded_read_gives_up_on_a_record_stuck_mid_update() {
    let torn = record(7, 0, 0, 0, 0, 0).to_bytes();
    assert_eq!(
        try_read_consistent(copies(vec![torn]), 5),
        Err(Torn { tries: 5 })
    );
    let good = record(8, 0, 9, 0, 0, 0).to_bytes();
    assert_eq!(
        try_read_consistent(copies(vec![torn, good]), 5).map(|s| s.system_time),
        Ok(9)
    );
}

#[test]
fn tsc_is_read_inside_the_read_section() {
    let old = record(2, 0, 0, 0x8000_0000, 0, 0).to_bytes();
    let new = record(4, 1_000, 1_000_000, 0x8000_0000, 0, 0).to_bytes();
    // The TSC read between `old` and `new` belongs to `old`, which changed: it is retried, and
    // the TSC read between the two `new` copies is the one returned.
    let mut tscs = [500u64, 3_000].into_iter();
    let (snap, tsc) = read_at_tsc(copies(vec![old, new, new]), || tscs.next().unwrap());
    assert_eq!((snap.version, tsc), (4, 3_000));
    assert_eq!(snap.nanoseconds_at(tsc), 1_001_000);
}

#[test]
fn clamp_never_goes_backwards_without_a_stable_tsc() {
    let clamp = MonotonicClamp::new(true);
    let cpu0 = record(2, 0, 1_000, 0x8000_0000, 1, 0); // 1 ns per tick
    let cpu1 = record(2, 0, 900, 0x8000_0000, 1, 0); // lags cpu0 by 100 ns
    assert_eq!(clamp.read(&cpu0, 50), 1_050);
    assert_eq!(clamp.read(&cpu1, 60), 1_050, "960 would go back in time");
    assert_eq!(clamp.read(&cpu1, 200), 1_100);
    assert_eq!(clamp.last(), 1_100);
}

#[test]
fn stable_records_bypass_the_clamp_only_when_cpuid_says_so() {
    let stable = record(2, 0, 10, 0x8000_0000, 1, PVCLOCK_TSC_STABLE_BIT);
    let trusted = MonotonicClamp::new(true);
    trusted.clamp(1_000);
    assert_eq!(trusted.read(&stable, 5), 15);
    let untrusted = MonotonicClamp::new(false);
    untrusted.clamp(1_000);
    assert_eq!(untrusted.read(&stable, 5), 1_000);
}

#[test]
fn clamp_is_monotonic_across_threads() {
    let clamp = Arc::new(MonotonicClamp::new(false));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let clamp = clamp.clone();
            std::thread::spawn(move || {
                let mut seen = 0;
                for i in 0..20_000u64 {
                    // Each "CPU" has its own skew; values jitter up and down.
                    let now = i * 4 + (i * 7919 + t * 104_729) % 97;
                    let got = clamp.clamp(now);
                    assert!(got >= seen && got >= now);
                    seen = got;
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn guest_stopped_is_reported_once_and_cleared() {
    assert_eq!(guest_stopped_cleared(PVCLOCK_TSC_STABLE_BIT), None);
    assert_eq!(
        guest_stopped_cleared(PVCLOCK_TSC_STABLE_BIT | PVCLOCK_GUEST_STOPPED),
        Some(PVCLOCK_TSC_STABLE_BIT)
    );
    let flags = AtomicU8::new(PVCLOCK_GUEST_STOPPED | PVCLOCK_TSC_STABLE_BIT);
    assert!(take_guest_stopped(&flags));
    assert!(
        !take_guest_stopped(&flags),
        "the watchdogs are touched once per pause"
    );
    assert_eq!(flags.load(Ordering::Relaxed), PVCLOCK_TSC_STABLE_BIT);
}

#[test]
fn wall_clock_plus_system_time_is_realtime() {
    let mut bytes = [0u8; 12];
    bytes[0..4].copy_from_slice(&2u32.to_le_bytes());
    bytes[4..8].copy_from_slice(&1_700_000_000u32.to_le_bytes());
    bytes[8..12].copy_from_slice(&500_000_000u32.to_le_bytes());
    let wall = PvclockWallClock::read_consistent(copies12(vec![[1; 12], bytes, bytes]));
    assert_eq!((wall.sec, wall.nsec), (1_700_000_000, 500_000_000));
    assert_eq!(wall.to_bytes(), bytes);
    assert_eq!(wall.realtime(1_600_000_000), (1_700_000_002, 100_000_000));
    assert_eq!(wall.realtime_ns(0), 1_700_000_000_500_000_000);
}

fn copies12(list: Vec<[u8; 12]>) -> impl FnMut() -> [u8; 12] {
    let mut at = 0;
    move || {
        let copy = list[at.min(list.len() - 1)];
        at += 1;
        copy
    }
}

#[test]
fn msr_values_check_alignment() {
    assert_eq!(system_time_msr_value(0x1000), Ok(0x1001));
    assert_eq!(wall_clock_msr_value(0x2004), Ok(0x2004));
    assert_eq!(
        system_time_msr_value(0x1002),
        Err(Misaligned {
            gpa: 0x1002,
            required: 4
        })
    );
}

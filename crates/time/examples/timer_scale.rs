//! Scale benchmark: ns per start / cancel / expire with 1k, 10k and 100k pending timers,
//! for the hrtimer base (ordered queue) and the timer wheel.
//!
//! Run: `cargo run --release -p lull-time --example timer_scale`
//!
//! Each figure is the best of several rounds (the build machines are shared). "start" moves
//! a random pending timer to a new random expiry (the queue keeps N entries); "cancel"
//! removes a random tenth of the timers; "expire" runs all N timers, jumping from one
//! programmed event (hrtimer) or next expiry (wheel) to the next as a tickless CPU would;
//! the figure is per timer.

use std::time::Instant;

use lull_time::clockevents::{
    ClockEvent, ClockEventDevice, ClockEventState, DeviceError, Features,
};
use lull_time::hrtimer::{
    ClockId, HrTimerCpuBase, HrTimerId, HrTimerMode, HrTimerRestart, TimerFunction,
};
use lull_wheel::{TimerWheel, WheelHandle};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const ROUNDS: usize = 5;

/// An event device that accepts everything (the benchmark measures the logic, not I/O).
struct NullDevice;

impl ClockEventDevice for NullDevice {
    fn name(&self) -> &'static str {
        "null"
    }
    fn rating(&self) -> u32 {
        1
    }
    fn features(&self) -> Features {
        Features::ONESHOT
    }
    fn frequency_hz(&self) -> u64 {
        1_000_000_000
    }
    fn min_delta_cycles(&self) -> u64 {
        1000
    }
    fn max_delta_cycles(&self) -> u64 {
        u64::from(u32::MAX)
    }
    fn set_state_shutdown(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
    fn set_state_periodic(&mut self, _: u64) -> Result<(), DeviceError> {
        Ok(())
    }
    fn set_state_oneshot(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
    fn set_next_event(&mut self, _: u64) -> Result<(), DeviceError> {
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Callback;

impl TimerFunction for Callback {
    fn name(&self) -> &'static str {
        "bench"
    }
}

/// xorshift64*: deterministic, dependency-free randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

#[derive(Default, Clone, Copy)]
struct Figures {
    start: f64,
    cancel: f64,
    expire: f64,
}

impl Figures {
    fn best(self, other: Figures) -> Figures {
        Figures {
            start: self.start.min(other.start),
            cancel: self.cancel.min(other.cancel),
            expire: self.expire.min(other.expire),
        }
    }
}

fn per_op(start: Instant, ops: usize) -> f64 {
    start.elapsed().as_nanos() as f64 / ops as f64
}

/// hrtimer expiries spread over 10 s of monotonic ns.
const HR_RANGE: u64 = 10_000_000_000;

fn bench_hrtimer(n: usize, rng: &mut Rng) -> Figures {
    let mut device = ClockEvent::new(NullDevice, 4_000_000).unwrap();
    device.switch_state(ClockEventState::Shutdown).unwrap();
    device.switch_state(ClockEventState::OneShot).unwrap();
    let mut base: HrTimerCpuBase<Callback> = HrTimerCpuBase::new(0);
    base.switch_to_high_res(&mut device, 0).unwrap();
    let ids: Vec<HrTimerId> = (0..n)
        .map(|i| base.create(ClockId::Monotonic, Callback, i as u64).unwrap())
        .collect();
    for &id in &ids {
        let at = 1 + rng.below(HR_RANGE);
        base.start(&mut device, id, at, HrTimerMode::Absolute, 0, 0, None)
            .unwrap();
    }
    // start (re-arm a random pending timer)
    let picks: Vec<(HrTimerId, u64)> = (0..n)
        .map(|_| (ids[rng.below(n as u64) as usize], 1 + rng.below(HR_RANGE)))
        .collect();
    let t = Instant::now();
    for &(id, at) in &picks {
        base.start(&mut device, id, at, HrTimerMode::Absolute, 0, 0, None)
            .unwrap();
    }
    let start = per_op(t, picks.len());
    // cancel a random tenth
    let mut victims: Vec<HrTimerId> = ids.clone();
    for i in (1..victims.len()).rev() {
        victims.swap(i, rng.below(i as u64 + 1) as usize);
    }
    victims.truncate(n / 10);
    let t = Instant::now();
    for &id in &victims {
        base.cancel(&mut device, id, 0).unwrap();
    }
    let cancel = per_op(t, victims.len());
    for &id in &victims {
        let at = 1 + rng.below(HR_RANGE);
        base.start(&mut device, id, at, HrTimerMode::Absolute, 0, 0, None)
            .unwrap();
    }
    // expire everything, one interrupt per programmed event (as the hardware would)
    let t = Instant::now();
    let mut fired = 0usize;
    while let Some(now) = device.next_event_ns() {
        fired += base
            .interrupt(&mut device, now, |_| HrTimerRestart::NoRestart)
            .unwrap();
    }
    assert_eq!(fired, n);
    let expire = per_op(t, n);
    Figures {
        start,
        cancel,
        expire,
    }
}

/// Wheel expiries spread over 100 000 jiffies (400 s at HZ = 250).
const WHEEL_RANGE: u64 = 100_000;

fn bench_wheel(n: usize, rng: &mut Rng) -> Figures {
    let mut wheel: TimerWheel<u64> = TimerWheel::new(0);
    let handles: Vec<WheelHandle> = (0..n)
        .map(|i| wheel.insert(1 + rng.below(WHEEL_RANGE), i as u64).unwrap())
        .collect();
    let picks: Vec<(WheelHandle, u64)> = (0..n)
        .map(|_| {
            (
                handles[rng.below(n as u64) as usize],
                1 + rng.below(WHEEL_RANGE),
            )
        })
        .collect();
    let t = Instant::now();
    for &(handle, at) in &picks {
        wheel.modify(handle, at).unwrap();
    }
    let start = per_op(t, picks.len());
    let mut victims = handles.clone();
    for i in (1..victims.len()).rev() {
        victims.swap(i, rng.below(i as u64 + 1) as usize);
    }
    victims.truncate(n / 10);
    let t = Instant::now();
    for &handle in &victims {
        wheel.cancel(handle).unwrap();
    }
    let cancel = per_op(t, victims.len());
    for _ in &victims {
        wheel.insert(1 + rng.below(WHEEL_RANGE), 0).unwrap();
    }
    // expire everything, advancing straight to each next expiry (as a tickless CPU does)
    let t = Instant::now();
    let mut fired = 0usize;
    while let Some(next) = wheel.next_expiry() {
        wheel.advance_to(next, |_| fired += 1);
    }
    assert_eq!(fired, n);
    let expire = per_op(t, n);
    Figures {
        start,
        cancel,
        expire,
    }
}

fn main() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut results: Vec<(&str, usize, Figures)> = Vec::new();
    for (name, bench) in [
        ("hrtimer", bench_hrtimer as fn(usize, &mut Rng) -> Figures),
        ("wheel", bench_wheel),
    ] {
        for n in SIZES {
            let mut best = bench(n, &mut rng);
            for _ in 1..ROUNDS {
                best = best.best(bench(n, &mut rng));
            }
            for (op, ns) in [
                ("start", best.start),
                ("cancel", best.cancel),
                ("expire", best.expire),
            ] {
                println!("{name:<8} n={n:<7} op={op:<7} {ns:>8.1} ns/op");
            }
            results.push((name, n, best));
        }
    }
    let mut verdicts = Vec::new();
    let mut all_flat = true;
    for name in ["hrtimer", "wheel"] {
        let at = |n: usize| {
            results
                .iter()
                .find(|r| r.0 == name && r.1 == n)
                .map(|r| r.2)
                .unwrap_or_default()
        };
        let (small, large) = (at(1_000), at(100_000));
        for (op, a, b) in [
            ("start", small.start, large.start),
            ("cancel", small.cancel, large.cancel),
            ("expire", small.expire, large.expire),
        ] {
            let ratio = b / a;
            all_flat &= ratio <= 2.0;
            verdicts.push(format!("{name}/{op} x{ratio:.2}"));
        }
    }
    println!(
        "flat within 2x from 1k to 100k: {} ({})",
        if all_flat { "yes" } else { "no" },
        verdicts.join(", ")
    );
}

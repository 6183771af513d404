//! Scale benchmark: ns per start / cancel / expire with 1k, 10k and 100k pending timers,
//! for the hrtimer base (ordered queue) and the timer wheel.
//!
//! Run: `cargo run --release -p lull-time --example timer_scale`
//!
//! Issue 3 asks for per-operation cost flat within 2x from 1 000 to 100 000 timers; the last
//! lines give, per structure, the largest 100k/1k ratio over the three operations.
//!
//! Fairness rules (the build machines are shared, so figures are noisy):
//! - Both structures and every size replay the same random sequence: each round reseeds the
//!   generator with [`SEED`].
//! - Every size does the same number of timed operations ([`START_OPS`], [`CANCEL_OPS`],
//!   [`EXPIRE_OPS`]): small sizes repeat their phase, so no figure rests on a few hundred
//!   operations or on a cold first pass.
//! - One untimed warm-up pass, then [`ROUNDS`] timed passes; each pass runs one round of each
//!   structure at each size in turn, so a busy spell of the other builders hits every size
//!   alike. The figure is the best round (least disturbed), the median is printed next to it.
//!
//! Phases, on N pending timers:
//! - start: re-arm a random pending timer at a new random expiry (N stays constant);
//! - cancel: cancel N/10 distinct random timers, timed; re-arm them, untimed; repeat;
//! - expire: fill N timers, re-arm N random ones (untimed churn), then run all N, jumping
//!   from one programmed event (hrtimer) or next expiry (wheel) to the next as a tickless CPU
//!   would; per timer; repeated until [`EXPIRE_OPS`] timers ran.

use std::time::{Duration, Instant};

use lull_time::clockevents::{
    ClockEvent, ClockEventDevice, ClockEventState, DeviceError, Features,
};
use lull_time::hrtimer::{
    ClockId, HrTimerCpuBase, HrTimerId, HrTimerMode, HrTimerRestart, TimerFunction,
};
use lull_wheel::{TimerWheel, WheelHandle};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
/// Timed rounds per structure and size (after one warm-up pass).
const ROUNDS: usize = 15;
/// Re-arms timed per round, at every size.
const START_OPS: usize = 100_000;
/// Cancels timed per round, at every size (in batches of N/10).
const CANCEL_OPS: usize = 10_000;
/// Expiries timed per round, at every size (in passes of N).
const EXPIRE_OPS: usize = 100_000;
/// Every round of every structure and size replays the random sequence from this seed.
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
/// The issue 3 bound on the 100k/1k cost ratio.
const FLAT_BOUND: f64 = 2.0;

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
    fn index_below(&mut self, bound: usize) -> usize {
        self.below(bound as u64) as usize
    }
}

/// A structure under test holding timers `0..n`, each armed or not.
trait Timers: Sized {
    /// What the structure names a timer by; looked up before the clock starts, so the timed
    /// loops measure the structure, not the benchmark's own index.
    type Key: Copy;
    const NAME: &'static str;
    /// Expiries are drawn from `1..=RANGE` (absolute).
    const RANGE: u64;
    /// A structure with `expiries.len()` timers, timer `i` armed at `expiries[i]`.
    fn filled(expiries: &[u64]) -> Self;
    /// The current key of timer `timer`.
    fn key(&self, timer: usize) -> Self::Key;
    /// Re-arms a pending timer at `expiry`.
    fn start(&mut self, key: Self::Key, expiry: u64);
    /// Cancels a pending timer.
    fn cancel(&mut self, key: Self::Key);
    /// Arms cancelled timer `timer` at `expiry`.
    fn rearm(&mut self, timer: usize, expiry: u64);
    /// Runs every pending timer; returns how many ran.
    fn expire_all(&mut self) -> usize;
}

/// One CPU's hrtimer base in high-resolution mode on a [`NullDevice`].
struct HrTimers {
    device: ClockEvent<NullDevice>,
    base: HrTimerCpuBase<Callback>,
    ids: Vec<HrTimerId>,
}

impl HrTimers {
    fn arm(&mut self, id: HrTimerId, expiry: u64) {
        self.base
            .start(
                &mut self.device,
                id,
                expiry,
                HrTimerMode::Absolute,
                0,
                0,
                None,
            )
            .unwrap();
    }
}

impl Timers for HrTimers {
    type Key = HrTimerId;
    const NAME: &'static str = "hrtimer";
    /// 10 s of monotonic ns.
    const RANGE: u64 = 10_000_000_000;

    fn filled(expiries: &[u64]) -> Self {
        let mut device = ClockEvent::new(NullDevice, 4_000_000).unwrap();
        device.switch_state(ClockEventState::Shutdown).unwrap();
        device.switch_state(ClockEventState::OneShot).unwrap();
        let mut base = HrTimerCpuBase::new(0);
        base.switch_to_high_res(&mut device, 0).unwrap();
        let ids = (0..expiries.len())
            .map(|i| base.create(ClockId::Monotonic, Callback, i as u64).unwrap())
            .collect();
        let mut timers = HrTimers { device, base, ids };
        for (timer, &expiry) in expiries.iter().enumerate() {
            timers.arm(timers.ids[timer], expiry);
        }
        timers
    }

    fn key(&self, timer: usize) -> HrTimerId {
        self.ids[timer]
    }

    fn start(&mut self, id: HrTimerId, expiry: u64) {
        self.arm(id, expiry);
    }

    fn cancel(&mut self, id: HrTimerId) {
        assert!(self.base.cancel(&mut self.device, id, 0).unwrap());
    }

    fn rearm(&mut self, timer: usize, expiry: u64) {
        self.arm(self.ids[timer], expiry);
    }

    fn expire_all(&mut self) -> usize {
        // One interrupt per programmed event, as the hardware would deliver them.
        let mut fired = 0;
        while let Some(now) = self.device.next_event_ns() {
            fired += self
                .base
                .interrupt(&mut self.device, now, |_| HrTimerRestart::NoRestart)
                .unwrap();
        }
        fired
    }
}

/// The jiffies timer wheel.
struct WheelTimers {
    wheel: TimerWheel<u64>,
    handles: Vec<WheelHandle>,
}

impl Timers for WheelTimers {
    type Key = WheelHandle;
    const NAME: &'static str = "wheel";
    /// 100 000 jiffies (400 s at HZ = 250).
    const RANGE: u64 = 100_000;

    fn filled(expiries: &[u64]) -> Self {
        let mut wheel = TimerWheel::new(0);
        let handles = (0..)
            .zip(expiries)
            .map(|(i, &expiry)| wheel.insert(expiry, i).unwrap())
            .collect();
        WheelTimers { wheel, handles }
    }

    fn key(&self, timer: usize) -> WheelHandle {
        self.handles[timer]
    }

    fn start(&mut self, handle: WheelHandle, expiry: u64) {
        self.wheel.modify(handle, expiry).unwrap();
    }

    fn cancel(&mut self, handle: WheelHandle) {
        self.wheel.cancel(handle).unwrap();
    }

    fn rearm(&mut self, timer: usize, expiry: u64) {
        self.handles[timer] = self.wheel.insert(expiry, timer as u64).unwrap();
    }

    fn expire_all(&mut self) -> usize {
        // Straight to each next expiry, as a tickless CPU does.
        let mut fired = 0;
        while let Some(next) = self.wheel.next_expiry() {
            self.wheel.advance_to(next, |_| fired += 1);
        }
        fired
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    start: f64,
    cancel: f64,
    expire: f64,
}

impl Figures {
    fn by_op(self) -> [(&'static str, f64); 3] {
        [
            ("start", self.start),
            ("cancel", self.cancel),
            ("expire", self.expire),
        ]
    }
}

fn ns_per_op(elapsed: Duration, ops: usize) -> f64 {
    elapsed.as_nanos() as f64 / ops as f64
}

fn random_expiries<T: Timers>(rng: &mut Rng, n: usize) -> Vec<u64> {
    (0..n).map(|_| 1 + rng.below(T::RANGE)).collect()
}

/// One round at size `n`; the random sequence depends only on [`SEED`] and `n`.
fn round<T: Timers>(n: usize) -> Figures {
    let mut rng = Rng(SEED);
    let mut timers = T::filled(&random_expiries::<T>(&mut rng, n));

    let picks: Vec<(T::Key, u64)> = (0..START_OPS)
        .map(|_| (timers.key(rng.index_below(n)), 1 + rng.below(T::RANGE)))
        .collect();
    let clock = Instant::now();
    for &(key, expiry) in &picks {
        timers.start(key, expiry);
    }
    let start = ns_per_op(clock.elapsed(), picks.len());

    let batch = (n / 10).max(1);
    let mut order: Vec<usize> = (0..n).collect();
    let mut cancelled = 0;
    let mut cancel_time = Duration::ZERO;
    while cancelled < CANCEL_OPS {
        // A partial Fisher-Yates shuffle picks `batch` distinct timers.
        for k in 0..batch {
            let j = k + rng.index_below(n - k);
            order.swap(k, j);
        }
        let victims = &order[..batch];
        let keys: Vec<T::Key> = victims.iter().map(|&timer| timers.key(timer)).collect();
        let clock = Instant::now();
        for &key in &keys {
            timers.cancel(key);
        }
        cancel_time += clock.elapsed();
        cancelled += batch;
        for &timer in victims {
            timers.rearm(timer, 1 + rng.below(T::RANGE));
        }
    }
    let cancel = ns_per_op(cancel_time, cancelled);
    drop(timers);

    let mut expired = 0;
    let mut expire_time = Duration::ZERO;
    while expired < EXPIRE_OPS {
        let mut timers = T::filled(&random_expiries::<T>(&mut rng, n));
        // Churn first (N random re-arms, untimed): a structure that only ever saw inserts
        // in one burst is laid out unrealistically well in memory (a tree's nodes in
        // allocation order), and the hrtimer and wheel queues of a running kernel are not.
        for _ in 0..n {
            let key = timers.key(rng.index_below(n));
            timers.start(key, 1 + rng.below(T::RANGE));
        }
        let clock = Instant::now();
        let fired = timers.expire_all();
        expire_time += clock.elapsed();
        assert_eq!(fired, n, "{}: every timer runs once", T::NAME);
        expired += fired;
    }
    let expire = ns_per_op(expire_time, expired);

    Figures {
        start,
        cancel,
        expire,
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Every structure's rounds at every size, `[structure][size][round]`.
type Rounds = Vec<Vec<Vec<Figures>>>;

/// One round of every structure at every size, in turn.
fn pass(rounds: &mut Rounds) {
    for (structure, run) in [
        round::<HrTimers> as fn(usize) -> Figures,
        round::<WheelTimers>,
    ]
    .into_iter()
    .enumerate()
    {
        for (size, &n) in SIZES.iter().enumerate() {
            rounds[structure][size].push(run(n));
        }
    }
}

/// Prints best and median of one structure's rounds per size and operation; returns the
/// best figures per size.
fn report(name: &str, by_size: &[Vec<Figures>]) -> Vec<Figures> {
    SIZES
        .iter()
        .zip(by_size)
        .map(|(&n, rounds)| {
            let mut best = [0.0; 3];
            for (op_index, (op, _)) in Figures::default().by_op().into_iter().enumerate() {
                let mut values: Vec<f64> = rounds.iter().map(|r| r.by_op()[op_index].1).collect();
                best[op_index] = values.iter().copied().fold(f64::INFINITY, f64::min);
                let median_value = median(&mut values);
                println!(
                    "{name:<8} n={n:<7} op={op:<7} {:>8.1} ns/op  (median {median_value:.1})",
                    best[op_index]
                );
            }
            Figures {
                start: best[0],
                cancel: best[1],
                expire: best[2],
            }
        })
        .collect()
}

/// Prints the 100k/1k verdict line for one structure; returns whether it is flat.
fn verdict(name: &str, by_size: &[Figures]) -> bool {
    let (small, large) = (by_size[0], by_size[SIZES.len() - 1]);
    let ratios: Vec<(&str, f64)> = small
        .by_op()
        .iter()
        .zip(large.by_op())
        .map(|(&(op, a), (_, b))| (op, b / a))
        .collect();
    let max_ratio = ratios.iter().map(|r| r.1).fold(0.0, f64::max);
    let flat = max_ratio <= FLAT_BOUND;
    let detail: Vec<String> = ratios
        .iter()
        .map(|(op, ratio)| format!("{op} x{ratio:.2}"))
        .collect();
    println!(
        "verdict {name}: max ratio 100k/1k x{max_ratio:.2} ({}) -> flat within {FLAT_BOUND}x: {}",
        detail.join(", "),
        if flat { "yes" } else { "no" }
    );
    flat
}

fn main() {
    let mut rounds: Rounds = vec![vec![Vec::new(); SIZES.len()]; 2];
    // Warm-up pass (caches, allocator, branch predictors), discarded.
    pass(&mut rounds);
    rounds = vec![vec![Vec::new(); SIZES.len()]; 2];
    // Sizes and structures take turns, so a busy spell on the shared machine hits all of
    // them alike instead of spoiling one size's every round.
    for _ in 0..ROUNDS {
        pass(&mut rounds);
    }
    let hrtimer = report(HrTimers::NAME, &rounds[0]);
    let wheel = report(WheelTimers::NAME, &rounds[1]);
    verdict(HrTimers::NAME, &hrtimer);
    verdict(WheelTimers::NAME, &wheel);
}

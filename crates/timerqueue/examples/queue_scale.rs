//! Scale benchmark of the bare queue (no hrtimer base around it): ns per re-arm (remove +
//! insert), re-arm in place (`set_expiry`), remove and pop with 1k, 10k and 100k queued
//! timers.
//!
//! Run: `cargo run --release -p lull-timerqueue --example queue_scale`
//!
//! Same rules as `lull-time`'s `timer_scale`: every round replays one seed, every size does
//! the same number of timed operations, one warm-up round, best of [`ROUNDS`]. Comparing the
//! two tells the queue's share of the hrtimer figures.

use std::time::{Duration, Instant};

use lull_timerqueue::{TimerHandle, TimerQueue};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const ROUNDS: usize = 7;
const REARM_OPS: usize = 100_000;
const REMOVE_OPS: usize = 10_000;
const POP_OPS: usize = 100_000;
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
/// Expiries are drawn from 10 s of ns.
const RANGE: u64 = 10_000_000_000;

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

fn filled(rng: &mut Rng, n: usize) -> (TimerQueue<u32>, Vec<TimerHandle>) {
    let mut queue = TimerQueue::new();
    let handles = (0..n as u32)
        .map(|i| queue.insert(rng.below(RANGE), i).unwrap())
        .collect();
    (queue, handles)
}

fn ns_per_op(elapsed: Duration, ops: usize) -> f64 {
    elapsed.as_nanos() as f64 / ops as f64
}

/// One round at size `n`: `[rearm, set_expiry, remove, pop]` in ns per operation.
fn round(n: usize) -> [f64; 4] {
    let mut rng = Rng(SEED);
    let (mut queue, mut handles) = filled(&mut rng, n);

    let picks: Vec<(usize, u64)> = (0..REARM_OPS)
        .map(|_| (rng.index_below(n), rng.below(RANGE)))
        .collect();
    let clock = Instant::now();
    for &(timer, expiry) in &picks {
        let (_, value) = queue.remove(handles[timer]).unwrap();
        handles[timer] = queue.insert(expiry, value).unwrap();
    }
    let rearm = ns_per_op(clock.elapsed(), picks.len());

    let clock = Instant::now();
    for &(timer, expiry) in &picks {
        queue.set_expiry(handles[timer], expiry ^ 1).unwrap();
    }
    let reexpire = ns_per_op(clock.elapsed(), picks.len());

    let batch = (n / 10).max(1);
    let mut order: Vec<usize> = (0..n).collect();
    let (mut removed, mut remove_time) = (0, Duration::ZERO);
    while removed < REMOVE_OPS {
        for k in 0..batch {
            let j = k + rng.index_below(n - k);
            order.swap(k, j);
        }
        let victims: Vec<TimerHandle> = order[..batch].iter().map(|&t| handles[t]).collect();
        let clock = Instant::now();
        for &handle in &victims {
            queue.remove(handle).unwrap();
        }
        remove_time += clock.elapsed();
        removed += batch;
        for &timer in &order[..batch] {
            handles[timer] = queue.insert(rng.below(RANGE), timer as u32).unwrap();
        }
    }
    let remove = ns_per_op(remove_time, removed);
    drop(queue);

    let (mut popped, mut pop_time) = (0, Duration::ZERO);
    while popped < POP_OPS {
        let (mut queue, _) = filled(&mut rng, n);
        let clock = Instant::now();
        while queue.pop().is_some() {
            popped += 1;
        }
        pop_time += clock.elapsed();
    }
    let pop = ns_per_op(pop_time, popped);
    [rearm, reexpire, remove, pop]
}

fn main() {
    let mut best_by_size = Vec::new();
    for n in SIZES {
        round(n); // warm-up
        let mut best = [f64::INFINITY; 4];
        for _ in 0..ROUNDS {
            for (best, figure) in best.iter_mut().zip(round(n)) {
                *best = best.min(figure);
            }
        }
        println!(
            "queue n={n:<7} rearm {:>6.1}  set_expiry {:>6.1}  remove {:>6.1}  pop {:>6.1} ns/op",
            best[0], best[1], best[2], best[3]
        );
        best_by_size.push(best);
    }
    let (small, large) = (best_by_size[0], best_by_size[SIZES.len() - 1]);
    println!(
        "queue 100k/1k: rearm x{:.2}, set_expiry x{:.2}, remove x{:.2}, pop x{:.2}",
        large[0] / small[0],
        large[1] / small[1],
        large[2] / small[2],
        large[3] / small[3]
    );
}

//! Scale benchmark of the bare queue: ns per insert+remove (re-arm), remove, and pop with
//! 1k, 10k and 100k queued timers. Run: `cargo run --release -p lull-timerqueue --example queue_scale`

use std::time::Instant;

use lull_timerqueue::{TimerHandle, TimerQueue};

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

const RANGE: u64 = 10_000_000_000;

fn round(n: usize) -> [f64; 3] {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut q = TimerQueue::new();
    let mut handles: Vec<TimerHandle> = (0..n)
        .map(|i| q.insert(rng.below(RANGE), i as u32).unwrap())
        .collect();
    let ops = n.max(100_000);
    let picks: Vec<(usize, u64)> = (0..ops)
        .map(|_| (rng.below(n as u64) as usize, rng.below(RANGE)))
        .collect();
    let t = Instant::now();
    for &(i, at) in &picks {
        let (_, v) = q.remove(handles[i]).unwrap();
        handles[i] = q.insert(at, v).unwrap();
    }
    let rearm = t.elapsed().as_nanos() as f64 / ops as f64;
    let t = Instant::now();
    let mut removed = 0;
    for &(i, _) in picks.iter().take(n / 10) {
        if q.remove(handles[i]).is_ok() {
            removed += 1;
        }
    }
    let remove = t.elapsed().as_nanos() as f64 / removed as f64;
    let left = q.len();
    let t = Instant::now();
    while q.pop().is_some() {}
    let pop = t.elapsed().as_nanos() as f64 / left as f64;
    [rearm, remove, pop]
}

fn main() {
    for n in [1_000, 10_000, 100_000] {
        round(n);
        let mut best = [f64::MAX; 3];
        for _ in 0..7 {
            let r = round(n);
            for k in 0..3 {
                best[k] = best[k].min(r[k]);
            }
        }
        println!(
            "queue n={n:<7} rearm {:>6.1}  remove {:>6.1}  pop {:>6.1} ns/op",
            best[0], best[1], best[2]
        );
    }
}

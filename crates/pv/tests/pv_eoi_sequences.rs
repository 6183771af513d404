//! Random interrupt sequences through the guest's PV EOI and the host model: every injected
//! interrupt is ended exactly once, by the handler that took it, nothing stays in service,
//! and a skipped EOI never holds up a pending interrupt.

mod support;

use std::sync::atomic::AtomicU32;

use lull_pv::pv_eoi::host::{Retired, SimLapic};
use lull_pv::pv_eoi::{guest_eoi, EoiAction};
use support::Rng;

/// Vectors in use: several priority classes (nesting), two per class (same-class waits), and
/// two level-triggered ones.
const VECTORS: [u8; 8] = [0x31, 0x41, 0x42, 0x51, 0x61, 0xb1, 0xb2, 0xe1];
const LEVEL: [u8; 2] = [0x51, 0xb2];

struct Handler {
    id: usize,
    vector: u8,
    /// The handler re-enabled interrupts (a higher class may nest inside it).
    sti: bool,
}

#[derive(Default)]
struct Stats {
    injected: usize,
    via_pv: usize,
    via_apic: usize,
    level: usize,
}

struct Run {
    rng: Rng,
    word: AtomicU32,
    lapic: SimLapic,
    stack: Vec<Handler>,
    /// Handlers the guest ended through the word, waiting for the host to notice.
    claims: Vec<(usize, u8)>,
    eois: Vec<u32>,
    vectors: Vec<u8>,
    stats: Stats,
}

impl Run {
    fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed),
            word: AtomicU32::new(0),
            lapic: SimLapic::new(),
            stack: Vec::new(),
            claims: Vec::new(),
            eois: Vec::new(),
            vectors: Vec::new(),
            stats: Stats::default(),
        }
    }

    fn guest_accepts(&self) -> bool {
        self.stack.last().is_none_or(|h| h.sti)
    }

    fn retire(&mut self, retired: Retired, by: Option<(usize, u8)>, seed: u64) {
        let (id, vector) = by.unwrap_or_else(|| {
            panic!("seed {seed}: host retired {retired:?} that no handler ended")
        });
        assert_eq!(
            retired.vector, vector,
            "seed {seed}: EOI retired the wrong vector"
        );
        assert_eq!(
            retired.level,
            LEVEL.contains(&vector),
            "seed {seed}: trigger mode"
        );
        assert!(
            !(retired.level && retired.via_pv),
            "seed {seed}: level EOI skipped the APIC"
        );
        self.eois[id] += 1;
        if retired.via_pv {
            self.stats.via_pv += 1;
        } else {
            self.stats.via_apic += 1;
        }
        if retired.level {
            self.stats.level += 1;
        }
    }

    /// A VM exit and re-entry (timer, host preemption, an MMIO write...).
    fn exit_and_enter(&mut self, seed: u64) {
        if let Some(retired) = self.lapic.exit(&self.word) {
            let claim = (!self.claims.is_empty()).then(|| self.claims.remove(0));
            self.retire(retired, claim, seed);
        }
        self.enter();
    }

    fn enter(&mut self) {
        if let Some(vector) = self.lapic.enter(&self.word, self.guest_accepts()) {
            let sti = self.rng.chance(1, 3);
            self.stack.push(Handler {
                id: self.eois.len(),
                vector,
                sti,
            });
            self.eois.push(0);
            self.vectors.push(vector);
            self.stats.injected += 1;
        }
    }

    /// The innermost handler finishes and ends its interrupt.
    fn finish_handler(&mut self, seed: u64) {
        let Some(handler) = self.stack.pop() else {
            return;
        };
        match guest_eoi(&self.word) {
            EoiAction::Skipped => {
                // A hardware EOI would let a pending interrupt in right now; a skipped one
                // only at the next exit, so the host may allow it only with nothing pending.
                assert_eq!(
                    self.lapic.pending_count(),
                    0,
                    "seed {seed}: a pending interrupt waits behind a skipped EOI"
                );
                self.claims.push((handler.id, handler.vector));
            }
            EoiAction::WriteApicEoi => {
                // The register write is an exit; the host syncs the word first.
                if let Some(retired) = self.lapic.exit(&self.word) {
                    let claim = (!self.claims.is_empty()).then(|| self.claims.remove(0));
                    self.retire(retired, claim, seed);
                }
                let retired = self
                    .lapic
                    .apic_eoi()
                    .unwrap_or_else(|_| panic!("seed {seed}: EOI with nothing in service"));
                self.retire(retired, Some((handler.id, handler.vector)), seed);
                self.enter();
            }
        }
    }

    fn step(&mut self, seed: u64) {
        match self.rng.below(10) {
            0..=2 => {
                let vector = VECTORS[self.rng.below(VECTORS.len() as u64) as usize];
                self.lapic.raise(vector, LEVEL.contains(&vector));
                // The host kicks a running vCPU to deliver it: an exit and an entry.
                self.exit_and_enter(seed);
            }
            3..=5 => self.exit_and_enter(seed),
            _ => self.finish_handler(seed),
        }
    }

    /// Lets every handler finish and every pending interrupt be delivered and ended; bounded,
    /// so a vector stuck in service fails the test instead of hanging it.
    fn drain(&mut self, seed: u64) {
        for _ in 0..10_000 {
            if self.stack.is_empty()
                && self.claims.is_empty()
                && self.lapic.in_service_count() == 0
                && self.lapic.pending_count() == 0
            {
                return;
            }
            self.finish_handler(seed);
            self.exit_and_enter(seed);
        }
    }
}

fn run(seed: u64, steps: usize) -> Stats {
    let mut run = Run::new(seed);
    for _ in 0..steps {
        run.step(seed);
    }
    run.drain(seed);
    assert_eq!(
        run.lapic.in_service_count(),
        0,
        "seed {seed}: vector {:?} stayed in service",
        run.lapic.highest_in_service()
    );
    assert!(
        run.claims.is_empty(),
        "seed {seed}: PV EOIs the host never saw"
    );
    for (id, count) in run.eois.iter().enumerate() {
        assert_eq!(
            *count, 1,
            "seed {seed}: interrupt #{id} (vector {:#x}) ended {count} times",
            run.vectors[id]
        );
    }
    run.stats
}

#[test]
fn every_interrupt_is_ended_exactly_once() {
    let mut total = Stats::default();
    for seed in 0..2_000 {
        let stats = run(seed, 200);
        total.injected += stats.injected;
        total.via_pv += stats.via_pv;
        total.via_apic += stats.via_apic;
        total.level += stats.level;
    }
    // The sequences exercised both paths, nesting and level-triggered vectors.
    assert!(total.injected > 50_000, "{}", total.injected);
    assert!(total.via_pv > 10_000, "{}", total.via_pv);
    assert!(total.via_apic > 10_000, "{}", total.via_apic);
    assert!(total.level > 1_000, "{}", total.level);
    assert_eq!(total.via_pv + total.via_apic, total.injected);
}

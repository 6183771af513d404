//! A deterministic simulation of N vCPUs on M host cores, the setting that breaks plain ticket
//! locks: the host scheduler runs each vCPU for a random slice and preempts it at any step
//! (lock holders and next-in-line waiters included). Every vCPU loops "think, acquire, hold,
//! release" on one lock, driving the crate's real `Acquire` state machine and `unlock`, one
//! shared-memory step per tick. A halted vCPU gives its core up until it is kicked.
//!
//! Measured (6 vCPUs on 2 cores, 1,500 acquisitions, seeds 1-3): plain tickets ~1.5 M ticks,
//! test-and-set ~75 k, pv tickets ~143 k (about 1,460 kicks). The assertions leave margin
//! around that: pv within 3x of test-and-set, plain tickets at least 8x slower than pv.
//!
//! It compares the three wait modes by ticks to complete a fixed number of acquisitions, and
//! checks mutual exclusion, FIFO order, and that no vCPU halts forever (a bounded run: a
//! missing kick shows up as "every vCPU halted", not as a hung test).

mod support;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use lull_pv::pv_spinlock::{
    Acquire, Poll, PvLockOps, PvTicketLock, WaitMode, WaitSlot, TICKET_STEP,
};
use support::Rng;

#[derive(Clone, Copy, Debug)]
struct Config {
    vcpus: usize,
    cores: usize,
    acquisitions: u64,
    hold: u64,
    think: (u64, u64),
    slice: (u64, u64),
    /// Ticks the unlocker spends in the kick hypercall.
    kick_cost: u64,
    max_ticks: u64,
}

const CONFIG: Config = Config {
    vcpus: 6,
    cores: 2,
    acquisitions: 1_500,
    hold: 10,
    think: (20, 80),
    slice: (200, 2_000),
    kick_cost: 30,
    max_ticks: 20_000_000,
};

const PV: WaitMode = WaitMode::PvTicket {
    spin_threshold: 100,
};

struct SimOps {
    cpu: Cell<usize>,
    slots: Vec<WaitSlot>,
    kicked: RefCell<Vec<bool>>,
    kicks: Cell<u64>,
}

impl PvLockOps for SimOps {
    fn this_cpu(&self) -> usize {
        self.cpu.get()
    }
    fn wait_slots(&self) -> &[WaitSlot] {
        &self.slots
    }
    fn halt(&self, _cpu: usize) {
        unreachable!("the simulation halts vCPUs itself");
    }
    fn kick(&self, cpu: usize) {
        self.kicked.borrow_mut()[cpu] = true;
        self.kicks.set(self.kicks.get() + 1);
    }
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Think(u64),
    Acquiring {
        acquire: Acquire,
        arrival: Option<u64>,
    },
    Holding(u64),
}

#[derive(Debug)]
struct Vcpu {
    phase: Phase,
    halted: bool,
    busy: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Stall {
    /// Every vCPU halted: someone waits for a kick that never comes.
    AllHalted {
        tick: u64,
        done: u64,
    },
    Timeout {
        done: u64,
    },
}

#[derive(Debug)]
struct Outcome {
    ticks: u64,
    /// Acquisitions that overtook an earlier arrival.
    overtakes: u64,
    kicks: u64,
}

fn simulate(mode: WaitMode, cfg: Config, seed: u64) -> Result<Outcome, Stall> {
    let mut rng = Rng::new(seed);
    let lock = PvTicketLock::new();
    let ops = SimOps {
        cpu: Cell::new(0),
        slots: (0..cfg.vcpus).map(|_| WaitSlot::new()).collect(),
        kicked: RefCell::new(vec![false; cfg.vcpus]),
        kicks: Cell::new(0),
    };
    let range = |rng: &mut Rng, (lo, hi): (u64, u64)| lo + rng.below(hi - lo + 1);
    let mut vcpus: Vec<Vcpu> = (0..cfg.vcpus)
        .map(|_| Vcpu {
            phase: Phase::Think(range(&mut rng, cfg.think)),
            halted: false,
            busy: 0,
        })
        .collect();
    let mut runq: VecDeque<usize> = (0..cfg.vcpus).collect();
    let mut cores: Vec<Option<(usize, u64)>> = vec![None; cfg.cores];
    let mut holder: Option<usize> = None;
    let mut arrivals = 0u64;
    let mut last_arrival_served: Option<u64> = None;
    let mut overtakes = 0u64;
    let mut done = 0u64;
    let mut next_ticket = 0u32;

    for tick in 0..cfg.max_ticks {
        // Kicked halted vCPUs become runnable (the kick consumed their halt).
        for (id, vcpu) in vcpus.iter_mut().enumerate() {
            if vcpu.halted && std::mem::take(&mut ops.kicked.borrow_mut()[id]) {
                vcpu.halted = false;
                runq.push_back(id);
            }
        }
        // Host scheduling: expired slices go to the back of the queue.
        for core in cores.iter_mut() {
            if let Some((id, end)) = *core {
                if vcpus[id].halted {
                    *core = None;
                } else if tick >= end && !runq.is_empty() {
                    runq.push_back(id);
                    *core = None;
                }
            }
            if core.is_none() {
                if let Some(id) = runq.pop_front() {
                    *core = Some((id, tick + range(&mut rng, cfg.slice)));
                }
            }
        }
        if cores.iter().all(Option::is_none) {
            return Err(Stall::AllHalted { tick, done });
        }
        // One step of each running vCPU.
        for core in cores.iter_mut() {
            let Some((id, _)) = *core else { continue };
            let vcpu = &mut vcpus[id];
            if vcpu.busy > 0 {
                vcpu.busy -= 1;
                continue;
            }
            ops.cpu.set(id);
            match &mut vcpu.phase {
                Phase::Think(left) => {
                    *left -= 1;
                    if *left == 0 {
                        vcpu.phase = Phase::Acquiring {
                            acquire: Acquire::new(mode),
                            arrival: None,
                        };
                    }
                }
                Phase::Acquiring { acquire, arrival } => {
                    // Arrival = the first touch of the lock (the ticket, for ticket modes).
                    let arrived = *arrival.get_or_insert_with(|| {
                        arrivals += 1;
                        arrivals
                    });
                    match acquire.poll(&lock, &ops) {
                        Poll::Acquired(ticket) => {
                            assert_eq!(holder, None, "seed {seed}: two holders");
                            holder = Some(id);
                            if mode != WaitMode::TestAndSet {
                                assert_eq!(ticket, next_ticket, "seed {seed}: ticket order");
                            }
                            next_ticket = ticket.wrapping_add(TICKET_STEP);
                            // Someone who arrived earlier is still waiting?
                            if last_arrival_served.is_some_and(|last| arrived < last) {
                                overtakes += 1;
                            }
                            last_arrival_served =
                                Some(last_arrival_served.map_or(arrived, |last| last.max(arrived)));
                            vcpu.phase = Phase::Holding(cfg.hold);
                        }
                        Poll::Spin => {}
                        Poll::Halt => {
                            let kicked = std::mem::take(&mut ops.kicked.borrow_mut()[id]);
                            if !kicked {
                                vcpu.halted = true;
                                *core = None;
                            }
                        }
                    }
                }
                Phase::Holding(left) => {
                    *left -= 1;
                    if *left == 0 {
                        holder = None;
                        let kicks = ops.kicks.get();
                        lock.unlock(&ops);
                        if ops.kicks.get() > kicks {
                            vcpu.busy = cfg.kick_cost;
                        }
                        done += 1;
                        if done == cfg.acquisitions {
                            return Ok(Outcome {
                                ticks: tick,
                                overtakes,
                                kicks: ops.kicks.get(),
                            });
                        }
                        vcpu.phase = Phase::Think(range(&mut rng, cfg.think));
                    }
                }
            }
        }
    }
    Err(Stall::Timeout { done })
}

const SEEDS: [u64; 3] = [1, 2, 3];

#[test]
fn pv_tickets_survive_overcommit_where_plain_tickets_collapse() {
    for seed in SEEDS {
        let ticket = simulate(WaitMode::Ticket, CONFIG, seed).unwrap();
        let tas = simulate(WaitMode::TestAndSet, CONFIG, seed).unwrap();
        let pv = simulate(PV, CONFIG, seed)
            .unwrap_or_else(|stall| panic!("seed {seed}: pv tickets stalled: {stall:?}"));
        println!(
            "seed {seed}: {} vCPUs on {} cores, {} acquisitions: ticket {} ticks, \
             test-and-set {} ticks ({} overtakes), pv-ticket {} ticks ({} kicks)",
            CONFIG.vcpus,
            CONFIG.cores,
            CONFIG.acquisitions,
            ticket.ticks,
            tas.ticks,
            tas.overtakes,
            pv.ticks,
            pv.kicks
        );
        assert!(pv.kicks > 0, "seed {seed}: the slow path was not exercised");
        assert!(
            pv.ticks <= 3 * tas.ticks,
            "seed {seed}: pv {} vs test-and-set {}",
            pv.ticks,
            tas.ticks
        );
        assert!(
            ticket.ticks >= 8 * pv.ticks,
            "seed {seed}: plain tickets {} vs pv {}",
            ticket.ticks,
            pv.ticks
        );
        // FIFO: tickets (plain or pv) never let a later arrival overtake; test-and-set does.
        assert_eq!(ticket.overtakes, 0);
        assert_eq!(pv.overtakes, 0);
        assert!(
            tas.overtakes > 0,
            "seed {seed}: test-and-set happened to be fair"
        );
    }
}

#[test]
fn pv_tickets_cost_little_without_overcommit() {
    let cfg = Config {
        vcpus: 2,
        cores: 2,
        ..CONFIG
    };
    for seed in SEEDS {
        let ticket = simulate(WaitMode::Ticket, cfg, seed).unwrap();
        let pv = simulate(PV, cfg, seed).unwrap();
        println!(
            "seed {seed}: 2 vCPUs on 2 cores: ticket {} ticks, pv-ticket {} ticks",
            ticket.ticks, pv.ticks
        );
        assert!(
            pv.ticks * 4 <= ticket.ticks * 5,
            "seed {seed}: {pv:?} vs {ticket:?}"
        );
    }
}

/// Every vCPU that halts is eventually kicked: the run completes for many seeds and shapes.
/// (Without the unlocker's kick, the first halted waiter never runs again, everyone queues
/// behind its ticket and halts too, and the run ends in `AllHalted`.)
#[test]
fn no_vcpu_halts_forever() {
    for seed in 0..40 {
        let cfg = Config {
            vcpus: 2 + (seed % 5) as usize,
            cores: 1 + (seed % 3) as usize,
            acquisitions: 300,
            ..CONFIG
        };
        let outcome = simulate(PV, cfg, seed)
            .unwrap_or_else(|stall| panic!("seed {seed} {cfg:?}: {stall:?}"));
        assert_eq!(outcome.overtakes, 0);
    }
}

/// Short holds, short thinks and a tiny spin threshold put many unlocks inside the slow path's
/// windows (between publishing the slot, registering, and halting), with preemption anywhere.
#[test]
fn slow_path_windows_lose_no_wakeup() {
    let mode = WaitMode::PvTicket { spin_threshold: 2 };
    for seed in 0..300 {
        let cfg = Config {
            vcpus: 2 + (seed % 4) as usize,
            cores: 1 + (seed % 3) as usize,
            acquisitions: 200,
            hold: 1 + seed % 3,
            think: (1, 4),
            slice: (5, 60),
            kick_cost: 1,
            max_ticks: 1_000_000,
        };
        simulate(mode, cfg, seed).unwrap_or_else(|stall| panic!("seed {seed} {cfg:?}: {stall:?}"));
    }
}

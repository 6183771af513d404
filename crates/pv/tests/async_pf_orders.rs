//! The async PF table over every order of events proptest can find.
//!
//! A history: each fault has a token, a "not present" (NP) and a "page ready" (R), delivered
//! to the table in either order (R overtakes NP when the interrupt is taken before the #PF
//! handler reaches the table); wake-alls fall anywhere except between an overtaking R and its
//! NP (the host broadcasts only when async PF is re-enabled, by the guest itself, so no NP of
//! that vCPU is in flight then). The table is sequential (the kernel serialises it with a
//! spinlock), so these orders are all its concurrency.

use std::collections::HashMap;

use lull_pv::async_pf::{AsyncPfTable, NotPresentAction};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
enum Event {
    NotPresent { token: u32, can_sleep: bool },
    Ready(u32),
    WakeAll,
}

/// Builds a history from per-fault (NP key, R key, can_sleep) and wake-all keys.
fn history(faults: &[(u16, u16, bool)], wake_alls: &[u16]) -> Vec<Event> {
    let mut keyed = Vec::new();
    for (i, &(np, r, can_sleep)) in faults.iter().enumerate() {
        let token = i as u32 + 1;
        keyed.push((np, 0, Event::NotPresent { token, can_sleep }));
        keyed.push((r, 1, Event::Ready(token)));
    }
    for &key in wake_alls {
        // Not while an overtaking R waits for its NP (compared as the sort below orders).
        let in_flight = faults
            .iter()
            .any(|&(np, r, _)| (r, 1) < (key, 2) && (key, 2) < (np, 0));
        if !in_flight {
            keyed.push((key, 2, Event::WakeAll));
        }
    }
    keyed.sort_by_key(|&(key, tie, _)| (key, tie));
    keyed.into_iter().map(|(_, _, event)| event).collect()
}

/// Runs a history; returns (woken count per waiter, registered waiters, proceeded tokens).
fn run(table: &mut AsyncPfTable<u32>, events: &[Event]) -> (HashMap<u32, u32>, Vec<u32>) {
    let mut woken: HashMap<u32, u32> = HashMap::new();
    let mut registered = Vec::new();
    for event in events {
        match *event {
            Event::NotPresent { token, can_sleep } => {
                match table.not_present(token, token, can_sleep).unwrap() {
                    NotPresentAction::Sleep | NotPresentAction::HaltUntilReady => {
                        registered.push(token);
                    }
                    NotPresentAction::Proceed => {}
                }
            }
            Event::Ready(token) => {
                if let Some(w) = table.page_ready(token) {
                    *woken.entry(w).or_default() += 1;
                }
            }
            Event::WakeAll => {
                for w in table.wake_all() {
                    *woken.entry(w).or_default() += 1;
                }
            }
        }
    }
    (woken, registered)
}

fn faults() -> impl Strategy<Value = Vec<(u16, u16, bool)>> {
    prop::collection::vec((0..200u16, 0..200u16, any::<bool>()), 0..24)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// No lost wake-up (every registered waiter is woken) and no double wake-up (exactly once;
    /// waiters that proceeded are never woken).
    #[test]
    fn every_waiter_wakes_exactly_once(
        faults in faults(),
        wake_alls in prop::collection::vec(0..200u16, 0..3),
    ) {
        let events = history(&faults, &wake_alls);
        let mut table = AsyncPfTable::with_capacity(64, 64);
        let (woken, registered) = run(&mut table, &events);
        for token in &registered {
            prop_assert_eq!(woken.get(token).copied(), Some(1), "waiter {} in {:?}", token, events);
        }
        for (waiter, count) in &woken {
            prop_assert!(registered.contains(waiter), "{} woken but never slept", waiter);
            prop_assert_eq!(*count, 1);
        }
        prop_assert_eq!(table.waiters(), 0);
        prop_assert_eq!(table.dropped_ready_early(), 0);
    }

    /// With a tiny early-ready queue and junk readies from the host, memory stays bounded and
    /// nobody is woken twice; a waiter can only be left asleep if its early ready was dropped,
    /// and each such drop is counted.
    #[test]
    fn junk_readies_stay_bounded(
        faults in faults(),
        junk in prop::collection::vec((0..200u16, 1000..1100u32), 0..40),
    ) {
        let mut events = history(&faults, &[]);
        for &(at, token) in &junk {
            let at = usize::from(at) % (events.len() + 1);
            events.insert(at, Event::Ready(token));
        }
        let mut table = AsyncPfTable::with_capacity(64, 2);
        let (woken, registered) = run(&mut table, &events);
        prop_assert!(table.ready_early() <= 2);
        let asleep = registered.iter().filter(|t| !woken.contains_key(t)).count() as u64;
        prop_assert!(asleep <= table.dropped_ready_early());
        prop_assert!(woken.values().all(|&n| n == 1));
    }
}

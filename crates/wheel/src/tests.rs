//! Host tests for the timer wheel: exact expiry, never early, bounded lateness, wrap, horizon.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn drain<T>(wheel: &mut TimerWheel<T>, now: u64) -> Vec<ExpiredTimer<T>> {
    let mut out = Vec::new();
    wheel.advance_to(now, |t| out.push(t));
    out
}

#[test]
fn level_table_matches_documentation_for_hz_250() {
    const JIFFY_MS: u64 = 4;
    let expected_granularity_ms = [4, 32, 256, 2048, 16384, 131072, 1048576, 8388608, 67108864];
    let expected_range_jiffies = [
        63, 504, 4032, 32256, 258048, 2064384, 16515072, 132120576, 1056964608,
    ];
    for level in 0..LEVEL_DEPTH {
        assert_eq!(
            level_granularity(level) * JIFFY_MS,
            expected_granularity_ms[level]
        );
        assert_eq!(level_range(level), expected_range_jiffies[level]);
    }
    // ~49 days at HZ = 250.
    assert_eq!(HORIZON_JIFFIES * JIFFY_MS / 1000 / 86400, 48);
}

#[test]
fn level_zero_timers_fire_exactly_on_their_jiffy() {
    let mut wheel = TimerWheel::new(100);
    wheel.insert(105, "a").unwrap();
    wheel.insert(163, "b").unwrap();
    assert!(drain(&mut wheel, 104).is_empty());
    let fired = drain(&mut wheel, 105);
    assert_eq!(fired.len(), 1);
    assert_eq!((fired[0].value, fired[0].bucket_expiry), ("a", 105));
    assert!(drain(&mut wheel, 162).is_empty());
    assert_eq!(drain(&mut wheel, 163)[0].value, "b");
    assert!(wheel.is_empty());
}

#[test]
fn coarse_timers_are_late_by_less_than_a_granule_never_early() {
    let mut wheel = TimerWheel::new(0);
    // Level 1 (granule 8): 100 rounds up to 104.
    wheel.insert(100, ()).unwrap();
    for now in 0..104 {
        assert!(drain(&mut wheel, now).is_empty(), "fired early at {now}");
    }
    let fired = drain(&mut wheel, 104);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].bucket_expiry, 104);
}

#[test]
fn past_expiry_fires_on_next_advance() {
    let mut wheel = TimerWheel::new(1000);
    wheel.insert(10, 1).unwrap();
    assert_eq!(wheel.next_expiry(), Some(1000));
    assert_eq!(drain(&mut wheel, 1000).len(), 1);
}

#[test]
fn cancel_and_stale_handles() {
    let mut wheel = TimerWheel::new(0);
    let a = wheel.insert(10, 'a').unwrap();
    let b = wheel.insert(10, 'b').unwrap();
    assert_eq!(wheel.cancel(a), Ok('a'));
    assert_eq!(wheel.cancel(a), Err(WheelError::StaleHandle));
    assert_eq!(wheel.expires(a), Err(WheelError::StaleHandle));
    let fired = drain(&mut wheel, 10);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].handle, b);
    // The handle of an expired timer is stale too, even after its entry is reused.
    let c = wheel.insert(20, 'c').unwrap();
    assert!(!wheel.is_armed(b));
    assert_eq!(wheel.modify(b, 30), Err(WheelError::StaleHandle));
    assert_eq!(wheel.get(c), Ok(&'c'));
}

#[test]
fn modify_moves_timer_between_levels() {
    let mut wheel = TimerWheel::new(0);
    let h = wheel.insert(10_000, ()).unwrap();
    wheel.modify(h, 5).unwrap();
    assert_eq!(wheel.next_expiry(), Some(5));
    assert_eq!(drain(&mut wheel, 5).len(), 1);
}

#[test]
fn next_expiry_reports_earliest_bucket_and_skips_idle_jiffies() {
    let mut wheel = TimerWheel::new(0);
    assert_eq!(wheel.next_expiry(), None);
    wheel.insert(4000, ()).unwrap(); // level 2, granule 64: 4000 -> 4032
    wheel.insert(70, ()).unwrap(); // level 1, granule 8: 70 -> 72
    assert_eq!(wheel.next_expiry(), Some(72));
    assert_eq!(drain(&mut wheel, 72).len(), 1);
    assert_eq!(wheel.next_expiry(), Some(4032));
    // A long idle jump: one call catches up.
    assert!(drain(&mut wheel, 4031).is_empty());
    assert_eq!(wheel.clock(), 4032);
    assert_eq!(drain(&mut wheel, 1_000_000).len(), 1);
    assert_eq!(wheel.next_expiry(), None);
}

#[test]
fn works_across_u64_wrap() {
    let start = u64::MAX - 50;
    let mut wheel = TimerWheel::new(start);
    let targets = [u64::MAX - 10, u64::MAX, 0, 5, 100, 3000];
    for (i, &t) in targets.iter().enumerate() {
        wheel.insert(t, i).unwrap();
    }
    let mut now = start;
    let mut fired = Vec::new();
    for _ in 0..4000 {
        for timer in drain(&mut wheel, now) {
            assert!(time_after_eq(now, timer.expires), "early at {now}");
            fired.push((timer.value, now));
        }
        now = now.wrapping_add(1);
    }
    assert_eq!(fired.len(), targets.len());
    // Level-0 targets fire on their exact jiffy.
    assert!(fired.contains(&(0, u64::MAX - 10)));
    assert!(fired.contains(&(1, u64::MAX)));
    assert!(fired.contains(&(2, 0)));
    assert!(fired.contains(&(3, 5)));
}

#[test]
fn huge_expiry_is_parked_at_horizon_and_never_fires_early() {
    let mut wheel = TimerWheel::new(0);
    let expires = HORIZON_JIFFIES * 3 + 12345;
    wheel.insert(expires, ()).unwrap();
    let parked = wheel.next_expiry().unwrap();
    assert!(parked <= HORIZON_JIFFIES + level_granularity(LEVEL_DEPTH - 1));
    // Walk through every bucket the wheel visits before the real expiry.
    let mut visits = 0;
    while let Some(next) = wheel.next_expiry() {
        if next >= expires {
            break;
        }
        assert!(drain(&mut wheel, next).is_empty(), "fired early at {next}");
        visits += 1;
        assert!(visits < 100);
    }
    let due = wheel.next_expiry().unwrap();
    assert!(due >= expires && due - expires < level_granularity(LEVEL_DEPTH - 1));
    assert_eq!(drain(&mut wheel, due).len(), 1);
}

#[test]
fn huge_expiry_near_wrap_is_refiled_not_fired() {
    let start = u64::MAX - 1000;
    let mut wheel = TimerWheel::new(start);
    let expires = start.wrapping_add(HORIZON_JIFFIES * 2);
    wheel.insert(expires, ()).unwrap();
    let first = wheel.next_expiry().unwrap();
    assert!(drain(&mut wheel, first).is_empty());
    assert!(wheel.len() == 1);
    let fired = drain(
        &mut wheel,
        expires.wrapping_add(level_granularity(LEVEL_DEPTH - 1)),
    );
    assert_eq!(fired.len(), 1);
}

#[test]
fn callback_rearming_for_now_does_not_loop() {
    let mut wheel = TimerWheel::new(0);
    wheel.insert(3, 0u32).unwrap();
    let mut count = 0;
    while let Some(timer) = wheel.pop_expired(3) {
        count += 1;
        assert!(count < 5);
        wheel.insert(3, timer.value + 1).unwrap();
    }
    assert_eq!(count, 1);
    assert_eq!(wheel.pop_expired(4).map(|t| t.value), Some(1));
}

#[test]
fn due_timers_can_be_cancelled_or_moved_while_others_are_handed_out() {
    let mut wheel = TimerWheel::new(0);
    // Eight timers in one level-1 bucket (granule 8: all collected at 104).
    let handles: Vec<WheelHandle> = (0..8u32)
        .map(|i| wheel.insert(97 + u64::from(i), i).unwrap())
        .collect();
    let first = wheel.pop_expired(104).unwrap();
    assert_eq!(first.bucket_expiry, 104);
    // The rest are due and waiting; a callback cancels one and moves another.
    let cancel = handles
        .iter()
        .copied()
        .find(|&h| h != first.handle)
        .unwrap();
    let moved = handles
        .iter()
        .copied()
        .find(|&h| h != first.handle && h != cancel)
        .unwrap();
    let cancelled_value = *wheel.get(cancel).unwrap();
    assert_eq!(wheel.cancel(cancel), Ok(cancelled_value));
    wheel.modify(moved, 200).unwrap();
    assert_eq!(wheel.len(), 6);
    let rest: Vec<ExpiredTimer<u32>> = core::iter::from_fn(|| wheel.pop_expired(104)).collect();
    assert_eq!(rest.len(), 5);
    assert!(rest
        .iter()
        .all(|t| t.handle != cancel && t.handle != moved && t.bucket_expiry == 104));
    let mut values: Vec<u32> = rest.iter().map(|t| t.value).collect();
    values.push(first.value);
    values.push(cancelled_value);
    values.push(*wheel.get(moved).unwrap());
    values.sort();
    assert_eq!(values, (0..8).collect::<Vec<_>>());
    assert_eq!(wheel.next_expiry(), Some(200));
    assert_eq!(drain(&mut wheel, 200).len(), 1);
    assert!(wheel.is_empty());
    assert_eq!(wheel.next_expiry(), None);
}

#[test]
fn cancelling_the_only_due_timer_leaves_nothing_due() {
    let mut wheel = TimerWheel::new(0);
    let a = wheel.insert(5, 'a').unwrap();
    let b = wheel.insert(5, 'b').unwrap();
    let first = wheel.pop_expired(5).unwrap();
    let other = if first.handle == a { b } else { a };
    assert_eq!(wheel.next_expiry(), Some(5));
    wheel.cancel(other).unwrap();
    assert_eq!(wheel.next_expiry(), None);
    assert!(wheel.pop_expired(5).is_none());
}

/// Thousands of timers in large buckets, with cancels, moves and inserts made between the
/// hand-outs of one collection (as callbacks do): every armed timer runs once, never early,
/// and cancelled ones never run.
#[test]
fn large_random_workload_with_callbacks_matches_a_model() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    let mut wheel = TimerWheel::new(0);
    let mut model: BTreeMap<WheelHandle, u64> = BTreeMap::new();
    let mut handles: Vec<WheelHandle> = Vec::new();
    for _ in 0..20_000 {
        let expires = random(50_000);
        let h = wheel.insert(expires, expires).unwrap();
        model.insert(h, expires);
        handles.push(h);
    }
    let mut now = 0;
    while !model.is_empty() {
        now += 1 + random(700);
        while let Some(timer) = wheel.pop_expired(now) {
            let expires = model
                .remove(&timer.handle)
                .expect("ran once, only if armed");
            assert_eq!((timer.expires, timer.value), (expires, expires));
            assert!(time_after_eq(now, expires) && time_after_eq(timer.bucket_expiry, expires));
            // A "callback": cancel, move or add a random timer.
            let victim = handles[random(handles.len() as u64) as usize];
            match random(3) {
                0 => assert_eq!(
                    wheel.cancel(victim).is_ok(),
                    model.remove(&victim).is_some()
                ),
                1 => {
                    let expires = now + random(5_000);
                    if wheel.modify(victim, expires).is_ok() {
                        *wheel.get_mut(victim).unwrap() = expires;
                        model.insert(victim, expires);
                    }
                }
                _ if model.len() < 20_000 => {
                    let expires = now + random(5_000);
                    let h = wheel.insert(expires, expires).unwrap();
                    model.insert(h, expires);
                    handles.push(h);
                }
                _ => {}
            }
            assert_eq!(wheel.len(), model.len());
        }
        if let Some(next) = wheel.next_expiry() {
            assert!(!time_after_eq(now, next));
        }
        assert!(now < 1_000_000, "wheel stalled with {} timers", model.len());
    }
    assert!(wheel.is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u64),
    Cancel(usize),
    Modify(usize, u64),
    Advance(u64),
}

fn delta() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..70,
        0u64..600,
        0u64..40_000,
        0u64..3_000_000,
        0u64..(HORIZON_JIFFIES * 3)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => delta().prop_map(Op::Insert),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => (any::<usize>(), delta()).prop_map(|(i, d)| Op::Modify(i, d)),
        4 => prop_oneof![1u64..3, 1u64..100, 1u64..100_000, 1u64..(HORIZON_JIFFIES * 2)].prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// Against a brute-force model: every timer fires exactly once, never before its expiry,
    /// and its bucket expiry is late by less than 8/63 of the timeout it was armed with (or
    /// not late at all in level 0). Runs both far from and across the u64 wrap.
    #[test]
    fn never_early_never_lost(start in prop_oneof![0u64..1000, (u64::MAX - 5_000_000)..u64::MAX],
                              ops in proptest::collection::vec(op(), 1..150)) {
        let mut wheel = TimerWheel::new(start);
        let mut now = start;
        // handle -> (expires, earliest jiffy the wheel could still hand it out, timeout from
        // the wheel clock when armed)
        let mut model: BTreeMap<WheelHandle, (u64, u64, u64)> = BTreeMap::new();
        // An expiry the wheel already processed is handed out at the wheel clock.
        let effective = |wheel: &TimerWheel<()>, expires: u64| {
            let clock = wheel.clock();
            let first = if time_after_eq(expires, clock) { expires } else { clock };
            (first, first.wrapping_sub(clock))
        };
        for op in ops {
            match op {
                Op::Insert(d) => {
                    let expires = now.wrapping_add(d);
                    let (first, timeout) = effective(&wheel, expires);
                    let h = wheel.insert(expires, ()).unwrap();
                    model.insert(h, (expires, first, timeout));
                }
                Op::Cancel(i) if !model.is_empty() => {
                    let h = *model.keys().nth(i % model.len()).unwrap();
                    model.remove(&h);
                    prop_assert!(wheel.cancel(h).is_ok());
                    prop_assert!(wheel.cancel(h).is_err());
                }
                Op::Modify(i, d) if !model.is_empty() => {
                    let h = *model.keys().nth(i % model.len()).unwrap();
                    let expires = now.wrapping_add(d);
                    let (first, timeout) = effective(&wheel, expires);
                    wheel.modify(h, expires).unwrap();
                    model.insert(h, (expires, first, timeout));
                }
                Op::Advance(step) => {
                    // Never sleep past the wheel's next expiry by more than `step`, so lateness
                    // is measured by bucket expiry rather than by our sampling.
                    now = now.wrapping_add(step);
                    let mut fired = Vec::new();
                    wheel.advance_to(now, |t| fired.push(t));
                    for timer in fired {
                        let (expires, first, timeout) = model.remove(&timer.handle)
                            .expect("fired a timer that was not armed (lost or duplicated)");
                        prop_assert_eq!(expires, timer.expires);
                        prop_assert!(time_after_eq(now, expires), "fired early");
                        prop_assert!(time_after_eq(timer.bucket_expiry, expires), "bucket before expiry");
                        let late = timer.bucket_expiry.wrapping_sub(first);
                        if timeout <= HORIZON_JIFFIES {
                            prop_assert!(late == 0 || late * 63 < 8 * timeout,
                                "late by {} for timeout {}", late, timeout);
                        } else {
                            prop_assert!(late < level_granularity(LEVEL_DEPTH - 1));
                        }
                    }
                    // Nothing collectable by `now` is left behind.
                    if let Some(next) = wheel.next_expiry() {
                        prop_assert!(!time_after_eq(now, next), "bucket {} left behind at {}", next, now);
                    }
                }
                _ => {}
            }
            prop_assert_eq!(wheel.len(), model.len());
        }
    }
}

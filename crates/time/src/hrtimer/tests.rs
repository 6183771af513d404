//! Host tests for hrtimer bases against a fake event device and a fake clock.

use super::*;
use crate::clockevents::ClockEvent;
use crate::test_support::{DeviceCall, FakeEventDevice};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Named(&'static str);

impl TimerFunction for Named {
    fn name(&self) -> &'static str {
        self.0
    }
}

fn oneshot_device() -> ClockEvent<FakeEventDevice> {
    let mut device = ClockEvent::new(FakeEventDevice::lapic(), 4_000_000).unwrap();
    device.switch_state(ClockEventState::Shutdown).unwrap();
    device.switch_state(ClockEventState::OneShot).unwrap();
    device
}

fn high_res_base(device: &mut ClockEvent<FakeEventDevice>) -> HrTimerCpuBase<Named> {
    let mut base = HrTimerCpuBase::new(0);
    base.switch_to_high_res(device, 0).unwrap();
    base
}

/// The sequence the property test `never_early_and_on_time` shrank to: timer 1 is armed for
/// 1,297 ns; at 549 an already-due timer starts, which the device could only take at
/// 549 + its minimum delta. The armed event must stay, and both run at it.
#[test]
fn a_due_timer_does_not_push_the_armed_event_later() {
    let mut device = oneshot_device();
    let mut base = high_res_base(&mut device);
    let min_delta = device.min_delta_ns();
    let ids: Vec<HrTimerId> = (0..3u64)
        .map(|i| base.create(ClockId::Monotonic, Named("t"), i).unwrap())
        .collect();
    base.start(&mut device, ids[0], 549, HrTimerMode::Absolute, 0, 0, None)
        .unwrap();
    base.start(&mut device, ids[1], 1297, HrTimerMode::Absolute, 0, 0, None)
        .unwrap();
    let first = device.next_event_ns().unwrap();
    let mut fired = Vec::new();
    base.interrupt(&mut device, first, |f| {
        fired.push(f.data());
        HrTimerRestart::NoRestart
    })
    .unwrap();
    assert_eq!(fired, [0]);
    let armed = device.next_event_ns().unwrap();
    assert!(armed <= 1297.max(first + min_delta), "armed at {armed}");
    base.start(
        &mut device,
        ids[2],
        first,
        HrTimerMode::Absolute,
        0,
        first,
        None,
    )
    .unwrap();
    assert_eq!(device.next_event_ns(), Some(armed), "the armed event moved");
    base.interrupt(&mut device, armed, |f| {
        fired.push(f.data());
        HrTimerRestart::NoRestart
    })
    .unwrap();
    assert_eq!(fired, [0, 2, 1], "both at the armed event, in expiry order");
}

#[test]
fn device_is_reprogrammed_only_when_the_head_changes() {
    let mut device = oneshot_device();
    let mut base = high_res_base(&mut device);
    let a = base.create(ClockId::Monotonic, Named("a"), 0).unwrap();
    let b = base.create(ClockId::Monotonic, Named("b"), 0).unwrap();
    let c = base.create(ClockId::Monotonic, Named("c"), 0).unwrap();
    base.start(&mut device, a, 1_000_000, HrTimerMode::Absolute, 0, 0, None)
        .unwrap();
    assert_eq!(device.device().next_event_calls(), 1);
    assert_eq!(base.expires_next(), Some(1_000_000));
    // Later timer: head unchanged, no hardware access.
    base.start(&mut device, b, 2_000_000, HrTimerMode::Absolute, 0, 0, None)
        .unwrap();
    assert_eq!(device.device().next_event_calls(), 1);
    // Earlier timer: new head, reprogrammed.
    base.start(&mut device, c, 500_000, HrTimerMode::Absolute, 0, 0, None)
        .unwrap();
    assert_eq!(device.device().next_event_calls(), 2);
    assert_eq!(
        device.device().calls.last(),
        Some(&DeviceCall::Next(500_000))
    );
    // Cancelling a non-head timer: no reprogram; cancelling the head: reprogram.
    assert_eq!(base.cancel(&mut device, b, 0), Ok(true));
    assert_eq!(device.device().next_event_calls(), 2);
    assert_eq!(base.cancel(&mut device, c, 0), Ok(true));
    assert_eq!(device.device().next_event_calls(), 3);
    assert_eq!(base.expires_next(), Some(1_000_000));
    assert_eq!(base.cancel(&mut device, c, 0), Ok(false));
    // Last timer gone: the device is stopped, not left armed.
    base.cancel(&mut device, a, 0).unwrap();
    assert_eq!(device.state(), ClockEventState::OneShotStopped);
    assert_eq!(base.expires_next(), None);
}

#[test]
fn timers_never_run_before_soft_expiry_even_on_spurious_interrupts() {
    let mut device = oneshot_device();
    let mut base = high_res_base(&mut device);
    let t = base.create(ClockId::Monotonic, Named("t"), 7).unwrap();
    base.start(
        &mut device,
        t,
        10_000,
        HrTimerMode::Relative,
        0,
        1_000,
        None,
    )
    .unwrap();
    let mut fired = Vec::new();
    let ran = base
        .interrupt(&mut device, 10_999, |f| {
            fired.push(f.data());
            HrTimerRestart::NoRestart
        })
        .unwrap();
    assert_eq!((ran, fired.len()), (0, 0));
    // Early interrupt: the device is re-armed for the remaining time.
    assert_eq!(device.device().calls.last(), Some(&DeviceCall::Next(1000)));
    base.interrupt(&mut device, 11_000, |f| {
        fired.push(f.data());
        HrTimerRestart::NoRestart
    })
    .unwrap();
    assert_eq!(fired, [7]);
    assert!(!base.is_queued(t));
}

#[test]
fn slack_lets_timers_share_one_interrupt() {
    let mut device = oneshot_device();
    let mut base = high_res_base(&mut device);
    let lazy = base.create(ClockId::Monotonic, Named("lazy"), 1).unwrap();
    let exact = base.create(ClockId::Monotonic, Named("exact"), 2).unwrap();
    base.start(
        &mut device,
        lazy,
        100_000,
        HrTimerMode::Absolute,
        100_000,
        0,
        None,
    )
    .unwrap();
    base.start(
        &mut device,
        exact,
        150_000,
        HrTimerMode::Absolute,
        0,
        0,
        None,
    )
    .unwrap();
    // Programmed for the earliest *hard* expiry: 150 µs, not 100 µs.
    assert_eq!(base.expires_next(), Some(150_000));
    let mut fired = Vec::new();
    base.interrupt(&mut device, 150_000, |f| {
        fired.push(f.data());
        HrTimerRestart::NoRestart
    })
    .unwrap();
    fired.sort();
    assert_eq!(fired, [1, 2]);
}

#[test]
fn periodic_callback_forwards_and_counts_overruns() {
    let mut device = oneshot_device();
    let mut base = high_res_base(&mut device);
    let t = base
        .create(ClockId::Monotonic, Named("periodic"), 0)
        .unwrap();
    base.start(&mut device, t, 1_000, HrTimerMode::Absolute, 0, 0, None)
        .unwrap();
    let mut overruns = Vec::new();
    // Late by 3.5 periods: forward skips the missed ones.
    base.interrupt(&mut device, 4_500, |f| {
        overruns.push(f.forward(1_000));
        HrTimerRestart::Restart
    })
    .unwrap();
    assert_eq!(overruns, [4]);
    assert_eq!(base.expires(t), Ok((5_000, 5_000)));
    assert!(base.is_queued(t));
    assert_eq!(base.expires_next(), Some(5_000));
}

#[test]
fn restart_without_forward_does_not_loop() {
    let mut device = oneshot_device();
    let mut base = high_res_base(&mut device);
    let t = base.create(ClockId::Monotonic, Named("stuck"), 0).unwrap();
    base.start(&mut device, t, 10, HrTimerMode::Absolute, 0, 0, None)
        .unwrap();
    let ran = base
        .interrupt(&mut device, 20, |_| HrTimerRestart::Restart)
        .unwrap();
    assert_eq!(ran, 1);
    assert!(base.is_queued(t));
    assert_eq!(base.counters().nr_retries, 1);
}

#[test]
fn several_restarts_in_one_pass_are_all_requeued_and_the_rest_stay_free() {
    let mut device = oneshot_device();
    let mut base = high_res_base(&mut device);
    let ids: Vec<_> = (0..5u64)
        .map(|n| {
            let clock = if n % 2 == 0 {
                ClockId::Monotonic
            } else {
                ClockId::Realtime
            };
            let id = base.create(clock, Named("p"), n).unwrap();
            base.start(&mut device, id, 100 + n, HrTimerMode::Absolute, 0, 0, None)
                .unwrap();
            id
        })
        .collect();
    // Timers 0, 1, 3 and 4 restart 1,000 ns later (across both clocks); 2 does not.
    let mut fired = Vec::new();
    let ran = base
        .interrupt(&mut device, 200, |f| {
            fired.push(f.data());
            if f.data() == 2 {
                return HrTimerRestart::NoRestart;
            }
            f.forward(1_000);
            HrTimerRestart::Restart
        })
        .unwrap();
    assert_eq!(ran, 5);
    fired.sort();
    assert_eq!(fired, [0, 1, 2, 3, 4]);
    for (n, &id) in ids.iter().enumerate() {
        assert_eq!(base.is_queued(id), n != 2, "timer {n}");
    }
    // The next pass fires exactly the four, once each; freeing timer 2 and creating a new
    // timer reuses its slot cleanly (the free list was not touched by the restart chain).
    base.destroy(&mut device, ids[2], 200).unwrap();
    let again = base.create(ClockId::Monotonic, Named("new"), 9).unwrap();
    assert_eq!(again.index, ids[2].index);
    let mut fired = Vec::new();
    base.interrupt(&mut device, 5_000, |f| {
        fired.push(f.data());
        HrTimerRestart::NoRestart
    })
    .unwrap();
    fired.sort();
    assert_eq!(fired, [0, 1, 3, 4]);
}

#[test]
fn forward_outside_callback() {
    let mut base: HrTimerCpuBase<Named> = HrTimerCpuBase::new(0);
    let mut device = oneshot_device();
    let t = base.create(ClockId::Monotonic, Named("f"), 0).unwrap();
    assert_eq!(base.forward(t, 0, 0), Err(HrTimerError::ZeroInterval));
    // Expiry 0, now 2500, interval 1000: moves to 3000 with 3 overruns.
    assert_eq!(base.forward(t, 2_500, 1_000), Ok(3));
    assert_eq!(base.forward(t, 2_500, 1_000), Ok(0));
    base.start(&mut device, t, 1, HrTimerMode::Relative, 0, 0, None)
        .unwrap();
    assert_eq!(base.forward(t, 10, 1), Err(HrTimerError::Queued));
}

#[test]
fn realtime_timers_follow_clock_changes() {
    let mut device = oneshot_device();
    let mut base = high_res_base(&mut device);
    let epoch_2024 = 1_704_067_200_000_000_000u64;
    base.set_realtime_offset(&mut device, epoch_2024 as i64, 0)
        .unwrap();
    let alarm = base.create(ClockId::Realtime, Named("alarm"), 1).unwrap();
    // Wall-clock alarm 10 s from boot.
    base.start(
        &mut device,
        alarm,
        epoch_2024 + 10_000_000_000,
        HrTimerMode::Absolute,
        0,
        0,
        None,
    )
    .unwrap();
    assert_eq!(base.expires_next(), Some(10_000_000_000));
    // At 1 s, the wall clock is set 9 s forward: the alarm is now due.
    base.set_realtime_offset(
        &mut device,
        epoch_2024 as i64 + 9_000_000_000,
        1_000_000_000,
    )
    .unwrap();
    assert_eq!(base.expires_next(), Some(1_000_000_000));
    let mut fired = 0;
    base.interrupt(&mut device, 1_000_000_000, |f| {
        assert_eq!(f.clock(), ClockId::Realtime);
        assert!(f.now() >= f.soft_expires());
        fired += 1;
        HrTimerRestart::NoRestart
    })
    .unwrap();
    assert_eq!(fired, 1);
}

#[test]
fn destroyed_ids_are_refused() {
    let mut device = oneshot_device();
    let mut base = high_res_base(&mut device);
    let t = base.create(ClockId::Monotonic, Named("t"), 0).unwrap();
    base.start(&mut device, t, 100, HrTimerMode::Absolute, 0, 0, None)
        .unwrap();
    base.destroy(&mut device, t, 0).unwrap();
    assert_eq!(base.queued_count(), 0);
    let reused = base.create(ClockId::Monotonic, Named("u"), 0).unwrap();
    assert_eq!(reused.index(), t.index());
    assert_eq!(
        base.start(&mut device, t, 1, HrTimerMode::Absolute, 0, 0, None),
        Err(HrTimerError::StaleId)
    );
    assert_eq!(base.cancel(&mut device, t, 0), Err(HrTimerError::StaleId));
    // Regression: destroying through a stale id must not free the slot's new owner, and an
    // id from nowhere must be refused rather than indexing out of bounds.
    assert_eq!(base.destroy(&mut device, t, 0), Err(HrTimerError::StaleId));
    assert!(base.expires(reused).is_ok());
    let foreign = HrTimerCpuBase::<Named>::new(1).create(ClockId::Monotonic, Named("x"), 0);
    let mut other = HrTimerCpuBase::<Named>::new(2);
    assert_eq!(
        other.destroy(&mut device, foreign.unwrap(), 0),
        Err(HrTimerError::StaleId)
    );
}

#[test]
fn next_event_without_skips_excluded_head() {
    let mut device = oneshot_device();
    let mut base = high_res_base(&mut device);
    let tick = base.create(ClockId::Monotonic, Named("tick"), 0).unwrap();
    let other = base.create(ClockId::Monotonic, Named("other"), 0).unwrap();
    base.start(&mut device, tick, 10, HrTimerMode::Absolute, 0, 0, None)
        .unwrap();
    assert_eq!(base.next_event_without(Some(tick)), None);
    base.start(&mut device, other, 50, HrTimerMode::Absolute, 5, 0, None)
        .unwrap();
    assert_eq!(base.next_event_without(Some(tick)), Some(55));
    assert_eq!(base.next_event(), Some(10));
}

#[test]
fn start_info_is_kept_across_restarts_and_not_inherited_by_a_reused_slot() {
    use crate::timer_stats::StartInfo;
    let mut device = oneshot_device();
    let mut base = high_res_base(&mut device);
    let t = base.create(ClockId::Monotonic, Named("t"), 7).unwrap();
    let info = StartInfo::kernel("first_site");
    base.start(&mut device, t, 100, HrTimerMode::Absolute, 0, 0, Some(info))
        .unwrap();
    // A restart without start info keeps the recorded one (as before the split).
    base.start(&mut device, t, 200, HrTimerMode::Absolute, 0, 0, None)
        .unwrap();
    let listed: Vec<_> = base.queued(ClockId::Monotonic).collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].start, Some(info));
    assert_eq!(listed[0].function, Named("t"));
    let mut seen = Vec::new();
    base.interrupt(&mut device, 200, |firing| {
        seen.push((
            firing.data(),
            firing.function(),
            firing.start_info().copied(),
        ));
        HrTimerRestart::NoRestart
    })
    .unwrap();
    assert_eq!(seen, [(7, Named("t"), Some(info))]);
    base.destroy(&mut device, t, 200).unwrap();
    let reused = base.create(ClockId::Monotonic, Named("u"), 8).unwrap();
    assert_eq!(reused.index(), t.index());
    assert_eq!(base.expires(reused), Ok((0, 0)));
    base.start(
        &mut device,
        reused,
        300,
        HrTimerMode::Absolute,
        0,
        200,
        None,
    )
    .unwrap();
    let listed: Vec<_> = base.queued(ClockId::Monotonic).collect();
    assert_eq!(listed[0].start, None);
    assert_eq!(listed[0].function, Named("u"));
}

/// Thousands of timers (deep heaps, every position index exercised) under a deterministic mix
/// of start, re-start, cancel, destroy and create, on both clocks: every queued timer is
/// listed with its expiry, and draining runs exactly the queued ones in hard-expiry order.
#[test]
fn large_random_workload_matches_a_model() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut random = move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    let mut device = oneshot_device();
    let mut base = high_res_base(&mut device);
    // id -> (clock, Some(hard expiry) while queued)
    let mut model: std::collections::HashMap<HrTimerId, (ClockId, Option<u64>)> =
        Default::default();
    let mut ids: Vec<HrTimerId> = Vec::new();
    for step in 0..30_000u64 {
        match random(8) {
            0..=2 => {
                let clock = ClockId::ALL[random(2) as usize];
                let id = base.create(clock, Named("w"), step).unwrap();
                ids.push(id);
                model.insert(id, (clock, None));
            }
            3 if !ids.is_empty() => {
                let id = ids.swap_remove(random(ids.len() as u64) as usize);
                let was_queued = model.remove(&id).unwrap().1.is_some();
                assert_eq!(base.is_queued(id), was_queued);
                base.destroy(&mut device, id, 0).unwrap();
                assert_eq!(base.expires(id), Err(HrTimerError::StaleId));
            }
            4 if !ids.is_empty() => {
                let id = ids[random(ids.len() as u64) as usize];
                let entry = model.get_mut(&id).unwrap();
                assert_eq!(base.cancel(&mut device, id, 0), Ok(entry.1.is_some()));
                entry.1 = None;
            }
            _ if !ids.is_empty() => {
                let id = ids[random(ids.len() as u64) as usize];
                let (soft, slack) = (1 + random(1_000_000), random(3));
                base.start(&mut device, id, soft, HrTimerMode::Absolute, slack, 0, None)
                    .unwrap();
                model.get_mut(&id).unwrap().1 = Some(soft + slack);
            }
            _ => {}
        }
    }
    let queued: usize = model.values().filter(|m| m.1.is_some()).count();
    assert!(queued > 1_000, "deep heaps: {queued} queued");
    assert_eq!(base.queued_count(), queued);
    for clock in ClockId::ALL {
        let mut expected: Vec<(u64, HrTimerId)> = model
            .iter()
            .filter(|(_, m)| m.0 == clock)
            .filter_map(|(&id, m)| m.1.map(|hard| (hard, id)))
            .collect();
        expected.sort();
        let listed: Vec<(u64, HrTimerId)> =
            base.queued(clock).map(|q| (q.hard_expires, q.id)).collect();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort();
        assert_eq!(listed_sorted, expected);
        assert!(listed.windows(2).all(|w| w[0].0 <= w[1].0));
    }
    let mut ran = Vec::new();
    base.run_expired(u64::MAX, |firing| {
        ran.push(firing.id());
        HrTimerRestart::NoRestart
    });
    assert_eq!(ran.len(), queued);
    assert_eq!(base.queued_count(), 0);
    assert!(ran
        .iter()
        .all(|id| model[id].1.is_some() && !base.is_queued(*id)));
}

#[derive(Debug, Clone)]
enum Op {
    Start {
        timer: usize,
        delay: u64,
        slack: u64,
        realtime: bool,
    },
    Cancel(usize),
    /// Let time run to the programmed event (plus a small interrupt latency).
    RunToEvent(u64),
    /// A spurious interrupt (another device, an IPI) after some delay.
    Spurious(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..8, prop_oneof![0u64..2_000, 0u64..5_000_000, 0u64..10_000_000_000],
              prop_oneof![Just(0u64), 0u64..100_000], any::<bool>())
            .prop_map(|(timer, delay, slack, realtime)| Op::Start { timer, delay, slack, realtime }),
        1 => (0usize..8).prop_map(Op::Cancel),
        4 => (0u64..3_000).prop_map(Op::RunToEvent),
        2 => (0u64..3_000_000).prop_map(Op::Spurious),
    ]
}

proptest! {
    /// Against a fake clock and fake device: no timer ever runs before its soft expiry; a
    /// timer runs by its hard expiry (or the device's minimum delta after being started) plus
    /// the interrupt latency; every started, uncancelled timer runs exactly once.
    #[test]
    fn never_early_and_on_time(ops in proptest::collection::vec(op(), 1..120)) {
        let mut device = oneshot_device();
        let mut base = high_res_base(&mut device);
        let offset = 1_000_000_000_000i64;
        base.set_realtime_offset(&mut device, offset, 0).unwrap();
        let min_delta = device.min_delta_ns();
        let ids: Vec<(HrTimerId, HrTimerId)> = (0..8u64).map(|i| (
            base.create(ClockId::Monotonic, Named("mono"), i).unwrap(),
            base.create(ClockId::Realtime, Named("real"), i + 100).unwrap(),
        )).collect();
        let mut now = 0u64;
        // data -> (soft mono, latest allowed mono)
        let mut pending: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
        let run = |base: &mut HrTimerCpuBase<Named>, device: &mut ClockEvent<FakeEventDevice>,
                       now: u64, pending: &mut std::collections::BTreeMap<u64, (u64, u64)>,
                       latency: u64| -> Result<(), TestCaseError> {
            let mut fired = Vec::new();
            base.interrupt(device, now, |f| { fired.push((f.data(), f.now(), f.soft_expires())); HrTimerRestart::NoRestart }).unwrap();
            for (data, clock_now, soft) in fired {
                prop_assert!(clock_now >= soft, "timer {} ran early", data);
                let (soft_mono, latest) = pending.remove(&data).expect("ran a timer that was not pending");
                prop_assert!(now >= soft_mono);
                prop_assert!(now <= latest + latency, "timer {} late: now {} latest {}", data, now, latest);
            }
            Ok(())
        };
        for op in ops {
            match op {
                Op::Start { timer, delay, slack, realtime } => {
                    let (mono_id, real_id) = ids[timer];
                    let (id, data) = if realtime { (real_id, timer as u64 + 100) } else { (mono_id, timer as u64) };
                    let expires = base.clock_now(if realtime { ClockId::Realtime } else { ClockId::Monotonic }, now) + delay;
                    base.start(&mut device, id, expires, HrTimerMode::Absolute, slack, now, None).unwrap();
                    let soft_mono = now + delay;
                    let latest = (soft_mono + slack).max(now + min_delta);
                    pending.insert(data, (soft_mono, latest));
                }
                Op::Cancel(timer) => {
                    let (mono_id, real_id) = ids[timer];
                    if base.cancel(&mut device, mono_id, now).unwrap() { pending.remove(&(timer as u64)); }
                    if base.cancel(&mut device, real_id, now).unwrap() { pending.remove(&(timer as u64 + 100)); }
                }
                Op::RunToEvent(latency) => {
                    if let Some(event) = device.next_event_ns() {
                        prop_assert!(device.state() == ClockEventState::OneShot);
                        now = now.max(event) + latency;
                        run(&mut base, &mut device, now, &mut pending, latency)?;
                    } else {
                        prop_assert!(pending.is_empty(), "timers pending but device stopped");
                    }
                }
                Op::Spurious(delay) => {
                    // Only if the device would not have fired first.
                    let target = now + delay;
                    if device.next_event_ns().is_none_or(|e| e > target) {
                        now = target;
                        run(&mut base, &mut device, now, &mut pending, 0)?;
                    }
                }
            }
        }
        // Drain: everything still pending runs, each by its deadline.
        let mut guard = 0;
        while let Some(event) = device.next_event_ns() {
            now = now.max(event);
            run(&mut base, &mut device, now, &mut pending, 0)?;
            guard += 1;
            prop_assert!(guard < 10_000);
        }
        prop_assert!(pending.is_empty(), "lost timers: {:?}", pending);
    }
}

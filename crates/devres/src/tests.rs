//! Host tests with fake resources that record their release in a shared log.

use std::boxed::Box;
use std::num::NonZeroUsize;
use std::string::{String, ToString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::vec::Vec;

use crate::{
    sweep_probe_faults, AcquireError, DevresError, DevresList, LeakTracker, ManagedResource,
    ResourceInfo, ResourceKind, Revocable, RevokeState, SweepError,
};

type Log = Arc<Mutex<Vec<u32>>>;

fn new_log() -> Log {
    Arc::new(Mutex::new(Vec::new()))
}

fn take(log: &Log) -> Vec<u32> {
    core::mem::take(&mut *log.lock().unwrap())
}

/// A fake resource: releasing it appends its number to the log.
struct Fake {
    number: u32,
    kind: ResourceKind,
    log: Log,
}

impl ManagedResource for Fake {
    fn describe(&self) -> ResourceInfo {
        ResourceInfo::new(self.kind, format!("fake {}", self.number))
    }

    fn release(self: Box<Self>) {
        self.log.lock().unwrap().push(self.number);
    }
}

fn fake(log: &Log, number: u32) -> Fake {
    Fake {
        number,
        kind: ResourceKind::Alloc,
        log: log.clone(),
    }
}

#[test]
fn release_all_runs_in_reverse_order_of_acquisition() {
    let log = new_log();
    let mut list = DevresList::new();
    for number in 1..=5 {
        list.add(fake(&log, number));
    }
    assert_eq!(list.len(), 5);
    assert_eq!(list.release_all(), 5);
    assert_eq!(take(&log), [5, 4, 3, 2, 1]);
    assert!(list.is_empty());
    assert_eq!(
        list.release_all(),
        0,
        "released resources are gone from the list"
    );
    assert!(take(&log).is_empty());
}

#[test]
fn dropping_the_list_releases_what_is_left_in_reverse() {
    let log = new_log();
    let mut list = DevresList::new();
    list.add(fake(&log, 1));
    let action_log = log.clone();
    list.add_action("two", move || action_log.lock().unwrap().push(2));
    drop(list);
    assert_eq!(take(&log), [2, 1]);
}

#[test]
fn taken_batch_releases_later_and_in_reverse() {
    let log = new_log();
    let mut list = DevresList::new();
    list.add(fake(&log, 1));
    list.add(fake(&log, 2));
    let batch = list.take_all();
    assert!(list.is_empty());
    assert!(take(&log).is_empty(), "detaching must not release");
    assert_eq!(batch.len(), 2);
    assert_eq!(batch.release(), 2);
    assert_eq!(take(&log), [2, 1]);
}

#[test]
fn release_group_releases_only_its_part_in_reverse_with_nested_groups() {
    let log = new_log();
    let mut list = DevresList::new();
    list.add(fake(&log, 1));
    let outer = list.open_group();
    list.add(fake(&log, 2));
    let inner = list.open_group();
    list.add(fake(&log, 3));
    list.add(fake(&log, 4));
    list.close_group(inner).unwrap();
    list.add(fake(&log, 5));
    list.close_group(outer).unwrap();
    list.add(fake(&log, 6));

    assert_eq!(list.release_group(outer), Ok(4));
    assert_eq!(take(&log), [5, 4, 3, 2]);
    assert!(!list.has_group(outer));
    assert!(
        !list.has_group(inner),
        "a group wholly inside goes with its parent"
    );
    assert_eq!(
        list.release_group(inner),
        Err(DevresError::UnknownGroup(inner))
    );

    list.release_all();
    assert_eq!(take(&log), [6, 1]);
}

#[test]
fn release_inner_group_leaves_outer_members() {
    let log = new_log();
    let mut list = DevresList::new();
    let outer = list.open_group();
    list.add(fake(&log, 1));
    let inner = list.open_group();
    list.add(fake(&log, 2));
    list.add(fake(&log, 3));
    list.close_group(inner).unwrap();
    list.add(fake(&log, 4));
    list.close_group(outer).unwrap();

    assert_eq!(list.release_group(inner), Ok(2));
    assert_eq!(take(&log), [3, 2]);
    assert!(list.has_group(outer));
    assert_eq!(list.release_group(outer), Ok(2));
    assert_eq!(take(&log), [4, 1]);
}

#[test]
fn release_open_group_releases_everything_since_it_opened() {
    let log = new_log();
    let mut list = DevresList::new();
    list.add(fake(&log, 1));
    let group = list.open_group();
    list.add(fake(&log, 2));
    let nested_open = list.open_group();
    list.add(fake(&log, 3));
    assert_eq!(list.release_group(group), Ok(2));
    assert_eq!(take(&log), [3, 2]);
    assert!(
        !list.has_group(nested_open),
        "an open group inside goes too, as in Linux"
    );
    assert_eq!(list.len(), 1);
}

#[test]
fn group_straddling_the_boundary_keeps_its_markers_and_other_members() {
    let log = new_log();
    let mut list = DevresList::new();
    let first = list.open_group();
    list.add(fake(&log, 1));
    let second = list.open_group();
    list.add(fake(&log, 2));
    list.close_group(first).unwrap();
    list.add(fake(&log, 3));
    list.close_group(second).unwrap();

    assert_eq!(list.release_group(first), Ok(2));
    assert_eq!(take(&log), [2, 1]);
    assert!(list.has_group(second));
    assert_eq!(list.release_group(second), Ok(1));
    assert_eq!(take(&log), [3]);
}

#[test]
fn remove_group_keeps_resources() {
    let log = new_log();
    let mut list = DevresList::new();
    let group = list.open_group();
    list.add(fake(&log, 1));
    list.add(fake(&log, 2));
    list.close_group(group).unwrap();
    assert_eq!(list.remove_group(group), Ok(()));
    assert!(take(&log).is_empty());
    assert!(!list.has_group(group));
    assert_eq!(
        list.release_group(group),
        Err(DevresError::UnknownGroup(group))
    );
    assert_eq!(list.len(), 2);
    list.release_all();
    assert_eq!(take(&log), [2, 1]);
}

#[test]
fn group_misuse_is_reported_and_changes_nothing() {
    let mut list = DevresList::new();
    let group = list.open_group();
    list.close_group(group).unwrap();
    assert_eq!(
        list.close_group(group),
        Err(DevresError::GroupAlreadyClosed(group))
    );
    let mut other = DevresList::new();
    let foreign = other.open_group();
    assert_eq!(
        list.close_group(foreign),
        Err(DevresError::UnknownGroup(foreign))
    );
    assert_eq!(
        list.remove_group(foreign),
        Err(DevresError::UnknownGroup(foreign))
    );
    assert!(list.has_group(group));
}

#[test]
fn remove_action_forgets_the_action_without_running_it() {
    let log = new_log();
    let mut list = DevresList::new();
    list.add(fake(&log, 1));
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let action = list.add_action("set_flag", move || flag.store(true, Ordering::SeqCst));
    list.add(fake(&log, 3));
    assert_eq!(list.remove_action(action), Ok(()));
    assert_eq!(
        list.remove_action(action),
        Err(DevresError::UnknownResource(action))
    );
    list.release_all();
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(take(&log), [3, 1]);
    assert_eq!(
        Arc::strong_count(&ran),
        1,
        "the action's captures are dropped"
    );
}

#[test]
fn release_action_runs_it_now_and_only_once() {
    let log = new_log();
    let mut list = DevresList::new();
    let action_log = log.clone();
    let action = list.add_action("push 7", move || action_log.lock().unwrap().push(7));
    list.add(fake(&log, 8));
    assert_eq!(list.release_action(action), Ok(()));
    assert_eq!(take(&log), [7]);
    list.release_all();
    assert_eq!(take(&log), [8]);
}

#[test]
fn remove_hands_the_resource_back_unreleased() {
    let log = new_log();
    let mut list = DevresList::new();
    let id = list.add(fake(&log, 1));
    let resource = list.remove(id).unwrap();
    assert!(list.is_empty());
    assert!(take(&log).is_empty());
    resource.release();
    assert_eq!(take(&log), [1]);
}

#[test]
fn listing_describes_each_resource_and_counts_kinds() {
    let mut list = DevresList::new();
    list.add_owned(
        ResourceInfo::new(ResourceKind::IoPort, "0x3f8-0x3ff").with_size(8),
        (),
    );
    list.add_owned(ResourceInfo::new(ResourceKind::Irq, "4"), ());
    list.add_owned(
        ResourceInfo::new(ResourceKind::Other("clk"), "uart").with_size(0),
        (),
    );
    list.add_action("disable", || {});
    let lines: Vec<String> = list.resources().map(|(_, info)| info.to_string()).collect();
    assert_eq!(
        lines,
        [
            "ioport 0x3f8-0x3ff (8 bytes)",
            "irq 4",
            "clk uart (0 bytes)",
            "action disable"
        ]
    );
    let counts: Vec<(ResourceKind, usize)> = list.count_by_kind().into_iter().collect();
    assert_eq!(
        counts,
        [
            (ResourceKind::IoPort, 1),
            (ResourceKind::Irq, 1),
            (ResourceKind::Action, 1),
            (ResourceKind::Other("clk"), 1)
        ]
    );
}

/// A fake probe: acquires `count` tracked resources through the list, failing as the driver
/// would if any acquisition fails. Releases log their number.
fn fake_probe(
    list: &mut DevresList,
    tracker: &LeakTracker,
    log: &Log,
    count: u32,
) -> Result<(), AcquireError<()>> {
    for number in 1..=count {
        list.acquire(|| Ok::<_, ()>(tracker.track(fake(log, number))))?;
    }
    Ok(())
}

#[test]
fn probe_failure_releases_everything_acquired_so_far() {
    let log = new_log();
    let tracker = LeakTracker::new();
    let mut list = DevresList::new();
    let result = list.probe(|list| {
        for number in 1..=3 {
            list.add(tracker.track(fake(&log, number)));
        }
        Err::<(), _>("device did not answer")
    });
    assert_eq!(result, Err("device did not answer"));
    assert!(list.is_empty());
    assert_eq!(take(&log), [3, 2, 1]);
    assert_eq!(tracker.live_total(), 0);
}

#[test]
fn successful_probe_keeps_its_resources_until_unbind() {
    let log = new_log();
    let tracker = LeakTracker::new();
    let mut list = DevresList::new();
    assert_eq!(
        list.probe(|list| fake_probe(list, &tracker, &log, 3)),
        Ok(())
    );
    assert_eq!(list.len(), 3);
    assert_eq!(tracker.live(ResourceKind::Alloc), 3);
    list.release_all();
    assert_eq!(take(&log), [3, 2, 1]);
    assert_eq!(tracker.live_total(), 0);
}

#[test]
fn injector_fails_exactly_the_nth_acquisition_of_a_probe() {
    let log = new_log();
    let tracker = LeakTracker::new();
    let mut list = DevresList::new();
    list.fault_injector_mut()
        .fail_at(NonZeroUsize::new(3).unwrap());
    assert!(!list.should_fail(), "outside a probe nothing counts");
    let result = list.probe(|list| fake_probe(list, &tracker, &log, 5));
    assert_eq!(result, Err(AcquireError::Injected));
    assert!(list.fault_injector().fired());
    assert_eq!(list.fault_injector().acquisitions(), 3);
    assert_eq!(
        take(&log),
        [2, 1],
        "the third was never acquired, the first two unwound"
    );
    assert_eq!(tracker.live_total(), 0);
    assert!(list.is_empty());
}

#[test]
fn fault_sweep_hits_each_of_five_points_and_leaves_nothing_live() {
    let log = new_log();
    let tracker = LeakTracker::new();
    let mut list = DevresList::new();
    let mut runs = Vec::new();
    let report = sweep_probe_faults(&mut list, Some(&tracker), |list| {
        let result = fake_probe(list, &tracker, &log, 5);
        runs.push((list.fault_injector().acquisitions(), take(&log)));
        result
    })
    .unwrap();
    assert_eq!(report.acquisition_points, 5);
    assert!(report.absorbed.is_empty());
    // Run n failed at acquisition n; the unwind (logged after the probe returned, so seen in
    // the next run's entry) released the n - 1 acquired before it.
    let acquisitions: Vec<usize> = runs.iter().map(|(count, _)| *count).collect();
    assert_eq!(acquisitions, [1, 2, 3, 4, 5, 5]);
    let unwinds: Vec<Vec<u32>> = runs.iter().skip(1).map(|(_, log)| log.clone()).collect();
    assert_eq!(
        unwinds,
        [vec![], vec![1], vec![2, 1], vec![3, 2, 1], vec![4, 3, 2, 1]]
    );
    assert_eq!(
        take(&log),
        [5, 4, 3, 2, 1],
        "the final run unbinds in reverse"
    );
    assert_eq!(tracker.live_total(), 0);
    assert!(tracker.over_released().is_empty());
    assert!(list.fault_injector().armed_at().is_none());
}

#[test]
fn fault_sweep_catches_a_resource_that_bypasses_the_list() {
    let log = new_log();
    let tracker = LeakTracker::new();
    let mut list = DevresList::new();
    let result = sweep_probe_faults(&mut list, Some(&tracker), |list| {
        // An unmanaged acquisition, not given back when the next (managed) one fails.
        tracker.acquired(ResourceKind::Dma);
        fake_probe(list, &tracker, &log, 2)?;
        tracker.released(ResourceKind::Dma);
        Ok::<(), AcquireError<()>>(())
    });
    assert_eq!(
        result,
        Err(SweepError::Leaked {
            fail_at: Some(1),
            live: vec![(ResourceKind::Dma, 1)]
        })
    );
}

#[test]
fn fault_sweep_reports_absorbed_faults_and_its_own_failures() {
    let mut list = DevresList::new();
    let report = sweep_probe_faults(&mut list, None, |list| {
        // An optional resource: the driver carries on without it.
        let _optional = list.acquire(|| {
            Ok::<_, ()>(crate::resource::Owned {
                info: ResourceInfo::new(ResourceKind::Alloc, "optional"),
                value: (),
            })
        });
        Ok::<(), ()>(())
    })
    .unwrap();
    assert_eq!(report.acquisition_points, 1);
    assert_eq!(report.absorbed, [1]);

    let result = sweep_probe_faults(&mut list, None, |_| Err::<(), ()>(()));
    assert_eq!(result, Err(SweepError::FailedWithoutInjection));

    list.add_action("left over", || {});
    let result = sweep_probe_faults(&mut list, None, |_| Ok::<(), ()>(()));
    assert_eq!(result, Err(SweepError::NotEmptyAtStart));
}

#[test]
fn revocable_access_after_revoke_is_none() {
    let handle = Revocable::new(String::from("regs"));
    assert_eq!(
        handle.try_access().as_deref().map(String::as_str),
        Some("regs")
    );
    assert_eq!(handle.revoke(), RevokeState::Released);
    assert!(handle.is_revoked());
    assert!(handle.try_access().is_none());
    assert_eq!(handle.revoke(), RevokeState::AlreadyReleased);
}

#[test]
fn revoke_with_an_accessor_is_busy_until_the_guard_drops() {
    let dropped = Arc::new(AtomicBool::new(false));
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let handle = Revocable::new(SetOnDrop(dropped.clone()));
    let guard = handle.try_access().unwrap();
    assert_eq!(handle.revoke(), RevokeState::Busy { accessors: 1 });
    assert!(
        handle.try_access().is_none(),
        "no new access once revocation began"
    );
    assert!(
        !dropped.load(Ordering::SeqCst),
        "the value lives while a guard holds it"
    );
    drop(guard);
    assert_eq!(handle.revoke(), RevokeState::Released);
    assert!(dropped.load(Ordering::SeqCst));
}

#[test]
fn list_release_revokes_the_drivers_handle_and_drops_the_value() {
    let log = new_log();
    let mut list = DevresList::new();
    list.add(fake(&log, 1));
    let value_log = log.clone();
    let mmio = list.add_revocable(
        ResourceInfo::new(ResourceKind::Mmio, "0xfebf0000-0xfebf0fff").with_size(4096),
        ReleaseOnDrop(2, value_log),
    );
    list.add(fake(&log, 3));
    assert_eq!(mmio.try_access().map(|regs| regs.0), Some(2));
    list.release_all();
    assert_eq!(
        take(&log),
        [3, 2, 1],
        "the revoked value is dropped in its LIFO place"
    );
    assert!(mmio.try_access().is_none());
    assert_eq!(Arc::strong_count(&mmio), 1, "the list kept no reference");
}

/// A value that logs its number when dropped.
struct ReleaseOnDrop(u32, Log);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.1.lock().unwrap().push(self.0);
    }
}

#[test]
fn release_waits_for_an_accessor_on_another_thread() {
    let log = new_log();
    let mut list = DevresList::new();
    list.set_revoke_wait(std::thread::yield_now);
    let handle = list.add_revocable(
        ResourceInfo::new(ResourceKind::Mmio, "bar0"),
        ReleaseOnDrop(1, log.clone()),
    );
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let accessor_log = log.clone();
    let accessor = std::thread::spawn(move || {
        let guard = handle.try_access().unwrap();
        held_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        accessor_log.lock().unwrap().push(100 + guard.0);
    });
    held_rx.recv().unwrap();
    let releaser = std::thread::spawn(move || list.release_all());
    go_tx.send(()).unwrap();
    assert_eq!(releaser.join().unwrap(), 1);
    accessor.join().unwrap();
    assert_eq!(
        take(&log),
        [101, 1],
        "the value outlived its last accessor, not more"
    );
}

#[test]
fn concurrent_accessors_never_see_a_released_value() {
    let released = Arc::new(AtomicBool::new(false));
    struct Checked(Arc<AtomicBool>);
    impl Drop for Checked {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    for _ in 0..50 {
        released.store(false, Ordering::SeqCst);
        let handle = Arc::new(Revocable::new(Checked(released.clone())));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let handle = handle.clone();
                std::thread::spawn(move || {
                    let mut granted = 0_u32;
                    while let Some(guard) = handle.try_access() {
                        assert!(
                            !guard.0.load(Ordering::SeqCst),
                            "access to a released value"
                        );
                        granted += 1;
                    }
                    granted
                })
            })
            .collect();
        std::thread::yield_now();
        assert!(handle.revoke_and_wait(std::thread::yield_now));
        assert!(released.load(Ordering::SeqCst));
        for reader in readers {
            reader.join().unwrap();
        }
    }
}

#[test]
fn leak_tracker_counts_live_resources_per_kind() {
    let tracker = LeakTracker::new();
    tracker.acquired(ResourceKind::Irq);
    tracker.acquired(ResourceKind::Irq);
    tracker.acquired(ResourceKind::Mmio);
    tracker.released(ResourceKind::Irq);
    assert_eq!(tracker.live(ResourceKind::Irq), 1);
    assert_eq!(tracker.live(ResourceKind::Dma), 0);
    assert_eq!(
        tracker.live_by_kind(),
        [(ResourceKind::Mmio, 1), (ResourceKind::Irq, 1)]
    );
    assert_eq!(tracker.live_total(), 2);
    tracker.released(ResourceKind::Dma);
    assert_eq!(tracker.over_released(), [ResourceKind::Dma]);
}

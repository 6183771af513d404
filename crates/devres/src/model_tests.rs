//! Property test: random sequences of list operations against a model of which resources each
//! release must hand back.
//!
//! The model does not keep markers; it keeps times. Each resource and each group's opening and
//! closing get a time stamp, and a group's members are the live resources stamped between its
//! opening and closing (or after its opening, while it is open). That is how a person reads
//! Linux's devres documentation, and it is independent of the marker list the crate walks.

use std::boxed::Box;
use std::sync::{Arc, Mutex};
use std::vec::Vec;

use proptest::prelude::*;

use crate::{DevresError, DevresList, GroupId, ManagedResource, ResourceInfo, ResourceKind};

/// A resource that appends its stamp to the log when released.
struct Stamped {
    stamp: u32,
    log: Arc<Mutex<Vec<u32>>>,
}

impl ManagedResource for Stamped {
    fn describe(&self) -> ResourceInfo {
        ResourceInfo::new(ResourceKind::Alloc, format!("stamp {}", self.stamp))
    }

    fn release(self: Box<Self>) {
        self.log.lock().unwrap().push(self.stamp);
    }
}

#[derive(Clone, Debug)]
enum Op {
    Add,
    AddAction,
    OpenGroup,
    /// Group operations pick a group by index into every group ever opened (wrapping), so they
    /// also hit closed, released and removed groups.
    CloseGroup(usize),
    ReleaseGroup(usize),
    RemoveGroup(usize),
    RemoveAction(usize),
    ReleaseAll,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Add),
        1 => Just(Op::AddAction),
        3 => Just(Op::OpenGroup),
        3 => any::<usize>().prop_map(Op::CloseGroup),
        2 => any::<usize>().prop_map(Op::ReleaseGroup),
        1 => any::<usize>().prop_map(Op::RemoveGroup),
        1 => any::<usize>().prop_map(Op::RemoveAction),
        1 => Just(Op::ReleaseAll),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum GroupState {
    Open { opened: u32 },
    Closed { opened: u32, closed: u32 },
    Gone,
}

struct Model {
    time: u32,
    /// Stamps of the resources in the list.
    live: Vec<u32>,
    groups: Vec<(GroupId, GroupState)>,
    /// Actions by id and stamp, for `remove_action`.
    actions: Vec<(crate::ResourceId, u32)>,
}

impl Model {
    fn tick(&mut self) -> u32 {
        self.time += 1;
        self.time
    }

    /// Live stamps a release of `[from, to)` takes, newest first, and the groups it takes.
    fn release_range(&mut self, from: u32, to: u32) -> Vec<u32> {
        let inside = |t: u32| from <= t && t < to;
        let mut taken: Vec<u32> = self.live.iter().copied().filter(|&t| inside(t)).collect();
        self.live.retain(|&t| !inside(t));
        for (_, state) in &mut self.groups {
            let contained = match *state {
                GroupState::Open { opened } => inside(opened),
                GroupState::Closed { opened, closed } => inside(opened) && inside(closed),
                GroupState::Gone => false,
            };
            if contained {
                *state = GroupState::Gone;
            }
        }
        taken.sort_unstable_by(|a, b| b.cmp(a));
        taken
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_resource_is_released_once_in_lifo_order(ops in prop::collection::vec(op(), 0..80)) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut list = DevresList::new();
        let mut model = Model { time: 0, live: Vec::new(), groups: Vec::new(), actions: Vec::new() };
        let mut released_total = Vec::new();
        let mut added_total = Vec::new();

        for op in ops {
            let expected: Vec<u32> = match op {
                Op::Add | Op::AddAction => {
                    let stamp = model.tick();
                    let resource = Stamped { stamp, log: log.clone() };
                    if matches!(op, Op::AddAction) {
                        let id = list.add_action("stamp", move || Box::new(resource).release());
                        model.actions.push((id, stamp));
                    } else {
                        list.add(resource);
                    }
                    model.live.push(stamp);
                    added_total.push(stamp);
                    Vec::new()
                }
                Op::OpenGroup => {
                    let opened = model.tick();
                    model.groups.push((list.open_group(), GroupState::Open { opened }));
                    Vec::new()
                }
                Op::CloseGroup(pick) if !model.groups.is_empty() => {
                    let index = pick % model.groups.len();
                    let (id, state) = model.groups[index];
                    let result = list.close_group(id);
                    match state {
                        GroupState::Open { opened } => {
                            prop_assert_eq!(result, Ok(()));
                            let closed = model.tick();
                            model.groups[index].1 = GroupState::Closed { opened, closed };
                        }
                        GroupState::Closed { .. } => {
                            prop_assert_eq!(result, Err(DevresError::GroupAlreadyClosed(id)));
                        }
                        GroupState::Gone => {
                            prop_assert_eq!(result, Err(DevresError::UnknownGroup(id)));
                        }
                    }
                    Vec::new()
                }
                Op::ReleaseGroup(pick) if !model.groups.is_empty() => {
                    let (id, state) = model.groups[pick % model.groups.len()];
                    let result = list.release_group(id);
                    let range = match state {
                        GroupState::Open { opened } => Some((opened, u32::MAX)),
                        GroupState::Closed { opened, closed } => Some((opened, closed + 1)),
                        GroupState::Gone => None,
                    };
                    match range {
                        Some((from, to)) => {
                            let expected = model.release_range(from, to);
                            prop_assert_eq!(result, Ok(expected.len()));
                            expected
                        }
                        None => {
                            prop_assert_eq!(result, Err(DevresError::UnknownGroup(id)));
                            Vec::new()
                        }
                    }
                }
                Op::RemoveGroup(pick) if !model.groups.is_empty() => {
                    let index = pick % model.groups.len();
                    let (id, state) = model.groups[index];
                    let result = list.remove_group(id);
                    if state == GroupState::Gone {
                        prop_assert_eq!(result, Err(DevresError::UnknownGroup(id)));
                    } else {
                        prop_assert_eq!(result, Ok(()));
                        model.groups[index].1 = GroupState::Gone;
                    }
                    Vec::new()
                }
                Op::RemoveAction(pick) if !model.actions.is_empty() => {
                    let (id, stamp) = model.actions.remove(pick % model.actions.len());
                    let result = list.remove_action(id);
                    if model.live.contains(&stamp) {
                        prop_assert_eq!(result, Ok(()));
                        model.live.retain(|&t| t != stamp);
                        added_total.retain(|&t| t != stamp);
                    } else {
                        prop_assert_eq!(result, Err(DevresError::UnknownResource(id)));
                    }
                    Vec::new()
                }
                Op::ReleaseAll => {
                    let expected = model.release_range(0, u32::MAX);
                    prop_assert_eq!(list.release_all(), expected.len());
                    expected
                }
                Op::CloseGroup(_) | Op::ReleaseGroup(_) | Op::RemoveGroup(_) | Op::RemoveAction(_) => {
                    Vec::new()
                }
            };
            continue_with(&log, &mut released_total, &expected)?;
            prop_assert_eq!(list.len(), model.live.len());
        }

        // Unbind: whatever is left goes, newest first.
        let expected = model.release_range(0, u32::MAX);
        drop(list);
        continue_with(&log, &mut released_total, &expected)?;

        released_total.sort_unstable();
        added_total.sort_unstable();
        prop_assert_eq!(released_total, added_total, "each resource released exactly once");
    }
}

/// Checks that exactly `expected` (newest first) was released since the last check.
fn continue_with(
    log: &Arc<Mutex<Vec<u32>>>,
    released_total: &mut Vec<u32>,
    expected: &[u32],
) -> Result<(), TestCaseError> {
    let released = core::mem::take(&mut *log.lock().unwrap());
    prop_assert_eq!(&released[..], expected);
    released_total.extend(released);
    Ok(())
}

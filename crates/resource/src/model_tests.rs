//! Model-based test: random request/insert/release/remove sequences checked against a flat list.
//!
//! The model keeps every live resource as an interval with its parent, and decides each
//! operation's outcome from the intervals alone, without the tree's per-level search:
//!
//! * a request succeeds exactly when every interval it overlaps is a container that wholly covers
//!   it, and its parent is the deepest of those; otherwise the error must name one of the
//!   intervals in the way (`Busy` exactly when that one is busy);
//! * an insert succeeds exactly when every interval it overlaps covers it or lies within it; it
//!   goes under the deepest one strictly covering it and adopts the ones within it at that level;
//! * a release of a resource with children is refused naming its lowest child.
//!
//! After every operation the tree's listing (address order, depths) must equal the model's, the
//! model's intervals must still nest (siblings disjoint, children within parents), and lookups
//! of addresses near the action must find the model's innermost interval.

use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Reverse;

use proptest::prelude::*;

use crate::*;

#[derive(Clone, Debug)]
struct Interval {
    id: ResourceId,
    start: u64,
    end: u64,
    name: String,
    busy: bool,
    parent: Option<ResourceId>,
}

#[derive(Default)]
struct Model {
    live: Vec<Interval>,
    released: Vec<ResourceId>,
}

impl Model {
    fn get(&self, id: ResourceId) -> &Interval {
        self.live.iter().find(|i| i.id == id).unwrap()
    }

    fn depth(&self, interval: &Interval) -> usize {
        let mut depth = 0;
        let mut parent = interval.parent;
        while let Some(id) = parent {
            depth += 1;
            parent = self.get(id).parent;
        }
        depth
    }

    fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = &Interval> {
        self.live
            .iter()
            .filter(move |i| i.start <= end && start <= i.end)
    }

    /// The innermost interval containing `address`.
    fn innermost(&self, address: u64) -> Option<&Interval> {
        self.overlapping(address, address)
            .max_by_key(|i| self.depth(i))
    }

    /// (start, end, name, busy, depth) in the proc files' order.
    fn listing(&self) -> Vec<(u64, u64, String, bool, usize)> {
        let mut listing: Vec<_> = self
            .live
            .iter()
            .map(|i| (i.start, i.end, i.name.clone(), i.busy, self.depth(i)))
            .collect();
        // Parents come first: lower start, then larger end, then (equal ranges) shallower.
        listing.sort_by_key(|&(start, end, _, _, depth)| (start, Reverse(end), depth));
        listing
    }

    fn check_nesting(&self) {
        for a in &self.live {
            if let Some(parent) = a.parent {
                let parent = self.get(parent);
                assert!(
                    parent.start <= a.start && a.end <= parent.end,
                    "{a:?} outside {parent:?}"
                );
            }
            for b in &self.live {
                if a.id != b.id && a.parent == b.parent {
                    assert!(
                        a.end < b.start || b.end < a.start,
                        "siblings {a:?} and {b:?} overlap"
                    );
                }
            }
        }
    }

    fn range_error(space: Space, start: u64, len: u64) -> Result<u64, ResourceError> {
        if len == 0 {
            return Err(ResourceError::ZeroLength { start });
        }
        let Some(end) = start.checked_add(len - 1) else {
            return Err(ResourceError::Overflow { start, len });
        };
        let limit = space.last_address();
        if end > limit {
            return Err(ResourceError::OutOfRange { start, end, limit });
        }
        Ok(end)
    }
}

fn names(error: &ResourceError) -> (&str, u64, u64) {
    match error {
        ResourceError::Busy { owner, start, end }
        | ResourceError::PartialOverlap { owner, start, end }
        | ResourceError::HasChildren { owner, start, end } => (owner, *start, *end),
        other => panic!("expected an error naming an owner, got {other:?}"),
    }
}

#[derive(Clone, Debug)]
enum Operation {
    Request {
        start: u64,
        len: u64,
    },
    Insert {
        start: u64,
        len: u64,
        busy: bool,
    },
    /// Release the live resource at this position (modulo the number live).
    Release {
        pick: usize,
    },
    /// Remove (children move up) the live resource at this position.
    Remove {
        pick: usize,
    },
    /// Release a handle released earlier: refused.
    ReleaseStale {
        pick: usize,
    },
}

/// Ranges crowded into a few small windows (so they collide often), at both ends of the space,
/// with lengths from empty to past the end of the space.
fn range(space: Space) -> impl Strategy<Value = (u64, u64)> {
    let last = space.last_address();
    let windows = [0, 0x1000, last - 63];
    let len = prop_oneof![
        8 => 1..24u64,
        1 => Just(0u64),
        1 => 24..80u64,
        1 => Just(last),
    ];
    (0..windows.len(), 0..64u64, len)
        .prop_map(move |(window, offset, len)| (windows[window] + offset, len))
}

fn operation(space: Space) -> impl Strategy<Value = Operation> {
    prop_oneof![
        4 => range(space).prop_map(|(start, len)| Operation::Request { start, len }),
        3 => (range(space), any::<bool>())
            .prop_map(|((start, len), busy)| Operation::Insert { start, len, busy }),
        3 => any::<usize>().prop_map(|pick| Operation::Release { pick }),
        1 => any::<usize>().prop_map(|pick| Operation::Remove { pick }),
        1 => any::<usize>().prop_map(|pick| Operation::ReleaseStale { pick }),
    ]
}

fn case() -> impl Strategy<Value = (Space, Vec<Operation>)> {
    prop_oneof![Just(Space::IoPorts), Just(Space::Memory)].prop_flat_map(|space| {
        (
            Just(space),
            proptest::collection::vec(operation(space), 1..120),
        )
    })
}

fn run(space: Space, operations: &[Operation]) {
    let mut tree = ResourceTree::new(space);
    let mut model = Model::default();
    for (serial, operation) in operations.iter().enumerate() {
        let name = alloc::format!("r{serial}");
        let mut probes = Vec::new();
        match *operation {
            Operation::Request { start, len } => {
                probes.extend([start, start.saturating_add(len)]);
                let result = tree.request_region(start, len, name.clone());
                match Model::range_error(space, start, len) {
                    Err(expected) => assert_eq!(result, Err(expected)),
                    Ok(end) => {
                        let offenders: Vec<&Interval> = model
                            .overlapping(start, end)
                            .filter(|i| i.busy || i.start > start || i.end < end)
                            .collect();
                        if offenders.is_empty() {
                            let parent = model
                                .overlapping(start, end)
                                .max_by_key(|i| model.depth(i))
                                .map(|i| i.id);
                            let id = result.unwrap_or_else(|e| {
                                panic!("request {start:#x}-{end:#x} refused: {e:?}")
                            });
                            assert_eq!(tree.parent(id), parent);
                            model.live.push(Interval {
                                id,
                                start,
                                end,
                                name,
                                busy: true,
                                parent,
                            });
                        } else {
                            let error = result.expect_err("overlapping request accepted");
                            let (owner, at, to) = names(&error);
                            let offender = offenders
                                .iter()
                                .find(|i| (i.name.as_str(), i.start, i.end) == (owner, at, to))
                                .unwrap_or_else(|| {
                                    panic!("{error:?} names no resource in the way")
                                });
                            let is_busy_error = matches!(error, ResourceError::Busy { .. });
                            assert_eq!(is_busy_error, offender.busy, "{error:?}");
                        }
                    }
                }
            }
            Operation::Insert { start, len, busy } => {
                probes.extend([start, start.saturating_add(len)]);
                let occupancy = if busy {
                    Occupancy::Busy
                } else {
                    Occupancy::Container
                };
                let result = tree.insert_resource(start, len, name.clone(), occupancy);
                match Model::range_error(space, start, len) {
                    Err(expected) => assert_eq!(result, Err(expected)),
                    Ok(end) => {
                        let covers = |i: &Interval| i.start <= start && end <= i.end;
                        let within = |i: &Interval| start <= i.start && i.end <= end;
                        let offenders: Vec<&Interval> = model
                            .overlapping(start, end)
                            .filter(|i| !covers(i) && !within(i))
                            .collect();
                        if offenders.is_empty() {
                            let parent = model
                                .overlapping(start, end)
                                .filter(|i| covers(i) && !within(i))
                                .max_by_key(|i| model.depth(i))
                                .map(|i| i.id);
                            let id = result.unwrap_or_else(|e| {
                                panic!("insert {start:#x}-{end:#x} refused: {e:?}")
                            });
                            assert_eq!(tree.parent(id), parent);
                            for interval in &mut model.live {
                                if interval.parent == parent
                                    && start <= interval.start
                                    && interval.end <= end
                                {
                                    interval.parent = Some(id);
                                }
                            }
                            model.live.push(Interval {
                                id,
                                start,
                                end,
                                name,
                                busy,
                                parent,
                            });
                        } else {
                            let error = result.expect_err("partially overlapping insert accepted");
                            assert!(matches!(error, ResourceError::PartialOverlap { .. }));
                            let (owner, at, to) = names(&error);
                            assert!(
                                offenders
                                    .iter()
                                    .any(|i| (i.name.as_str(), i.start, i.end) == (owner, at, to)),
                                "{error:?} names no resource in the way"
                            );
                        }
                    }
                }
            }
            Operation::Release { pick } | Operation::Remove { pick } => {
                if model.live.is_empty() {
                    continue;
                }
                let victim = model.live[pick % model.live.len()].clone();
                probes.extend([victim.start, victim.end]);
                let children: Vec<&Interval> = model
                    .live
                    .iter()
                    .filter(|i| i.parent == Some(victim.id))
                    .collect();
                if matches!(operation, Operation::Release { .. }) && !children.is_empty() {
                    let lowest = children.iter().min_by_key(|i| i.start).unwrap();
                    assert_eq!(
                        tree.release(victim.id),
                        Err(ResourceError::HasChildren {
                            owner: lowest.name.clone().into(),
                            start: lowest.start,
                            end: lowest.end,
                        })
                    );
                } else {
                    let result = match operation {
                        Operation::Release { .. } => tree.release(victim.id),
                        _ => tree.remove_resource(victim.id),
                    };
                    assert_eq!(result, Ok(()));
                    model.live.retain(|i| i.id != victim.id);
                    for interval in &mut model.live {
                        if interval.parent == Some(victim.id) {
                            interval.parent = victim.parent;
                        }
                    }
                    model.released.push(victim.id);
                }
            }
            Operation::ReleaseStale { pick } => {
                if model.released.is_empty() {
                    continue;
                }
                let stale = model.released[pick % model.released.len()];
                assert_eq!(tree.release(stale), Err(ResourceError::UnknownHandle));
                assert_eq!(tree.get(stale), None);
            }
        }

        model.check_nesting();
        let listed: Vec<_> = tree
            .iter()
            .map(|r| {
                (
                    r.start,
                    r.end,
                    String::from(r.name),
                    r.occupancy == Occupancy::Busy,
                    r.depth,
                )
            })
            .collect();
        assert_eq!(listed, model.listing(), "after {operation:?}");
        assert_eq!(tree.len(), model.live.len());
        for interval in &model.live {
            let got = tree.get(interval.id).expect("live handle refused");
            assert_eq!(
                (got.start, got.end, got.name),
                (interval.start, interval.end, interval.name.as_str())
            );
            assert_eq!(tree.parent(interval.id), interval.parent);
        }
        for probe in probes
            .into_iter()
            .flat_map(|a| [a.wrapping_sub(1), a, a.wrapping_add(1)])
        {
            let expected = model.innermost(probe).map(|i| i.name.as_str());
            assert_eq!(tree.owner_of(probe), expected, "owner of {probe:#x}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn tree_agrees_with_interval_model((space, operations) in case()) {
        run(space, &operations);
    }
}

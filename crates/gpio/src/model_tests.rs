//! Property tests: random requests, releases, chip removals and re-registrations against a model
//! that knows only "who holds which line of which registered chip".
//!
//! Checked after every step: a request succeeds exactly when the model says every line is free
//! (and then the model records the consumer), a refused request names the model's holder of the
//! first held line and takes nothing, the registry's line listing shows the model's holders, and
//! descriptors of a removed chip answer `ChipGone` without panicking.

use std::boxed::Box;
use std::collections::BTreeMap;
use std::format;
use std::string::String;
use std::vec::Vec;

use proptest::prelude::*;

use crate::testing::FakeChip;
use crate::{EventKind, GpioDescArray, GpioError, GpioRegistry, IrqType, LineConfig};

const LINES: u32 = 6;

#[derive(Clone, Debug)]
enum Op {
    /// Request these offsets of chip slot `chip` for consumer `consumer`.
    Request {
        chip: usize,
        offsets: Vec<u32>,
        consumer: u8,
    },
    /// Drop the held descriptor array at this index (wrapping).
    Release(usize),
    /// Remove the chip in slot `chip`, if registered.
    Remove(usize),
    /// Register a chip in slot `chip`, if empty.
    Add(usize),
    /// Touch every held descriptor (reads only).
    Touch,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize, prop::collection::vec(0..LINES + 1, 1..4), 0..4u8)
            .prop_map(|(chip, offsets, consumer)| Op::Request { chip, offsets, consumer }),
        4 => any::<usize>().prop_map(Op::Release),
        1 => (0..2usize).prop_map(Op::Remove),
        1 => (0..2usize).prop_map(Op::Add),
        1 => Just(Op::Touch),
    ]
}

struct Held {
    array: GpioDescArray,
    /// (slot, chip number at request) the lines belong to; `None` once the chip is removed.
    chip: Option<(usize, u32)>,
    offsets: Vec<u32>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn ownership_matches_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let registry = GpioRegistry::new();
        // Slot -> registered chip number.
        let mut slots: [Option<u32>; 2] = [None, None];
        // (chip number, offset) -> consumer.
        let mut owners: BTreeMap<(u32, u32), String> = BTreeMap::new();
        let mut held: Vec<Held> = Vec::new();

        for op in ops {
            match op {
                Op::Add(slot) => {
                    if slots[slot].is_none() {
                        let chip = FakeChip::unnamed(&format!("slot{slot}"), LINES as usize);
                        let handle = registry.add_chip(Box::new(chip), None).unwrap();
                        slots[slot] = Some(handle.number());
                    }
                }
                Op::Remove(slot) => {
                    if let Some(number) = slots[slot].take() {
                        let report = registry.remove_chip(number, || {}).unwrap();
                        let expected: Vec<(u32, String)> = owners
                            .iter()
                            .filter(|((chip, _), _)| *chip == number)
                            .map(|((_, offset), consumer)| (*offset, consumer.clone()))
                            .collect();
                        prop_assert_eq!(report.still_requested, expected);
                        owners.retain(|(chip, _), _| *chip != number);
                        for h in &mut held {
                            if h.chip.is_some_and(|(s, _)| s == slot) {
                                h.chip = None;
                            }
                        }
                    }
                }
                Op::Request { chip: slot, offsets, consumer } => {
                    let consumer = format!("consumer{consumer}");
                    let Some(number) = slots[slot] else {
                        let selector = format!("slot{slot}");
                        let result = registry.get_array(&selector, &offsets, &consumer, LineConfig::as_is());
                        prop_assert!(matches!(result, Err(GpioError::NoSuchChip(_))));
                        continue;
                    };
                    let selector = format!("gpiochip{number}");
                    let result = registry.get_array(&selector, &offsets, &consumer, LineConfig::as_is());
                    let out_of_range = offsets.iter().find(|&&o| o >= LINES);
                    let duplicate = offsets.iter().enumerate().any(|(i, o)| offsets[..i].contains(o));
                    let first_held = offsets
                        .iter()
                        .find_map(|o| owners.get(&(number, *o)).map(|holder| (*o, holder.clone())));
                    match (out_of_range, duplicate, first_held) {
                        (Some(_), _, _) => {
                            let refused = matches!(
                                result,
                                Err(GpioError::OffsetOutOfRange { .. } | GpioError::InvalidBulk)
                            );
                            prop_assert!(refused);
                        }
                        (None, true, _) => prop_assert_eq!(result.unwrap_err(), GpioError::InvalidBulk),
                        (None, false, Some((offset, holder))) => {
                            prop_assert_eq!(
                                result.unwrap_err(),
                                GpioError::Busy { chip: selector.clone(), offset, holder }
                            );
                        }
                        (None, false, None) => {
                            let array = result.unwrap();
                            for offset in &offsets {
                                owners.insert((number, *offset), consumer.clone());
                            }
                            held.push(Held { array, chip: Some((slot, number)), offsets });
                        }
                    }
                }
                Op::Release(index) => {
                    if !held.is_empty() {
                        let h = held.remove(index % held.len());
                        if let Some((_, number)) = h.chip {
                            for offset in &h.offsets {
                                owners.remove(&(number, *offset));
                            }
                        }
                        drop(h.array);
                    }
                }
                Op::Touch => {
                    for h in &held {
                        let read = h.array.get_values();
                        match h.chip {
                            Some(_) => prop_assert!(read.is_ok()),
                            None => prop_assert_eq!(read.unwrap_err(), GpioError::ChipGone),
                        }
                    }
                }
            }

            // The registry's view of every registered chip matches the model.
            for number in slots.iter().flatten() {
                let lines = registry.lines(&format!("gpiochip{number}")).unwrap();
                for line in lines {
                    prop_assert_eq!(line.consumer, owners.get(&(*number, line.offset)).cloned());
                }
            }
        }
    }
}

/// The model's event queue: drops the oldest when full, as the crate says it does.
struct ModelQueue {
    queue: std::collections::VecDeque<(EventKind, u64)>,
    dropped: u64,
    capacity: usize,
}

impl ModelQueue {
    fn push(&mut self, event: (EventKind, u64)) {
        if self.queue.len() == self.capacity {
            self.queue.pop_front();
            self.dropped += 1;
        }
        self.queue.push_back(event);
    }
}

/// One step of the events property test.
#[derive(Clone, Debug)]
enum EventOp {
    /// The outside world drives the input line.
    Drive(bool),
    /// The consumer reads up to this many events.
    Read(usize),
    /// The consumer acknowledges a level event.
    Ack,
}

fn event_op() -> impl Strategy<Value = EventOp> {
    prop_oneof![
        5 => any::<bool>().prop_map(EventOp::Drive),
        2 => (0..4usize).prop_map(EventOp::Read),
        1 => Just(EventOp::Ack),
    ]
}

fn trigger() -> impl Strategy<Value = IrqType> {
    prop_oneof![
        Just(IrqType::EdgeRising),
        Just(IrqType::EdgeFalling),
        Just(IrqType::EdgeBoth),
        Just(IrqType::LevelHigh),
        Just(IrqType::LevelLow),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Events seen through a descriptor match a model that knows only logical values: an edge
    /// is reported when the logical value moves the way the trigger asks, a level when the
    /// logical value is at the asked level and no level event is unacknowledged; a full queue
    /// drops the oldest; timestamps are the chip's.
    #[test]
    fn events_match_the_logical_model(
        trigger in trigger(),
        active_low in any::<bool>(),
        capacity in 1..5usize,
        initial in any::<bool>(),
        ops in prop::collection::vec(event_op(), 1..60),
    ) {
        let chip = FakeChip::unnamed("irq", 1);
        let registry = GpioRegistry::new();
        let handle = registry.add_chip(Box::new(chip.clone()), None).unwrap();
        chip.attach(handle.event_sink());
        chip.drive_input(0, initial, 1);
        let mut config = LineConfig::input();
        config.active_low = active_low;
        let line = registry.get("gpiochip0", 0, "model", config).unwrap();
        line.request_events(trigger, capacity).unwrap();

        let mut raw = initial;
        let mut now = 1u64;
        let mut model = ModelQueue { queue: Default::default(), dropped: 0, capacity };
        let mut level_pending = false;
        let logical = |raw: bool| raw != active_low;
        let level_active = |raw: bool| match trigger {
            IrqType::LevelHigh => logical(raw),
            IrqType::LevelLow => !logical(raw),
            _ => false,
        };
        // A level that already holds fires when the interrupt is first unmasked.
        if level_active(raw) {
            model.push((EventKind::LevelActive, now));
            level_pending = true;
        }
        for op in ops {
            match op {
                EventOp::Drive(level) => {
                    now += 10;
                    let before = logical(raw);
                    raw = level;
                    chip.drive_input(0, level, now);
                    let after = logical(raw);
                    if trigger.is_level() {
                        if level_active(raw) && !level_pending {
                            model.push((EventKind::LevelActive, now));
                            level_pending = true;
                        }
                    } else if before != after {
                        let wanted = match trigger {
                            IrqType::EdgeRising => after,
                            IrqType::EdgeFalling => !after,
                            _ => true,
                        };
                        if wanted {
                            let kind = if after { EventKind::RisingEdge } else { EventKind::FallingEdge };
                            model.push((kind, now));
                        }
                    }
                }
                EventOp::Read(count) => {
                    for _ in 0..count {
                        let got = line.read_event().unwrap().map(|e| (e.kind, e.timestamp_ns));
                        prop_assert_eq!(got, model.queue.pop_front());
                    }
                }
                EventOp::Ack => {
                    line.ack_level().unwrap();
                    if trigger.is_level() && level_pending {
                        level_pending = false;
                        if level_active(raw) {
                            model.push((EventKind::LevelActive, now));
                            level_pending = true;
                        }
                    }
                }
            }
            prop_assert_eq!(line.dropped_events(), model.dropped);
        }
        let rest: Vec<(EventKind, u64)> = std::iter::from_fn(|| line.read_event().unwrap())
            .map(|e| (e.kind, e.timestamp_ns))
            .collect();
        prop_assert_eq!(rest, Vec::from(model.queue));
    }
}

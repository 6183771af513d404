//! Property test: random driver messages (well- and ill-formed), event buffers and host input
//! changes never panic, every event buffer the driver queues is completed exactly once (or is
//! still outstanding), at most one buffer per line is outstanding, an outstanding buffer always
//! belongs to a line with its interrupt enabled, every response has a status byte, and every
//! state reached restores from its snapshot to itself.

use std::collections::BTreeSet;
use std::vec::Vec;

use proptest::prelude::*;

use crate::*;

#[derive(Clone, Debug)]
enum Op {
    Raw(Vec<u8>, usize),
    Message(u16, u16, u32),
    Buffer(u16),
    Input(u16, bool),
    Reset,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (prop::collection::vec(any::<u8>(), 0..12), 0..40usize).prop_map(|(b, w)| Op::Raw(b, w)),
        6 => (1..8u16, 0..5u16, prop_oneof![0..4u32, Just(8u32), any::<u32>()])
            .prop_map(|(k, g, v)| Op::Message(k, g, v)),
        4 => (0..5u16).prop_map(Op::Buffer),
        4 => (0..5u16, any::<bool>()).prop_map(|(g, l)| Op::Input(g, l)),
        1 => Just(Op::Reset),
    ]
}

fn complete(
    completion: EventCompletion,
    outstanding: &mut BTreeSet<u16>,
    completed: &mut BTreeSet<u16>,
) -> Result<(), TestCaseError> {
    prop_assert!(
        completed.insert(completion.head),
        "buffer {} completed twice",
        completion.head
    );
    prop_assert!(
        outstanding.remove(&completion.head),
        "buffer {} was not outstanding",
        completion.head
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn event_buffers_are_completed_exactly_once(ops in prop::collection::vec(op(), 1..80)) {
        let mut device = VirtioGpioDevice::new(&["a", "", "c", "d"]).unwrap();
        device.ack_features(device.device_features());
        let mut next_head = 0u16;
        let mut outstanding: BTreeSet<u16> = BTreeSet::new();
        let mut completed: BTreeSet<u16> = BTreeSet::new();
        for op in ops {
            match op {
                Op::Raw(bytes, writable) => {
                    let result = device.handle_request(&bytes, writable);
                    prop_assert!(result.response.len() <= writable);
                    prop_assert!(writable == 0 || !result.response.is_empty());
                    for c in result.events { complete(c, &mut outstanding, &mut completed)?; }
                }
                Op::Message(kind, gpio, value) => {
                    let result = device.handle_request(&Message { kind, gpio, value }.encode(), 64);
                    prop_assert!(matches!(result.response.first(), Some(&STATUS_OK) | Some(&STATUS_ERR)));
                    for c in result.events { complete(c, &mut outstanding, &mut completed)?; }
                }
                Op::Buffer(gpio) => {
                    let head = next_head;
                    next_head += 1;
                    outstanding.insert(head);
                    if let Some(c) = device.queue_event_buffer(head, &gpio.to_le_bytes()) {
                        prop_assert_eq!(c.head, head);
                        complete(c, &mut outstanding, &mut completed)?;
                    }
                }
                Op::Input(gpio, level) => {
                    if let Some(c) = device.set_input(gpio, level) {
                        prop_assert_eq!(c.status, IRQ_STATUS_VALID);
                        complete(c, &mut outstanding, &mut completed)?;
                    }
                }
                Op::Reset => {
                    // The driver reclaims its buffers itself after a reset.
                    for head in std::mem::take(&mut outstanding) { completed.insert(head); }
                    device.reset();
                    device.ack_features(device.device_features());
                }
            }
            // Every reachable state survives a snapshot.
            let saved = device.save();
            prop_assert_eq!(VirtioGpioDevice::restore(&saved).map(|d| d.save()), Ok(saved));
            let unmasked: Vec<u16> = (0..device.num_lines())
                .filter(|&g| device.line(g).is_some_and(|l| l.unmasked))
                .collect();
            prop_assert_eq!(unmasked.len(), outstanding.len());
            for g in unmasked {
                let line = device.line(g).unwrap();
                prop_assert_ne!(line.irq_type, irq_type::NONE);
                prop_assert_ne!(line.direction, Direction::Out);
            }
        }
    }
}

//! Host tests: configuration space, every request message, malformed requests, and the event
//! queue's masking, latching and release rules.

use std::vec::Vec;

use crate::*;

fn device() -> VirtioGpioDevice {
    let mut device = VirtioGpioDevice::new(&["amp-enable", "", "button"]).unwrap();
    device.ack_features(VIRTIO_F_VERSION_1 | VIRTIO_GPIO_F_IRQ);
    device
}

fn request(device: &mut VirtioGpioDevice, kind: u16, gpio: u16, value: u32) -> RequestResult {
    let bytes = Message { kind, gpio, value }.encode();
    device.handle_request(&bytes, 64)
}

fn ok(value: u8) -> Vec<u8> {
    std::vec![STATUS_OK, value]
}

fn err() -> Vec<u8> {
    std::vec![STATUS_ERR, 0]
}

fn irq_buffer(gpio: u16) -> [u8; 2] {
    gpio.to_le_bytes()
}

#[test]
fn config_space_holds_the_line_count_and_names_size() {
    let device = device();
    // "amp-enable\0" + "\0" + "button\0" = 11 + 1 + 7.
    assert_eq!(device.config(), [3, 0, 0, 0, 19, 0, 0, 0]);
    let mut partial = [0xff; 4];
    device.read_config(4, &mut partial);
    assert_eq!(partial, [19, 0, 0, 0]);
    device.read_config(6, &mut partial);
    assert_eq!(partial, [0, 0, 0, 0], "past the end reads zero");
    device.read_config(u64::MAX, &mut partial);
    assert_eq!(partial, [0; 4]);
    assert_eq!(
        VirtioGpioDevice::new(&["", ""]).unwrap().config(),
        [2, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        VirtioGpioDevice::new(&[]).unwrap_err(),
        ConfigError::LineCount(0)
    );
    assert_eq!(
        VirtioGpioDevice::new(&["a\0b"]).unwrap_err(),
        ConfigError::NulInName(0)
    );
}

#[test]
fn get_names_returns_the_names_block() {
    let mut device = device();
    let result = request(&mut device, MSG_GET_NAMES, 0, 0);
    assert_eq!(result.response, b"\0amp-enable\0\0button\0");
    // A writable buffer too small for the block gets an error byte only.
    let bytes = Message {
        kind: MSG_GET_NAMES,
        gpio: 0,
        value: 0,
    }
    .encode();
    assert_eq!(device.handle_request(&bytes, 5).response, [STATUS_ERR]);
    let mut unnamed = VirtioGpioDevice::new(&["", ""]).unwrap();
    assert_eq!(request(&mut unnamed, MSG_GET_NAMES, 0, 0).response, err());
}

#[test]
fn directions_and_values_follow_the_spec() {
    let mut device = device();
    assert_eq!(
        request(&mut device, MSG_GET_DIRECTION, 0, 0).response,
        ok(0)
    );
    // Value first, then direction: the line starts driving the stored value.
    let set = request(&mut device, MSG_SET_VALUE, 0, 1);
    assert_eq!((set.response, set.output_change), (ok(0), None));
    let out = request(&mut device, MSG_SET_DIRECTION, 0, 1);
    assert_eq!((out.response, out.output_change), (ok(0), Some((0, true))));
    assert_eq!(device.output_level(0), Some(true));
    assert_eq!(
        request(&mut device, MSG_GET_DIRECTION, 0, 0).response,
        ok(1)
    );
    assert_eq!(request(&mut device, MSG_GET_VALUE, 0, 0).response, ok(1));
    let low = request(&mut device, MSG_SET_VALUE, 0, 0);
    assert_eq!(low.output_change, Some((0, false)));
    assert_eq!(
        request(&mut device, MSG_SET_VALUE, 0, 0).output_change,
        None
    );

    // Inputs read what the host drives.
    request(&mut device, MSG_SET_DIRECTION, 2, 2);
    device.set_input(2, true);
    assert_eq!(request(&mut device, MSG_GET_VALUE, 2, 0).response, ok(1));

    // NONE discards the line's state.
    request(&mut device, MSG_SET_VALUE, 0, 1);
    let none = request(&mut device, MSG_SET_DIRECTION, 0, 0);
    assert_eq!(none.output_change, Some((0, false)));
    assert!(!device.line(0).unwrap().output);
    assert_eq!(device.output_level(0), None);
}

#[test]
fn malformed_requests_are_answered_with_an_error() {
    let mut device = device();
    for (kind, gpio, value) in [
        (MSG_GET_VALUE, 3, 0),     // no such line
        (MSG_SET_DIRECTION, 0, 3), // no such direction
        (MSG_SET_VALUE, 0, 2),     // not a level
        (MSG_IRQ_TYPE, 2, 5),      // not a trigger
        (0x0042, 0, 0),            // unknown message
    ] {
        assert_eq!(
            request(&mut device, kind, gpio, value).response,
            err(),
            "{kind:#x}"
        );
    }
    assert_eq!(
        device.handle_request(&[1, 0, 0], 2).response,
        err(),
        "short request"
    );
    assert_eq!(
        device.handle_request(&[0; 9], 2).response,
        err(),
        "long request"
    );
    let bytes = Message {
        kind: MSG_GET_VALUE,
        gpio: 0,
        value: 0,
    }
    .encode();
    assert_eq!(device.handle_request(&bytes, 1).response, [STATUS_ERR]);
    assert!(device.handle_request(&bytes, 0).response.is_empty());
}

#[test]
fn messages_decode_and_print_for_the_log() {
    let message = Message {
        kind: MSG_SET_VALUE,
        gpio: 3,
        value: 1,
    };
    assert_eq!(Message::decode(&message.encode()), Some(message));
    assert_eq!(message.to_string(), "SET_VALUE gpio 3 value 1");
    assert_eq!(
        Message {
            kind: 9,
            gpio: 0,
            value: 0
        }
        .to_string(),
        "UNKNOWN(0x0009) gpio 0 value 0"
    );
    assert_eq!(Message::decode(&[0; 7]), None);
}

#[test]
fn interrupts_need_the_feature_and_an_input() {
    let mut device = VirtioGpioDevice::new(&["a", "b"]).unwrap();
    device.ack_features(VIRTIO_F_VERSION_1);
    assert_eq!(request(&mut device, MSG_IRQ_TYPE, 0, 1).response, err());
    let completion = device.queue_event_buffer(7, &irq_buffer(0)).unwrap();
    assert_eq!(completion.status, IRQ_STATUS_INVALID);

    let mut device = device_with_irq_on(1, irq_type::EDGE_BOTH);
    assert_eq!(
        request(&mut device, MSG_SET_DIRECTION, 1, 1).response,
        err(),
        "disable the interrupt before making the line an output"
    );
    request(&mut device, MSG_SET_DIRECTION, 0, 1);
    assert_eq!(request(&mut device, MSG_IRQ_TYPE, 0, 1).response, err());
}

fn device_with_irq_on(gpio: u16, trigger: u8) -> VirtioGpioDevice {
    let mut device = device();
    request(&mut device, MSG_SET_DIRECTION, gpio, 2);
    assert_eq!(
        request(&mut device, MSG_IRQ_TYPE, gpio, u32::from(trigger)).response,
        ok(0)
    );
    device
}

#[test]
fn an_unmasked_edge_completes_the_buffer_and_masks_the_line() {
    let mut device = device_with_irq_on(2, irq_type::EDGE_RISING);
    assert_eq!(device.queue_event_buffer(5, &irq_buffer(2)), None);
    assert!(device.line(2).unwrap().unmasked);
    assert_eq!(device.set_input(2, false), None, "no edge");
    assert_eq!(
        device.set_input(2, true),
        Some(EventCompletion {
            head: 5,
            gpio: 2,
            status: IRQ_STATUS_VALID
        })
    );
    assert!(!device.line(2).unwrap().unmasked);
    // Falling edges are not wanted; rising ones while masked are latched.
    assert_eq!(device.set_input(2, false), None);
    assert_eq!(device.set_input(2, true), None);
    assert!(device.line(2).unwrap().latched);
    assert_eq!(
        device.queue_event_buffer(6, &irq_buffer(2)),
        Some(EventCompletion {
            head: 6,
            gpio: 2,
            status: IRQ_STATUS_VALID
        }),
        "the latched edge fires at unmask"
    );
    assert!(!device.line(2).unwrap().latched);
    assert_eq!(device.queue_event_buffer(8, &irq_buffer(2)), None);
}

#[test]
fn levels_are_not_latched_but_fire_while_they_hold() {
    let mut device = device_with_irq_on(2, irq_type::LEVEL_HIGH);
    // High while masked: nothing latched...
    assert_eq!(device.set_input(2, true), None);
    assert!(!device.line(2).unwrap().latched);
    // ...but the level still holds at unmask, so it fires at once.
    assert_eq!(
        device
            .queue_event_buffer(1, &irq_buffer(2))
            .map(|c| c.status),
        Some(IRQ_STATUS_VALID)
    );
    device.set_input(2, false);
    assert_eq!(device.queue_event_buffer(2, &irq_buffer(2)), None);
    assert_eq!(device.set_input(2, true).map(|c| c.head), Some(2));
    let mut low = device_with_irq_on(1, irq_type::LEVEL_LOW);
    assert_eq!(
        low.queue_event_buffer(3, &irq_buffer(1)).map(|c| c.status),
        Some(IRQ_STATUS_VALID),
        "a low line is active for LEVEL_LOW"
    );
}

#[test]
fn disabling_returns_the_buffer_invalid_and_forgets_latches() {
    let mut device = device_with_irq_on(2, irq_type::EDGE_BOTH);
    device.set_input(2, true);
    assert!(device.line(2).unwrap().latched);
    let result = request(&mut device, MSG_IRQ_TYPE, 2, 0);
    assert!(result.events.is_empty(), "no buffer was queued");
    assert!(!device.line(2).unwrap().latched);

    request(&mut device, MSG_IRQ_TYPE, 2, u32::from(irq_type::EDGE_BOTH));
    assert_eq!(device.queue_event_buffer(9, &irq_buffer(2)), None);
    assert_eq!(
        request(
            &mut device,
            MSG_IRQ_TYPE,
            2,
            u32::from(irq_type::LEVEL_HIGH)
        )
        .response,
        err(),
        "no trigger change while unmasked"
    );
    let result = request(&mut device, MSG_IRQ_TYPE, 2, 0);
    assert_eq!(
        result.events,
        [EventCompletion {
            head: 9,
            gpio: 2,
            status: IRQ_STATUS_INVALID
        }]
    );
    // Direction NONE also releases a queued buffer.
    request(&mut device, MSG_IRQ_TYPE, 2, u32::from(irq_type::EDGE_BOTH));
    device.queue_event_buffer(10, &irq_buffer(2));
    let result = request(&mut device, MSG_SET_DIRECTION, 2, 0);
    assert_eq!(result.events.len(), 1);
    assert_eq!(device.line(2).unwrap().irq_type, irq_type::NONE);
}

#[test]
fn buffers_that_cannot_be_kept_go_back_invalid() {
    let mut device = device_with_irq_on(2, irq_type::EDGE_BOTH);
    assert_eq!(device.queue_event_buffer(1, &irq_buffer(2)), None);
    let invalid = |head, gpio| {
        Some(EventCompletion {
            head,
            gpio,
            status: IRQ_STATUS_INVALID,
        })
    };
    assert_eq!(
        device.queue_event_buffer(2, &irq_buffer(2)),
        invalid(2, 2),
        "one per line"
    );
    assert_eq!(
        device.queue_event_buffer(3, &irq_buffer(0)),
        invalid(3, 0),
        "disabled"
    );
    assert_eq!(
        device.queue_event_buffer(4, &irq_buffer(99)),
        invalid(4, 99),
        "no line"
    );
    assert_eq!(device.queue_event_buffer(5, &[1]), invalid(5, 0), "short");
}

#[test]
fn reset_forgets_driver_state_but_not_host_inputs() {
    let mut device = device_with_irq_on(2, irq_type::EDGE_BOTH);
    device.queue_event_buffer(1, &irq_buffer(2));
    device.set_input(0, true);
    request(&mut device, MSG_SET_VALUE, 1, 1);
    device.reset();
    let line = device.line(2).unwrap();
    assert_eq!((line.irq_type, line.unmasked), (irq_type::NONE, false));
    assert!(device.line(0).unwrap().input);
    assert!(!device.line(1).unwrap().output);
    assert_eq!(
        request(&mut device, MSG_IRQ_TYPE, 2, 1).response,
        err(),
        "features renegotiated"
    );
}

#[test]
fn a_saved_device_restores_to_the_same_behaviour() {
    let mut device = device_with_irq_on(2, irq_type::EDGE_BOTH);
    device.queue_event_buffer(4, &irq_buffer(2));
    request(&mut device, MSG_SET_VALUE, 0, 1);
    request(&mut device, MSG_SET_DIRECTION, 0, 1);
    device.set_input(1, true);
    let saved = device.save();
    let mut restored = VirtioGpioDevice::restore(&saved).unwrap();
    assert_eq!(restored.save(), saved);
    assert_eq!(restored.config(), device.config());
    assert_eq!(restored.output_level(0), Some(true));
    // The buffer queued before the snapshot completes after restore.
    assert_eq!(
        restored.set_input(2, true),
        Some(EventCompletion {
            head: 4,
            gpio: 2,
            status: IRQ_STATUS_VALID
        })
    );
}

#[test]
fn impossible_saved_states_are_refused() {
    let good = device_with_irq_on(2, irq_type::LEVEL_LOW).save();
    let mut bad = good.clone();
    bad.lines[1].direction = 7;
    assert_eq!(
        VirtioGpioDevice::restore(&bad).unwrap_err(),
        RestoreError::Direction { line: 1, value: 7 }
    );
    let mut bad = good.clone();
    bad.lines[2].irq_type = 5;
    assert_eq!(
        VirtioGpioDevice::restore(&bad).unwrap_err(),
        RestoreError::IrqType { line: 2, value: 5 }
    );
    let mut bad = good.clone();
    bad.lines[2].direction = Direction::Out as u8;
    assert!(matches!(
        VirtioGpioDevice::restore(&bad),
        Err(RestoreError::IrqType { line: 2, .. })
    ));
    let mut bad = good.clone();
    bad.lines[0].buffer = Some(3);
    assert_eq!(
        VirtioGpioDevice::restore(&bad).unwrap_err(),
        RestoreError::IrqState { line: 0 }
    );
    let mut bad = good.clone();
    bad.irq_negotiated = false;
    assert_eq!(
        VirtioGpioDevice::restore(&bad).unwrap_err(),
        RestoreError::IrqState { line: 2 }
    );
    let mut bad = good.clone();
    bad.lines.clear();
    assert_eq!(
        VirtioGpioDevice::restore(&bad).unwrap_err(),
        RestoreError::Config(ConfigError::LineCount(0))
    );
    assert_eq!(
        RestoreError::IrqType { line: 2, value: 5 }.to_string(),
        "saved virtio-gpio line 2 has an impossible interrupt type 0x5"
    );
}

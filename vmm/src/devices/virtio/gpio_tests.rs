//! virtio-gpio over the virtio-mmio transport, in this process: requests, event buffers
//! completed by the control channel, hostile chains, and the saved state.

use std::sync::Arc;

use crate::vstate::memory::GuestMemoryMmap;
use lull_virtio_gpio::{
    Message, IRQ_STATUS_INVALID, IRQ_STATUS_VALID, MSG_GET_NAMES, MSG_IRQ_TYPE, MSG_SET_DIRECTION,
    MSG_SET_VALUE, STATUS_ERR, STATUS_OK, VIRTIO_GPIO_F_IRQ,
};
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use virtio_bindings::virtio_mmio::*;
use vm_memory::{Bytes, GuestAddress};

use super::gpio::{parse_gpio, Gpio, GpioConfig};
use super::mmio::MmioTransport;
use super::tests::*;
use super::{Backend, BackendEvent, BackendState};

fn config(lines: &[&str]) -> GpioConfig {
    GpioConfig {
        lines: lines.iter().map(|n| n.to_string()).collect(),
        control: None,
        log: Some("/dev/null".into()),
    }
}

fn gpio_device() -> (MmioTransport, Arc<FakeInterrupt>, GuestMemoryMmap) {
    let memory = memory();
    let gpio = Gpio::open(&config(&["amp-enable", "button", ""])).unwrap();
    let (transport, interrupt) = transport(Backend::Gpio(gpio), &memory);
    (transport, interrupt, memory)
}

fn chip(transport: &MmioTransport) -> Arc<lull_gpio_sim::gpio::Gpio> {
    match &transport.backend {
        Backend::Gpio(gpio) => gpio.chip().clone(),
        _ => panic!("not a gpio device"),
    }
}

fn kick(transport: &mut MmioTransport, queue: u32) {
    write32(transport, VIRTIO_MMIO_QUEUE_NOTIFY, queue);
    let _ = transport.queue_events()[queue as usize].read();
    transport.handle(BackendEvent::Queue(queue as usize));
}

/// Sends one request (message at DATA + slot * 0x100, response right after it); returns the
/// response bytes as long as the used length says.
fn request(
    transport: &mut MmioTransport,
    ring: &mut Ring,
    memory: &GuestMemoryMmap,
    message: Message,
    response_len: u32,
) -> Vec<u8> {
    let at = DATA + u64::from(ring.avail_idx) * 0x100;
    memory
        .write_slice(&message.encode(), GuestAddress(at))
        .unwrap();
    ring.add(memory, &[(at, 8, false), (at + 0x10, response_len, true)]);
    let before = ring.used_idx(memory);
    kick(transport, 0);
    assert_eq!(ring.used_idx(memory), before.wrapping_add(1), "{message}");
    let (_, len) = ring.used(memory, before);
    let mut response = vec![0u8; len as usize];
    memory
        .read_slice(&mut response, GuestAddress(at + 0x10))
        .unwrap();
    response
}

const FEATURES: u64 = VERSION_1 | EVENT_IDX | VIRTIO_GPIO_F_IRQ;

#[test]
fn gpio_options_parse_with_clear_errors() {
    let config = parse_gpio("lines=a,b,,c,control=/tmp/s,log=/tmp/l").unwrap();
    assert_eq!(config.lines, ["a", "b", "", "c"]);
    assert_eq!(
        config.control.as_deref(),
        Some(std::path::Path::new("/tmp/s"))
    );
    assert_eq!(config.log.as_deref(), Some(std::path::Path::new("/tmp/l")));
    let default = parse_gpio("default").unwrap();
    assert_eq!(default.lines.len(), 8);
    assert_eq!(default.lines[1], "button");
    assert_eq!(parse_gpio("control=/tmp/s").unwrap().lines.len(), 8);
    for (value, expected) in [
        ("nope", "'nope' is not lines="),
        ("lines=a,path=b", "'path=' is not"),
        ("control=", "control= needs a path"),
        ("lines=a,lines=b", "twice"),
        ("lines=a\0b", "NUL"),
    ] {
        let error = parse_gpio(value).unwrap_err();
        assert!(error.contains(expected), "{value}: {error}");
    }
}

#[test]
fn gpio_requests_and_an_edge_from_the_control_channel() {
    let (mut transport, interrupt, memory) = gpio_device();
    assert_eq!(read32(&transport, VIRTIO_MMIO_DEVICE_ID), 41);
    assert_eq!(read32(&transport, VIRTIO_MMIO_CONFIG), 3, "ngpio");
    assert_eq!(read32(&transport, VIRTIO_MMIO_CONFIG + 4), 19, "names size");
    bring_up(&mut transport, FEATURES, 16);
    let mut requests = Ring::new(0, 16);
    let names = request(
        &mut transport,
        &mut requests,
        &memory,
        Message {
            kind: MSG_GET_NAMES,
            gpio: 0,
            value: 0,
        },
        20,
    );
    assert_eq!(&names[..], b"\0amp-enable\0button\0\0");
    for kind in [MSG_SET_VALUE, MSG_SET_DIRECTION] {
        let message = Message {
            kind,
            gpio: 0,
            value: 1,
        };
        let response = request(&mut transport, &mut requests, &memory, message, 2);
        assert_eq!(response, [STATUS_OK, 0]);
    }
    assert_eq!(
        chip(&transport).control_line("get amp-enable").as_deref(),
        Some("ok 1")
    );
    // A bad message is answered, not a protocol violation.
    let bad = Message {
        kind: MSG_SET_VALUE,
        gpio: 9,
        value: 1,
    };
    assert_eq!(
        request(&mut transport, &mut requests, &memory, bad, 2),
        [STATUS_ERR, 0]
    );

    // The button: an input with rising-edge interrupts, unmasked by an event buffer.
    for (kind, value) in [(MSG_SET_DIRECTION, 2), (MSG_IRQ_TYPE, 1)] {
        let message = Message {
            kind,
            gpio: 1,
            value,
        };
        assert_eq!(
            request(&mut transport, &mut requests, &memory, message, 2)[0],
            STATUS_OK
        );
    }
    let mut events = Ring::new(1, 16);
    let at = DATA + 0x8000;
    memory.write_obj(1u16, GuestAddress(at)).unwrap();
    memory.write_obj(0xffu8, GuestAddress(at + 2)).unwrap();
    events.add(&memory, &[(at, 2, false), (at + 2, 1, true)]);
    kick(&mut transport, 1);
    assert_eq!(events.used_idx(&memory), 0, "held until an edge");
    let interrupts = interrupt.count();
    assert_eq!(
        chip(&transport).control_line("pulse button").as_deref(),
        Some("ok")
    );
    // The control channel woke the worker (the host descriptor); it delivers the buffer.
    transport.handle(BackendEvent::Host);
    assert_eq!(events.used_idx(&memory), 1);
    assert_eq!(events.used(&memory, 0), (0, 1));
    assert_eq!(
        memory.read_obj::<u8>(GuestAddress(at + 2)).unwrap(),
        IRQ_STATUS_VALID
    );
    assert_eq!(interrupt.count(), interrupts + 1);
    assert_ne!(
        read32(&transport, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_VRING,
        0
    );
    // The falling edge does not fire a rising-edge line: the next buffer is held.
    events.add(&memory, &[(at, 2, false), (at + 2, 1, true)]);
    kick(&mut transport, 1);
    assert_eq!(events.used_idx(&memory), 1);
    // A buffer for a line without a trigger goes back INVALID at once.
    let other = at + 0x100;
    memory.write_obj(0u16, GuestAddress(other)).unwrap();
    events.add(&memory, &[(other, 2, false), (other + 2, 1, true)]);
    kick(&mut transport, 1);
    assert_eq!(events.used_idx(&memory), 2);
    assert_eq!(
        memory.read_obj::<u8>(GuestAddress(other + 2)).unwrap(),
        IRQ_STATUS_INVALID
    );
    // Disabling the button's trigger returns its held buffer INVALID.
    let message = Message {
        kind: MSG_IRQ_TYPE,
        gpio: 1,
        value: 0,
    };
    assert_eq!(
        request(&mut transport, &mut requests, &memory, message, 2)[0],
        STATUS_OK
    );
    assert_eq!(events.used_idx(&memory), 3);
    assert_eq!(
        memory.read_obj::<u8>(GuestAddress(at + 2)).unwrap(),
        IRQ_STATUS_INVALID
    );
    assert_eq!(transport.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

#[test]
fn hostile_gpio_chains_need_reset_and_the_vmm_carries_on() {
    type Spoil = fn(&mut Ring, &mut Ring, &GuestMemoryMmap) -> u32;
    let cases: [(&str, Spoil); 5] = [
        (
            "request without a response buffer",
            |requests, _, memory| {
                requests.add(memory, &[(DATA, 8, false)]);
                0
            },
        ),
        ("response only", |requests, _, memory| {
            requests.add(memory, &[(DATA, 8, true)]);
            0
        }),
        ("event buffer without a status byte", |_, events, memory| {
            events.add(memory, &[(DATA, 2, false)]);
            1
        }),
        ("oversized event chain", |_, events, memory| {
            events.add(memory, &[(DATA, 2, false), (DATA + 0x100, 4096, true)]);
            1
        }),
        ("event loop", |_, events, memory| {
            events.write_desc(memory, 0, DATA, 2, 1, 0);
            events.publish(memory, 0);
            1
        }),
    ];
    for (name, spoil) in cases {
        let (mut transport, _, memory) = gpio_device();
        bring_up(&mut transport, FEATURES, 16);
        let (mut requests, mut events) = (Ring::new(0, 16), Ring::new(1, 16));
        let queue = spoil(&mut requests, &mut events, &memory);
        kick(&mut transport, queue);
        assert_ne!(
            transport.status() & VIRTIO_CONFIG_S_NEEDS_RESET,
            0,
            "{name}"
        );
        assert!(transport.needs_reset_reason.is_some(), "{name}");
        // The control channel still answers; an edge goes nowhere until the reset.
        assert_eq!(
            chip(&transport).control_line("pulse 1").as_deref(),
            Some("ok"),
            "{name}"
        );
        transport.handle(BackendEvent::Host);
    }
    // Random bytes in a request are answered with an error, never a panic.
    let (mut transport, _, memory) = gpio_device();
    bring_up(&mut transport, FEATURES, 16);
    let mut requests = Ring::new(0, 16);
    for len in [0u32, 1, 7, 9] {
        memory.write_slice(&[0xa5; 16], GuestAddress(DATA)).unwrap();
        requests.add(
            &memory,
            &[(DATA, len.max(1), false), (DATA + 0x10, 2, true)],
        );
        kick(&mut transport, 0);
    }
    assert_eq!(transport.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_eq!(requests.used_idx(&memory), 4);
}

#[test]
fn gpio_state_round_trips_with_a_held_buffer_and_a_pending_edge() {
    let (mut transport, _, memory) = gpio_device();
    bring_up(&mut transport, FEATURES, 16);
    let mut requests = Ring::new(0, 16);
    for (gpio, kind, value) in [
        (1, MSG_SET_DIRECTION, 2),
        (1, MSG_IRQ_TYPE, 3),
        (2, MSG_SET_DIRECTION, 2),
        (2, MSG_IRQ_TYPE, 1),
    ] {
        let message = Message { kind, gpio, value };
        assert_eq!(
            request(&mut transport, &mut requests, &memory, message, 2)[0],
            STATUS_OK
        );
    }
    let mut events = Ring::new(1, 16);
    for (line, at) in [(1u16, DATA + 0x8000), (2, DATA + 0x8100)] {
        memory.write_obj(line, GuestAddress(at)).unwrap();
        events.add(&memory, &[(at, 2, false), (at + 2, 1, true)]);
    }
    kick(&mut transport, 1);
    // An edge on line 2 while the VM is paused: pending, not yet delivered.
    transport.pause();
    assert_eq!(
        chip(&transport).control_line("set 2 1").as_deref(),
        Some("ok")
    );
    let state = transport.save();
    let BackendState::Gpio(gpio_state) = &state.backend else {
        panic!("not a gpio state");
    };
    assert_eq!(gpio_state.pending.len(), 1);
    assert_eq!(gpio_state.event_buffers.len(), 2);
    assert!(gpio_state.irq_negotiated);
    let bytes = postcard::to_allocvec(&state).unwrap();
    let decoded: super::mmio::TransportState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(decoded, state);
    let interrupt = Arc::new(FakeInterrupt::default());
    let mut restored = <MmioTransport as crate::persist::Persist>::restore(
        super::TransportResources {
            name: "restored".into(),
            memory: memory.clone(),
            interrupt: interrupt.clone(),
        },
        &decoded,
    )
    .unwrap();
    assert_eq!(restored.save(), state);
    // After the restore the pending edge is delivered, and line 1's buffer still fires.
    restored.handle(BackendEvent::Queue(1));
    assert_eq!(events.used_idx(&memory), 1);
    assert_eq!(events.used(&memory, 0).0, 2, "line 2's buffer (head 2)");
    assert_eq!(
        chip(&restored).control_line("pulse button").as_deref(),
        Some("ok")
    );
    restored.handle(BackendEvent::Host);
    assert_eq!(events.used_idx(&memory), 2);
    assert_eq!(events.used(&memory, 1).0, 0, "line 1's buffer (head 0)");
    // A saved state whose buffers do not match its lines is refused.
    let mut broken = gpio_state.clone();
    broken.event_buffers.pop();
    let Err(error) = Backend::restore(&BackendState::Gpio(broken)) else {
        panic!("a broken state restored");
    };
    assert!(error.to_string().contains("event buffers"), "{error}");
    let mut broken = gpio_state.clone();
    broken.lines[0].direction = 7;
    assert!(Backend::restore(&BackendState::Gpio(broken)).is_err());
}

#[test]
fn a_handed_over_control_socket_is_not_ours_to_remove_and_comes_back() {
    let path = std::env::temp_dir().join(format!(
        "lull-vmm-gpio-handover-{}.sock",
        std::process::id()
    ));
    let mut settings = config(&["a", "b"]);
    settings.control = Some(path.clone());
    let gpio = Gpio::open(&settings).unwrap();
    assert_eq!(gpio.control_socket(), Some(path.as_path()));
    assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
    // A migration source at the final pause: the path is freed for the destination, and the
    // source must not remove it as it exits (it lists only sockets it serves).
    let mut backend = Backend::Gpio(gpio);
    backend.release_host().unwrap();
    let Backend::Gpio(gpio) = &mut backend else {
        unreachable!()
    };
    assert_eq!(gpio.control_socket(), None);
    assert!(!path.exists());
    // The migration failed: bound again, and served.
    backend.reacquire_host().unwrap();
    let Backend::Gpio(gpio) = &backend else {
        unreachable!()
    };
    assert_eq!(gpio.control_socket(), Some(path.as_path()));
    assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
    let _ = std::fs::remove_file(&path);
}

//! gpiolib over virtio-gpio, without a transport: a driver-side chip that speaks the byte
//! protocol to [`VirtioGpioDevice`] as the kernel's virtio-gpio driver will (through the
//! requestq and eventq), registered with lull-gpio. It checks that the two crates fit: names
//! come from `GET_NAMES`, descriptors and tools become requestq messages, the host's input edges
//! come back as eventq completions that wake `gpiomon`, and level interrupts re-arm on
//! acknowledgement.

use std::sync::{Arc, Mutex};

use lull_gpio::tools::{gpioinfo, gpiomon};
use lull_gpio::{
    ChipError, Direction, EventKind, EventSink, GpioChip, GpioRegistry, IrqType, LineConfig,
    RawEvent,
};
use lull_virtio_gpio::*;

/// The device and what the "transport" has seen.
struct Wire {
    device: VirtioGpioDevice,
    log: Vec<String>,
}

/// The guest driver's chip.
struct VirtioChip {
    wire: Arc<Mutex<Wire>>,
    names: Vec<Option<String>>,
    triggers: Mutex<Vec<IrqType>>,
}

impl VirtioChip {
    fn probe(wire: Arc<Mutex<Wire>>) -> Self {
        let (ngpio, names_size) = {
            let mut config = [0; CONFIG_SIZE];
            wire.lock().unwrap().device.read_config(0, &mut config);
            (
                u16::from_le_bytes([config[0], config[1]]),
                u32::from_le_bytes([config[4], config[5], config[6], config[7]]) as usize,
            )
        };
        let mut names = vec![None; usize::from(ngpio)];
        if names_size > 0 {
            let request = Message {
                kind: MSG_GET_NAMES,
                gpio: 0,
                value: 0,
            }
            .encode();
            let response = wire
                .lock()
                .unwrap()
                .device
                .handle_request(&request, 1 + names_size);
            assert_eq!(response.response[0], STATUS_OK);
            for (slot, name) in names
                .iter_mut()
                .zip(response.response[1..].split(|&b| b == 0))
            {
                *slot = (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned());
            }
        }
        Self {
            wire,
            names,
            triggers: Mutex::new(vec![IrqType::None; usize::from(ngpio)]),
        }
    }

    fn send(&self, kind: u16, offset: u32, value: u32) -> Result<u8, ChipError> {
        let gpio = u16::try_from(offset).map_err(|_| ChipError::InvalidOffset(offset))?;
        let message = Message { kind, gpio, value };
        let mut wire = self.wire.lock().unwrap();
        let result = wire.device.handle_request(&message.encode(), RESPONSE_LEN);
        wire.log.push(message.to_string());
        assert!(result.events.is_empty() || kind == MSG_IRQ_TYPE);
        match result.response.as_slice() {
            [STATUS_OK, value] => Ok(*value),
            _ => Err(ChipError::Io),
        }
    }

    /// Unmasks a line: one event buffer, its head the line's offset. An immediate completion
    /// goes to the interrupt handler at once.
    fn queue_buffer(&self, offset: u32, sink: &EventSink) {
        let gpio = offset as u16;
        let completion = self
            .wire
            .lock()
            .unwrap()
            .device
            .queue_event_buffer(gpio, &gpio.to_le_bytes());
        if let Some(completion) = completion {
            self.interrupt(completion, sink);
        }
    }

    /// The eventq interrupt handler: a VALID buffer is an interrupt on its line. virtio does not
    /// say which edge fired, so the line is read (as Linux's edge detector does); edge lines are
    /// unmasked again at once, level lines when gpiolib acknowledges.
    fn interrupt(&self, completion: EventCompletion, sink: &EventSink) {
        if completion.status != IRQ_STATUS_VALID {
            return;
        }
        let offset = u32::from(completion.gpio);
        let trigger = self.triggers.lock().unwrap()[completion.gpio as usize];
        let raw = if trigger.is_level() {
            RawEvent::Level
        } else if self.get(offset).unwrap_or(false) {
            RawEvent::Rising
        } else {
            RawEvent::Falling
        };
        sink.report(offset, raw, 1_000 * u64::from(completion.head) + 7);
        if !trigger.is_level() {
            self.queue_buffer(offset, sink);
        }
    }
}

/// What the registered chip needs at run time: the chip and its sink (set after `add_chip`).
struct Registered {
    chip: Arc<VirtioChip>,
    sink: Arc<Mutex<Option<EventSink>>>,
}

impl GpioChip for Registered {
    fn label(&self) -> &str {
        "virtio-gpio"
    }
    fn num_lines(&self) -> u32 {
        self.chip.names.len() as u32
    }
    fn line_name(&self, offset: u32) -> Option<&str> {
        self.chip.names.get(offset as usize)?.as_deref()
    }
    fn can_sleep(&self) -> bool {
        true
    }
    fn get(&self, offset: u32) -> Result<bool, ChipError> {
        self.chip.get(offset)
    }
    fn set(&self, offset: u32, value: bool) -> Result<(), ChipError> {
        self.chip
            .send(MSG_SET_VALUE, offset, u32::from(value))
            .map(drop)
    }
    fn get_direction(&self, offset: u32) -> Result<Direction, ChipError> {
        match self.chip.send(MSG_GET_DIRECTION, offset, 0)? {
            1 => Ok(Direction::Output),
            _ => Ok(Direction::Input),
        }
    }
    fn direction_input(&self, offset: u32) -> Result<(), ChipError> {
        self.chip.send(MSG_SET_DIRECTION, offset, 2).map(drop)
    }
    fn direction_output(&self, offset: u32, value: bool) -> Result<(), ChipError> {
        // Value first, so the line never drives the old level.
        self.set(offset, value)?;
        self.chip.send(MSG_SET_DIRECTION, offset, 1).map(drop)
    }
    fn irq_capable(&self) -> bool {
        true
    }
    fn irq_set_type(&self, offset: u32, trigger: IrqType) -> Result<(), ChipError> {
        self.chip.send(MSG_IRQ_TYPE, offset, trigger as u32)?;
        self.chip.triggers.lock().unwrap()[offset as usize] = trigger;
        Ok(())
    }
    fn irq_enable(&self, offset: u32) -> Result<(), ChipError> {
        let sink = self.sink.lock().unwrap().clone().ok_or(ChipError::Io)?;
        self.chip.queue_buffer(offset, &sink);
        Ok(())
    }
    fn irq_disable(&self, offset: u32) -> Result<(), ChipError> {
        // Masking is done by not re-queueing; disabling the trigger returns the buffer.
        let _ = offset;
        Ok(())
    }
}

impl VirtioChip {
    fn get(&self, offset: u32) -> Result<bool, ChipError> {
        self.send(MSG_GET_VALUE, offset, 0).map(|v| v != 0)
    }
}

struct Setup {
    registry: GpioRegistry,
    wire: Arc<Mutex<Wire>>,
    chip: Arc<VirtioChip>,
    sink: EventSink,
}

fn setup() -> Setup {
    let mut device = VirtioGpioDevice::new(&["amp-enable", "button", "", "alarm"]).unwrap();
    device.ack_features(device.device_features());
    let wire = Arc::new(Mutex::new(Wire {
        device,
        log: Vec::new(),
    }));
    let chip = Arc::new(VirtioChip::probe(wire.clone()));
    let sink_slot = Arc::new(Mutex::new(None));
    let registry = GpioRegistry::new();
    let handle = registry
        .add_chip(
            Box::new(Registered {
                chip: chip.clone(),
                sink: sink_slot.clone(),
            }),
            None,
        )
        .unwrap();
    *sink_slot.lock().unwrap() = Some(handle.event_sink());
    wire.lock().unwrap().log.clear();
    Setup {
        registry,
        wire,
        chip,
        sink: handle.event_sink(),
    }
}

/// The host drives an input; a completion goes to the guest's interrupt handler.
fn host_drives(setup: &Setup, gpio: u16, level: bool) {
    let completion = setup.wire.lock().unwrap().device.set_input(gpio, level);
    if let Some(completion) = completion {
        setup.chip.interrupt(completion, &setup.sink);
    }
}

#[test]
fn names_come_from_the_device_and_the_amp_line_reaches_it() {
    let setup = setup();
    let info = gpioinfo(&setup.registry, &["gpiochip0"]).unwrap();
    assert!(
        info.contains("\tline   0: \"amp-enable\"       unused   input  active-high \n"),
        "{info}"
    );
    assert!(info.contains("\tline   2:      unnamed"), "{info}");
    // gpioinfo read the free lines' directions from the device.
    let log = std::mem::take(&mut setup.wire.lock().unwrap().log);
    assert_eq!(log.len(), 4);
    assert!(log.iter().all(|m| m.starts_with("GET_DIRECTION")));

    let amp = setup
        .registry
        .get_by_name("amp-enable", "q35-hda", LineConfig::output(true))
        .unwrap();
    assert_eq!(
        setup.wire.lock().unwrap().device.output_level(0),
        Some(true)
    );
    amp.set_value(false).unwrap();
    assert_eq!(
        setup.wire.lock().unwrap().device.output_level(0),
        Some(false)
    );
    let log = std::mem::take(&mut setup.wire.lock().unwrap().log);
    assert_eq!(
        log,
        [
            "SET_VALUE gpio 0 value 1",
            "SET_DIRECTION gpio 0 value 1",
            "SET_VALUE gpio 0 value 0"
        ]
    );
    let busy = setup
        .registry
        .get("gpiochip0", 0, "gpioset", LineConfig::as_is())
        .unwrap_err();
    assert_eq!(
        busy.to_string(),
        "line 0 of gpiochip0 is busy: requested by \"q35-hda\""
    );
}

#[test]
fn host_edges_wake_gpiomon_through_the_event_queue() {
    let setup = setup();
    let mut monitor = gpiomon(&setup.registry, &["-n", "2", "gpiochip0", "1"]).unwrap();
    assert!(setup.wire.lock().unwrap().device.line(1).unwrap().unmasked);
    host_drives(&setup, 1, true);
    host_drives(&setup, 1, false);
    let output = monitor.poll().unwrap();
    assert_eq!(
        output.text,
        "event:  RISING EDGE offset: 1 timestamp: [       0.000001007]\n\
         event: FALLING EDGE offset: 1 timestamp: [       0.000001007]\n"
    );
    assert!(output.finished);
    drop(monitor);
    // Releasing the line disabled its interrupt, which returned the queued buffer.
    let line = setup.wire.lock().unwrap().device.line(1).unwrap().clone();
    assert_eq!((line.irq_type, line.unmasked), (irq_type::NONE, false));
}

#[test]
fn level_interrupts_rearm_on_acknowledgement() {
    let setup = setup();
    let alarm = setup
        .registry
        .get_by_name("alarm", "watchdog", LineConfig::input())
        .unwrap();
    alarm.request_irq(IrqType::LevelHigh).unwrap();
    host_drives(&setup, 3, true);
    assert_eq!(
        alarm.read_event().unwrap().unwrap().kind,
        EventKind::LevelActive
    );
    assert_eq!(
        alarm.read_event().unwrap(),
        None,
        "masked until acknowledged"
    );
    // Still high at acknowledgement: the re-queued buffer completes at once.
    alarm.ack_level().unwrap();
    assert_eq!(
        alarm.read_event().unwrap().unwrap().kind,
        EventKind::LevelActive
    );
    host_drives(&setup, 3, false);
    alarm.ack_level().unwrap();
    assert_eq!(alarm.read_event().unwrap(), None);
    host_drives(&setup, 3, true);
    assert!(alarm.read_event().unwrap().is_some());
}

//! The simulated GPIO chip shared by the vring thread and the control channel: the device
//! state machine (lull-virtio-gpio), the event buffers it keeps, and the completions the
//! control channel produced for the vring thread to deliver.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use lull_virtio_gpio::{
    irq_type, ConfigError, Direction, EventCompletion, RequestResult, VirtioGpioDevice,
    IRQ_STATUS_VALID, REQUEST_LEN, STATUS_OK,
};
use vm_memory::GuestAddress;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::control::{Command, LineRef, HELP};
use crate::log::Log;

/// Everything behind the lock.
pub struct State {
    /// The device.
    pub device: VirtioGpioDevice,
    /// The features the driver accepted (re-applied after a reset).
    pub acked_features: u64,
    /// Event buffers the device holds (an unmasked line each): head -> the guest address of
    /// the status byte.
    pub event_buffers: HashMap<u16, GuestAddress>,
    /// Completions the control channel produced, for the vring thread.
    pub pending: Vec<EventCompletion>,
    /// The event queue's descriptor table when its buffers were taken, to notice a new ring.
    pub event_ring: Option<u64>,
}

/// The chip, shared.
pub struct Gpio {
    /// The log.
    pub log: Arc<Log>,
    state: Mutex<State>,
    wake: EventNotifier,
    wake_consumer: EventConsumer,
}

impl Gpio {
    /// A chip with one line per name.
    pub fn new(names: &[String], log: Arc<Log>) -> Result<Self, String> {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let device = VirtioGpioDevice::new(&names).map_err(|e: ConfigError| e.to_string())?;
        let (wake_consumer, wake) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)
                .map_err(|e| format!("eventfd: {e}"))?;
        Ok(Self {
            log,
            state: Mutex::new(State {
                device,
                acked_features: 0,
                event_buffers: HashMap::new(),
                pending: Vec::new(),
                event_ring: None,
            }),
            wake,
            wake_consumer,
        })
    }

    /// The state, locked. A panic elsewhere does not poison the chip for good.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The event the vring thread waits on for control-channel completions.
    pub fn wake_consumer(&self) -> &EventConsumer {
        &self.wake_consumer
    }

    /// `3 (button)`, or `3` for an unnamed line.
    pub fn describe(&self, device: &VirtioGpioDevice, gpio: u16) -> String {
        match device.line(gpio).and_then(|l| l.name.as_deref()) {
            Some(name) => format!("{gpio} ({name})"),
            None => format!("{gpio}"),
        }
    }

    /// Logs one served request (`SET_VALUE gpio 0 value 1: ok 0`, or a malformed one with its
    /// sizes) and the level change it made (`line 0 (amp-enable) -> 1`): the same lines from
    /// every transport.
    pub fn log_request(
        &self,
        device: &VirtioGpioDevice,
        readable_len: usize,
        writable_len: usize,
        result: &RequestResult,
    ) {
        let outcome = match result.response.first() {
            Some(&STATUS_OK) if result.response.len() == 2 => {
                format!("ok {}", result.response[1])
            }
            Some(&STATUS_OK) => format!("ok ({} bytes)", result.response.len()),
            Some(_) => "error".into(),
            None => "no room for a status byte".into(),
        };
        match result.message {
            Some(m) if readable_len == REQUEST_LEN => self.log.line(format_args!("{m}: {outcome}")),
            _ => self.log.line(format_args!(
                "malformed request ({readable_len} bytes readable, {writable_len} writable): \
                 {outcome}"
            )),
        }
        if let Some((gpio, level)) = result.output_change {
            let line = self.describe(device, gpio);
            self.log
                .line(format_args!("line {line} -> {}", u8::from(level)));
        }
    }

    /// Logs an event buffer going back to the driver: `event line 1 (button): VALID (buffer 3)`.
    pub fn log_event(&self, device: &VirtioGpioDevice, completion: &EventCompletion) {
        let line = self.describe(device, completion.gpio);
        self.log.line(format_args!(
            "event line {line}: {} (buffer {})",
            status_name(completion.status),
            completion.head
        ));
    }

    /// Device reset (a new front-end, or the guest reset the device): lines back to their
    /// initial state, buffers forgotten.
    pub fn reset(&self, why: &str) {
        let mut state = self.lock();
        state.device.reset();
        state.event_buffers.clear();
        state.pending.clear();
        state.event_ring = None;
        state.acked_features = 0;
        self.log.line(format_args!("device reset ({why})"));
    }

    fn resolve(&self, device: &VirtioGpioDevice, line: &LineRef) -> Result<u16, String> {
        let count = device.num_lines();
        match line {
            LineRef::Number(n) => u16::try_from(*n)
                .ok()
                .filter(|&n| n < count)
                .ok_or_else(|| format!("no line {n} (lines 0 to {})", count - 1)),
            LineRef::Name(name) => (0..count)
                .find(|&i| device.line(i).and_then(|l| l.name.as_deref()) == Some(name))
                .ok_or_else(|| format!("no line named `{name}`")),
        }
    }

    /// Drives an input and queues the completion it produced, if any, for the vring thread.
    fn drive(&self, state: &mut State, gpio: u16, level: bool) {
        let line = self.describe(&state.device, gpio);
        self.log
            .line(format_args!("input {line} <- {}", u8::from(level)));
        let latched = |state: &State| state.device.line(gpio).is_some_and(|l| l.latched);
        let was_latched = latched(state);
        if let Some(completion) = state.device.set_input(gpio, level) {
            state.pending.push(completion);
            if let Err(e) = self.wake.notify() {
                self.log
                    .line(format_args!("cannot wake the vring thread: {e}"));
            }
        } else if latched(state) && !was_latched {
            self.log
                .line(format_args!("line {line}: edge latched (interrupt masked)"));
        }
    }

    /// Runs one control command and returns its reply line.
    pub fn execute(&self, command: &Command) -> Result<String, String> {
        let mut state = self.lock();
        match command {
            Command::Set(line, level) => {
                let gpio = self.resolve(&state.device, line)?;
                self.drive(&mut state, gpio, *level);
                Ok("ok".into())
            }
            Command::Pulse(line) => {
                let gpio = self.resolve(&state.device, line)?;
                if state.device.line(gpio).is_some_and(|l| l.input) {
                    self.drive(&mut state, gpio, false);
                }
                self.drive(&mut state, gpio, true);
                self.drive(&mut state, gpio, false);
                Ok("ok".into())
            }
            Command::Get(line) => {
                let gpio = self.resolve(&state.device, line)?;
                let level = state
                    .device
                    .output_level(gpio)
                    .unwrap_or_else(|| state.device.line(gpio).is_some_and(|l| l.input));
                Ok(format!("ok {}", u8::from(level)))
            }
            Command::Dump => {
                let lines: Vec<String> = (0..state.device.num_lines())
                    .filter_map(|gpio| Some((gpio, state.device.line(gpio)?)))
                    .map(|(gpio, l)| {
                        let direction = match l.direction {
                            Direction::None => "none",
                            Direction::Out => "out",
                            Direction::In => "in",
                        };
                        let mut text = format!(
                            "{gpio}:{}:{direction}:out={}:in={}",
                            l.name.as_deref().unwrap_or(""),
                            u8::from(l.output),
                            u8::from(l.input)
                        );
                        if l.irq_type != irq_type::NONE {
                            text.push_str(&format!(
                                ":irq={}:{}",
                                irq_name(l.irq_type),
                                if l.unmasked { "unmasked" } else { "masked" }
                            ));
                            if l.latched {
                                text.push_str(":latched");
                            }
                        }
                        text
                    })
                    .collect();
                Ok(format!("ok {}", lines.join(" ")))
            }
            Command::Help => Ok(HELP.into()),
        }
    }

    /// Parses and runs one control line: the reply, or `None` for a blank line.
    pub fn control_line(&self, line: &str) -> Option<String> {
        let reply = match crate::control::parse(line) {
            Ok(None) => return None,
            Ok(Some(command)) => self.execute(&command),
            Err(e) => Err(e),
        };
        Some(reply.unwrap_or_else(|e| format!("error: {e}")))
    }

    /// Serves control commands from `input`, replying on `output`, until end of input.
    pub fn serve_control(
        &self,
        input: impl io::BufRead,
        mut output: impl io::Write,
        source: &str,
    ) -> io::Result<()> {
        for line in input.lines() {
            let line = match line {
                Ok(line) => line,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    writeln!(output, "error: the command is not UTF-8")?;
                    output.flush()?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(reply) = self.control_line(&line) {
                self.log.line(format_args!(
                    "control ({source}): {} -> {reply}",
                    line.trim()
                ));
                writeln!(output, "{reply}")?;
                output.flush()?;
            }
        }
        Ok(())
    }
}

/// A trigger's name for the dump and the log.
pub fn irq_name(trigger: u8) -> &'static str {
    match trigger {
        irq_type::NONE => "none",
        irq_type::EDGE_RISING => "rising",
        irq_type::EDGE_FALLING => "falling",
        irq_type::EDGE_BOTH => "both",
        irq_type::LEVEL_HIGH => "high",
        irq_type::LEVEL_LOW => "low",
        _ => "?",
    }
}

/// `VALID` or `INVALID`.
pub fn status_name(status: u8) -> &'static str {
    if status == IRQ_STATUS_VALID {
        "VALID"
    } else {
        "INVALID"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lull_virtio_gpio::{Message, MSG_IRQ_TYPE, MSG_SET_DIRECTION, VIRTIO_GPIO_F_IRQ};

    fn chip() -> Gpio {
        let names: Vec<String> = ["amp-enable", "button", ""].map(String::from).to_vec();
        Gpio::new(&names, Arc::new(Log::new(Box::new(io::sink())))).unwrap()
    }

    #[test]
    fn control_lines() {
        let gpio = chip();
        assert_eq!(gpio.control_line("get button").as_deref(), Some("ok 0"));
        assert_eq!(gpio.control_line("set button 1").as_deref(), Some("ok"));
        assert_eq!(gpio.control_line("get 1").as_deref(), Some("ok 1"));
        assert_eq!(gpio.control_line("pulse 2").as_deref(), Some("ok"));
        assert_eq!(gpio.control_line("get 2").as_deref(), Some("ok 0"));
        assert_eq!(gpio.control_line("").as_deref(), None);
        assert_eq!(
            gpio.control_line("dump").as_deref(),
            Some("ok 0:amp-enable:none:out=0:in=0 1:button:none:out=0:in=1 2::none:out=0:in=0")
        );
        assert_eq!(gpio.control_line("help").as_deref(), Some(HELP));
    }

    #[test]
    fn bad_lines_are_errors() {
        let gpio = chip();
        for (line, expected) in [
            ("set 3 1", "error: no line 3 (lines 0 to 2)"),
            ("set 4294967295 1", "error: no line 4294967295"),
            ("get led7", "error: no line named `led7`"),
            ("pulse", "error: usage: pulse LINE"),
            ("bogus", "error: unknown command"),
        ] {
            let reply = gpio.control_line(line).unwrap();
            assert!(reply.starts_with(expected), "{line}: {reply}");
        }
    }

    #[test]
    fn an_edge_on_an_unmasked_line_is_queued_for_the_vring_thread() {
        let gpio = chip();
        {
            let mut state = gpio.lock();
            let features = state.device.device_features();
            assert_ne!(features & VIRTIO_GPIO_F_IRQ, 0);
            state.device.ack_features(features);
            for (kind, value) in [(MSG_SET_DIRECTION, 2), (MSG_IRQ_TYPE, 3)] {
                let message = Message {
                    kind,
                    gpio: 1,
                    value,
                }
                .encode();
                state.device.handle_request(&message, 2);
            }
            assert_eq!(state.device.queue_event_buffer(9, &[1, 0]), None);
        }
        assert_eq!(gpio.control_line("pulse button").as_deref(), Some("ok"));
        gpio.wake_consumer().consume().unwrap();
        let state = gpio.lock();
        // The rising edge completes buffer 9; the falling one is latched (masked again).
        assert_eq!(
            state.pending,
            [EventCompletion {
                head: 9,
                gpio: 1,
                status: IRQ_STATUS_VALID
            }]
        );
        assert!(state.device.line(1).unwrap().latched);
    }

    #[test]
    fn control_stream_replies_line_by_line() {
        let gpio = chip();
        let input = b"set 0 1\n\nget amp-enable\n\xff\nnope\n";
        let mut output = Vec::new();
        gpio.serve_control(&input[..], &mut output, "test").unwrap();
        assert_eq!(
            String::from_utf8(output).unwrap(),
            "ok\nok 1\nerror: the command is not UTF-8\nerror: unknown command `nope` \
             (commands: set, pulse, get, dump, help)\n"
        );
    }
}

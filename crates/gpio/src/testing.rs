//! A fake chip for tests (here, in the kernel's ktests, and in documentation examples): lines in
//! memory, inputs driven by the test, interrupts that report through the registry's
//! [`EventSink`] as a real controller's handler would, and a log of every call.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use crate::chip::{ChipError, Direction, GpioChip, IrqType};
use crate::event::RawEvent;
use crate::registry::EventSink;

struct FakeState {
    levels: Vec<bool>,
    directions: Vec<Direction>,
    triggers: Vec<IrqType>,
    irq_enabled: Vec<bool>,
    sink: Option<EventSink>,
    log: Vec<String>,
    fail_io: bool,
    clock_ns: u64,
}

/// An in-memory GPIO chip. Clones share the same lines, so a test keeps one clone and
/// registers another.
#[derive(Clone)]
pub struct FakeChip {
    label: String,
    names: Vec<Option<String>>,
    irq: bool,
    can_sleep: bool,
    parent: Option<String>,
    state: Arc<lull_spinlock::SpinLock<FakeState>>,
}

impl FakeChip {
    /// A chip with one line per name (an empty name leaves the line unnamed), all inputs at low
    /// level, with interrupt support.
    pub fn new(label: &str, names: &[&str]) -> Self {
        let names: Vec<Option<String>> = names
            .iter()
            .map(|n| (!n.is_empty()).then(|| (*n).to_owned()))
            .collect();
        let lines = names.len();
        Self {
            label: label.to_owned(),
            names,
            irq: true,
            can_sleep: false,
            parent: None,
            state: Arc::new(lull_spinlock::SpinLock::new(FakeState {
                levels: vec![false; lines],
                directions: vec![Direction::Input; lines],
                triggers: vec![IrqType::None; lines],
                irq_enabled: vec![false; lines],
                sink: None,
                log: Vec::new(),
                fail_io: false,
                clock_ns: 0,
            })),
        }
    }

    /// A chip of `lines` unnamed lines.
    pub fn unnamed(label: &str, lines: usize) -> Self {
        let names = vec![""; lines];
        Self::new(label, &names)
    }

    /// The same chip without interrupt support.
    #[must_use]
    pub fn without_irq(mut self) -> Self {
        self.irq = false;
        self
    }

    /// The same chip, sleeping (as a virtio or I2C chip) and belonging to `parent`.
    #[must_use]
    pub fn sleeping_child_of(mut self, parent: &str) -> Self {
        self.can_sleep = true;
        self.parent = Some(parent.to_owned());
        self
    }

    /// Connects the chip's "interrupt handler" to the registry (after `add_chip`).
    pub fn attach(&self, sink: EventSink) {
        self.state.lock().sink = Some(sink);
    }

    /// The level on the wire of line `offset`.
    pub fn level(&self, offset: u32) -> bool {
        self.state
            .lock()
            .levels
            .get(offset as usize)
            .copied()
            .unwrap_or(false)
    }

    /// The chip's view of line `offset`'s direction.
    pub fn direction(&self, offset: u32) -> Direction {
        self.state
            .lock()
            .directions
            .get(offset as usize)
            .copied()
            .unwrap_or(Direction::Input)
    }

    /// The trigger programmed on line `offset` and whether its interrupt is unmasked.
    pub fn irq_state(&self, offset: u32) -> (IrqType, bool) {
        let state = self.state.lock();
        (
            state
                .triggers
                .get(offset as usize)
                .copied()
                .unwrap_or(IrqType::None),
            state
                .irq_enabled
                .get(offset as usize)
                .copied()
                .unwrap_or(false),
        )
    }

    /// Makes every later call fail with `ChipError::Io`.
    pub fn fail_io(&self, fail: bool) {
        self.state.lock().fail_io = fail;
    }

    /// Takes the call log.
    pub fn take_log(&self) -> Vec<String> {
        core::mem::take(&mut self.state.lock().log)
    }

    /// Drives input line `offset` to `level` from outside, at `timestamp_ns`, raising the
    /// interrupt its trigger asks for. A level interrupt masks itself after reporting, as
    /// virtio-gpio's does until its buffer is re-queued.
    pub fn drive_input(&self, offset: u32, level: bool, timestamp_ns: u64) {
        let report = {
            let mut state = self.state.lock();
            let index = offset as usize;
            if index >= state.levels.len() {
                return;
            }
            let old = state.levels[index];
            state.levels[index] = level;
            state.clock_ns = timestamp_ns;
            Self::pending_event(&mut state, index, Some(old))
        };
        self.deliver(offset, report, timestamp_ns);
    }

    fn pending_event(state: &mut FakeState, index: usize, old: Option<bool>) -> Option<RawEvent> {
        if !state.irq_enabled[index] {
            return None;
        }
        let level = state.levels[index];
        match (state.triggers[index], old) {
            (IrqType::EdgeRising | IrqType::EdgeBoth, Some(false)) if level => {
                Some(RawEvent::Rising)
            }
            (IrqType::EdgeFalling | IrqType::EdgeBoth, Some(true)) if !level => {
                Some(RawEvent::Falling)
            }
            (IrqType::LevelHigh, _) if level => {
                state.irq_enabled[index] = false;
                Some(RawEvent::Level)
            }
            (IrqType::LevelLow, _) if !level => {
                state.irq_enabled[index] = false;
                Some(RawEvent::Level)
            }
            _ => None,
        }
    }

    fn deliver(&self, offset: u32, event: Option<RawEvent>, timestamp_ns: u64) {
        let sink = self.state.lock().sink.clone();
        if let (Some(event), Some(sink)) = (event, sink) {
            sink.report(offset, event, timestamp_ns);
        }
    }

    fn op<R>(
        &self,
        offset: u32,
        entry: impl FnOnce() -> String,
        body: impl FnOnce(&mut FakeState, usize) -> R,
    ) -> Result<R, ChipError> {
        let mut state = self.state.lock();
        state.log.push(entry());
        if state.fail_io {
            return Err(ChipError::Io);
        }
        let index = offset as usize;
        if index >= state.levels.len() {
            return Err(ChipError::InvalidOffset(offset));
        }
        Ok(body(&mut state, index))
    }
}

impl GpioChip for FakeChip {
    fn label(&self) -> &str {
        &self.label
    }

    fn num_lines(&self) -> u32 {
        self.names.len() as u32
    }

    fn parent(&self) -> Option<&str> {
        self.parent.as_deref()
    }

    fn can_sleep(&self) -> bool {
        self.can_sleep
    }

    fn line_name(&self, offset: u32) -> Option<&str> {
        self.names.get(offset as usize).and_then(|n| n.as_deref())
    }

    fn get(&self, offset: u32) -> Result<bool, ChipError> {
        self.op(offset, || format!("get {offset}"), |s, i| s.levels[i])
    }

    fn set(&self, offset: u32, value: bool) -> Result<(), ChipError> {
        self.op(
            offset,
            || format!("set {offset} {}", u8::from(value)),
            |s, i| {
                if s.directions[i] == Direction::Output {
                    s.levels[i] = value;
                }
            },
        )
    }

    fn get_direction(&self, offset: u32) -> Result<Direction, ChipError> {
        self.op(
            offset,
            || format!("get_direction {offset}"),
            |s, i| s.directions[i],
        )
    }

    fn direction_input(&self, offset: u32) -> Result<(), ChipError> {
        self.op(
            offset,
            || format!("direction_input {offset}"),
            |s, i| s.directions[i] = Direction::Input,
        )
    }

    fn direction_output(&self, offset: u32, value: bool) -> Result<(), ChipError> {
        self.op(
            offset,
            || format!("direction_output {offset} {}", u8::from(value)),
            |s, i| {
                s.directions[i] = Direction::Output;
                s.levels[i] = value;
            },
        )
    }

    fn get_multiple(&self, mask: &[u64], bits: &mut [u64]) -> Result<(), ChipError> {
        let mut state = self.state.lock();
        state.log.push(format!(
            "get_multiple {:#x}",
            mask.first().copied().unwrap_or(0)
        ));
        if state.fail_io {
            return Err(ChipError::Io);
        }
        for offset in crate::chip::bitmap_iter(mask) {
            let level = state.levels.get(offset as usize).copied().unwrap_or(false);
            crate::chip::bitmap_assign(bits, offset, level);
        }
        Ok(())
    }

    fn set_multiple(&self, mask: &[u64], bits: &[u64]) -> Result<(), ChipError> {
        let mut state = self.state.lock();
        state.log.push(format!(
            "set_multiple {:#x} {:#x}",
            mask.first().copied().unwrap_or(0),
            bits.first().copied().unwrap_or(0)
        ));
        if state.fail_io {
            return Err(ChipError::Io);
        }
        for offset in crate::chip::bitmap_iter(mask) {
            let index = offset as usize;
            if state.directions.get(index) == Some(&Direction::Output) {
                state.levels[index] = crate::chip::bitmap_test(bits, offset);
            }
        }
        Ok(())
    }

    fn irq_capable(&self) -> bool {
        self.irq
    }

    fn irq_set_type(&self, offset: u32, trigger: IrqType) -> Result<(), ChipError> {
        if !self.irq {
            return Err(ChipError::NotSupported);
        }
        self.op(
            offset,
            || format!("irq_set_type {offset} {trigger:?}"),
            |s, i| s.triggers[i] = trigger,
        )
    }

    fn irq_enable(&self, offset: u32) -> Result<(), ChipError> {
        if !self.irq {
            return Err(ChipError::NotSupported);
        }
        let (event, now) = self.op(
            offset,
            || format!("irq_enable {offset}"),
            |s, i| {
                s.irq_enabled[i] = true;
                // A level that is already active fires at once when unmasked.
                let event = if s.triggers[i].is_level() {
                    Self::pending_event(s, i, None)
                } else {
                    None
                };
                (event, s.clock_ns)
            },
        )?;
        self.deliver(offset, event, now);
        Ok(())
    }

    fn irq_disable(&self, offset: u32) -> Result<(), ChipError> {
        if !self.irq {
            return Err(ChipError::NotSupported);
        }
        self.op(
            offset,
            || format!("irq_disable {offset}"),
            |s, i| s.irq_enabled[i] = false,
        )
    }
}

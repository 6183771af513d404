//! Descriptors: the consumer's handle on a requested line (Linux's `struct gpio_desc` API).
//!
//! A descriptor is the only way to touch a line, it is not `Clone`, and dropping it releases the
//! line, so "one owner per line" is a property of ownership. Values come in two flavours, as in
//! Linux: *logical* (`get_value`/`set_value`: `true` means active, inverted on an active-low
//! line) and *raw* (`get_raw_value`/`set_raw_value`: the level on the wire).

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::task::Waker;

use lull_devres::{ManagedResource, ResourceInfo, ResourceKind};

use crate::chip::{bitmap_assign, bitmap_test, bitmap_words, Direction, IrqType};
use crate::error::GpioError;
use crate::event::{EventQueue, LineEvent, DEFAULT_EVENT_QUEUE_LEN};
use crate::registry::ChipShared;

/// The direction a request puts the line in (Linux's `enum gpiod_flags`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum InitialDirection {
    /// Leave the direction as it is.
    #[default]
    AsIs,
    /// Make it an input.
    Input,
    /// Make it an output at this *logical* value (`GPIOD_OUT_LOW`/`GPIOD_OUT_HIGH`).
    Output(bool),
}

/// How a line is requested: direction and polarity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LineConfig {
    /// What to do to the direction.
    pub direction: InitialDirection,
    /// Whether the line is active when low (the inversion the descriptor applies).
    pub active_low: bool,
}

impl LineConfig {
    /// Leave the line as it is.
    pub fn as_is() -> Self {
        Self::default()
    }

    /// An input.
    pub fn input() -> Self {
        Self {
            direction: InitialDirection::Input,
            active_low: false,
        }
    }

    /// An output at logical `value`.
    pub fn output(value: bool) -> Self {
        Self {
            direction: InitialDirection::Output(value),
            active_low: false,
        }
    }

    /// The same, active-low.
    #[must_use]
    pub fn active_low(mut self) -> Self {
        self.active_low = true;
        self
    }
}

/// A requested line. Dropping it releases the line (and its events request).
pub struct GpioDesc {
    chip: Arc<ChipShared>,
    offset: u32,
}

impl GpioDesc {
    pub(crate) fn new(chip: Arc<ChipShared>, offset: u32) -> Self {
        Self { chip, offset }
    }

    pub(crate) fn apply_config(&self, config: LineConfig) -> Result<(), GpioError> {
        match config.direction {
            InitialDirection::AsIs => Ok(()),
            InitialDirection::Input => self.direction_input(),
            InitialDirection::Output(value) => self.direction_output(value),
        }
    }

    fn with_line<R>(&self, read: impl FnOnce(&crate::registry::LineState) -> R) -> Option<R> {
        let state = self.chip.state.lock();
        state.lines.get(self.offset as usize).map(read)
    }

    fn with_line_mut<R>(
        &self,
        update: impl FnOnce(&mut crate::registry::LineState) -> R,
    ) -> Option<R> {
        let mut state = self.chip.state.lock();
        state.lines.get_mut(self.offset as usize).map(update)
    }

    /// The line's offset on its chip.
    pub fn offset(&self) -> u32 {
        self.offset
    }

    /// The chip's name, `gpiochipN`.
    pub fn chip_name(&self) -> String {
        self.chip.name()
    }

    /// The line's global number (`desc_to_gpio`).
    pub fn global_number(&self) -> u32 {
        self.chip.base + self.offset
    }

    /// The line's name, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.chip
            .names
            .get(self.offset as usize)
            .and_then(|name| name.as_deref())
    }

    /// The consumer label this descriptor was requested with.
    pub fn consumer(&self) -> String {
        self.with_line(|line| line.consumer.clone())
            .flatten()
            .unwrap_or_default()
    }

    /// Whether the chip's operations may sleep (`gpiod_cansleep`).
    pub fn can_sleep(&self) -> bool {
        self.chip.can_sleep
    }

    /// Whether the chip behind this descriptor has been removed.
    pub fn is_chip_gone(&self) -> bool {
        self.chip.is_gone()
    }

    /// Whether logical values are inverted.
    pub fn is_active_low(&self) -> bool {
        self.with_line(|line| line.active_low).unwrap_or(false)
    }

    /// Changes the polarity (`gpiod_toggle_active_low` with an explicit value). An events
    /// request keeps its logical trigger: it is re-programmed on the chip inverted.
    pub fn set_active_low(&self, active_low: bool) -> Result<(), GpioError> {
        let (changed, trigger) = self
            .with_line_mut(|line| {
                let changed = line.active_low != active_low;
                line.active_low = active_low;
                (changed, line.trigger)
            })
            .unwrap_or((false, IrqType::None));
        if changed && trigger != IrqType::None {
            let raw = if active_low {
                trigger.inverted()
            } else {
                trigger
            };
            self.chip
                .with_chip(|chip| chip.irq_set_type(self.offset, raw))?;
        }
        Ok(())
    }

    /// The raw level of the line.
    pub fn get_raw_value(&self) -> Result<bool, GpioError> {
        self.chip.with_chip(|chip| chip.get(self.offset))
    }

    /// The logical value: `true` when active.
    pub fn get_value(&self) -> Result<bool, GpioError> {
        Ok(self.get_raw_value()? != self.is_active_low())
    }

    fn check_output(&self) -> Result<(), GpioError> {
        if self.chip.is_gone() {
            return Err(GpioError::ChipGone);
        }
        match self.with_line(|line| line.direction).flatten() {
            Some(Direction::Output) => Ok(()),
            _ => Err(GpioError::NotOutput {
                offset: self.offset,
            }),
        }
    }

    /// Drives the raw level `value`. The line must be an output.
    pub fn set_raw_value(&self, value: bool) -> Result<(), GpioError> {
        self.check_output()?;
        self.chip.with_chip(|chip| chip.set(self.offset, value))
    }

    /// Drives the logical value `value` (`true`: active). The line must be an output.
    pub fn set_value(&self, value: bool) -> Result<(), GpioError> {
        self.set_raw_value(value != self.is_active_low())
    }

    /// Makes the line an input.
    pub fn direction_input(&self) -> Result<(), GpioError> {
        self.chip
            .with_chip(|chip| chip.direction_input(self.offset))?;
        self.with_line_mut(|line| line.direction = Some(Direction::Input));
        Ok(())
    }

    /// Makes the line an output at logical `value`. Refused while the line is requested for
    /// events (an interrupt line is an input).
    pub fn direction_output(&self, value: bool) -> Result<(), GpioError> {
        self.direction_output_raw(value != self.is_active_low())
    }

    /// Makes the line an output at raw `value`.
    pub fn direction_output_raw(&self, value: bool) -> Result<(), GpioError> {
        if self
            .with_line(|line| line.events.is_some())
            .unwrap_or(false)
        {
            return Err(GpioError::UsedAsIrq {
                offset: self.offset,
            });
        }
        self.chip
            .with_chip(|chip| chip.direction_output(self.offset, value))?;
        self.with_line_mut(|line| line.direction = Some(Direction::Output));
        Ok(())
    }

    /// Reads the direction from the chip (and remembers it).
    pub fn get_direction(&self) -> Result<Direction, GpioError> {
        let direction = self
            .chip
            .with_chip(|chip| chip.get_direction(self.offset))?;
        self.with_line_mut(|line| line.direction = Some(direction));
        Ok(direction)
    }

    /// Requests interrupts on the line with a *logical* trigger (on an active-low line a
    /// requested rising edge is the falling edge on the wire), queueing up to `queue_len`
    /// events (oldest dropped beyond). Makes the line an input first. Replaces an earlier
    /// events request on this descriptor.
    pub fn request_events(&self, trigger: IrqType, queue_len: usize) -> Result<(), GpioError> {
        if !self.chip.irq_capable {
            return Err(GpioError::NoInterrupts);
        }
        if trigger == IrqType::None {
            self.disable_events();
            return Ok(());
        }
        self.direction_input()?;
        let raw = if self.is_active_low() {
            trigger.inverted()
        } else {
            trigger
        };
        // Install the queue before unmasking so no early event is lost.
        self.with_line_mut(|line| {
            line.trigger = trigger;
            line.events = Some(EventQueue::new(queue_len));
        });
        let programmed = self.chip.with_chip(|chip| {
            chip.irq_set_type(self.offset, raw)?;
            chip.irq_enable(self.offset)
        });
        if programmed.is_err() {
            self.with_line_mut(|line| {
                line.trigger = IrqType::None;
                line.events = None;
            });
        }
        programmed
    }

    /// Requests interrupts (edge or level) with Linux's default queue length
    /// ([`DEFAULT_EVENT_QUEUE_LEN`]); see [`request_events`](Self::request_events).
    pub fn request_irq(&self, trigger: IrqType) -> Result<(), GpioError> {
        self.request_events(trigger, DEFAULT_EVENT_QUEUE_LEN)
    }

    /// Stops events: masks the interrupt and discards queued events.
    pub fn disable_events(&self) {
        let had = self
            .with_line_mut(|line| {
                line.trigger = IrqType::None;
                line.events.take().is_some()
            })
            .unwrap_or(false);
        if had {
            let _ = self.chip.with_chip(|chip| {
                chip.irq_disable(self.offset)?;
                chip.irq_set_type(self.offset, IrqType::None)
            });
        }
    }

    /// The oldest queued event, if any. Never waits: a consumer that wants to sleep registers a
    /// waker with [`set_waker`](Self::set_waker) and checks again when woken (the kernel's wait
    /// queue does exactly that). After the chip is removed, queued events can still be read,
    /// then `ChipGone` is returned.
    pub fn read_event(&self) -> Result<Option<LineEvent>, GpioError> {
        let event = self
            .with_line_mut(|line| line.events.as_mut().map(|queue| queue.events.pop_front()))
            .flatten()
            .ok_or(GpioError::EventsNotRequested)?;
        match event {
            None if self.chip.is_gone() => Err(GpioError::ChipGone),
            event => Ok(event),
        }
    }

    /// Whether an event is waiting (`poll` would report readable).
    pub fn has_event(&self) -> bool {
        self.with_line(|line| line.events.as_ref().is_some_and(|q| !q.events.is_empty()))
            .unwrap_or(false)
    }

    /// Events dropped because the queue was full.
    pub fn dropped_events(&self) -> u64 {
        self.with_line(|line| line.events.as_ref().map_or(0, |q| q.dropped))
            .unwrap_or(0)
    }

    /// Registers `waker` to be woken by the next queued event (one-shot, as `Future::poll`).
    /// If an event is already waiting the waker is woken at once, so a check-then-sleep
    /// sequence cannot miss it.
    pub fn set_waker(&self, waker: &Waker) -> Result<(), GpioError> {
        let pending = self
            .with_line_mut(|line| {
                line.events.as_mut().map(|queue| {
                    if queue.events.is_empty() {
                        queue.waker = Some(waker.clone());
                        false
                    } else {
                        true
                    }
                })
            })
            .flatten()
            .ok_or(GpioError::EventsNotRequested)?;
        if pending {
            waker.wake_by_ref();
        }
        Ok(())
    }

    /// Acknowledges a level event: unmasks the line so the chip reports the level again if it
    /// is still active (virtio-gpio re-queues its event buffer). No-op for edge requests.
    pub fn ack_level(&self) -> Result<(), GpioError> {
        let unmask = self
            .with_line_mut(|line| {
                line.events.as_mut().map(|queue| {
                    let was = queue.level_masked;
                    queue.level_masked = false;
                    was
                })
            })
            .flatten()
            .ok_or(GpioError::EventsNotRequested)?;
        if unmask {
            self.chip.with_chip(|chip| chip.irq_enable(self.offset))?;
        }
        Ok(())
    }
}

impl Drop for GpioDesc {
    fn drop(&mut self) {
        self.chip.release(self.offset);
    }
}

impl fmt::Debug for GpioDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpioDesc")
            .field("chip", &self.chip.name())
            .field("offset", &self.offset)
            .field("consumer", &self.consumer())
            .finish()
    }
}

/// `devm_gpiod_get`: the descriptor sits on the device's devres list and is released with it.
impl ManagedResource for GpioDesc {
    fn describe(&self) -> ResourceInfo {
        ResourceInfo::new(
            ResourceKind::Other("gpio"),
            alloc::format!(
                "{} line {} (gpio-{}) for {:?}",
                self.chip.name(),
                self.offset,
                self.global_number(),
                self.consumer()
            ),
        )
    }

    fn release(self: alloc::boxed::Box<Self>) {
        drop(self);
    }
}

/// Several requested lines of one chip, read and written in one chip operation each
/// (`gpiod_get_array_value`/`gpiod_set_array_value`). Values are in the order the lines were
/// requested.
pub struct GpioDescArray {
    descs: Vec<GpioDesc>,
}

impl GpioDescArray {
    /// Groups descriptors of one chip. Fails with `InvalidBulk` for none or several chips.
    pub fn new(descs: Vec<GpioDesc>) -> Result<Self, GpioError> {
        let first = descs.first().ok_or(GpioError::InvalidBulk)?;
        if descs.iter().any(|d| !Arc::ptr_eq(&d.chip, &first.chip)) {
            return Err(GpioError::InvalidBulk);
        }
        Ok(Self { descs })
    }

    /// The descriptors, in request order.
    pub fn descs(&self) -> &[GpioDesc] {
        &self.descs
    }

    /// Gives back the descriptors.
    pub fn into_descs(self) -> Vec<GpioDesc> {
        self.descs
    }

    fn chip(&self) -> &Arc<ChipShared> {
        // `new` refuses an empty array.
        &self.descs[0].chip
    }

    fn mask(&self) -> Vec<u64> {
        let mut mask = vec![0; bitmap_words(self.chip().ngpio)];
        for desc in &self.descs {
            bitmap_assign(&mut mask, desc.offset, true);
        }
        mask
    }

    /// Raw levels, in one chip operation.
    pub fn get_raw_values(&self) -> Result<Vec<bool>, GpioError> {
        let mask = self.mask();
        let mut bits = vec![0; mask.len()];
        self.chip()
            .with_chip(|chip| chip.get_multiple(&mask, &mut bits))?;
        Ok(self
            .descs
            .iter()
            .map(|d| bitmap_test(&bits, d.offset))
            .collect())
    }

    /// Logical values, in one chip operation.
    pub fn get_values(&self) -> Result<Vec<bool>, GpioError> {
        Ok(self
            .get_raw_values()?
            .into_iter()
            .zip(&self.descs)
            .map(|(raw, d)| raw != d.is_active_low())
            .collect())
    }

    fn set(&self, values: &[bool], logical: bool) -> Result<(), GpioError> {
        if values.len() != self.descs.len() {
            return Err(GpioError::InvalidBulk);
        }
        for desc in &self.descs {
            desc.check_output()?;
        }
        let mask = self.mask();
        let mut bits = vec![0; mask.len()];
        for (desc, &value) in self.descs.iter().zip(values) {
            let raw = if logical {
                value != desc.is_active_low()
            } else {
                value
            };
            bitmap_assign(&mut bits, desc.offset, raw);
        }
        self.chip()
            .with_chip(|chip| chip.set_multiple(&mask, &bits))
    }

    /// Drives logical values (one per line), in one chip operation.
    pub fn set_values(&self, values: &[bool]) -> Result<(), GpioError> {
        self.set(values, true)
    }

    /// Drives raw levels (one per line), in one chip operation.
    pub fn set_raw_values(&self, values: &[bool]) -> Result<(), GpioError> {
        self.set(values, false)
    }
}

impl fmt::Debug for GpioDescArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.descs).finish()
    }
}

/// `devm_gpiod_get_array`.
impl ManagedResource for GpioDescArray {
    fn describe(&self) -> ResourceInfo {
        let offsets: Vec<String> = self
            .descs
            .iter()
            .map(|d| alloc::format!("{}", d.offset))
            .collect();
        ResourceInfo::new(
            ResourceKind::Other("gpio"),
            alloc::format!(
                "{} lines {} for {:?}",
                self.chip().name(),
                offsets.join(","),
                self.descs[0].consumer()
            ),
        )
    }

    fn release(self: alloc::boxed::Box<Self>) {
        drop(self);
    }
}

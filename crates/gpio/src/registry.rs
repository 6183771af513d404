//! The registry of chips: numbering (`gpiochipN`, global bases), lookup by name, requests, and
//! removal while lines are still requested.
//!
//! Each registered chip gets a [`ChipShared`] (Linux's `struct gpio_device`): it outlives the
//! driver's chip, so descriptors that are still held when the chip goes away keep a valid object
//! to ask and are told [`GpioError::ChipGone`]. The driver's chip sits in a
//! [`Revocable`](lull_devres::Revocable): removal revokes it, waiting for calls in flight.
//!
//! Locking: the registry's list and each chip's line table are spin locks held only to read or
//! update bookkeeping. Chip methods (which may sleep) are called with neither held, under the
//! revocable's read guard only.

use alloc::borrow::ToOwned;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use lull_devres::Revocable;

use crate::chip::{Direction, GpioChip, IrqType};
use crate::desc::{GpioDesc, GpioDescArray, LineConfig};
use crate::error::GpioError;
use crate::event::{EventKind, EventQueue, LineEvent, RawEvent};

/// Where dynamically numbered chips start, as Linux's `GPIO_DYNAMIC_BASE`.
pub const GPIO_DYNAMIC_BASE: u32 = 512;

/// Bookkeeping of one line of a registered chip.
#[derive(Debug)]
pub(crate) struct LineState {
    /// The consumer label of the holder, while requested.
    pub(crate) consumer: Option<String>,
    pub(crate) active_low: bool,
    /// The direction last set or read; `None` when the chip could not say.
    pub(crate) direction: Option<Direction>,
    /// The logical trigger of an events request ([`IrqType::None`] when there is none).
    pub(crate) trigger: IrqType,
    pub(crate) events: Option<EventQueue>,
}

impl LineState {
    fn new(direction: Option<Direction>) -> Self {
        Self {
            consumer: None,
            active_low: false,
            direction,
            trigger: IrqType::None,
            events: None,
        }
    }
}

pub(crate) struct ChipState {
    pub(crate) lines: Vec<LineState>,
    pub(crate) seqno: u64,
}

/// A registered chip (Linux's `gpio_device`): the numbers gpiolib gave it, what it said about
/// itself at registration, its lines' bookkeeping, and the driver's chip until removal.
pub(crate) struct ChipShared {
    pub(crate) number: u32,
    pub(crate) base: u32,
    pub(crate) ngpio: u32,
    pub(crate) label: String,
    pub(crate) parent: Option<String>,
    pub(crate) can_sleep: bool,
    pub(crate) irq_capable: bool,
    pub(crate) names: Vec<Option<String>>,
    pub(crate) chip: Revocable<Box<dyn GpioChip>>,
    pub(crate) state: lull_spinlock::SpinLock<ChipState>,
}

impl ChipShared {
    /// `gpiochipN`.
    pub(crate) fn name(&self) -> String {
        format!("gpiochip{}", self.number)
    }

    /// Calls the driver's chip, or answers `ChipGone` once it has been removed.
    pub(crate) fn with_chip<R>(
        &self,
        call: impl FnOnce(&dyn GpioChip) -> Result<R, crate::chip::ChipError>,
    ) -> Result<R, GpioError> {
        let guard = self.chip.try_access().ok_or(GpioError::ChipGone)?;
        call(&**guard).map_err(GpioError::from)
    }

    pub(crate) fn is_gone(&self) -> bool {
        self.chip.is_revoked()
    }

    fn check_offset(&self, offset: u32) -> Result<(), GpioError> {
        if offset < self.ngpio {
            Ok(())
        } else {
            Err(GpioError::OffsetOutOfRange {
                chip: self.name(),
                offset,
                lines: self.ngpio,
            })
        }
    }

    /// Claims `offsets` for `consumer`, all or none, then configures them.
    pub(crate) fn request(
        self: &Arc<Self>,
        offsets: &[u32],
        consumer: &str,
        config: LineConfig,
    ) -> Result<Vec<GpioDesc>, GpioError> {
        if self.is_gone() {
            return Err(GpioError::ChipGone);
        }
        for (index, &offset) in offsets.iter().enumerate() {
            self.check_offset(offset)?;
            if offsets[..index].contains(&offset) {
                return Err(GpioError::InvalidBulk);
            }
        }
        {
            let mut state = self.state.lock();
            for &offset in offsets {
                if let Some(holder) = state
                    .lines
                    .get(offset as usize)
                    .and_then(|line| line.consumer.as_ref())
                {
                    return Err(GpioError::Busy {
                        chip: self.name(),
                        offset,
                        holder: holder.clone(),
                    });
                }
            }
            for &offset in offsets {
                if let Some(line) = state.lines.get_mut(offset as usize) {
                    line.consumer = Some(consumer.to_owned());
                    line.active_low = config.active_low;
                }
            }
        }
        // From here each descriptor releases its line when dropped, also on the error path.
        let descs: Vec<GpioDesc> = offsets
            .iter()
            .map(|&offset| GpioDesc::new(self.clone(), offset))
            .collect();
        for desc in &descs {
            desc.apply_config(config)?;
        }
        Ok(descs)
    }

    /// Gives line `offset` back: clears its owner and tears down its events request.
    pub(crate) fn release(&self, offset: u32) {
        let had_events = {
            let mut state = self.state.lock();
            match state.lines.get_mut(offset as usize) {
                Some(line) => {
                    line.consumer = None;
                    line.active_low = false;
                    line.trigger = IrqType::None;
                    line.events.take().is_some()
                }
                None => false,
            }
        };
        if had_events {
            // Best effort: a chip that is gone or fails here has nothing left to leak.
            let _ = self.with_chip(|chip| {
                chip.irq_disable(offset)?;
                chip.irq_set_type(offset, IrqType::None)
            });
        }
    }

    /// Queues a chip-reported event on line `offset` if the line's request wants it.
    pub(crate) fn report(&self, offset: u32, raw: RawEvent, timestamp_ns: u64) -> bool {
        if self.is_gone() {
            return false;
        }
        let waker = {
            let mut guard = self.state.lock();
            let state = &mut *guard;
            let Some(line) = state.lines.get_mut(offset as usize) else {
                return false;
            };
            let trigger = line.trigger;
            let active_low = line.active_low;
            let Some(queue) = line.events.as_mut() else {
                return false;
            };
            let kind = match raw {
                RawEvent::Level if trigger.is_level() => {
                    if queue.level_masked {
                        // The chip should have kept the line masked; coalesce.
                        return false;
                    }
                    queue.level_masked = true;
                    EventKind::LevelActive
                }
                RawEvent::Rising | RawEvent::Falling if !trigger.is_level() => {
                    let logical_rising = (raw == RawEvent::Rising) != active_low;
                    let wanted = match trigger {
                        IrqType::EdgeBoth => true,
                        IrqType::EdgeRising => logical_rising,
                        IrqType::EdgeFalling => !logical_rising,
                        _ => false,
                    };
                    if !wanted {
                        return false;
                    }
                    if logical_rising {
                        EventKind::RisingEdge
                    } else {
                        EventKind::FallingEdge
                    }
                }
                _ => return false,
            };
            state.seqno += 1;
            queue.push(LineEvent {
                offset,
                kind,
                timestamp_ns,
                seqno: state.seqno,
                line_seqno: 0,
            })
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }
}

/// What a chip driver keeps after registration: its number and base, and the sink its interrupt
/// handler reports line events into.
#[derive(Clone)]
pub struct ChipHandle {
    shared: Arc<ChipShared>,
}

impl ChipHandle {
    /// The chip's number (`N` in `gpiochipN`).
    pub fn number(&self) -> u32 {
        self.shared.number
    }

    /// `gpiochipN`.
    pub fn name(&self) -> String {
        self.shared.name()
    }

    /// The global number of line 0.
    pub fn base(&self) -> u32 {
        self.shared.base
    }

    /// Where the interrupt handler reports events.
    pub fn event_sink(&self) -> EventSink {
        EventSink {
            shared: self.shared.clone(),
        }
    }
}

impl core::fmt::Debug for ChipHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ChipHandle")
            .field("name", &self.name())
            .field("base", &self.base())
            .finish()
    }
}

/// The chip driver's side of line events: its interrupt handler (or virtio event-queue
/// completion) calls [`report`](Self::report).
///
/// Context: process or threaded-interrupt context (Lull's threaded IRQ handlers, or the work
/// that drains a virtio event queue), not a hard interrupt handler: it takes the chip's
/// line-table spin lock, which consumers also take with interrupts enabled. It holds the lock
/// only briefly, wakes the reader's waker after dropping it, and never calls back into the chip.
#[derive(Clone)]
pub struct EventSink {
    shared: Arc<ChipShared>,
}

impl EventSink {
    /// Reports that line `offset` saw `raw` at `timestamp_ns`. Returns whether an event was
    /// queued: `false` when nobody asked for events on the line, the edge does not match the
    /// request, a level event is still unacknowledged, or the chip has been removed.
    ///
    /// After reporting a level event the chip must leave the line's interrupt masked until
    /// gpiolib calls [`GpioChip::irq_enable`] again (on the consumer's acknowledgement).
    pub fn report(&self, offset: u32, raw: RawEvent, timestamp_ns: u64) -> bool {
        self.shared.report(offset, raw, timestamp_ns)
    }
}

/// A chip registration that unregisters the chip when released: `devm_gpiochip_add_data`, for
/// the chip driver's devres list. `R` is how the registration reaches the registry (a
/// `&'static GpioRegistry` in the kernel, an `Arc` in tests).
pub struct ChipRegistration<R: core::ops::Deref<Target = GpioRegistry> + Send> {
    registry: R,
    handle: ChipHandle,
}

impl<R: core::ops::Deref<Target = GpioRegistry> + Send> ChipRegistration<R> {
    /// Registers `chip` as [`GpioRegistry::add_chip`] does.
    pub fn new(registry: R, chip: Box<dyn GpioChip>, base: Option<u32>) -> Result<Self, GpioError> {
        let handle = registry.add_chip(chip, base)?;
        Ok(Self { registry, handle })
    }

    /// The registered chip's handle (number, base, event sink).
    pub fn handle(&self) -> &ChipHandle {
        &self.handle
    }
}

impl<R: core::ops::Deref<Target = GpioRegistry> + Send> lull_devres::ManagedResource
    for ChipRegistration<R>
{
    fn describe(&self) -> lull_devres::ResourceInfo {
        lull_devres::ResourceInfo::new(
            lull_devres::ResourceKind::Other("gpiochip"),
            format!(
                "{} ({}, GPIOs {}-{})",
                self.handle.name(),
                self.handle.shared.label,
                self.handle.base(),
                self.handle.base() + self.handle.shared.ngpio - 1
            ),
        )
    }

    fn release(self: Box<Self>) {
        // Calls in flight finish quickly (a register access or one virtio round trip); spin
        // politely while they do. Only an unknown number can fail, and this one is ours.
        let _ = self
            .registry
            .remove_chip(self.handle.number(), core::hint::spin_loop);
    }
}

/// A snapshot of a registered chip, for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChipInfo {
    /// The chip's number (`N` in `gpiochipN`).
    pub number: u32,
    /// The chip's label.
    pub label: String,
    /// The global number of line 0.
    pub base: u32,
    /// How many lines.
    pub lines: u32,
    /// Whether its operations may sleep.
    pub can_sleep: bool,
}

impl ChipInfo {
    /// `gpiochipN`.
    pub fn name(&self) -> String {
        format!("gpiochip{}", self.number)
    }
}

/// A snapshot of one line, for `gpioinfo` and the debugfs listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineInfo {
    /// The line's offset.
    pub offset: u32,
    /// Its name, if it has one.
    pub name: Option<String>,
    /// The holder's consumer label while requested.
    pub consumer: Option<String>,
    /// Its direction (read from the chip when the line is free).
    pub direction: Option<Direction>,
    /// Whether the holder asked for active-low.
    pub active_low: bool,
    /// Whether the holder requested interrupts on it.
    pub used_as_irq: bool,
}

/// What [`GpioRegistry::remove_chip`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemovedChip {
    /// `gpiochipN`.
    pub name: String,
    /// Lines still requested at removal (offset, consumer): their descriptors now answer
    /// [`GpioError::ChipGone`]. Linux warns "REMOVING GPIOCHIP WITH GPIOS STILL REQUESTED".
    pub still_requested: Vec<(u32, String)>,
}

/// All registered GPIO chips, numbered as Linux numbers them.
///
/// Context: every method takes `&self`; the kernel keeps one registry in a static. Requests and
/// registration call into chips (which may sleep) outside the registry's lock.
#[derive(Default)]
pub struct GpioRegistry {
    chips: lull_spinlock::SpinLock<Vec<Arc<ChipShared>>>,
}

impl GpioRegistry {
    /// An empty registry.
    pub const fn new() -> Self {
        Self {
            chips: lull_spinlock::SpinLock::new(Vec::new()),
        }
    }

    /// Registers `chip` (Linux's `gpiochip_add_data`). It gets the lowest free `gpiochipN`
    /// number and either `base` or, with `None`, the lowest free range from
    /// [`GPIO_DYNAMIC_BASE`]. Line directions are read once now, as Linux does.
    pub fn add_chip(
        &self,
        chip: Box<dyn GpioChip>,
        base: Option<u32>,
    ) -> Result<ChipHandle, GpioError> {
        let ngpio = chip.num_lines();
        if ngpio == 0 {
            return Err(GpioError::NoLines);
        }
        let label = chip.label().to_owned();
        let parent = chip.parent().map(str::to_owned);
        let names = (0..ngpio)
            .map(|offset| chip.line_name(offset).map(str::to_owned))
            .collect();
        let lines = (0..ngpio)
            .map(|offset| LineState::new(chip.get_direction(offset).ok()))
            .collect();
        let can_sleep = chip.can_sleep();
        let irq_capable = chip.irq_capable();

        let mut chips = self.chips.lock();
        let overlaps = |start: u32| {
            chips
                .iter()
                .any(|other| start < other.base + other.ngpio && other.base < start + ngpio)
        };
        let base = match base {
            Some(base) => {
                if base.checked_add(ngpio).is_none() || overlaps(base) {
                    return Err(GpioError::BaseConflict { base });
                }
                base
            }
            None => {
                let mut candidate = GPIO_DYNAMIC_BASE;
                let mut ranges: Vec<(u32, u32)> =
                    chips.iter().map(|c| (c.base, c.base + c.ngpio)).collect();
                ranges.sort_unstable();
                for (start, end) in ranges {
                    if candidate.checked_add(ngpio).is_some_and(|e| e <= start) {
                        break;
                    }
                    candidate = candidate.max(end);
                }
                if candidate.checked_add(ngpio).is_none() {
                    return Err(GpioError::BaseConflict { base: candidate });
                }
                candidate
            }
        };
        let mut number = 0;
        while chips.iter().any(|c| c.number == number) {
            number += 1;
        }
        let shared = Arc::new(ChipShared {
            number,
            base,
            ngpio,
            label,
            parent,
            can_sleep,
            irq_capable,
            names,
            chip: Revocable::new(chip),
            state: lull_spinlock::SpinLock::new(ChipState { lines, seqno: 0 }),
        });
        let position = chips.partition_point(|c| c.number < number);
        chips.insert(position, shared.clone());
        Ok(ChipHandle { shared })
    }

    /// Unregisters chip `number` (Linux's `gpiochip_remove`). Calls in flight finish first:
    /// `wait` is called between attempts while one is (a yield in the kernel). Descriptors still
    /// held afterwards answer [`GpioError::ChipGone`]; their lines are listed in the report.
    pub fn remove_chip(&self, number: u32, wait: impl FnMut()) -> Result<RemovedChip, GpioError> {
        let shared = {
            let mut chips = self.chips.lock();
            let position = chips
                .iter()
                .position(|c| c.number == number)
                .ok_or_else(|| GpioError::NoSuchChip(format!("gpiochip{number}")))?;
            chips.remove(position)
        };
        shared.chip.revoke_and_wait(wait);
        let still_requested = {
            let state = shared.state.lock();
            state
                .lines
                .iter()
                .enumerate()
                .filter_map(|(offset, line)| {
                    line.consumer
                        .clone()
                        .map(|consumer| (offset as u32, consumer))
                })
                .collect()
        };
        Ok(RemovedChip {
            name: shared.name(),
            still_requested,
        })
    }

    pub(crate) fn chip_list(&self) -> Vec<Arc<ChipShared>> {
        self.chips.lock().clone()
    }

    /// The chips, by number.
    pub fn chips(&self) -> Vec<ChipInfo> {
        self.chip_list().iter().map(|c| chip_info(c)).collect()
    }

    /// Finds a chip the way libgpiod's tools do: `gpiochipN`, `/dev/gpiochipN`, `N`, or its
    /// label.
    pub(crate) fn find_chip(&self, selector: &str) -> Result<Arc<ChipShared>, GpioError> {
        let chips = self.chips.lock();
        let by_number = selector
            .strip_prefix("/dev/")
            .unwrap_or(selector)
            .strip_prefix("gpiochip")
            .unwrap_or(selector)
            .parse::<u32>()
            .ok();
        let found = match by_number {
            Some(number) => chips.iter().find(|c| c.number == number),
            None => chips.iter().find(|c| c.label == selector),
        };
        found
            .cloned()
            .ok_or_else(|| GpioError::NoSuchChip(selector.to_owned()))
    }

    /// The chip's info. `selector` is `gpiochipN`, `/dev/gpiochipN`, `N`, or the chip's label,
    /// as libgpiod's tools accept.
    pub fn chip_info(&self, selector: &str) -> Result<ChipInfo, GpioError> {
        Ok(chip_info(&*self.find_chip(selector)?))
    }

    /// The first line named `name`, by chip number then offset (Linux's `gpio_name_to_desc`).
    pub fn find_line(&self, name: &str) -> Option<(ChipInfo, u32)> {
        let (chip, offset) = self.find_line_shared(name)?;
        Some((chip_info(&chip), offset))
    }

    fn find_line_shared(&self, name: &str) -> Option<(Arc<ChipShared>, u32)> {
        let chips = self.chips.lock();
        chips.iter().find_map(|chip| {
            chip.names
                .iter()
                .position(|n| n.as_deref() == Some(name))
                .map(|offset| (chip.clone(), offset as u32))
        })
    }

    /// Requests the line named `name` for `consumer` (Linux's `gpiod_get` after lookup).
    pub fn get_by_name(
        &self,
        name: &str,
        consumer: &str,
        config: LineConfig,
    ) -> Result<GpioDesc, GpioError> {
        let (chip, offset) = self
            .find_line_shared(name)
            .ok_or_else(|| GpioError::NoSuchLine(name.to_owned()))?;
        single(chip.request(&[offset], consumer, config)?)
    }

    /// Requests line `offset` of the chip `chip` (`gpiochipN`, `/dev/gpiochipN`, `N`, or
    /// the label) for `consumer`.
    pub fn get(
        &self,
        chip: &str,
        offset: u32,
        consumer: &str,
        config: LineConfig,
    ) -> Result<GpioDesc, GpioError> {
        let chip = self.find_chip(chip)?;
        single(chip.request(&[offset], consumer, config)?)
    }

    /// Requests the line with global number `gpio` (the legacy integer namespace).
    pub fn get_global(
        &self,
        gpio: u32,
        consumer: &str,
        config: LineConfig,
    ) -> Result<GpioDesc, GpioError> {
        let chip = {
            let chips = self.chips.lock();
            chips
                .iter()
                .find(|c| gpio >= c.base && gpio - c.base < c.ngpio)
                .cloned()
                .ok_or_else(|| GpioError::NoSuchChip(format!("global GPIO {gpio}")))?
        };
        single(chip.request(&[gpio - chip.base], consumer, config)?)
    }

    /// Requests several lines of one chip at once, all or none: if any is held, none is taken
    /// and the error names the first held line's consumer.
    pub fn get_array(
        &self,
        chip: &str,
        offsets: &[u32],
        consumer: &str,
        config: LineConfig,
    ) -> Result<GpioDescArray, GpioError> {
        let chip = self.find_chip(chip)?;
        if offsets.is_empty() {
            return Err(GpioError::InvalidBulk);
        }
        GpioDescArray::new(chip.request(offsets, consumer, config)?)
    }

    /// A snapshot of every line of the chip.
    pub fn lines(&self, chip: &str) -> Result<Vec<LineInfo>, GpioError> {
        let chip = self.find_chip(chip)?;
        Ok(line_infos(&chip))
    }
}

/// Snapshots a chip's lines; free lines' directions are read from the chip, as Linux's
/// `gpiod_get_direction` in the line-info ioctl.
pub(crate) fn line_infos(chip: &ChipShared) -> Vec<LineInfo> {
    let snapshot: Vec<(Option<String>, Option<Direction>, bool, bool)> = {
        let state = chip.state.lock();
        state
            .lines
            .iter()
            .map(|line| {
                (
                    line.consumer.clone(),
                    line.direction,
                    line.active_low,
                    line.events.is_some(),
                )
            })
            .collect()
    };
    snapshot
        .into_iter()
        .enumerate()
        .map(|(offset, (consumer, cached, active_low, used_as_irq))| {
            let offset = offset as u32;
            let direction = if consumer.is_none() {
                chip.with_chip(|c| c.get_direction(offset)).ok().or(cached)
            } else {
                cached
            };
            LineInfo {
                offset,
                name: chip.names.get(offset as usize).cloned().flatten(),
                consumer,
                direction,
                active_low,
                used_as_irq,
            }
        })
        .collect()
}

fn single(mut descs: Vec<GpioDesc>) -> Result<GpioDesc, GpioError> {
    descs.pop().ok_or(GpioError::InvalidBulk)
}

fn chip_info(chip: &ChipShared) -> ChipInfo {
    ChipInfo {
        number: chip.number,
        label: chip.label.clone(),
        base: chip.base,
        lines: chip.ngpio,
        can_sleep: chip.can_sleep,
    }
}

//! ASoC: a sound card split as Linux 2.6.21's ASoC splits it into a **codec** driver (its
//! widgets, controls and codec I/O: HDA verbs, AC'97 registers), a **platform** driver (the
//! audio DMA engine: HDA stream descriptors, AC'97 bus-master boxes) and a **machine** driver
//! (the board: which codec pins reach which connectors, and its events — the amplifier it
//! enables at the start of playback).
//!
//! Power is DAPM's (`lull_dapm`, host-tested): the card owns the graph; stream starts and stops
//! and control writes turn into ordered [`PowerUpdate`]s that the card applies through the
//! codec (widget power, register bits, bias, control values) and the machine (widget events).
//! A stopped playback stream powers down after `pmdown_time`: one `kdapm` thread sleeps until
//! the earliest deadline of any card's graph (an hrtimer) or, with nothing pending, until a
//! change wakes it — so an idle card costs no wake-ups.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use lull_dapm::{BiasLevel, ControlValue, Dapm, DapmBackend, DapmError, PowerEvent, PowerUpdate};

use crate::kernel::locking::Mutex;
use crate::kernel::sched::WaitQueue;
use crate::pr_err;

/// A stream's direction (Linux's `SNDRV_PCM_STREAM_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Playback,
    Capture,
}

impl Direction {
    /// The DAPM stream name a codec's interface widgets use for this direction.
    pub fn stream(self) -> &'static str {
        match self {
            Self::Playback => "Playback",
            Self::Capture => "Capture",
        }
    }
}

/// What a PCM stream is asked to be: S16_LE, `channels` interleaved, `periods` periods of
/// `period_bytes` each in the DMA ring.
#[derive(Clone, Copy, Debug)]
pub struct StreamConfig {
    pub direction: Direction,
    pub rate: u32,
    pub channels: u8,
    pub period_bytes: usize,
    pub periods: usize,
}

/// What a stream did.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamStats {
    pub bytes: u64,
    pub periods: u64,
    pub interrupts: u64,
    pub underruns: u64,
    pub elapsed_ns: u64,
}

/// The data side of a stream: where playback samples come from, where captured ones go.
pub enum StreamData<'a> {
    /// Fills a period's bytes; returns how many it wrote (0: the end).
    Play(&'a mut dyn FnMut(&mut [u8]) -> usize),
    /// Takes `bytes` bytes in all, as they arrive.
    Capture {
        bytes: u64,
        sink: &'a mut dyn FnMut(&[u8]),
    },
}

/// A DAI link (Linux's `snd_soc_dai_link`): the card's PCM device joins the platform's CPU DAI
/// to the codec's DAI, both named; the stream tag and format cross it in `prepare`/`hw_params`.
#[derive(Clone, Copy, Debug)]
pub struct DaiLink {
    /// The link's (and the PCM device's) name.
    pub name: &'static str,
    /// The platform DAI it takes.
    pub cpu_dai: &'static str,
    /// The codec DAI it takes.
    pub codec_dai: &'static str,
}

/// The platform driver: the DMA engine that moves PCM between memory and the codec link.
pub trait SocPlatform: Send + Sync {
    /// Its name (`/proc/asound/cards`).
    fn name(&self) -> String;
    /// Its CPU DAI's name.
    fn dai_name(&self) -> &'static str;
    /// The sample rates it plays (S16_LE).
    fn rates(&self) -> &'static [u32];
    /// The period size it uses by default.
    fn default_period_bytes(&self) -> usize;
    /// Runs one stream: sets the DMA up, calls `prepare(stream_tag, format)` before the
    /// engine starts (the card powers the path there), and returns once the stream ended.
    fn run(
        &self,
        config: &StreamConfig,
        prepare: &mut dyn FnMut(u8, u16) -> Result<(), String>,
        data: StreamData<'_>,
    ) -> Result<StreamStats, String>;
}

/// The codec driver: its part of the DAPM graph, its controls, and codec I/O.
pub trait SocCodec: Send + Sync {
    /// Its name.
    fn name(&self) -> String;
    /// Its DAI's name.
    fn dai_name(&self) -> &'static str;
    /// Adds its widgets, routes and controls. Its interface widgets use the stream names of
    /// [`Direction::stream`].
    fn add_to(&self, dapm: &mut Dapm) -> Result<(), DapmError>;
    /// Power bits of its widgets ([`lull_dapm::Widget::power_bit`]).
    fn update_bits(&self, reg: u32, mask: u32, value: u32) {
        let _ = (reg, mask, value);
    }
    /// A widget's new power state (for codecs whose power is per widget, not per bit).
    fn widget_power(&self, widget: &str, on: bool) {
        let _ = (widget, on);
    }
    /// The card's bias level.
    fn set_bias(&self, level: BiasLevel) {
        let _ = level;
    }
    /// A control's new value, for the hardware.
    fn control(&self, name: &str, value: &ControlValue) {
        let _ = (name, value);
    }
    /// A volume control's scale in hundredths of a dB: (value of the minimum, step).
    fn db_scale(&self, control: &str) -> Option<(i32, i32)> {
        let _ = control;
        None
    }
    /// The stream is about to run with this tag and format (`hw_params`).
    fn hw_params(&self, direction: Direction, tag: u8, format: u16) -> Result<(), String> {
        let _ = (direction, tag, format);
        Ok(())
    }
    /// The stream ended (`hw_free`).
    fn hw_free(&self, direction: Direction) {
        let _ = direction;
    }
}

/// The machine driver: the board's widgets and routes, and their events.
pub trait SocMachine: Send + Sync {
    /// Its name (the card's).
    fn name(&self) -> String;
    /// The DAI link it binds (one PCM device per card).
    fn dai_link(&self) -> DaiLink;
    /// Adds the board's widgets (speakers, microphones) and their routes to the codec's pins.
    fn add_to(&self, dapm: &mut Dapm) -> Result<(), DapmError>;
    /// A widget's power event (an amplifier switched here).
    fn widget_event(&self, widget: &str, event: PowerEvent) {
        let _ = (widget, event);
    }
    /// Called when the card goes away: release what the events acquired.
    fn remove(&self) {}
}

/// A control: its name, value, and (volumes) range.
pub type ControlRow = (String, ControlValue, Option<(i32, i32)>);

/// A registered card.
pub struct Card {
    index: usize,
    codec: Box<dyn SocCodec>,
    platform: Box<dyn SocPlatform>,
    machine: Box<dyn SocMachine>,
    dapm: Mutex<Dapm>,
    /// One stream per direction at a time.
    playback: Mutex<()>,
    capture: Mutex<()>,
    /// Last stream's figures and the time its prepare (power-up) took, for the commands.
    pub last_power_up_ns: AtomicU64,
}

/// Applies a power update through the card's codec and machine, in order.
struct Apply<'a>(&'a Card);

impl DapmBackend for Apply<'_> {
    fn update_bits(&mut self, reg: u32, mask: u32, value: u32) {
        self.0.codec.update_bits(reg, mask, value);
    }
    fn widget_event(&mut self, widget: &str, event: PowerEvent) {
        self.0.machine.widget_event(widget, event);
    }
    fn widget_power(&mut self, widget: &str, on: bool) {
        self.0.codec.widget_power(widget, on);
    }
    fn set_bias(&mut self, level: BiasLevel) {
        self.0.codec.set_bias(level);
    }
    fn control(&mut self, name: &str, value: &ControlValue) {
        self.0.codec.control(name, value);
    }
}

static CARDS: Mutex<Vec<Arc<Card>>> = Mutex::named("soc::cards", Vec::new());

fn now() -> u64 {
    crate::kernel::time::uptime_ns()
}

/// Builds a card from its three drivers and registers it (`snd_soc_register_card`); returns
/// its index. Thread context. The graph starts unpowered (bias Off): nothing is powered until
/// a stream or a forced pin asks for it.
pub fn register_card(
    codec: Box<dyn SocCodec>,
    platform: Box<dyn SocPlatform>,
    machine: Box<dyn SocMachine>,
) -> Result<usize, String> {
    let link = machine.dai_link();
    if link.cpu_dai != platform.dai_name() || link.codec_dai != codec.dai_name() {
        return Err(format!(
            "machine {}: DAI link {:?} wants {} and {}; the card has {} ({}) and {} ({})",
            machine.name(),
            link.name,
            link.cpu_dai,
            link.codec_dai,
            platform.dai_name(),
            platform.name(),
            codec.dai_name(),
            codec.name()
        ));
    }
    let mut dapm = Dapm::new();
    codec
        .add_to(&mut dapm)
        .map_err(|e| format!("codec {}: {e}", codec.name()))?;
    machine
        .add_to(&mut dapm)
        .map_err(|e| format!("machine {}: {e}", machine.name()))?;
    let mut cards = CARDS.lock();
    let index = (0..)
        .find(|i| cards.iter().all(|c| c.index != *i))
        .unwrap_or(0);
    let card = Arc::new(Card {
        index,
        codec,
        platform,
        machine,
        dapm: Mutex::named("soc::dapm", dapm),
        playback: Mutex::named("soc::playback", ()),
        capture: Mutex::named("soc::capture", ()),
        last_power_up_ns: AtomicU64::new(0),
    });
    if !WORKER_STARTED.swap(true, Ordering::AcqRel) {
        let started = crate::kernel::sched::kthread_spawn(
            "kdapm",
            lull_sched::SchedClass::NORMAL,
            lull_sched::CpuSet::ALL,
            pmdown_worker,
        );
        if let Err(error) = started {
            WORKER_STARTED.store(false, Ordering::Release);
            return Err(format!("cannot start the DAPM thread: {error:?}"));
        }
    }
    cards.push(card);
    Ok(index)
}

/// Removes card `index` (`snd_soc_unregister_card`): waits for its streams, powers every
/// widget down (pending power-downs at once), stops its thread. Thread context.
pub fn unregister_card(index: usize) {
    let card = {
        let mut cards = CARDS.lock();
        let Some(at) = cards.iter().position(|c| c.index == index) else {
            return;
        };
        cards.remove(at)
    };
    {
        let _p = card.playback.lock();
        let _c = card.capture.lock();
        let mut dapm = card.dapm.lock();
        let update = dapm.advance(u64::MAX);
        update.apply(&mut Apply(&card));
    }
    changed();
    card.machine.remove();
}

/// The card with `index`, or the first one for `None`.
pub fn card(index: Option<usize>) -> Result<Arc<Card>, String> {
    let cards = CARDS.lock();
    match index {
        None => cards.first().cloned().ok_or_else(|| {
            String::from(
                "no sound card (QEMU: -device ich9-intel-hda -device hda-duplex, or -device AC97)",
            )
        }),
        Some(i) => cards
            .iter()
            .find(|c| c.index == i)
            .cloned()
            .ok_or_else(|| format!("no sound card {i}")),
    }
}

/// Every card, by index.
pub fn cards() -> Vec<Arc<Card>> {
    let mut cards = CARDS.lock().clone();
    cards.sort_by_key(|c| c.index);
    cards
}

static WORKER_STARTED: AtomicBool = AtomicBool::new(false);
static WORKER_WAKE: WaitQueue = WaitQueue::new();
/// Bumped whenever a card's next deadline may have moved.
static GENERATION: AtomicU64 = AtomicU64::new(0);

fn changed() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
    WORKER_WAKE.wake_all();
}

/// `kdapm`: sleeps until the earliest delayed power-down of any card and applies the cards'
/// due ones; with none pending, sleeps until a change wakes it.
fn pmdown_worker() {
    loop {
        let seen = GENERATION.load(Ordering::Acquire);
        let deadline = cards()
            .iter()
            .filter_map(|card| card.dapm.lock().next_deadline())
            .min();
        let moved = || GENERATION.load(Ordering::Acquire) != seen;
        match deadline {
            None => WORKER_WAKE.wait_until(moved),
            Some(at) => {
                let left = at.saturating_sub(now());
                if left > 0 && WORKER_WAKE.wait_until_timeout(left, moved) {
                    continue;
                }
                for card in cards() {
                    let mut dapm = card.dapm.lock();
                    if dapm.next_deadline().is_some_and(|due| due <= now()) {
                        let update = dapm.advance(now());
                        update.apply(&mut Apply(&card));
                    }
                }
            }
        }
    }
}

impl Card {
    /// The card's index (`hw:N`).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The machine, its codec and platform.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} codec, {} platform)",
            self.machine.name(),
            self.codec.name(),
            self.platform.name()
        )
    }

    /// The card's DAI link.
    pub fn dai_link(&self) -> DaiLink {
        self.machine.dai_link()
    }

    /// The machine's name.
    pub fn name(&self) -> String {
        self.machine.name()
    }

    /// The platform's rates.
    pub fn rates(&self) -> &'static [u32] {
        self.platform.rates()
    }

    /// The platform's default period size.
    pub fn default_period_bytes(&self) -> usize {
        self.platform.default_period_bytes()
    }

    /// Applies a DAPM change made under the graph's lock, and tells the pmdown thread the
    /// deadline may have moved.
    fn change(
        &self,
        f: impl FnOnce(&mut Dapm) -> Result<PowerUpdate, DapmError>,
    ) -> Result<(), String> {
        let mut dapm = self.dapm.lock();
        let update = f(&mut dapm).map_err(|e| e.to_string())?;
        update.apply(&mut Apply(self));
        drop(dapm);
        changed();
        Ok(())
    }

    /// Runs one stream: DAPM powers its path (and the machine its amplifier) in the
    /// platform's prepare step, before the DMA engine starts; the stop is DAPM's (delayed
    /// power-down for playback).
    pub fn run_stream(
        &self,
        config: &StreamConfig,
        data: StreamData<'_>,
    ) -> Result<StreamStats, String> {
        if !self.platform.rates().contains(&config.rate) {
            return Err(format!(
                "rate {} Hz: {} plays {:?}",
                config.rate,
                self.platform.name(),
                self.platform.rates()
            ));
        }
        let direction = config.direction;
        let _one = match direction {
            Direction::Playback => self.playback.lock(),
            Direction::Capture => self.capture.lock(),
        };
        let mut started = false;
        let result = self.platform.run(
            config,
            &mut |tag, format| {
                let begin = now();
                self.codec.hw_params(direction, tag, format)?;
                started = true;
                self.change(|dapm| dapm.stream_start(direction.stream(), now()))?;
                self.last_power_up_ns
                    .store(now() - begin, Ordering::Relaxed);
                Ok(())
            },
            data,
        );
        if started {
            if let Err(error) = self.change(|dapm| dapm.stream_stop(direction.stream(), now())) {
                pr_err!("soc: card {}: stopping the stream: {error}", self.index);
            }
            self.codec.hw_free(direction);
        }
        result
    }

    /// Sets a control: a switch (`on`/`off`), an enum item, or a volume value.
    pub fn set_control(&self, name: &str, value: &ControlValue) -> Result<(), String> {
        self.change(|dapm| match value {
            ControlValue::Switch(on) => dapm.set_switch(name, *on),
            ControlValue::Enum(_, item) => dapm.set_enum(name, item),
            ControlValue::Volume(v) => dapm.set_volume(name, *v),
        })
    }

    /// The controls with their values.
    pub fn controls(&self) -> Vec<ControlRow> {
        let dapm = self.dapm.lock();
        dapm.controls()
            .into_iter()
            .map(|(name, value)| {
                let range = dapm.volume_range(name).ok();
                (name.to_string(), value, range)
            })
            .collect()
    }

    /// A volume control's dB scale (see [`SocCodec::db_scale`]).
    pub fn db_scale(&self, control: &str) -> Option<(i32, i32)> {
        self.codec.db_scale(control)
    }

    /// `pmdown_time` in ms.
    pub fn pmdown_time_ms(&self) -> u64 {
        self.dapm.lock().pmdown_time_ms()
    }

    /// Sets `pmdown_time`.
    pub fn set_pmdown_time_ms(&self, ms: u64) {
        self.dapm.lock().set_pmdown_time_ms(ms);
        changed();
    }

    /// Every widget's state, as Linux's debugfs `asoc/CARD/dapm/*` files, and the bias.
    pub fn dapm_dump(&self, widget: Option<&str>) -> Result<String, String> {
        let dapm = self.dapm.lock();
        match widget {
            Some(name) => dapm.dump_widget(name).map_err(|e| e.to_string()),
            None => Ok(dapm.dump()),
        }
    }

    /// Connects or disconnects a pin (`snd_soc_dapm_enable_pin`/`disable_pin`).
    pub fn set_pin(&self, pin: &str, enabled: bool) -> Result<(), String> {
        self.change(|dapm| {
            if enabled {
                dapm.enable_pin(pin)
            } else {
                dapm.disable_pin(pin)
            }
        })
    }
}

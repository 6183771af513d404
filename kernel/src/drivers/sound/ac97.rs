//! The Intel 82801AA AC'97 controller (QEMU's `AC97`, PCI 8086:2415) and its codec: the
//! `snd_intel8x0` driver (Linux's name) claims the codec's mixer registers (I/O BAR 0, "NAM")
//! and the bus-master DMA engine (I/O BAR 1, "NABM") through devres, takes its INTx line, and
//! plays 16-bit stereo PCM through the PCM-out channel: a 32-entry buffer descriptor list in
//! DMA memory, each entry a 4 KiB period that interrupts on completion; the playing thread
//! refills the periods the engine has finished and moves the last valid index on, sleeping on
//! a wait queue between interrupts. Nothing runs while nothing plays.
//!
//! Volume: the codec's master (0x02) and PCM-out (0x18) registers. `amixer`-like control is the
//! [`set_master`] call; the probe sets both to their loudest (unity in QEMU), so the samples
//! reach QEMU's output unchanged.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU16, AtomicU8, Ordering};

use lull_dapm::{ControlValue, Dapm, DapmError, Widget, WidgetKind};

use lull_devres::Revocable;
use lull_driver_core::{Driver, DriverDesc, Errno, PciMatchId, ProbeContext, ProbeError};

use crate::arch::dma::DmaBuffer;
use crate::arch::io::IoPorts;
use crate::drivers::base::devm;
use crate::drivers::pci::devm::{pcim_enable_device, pcim_request_io_bar};
use crate::drivers::pci::PciDevice;
use crate::kernel::irq::{DevId, IrqReturn};
use crate::kernel::locking::{IrqSafeLock, Mutex};
use crate::kernel::sched::WaitQueue;

use super::soc::{
    self, Direction, SocCodec, SocMachine, SocPlatform, StreamConfig, StreamData, StreamStats,
};
use crate::{pr_err, printk};

/// The driver's name (Linux's).
pub const DRIVER: &str = "snd_intel8x0";

// Codec (NAM) registers.
const NAM_RESET: u16 = 0x00;
const NAM_MASTER: u16 = 0x02;
const NAM_PCM_OUT: u16 = 0x18;
const NAM_EXT_ID: u16 = 0x28;
const NAM_EXT_CTRL: u16 = 0x2a;
const NAM_FRONT_RATE: u16 = 0x2c;
/// Mute bit of the volume registers.
const MUTE: u16 = 1 << 15;

// Bus master (NABM): the PCM-out box and the global registers.
const PO_BDBAR: u16 = 0x10;
const PO_CIV: u16 = 0x14;
const PO_LVI: u16 = 0x15;
const PO_SR: u16 = 0x16;
const PO_CR: u16 = 0x1b;
const GLOB_CNT: u16 = 0x2c;
/// Status: DMA controller halted, last valid buffer completed, buffer completed, FIFO error.
const SR_DCH: u16 = 1 << 0;
const SR_LVBCI: u16 = 1 << 2;
const SR_BCIS: u16 = 1 << 3;
const SR_FIFOE: u16 = 1 << 4;
const SR_CLEAR: u16 = SR_LVBCI | SR_BCIS | SR_FIFOE;
/// Control: run, reset the box's registers, interrupt on the last valid buffer, on FIFO errors,
/// and on each completion.
const CR_RPBM: u8 = 1 << 0;
const CR_RR: u8 = 1 << 1;
const CR_LVBIE: u8 = 1 << 2;
const CR_FEIE: u8 = 1 << 3;
const CR_IOCE: u8 = 1 << 4;
/// Global control: cold reset released (the link runs).
const GLOB_COLD: u32 = 1 << 1;
/// Descriptor flag: interrupt on completion.
const BD_IOC: u32 = 1 << 31;

/// Buffer descriptors (the hardware's ring).
const ENTRIES: usize = 32;
/// Bytes per period (1,024 stereo frames: 21.3 ms at 48 kHz).
pub const PERIOD: usize = 4096;
/// The rate the codec runs at after reset, and the only one this driver plays.
pub const RATE: u32 = 48_000;

/// The bound controller.
struct Ac97 {
    mixer: Arc<Revocable<IoPorts>>,
    bus: Arc<Revocable<IoPorts>>,
    bdl: Arc<Revocable<DmaBuffer>>,
    bdl_bus: u64,
    data: Arc<Revocable<DmaBuffer>>,
    data_bus: u64,
    /// Status bits the interrupt saw and cleared, for the player.
    seen: AtomicU8,
    wake: WaitQueue,
    /// One stream at a time.
    playing: Mutex<()>,
}

static BOUND: IrqSafeLock<Option<Arc<Ac97>>> = IrqSafeLock::new(None);

fn interrupt(_irq: u32, _dev: DevId) -> IrqReturn {
    let Some(card) = BOUND.lock().clone() else {
        return IrqReturn::None;
    };
    let Some(bus) = card.bus.try_access() else {
        return IrqReturn::None;
    };
    let status = bus.read_u16(PO_SR);
    if status & SR_CLEAR == 0 {
        return IrqReturn::None;
    }
    bus.write_u16(PO_SR, status & SR_CLEAR);
    card.seen.fetch_or(status as u8, Ordering::AcqRel);
    drop(bus);
    card.wake.wake_all();
    IrqReturn::Handled
}

/// Plays `frames` stereo frames that `fill` produces (it fills a period's bytes and returns how
/// many it wrote: fewer at the end). Sleeps until the engine has played the last one.
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // the in-kernel tests play directly
pub fn play(mut fill: impl FnMut(&mut [u8]) -> usize) -> Result<PlayStats, String> {
    play_prepared(&mut |_, _| Ok(()), &mut fill)
}

/// [`play`], calling `prepare` (the card powers its path there) after the ring is set up and
/// before the engine runs.
fn play_prepared(
    prepare: &mut dyn FnMut(u8, u16) -> Result<(), String>,
    fill: &mut dyn FnMut(&mut [u8]) -> usize,
) -> Result<PlayStats, String> {
    let card = BOUND
        .lock()
        .clone()
        .ok_or("no AC'97 controller is bound (QEMU: -device AC97)")?;
    let _one = card.playing.lock();
    let mut period = alloc::vec![0u8; PERIOD];
    let mut stats = PlayStats::default();
    // Writes period `entry`'s bytes and its descriptor; returns false when `fill` has no more.
    let mut queue = |entry: usize, stats: &mut PlayStats| -> Result<bool, String> {
        period.fill(0);
        let len = fill(&mut period) & !3;
        if len == 0 {
            return Ok(false);
        }
        let data = card.data.try_access().ok_or("the controller went away")?;
        data.write_bytes(entry * PERIOD, &period[..len]);
        let bdl = card.bdl.try_access().ok_or("the controller went away")?;
        bdl.write_u32(entry * 8, (card.data_bus + (entry * PERIOD) as u64) as u32);
        // Length in 16-bit samples, and interrupt on completion.
        bdl.write_u32(entry * 8 + 4, BD_IOC | (len / 2) as u32);
        stats.bytes += len as u64;
        stats.periods += 1;
        Ok(true)
    };
    let bus = card.bus.try_access().ok_or("the controller went away")?;
    bus.write_u8(PO_CR, CR_RR);
    let mut queued = 0;
    while queued < ENTRIES && queue(queued, &mut stats)? {
        queued += 1;
    }
    if queued == 0 {
        return Ok(stats);
    }
    bus.write_u32(PO_BDBAR, card.bdl_bus as u32);
    bus.write_u8(PO_LVI, (queued - 1) as u8);
    bus.write_u16(PO_SR, SR_CLEAR);
    card.seen.store(0, Ordering::Release);
    drop(bus);
    prepare(0, 0)?;
    let bus = card.bus.try_access().ok_or("the controller went away")?;
    let started = crate::kernel::time::uptime_ns();
    bus.write_u8(PO_CR, CR_RPBM | CR_LVBIE | CR_FEIE | CR_IOCE);
    drop(bus);
    let mut last_civ = 0usize;
    let mut more = queued == ENTRIES;
    let mut last_valid = queued - 1;
    loop {
        // A period lasts 21 ms; 1 s without an interrupt means the engine stopped.
        let woke = card
            .wake
            .wait_until_timeout(1_000_000_000, || card.seen.load(Ordering::Acquire) != 0);
        let seen = card.seen.swap(0, Ordering::AcqRel);
        stats.interrupts += u64::from(woke);
        let bus = card.bus.try_access().ok_or("the controller went away")?;
        let status = bus.read_u16(PO_SR);
        let civ = usize::from(bus.read_u8(PO_CIV)) % ENTRIES;
        if u16::from(seen) & SR_FIFOE != 0 {
            stats.underruns += 1;
        }
        if status & SR_DCH != 0 {
            // Halted after the last valid period.
            bus.write_u8(PO_CR, 0);
            break;
        }
        if !woke {
            bus.write_u8(PO_CR, 0);
            return Err(String::from(
                "AC'97: no period completed within 1 s; playback stopped",
            ));
        }
        drop(bus);
        // Periods from `last_civ` up to (not including) `civ` are done: refill them.
        while more && last_civ != civ {
            if queue(last_civ, &mut stats)? {
                last_valid = last_civ;
            } else {
                more = false;
            }
            last_civ = (last_civ + 1) % ENTRIES;
        }
        last_civ = civ;
        let bus = card.bus.try_access().ok_or("the controller went away")?;
        bus.write_u8(PO_LVI, last_valid as u8);
    }
    stats.elapsed_ns = crate::kernel::time::uptime_ns() - started;
    Ok(stats)
}

/// What a playback did.
pub type PlayStats = StreamStats;

// Power-down register (0x26): PR0 ADC and input mux, PR1 DAC, PR2 analog mixer (Vref on).
const NAM_POWERDOWN: u16 = 0x26;
const PR1_DAC: u8 = 9;
const PR2_MIXER: u8 = 10;

/// The AC'97 codec (ASoC codec driver): PCM DAC and the analog mixer with their power-down
/// bits in register 0x26, the line output, and the master volume and switch on register 0x02.
struct Ac97Codec {
    card: Arc<Ac97>,
    /// Register 0x02 as last written.
    master: AtomicU16,
}

impl SocCodec for Ac97Codec {
    fn name(&self) -> String {
        String::from("ac97")
    }

    fn dai_name(&self) -> &'static str {
        "ac97-hifi"
    }

    fn add_to(&self, dapm: &mut Dapm) -> Result<(), DapmError> {
        dapm.add_switch("Master Playback Switch", true)?;
        dapm.add_volume("Master Playback Volume", 0, 63, 63, false)?;
        dapm.add_widget(Widget::aif_in(
            "AC97 Playback",
            Direction::Playback.stream(),
        ))?;
        dapm.add_widget(Widget::new(WidgetKind::Dac, "PCM DAC").power_bit(
            u32::from(NAM_POWERDOWN),
            PR1_DAC,
            true,
        ))?;
        dapm.add_widget(Widget::new(WidgetKind::Mixer, "Mixer").power_bit(
            u32::from(NAM_POWERDOWN),
            PR2_MIXER,
            true,
        ))?;
        dapm.add_widget(Widget::new(WidgetKind::Output, "Line Out"))?;
        dapm.add_route("PCM DAC", None, "AC97 Playback")?;
        dapm.add_route("Mixer", None, "PCM DAC")?;
        dapm.add_route("Line Out", Some("Master Playback Switch"), "Mixer")?;
        Ok(())
    }

    fn update_bits(&self, reg: u32, mask: u32, value: u32) {
        let Some(mixer) = self.card.mixer.try_access() else {
            return;
        };
        let reg = reg as u16;
        let old = mixer.read_u16(reg);
        mixer.write_u16(reg, (old & !(mask as u16)) | (value & mask) as u16);
    }

    fn control(&self, name: &str, value: &ControlValue) {
        let old = self.master.load(Ordering::Relaxed);
        let new = match (name, value) {
            ("Master Playback Switch", ControlValue::Switch(on)) => {
                if *on {
                    old & !MUTE
                } else {
                    old | MUTE
                }
            }
            ("Master Playback Volume", ControlValue::Volume(v)) => {
                // 63 is 0 dB: attenuation 0 in both channels.
                let attenuation = (63 - (*v).clamp(0, 63)) as u16;
                (old & MUTE) | attenuation << 8 | attenuation
            }
            _ => return,
        };
        self.master.store(new, Ordering::Relaxed);
        if let Some(mixer) = self.card.mixer.try_access() {
            mixer.write_u16(NAM_MASTER, new);
        }
    }

    fn db_scale(&self, control: &str) -> Option<(i32, i32)> {
        (control == "Master Playback Volume").then_some((-9450, 150))
    }
}

/// The AC'97 PCM-out box (ASoC platform driver).
struct Ac97Pcm;

impl SocPlatform for Ac97Pcm {
    fn name(&self) -> String {
        String::from("intel8x0 PCM out")
    }

    fn dai_name(&self) -> &'static str {
        "intel8x0-ac97-link"
    }

    fn rates(&self) -> &'static [u32] {
        &[RATE]
    }

    fn default_period_bytes(&self) -> usize {
        PERIOD
    }

    fn run(
        &self,
        config: &StreamConfig,
        prepare: &mut dyn FnMut(u8, u16) -> Result<(), String>,
        data: StreamData<'_>,
    ) -> Result<StreamStats, String> {
        let StreamData::Play(fill) = data else {
            return Err(String::from("the AC'97 driver plays only (no capture)"));
        };
        if config.channels != 2 || config.period_bytes != PERIOD || config.periods > ENTRIES {
            return Err(alloc::format!(
                "the AC'97 driver plays 2 channels in up to {ENTRIES} periods of {PERIOD} bytes"
            ));
        }
        play_prepared(prepare, fill)
    }
}

/// The q35 board around the AC'97 codec (ASoC machine driver): its line output jack.
struct Ac97Machine;

impl SocMachine for Ac97Machine {
    fn name(&self) -> String {
        String::from("q35-ac97")
    }

    fn dai_link(&self) -> soc::DaiLink {
        soc::DaiLink {
            name: "AC97 HiFi",
            cpu_dai: "intel8x0-ac97-link",
            codec_dai: "ac97-hifi",
        }
    }

    fn add_to(&self, dapm: &mut Dapm) -> Result<(), DapmError> {
        dapm.add_widget(Widget::new(WidgetKind::LineOut, "Line Out Jack"))?;
        dapm.add_route("Line Out Jack", None, "Line Out")?;
        Ok(())
    }
}

struct Ac97Driver;

impl Driver for Ac97Driver {
    fn probe(&self, ctx: &mut ProbeContext<'_>) -> Result<(), ProbeError> {
        let name = String::from(ctx.device_name());
        let dev = PciDevice::all()
            .find(|d| d.name() == name)
            .ok_or(Errno::ENODEV)?;
        let devres = ctx.devres();
        pcim_enable_device(devres, &dev)?;
        dev.set_master();
        let mixer = pcim_request_io_bar(devres, &dev, 0, DRIVER)?;
        let bus = pcim_request_io_bar(devres, &dev, 1, DRIVER)?;
        let bdl = devm::alloc_coherent(devres, ENTRIES * 8)?;
        let data = devm::alloc_coherent(devres, ENTRIES * PERIOD)?;
        let (bdl_bus, data_bus) = match (bdl.try_access(), data.try_access()) {
            (Some(b), Some(d)) => (b.bus_address(), d.bus_address()),
            _ => return Err(Errno::ENOMEM.into()),
        };
        if (data_bus + (ENTRIES * PERIOD) as u64) >> 32 != 0 {
            pr_err!("{name}: {DRIVER}: DMA memory above 4 GiB; the controller addresses 32 bits");
            return Err(Errno::ENOMEM.into());
        }
        let intx = dev.intx_irq().ok_or_else(|| {
            pr_err!("{name}: {DRIVER}: no INTx route for the controller");
            Errno::ENXIO
        })?;
        {
            let (Some(nam), Some(nabm)) = (mixer.try_access(), bus.try_access()) else {
                return Err(Errno::ENODEV.into());
            };
            // The AC-link out of cold reset, the codec reset, the PCM box reset.
            nabm.write_u32(GLOB_CNT, GLOB_COLD);
            nam.write_u16(NAM_RESET, 0);
            nabm.write_u8(PO_CR, CR_RR);
            // 48 kHz (variable rate where the codec has it); master and PCM out at their
            // loudest, unmuted. On a real codec PCM out 0 is +12 dB (0x0808 is 0 dB); QEMU's
            // AC97 maps the register linearly onto its mixer, unity only at 0 (0x0808 gives
            // 0.74), and the recording is to be bit-exact.
            if nam.read_u16(NAM_EXT_ID) & 1 != 0 {
                nam.write_u16(NAM_EXT_CTRL, nam.read_u16(NAM_EXT_CTRL) | 1);
                nam.write_u16(NAM_FRONT_RATE, RATE as u16);
            }
            nam.write_u16(NAM_MASTER, 0);
            nam.write_u16(NAM_PCM_OUT, 0);
            // ADC, DAC and mixer powered down until DAPM powers a path (PR0-PR2).
            nam.write_u16(NAM_POWERDOWN, 0x0700);
        }
        let card = Arc::new(Ac97 {
            mixer,
            bus,
            bdl,
            bdl_bus,
            data,
            data_bus,
            seen: AtomicU8::new(0),
            wake: WaitQueue::new(),
            playing: Mutex::named("ac97::playing", ()),
        });
        {
            let mut bound = BOUND.lock();
            if bound.is_some() {
                return Err(Errno::EBUSY.into());
            }
            *bound = Some(Arc::clone(&card));
        }
        devres.add_action("snd_intel8x0: forget the controller", || {
            BOUND.lock().take();
        });
        // Stopped before the interrupt and the buffers are released.
        let for_stop = Arc::clone(&card);
        devres.add_action("snd_intel8x0: stop DMA", move || {
            if let Some(bus) = for_stop.bus.try_access() {
                bus.write_u8(PO_CR, 0);
                bus.write_u8(PO_CR, CR_RR);
            }
        });
        devm::request_irq(
            devres,
            intx.gsi,
            interrupt,
            intx.request_flags(),
            DRIVER,
            DevId::of(&*card),
        )?;
        let index = soc::register_card(
            Box::new(Ac97Codec {
                card: Arc::clone(&card),
                master: AtomicU16::new(0),
            }),
            Box::new(Ac97Pcm),
            Box::new(Ac97Machine),
        )
        .map_err(|error| {
            pr_err!("{name}: {DRIVER}: {error}");
            Errno::ENOMEM
        })?;
        devres.add_action("snd_intel8x0: unregister the card", move || {
            soc::unregister_card(index);
        });
        printk!(
            "{name}: {DRIVER}: AC'97 at IRQ {}, PCM out {RATE} Hz S16_LE stereo, {ENTRIES} \
             periods of {PERIOD} bytes: card {index}",
            intx.gsi
        );
        Ok(())
    }
}

/// Registers the driver on the `pci` bus.
pub fn register() {
    let ids = alloc::vec![PciMatchId::device(0x8086, 0x2415)];
    if let Err(error) =
        crate::drivers::base::register_driver(DriverDesc::new("pci", DRIVER, ids, Ac97Driver))
    {
        pr_err!("{DRIVER}: cannot register the driver: {error}");
    }
}

//! The Intel High Definition Audio controller (QEMU's `ich9-intel-hda`, PCI 8086:293e on q35):
//! the `snd_hda_intel` driver (Linux's name) is the bus and DMA side (ASoC's "platform") of an
//! HDA card. It maps the register BAR, resets the link, runs the command ring (CORB) and the
//! response ring (RIRB) in DMA memory, and runs PCM streams on the stream descriptors: a buffer
//! descriptor list of periods, each interrupting on completion, refilled (or drained, for
//! capture) by the thread that runs the stream as the link position moves. Codec verbs go out
//! one at a time through [`verb`]; the codec layer programs its converters in the `prepare`
//! call of [`run_stream`], before the stream runs.
//!
//! Everything is woken by the controller's interrupt (MSI when the function has it, INTx
//! otherwise): nothing polls and no timer runs while no verb is pending and no stream runs.
//!
//! QEMU 7.2 specifics this code lives with (hw/audio/intel-hda.c, hda-codec.c): the CORB stops
//! after RINTCNT responses until RIRBSTS is acknowledged (RINTCNT is 1 here, and every response
//! interrupts); a stream waits for its buffer-completion status to be acknowledged before it
//! moves further (the interrupt handler acknowledges at once); the codec buffers up to 8 KiB
//! ahead of the link position, so a playback keeps the stream running on silence for
//! [`DRAIN_BYTES`] after the last data byte before stopping it.

mod codec;

pub use codec::cmd_hda;
pub(crate) use codec::{walk as walk_codec, Widget as CodecWidget};

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use lull_devres::Revocable;
use lull_driver_core::{Driver, DriverDesc, Errno, PciMatchId, ProbeContext, ProbeError};

use crate::arch::dma::DmaBuffer;
use crate::arch::mmio::Mmio;
use crate::drivers::base::devm;
use crate::drivers::pci::devm::{pcim_alloc_irq_vectors, pcim_enable_device, pcim_iomap};
use crate::drivers::pci::{IrqVectorFlags, PciDevice};
use crate::kernel::irq::{DevId, IrqFlags, IrqReturn};
use crate::kernel::locking::{IrqSafeLock, Mutex};
use crate::kernel::sched::WaitQueue;
use crate::{pr_err, pr_warn, printk};

/// The driver's name (Linux's).
pub const DRIVER: &str = "snd_hda_intel";

// Global registers.
const GCAP: usize = 0x00;
const GCTL: usize = 0x08;
const STATESTS: usize = 0x0e;
const INTCTL: usize = 0x20;
const INTSTS: usize = 0x24;
const CORBLBASE: usize = 0x40;
const CORBUBASE: usize = 0x44;
const CORBWP: usize = 0x48;
const CORBRP: usize = 0x4a;
const CORBCTL: usize = 0x4c;
const RIRBLBASE: usize = 0x50;
const RIRBUBASE: usize = 0x54;
const RIRBWP: usize = 0x58;
const RINTCNT: usize = 0x5a;
const RIRBCTL: usize = 0x5c;
const RIRBSTS: usize = 0x5d;

const GCTL_CRST: u32 = 1 << 0;
const INTCTL_GIE: u32 = 1 << 31;
const INTCTL_CIE: u32 = 1 << 30;
const CORBRP_RST: u16 = 1 << 15;
const CORBCTL_RUN: u8 = 1 << 1;
const RIRBWP_RST: u16 = 1 << 15;
const RIRBCTL_INTCTL: u8 = 1 << 0;
const RIRBCTL_DMAEN: u8 = 1 << 1;
/// RIRBSTS: response interrupt, overrun.
const RIRBSTS_CLEAR: u8 = 0x05;

// Stream descriptor registers, from the descriptor's base.
const SD_CTL: usize = 0x00;
const SD_CTL_TAG: usize = 0x02;
const SD_STS: usize = 0x03;
const SD_LPIB: usize = 0x04;
const SD_CBL: usize = 0x08;
const SD_LVI: usize = 0x0c;
const SD_FMT: usize = 0x12;
const SD_BDPL: usize = 0x18;
const SD_BDPU: usize = 0x1c;

const SD_CTL_SRST: u8 = 1 << 0;
const SD_CTL_RUN: u8 = 1 << 1;
const SD_CTL_IOCE: u8 = 1 << 2;
const SD_CTL_FEIE: u8 = 1 << 3;
const SD_CTL_DEIE: u8 = 1 << 4;
/// SDnSTS: buffer completion, FIFO error, descriptor error.
const SD_STS_BCIS: u8 = 1 << 2;
const SD_STS_FIFOE: u8 = 1 << 3;
const SD_STS_DESE: u8 = 1 << 4;
const SD_STS_CLEAR: u8 = SD_STS_BCIS | SD_STS_FIFOE | SD_STS_DESE;

/// Ring layout in the rings' DMA buffer: the CORB (256 four-byte verbs) at 0, the RIRB (256
/// eight-byte responses) at 1 KiB.
const CORB_OFFSET: usize = 0;
const RIRB_OFFSET: usize = 1024;
const RINGS_BYTES: usize = 1024 + 2048;
/// A verb's response must arrive within this.
const VERB_TIMEOUT_NS: u64 = 100_000_000;
/// A running stream must interrupt within this.
const STREAM_TIMEOUT_NS: u64 = 1_000_000_000;
/// Bounded register polls (reset bits): reads before giving up.
const POLLS: usize = 10_000;
/// Silence played after a playback's last byte before the stream is stopped: QEMU's codec
/// fetches up to 8 KiB ahead of what its audio back-end has taken, and stopping the stream
/// drops what it holds.
pub const DRAIN_BYTES: u64 = 16 * 1024;
/// Most buffer descriptors a stream has (the BDL's limit).
const MAX_PERIODS: usize = 256;
/// Room for the BDL ahead of the periods in a stream's DMA buffer.
const BDL_BYTES: usize = 4096;

fn sd(index: usize) -> usize {
    0x80 + 0x20 * index
}

/// A stream descriptor's software state.
struct Slot {
    busy: AtomicBool,
    /// SDnSTS bits the interrupt saw and acknowledged, for the thread running the stream.
    seen: AtomicU8,
    /// Buffer completions (BCIS) the interrupt saw since the stream started: one per period
    /// the link finished, counted in hard-IRQ context, so it shows the whole rings that LPIB
    /// (a position within the ring) cannot when the stream's thread wakes late.
    periods_done: AtomicU64,
    wake: WaitQueue,
}

/// CORB/RIRB pointers, owned by the verb in flight.
struct Rings {
    corb_wp: u16,
    rirb_rp: u16,
}

/// The bound controller.
struct Hda {
    name: String,
    mmio: Arc<Revocable<Mmio>>,
    rings: Arc<Revocable<DmaBuffer>>,
    irq: u32,
    irq_kind: String,
    inputs: usize,
    outputs: usize,
    description: String,
    /// STATESTS after the link reset: bit n = a codec at address n.
    codec_mask: u16,
    verbs: Mutex<Rings>,
    rirb_seen: AtomicBool,
    verb_wake: WaitQueue,
    /// Read-modify-write of INTCTL.
    intctl: IrqSafeLock<()>,
    slots: Vec<Slot>,
    /// Responses found only after the timeout (the interrupt did not come).
    late_responses: AtomicU64,
    /// Set at unbind: waiters give up.
    removed: AtomicBool,
}

static BOUND: IrqSafeLock<Option<Arc<Hda>>> = IrqSafeLock::new(None);

fn bound() -> Result<Arc<Hda>, String> {
    BOUND.lock().clone().ok_or_else(|| {
        String::from("no HD Audio controller is bound (QEMU: -device ich9-intel-hda)")
    })
}

fn gone() -> String {
    String::from("the HD Audio controller went away")
}

fn interrupt(_irq: u32, _dev: DevId) -> IrqReturn {
    let Some(hda) = BOUND.lock().clone() else {
        return IrqReturn::None;
    };
    let Some(mmio) = hda.mmio.try_access() else {
        return IrqReturn::None;
    };
    let status = mmio.read_u32(INTSTS);
    if status == u32::MAX || status & (INTCTL_GIE | INTCTL_CIE | 0x3fff_ffff) == 0 {
        return IrqReturn::None;
    }
    let mut handled = false;
    for (index, slot) in hda.slots.iter().enumerate() {
        if status & (1 << index) == 0 {
            continue;
        }
        let sts = mmio.read_u8(sd(index) + SD_STS);
        mmio.write_u8(sd(index) + SD_STS, sts & SD_STS_CLEAR);
        if sts & SD_STS_BCIS != 0 {
            slot.periods_done.fetch_add(1, Ordering::AcqRel);
        }
        slot.seen.fetch_or(sts & SD_STS_CLEAR, Ordering::AcqRel);
        slot.wake.wake_all();
        handled = true;
    }
    if status & INTCTL_CIE != 0 {
        let sts = mmio.read_u8(RIRBSTS);
        mmio.write_u8(RIRBSTS, sts & RIRBSTS_CLEAR);
        // Wake events are not enabled (WAKEEN 0); acknowledge any codec status change.
        let state = mmio.read_u16(STATESTS);
        if state != 0 && state != u16::MAX {
            mmio.write_u16(STATESTS, state);
        }
        hda.rirb_seen.store(true, Ordering::Release);
        hda.verb_wake.wake_all();
        handled = true;
    }
    if handled {
        IrqReturn::Handled
    } else {
        IrqReturn::None
    }
}

/// Takes the responses the RIRB holds; returns the solicited one of `codec`, if any.
fn drain_rirb(hda: &Hda, rings: &mut Rings, codec: u8) -> Result<Option<u32>, String> {
    let mmio = hda.mmio.try_access().ok_or_else(gone)?;
    let dma = hda.rings.try_access().ok_or_else(gone)?;
    let wp = mmio.read_u16(RIRBWP) & 0xff;
    let mut found = None;
    while rings.rirb_rp != wp {
        rings.rirb_rp = (rings.rirb_rp + 1) & 0xff;
        let at = RIRB_OFFSET + usize::from(rings.rirb_rp) * 8;
        let response = dma.read_u32(at);
        let extra = dma.read_u32(at + 4);
        // Bit 4: unsolicited; bits 3:0: the codec that answered.
        if extra & 0x10 == 0 && (extra & 0xf) as u8 == codec {
            found = Some(response);
        }
    }
    Ok(found)
}

/// Sends one verb through CORB and waits (sleeping, woken by the RIRB interrupt; 100 ms
/// timeout -> Err) for its response from RIRB. `verb` is the 20-bit verb+payload field (12-bit
/// verb id << 8 | 8-bit payload, or 4-bit id << 16 | 16-bit payload), as Linux's HDA_VERB
/// encoding.
pub fn verb(codec: u8, nid: u8, verb: u32) -> Result<u32, String> {
    if codec > 14 || nid > 0x7f || verb > 0xf_ffff {
        return Err(alloc::format!(
            "hda: verb {verb:#x} to codec {codec} node {nid:#x}: out of range \
             (codec 0-14, node 0-0x7f, 20-bit verb)"
        ));
    }
    let hda = bound()?;
    if hda.codec_mask & (1 << codec) == 0 {
        return Err(alloc::format!(
            "hda: no codec at address {codec} (STATESTS {:#06x})",
            hda.codec_mask
        ));
    }
    let mut rings = hda.verbs.lock();
    // Whatever an earlier timed-out verb left behind.
    drain_rirb(&hda, &mut rings, 0xff)?;
    let command = u32::from(codec) << 28 | u32::from(nid) << 20 | verb;
    {
        let mmio = hda.mmio.try_access().ok_or_else(gone)?;
        let dma = hda.rings.try_access().ok_or_else(gone)?;
        let wp = (rings.corb_wp + 1) & 0xff;
        dma.write_u32(CORB_OFFSET + usize::from(wp) * 4, command);
        hda.rirb_seen.store(false, Ordering::Release);
        mmio.write_u16(CORBWP, wp);
        rings.corb_wp = wp;
    }
    let deadline = crate::kernel::time::uptime_ns() + VERB_TIMEOUT_NS;
    loop {
        hda.rirb_seen.store(false, Ordering::Release);
        if let Some(response) = drain_rirb(&hda, &mut rings, codec)? {
            return Ok(response);
        }
        let now = crate::kernel::time::uptime_ns();
        if now >= deadline {
            break;
        }
        hda.verb_wake.wait_until_timeout(deadline - now, || {
            hda.rirb_seen.load(Ordering::Acquire) || hda.removed.load(Ordering::Acquire)
        });
        if hda.removed.load(Ordering::Acquire) {
            return Err(gone());
        }
    }
    if let Some(response) = drain_rirb(&hda, &mut rings, codec)? {
        if hda.late_responses.fetch_add(1, Ordering::Relaxed) == 0 {
            pr_warn!(
                "{}: {DRIVER}: a codec response came without its interrupt",
                hda.name
            );
        }
        return Ok(response);
    }
    Err(alloc::format!(
        "hda: codec {codec} node {nid:#x} verb {verb:#07x}: no response within 100 ms"
    ))
}

/// Codec addresses present (STATESTS after reset).
pub fn codecs() -> Result<Vec<u8>, String> {
    let hda = bound()?;
    Ok((0..15u8)
        .filter(|a| hda.codec_mask & (1 << a) != 0)
        .collect())
}

/// What `hda` lists about the controller.
pub struct ControllerInfo {
    /// `0000:00:03.0`.
    pub pci_name: String,
    /// lspci's vendor and device name.
    pub description: String,
    pub irq: u32,
    pub irq_kind: String,
    pub inputs: usize,
    pub outputs: usize,
    pub late_responses: u64,
}

/// The bound controller's description.
pub fn controller() -> Result<ControllerInfo, String> {
    let hda = bound()?;
    Ok(ControllerInfo {
        pci_name: hda.name.clone(),
        description: hda.description.clone(),
        irq: hda.irq,
        irq_kind: hda.irq_kind.clone(),
        inputs: hda.inputs,
        outputs: hda.outputs,
        late_responses: hda.late_responses.load(Ordering::Relaxed),
    })
}

/// A stream's direction (output descriptors play, input descriptors capture).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Playback,
    Capture,
}

/// A stream's shape: S16_LE only.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub direction: Direction,
    pub rate: u32,
    pub channels: u8,
    pub period_bytes: usize,
    pub periods: usize,
}

/// The 16-bit stream format word (SDnFMT, also the converter format verb's payload) for S16_LE
/// at rate/channels: base 48 kHz or 44.1 kHz times 1-4 divided by 1-8, 1-16 channels.
pub fn format_word(rate: u32, channels: u8) -> Result<u16, String> {
    if !(1..=16).contains(&channels) {
        return Err(alloc::format!(
            "hda: {channels} channels: the format word holds 1 to 16"
        ));
    }
    for (base, base_bit) in [(48_000u32, 0u16), (44_100, 1 << 14)] {
        for mult in 1..=4u32 {
            for div in 1..=8u32 {
                if base * mult % div == 0 && base * mult / div == rate {
                    return Ok(base_bit
                        | ((mult - 1) as u16) << 11
                        | ((div - 1) as u16) << 8
                        | 1 << 4 // 16 bits per sample
                        | u16::from(channels - 1));
                }
            }
        }
    }
    Err(alloc::format!(
        "hda: {rate} Hz is not 48 kHz or 44.1 kHz times 1-4 divided by 1-8"
    ))
}

/// What a stream did.
#[derive(Debug, Default, Clone)]
pub struct StreamStats {
    pub bytes: u64,
    pub periods: u64,
    pub interrupts: u64,
    pub underruns: u64,
    pub elapsed_ns: u64,
}

/// Where a stream's samples come from or go.
pub enum StreamData<'a> {
    /// Fills the slice it is given, returns how many bytes it wrote; 0 ends the stream.
    Play(&'a mut dyn FnMut(&mut [u8]) -> usize),
    /// Takes `bytes` bytes, in period-sized slices (the last one shorter).
    Capture {
        bytes: u64,
        sink: &'a mut dyn FnMut(&[u8]),
    },
}

/// Releases a stream descriptor when the stream ends, however it ends.
struct Claim<'a>(&'a Slot);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

/// Puts stream descriptor `index` into reset and back (SRST set, seen set, cleared, seen
/// clear); QEMU 7.2 may not show the bit set, so the polls are bounded and not an error.
fn reset_stream(mmio: &Mmio, index: usize) {
    let ctl = sd(index) + SD_CTL;
    mmio.write_u8(ctl, 0);
    for _ in 0..POLLS {
        if mmio.read_u8(ctl) & SD_CTL_RUN == 0 {
            break;
        }
    }
    mmio.write_u8(ctl, SD_CTL_SRST);
    for _ in 0..POLLS {
        if mmio.read_u8(ctl) & SD_CTL_SRST != 0 {
            break;
        }
    }
    mmio.write_u8(ctl, 0);
    for _ in 0..POLLS {
        if mmio.read_u8(ctl) & SD_CTL_SRST == 0 {
            break;
        }
    }
    mmio.write_u8(sd(index) + SD_STS, SD_STS_CLEAR);
}

fn set_stream_interrupt(hda: &Hda, mmio: &Mmio, index: usize, on: bool) {
    let _rmw = hda.intctl.lock();
    let value = mmio.read_u32(INTCTL);
    let value = if on {
        value | 1 << index
    } else {
        value & !(1 << index)
    };
    mmio.write_u32(INTCTL, value | INTCTL_GIE | INTCTL_CIE);
}

/// Runs one stream on the first free stream descriptor of `direction` (output descriptors for
/// playback, input for capture): programs the BDL (periods x period_bytes, IOC on each entry),
/// CBL, LVI, format, stream tag; then calls `prepare(stream_tag, format_word)` (the codec layer
/// sets the converter's stream/channel and format verbs and powers its widgets there) BEFORE
/// setting RUN; then runs until `Play`'s fill returns 0 and everything queued has played (or
/// `Capture`'s byte count arrived), refilling periods as the position (LPIB) moves, sleeping on
/// a wait queue woken by the stream's interrupt (1 s without one -> stop and Err). Stops the
/// stream (RUN cleared, stream reset) before returning, also on error. Underruns: FIFO errors
/// (SDnSTS FIFOE) and periods the refill was late for.
pub fn run_stream(
    config: &StreamConfig,
    prepare: &mut dyn FnMut(u8, u16) -> Result<(), String>,
    data: StreamData<'_>,
) -> Result<StreamStats, String> {
    let format = format_word(config.rate, config.channels)?;
    let frame = 2 * usize::from(config.channels);
    let (pb, periods) = (config.period_bytes, config.periods);
    if !(2..=MAX_PERIODS).contains(&periods) {
        return Err(alloc::format!("hda: {periods} periods: 2 to {MAX_PERIODS}"));
    }
    if pb < 128 || pb % 128 != 0 || pb % frame != 0 {
        return Err(alloc::format!(
            "hda: period of {pb} bytes: a multiple of 128 bytes and of the {frame}-byte frame"
        ));
    }
    let ring = pb
        .checked_mul(periods)
        .filter(|&r| r + BDL_BYTES <= 4 << 20)
        .ok_or_else(|| String::from("hda: the ring is over 4 MiB"))?;
    let hda = bound()?;
    let (first, count) = match config.direction {
        Direction::Capture => (0, hda.inputs),
        Direction::Playback => (hda.inputs, hda.outputs),
    };
    let index = (first..first + count)
        .find(|&i| {
            hda.slots[i]
                .busy
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
        .ok_or_else(|| {
            alloc::format!(
                "hda: all {count} {:?} stream descriptors are busy",
                config.direction
            )
        })?;
    let slot = &hda.slots[index];
    let _claim = Claim(slot);
    // Stream tags 1-15, unique within a direction.
    let tag = (index - first + 1) as u8;
    let buffer = DmaBuffer::alloc(BDL_BYTES + ring)
        .ok_or_else(|| alloc::format!("hda: no DMA memory for a {ring}-byte ring"))?;
    let bus = buffer.bus_address();
    if (bus + (BDL_BYTES + ring) as u64) >> 32 != 0 {
        return Err(String::from("hda: DMA memory above 4 GiB"));
    }
    let mut stream = Stream {
        hda: &hda,
        slot,
        index,
        buffer: &buffer,
        pb,
        periods,
        scratch: alloc::vec![0u8; pb],
        stats: StreamStats::default(),
        running: false,
    };
    let result = stream.run(tag, format, prepare, data);
    stream.stop();
    result.map(|()| stream.stats.clone())
}

struct Stream<'a> {
    hda: &'a Hda,
    slot: &'a Slot,
    index: usize,
    buffer: &'a DmaBuffer,
    pb: usize,
    periods: usize,
    scratch: Vec<u8>,
    stats: StreamStats,
    running: bool,
}

impl<'a> Stream<'a> {
    fn mmio(&self) -> Result<lull_devres::RevocableGuard<'a, Mmio>, String> {
        self.hda.mmio.try_access().ok_or_else(gone)
    }

    /// Fills period `period` of the ring from `fill`; returns the data bytes (the rest of the
    /// period is silence) and whether `fill` has ended.
    fn fill_period(
        &mut self,
        period: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> (usize, bool) {
        self.scratch.fill(0);
        let mut at = 0;
        let mut ended = false;
        while at < self.pb {
            let n = fill(&mut self.scratch[at..]).min(self.pb - at);
            if n == 0 {
                ended = true;
                break;
            }
            at += n;
        }
        self.buffer
            .write_bytes(BDL_BYTES + period * self.pb, &self.scratch);
        (at, ended)
    }

    /// Writes ring period `period`, which starts at stream offset `start`: the next data, or
    /// silence once the data has ended (`data_end` then says at which stream offset).
    fn queue_period(
        &mut self,
        period: usize,
        start: u64,
        fill: &mut dyn FnMut(&mut [u8]) -> usize,
        data_end: &mut Option<u64>,
    ) {
        if data_end.is_some() {
            self.silence(period);
            return;
        }
        let (n, ended) = self.fill_period(period, fill);
        if n > 0 {
            self.stats.bytes += n as u64;
            self.stats.periods += 1;
        }
        if ended {
            *data_end = Some(start + n as u64);
        }
    }

    fn silence(&mut self, period: usize) {
        self.scratch.fill(0);
        self.buffer
            .write_bytes(BDL_BYTES + period * self.pb, &self.scratch);
    }

    fn run(
        &mut self,
        tag: u8,
        format: u16,
        prepare: &mut dyn FnMut(u8, u16) -> Result<(), String>,
        mut data: StreamData<'_>,
    ) -> Result<(), String> {
        let bus = self.buffer.bus_address();
        let (pb, periods) = (self.pb, self.periods);
        let ring = (pb * periods) as u64;
        for period in 0..periods {
            let at = period * 16;
            self.buffer
                .write_u64(at, bus + (BDL_BYTES + period * pb) as u64);
            self.buffer.write_u32(at + 8, pb as u32);
            self.buffer.write_u32(at + 12, 1); // IOC
        }
        // Playback: the whole ring filled before the stream runs.
        let mut data_end: Option<u64> = None;
        let mut filled: u64 = 0; // periods written
        if let StreamData::Play(fill) = &mut data {
            for period in 0..periods {
                self.queue_period(period, filled * pb as u64, *fill, &mut data_end);
                filled += 1;
            }
            if data_end == Some(0) {
                return Ok(());
            }
        } else {
            filled = periods as u64;
        }
        if let StreamData::Capture { bytes: 0, .. } = data {
            return Ok(());
        }
        let base = sd(self.index);
        {
            let mmio = self.mmio()?;
            reset_stream(&mmio, self.index);
            mmio.write_u32(base + SD_BDPL, bus as u32);
            mmio.write_u32(base + SD_BDPU, (bus >> 32) as u32);
            mmio.write_u32(base + SD_CBL, ring as u32);
            mmio.write_u16(base + SD_LVI, (periods - 1) as u16);
            mmio.write_u16(base + SD_FMT, format);
            mmio.write_u8(base + SD_CTL_TAG, tag << 4);
        }
        prepare(tag, format)?;
        self.slot.seen.store(0, Ordering::Release);
        self.slot.periods_done.store(0, Ordering::Release);
        let started = crate::kernel::time::uptime_ns();
        {
            let mmio = self.mmio()?;
            set_stream_interrupt(self.hda, &mmio, self.index, true);
            self.running = true;
            mmio.write_u8(
                base + SD_CTL,
                SD_CTL_RUN | SD_CTL_IOCE | SD_CTL_FEIE | SD_CTL_DEIE,
            );
        }
        let mut last_lpib: u64 = 0;
        let mut position: u64 = 0; // bytes the link moved, from the start
        let mut delivered: u64 = 0; // capture: bytes given to the sink
        let mut taken: u64 = 0; // capture: periods read
        loop {
            let woke = self.slot.wake.wait_until_timeout(STREAM_TIMEOUT_NS, || {
                self.slot.seen.load(Ordering::Acquire) != 0
                    || self.hda.removed.load(Ordering::Acquire)
            });
            if self.hda.removed.load(Ordering::Acquire) {
                return Err(gone());
            }
            let seen = self.slot.seen.swap(0, Ordering::AcqRel);
            if !woke {
                return Err(alloc::format!(
                    "hda: stream {} had no interrupt within 1 s; stopped",
                    self.index
                ));
            }
            if seen & SD_STS_BCIS != 0 {
                self.stats.interrupts += 1;
            }
            if seen & SD_STS_FIFOE != 0 {
                self.stats.underruns += 1;
            }
            if seen & SD_STS_DESE != 0 {
                return Err(alloc::format!(
                    "hda: stream {}: descriptor error (bad BDL); stopped",
                    self.index
                ));
            }
            // The completions first: every period they count is behind the LPIB read after.
            let completed = self.slot.periods_done.load(Ordering::Acquire) * pb as u64;
            let lpib = u64::from(self.mmio()?.read_u32(base + SD_LPIB));
            if lpib > ring {
                pr_err!(
                    "{}: {DRIVER}: stream {} position {lpib} beyond its {ring}-byte ring",
                    self.hda.name,
                    self.index
                );
                return Err(String::from("hda: the controller reported a bad position"));
            }
            let moved = (lpib + ring - last_lpib) % ring;
            position += moved;
            last_lpib = lpib % ring;
            // LPIB cannot show whole rings: a wake-up a ring or more late lost them. The
            // interrupt's count of finished periods can: the link is about there (LPIB and the
            // interrupt may disagree by a little on real hardware: Linux's bdl_pos_adj) and
            // less than a period beyond it. With k rings lost, `position` is behind it by
            // more than k rings less a period; with none, by a little at most. So half a
            // period tells the two apart, and the rest rounded up to rings is k (a ring is
            // two periods or more). Two completions merged into one interrupt, under heavy
            // load, undercount and leave `position` as LPIB says.
            let half = pb as u64 / 2;
            if completed > position + half {
                position += (completed - position - half).div_ceil(ring) * ring;
            }
            let done = position / pb as u64; // periods completed
            match &mut data {
                StreamData::Play(fill) => {
                    // The link is past what was queued: it played stale periods.
                    let queued_end = filled * pb as u64;
                    if position > queued_end {
                        self.stats.underruns += (position - queued_end).div_ceil(pb as u64);
                        filled = done;
                    }
                    if let Some(end) = data_end {
                        if position >= end + DRAIN_BYTES {
                            break;
                        }
                    }
                    while filled < done + periods as u64 {
                        let period = (filled % periods as u64) as usize;
                        self.queue_period(period, filled * pb as u64, *fill, &mut data_end);
                        filled += 1;
                    }
                }
                StreamData::Capture { bytes, sink } => {
                    if done > taken + periods as u64 {
                        // Periods overwritten before they were read.
                        self.stats.underruns += done - taken - periods as u64;
                        taken = done - periods as u64;
                    }
                    while taken < done && delivered < *bytes {
                        let period = (taken % periods as u64) as usize;
                        let n = (pb as u64).min(*bytes - delivered) as usize;
                        self.buffer
                            .read_bytes(BDL_BYTES + period * pb, &mut self.scratch[..n]);
                        sink(&self.scratch[..n]);
                        delivered += n as u64;
                        self.stats.bytes += n as u64;
                        self.stats.periods += 1;
                        taken += 1;
                    }
                    if delivered >= *bytes {
                        break;
                    }
                }
            }
        }
        self.stats.elapsed_ns = crate::kernel::time::uptime_ns() - started;
        Ok(())
    }

    /// RUN cleared, the descriptor reset, its interrupt off.
    fn stop(&mut self) {
        let Some(mmio) = self.hda.mmio.try_access() else {
            return;
        };
        reset_stream(&mmio, self.index);
        if self.running {
            set_stream_interrupt(self.hda, &mmio, self.index, false);
            self.running = false;
        }
    }
}

/// Link reset and the command rings: returns STATESTS (codecs present).
fn init_controller(name: &str, mmio: &Mmio, rings_bus: u64) -> Result<u16, Errno> {
    // Everything off, the link into reset and out again.
    mmio.write_u32(INTCTL, 0);
    mmio.write_u8(CORBCTL, 0);
    mmio.write_u8(RIRBCTL, 0);
    mmio.write_u32(GCTL, mmio.read_u32(GCTL) & !GCTL_CRST);
    let mut polls = 0;
    while mmio.read_u32(GCTL) & GCTL_CRST != 0 {
        polls += 1;
        if polls == POLLS {
            pr_err!("{name}: {DRIVER}: the controller does not enter reset");
            return Err(Errno::EIO);
        }
    }
    crate::kernel::time::sleep_ns(100_000);
    mmio.write_u32(GCTL, mmio.read_u32(GCTL) | GCTL_CRST);
    polls = 0;
    while mmio.read_u32(GCTL) & GCTL_CRST == 0 {
        polls += 1;
        if polls == POLLS {
            pr_err!("{name}: {DRIVER}: the controller does not leave reset");
            return Err(Errno::EIO);
        }
    }
    // Codecs ask for an address within 521 us of the reset's end.
    crate::kernel::time::sleep_ns(1_000_000);
    let codecs = mmio.read_u16(STATESTS) & 0x7fff;
    mmio.write_u16(STATESTS, codecs);
    // CORB: 256 entries (QEMU's size register is fixed at 256), pointers at 0.
    let corb = rings_bus + CORB_OFFSET as u64;
    mmio.write_u32(CORBLBASE, corb as u32);
    mmio.write_u32(CORBUBASE, (corb >> 32) as u32);
    mmio.write_u16(CORBWP, 0);
    mmio.write_u16(CORBRP, CORBRP_RST);
    for _ in 0..POLLS {
        if mmio.read_u16(CORBRP) & CORBRP_RST != 0 {
            break;
        }
    }
    mmio.write_u16(CORBRP, 0);
    for _ in 0..POLLS {
        if mmio.read_u16(CORBRP) & CORBRP_RST == 0 {
            break;
        }
    }
    // RIRB: 256 entries, an interrupt for every response.
    let rirb = rings_bus + RIRB_OFFSET as u64;
    mmio.write_u32(RIRBLBASE, rirb as u32);
    mmio.write_u32(RIRBUBASE, (rirb >> 32) as u32);
    mmio.write_u16(RIRBWP, RIRBWP_RST);
    mmio.write_u16(RINTCNT, 1);
    mmio.write_u8(RIRBSTS, RIRBSTS_CLEAR);
    mmio.write_u8(RIRBCTL, RIRBCTL_DMAEN | RIRBCTL_INTCTL);
    mmio.write_u8(CORBCTL, CORBCTL_RUN);
    Ok(codecs)
}

/// Stops every stream and the rings, interrupts off (unbind, before buffers and the IRQ go).
fn quiesce(mmio: &Mmio, streams: usize) {
    mmio.write_u32(INTCTL, 0);
    for index in 0..streams {
        mmio.write_u8(sd(index) + SD_CTL, 0);
    }
    mmio.write_u8(CORBCTL, 0);
    mmio.write_u8(RIRBCTL, 0);
}

struct HdaDriver;

impl Driver for HdaDriver {
    fn probe(&self, ctx: &mut ProbeContext<'_>) -> Result<(), ProbeError> {
        let name = String::from(ctx.device_name());
        let dev = PciDevice::all()
            .find(|d| d.name() == name)
            .ok_or(Errno::ENODEV)?;
        let devres = ctx.devres();
        pcim_enable_device(devres, &dev)?;
        dev.set_master();
        let mmio = pcim_iomap(devres, &dev, 0, DRIVER)?;
        let rings = devm::alloc_coherent(devres, RINGS_BYTES)?;
        let rings_bus = rings
            .try_access()
            .map(|r| r.bus_address())
            .ok_or(Errno::ENOMEM)?;
        let (inputs, outputs, codec_mask) = {
            let regs = mmio.try_access().ok_or(Errno::ENODEV)?;
            if regs.len() < 0x80 {
                pr_err!("{name}: {DRIVER}: BAR 0 is {} bytes", regs.len());
                return Err(Errno::ENODEV.into());
            }
            let gcap = regs.read_u16(GCAP);
            let inputs = usize::from(gcap >> 8 & 0xf);
            let outputs = usize::from(gcap >> 12 & 0xf);
            let bidir = usize::from(gcap >> 3 & 0x1f);
            if gcap == u16::MAX || inputs + outputs + bidir > 30 {
                pr_err!("{name}: {DRIVER}: implausible GCAP {gcap:#06x}");
                return Err(Errno::EIO.into());
            }
            if (regs.len() as usize) < sd(inputs + outputs) {
                pr_err!(
                    "{name}: {DRIVER}: BAR 0 too small for {} streams",
                    inputs + outputs
                );
                return Err(Errno::ENODEV.into());
            }
            quiesce(&regs, inputs + outputs + bidir);
            let codecs = init_controller(&name, &regs, rings_bus)?;
            (inputs, outputs, codecs)
        };
        pcim_alloc_irq_vectors(
            devres,
            &dev,
            1,
            1,
            IrqVectorFlags::MSI | IrqVectorFlags::INTX,
        )?;
        let irq = dev.irq_vector(0).ok_or(Errno::EINVAL)?;
        let (irq_kind, flags) = match crate::drivers::pci::irq_vectors(dev.address()) {
            Some((crate::drivers::pci::IrqVectorKind::Intx, _)) => (
                String::from("INTx"),
                dev.intx_irq().map_or(IrqFlags::NONE, |i| i.request_flags()),
            ),
            Some((kind, _)) => (alloc::format!("{kind}"), IrqFlags::NONE),
            None => return Err(Errno::EINVAL.into()),
        };
        let description = alloc::format!(
            "{} {}",
            lull_pci::names::vendor_name(dev.vendor_id()).unwrap_or("vendor"),
            lull_pci::names::device_name(dev.vendor_id(), dev.device_id())
                .unwrap_or("HD Audio controller")
        );
        let hda = Arc::new(Hda {
            name: name.clone(),
            description,
            mmio,
            rings,
            irq,
            irq_kind,
            inputs,
            outputs,
            codec_mask,
            verbs: Mutex::named(
                "hda::verbs",
                Rings {
                    corb_wp: 0,
                    rirb_rp: 0,
                },
            ),
            rirb_seen: AtomicBool::new(false),
            verb_wake: WaitQueue::new(),
            intctl: IrqSafeLock::new(()),
            slots: (0..inputs + outputs)
                .map(|_| Slot {
                    busy: AtomicBool::new(false),
                    seen: AtomicU8::new(0),
                    periods_done: AtomicU64::new(0),
                    wake: WaitQueue::new(),
                })
                .collect(),
            late_responses: AtomicU64::new(0),
            removed: AtomicBool::new(false),
        });
        {
            let mut bound = BOUND.lock();
            if bound.is_some() {
                return Err(Errno::EBUSY.into());
            }
            *bound = Some(Arc::clone(&hda));
        }
        devres.add_action("snd_hda_intel: forget the controller", || {
            BOUND.lock().take();
        });
        // Stopped before the interrupt and the rings are released.
        let for_stop = Arc::clone(&hda);
        devres.add_action("snd_hda_intel: stop DMA", move || {
            if let Some(mmio) = for_stop.mmio.try_access() {
                quiesce(&mmio, for_stop.slots.len());
            }
            // A stream or verb still waiting finds the controller gone.
            for_stop.removed.store(true, Ordering::Release);
            for slot in &for_stop.slots {
                slot.wake.wake_all();
            }
            for_stop.rirb_seen.store(true, Ordering::Release);
            for_stop.verb_wake.wake_all();
        });
        devm::request_irq(devres, irq, interrupt, flags, DRIVER, DevId::of(&*hda))?;
        // At unbind this runs first: the controller is quiet before its IRQ is freed (the
        // action above covers a probe that fails before the IRQ is requested).
        let for_quiesce = Arc::clone(&hda);
        devres.add_action("snd_hda_intel: quiesce before free_irq", move || {
            if let Some(mmio) = for_quiesce.mmio.try_access() {
                quiesce(&mmio, for_quiesce.slots.len());
            }
        });
        {
            let regs = hda.mmio.try_access().ok_or(Errno::ENODEV)?;
            regs.write_u32(INTCTL, INTCTL_GIE | INTCTL_CIE);
        }
        printk!(
            "{name}: {DRIVER}: HD Audio at IRQ {irq} ({}), {inputs} input and {outputs} output \
             streams, codecs {:#06x}",
            hda.irq_kind,
            codec_mask
        );
        // The ASoC card on the first codec (the codec, platform and machine drivers of
        // `hda_soc`); without one the controller stays usable through the `hda` command.
        if let Some(address) = (0..15u8).find(|a| codec_mask & (1 << a) != 0) {
            match super::hda_soc::attach(address) {
                Ok(index) => {
                    devres.add_action("snd_hda_intel: unregister the card", move || {
                        super::soc::unregister_card(index);
                    });
                    printk!("{name}: {DRIVER}: codec {address}: card {index} (q35-hda)");
                }
                Err(error) => pr_err!("{name}: {DRIVER}: codec {address}: no card: {error}"),
            }
        }
        Ok(())
    }
}

/// Registers the driver on the `pci` bus.
pub fn register() {
    let ids = alloc::vec![PciMatchId::device(0x8086, 0x293e)];
    if let Err(error) =
        crate::drivers::base::register_driver(DriverDesc::new("pci", DRIVER, ids, HdaDriver))
    {
        pr_err!("{DRIVER}: cannot register the driver: {error}");
    }
}

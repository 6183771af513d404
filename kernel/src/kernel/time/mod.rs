//! Time: clocksources, timekeeping, clock event devices, hrtimers, the tick and NO_HZ idle.
//!
//! The logic lives in the portable, host-tested `lull-time` crates; this module binds it to
//! the hardware (`devices.rs`) and to the kernel (interrupts, idle, procfs, shell).
//!
//! Every CPU has its own time state (`CPU_TIME[cpu]`: its tick device, hrtimer bases, timer
//! wheels, tick-sched), reached through the per-CPU guard; only jiffies and the clocksources
//! are global. Which CPU advances jiffies is decided by `lull-time` (the first CPU with a
//! running tick takes the duty, and hands it back when its tick stops for idle).
//!
//! Locks, outermost first (each is IRQ-safe): `CPU_TIME[cpu]` → `JIFFIES` → `CLOCKS`.
//! `CLOCKS` is a leaf and may be taken from any context, including timer callbacks. A CPU takes
//! another CPU's `CPU_TIME` only to read it for procfs/shell, one at a time (no two are ever
//! held together, so lockdep checks them as one class), and never waits for another CPU while
//! holding one.

mod early;
mod proc;
mod sleep;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use lull_cmdline::{Kind, ParamSpec};
use lull_time::clockevents::{ClockEventDevice, Features};
use lull_time::clocksource::{
    ClockSource, ClockSourceId, ClockSourceRegistry, Watchdog, WatchdogVerdict,
};
use lull_time::tick::{
    JiffiesClock, PerCpuTime, TickConfig, TickContext, WheelAction, WheelFunction, HZ,
};
use lull_time::timekeeping::Timekeeper;
use lull_time::timer_stats::StartInfo;

use crate::arch::acpi::AcpiInfo;
use crate::arch::{apic, cpu, hpet::Hpet, interrupts};
use crate::kernel::locking::{InterruptsDisabled, IrqSafeLock, PerCpu, MAX_CPUS};
use crate::kernel::paravirt;
use crate::{pr_warn, printk};

use crate::drivers::clocksource as devices;
pub use crate::drivers::clocksource::{TickDevice, LOCAL_TIMER_VECTOR};
pub use early::{finish_calibration, refine_tsc_hz, set_boot_tsc, start_calibration, tsc_hz};
pub use proc::{proc_timer_list, proc_timer_stats, proc_timer_stats_write};
pub(crate) use sleep::with_sleep_timer;
pub use sleep::{msleep, sleep_ns, sleep_until};

/// Time parameters.
pub const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "clocksource",
        kind: Kind::Str,
        default: "",
        help: "Use this clocksource (kvm-clock, tsc, hpet, acpi_pm) instead of the best rated one.",
    },
    ParamSpec {
        name: "nohz",
        kind: Kind::Bool,
        default: "on",
        help: "Stop the periodic tick while a CPU idles (off: tick at HZ always).",
    },
    ParamSpec {
        name: "highres",
        kind: Kind::Bool,
        default: "on",
        help: "Run the tick device in one-shot mode for high-resolution timers.",
    },
];

pub(crate) type CpuTime = PerCpuTime<TickDevice, TimeContext>;

/// Clocksources and timekeeping (a leaf lock).
struct Clocks {
    registry: ClockSourceRegistry,
    sources: Vec<Box<dyn ClockSource + Send>>,
    current: ClockSourceId,
    timekeeper: Timekeeper,
    /// Monotonic ns the early TSC clock had reached when the timekeeper took over.
    base_ns: u64,
    watchdog: Option<Watchdog>,
}

static CLOCKS: IrqSafeLock<Option<Clocks>> = IrqSafeLock::named("time::CLOCKS", None);
static JIFFIES: IrqSafeLock<Option<JiffiesClock>> = IrqSafeLock::named("time::JIFFIES", None);
/// Each CPU's time state (`None` until that CPU's tick starts).
static CPU_TIME: PerCpu<IrqSafeLock<Option<CpuTime>>> =
    PerCpu::new([const { IrqSafeLock::named("time::CPU_TIME", None) }; MAX_CPUS]);
/// The tick configuration the boot CPU chose (secondary CPUs use the same).
static TICK_CONFIG: spin::Once<TickConfig> = spin::Once::new();
/// Whether idle may stop the tick (nohz on, one-shot device, clocksource verified).
static NOHZ_READY: AtomicBool = AtomicBool::new(false);
static NOHZ_WANTED: AtomicBool = AtomicBool::new(true);
/// Vector the tick device interrupts on.
static TICK_VECTOR: AtomicU64 = AtomicU64::new(LOCAL_TIMER_VECTOR as u64);

/// Callbacks' view of the kernel (Linux's context for `update_process_times` & co).
///
/// Callbacks run with `CPU_TIME` and `JIFFIES` held, so they must not take those locks: what
/// they need from them is carried here.
pub struct TimeContext {
    /// Jiffies as of this interrupt (kept current by `jiffies_advanced`).
    jiffies: u64,
}

impl TimeContext {
    fn new(jiffies: &JiffiesClock) -> Self {
        Self {
            jiffies: jiffies.jiffies(),
        }
    }
}

impl TickContext for TimeContext {
    fn jiffies_advanced(&mut self, ticks: u64, _now_ns: u64) {
        self.jiffies += ticks;
        // Fold the elapsed cycles into the timekeeper before a narrow counter can wrap.
        if let Some(clocks) = CLOCKS.lock().as_mut() {
            let cycles = clocks.sources[clocks.current.index()].read();
            clocks.timekeeper.update(cycles);
        }
    }
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns (set from the RTC at boot).
static REALTIME_OFFSET_NS: core::sync::atomic::AtomicI64 = core::sync::atomic::AtomicI64::new(0);

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian calendar).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = month as i64;
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day as i64 - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

pub fn unix_seconds(rtc: &crate::arch::rtc::RtcTime) -> i64 {
    days_from_civil(rtc.year as i64, rtc.month, rtc.day) * 86_400
        + rtc.hour as i64 * 3600
        + rtc.minute as i64 * 60
        + rtc.second as i64
}

/// Wall-clock nanoseconds since the Unix epoch (CLOCK_REALTIME).
pub fn realtime_ns() -> i64 {
    uptime_ns() as i64 + REALTIME_OFFSET_NS.load(Ordering::Relaxed)
}

/// Formats a Unix time as `YYYY-MM-DD HH:MM:SS` (the inverse of `days_from_civil`).
pub fn format_utc(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    alloc::format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Nanoseconds since boot (CLOCK_MONOTONIC).
pub fn uptime_ns() -> u64 {
    let clocks = CLOCKS.lock();
    match clocks.as_ref() {
        Some(clocks) => {
            let cycles = clocks.sources[clocks.current.index()].read();
            clocks.base_ns + clocks.timekeeper.monotonic_ns(cycles)
        }
        None => early::uptime_ns(),
    }
}

/// Name of the clocksource in use.
pub fn current_clocksource() -> &'static str {
    CLOCKS
        .lock()
        .as_ref()
        .and_then(|c| c.registry.get(c.current).map(|info| info.name))
        .unwrap_or("tsc-early")
}

/// Registered clocksources: (name, rating, frequency, unstable, verified, current).
pub fn clocksources() -> Vec<(&'static str, u32, u64, bool, bool, bool)> {
    let clocks = CLOCKS.lock();
    let Some(clocks) = clocks.as_ref() else {
        return Vec::new();
    };
    clocks
        .registry
        .iter()
        .map(|(id, info)| {
            (
                info.name,
                info.rating,
                info.frequency_hz,
                info.unstable,
                info.valid_for_high_res,
                id == clocks.current,
            )
        })
        .collect()
}

/// Average cost of one read of clocksource `name` over `reads` back-to-back reads, in TSC
/// cycles (`bench clock`; interrupts off while measuring).
pub fn clocksource_read_cycles(name: &str, reads: u64) -> Option<u64> {
    let clocks = CLOCKS.lock();
    let clocks = clocks.as_ref()?;
    let id = clocks.registry.find(name)?;
    let source = &clocks.sources[id.index()];
    let start = cpu::rdtsc();
    for _ in 0..reads {
        core::hint::black_box(source.read());
    }
    Some((cpu::rdtsc() - start) / reads.max(1))
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
/// Reads clocksource `name` directly (for in-kernel tests).
pub fn read_clocksource(name: &str) -> Option<(u64, u64, u64)> {
    let clocks = CLOCKS.lock();
    let clocks = clocks.as_ref()?;
    let id = clocks.registry.find(name)?;
    let info = clocks.registry.get(id)?;
    Some((
        clocks.sources[id.index()].read(),
        info.frequency_hz,
        info.mask,
    ))
}

/// Hardware found at boot that the time code can drive.
pub struct Hardware {
    pub hpet: Option<Hpet>,
    /// IOAPIC inputs 16-23 the HPET comparator 0 can be routed to (bit n: GSI n).
    pub hpet_routes: u32,
    /// IOAPIC input of the PIT (ISA IRQ 0 after overrides).
    pub pit_gsi: Option<u8>,
    pub lapic_bus_hz: u64,
    pub tsc_deadline: bool,
}

impl Hardware {
    /// The IOAPIC input for HPET comparator 0: the highest it can reach that no one has
    /// requested now (PCI INTx lines share 16-23 with it: q35's AC'97 is on 23), else the
    /// highest. Chosen when a user of the comparator asks, not once at boot, because drivers
    /// take their lines later.
    pub fn hpet_gsi(&self) -> Option<u8> {
        self.hpet.as_ref()?;
        let capable = || {
            (16..24u8)
                .rev()
                .filter(|gsi| self.hpet_routes & (1 << gsi) != 0)
        };
        capable()
            .find(|&gsi| crate::kernel::irq::irq_vector(u32::from(gsi)).is_none())
            .or_else(|| capable().next())
    }
}

static HARDWARE: spin::Once<Hardware> = spin::Once::new();

/// Everything found at boot (for tests and `/proc/timer_list`).
pub fn hardware() -> Option<&'static Hardware> {
    HARDWARE.get()
}

fn invariant_tsc() -> bool {
    cpu::cpuid(0x8000_0000, 0).eax >= 0x8000_0007 && cpu::cpuid(0x8000_0007, 0).edx & (1 << 8) != 0
}

/// A LAPIC timer count read between two TSC reads: the count, the TSC at the middle, and how
/// long the read took. A vCPU held up inside a read (its thread preempted on the host, or
/// waiting for QEMU's lock for the APIC access) widens the bracket; a wide one at either end
/// of the window made the bus look up to a fifth slower under host load, and every LAPIC
/// period that short (five 1 ms periods in 4.1 ms). Never inlined, so that every read runs
/// the code the first one translated (see `pit::bracketed_read`).
#[inline(never)]
fn lapic_count_read() -> (u32, u64, u64) {
    let before = cpu::rdtsc();
    let count = apic::timer::current_count();
    let after = cpu::rdtsc();
    (count, before + (after - before) / 2, after - before)
}

/// The start of a LAPIC calibration window opened at the top of [`init`]: the clocksources
/// are set up while it runs (milliseconds of first-time code under TCG), so the calibration
/// rarely has to spin for its 1 ms.
struct LapicWindow {
    start_count: u32,
    start_tsc: u64,
    start_width: u64,
}

fn open_lapic_window() -> LapicWindow {
    apic::timer::start_masked_count(u32::MAX);
    // A warm-up read, discarded: under TCG the first one pays for translating this code.
    let _ = lapic_count_read();
    let (start_count, start_tsc, start_width) = lapic_count_read();
    LapicWindow {
        start_count,
        start_tsc,
        start_width,
    }
}

/// Measures the LAPIC timer's input clock against the (calibrated) TSC over at least 1 ms:
/// the window `open` started when both of its ends were read quickly, else fresh 1 ms windows.
fn calibrate_lapic_bus_hz(open: LapicWindow) -> u64 {
    let tsc_hz = tsc_hz().max(1);
    let read = lapic_count_read;
    let tight = tsc_hz / 200_000; // 5 us at each end of a 1 ms window: within 0.5 %
    if open.start_width <= tight {
        while cpu::rdtsc() - open.start_tsc < tsc_hz / 1000 {
            core::hint::spin_loop();
        }
        let (end_count, end_tsc, end_width) = read();
        // A count that reached zero stopped: the window says nothing then (over a minute at
        // QEMU's bus rate; only a vCPU stopped that long gets there).
        if end_width <= tight && end_count != 0 {
            apic::timer::stop();
            let ticks = open.start_count.saturating_sub(end_count) as u128;
            return (ticks * tsc_hz as u128 / (end_tsc - open.start_tsc).max(1) as u128) as u64;
        }
    }
    let mut best = 0;
    // Attempt 0 is a 10 us warm-up, discarded: under TCG its reads include translating this
    // code (30-130 us brackets, measured), which would cost a whole 1 ms window.
    for attempt in 0..6 {
        let window = if attempt == 0 {
            tsc_hz / 100_000
        } else {
            tsc_hz / 1000
        };
        apic::timer::start_masked_count(u32::MAX);
        let (start_count, start_tsc, start_width) = read();
        while cpu::rdtsc() - start_tsc < window {
            core::hint::spin_loop();
        }
        let (end_count, end_tsc, end_width) = read();
        apic::timer::stop();
        let ticks = start_count.saturating_sub(end_count) as u128;
        let hz = (ticks * tsc_hz as u128 / (end_tsc - start_tsc).max(1) as u128) as u64;
        if attempt == 0 {
            continue;
        }
        if start_width <= tight && end_width <= tight {
            return hz;
        }
        best = best.max(hz);
    }
    pr_warn!("clockevents: lapic calibration disturbed five times; {best} Hz may be off");
    best
}

/// Registers clocksources, selects one (honouring `clocksource=`), starts timekeeping, and
/// probes the clock event hardware. Called once on the boot CPU, interrupts disabled.
pub fn init(acpi: Option<&AcpiInfo>) {
    let lapic_window = open_lapic_window();
    let parsed = crate::kernel::params::parsed();
    let mut registry = ClockSourceRegistry::new();
    let mut sources: Vec<Box<dyn ClockSource + Send>> = Vec::new();
    let invariant = invariant_tsc();
    let tsc = devices::TscSource {
        hz: tsc_hz(),
        invariant,
    };
    let mut add = |source: Box<dyn ClockSource + Send>, needs_watchdog: bool| match registry
        .register(source.as_ref(), needs_watchdog)
    {
        Ok(_) => sources.push(source),
        Err(error) => pr_warn!("clocksource: {error}"),
    };
    add(Box::new(tsc), !invariant);
    let hpet = acpi
        .and_then(|info| info.hpet_address)
        .and_then(Hpet::probe);
    if let Some(hpet) = hpet {
        hpet.enable(false);
        add(Box::new(devices::HpetSource(hpet)), false);
    }
    if let Some(register) = acpi.and_then(|info| info.pm_timer) {
        let bits32 = acpi.is_some_and(|info| info.pm_timer_32bit);
        add(Box::new(devices::AcpiPmSource { register, bits32 }), false);
    }
    if paravirt::uses_kvm(paravirt::Op::Clock) {
        let stable_bit = paravirt::kvm_cpuid()
            .is_some_and(|cpuid| cpuid.has(crate::arch::kvm::feature::CLOCKSOURCE_STABLE_BIT));
        match devices::kvmclock::KvmClock::new(stable_bit) {
            Some(clock) => {
                printk!(
                    "kvm-clock: per-CPU pvclock areas registered{}",
                    if clock.stable() {
                        ", TSC-stable"
                    } else {
                        ", not TSC-stable (readings clamped monotonic)"
                    }
                );
                add(Box::new(clock), false);
            }
            None => pr_warn!("kvm-clock: the host did not fill the pvclock area; not used"),
        }
    }

    let wanted = parsed
        .get_str("clocksource")
        .filter(|name| !name.is_empty());
    let current = match registry.select(wanted) {
        Ok(id) => id,
        Err(error) => {
            pr_warn!("clocksource: {error}");
            registry.select(None).unwrap_or_else(|_| {
                registry
                    .iter()
                    .next()
                    .map(|(id, _)| id)
                    .expect("tsc registered")
            })
        }
    };
    // Watchdog reference: the best-rated source other than the TSC (kvm-clock when present:
    // it is the hypervisor's own scaling of the host clock).
    let watchdog = registry
        .iter()
        .filter(|(_, info)| info.name != "tsc")
        .max_by_key(|(_, info)| info.rating)
        .map(|(id, _)| Watchdog::new(id));
    if watchdog.is_none() {
        // Nothing to check the TSC against (QEMU microvm has no HPET or PM timer): trust it,
        // as there is no better clock to fall back to, and say so.
        if let Some(tsc) = registry.find("tsc") {
            if registry
                .get(tsc)
                .is_some_and(|info| !info.valid_for_high_res)
            {
                let _ = registry.mark_verified(tsc);
                pr_warn!("clocksource: no watchdog reference; trusting the tsc unverified");
            }
        }
    }
    let info = registry
        .get(current)
        .expect("selected source exists")
        .clone();
    let base_ns = early::uptime_ns();
    let timekeeper = Timekeeper::new(current, &info, sources[current.index()].read());
    printk!(
        "clocksource: {} ({} Hz, rating {}){}; registered:{}",
        info.name,
        info.frequency_hz,
        info.rating,
        if wanted.is_some() { " by request" } else { "" },
        registry.iter().fold(String::new(), |mut s, (_, i)| {
            s.push(' ');
            s.push_str(i.name);
            s
        })
    );
    let mut timekeeper = timekeeper;
    if let Some(epoch_ns) = kvm_wall_clock_ns() {
        let cycles = sources[current.index()].read();
        timekeeper.set_realtime(epoch_ns, cycles);
        let monotonic = base_ns + timekeeper.monotonic_ns(cycles);
        REALTIME_OFFSET_NS.store(epoch_ns - monotonic as i64, Ordering::Relaxed);
        printk!(
            "kvm-clock: wall clock {} (no CMOS probe)",
            format_utc(epoch_ns / 1_000_000_000)
        );
    } else {
        cmos_realtime(&mut timekeeper, sources[current.index()].as_ref(), base_ns);
    }
    *CLOCKS.lock() = Some(Clocks {
        registry,
        sources,
        current,
        timekeeper,
        base_ns,
        watchdog,
    });

    // Clock event hardware.
    // The PIT is used as a clock event device only where the MADT says where IRQ 0 arrives
    // (PC-style wiring, as on q35). QEMU's microvm lists no override and its PIT interrupt
    // does not reach the IOAPIC input the identity mapping would imply.
    let pit_gsi = acpi.and_then(|info| {
        info.overrides
            .iter()
            .find(|o| o.isa_irq == 0)
            .map(|o| o.gsi as u8)
    });
    let hpet_routes = hpet
        .as_ref()
        .map_or(0, |h| h.route_capabilities(0) & 0x00ff_0000);
    let lapic_bus_hz = calibrate_lapic_bus_hz(lapic_window);
    let tsc_deadline = apic::timer::tsc_deadline_supported();
    printk!(
        "clockevents: lapic {} Hz{}{}{}",
        lapic_bus_hz,
        if tsc_deadline { ", lapic-deadline" } else { "" },
        if hpet_routes != 0 { ", hpet" } else { "" },
        if pit_gsi.is_some() { ", pit" } else { "" }
    );
    HARDWARE.call_once(|| Hardware {
        hpet,
        hpet_routes,
        pit_gsi,
        lapic_bus_hz,
        tsc_deadline,
    });
    NOHZ_WANTED.store(parsed.get_bool("nohz").unwrap_or(true), Ordering::Relaxed);
}

/// Every clock event device available on this machine, best first.
pub fn available_devices() -> Vec<TickDevice> {
    let Some(hw) = hardware() else {
        return Vec::new();
    };
    let mut devices = Vec::new();
    if hw.tsc_deadline {
        devices.push(TickDevice::LapicDeadline { tsc_hz: tsc_hz() });
    }
    if hw.lapic_bus_hz > 0 {
        devices.push(TickDevice::Lapic {
            bus_hz: hw.lapic_bus_hz,
        });
    }
    if let (Some(hpet), Some(gsi)) = (hw.hpet, hw.hpet_gsi()) {
        devices.push(TickDevice::Hpet {
            hpet,
            timer: 0,
            gsi,
        });
    }
    if hw.pit_gsi.is_some() {
        devices.push(TickDevice::Pit);
    }
    devices.sort_by_key(|d| core::cmp::Reverse(d.rating()));
    devices
}

/// The interrupt vector a device raises.
pub fn device_vector(device: &TickDevice) -> u8 {
    let gsi = match device {
        TickDevice::LapicDeadline { .. } | TickDevice::Lapic { .. } => return LOCAL_TIMER_VECTOR,
        TickDevice::Hpet { gsi, .. } => *gsi,
        TickDevice::Pit => hardware().and_then(|h| h.pit_gsi).unwrap_or(0),
    };
    interrupts::DEVICE_VECTOR_BASE + gsi
}

/// Routes a global (IOAPIC) device's line to its vector.
pub fn route_device(device: &TickDevice) {
    let gsi = match device {
        TickDevice::Hpet { gsi, .. } => *gsi,
        TickDevice::Pit => hardware().and_then(|h| h.pit_gsi).unwrap_or(0),
        _ => return,
    };
    crate::kernel::irq::route_gsi(
        gsi as u32,
        device_vector(device),
        device.name(),
        false,
        false,
    );
}

/// Gives back a line [`route_device`] routed (a device tried and not kept).
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
pub fn release_device(device: &TickDevice) {
    let gsi = match device {
        TickDevice::Hpet { gsi, .. } => *gsi,
        TickDevice::Pit => match hardware().and_then(|h| h.pit_gsi) {
            Some(gsi) => gsi,
            None => return,
        },
        _ => return,
    };
    crate::kernel::irq::release_tick_line(u32::from(gsi));
}

/// Starts the tick on the boot CPU with the best device. Called once, interrupts disabled.
pub fn start_tick() {
    let parsed = crate::kernel::params::parsed();
    let Some(device) = available_devices().into_iter().next() else {
        pr_warn!("clockevents: no clock event device; timers will not fire");
        return;
    };
    let mut config = TickConfig {
        nohz: parsed.get_bool("nohz").unwrap_or(true),
        high_res: parsed.get_bool("highres").unwrap_or(true),
        ..TickConfig::default()
    };
    let mut has_watchdog = false;
    if let Some(clocks) = CLOCKS.lock().as_ref() {
        config.max_deferment_ns = clocks.timekeeper.max_deferment_ns();
        has_watchdog = clocks.watchdog.is_some();
    }
    let config = *TICK_CONFIG.call_once(|| config);
    let vector = device_vector(&device);
    route_device(&device);
    interrupts::set_handler(vector, timer_interrupt);
    TICK_VECTOR.store(vector as u64, Ordering::Relaxed);
    let name = device.name();
    let interrupts_off = InterruptsDisabled::new();
    let cpu = interrupts_off.cpu_index();
    let mut slot = CPU_TIME.this_cpu(&interrupts_off).lock();
    let now = uptime_ns();
    let mut jiffies_guard = JIFFIES.lock();
    let jiffies = jiffies_guard.insert(JiffiesClock::new(0, now, HZ).expect("HZ is valid"));
    match CpuTime::new(cpu as u32, device, config, jiffies) {
        Ok(mut percpu) => {
            if let Err(error) = percpu.start(now, jiffies) {
                pr_warn!("tick: cannot start on {name}: {error:?}");
            }
            // The watchdog's first sample (its baseline) is taken now, so the TSC can be
            // verified one interval (0.5 s) after boot. Without a reference clock (microvm)
            // there is nothing to sample and no timer to arm.
            if has_watchdog {
                let mut context = TimeContext::new(jiffies);
                let _ = clocksource_watchdog(&mut context, 0);
                let watchdog = percpu.timer_create(
                    WheelFunction {
                        name: "clocksource_watchdog",
                        function: clocksource_watchdog,
                    },
                    0,
                    true,
                );
                if let Ok(id) = watchdog {
                    let _ = percpu.timer_modify(
                        id,
                        jiffies.jiffies() + WATCHDOG_INTERVAL_JIFFIES,
                        now,
                        StartInfo::kernel("clocksource_start_watchdog"),
                    );
                }
            }
            printk!(
                "tick: {name} in {:?} mode, HZ={HZ}, nohz {}, highres {}",
                percpu.mode(),
                if config.nohz { "on" } else { "off" },
                if config.high_res { "on" } else { "off" }
            );
            let _ = percpu.set_realtime_offset(REALTIME_OFFSET_NS.load(Ordering::Relaxed), now);
            *slot = Some(percpu);
        }
        Err(error) => pr_warn!("tick: {name} unusable: {error:?}"),
    }
    drop(jiffies_guard);
    drop(slot);
    drop(interrupts_off);
    crate::kernel::pm::register_notifier(crate::kernel::pm::Notifier {
        name: "clockevents",
        priority: 0,
        call: pm_notifier,
    });
    update_nohz_ready();
}

/// Realtime from the CMOS RTC (when present) onto `timekeeper`.
fn cmos_realtime(timekeeper: &mut Timekeeper, source: &dyn ClockSource, base_ns: u64) {
    match crate::arch::rtc::read() {
        Some(rtc) => {
            let epoch_ns = unix_seconds(&rtc) * 1_000_000_000;
            let cycles = source.read();
            timekeeper.set_realtime(epoch_ns, cycles);
            // Our monotonic clock is `base_ns` + the timekeeper's; keep the offset against ours.
            let monotonic = base_ns + timekeeper.monotonic_ns(cycles);
            REALTIME_OFFSET_NS.store(epoch_ns - monotonic as i64, Ordering::Relaxed);
            printk!(
                "rtc: {:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                rtc.year,
                rtc.month,
                rtc.day,
                rtc.hour,
                rtc.minute,
                rtc.second
            );
        }
        None => pr_warn!("rtc: no usable CMOS clock; realtime starts at the epoch"),
    }
}

/// The wall clock from kvm-clock (Unix ns now), when the wall-clock operation uses KVM.
fn kvm_wall_clock_ns() -> Option<i64> {
    if !paravirt::uses_kvm(paravirt::Op::WallClock) {
        return None;
    }
    let (sec, nsec) = crate::arch::kvm::read_wall_clock()?;
    let system_ns = devices::kvmclock::system_time_ns()?;
    let boot_ns = i64::from(sec) * 1_000_000_000 + i64::from(nsec);
    Some(boot_ns + system_ns as i64)
}

/// Starts this secondary CPU's tick on its own per-CPU device (its LAPIC timer). Called once
/// on the CPU coming online, interrupts disabled, after the boot CPU's tick started.
pub fn start_secondary_tick() {
    let Some(config) = TICK_CONFIG.get().copied() else {
        pr_warn!("tick: the boot CPU has no tick; this CPU runs without one");
        return;
    };
    // Only a per-CPU device can be this CPU's own (an HPET comparator or the PIT is global).
    let Some(device) = available_devices()
        .into_iter()
        .find(|device| device.features().contains(Features::PER_CPU))
    else {
        pr_warn!("tick: no per-CPU clock event device; this CPU runs without a tick");
        return;
    };
    let name = device.name();
    let interrupts_off = InterruptsDisabled::new();
    let cpu = interrupts_off.cpu_index();
    let mut slot = CPU_TIME.this_cpu(&interrupts_off).lock();
    let now = uptime_ns();
    let mut jiffies_guard = JIFFIES.lock();
    let Some(jiffies) = jiffies_guard.as_mut() else {
        return;
    };
    match CpuTime::new(cpu as u32, device, config, jiffies) {
        Ok(mut percpu) => {
            if let Err(error) = percpu.start(now, jiffies) {
                pr_warn!("tick: CPU {cpu} cannot start {name}: {error:?}");
            }
            let _ = percpu.set_realtime_offset(REALTIME_OFFSET_NS.load(Ordering::Relaxed), now);
            *slot = Some(percpu);
        }
        Err(error) => pr_warn!("tick: CPU {cpu}: {name} unusable: {error:?}"),
    }
}

/// PM notifier: stops this CPU's tick device before power-off, so no timer fires mid-shutdown.
/// (The other CPUs were stopped, timers silenced, by the `smp` notifier, which runs first.)
fn pm_notifier(_event: crate::kernel::pm::PmEvent) {
    let interrupts_off = InterruptsDisabled::new();
    let mut percpu = CPU_TIME.this_cpu(&interrupts_off).lock();
    let now = uptime_ns();
    let mut jiffies = JIFFIES.lock();
    if let (Some(percpu), Some(jiffies)) = (percpu.as_mut(), jiffies.as_mut()) {
        let _ = percpu.stop(now, jiffies);
    }
}

/// Watchdog period: 0.5 s, as Linux's WATCHDOG_INTERVAL.
const WATCHDOG_INTERVAL_JIFFIES: u64 = HZ as u64 / 2;

/// Deferrable wheel timer: checks the watched clocksource against the reference. Being
/// deferrable it never wakes an idle CPU; it runs while the CPU is awake anyway.
fn clocksource_watchdog(context: &mut TimeContext, _data: u64) -> WheelAction {
    // Messages are printed after CLOCKS is released: printk reads the clock.
    let mut message: Option<String> = None;
    let mut stopped = false;
    {
        let mut guard = CLOCKS.lock();
        let Some(clocks) = guard.as_mut() else {
            return WheelAction::Done;
        };
        let Some(watchdog) = clocks.watchdog.as_mut() else {
            return WheelAction::Done;
        };
        if paravirt::take_guest_stopped() {
            // Paused, snapshotted or migrated: the gap proves nothing about the TSC.
            watchdog.reset();
            stopped = true;
        }
        let reference = watchdog.reference();
        let Some(tsc) = clocks.registry.find("tsc") else {
            return WheelAction::Done;
        };
        let reference_cycles = clocks.sources[reference.index()].read();
        let tsc_cycles = clocks.sources[tsc.index()].read();
        let reference_name = clocks.registry.get(reference).map_or("?", |i| i.name);
        match watchdog.check(&mut clocks.registry, reference_cycles, tsc, tsc_cycles) {
            Ok(WatchdogVerdict::Verified) => {
                message = Some(alloc::format!(
                    "clocksource: tsc verified against {reference_name}"
                ));
            }
            Ok(WatchdogVerdict::Unstable {
                watched_ns,
                reference_ns,
            }) => {
                let mut text = alloc::format!(
                    "clocksource: marking tsc unstable (tsc counted {watched_ns} ns, {reference_name} {reference_ns} ns)"
                );
                if clocks.current == tsc {
                    if let Ok(next) = clocks.registry.select(None) {
                        let old_cycles = clocks.sources[tsc.index()].read();
                        let new_cycles = clocks.sources[next.index()].read();
                        if let Some(info) = clocks.registry.get(next).cloned() {
                            clocks
                                .timekeeper
                                .change_source(next, &info, old_cycles, new_cycles);
                            clocks.current = next;
                            text.push_str("; switched to ");
                            text.push_str(info.name);
                        }
                    }
                }
                message = Some(text);
            }
            _ => {}
        }
    }
    if stopped {
        crate::pr_debug!("clocksource: the host stopped this VM; watchdog baseline taken anew");
    }
    if let Some(message) = message {
        printk!("{message}");
    }
    update_nohz_ready();
    WheelAction::RearmAt(context.jiffies + WATCHDOG_INTERVAL_JIFFIES)
}

fn update_nohz_ready() {
    let verified = CLOCKS
        .lock()
        .as_ref()
        .and_then(|c| c.registry.get(c.current).map(|i| i.valid_for_high_res))
        .unwrap_or(false);
    let ready = verified && NOHZ_WANTED.load(Ordering::Relaxed);
    if ready && !NOHZ_READY.swap(true, Ordering::Relaxed) {
        printk!(
            "NOHZ: tickless idle enabled (clocksource {})",
            current_clocksource()
        );
    }
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
/// Jiffies since boot.
pub fn current_jiffies() -> u64 {
    JIFFIES.lock().as_ref().map_or(0, |j| j.jiffies())
}

/// The tick device's interrupt handler (hard-IRQ context): runs this CPU's due timers.
fn timer_interrupt(_vector: u8) {
    let interrupts_off = InterruptsDisabled::new();
    let now = uptime_ns();
    let mut percpu = CPU_TIME.this_cpu(&interrupts_off).lock();
    let mut jiffies = JIFFIES.lock();
    if let (Some(percpu), Some(jiffies)) = (percpu.as_mut(), jiffies.as_mut()) {
        let mut context = TimeContext::new(jiffies);
        let _ = percpu.interrupt(now, jiffies, &mut context);
    }
    drop(jiffies);
    drop(percpu);
    // The scheduler lock is taken after the time locks are released (timer callbacks take it
    // inside them; the tick does not need them).
    crate::kernel::sched::tick();
}

/// Sleeps the CPU until the next interrupt, stopping its tick first if nothing is due soon
/// (NO_HZ idle). Called with interrupts disabled; returns with them enabled.
pub fn idle() {
    let tickless = NOHZ_READY.load(Ordering::Relaxed);
    if tickless {
        let interrupts_off = InterruptsDisabled::new();
        let now = uptime_ns();
        let mut percpu = CPU_TIME.this_cpu(&interrupts_off).lock();
        let mut jiffies = JIFFIES.lock();
        if let (Some(percpu), Some(jiffies)) = (percpu.as_mut(), jiffies.as_mut()) {
            let _ = percpu.idle_enter(now, jiffies);
        }
    }
    cpu::enable_interrupts_and_halt();
    if tickless {
        let interrupts_off = InterruptsDisabled::new();
        let now = uptime_ns();
        let mut percpu = CPU_TIME.this_cpu(&interrupts_off).lock();
        let mut jiffies = JIFFIES.lock();
        if let (Some(percpu), Some(jiffies)) = (percpu.as_mut(), jiffies.as_mut()) {
            let mut context = TimeContext::new(jiffies);
            let _ = percpu.idle_exit(now, jiffies, &mut context);
        }
    }
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
/// Whether idle CPUs stop their tick (nohz on and a verified clocksource).
pub fn nohz_active() -> bool {
    NOHZ_READY.load(Ordering::Relaxed)
}

/// One CPU's tick and idle state, for the shell's `cpus`.
pub struct CpuTickState {
    pub device: &'static str,
    pub mode: &'static str,
    pub tick_stopped: bool,
    pub idle_calls: u64,
    pub idle_sleeps: u64,
    /// Time idle since boot, including the current idle period.
    pub idle_sleeptime_ns: u64,
    pub does_jiffies: bool,
}

/// The tick state of CPU `cpu` (`None`: it has no tick).
pub fn cpu_tick_state(cpu: usize) -> Option<CpuTickState> {
    let guard = CPU_TIME.on_cpu(cpu).lock();
    let percpu = guard.as_ref()?;
    let sched = percpu.tick_sched();
    // The idle time so far includes the sleep in progress (the tick-sched total grows only
    // when the CPU wakes).
    let ongoing_ns = if sched.idle_active {
        uptime_ns().saturating_sub(sched.idle_entrytime)
    } else {
        0
    };
    let does_jiffies = JIFFIES
        .lock()
        .as_ref()
        .is_some_and(|j| j.do_timer_cpu() == Some(cpu as u32));
    Some(CpuTickState {
        device: percpu.event_device().device().name(),
        mode: match percpu.mode() {
            lull_time::tick::TickDeviceMode::OneShot => "oneshot",
            lull_time::tick::TickDeviceMode::Periodic => "periodic",
        },
        tick_stopped: sched.tick_stopped,
        idle_calls: sched.idle_calls,
        idle_sleeps: sched.idle_sleeps,
        idle_sleeptime_ns: sched.idle_sleeptime + ongoing_ns,
        does_jiffies,
    })
}

/// Local timer interrupts delivered to CPU `cpu` (the `LOC` line of /proc/interrupts).
pub fn local_timer_interrupts(cpu: usize) -> u64 {
    interrupts::count_on(cpu, LOCAL_TIMER_VECTOR)
}

/// Runs `f` on this CPU's time state (its hrtimer bases) with its lock held and interrupts
/// off, with the current monotonic time and this CPU's index; `None` before this CPU's tick
/// started. For code outside the time subsystem that owns a timer of its own (the
/// scheduler's preemption timer, the shell's timers, test probes). `f` must not sleep or take
/// a time lock.
pub(crate) fn with_this_cpu_timers<R>(f: impl FnOnce(&mut CpuTime, u64, usize) -> R) -> Option<R> {
    let interrupts_off = InterruptsDisabled::new();
    let cpu = interrupts_off.cpu_index();
    let mut guard = CPU_TIME.this_cpu(&interrupts_off).lock();
    let percpu = guard.as_mut()?;
    Some(f(percpu, uptime_ns(), cpu))
}

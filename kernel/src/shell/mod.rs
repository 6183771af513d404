//! The serial shell: `lull> ` on COM1, with line editing, fed by the UART interrupt.

pub mod bench;
mod blk;
mod latency;
mod memsum;
mod memtouch;
mod net;
#[cfg(feature = "ktest")]
pub use net::pattern_byte;
mod timer;
use alloc::string::String;
use alloc::vec::Vec;

use crate::arch::{cpu, serial};
use crate::fs::procfs;
use crate::kernel::locking::IrqSafeLock;
use crate::{kprint, kprintln, printk};

/// Bytes received but not yet read by the shell. When it fills, the UART's receive interrupt
/// is switched off (QEMU then holds further input) until the shell drains it: nothing is lost.
struct InputRing {
    bytes: [u8; 4096],
    head: usize,
    len: usize,
    throttled: bool,
}

static INPUT: IrqSafeLock<InputRing> = IrqSafeLock::new(InputRing {
    bytes: [0; 4096],
    head: 0,
    len: 0,
    throttled: false,
});

/// COM1 interrupt handler (hard-IRQ context, or the line's thread under `threadirqs`): moves
/// received bytes into the input ring.
pub fn serial_interrupt(
    _irq: u32,
    _dev: crate::kernel::irq::DevId,
) -> crate::kernel::irq::IrqReturn {
    let mut input = INPUT.lock();
    while input.len < input.bytes.len() {
        let Some(byte) = serial::try_read_byte() else {
            drop(input);
            INPUT_WAIT.wake_all();
            return crate::kernel::irq::IrqReturn::Handled;
        };
        let tail = (input.head + input.len) % input.bytes.len();
        input.bytes[tail] = byte;
        input.len += 1;
    }
    input.throttled = true;
    serial::set_rx_interrupt(false);
    drop(input);
    INPUT_WAIT.wake_all();
    crate::kernel::irq::IrqReturn::Handled
}

/// The shell thread waits here for input (or a power-button press).
static INPUT_WAIT: crate::kernel::sched::WaitQueue = crate::kernel::sched::WaitQueue::new();

/// Wakes the shell thread (the power button was pressed).
fn wake_reader(_event: crate::kernel::pm::PmEvent) {
    INPUT_WAIT.wake_all();
}

/// Waits (the thread asleep on `INPUT_WAIT`) for the next input byte.
fn read_byte() -> u8 {
    loop {
        cpu::disable_interrupts();
        {
            let mut input = INPUT.lock();
            if input.len > 0 {
                let byte = input.bytes[input.head];
                input.head = (input.head + 1) % input.bytes.len();
                input.len -= 1;
                if input.throttled {
                    input.throttled = false;
                    serial::set_rx_interrupt(true);
                }
                drop(input);
                cpu::enable_interrupts();
                return byte;
            }
        }
        if crate::kernel::pm::shutdown_requested() {
            cpu::enable_interrupts();
            printk!("ACPI: power button pressed");
            crate::kernel::pm::power_off();
        }
        cpu::enable_interrupts();
        // Nothing to do: sleep until the UART interrupt (or the power button) wakes us.
        INPUT_WAIT.wait_until(|| INPUT.lock().len > 0 || crate::kernel::pm::shutdown_requested());
    }
}

/// Reads one line with backspace editing. `\r`, `\n` and `\r\n` all end a line.
fn read_line(previous_was_cr: &mut bool) -> String {
    let mut line: Vec<u8> = Vec::new();
    loop {
        let byte = read_byte();
        match byte {
            b'\n' if *previous_was_cr => {
                *previous_was_cr = false;
                continue;
            }
            b'\r' | b'\n' => {
                *previous_was_cr = byte == b'\r';
                kprint!("\n");
                return String::from_utf8_lossy(&line).into_owned();
            }
            0x08 | 0x7f => {
                *previous_was_cr = false;
                if line.pop().is_some() {
                    kprint!("\x08 \x08");
                }
            }
            0x03 => {
                *previous_was_cr = false;
                kprint!("^C\n");
                return String::new();
            }
            byte if byte == b'\t' || (0x20..0x7f).contains(&byte) || byte >= 0x80 => {
                *previous_was_cr = false;
                line.push(byte);
                if byte < 0x80 {
                    kprint!("{}", byte as char);
                }
            }
            _ => *previous_was_cr = false,
        }
    }
}

/// A shell command: name, one-line help, implementation.
struct Command {
    name: &'static str,
    usage: &'static str,
    help: &'static str,
    run: fn(&[&str], &str),
}

const COMMANDS: &[Command] = &[
    Command {
        name: "help",
        usage: "help",
        help: "list commands",
        run: cmd_help,
    },
    Command {
        name: "uname",
        usage: "uname [-a]",
        help: "kernel name, version and build",
        run: cmd_uname,
    },
    Command {
        name: "uptime",
        usage: "uptime",
        help: "time since boot",
        run: cmd_uptime,
    },
    Command {
        name: "cmdline",
        usage: "cmdline [-v]",
        help: "command line length and SHA-256 (-v: text)",
        run: cmd_cmdline,
    },
    Command {
        name: "meminfo",
        usage: "meminfo",
        help: "memory, zones and free pages per order",
        run: cmd_meminfo,
    },
    Command {
        name: "dmesg",
        usage: "dmesg",
        help: "kernel log",
        run: cmd_dmesg,
    },
    Command {
        name: "cat",
        usage: "cat PATH...",
        help: "print a /proc or /sys file",
        run: cmd_cat,
    },
    Command {
        name: "echo",
        usage: "echo TEXT [> PATH]",
        help: "print text, or write it to a /proc or /sys file",
        run: cmd_echo,
    },
    Command {
        name: "ls",
        usage: "ls [DIR]",
        help: "list a /proc or /sys directory",
        run: cmd_ls,
    },
    Command {
        name: "date",
        usage: "date",
        help: "wall-clock time (UTC, from the RTC at boot)",
        run: cmd_date,
    },
    Command {
        name: "hwclock",
        usage: "hwclock [-r|--show]",
        help: "the CMOS RTC's time (UTC), read through the rtc_cmos driver",
        run: |args, _| {
            crate::drivers::wait_for_device_probe();
            kprint!("{}", crate::drivers::rtc::cmd_hwclock(args));
        },
    },
    Command {
        name: "sleep",
        usage: "sleep SECONDS",
        help: "sleep on an hrtimer (tickless idle meanwhile)",
        run: cmd_sleep,
    },
    Command {
        name: "timer",
        usage: "timer MILLISECONDS",
        help: "start a one-shot hrtimer (see timer_list/timer_stats)",
        run: cmd_timer,
    },
    Command {
        name: "latency",
        usage: "latency [SECONDS]",
        help: "1 kHz absolute-timer wake-up latency (cyclictest-like)",
        run: cmd_latency,
    },
    Command {
        name: "clocksource",
        usage: "clocksource",
        help: "registered clocksources and the one in use",
        run: cmd_clocksource,
    },
    Command {
        name: "ps",
        usage: "ps",
        help: "kernel threads: id, CPU, state, class/priority, CPU time, context switches",
        run: cmd_ps,
    },
    Command {
        name: "cpus",
        usage: "cpus",
        help: "CPUs: online state, APIC id, tick device, tick stopped, idle statistics",
        run: cmd_cpus,
    },
    Command {
        name: "lspci",
        usage: "lspci [-n|-v]",
        help: "PCI functions: bus:dev.fn, class, vendor:device (-v: BARs, IRQ, capabilities)",
        run: |args, _| match crate::drivers::pci::lspci(args) {
            Ok(text) => kprint!("{text}"),
            Err(error) => kprintln!("{error}"),
        },
    },
    Command {
        name: "i2cdetect",
        usage: "i2cdetect -l | i2cdetect [-y] [-a] [-q|-r] BUS [FIRST LAST]",
        help: "I2C adapters (-l), or the grid of addresses that answer on one (UU: driver bound)",
        run: |args, _| i2c_tool("i2cdetect", args),
    },
    Command {
        name: "i2cget",
        usage: "i2cget [-f] [-y] [-a] BUS ADDR [REG [b|w|c]]",
        help: "one SMBus read (receive byte, byte data, word data), printed as 0xNN / 0xNNNN",
        run: |args, _| i2c_tool("i2cget", args),
    },
    Command {
        name: "i2cset",
        usage: "i2cset [-f] [-y] [-a] BUS ADDR REG [VALUE [b|w]]",
        help: "one SMBus write (send byte, byte data, word data)",
        run: |args, _| i2c_tool("i2cset", args),
    },
    Command {
        name: "i2cdump",
        usage: "i2cdump [-f] [-y] [-a] BUS ADDR [b]",
        help: "the 256 registers of a chip by byte-data reads, in hex and ASCII",
        run: |args, _| i2c_tool("i2cdump", args),
    },
    Command {
        name: "devres",
        usage: "devres [BUS DEVICE]",
        help: "devices with their managed resources (devres), then the live resource counters",
        run: |args, _| match crate::drivers::base::cmd_devres(args) {
            Ok(text) => kprint!("{text}"),
            Err(error) => kprintln!("{error}"),
        },
    },
    Command {
        name: "gpiodetect",
        usage: "gpiodetect",
        help: "GPIO chips: gpiochipN [label] (N lines)",
        run: |args, _| gpio_tool("gpiodetect", args),
    },
    Command {
        name: "gpioinfo",
        usage: "gpioinfo [CHIP...]",
        help: "every line of the chips: name, consumer, direction, active-low",
        run: |args, _| gpio_tool("gpioinfo", args),
    },
    Command {
        name: "gpioget",
        usage: "gpioget [-l] CHIP OFFSET...",
        help: "read GPIO lines (libgpiod v1 syntax)",
        run: |args, _| gpio_tool("gpioget", args),
    },
    Command {
        name: "gpioset",
        usage: "gpioset [-l] [-m exit|time] [-s SEC] [-u USEC] [-b] CHIP OFFSET=VALUE...",
        help: "drive GPIO lines, held for -m time (in the background with -b)",
        run: |args, _| gpio_tool("gpioset", args),
    },
    Command {
        name: "gpiomon",
        usage: "gpiomon [-l] [-n NUM] [-s] [-r] [-f] [-F FMT] CHIP OFFSET...",
        help: "wait for edges on GPIO lines and print them (until -n events or a key)",
        run: |args, _| cmd_gpiomon(args),
    },
    Command {
        name: "gpiofind",
        usage: "gpiofind NAME",
        help: "the chip and offset of the line called NAME",
        run: |args, _| gpio_tool("gpiofind", args),
    },
    Command {
        name: "speaker-test",
        usage: "speaker-test [-D hw:N] [-t sine|pattern] [-f FREQ] [-A PCT] [-l LOOPS] [-r RATE] [-c CH] [-p US]",
        help: "play a sine tone (50 % of full scale) or a counting pattern, 1 s per loop",
        run: |args, _| match crate::drivers::sound::cmd_speaker_test(args) {
            Ok(text) => kprint!("{text}"),
            Err(error) => kprintln!("{error}"),
        },
    },
    Command {
        name: "arecord",
        usage: "arecord [-D hw:N] [-d SECONDS] [-f S16_LE] [-r RATE] [-c CH]",
        help: "capture through a sound card (its capture path powered); prints the SHA-256",
        run: |args, _| match crate::drivers::sound::cmd_arecord(args) {
            Ok(text) => kprint!("{text}"),
            Err(error) => kprintln!("{error}"),
        },
    },
    Command {
        name: "aplay",
        usage: "aplay -l",
        help: "list the sound cards",
        run: |args, _| match crate::drivers::sound::cmd_aplay(args) {
            Ok(text) => kprint!("{text}"),
            Err(error) => kprintln!("{error}"),
        },
    },
    Command {
        name: "amixer",
        usage: "amixer [-c N] [contents] | sset NAME mute|unmute|toggle|N|N%|-NdB|ITEM",
        help: "a sound card's controls (volumes, switches, routes)",
        run: |args, _| match crate::drivers::sound::cmd_amixer(args) {
            Ok(text) => kprint!("{text}"),
            Err(error) => kprintln!("{error}"),
        },
    },
    Command {
        name: "dapm",
        usage: "dapm [-c N] [WIDGET | pmdown_time [MS] | enable PIN | disable PIN]",
        help: "a sound card's DAPM widgets, their power and the bias level",
        run: |args, _| match crate::drivers::sound::cmd_dapm(args) {
            Ok(text) => kprint!("{text}"),
            Err(error) => kprintln!("{error}"),
        },
    },
    Command {
        name: "hda",
        usage: "hda | hda verb CODEC NID VERB | hda widgets [CODEC] | hda play-test",
        help: "the HD Audio controller: codecs, raw verbs, the widget tree, a 1 kHz test tone",
        run: |args, _| match crate::drivers::sound::hda::cmd_hda(args) {
            Ok(text) => kprint!("{text}"),
            Err(error) => kprintln!("{error}"),
        },
    },
    Command {
        name: "udevadm",
        usage: "udevadm settle",
        help: "wait until the boot-time device probe has finished (its messages printed)",
        run: |args, _| match args {
            ["settle"] | ["settle", ..] => crate::drivers::wait_for_device_probe(),
            _ => kprintln!("usage: udevadm settle"),
        },
    },
    Command {
        name: "hwrng",
        usage: "hwrng [N]",
        help: "N bytes (default 32) from the hardware RNG (virtio-rng), in hex",
        run: |args, _| match crate::drivers::virtio::rng::cmd_hwrng(args) {
            Ok(text) => kprint!("{text}"),
            Err(error) => kprintln!("{error}"),
        },
    },
    Command {
        name: "ip",
        usage: "ip addr|route",
        help: "network interfaces and their addresses, or the routes",
        run: net::cmd_ip,
    },
    Command {
        name: "ping",
        usage: "ping HOST [-c N]",
        help: "ICMP echo to an IPv4 address",
        run: net::cmd_ping,
    },
    Command {
        name: "nc",
        usage: "nc [-u] [--no-hash] [-s BYTES] HOST PORT | nc [-u] [--no-hash] -l PORT [-s BYTES]",
        help: "TCP (or -u UDP) client/server: receive and hash until EOF, or send BYTES of a \
               pattern (i mod 251); --no-hash only counts (TCP throughput)",
        run: net::cmd_nc,
    },
    Command {
        name: "blk",
        usage: "blk list | read|write|sum DEV OFFSET LEN | flush DEV | discard DEV OFFSET LEN",
        help: "block devices: list, hex dump, write a pattern, flush, SHA-256 of a range",
        run: |args, _| blk::run(args),
    },
    Command {
        name: "memsum",
        usage: "memsum [stop]",
        help: "check a 64 KiB pattern a kernel thread keeps rewriting (integrity across migration)",
        run: |args, _| memsum::run(args),
    },
    Command {
        name: "memtouch",
        usage: "memtouch fill SIZE | sum | free",
        help: "keep SIZE (32M, 1G) of pages written with a pattern; read them back (checksum, time)",
        run: |args, _| memtouch::run(args),
    },
    Command {
        name: "apfbench",
        usage: "apfbench",
        help: "async-PF experiment: a spinner's iterations/s while a thread reads the memtouch area",
        run: |args, _| memtouch::run_apfbench(args),
    },
    Command {
        name: "bench",
        usage: "bench pingpong|ipi|irq|lock|clock|spin|pvops [N]",
        help: "microbenchmarks: context switch, IPI, IRQ latency, locks, clock reads, paravirt ops",
        run: cmd_bench,
    },
    Command {
        name: "poweroff",
        usage: "poweroff",
        help: "shut down (ACPI S5)",
        run: cmd_poweroff,
    },
];

fn cmd_bench(args: &[&str], _: &str) {
    if let Err(error) = crate::shell::bench::run(args) {
        kprintln!("bench: {error}");
    }
}

fn cmd_help(_: &[&str], _: &str) {
    for command in COMMANDS {
        kprintln!("  {:<22} {}", command.usage, command.help);
    }
}

fn cmd_uname(args: &[&str], _: &str) {
    if args.first() == Some(&"-a") {
        kprintln!("{}", crate::version_line());
    } else {
        kprintln!("Lull");
    }
}

fn cmd_uptime(_: &[&str], _: &str) {
    let ns = crate::kernel::time::uptime_ns();
    kprintln!("up {}.{:06} s", ns / 1_000_000_000, (ns / 1000) % 1_000_000);
}

fn cmd_cmdline(args: &[&str], _: &str) {
    let line = crate::kernel::params::command_line();
    kprintln!(
        "length={} sha256={}",
        line.len(),
        crate::kernel::params::command_line_sha256()
    );
    if args.first() == Some(&"-v") {
        kprintln!("{}", String::from_utf8_lossy(line));
    }
}

fn cmd_meminfo(_: &[&str], _: &str) {
    kprint!("{}", crate::mm::meminfo());
}

fn cmd_dmesg(_: &[&str], _: &str) {
    let mut log = Vec::new();
    crate::kernel::printk::read_log(&mut log);
    kprint!("{}", String::from_utf8_lossy(&log));
}

fn cmd_cat(args: &[&str], _: &str) {
    if args.is_empty() {
        kprintln!("cat: missing file operand (usage: cat PATH...)");
    }
    for path in args {
        match procfs::read(path) {
            Ok(text) => kprint!("{text}"),
            Err(error) => kprintln!("cat: {path}: {error}"),
        }
    }
}

fn cmd_echo(_: &[&str], rest: &str) {
    match rest.rsplit_once('>') {
        Some((value, path)) => {
            let path = path.trim();
            let value = value.trim();
            if path.is_empty() {
                kprintln!("echo: missing file after '>'");
                return;
            }
            if let Err(error) = procfs::write(path, value) {
                kprintln!("echo: {path}: {error}");
            }
        }
        None => kprintln!("{}", rest.trim()),
    }
}

fn cmd_ls(args: &[&str], _: &str) {
    let directory = args.first().copied().unwrap_or("/proc");
    match procfs::list(directory) {
        Ok(listing) => kprint!("{listing}"),
        Err(error) => kprintln!("ls: {directory}: {error}"),
    }
}

/// Parses a non-negative decimal number of seconds (`1`, `0.25`) into nanoseconds.
/// A byte count with an optional binary suffix (`64M`, `512K`, `1G`).
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'K' | b'k' => (&text[..text.len() - 1], 10),
        b'M' | b'm' => (&text[..text.len() - 1], 20),
        b'G' | b'g' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

fn parse_seconds(text: &str) -> Option<u64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 9 || (whole.is_empty() && fraction.is_empty()) {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos = 0u64;
    for (index, digit) in fraction.chars().enumerate() {
        nanos += digit.to_digit(10)? as u64 * 10u64.pow(8 - index as u32);
    }
    whole.checked_mul(1_000_000_000)?.checked_add(nanos)
}

fn cmd_date(_: &[&str], _: &str) {
    let ns = crate::kernel::time::realtime_ns();
    kprintln!(
        "{} UTC",
        crate::kernel::time::format_utc(ns.div_euclid(1_000_000_000))
    );
}

fn cmd_sleep(args: &[&str], _: &str) {
    match args.first().and_then(|a| parse_seconds(a)) {
        Some(ns) if ns <= 3600 * 1_000_000_000 => crate::kernel::time::sleep_ns(ns),
        _ => kprintln!("sleep: expected a duration in seconds up to 3600 (e.g. 1 or 0.25)"),
    }
}

fn cmd_timer(args: &[&str], _: &str) {
    let Some(ms) = args
        .first()
        .and_then(|a| a.parse::<u64>().ok())
        .filter(|ms| *ms <= 86_400_000)
    else {
        kprintln!("timer: expected a delay in milliseconds (0..=86400000)");
        return;
    };
    match timer::start_shell_timer(ms * 1_000_000) {
        Ok(id) => kprintln!("timer {id}: fires in {ms} ms"),
        Err(why) => kprintln!("timer: {why}"),
    }
}

/// Real-time priority of the `latency` thread (cyclictest's customary `-p 80`).
const LATENCY_PRIORITY: lull_sched::RtPriority = match lull_sched::RtPriority::new(80) {
    Ok(priority) => priority,
    Err(_) => lull_sched::RtPriority::MAX,
};

fn cmd_latency(args: &[&str], _: &str) {
    let seconds = match args.first() {
        None => 10,
        Some(text) => match text.parse::<u64>() {
            Ok(s) if (1..=600).contains(&s) => s,
            _ => {
                kprintln!("latency: expected a duration of 1..=600 seconds");
                return;
            }
        },
    };
    let period_ns = 1_000_000;
    // The measurement runs in its own real-time FIFO thread (cyclictest's `-p 80`); the shell
    // sleeps on a completion until it is done.
    let done = alloc::sync::Arc::new((
        crate::kernel::sched::Completion::new(),
        IrqSafeLock::new(None::<latency::LatencyReport>),
    ));
    let for_thread = alloc::sync::Arc::clone(&done);
    let class = lull_sched::SchedClass::RealTime(LATENCY_PRIORITY);
    if let Err(error) =
        crate::kernel::sched::kthread_spawn("latency", class, lull_sched::CpuSet::ALL, move || {
            let report = latency::measure_latency(seconds * 1000, period_ns);
            *for_thread.1.lock() = Some(report);
            for_thread.0.complete();
        })
    {
        kprintln!("latency: cannot start the measuring thread: {error}");
        return;
    }
    done.0.wait();
    let Some(report) = done.1.lock().take() else {
        kprintln!("latency: the measuring thread produced no report");
        return;
    };
    kprintln!(
        "latency: {} samples at 1000 Hz: min {} us, avg {} us, p50 {} us, p99 {} us, max {} us",
        report.samples,
        report.min_ns / 1000,
        report.total_ns / report.samples.max(1) / 1000,
        report.percentile_us(500),
        report.percentile_us(990),
        report.max_ns / 1000
    );
    kprintln!("latency histogram (us count):");
    for (bucket, count) in report.histogram.iter().enumerate() {
        if *count > 0 {
            kprintln!("{bucket:06} {count:06}");
        }
    }
    kprintln!("latency: end");
}

fn cmd_clocksource(_: &[&str], _: &str) {
    for (name, rating, hz, unstable, verified, current) in crate::kernel::time::clocksources() {
        kprintln!(
            "{}{:<8} rating {:>3}  {:>11} Hz  {}",
            if current { "*" } else { " " },
            name,
            rating,
            hz,
            if unstable {
                "unstable"
            } else if verified {
                "verified"
            } else {
                "unverified"
            }
        );
    }
}

fn cmd_cpus(_: &[&str], _: &str) {
    kprintln!(
        "CPU  APIC  state    tick device     mode      tick     jiffies  idle calls  sleeps  idle s   steal s"
    );
    for cpu in 0..crate::kernel::smp::possible_cpus() {
        let online = crate::kernel::smp::is_online(cpu);
        let apic = crate::kernel::smp::apic_id(cpu);
        match crate::kernel::time::cpu_tick_state(cpu).filter(|_| online) {
            Some(tick) => kprintln!(
                "{:>3}  {:>4}  {:<7}  {:<14}  {:<8}  {:<7}  {:<7}  {:>10}  {:>6}  {}.{:03}  {:>5}.{:03}",
                cpu,
                apic,
                "online",
                tick.device,
                tick.mode,
                if tick.tick_stopped {
                    "stopped"
                } else {
                    "running"
                },
                if tick.does_jiffies { "yes" } else { "no" },
                tick.idle_calls,
                tick.idle_sleeps,
                tick.idle_sleeptime_ns / 1_000_000_000,
                (tick.idle_sleeptime_ns / 1_000_000) % 1000,
                crate::kernel::paravirt::steal_total(cpu) / 1_000_000_000,
                (crate::kernel::paravirt::steal_total(cpu) / 1_000_000) % 1000
            ),
            None => kprintln!(
                "{:>3}  {:>4}  {:<7}  -",
                cpu,
                apic,
                if online { "online" } else { "offline" }
            ),
        }
    }
    kprintln!(
        "{} online, {} possible",
        crate::kernel::smp::online_count(),
        crate::kernel::smp::possible_cpus()
    );
    kprintln!("paravirt: {}", crate::kernel::paravirt::summary());
    if crate::kernel::paravirt::uses_kvm(crate::kernel::paravirt::Op::AsyncPf) {
        let (not_present, ready, wake_all, proceeded, refused) = crate::kernel::async_pf::counts();
        kprintln!(
            "async pf: {not_present} not present, {ready} ready, {wake_all} wake-all, \
             {proceeded} ready first, {refused} refused, {} waiting",
            crate::kernel::async_pf::waiters()
        );
    }
    if crate::kernel::paravirt::uses_kvm(crate::kernel::paravirt::Op::TlbFlush) {
        kprintln!(
            "pv tlb flush: {} remote flushes left to the host",
            crate::kernel::smp::pv_tlb_flushes()
        );
    }
}

fn cmd_ps(_: &[&str], _: &str) {
    kprintln!("  TID  CPU  S  CLS PRI        TIME  CSW(vol/inv)  NAME");
    for row in crate::kernel::sched::threads() {
        let info = row.info;
        let time_ms = info.cpu_time_ns / 1_000_000;
        kprintln!(
            "{:>5}  {:>3}  {}  {:<7}  {:>6}.{:03}s  {:>6}/{:<6}  {}",
            info.id.get(),
            info.cpu,
            info.state.ps_code(),
            alloc::format!("{}", info.class),
            time_ms / 1000,
            time_ms % 1000,
            info.voluntary_switches,
            info.involuntary_switches,
            row.name
        );
    }
}

fn cmd_poweroff(_: &[&str], _: &str) {
    crate::kernel::pm::power_off();
}

/// Runs one command line.
pub fn execute(line: &str) {
    let line = line.trim();
    if line.is_empty() {
        return;
    }
    let (name, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let args: Vec<&str> = rest.split_whitespace().collect();
    match COMMANDS.iter().find(|command| command.name == name) {
        Some(command) => (command.run)(&args, rest),
        None => kprintln!("{name}: command not found (try 'help')"),
    }
}

/// Enables the UART interrupt and runs the shell forever.
/// Runs an i2c-tools command (its name first, as `argv`).
/// `gpiomon`: sleeps on the console's input queue, which both a GPIO event (through gpiolib's
/// waker) and a key wake; a key ends it, as Ctrl-C ends libgpiod's.
fn cmd_gpiomon(args: &[&str]) {
    let key_pressed = || {
        let mut input = INPUT.lock();
        if input.len == 0 {
            return false;
        }
        input.head = (input.head + 1) % input.bytes.len();
        input.len -= 1;
        if input.throttled {
            input.throttled = false;
            serial::set_rx_interrupt(true);
        }
        true
    };
    let result =
        crate::drivers::gpio::gpiomon(args, &INPUT_WAIT, key_pressed, |text| kprint!("{text}"));
    if let Err(error) = result {
        kprintln!("{error}");
    }
}

fn gpio_tool(name: &str, args: &[&str]) {
    let mut argv = alloc::vec![name];
    argv.extend_from_slice(args);
    match crate::drivers::gpio::cmd_tool(&argv) {
        Ok(text) if text.is_empty() => {}
        Ok(text) if text.ends_with('\n') => kprint!("{text}"),
        Ok(text) => kprintln!("{text}"),
        Err(error) => kprintln!("{error}"),
    }
}

fn i2c_tool(name: &str, args: &[&str]) {
    let mut argv = alloc::vec![name];
    argv.extend_from_slice(args);
    match crate::drivers::i2c::cmd_tools(&argv) {
        Ok(text) if text.is_empty() => {}
        Ok(text) if text.ends_with('\n') => kprint!("{text}"),
        Ok(text) => kprintln!("{text}"),
        Err(error) => kprintln!("{error}"),
    }
}

/// The shell: init's commands (the words after `--` on the command line), then a prompt and
/// a command at a time from the console, forever.
///
/// `start_probe` starts the boot-time device probe. It runs before init's commands (they may
/// wait for devices), else right after the first prompt is printed: with the probe runnable
/// beside it, the shell's first run (all first-time code for an instruction emulator) outlasted
/// its slice, and the prompt waited for a preemption timer interrupt and the probe's turn.
pub fn run(start_probe: fn()) -> ! {
    // A shutdown request (the power button) wakes the reader, which then powers off.
    crate::kernel::pm::register_atomic_notifier(crate::kernel::pm::Notifier {
        name: "shell",
        priority: 0,
        call: wake_reader,
    });
    serial::set_rx_interrupt(true);
    // Init's arguments (the words after `--` on the command line) run first, as commands
    // separated by `;`: `-- bench pvops 2000 ; poweroff` runs a benchmark with no console input.
    let init_args = crate::kernel::params::parsed().init_args().join(" ");
    let mut start_probe = Some(start_probe);
    if !init_args.trim().is_empty() {
        if let Some(start) = start_probe.take() {
            start();
        }
    }
    for command in init_args
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        kprintln!("lull> {command}");
        execute(command);
    }
    let mut previous_was_cr = false;
    loop {
        kprint!("lull> ");
        if let Some(start) = start_probe.take() {
            start();
        }
        let line = read_line(&mut previous_was_cr);
        execute(&line);
    }
}

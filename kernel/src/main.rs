//! Lull: a tickless, paravirtualized x86_64 kernel.
//!
//! Boot order: PVH entry (arch, GS base of CPU 0) → console → CPU tables → TSC calibration →
//! memory (heap, zones, page tables, SMP trampoline page) → command line → ACPI → interrupts →
//! CPU list (MADT) → scheduler → time (boot CPU's tick) → secondary CPUs (each starts its own
//! tick, then runs its idle thread) → the shell (or the in-kernel tests) in a kernel thread,
//! while the boot code becomes CPU 0's idle thread.
#![no_std]
#![no_main]
#![deny(unsafe_code)]
// A test build runs the in-kernel tests instead of the shell, so the shell path is unused there.
#![cfg_attr(feature = "ktest", allow(dead_code))]

extern crate alloc;

#[allow(unsafe_code)] // The arch boundary: the only module allowed to use `unsafe`.
mod arch;
mod block;
mod drivers;
mod fs;
mod kernel;
#[cfg(feature = "ktest")]
mod ktest;
mod mm;
mod net;
mod shell;

use alloc::string::String;
use core::fmt::Write;

use spin::Once;

use arch::acpi::AcpiInfo;
use arch::BootInfo;
use fs::procfs;
use kernel::locking::{self, lockdep};
use kernel::{irq, params, printk, sched, smp, time};

/// ACPI information found at boot (absent on machines without ACPI).
static ACPI: Once<Option<AcpiInfo>> = Once::new();

/// The one-line banner: name, version, build (formats without allocating).
pub struct Version;

impl core::fmt::Display for Version {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Lull version {} (build {}, {}{}) x86_64",
            env!("CARGO_PKG_VERSION"),
            env!("LULL_GIT_REVISION"),
            env!("LULL_PROFILE"),
            if cfg!(feature = "zone-dma") {
                ", zone-dma"
            } else {
                ""
            }
        )
    }
}

/// The banner as a string.
pub fn version_line() -> String {
    alloc::format!("{Version}")
}

/// ACPI tables found at boot, if any.
pub fn acpi() -> Option<&'static AcpiInfo> {
    ACPI.get().and_then(|info| info.as_ref())
}

/// Orderly shutdown: ACPI S5 (QEMU exits 0), with the documented fallbacks.
pub fn power_off() -> ! {
    printk!("reboot: Power down");
    arch::power::power_off(acpi())
}

/// Every subsystem's kernel parameters. Declared at boot without re-checking each declaration
/// (the ktest `every_parameter_declaration_is_valid` checks them all).
pub const PARAM_TABLES: &[&[lull_cmdline::ParamSpec]] = &[
    printk::PARAMS,
    mm::PARAMS,
    time::PARAMS,
    smp::PARAMS,
    irq::PARAMS,
    lockdep::PARAMS,
    locking::PARAMS,
    kernel::paravirt::PARAMS,
    drivers::base::PARAMS,
    drivers::virtio::PARAMS,
    net::PARAMS,
    #[cfg(feature = "ktest")]
    ktest::PARAMS,
];

/// Called by the arch entry code with the loader's boot information.
pub fn start_kernel(boot: BootInfo, entry_tsc: u64) -> ! {
    time::set_boot_tsc(entry_tsc);
    arch::set_emergency_print(printk::emergency_print);
    arch::init_boot_cpu();
    // The PIT measures the TSC while memory and parameters are set up (no spinning of its own).
    let calibration = time::start_calibration();
    printk!("{Version}");

    let mem_limit = params::early_mem_limit(boot.command_line);
    mm::init(&boot, mem_limit);
    let problems = params::init(boot.command_line, PARAM_TABLES);
    for problem in problems {
        match problem {
            params::Problem::Error(line) => pr_err!("{line}"),
            params::Problem::Warning(line) => pr_warn!("{line}"),
        }
    }
    apply_console_params();
    lockdep::init();
    let (tsc_hz, method) = time::finish_calibration(calibration);
    printk!(
        "tsc: {}.{:03} MHz ({method})",
        tsc_hz / 1_000_000,
        (tsc_hz / 1000) % 1000
    );
    kernel::paravirt::init();
    locking::init_spinlocks();
    printk!("cpu: {}", arch::cpu::brand());
    pr_debug!("cmdline: {} bytes", boot.command_line.len());

    let acpi = ACPI
        .call_once(|| arch::acpi::discover(boot.rsdp_address))
        .as_ref();
    match acpi {
        Some(info) => {
            for warning in &info.warnings {
                pr_warn!("{warning}");
            }
            let mut tables = String::new();
            for signature in &info.tables {
                let _ = write!(
                    tables,
                    " {}",
                    core::str::from_utf8(signature).unwrap_or("????")
                );
            }
            printk!(
                "ACPI: RSDP at {:#x} rev {}, tables:{tables}; {} CPU(s), {} IOAPIC(s){}",
                info.rsdp_address,
                info.revision,
                info.local_apic_ids.len(),
                info.io_apics.len(),
                if info.hardware_reduced {
                    ", hardware-reduced"
                } else {
                    ""
                }
            );
        }
        None => pr_warn!("ACPI: no RSDP found; poweroff falls back to isa-debug-exit"),
    }

    irq::init(acpi);
    smp::init(acpi);
    mm::kmap::init();
    sched::init(smp::possible_cpus());
    drivers::serial::request_boot_irq();
    drivers::base::init();
    drivers::acpi::init(acpi);
    kernel::random::init();
    time::init(acpi);
    #[cfg(feature = "ktest")]
    ktest::run_device_tests();
    time::start_tick();
    smp::bring_up_secondary_cpus();
    register_proc_files();
    // Time the host ran something else while this vCPU was runnable is not the kernel's.
    let stolen_us = kernel::paravirt::steal_total(0) / 1000;
    printk!(
        "boot: kernel ready in {} us{}",
        time::uptime_ns() / 1000,
        if stolen_us > 0 {
            alloc::format!(" ({stolen_us} us of it stolen by the host)")
        } else {
            String::new()
        }
    );

    // The boot code becomes CPU 0's idle thread; the work runs in kernel threads.
    // The tests stay on the boot CPU, where several of them expect to run.
    locking::set_system_running();
    // The tests start once the probe has (they wait for it where they need devices); the
    // shell starts it itself, once its first prompt is out (`shell::run`).
    #[cfg(feature = "ktest")]
    drivers::start_device_probe();
    #[cfg(feature = "ktest")]
    let (name, main, cpus): (&str, fn() -> !, _) =
        ("ktest", ktest::run_and_exit, lull_sched::CpuSet::single(0));
    #[cfg(not(feature = "ktest"))]
    let (name, main, cpus): (&str, fn() -> !, _) = (
        "shell",
        || shell::run(drivers::start_device_probe),
        lull_sched::CpuSet::ALL,
    );
    if let Err(error) =
        sched::kthread_spawn(name, lull_sched::SchedClass::NORMAL, cpus, move || main())
    {
        panic!("cannot start the {name} thread: {error}");
    }
    sched::idle_loop()
}

/// `/proc/stat` in Linux's format (USER_HZ = 100 units). Lull runs only kernel threads, so
/// busy time is `system`; `steal` is what the hypervisor took (KVM steal time).
fn proc_stat() -> String {
    let to_hz = |ns: u64| ns / 10_000_000;
    let uptime = time::uptime_ns();
    let mut total = [0u64; 10];
    let mut lines = String::new();
    let mut switches = 0;
    for cpu in smp::online_cpus() {
        let Some(info) = sched::cpu_info(cpu) else {
            continue;
        };
        let steal = kernel::paravirt::steal_total(cpu).min(uptime);
        let idle = info.idle_ns.min(uptime - steal);
        let system = uptime - steal - idle;
        let fields = [0, 0, system, idle, 0, 0, 0, steal, 0, 0].map(to_hz);
        for (sum, value) in total.iter_mut().zip(fields) {
            *sum += value;
        }
        switches += info.context_switches;
        let _ = write!(lines, "cpu{cpu}");
        for value in fields {
            let _ = write!(lines, " {value}");
        }
        lines.push('\n');
    }
    let mut text = String::from("cpu ");
    for value in total {
        let _ = write!(text, " {value}");
    }
    text.push('\n');
    text.push_str(&lines);
    let threads = sched::threads();
    let running = threads
        .iter()
        .filter(|row| {
            matches!(
                row.info.state,
                lull_sched::TaskState::Running | lull_sched::TaskState::Runnable
            )
        })
        .count();
    let boot_seconds = (time::realtime_ns() - uptime as i64) / 1_000_000_000;
    let _ = write!(
        text,
        "ctxt {switches}\nbtime {boot_seconds}\nprocesses {}\nprocs_running {running}\nprocs_blocked 0\n",
        threads.len()
    );
    text
}

fn apply_console_params() {
    let parsed = params::parsed();
    if parsed.flag("quiet") {
        printk::set_console_loglevel(4);
    }
    if parsed.is_set("loglevel") {
        if let Some(level) = parsed.get_u64("loglevel") {
            printk::set_console_loglevel(level as u8);
        }
    }
}

fn register_proc_files() {
    fs::procfs::register_table(PROC_FILES);
    #[cfg(feature = "heap-trace")]
    fs::procfs::register_table(&[fs::procfs::ProcFile {
        path: "/proc/heap_live",
        read: Some(arch::heap::trace::live),
        write: None,
    }]);
    procfs::register_directory(procfs::ProcDirectory {
        path: "/proc/irq",
        read: irq::proc_irq_read,
        write: irq::proc_irq_write,
        list: irq::proc_irq_list,
    });
}

/// The files the kernel itself provides from boot on (drivers add theirs when they bind).
static PROC_FILES: &[fs::procfs::ProcFile] = {
    use fs::procfs::ProcFile;
    &[
        ProcFile {
            path: "/proc/version",
            read: Some(|| version_line() + "\n"),
            write: None,
        },
        ProcFile {
            path: "/proc/cmdline",
            read: Some(|| String::from_utf8_lossy(params::command_line()).into_owned() + "\n"),
            write: None,
        },
        ProcFile {
            path: "/proc/meminfo",
            read: Some(mm::meminfo),
            write: None,
        },
        ProcFile {
            path: "/proc/ioports",
            // Devices are probed after the prompt; their claims and lines are what one reads this for.
            read: Some(|| {
                drivers::wait_for_device_probe();
                kernel::ioports::proc_ioports()
            }),
            write: None,
        },
        ProcFile {
            path: "/proc/interrupts",
            // Devices are probed after the prompt; their claims and lines are what one reads this for.
            read: Some(|| {
                drivers::wait_for_device_probe();
                irq::proc_interrupts()
            }),
            write: None,
        },
        ProcFile {
            path: "/proc/timer_list",
            read: Some(time::proc_timer_list),
            write: None,
        },
        ProcFile {
            path: "/proc/timer_stats",
            read: Some(time::proc_timer_stats),
            write: Some(time::proc_timer_stats_write),
        },
        ProcFile {
            path: "/proc/lockdep_stats",
            read: Some(lockdep::proc_stats),
            write: None,
        },
        ProcFile {
            path: "/proc/partitions",
            read: Some(block::proc_partitions),
            write: None,
        },
        ProcFile {
            path: "/proc/diskstats",
            read: Some(block::proc_diskstats),
            write: None,
        },
        ProcFile {
            path: "/proc/iomem",
            // Devices are probed after the prompt; their claims and lines are what one reads this for.
            read: Some(|| {
                drivers::wait_for_device_probe();
                mm::iomem::proc_iomem()
            }),
            write: None,
        },
        ProcFile {
            path: "/proc/stat",
            read: Some(proc_stat),
            write: None,
        },
        ProcFile {
            path: "/proc/uptime",
            read: Some(|| {
                let ns = time::uptime_ns();
                alloc::format!("{}.{:02}\n", ns / 1_000_000_000, (ns / 10_000_000) % 100)
            }),
            write: None,
        },
        ProcFile {
            path: "/proc/sys/kernel/printk",
            read: Some(|| alloc::format!("{}\n", printk::console_loglevel())),
            write: Some(|value| {
                let level: u8 = value
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&v| v <= 8)
                    .ok_or_else(|| alloc::format!("expected a log level 0-8, got {value:?}"))?;
                printk::set_console_loglevel(level);
                Ok(())
            }),
        },
        ProcFile {
            path: "/proc/sysrq-trigger",
            read: None,
            write: Some(|value| match value.trim() {
                "c" => {
                    crash_by_null_dereference();
                    Ok(())
                }
                "p" => panic!("sysrq: panic requested from /proc/sysrq-trigger"),
                "o" => power_off(),
                other => Err(alloc::format!(
                    "unknown sysrq command {other:?} (c: crash, p: panic, o: poweroff)"
                )),
            }),
        },
    ]
};

/// sysrq 'c': a deliberate null-pointer read, to exercise the exception report.
fn crash_by_null_dereference() {
    let value = arch::trigger_null_read();
    printk!("sysrq: read {value:#x} from address 0 without a fault (page 0 is mapped?)");
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    arch::cpu::disable_interrupts();
    // The other CPUs halt first, so the report is the last thing the machine does.
    smp::stop_other_cpus();
    match info.location() {
        Some(location) => printk::emergency_print(format_args!(
            "\nKernel panic at {}:{}:{}: {}\n",
            location.file(),
            location.line(),
            location.column(),
            info.message()
        )),
        None => printk::emergency_print(format_args!("\nKernel panic: {}\n", info.message())),
    }
    arch::power::exit_failure(arch::power::EXIT_PANIC)
}

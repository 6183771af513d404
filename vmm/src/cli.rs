//! The `lull-vmm` command line: `run`, `restore`, the API client subcommands, and `bench`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::{self, client};
use crate::console::{self, RawTerminal, StdoutWriter};
use crate::devices::{lock, MachineRequest};
use crate::machine::{Machine, MachineConfig, Started};
use crate::metrics::{MetricsReport, RateTracker};
use crate::migration::source::{DEFAULT_DOWNTIME_MS, DEFAULT_MAX_ROUNDS};
use crate::migration::{MigrationState, MigrationUrl};
use crate::vstate::hypercall::PvHypercalls;
use crate::vstate::vcpu::VmEvent;

pub const USAGE: &str = "\
lull-vmm: the microVM monitor that hosts Lull on /dev/kvm

USAGE:
  lull-vmm run --kernel ELF|BZIMAGE [--vcpus N] [--memory MIB] [--cmdline STR | --cmdline-file PATH]
              [--no-rsdp-hint] [--disk path=FILE[,readonly]]... [--net tap=NAME[,mac=MAC]]...
              [--gpio lines=NAME,...|default[,control=PATH][,log=PATH]]...
              [RUN OPTIONS]
  lull-vmm restore --snapshot DIR [--lazy [--record-ws MS]] [RUN OPTIONS]
  lull-vmm receive --listen URL [RUN OPTIONS]      take one live migration and run the guest
  lull-vmm pause|resume|power-button|info --api SOCKET
  lull-vmm snapshot --api SOCKET --path DIR [--leave-paused]
  lull-vmm metrics --api SOCKET [--interval-ms N] [--json]
  lull-vmm migrate --api SOCKET --to URL [--downtime-ms N] [--max-rounds N]
                  [--postcopy | --postcopy-after N]
  lull-vmm migrate-cancel --api SOCKET
  lull-vmm bench [--kernel ELF] [--sizes-mib 128,1024] [--json]
  lull-vmm bench --migrate [--kernel ELF] [--sizes-mib 256,1024] [--runs N] [--json]
  lull-vmm bench --lazy --kernel ELF [--sizes-mib 128,1024] [--runs N]
  lull-vmm bench --postcopy --kernel ELF [--sizes-mib 128,1024] [--runs N]
  lull-vmm bench --tap --kernel ELF [--bytes N]   (root: a network namespace with a TAP)
  lull-vmm write-test-guest PATH    write the built-in PVH test guest (see vmm/src/test_guest)

RUN OPTIONS:
  --api-sock PATH           serve the control API (REST/JSON, see vmm/api.yaml) on a Unix socket
  --metrics-file PATH       append a JSON line of metrics every --metrics-interval-ms (default 1000)
  --timing                  print a JSON line on stderr when all vCPUs run
  --pv-hypercalls auto|on|off
                            whether guest hypercalls return on this host: auto (default) probes
                            once per host boot (cached in /run/lull-vmm); off hides PV_UNHALT,
                            PV_SEND_IPI, PV_SCHED_YIELD and makes VMCALL raise #UD; on trusts them
  --async-pf on|off         restore --lazy and post-copy: a vCPU touching a page not yet in gets
                            an async page fault (the guest runs another thread) where the guest
                            enabled them (default on); off: the vCPU waits for the page
  --no-rsdp-hint            run only: pass no RSDP address in the boot data (as Firecracker);
                            the kernel must find the ACPI tables by scanning the BIOS areas

DEVICES (run only; up to 8 in all, virtio-mmio, announced on the kernel command line as
virtio_mmio.device=4K@ADDR:IRQ; a restore reopens the snapshot's files and TAPs):
  --disk path=FILE[,readonly]   virtio-blk on a raw image file (capacity = file size)
  --net tap=NAME[,mac=MAC]      virtio-net on TAP device NAME (created if missing and allowed)
  --gpio lines=NAME,...|default[,control=PATH][,log=PATH]
                                virtio-gpio with simulated lines, one per NAME (`default`: 8,
                                amp-enable,button,led0,led1,headphone-detect,mute,reset,irq);
                                control=PATH: a Unix socket taking lull-gpio-backend's commands
                                (set LINE 0|1, pulse LINE, get LINE, dump, help; one reply line,
                                `ok ...` or `error: ...`); every request and command is logged
                                with a timestamp to stderr, or appended to log=PATH

LAZY RESTORE: --lazy starts the vCPUs before guest RAM is loaded: pages come from the snapshot's
memory file as the guest touches them (userfaultfd), the rest in the background. --record-ws MS
records the pages touched in the first MS ms into DIR/working-set; later --lazy restores load
those first, before the vCPUs start (a bad working-set file is ignored with a warning).

MIGRATION: URL is tcp://HOST:PORT or unix:PATH. `migrate` sends the guest of the VMM serving
SOCKET to a `lull-vmm receive --listen URL`, pre-copying its RAM while it runs, and stops it
for the rest once that fits --downtime-ms (default 5) at the measured rate, or after
--max-rounds rounds (default 30); it prints progress and a summary, and the source VMM exits
once the destination runs the guest. On any failure the guest keeps running on the source.
--postcopy stops the guest at once and runs it on the destination, which fetches the pages it
touches from the source on demand while the rest streams in; --postcopy-after N does that when
N pre-copy rounds did not converge. Once the destination runs the guest there is no way back:
if either side is lost during post-copy, the guest is lost (both VMMs say so and exit 1).

Defaults: 1 vCPU, 128 MiB, empty command line. The serial console is stdin/stdout (raw mode when
stdin is a terminal; Ctrl-A x quits). Exit status: the guest's (0 on ACPI poweroff; (N<<1)|1
for a write of N to the isa-debug-exit port 0xf4), 1 on VM failure, 2 on usage errors.
";

/// Why the command line was not understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsageError {
    #[error("no command given")]
    NoCommand,
    #[error("unknown command '{0}'")]
    UnknownCommand(String),
    #[error("unknown option '{option}' for '{command}'")]
    UnknownOption { command: String, option: String },
    #[error("option {0} needs a value")]
    MissingValue(String),
    #[error("option {option}: '{value}' is not a valid {expected}")]
    InvalidValue {
        option: String,
        value: String,
        expected: &'static str,
    },
    #[error("'{command}' needs {option}")]
    MissingOption {
        command: String,
        option: &'static str,
    },
    #[error("give either --cmdline or --cmdline-file, not both")]
    TwoCommandLines,
    #[error("cannot read command line file {path}: {reason}")]
    CommandLineFile { path: PathBuf, reason: String },
    #[error("option {option} '{value}': {reason}")]
    Device {
        option: &'static str,
        value: String,
        reason: String,
    },
    #[error("option {option}: {error}")]
    Url {
        option: String,
        error: crate::migration::UrlError,
    },
}

/// Options shared by `run` and `restore`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    pub api_sock: Option<PathBuf>,
    pub metrics_file: Option<PathBuf>,
    pub metrics_interval_ms: u64,
    pub timing: bool,
    /// `--pv-hypercalls`: probe whether guest hypercalls return, or say so.
    pub pv_hypercalls: PvHypercalls,
    /// `--async-pf off`: no VMM-injected async page faults during a lazy restore or
    /// post-copy (default on).
    pub no_async_pf: bool,
}

/// A request to a running lull-vmm's API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAction {
    Info,
    Pause,
    Resume,
    PowerButton,
    Snapshot {
        path: PathBuf,
        leave_paused: bool,
    },
    Metrics {
        interval_ms: Option<u64>,
        json: bool,
    },
    Migrate {
        to: MigrationUrl,
        downtime_ms: u64,
        max_rounds: u32,
        /// `--postcopy` (0: at once) or `--postcopy-after N`.
        postcopy: Option<u32>,
    },
    MigrateCancel,
}

/// Options of `bench`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchOptions {
    pub kernel: Option<PathBuf>,
    pub sizes_mib: Vec<u64>,
    pub json: bool,
    /// `--migrate`: only the live-migration benchmark, `runs` migrations per size.
    pub migrate: bool,
    /// `--lazy`: only the lazy-restore and post-copy benchmark, `runs` per size and mode.
    pub lazy: bool,
    /// `--postcopy`: only the post-copy rows of `--lazy`, `runs` per size.
    pub postcopy: bool,
    /// `--tap`: only TCP and ping over a TAP device (`tap_bytes` each way, `--bytes N`).
    pub tap: bool,
    pub tap_bytes: usize,
    pub runs: usize,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run {
        config: MachineConfig,
        options: RunOptions,
    },
    Restore {
        snapshot: PathBuf,
        options: RunOptions,
        /// `--lazy` (with `--record-ws MS`): load guest RAM on demand (see `crate::lazy`).
        lazy: Option<crate::lazy::LazyOptions>,
    },
    Receive {
        listen: MigrationUrl,
        options: RunOptions,
    },
    Api {
        socket: PathBuf,
        action: ApiAction,
    },
    Bench(BenchOptions),
    WriteTestGuest(PathBuf),
    Help,
}

struct Arguments<'a> {
    command: String,
    rest: std::slice::Iter<'a, String>,
}

impl<'a> Arguments<'a> {
    fn value(&mut self, option: &str) -> Result<&'a String, UsageError> {
        self.rest
            .next()
            .ok_or_else(|| UsageError::MissingValue(option.to_string()))
    }

    fn number<T: std::str::FromStr>(
        &mut self,
        option: &str,
        expected: &'static str,
    ) -> Result<T, UsageError> {
        let value = self.value(option)?;
        value.parse().map_err(|_| UsageError::InvalidValue {
            option: option.to_string(),
            value: value.clone(),
            expected,
        })
    }

    fn url(&mut self, option: &str) -> Result<MigrationUrl, UsageError> {
        self.value(option)?
            .parse()
            .map_err(|error| UsageError::Url {
                option: option.to_string(),
                error,
            })
    }

    /// A number of at least 1.
    fn positive<T: std::str::FromStr + PartialOrd + From<u8>>(
        &mut self,
        option: &str,
        expected: &'static str,
    ) -> Result<T, UsageError> {
        let value = self.value(option)?;
        match value.parse::<T>() {
            Ok(number) if number >= T::from(1) => Ok(number),
            _ => Err(UsageError::InvalidValue {
                option: option.to_string(),
                value: value.clone(),
                expected,
            }),
        }
    }

    fn unknown(&self, option: &str) -> UsageError {
        UsageError::UnknownOption {
            command: self.command.clone(),
            option: option.to_string(),
        }
    }
}

fn parse_run_option(
    arguments: &mut Arguments,
    option: &str,
    options: &mut RunOptions,
) -> Result<bool, UsageError> {
    match option {
        "--api-sock" => options.api_sock = Some(PathBuf::from(arguments.value(option)?)),
        "--metrics-file" => options.metrics_file = Some(PathBuf::from(arguments.value(option)?)),
        "--metrics-interval-ms" => {
            options.metrics_interval_ms = arguments.number(option, "number of milliseconds")?;
            if options.metrics_interval_ms == 0 {
                return Err(UsageError::InvalidValue {
                    option: option.into(),
                    value: "0".into(),
                    expected: "positive interval",
                });
            }
        }
        "--timing" => options.timing = true,
        "--async-pf" => {
            options.no_async_pf = match arguments.value(option)?.as_str() {
                "on" => false,
                "off" => true,
                other => {
                    return Err(UsageError::InvalidValue {
                        option: option.into(),
                        value: other.into(),
                        expected: "mode (on or off)",
                    })
                }
            }
        }
        "--pv-hypercalls" => {
            options.pv_hypercalls = pv_hypercalls(option, arguments.value(option)?)?
        }
        _ => match option.strip_prefix("--pv-hypercalls=") {
            Some(value) => options.pv_hypercalls = pv_hypercalls("--pv-hypercalls", value)?,
            None => return Ok(false),
        },
    }
    Ok(true)
}

fn pv_hypercalls(option: &str, value: &str) -> Result<PvHypercalls, UsageError> {
    value.parse().map_err(|_| UsageError::InvalidValue {
        option: option.to_string(),
        value: value.to_string(),
        expected: "mode (auto, on or off)",
    })
}

/// Parses `args` (without the program name).
pub fn parse(args: &[String]) -> Result<Command, UsageError> {
    let Some((command, rest)) = args.split_first() else {
        return Err(UsageError::NoCommand);
    };
    let mut arguments = Arguments {
        command: command.clone(),
        rest: rest.iter(),
    };
    let mut options = RunOptions {
        metrics_interval_ms: 1000,
        ..Default::default()
    };
    match command.as_str() {
        "help" | "--help" | "-h" => Ok(Command::Help),
        "run" => {
            let (mut kernel, mut vcpus, mut memory_mib) = (None, 1u8, 128u64);
            let (mut cmdline, mut cmdline_file) = (None::<Vec<u8>>, None::<PathBuf>);
            let mut rsdp_hint = true;
            let mut virtio = Vec::new();
            while let Some(option) = arguments.rest.next() {
                match option.as_str() {
                    "--disk" | "--net" | "--gpio" => {
                        let value = arguments.value(option)?;
                        let (name, parse): (&'static str, fn(&str) -> Result<_, String>) =
                            match option.as_str() {
                                "--disk" => ("--disk", crate::devices::virtio::parse_disk),
                                "--net" => ("--net", crate::devices::virtio::parse_net),
                                _ => ("--gpio", crate::devices::virtio::parse_gpio),
                            };
                        virtio.push(parse(value).map_err(|reason| UsageError::Device {
                            option: name,
                            value: value.clone(),
                            reason,
                        })?);
                    }
                    "--kernel" => kernel = Some(PathBuf::from(arguments.value(option)?)),
                    "--vcpus" => vcpus = arguments.number(option, "vCPU count (1-255)")?,
                    "--memory" => memory_mib = arguments.number(option, "size in MiB")?,
                    "--cmdline" => cmdline = Some(arguments.value(option)?.as_bytes().to_vec()),
                    "--cmdline-file" => {
                        cmdline_file = Some(PathBuf::from(arguments.value(option)?))
                    }
                    "--no-rsdp-hint" => rsdp_hint = false,
                    other => {
                        if !parse_run_option(&mut arguments, other, &mut options)? {
                            return Err(arguments.unknown(other));
                        }
                    }
                }
            }
            let kernel = kernel.ok_or(UsageError::MissingOption {
                command: "run".into(),
                option: "--kernel ELF",
            })?;
            let cmdline = match (cmdline, cmdline_file) {
                (Some(_), Some(_)) => return Err(UsageError::TwoCommandLines),
                (Some(cmdline), None) => cmdline,
                // The file is the command line byte for byte (no newline stripping): what the
                // guest sees must hash the same as the file.
                (None, Some(path)) => {
                    std::fs::read(&path).map_err(|e| UsageError::CommandLineFile {
                        path,
                        reason: e.to_string(),
                    })?
                }
                (None, None) => Vec::new(),
            };
            Ok(Command::Run {
                config: MachineConfig {
                    kernel,
                    vcpus,
                    memory_mib,
                    cmdline,
                    rsdp_hint,
                    virtio,
                },
                options,
            })
        }
        "restore" => {
            let mut snapshot = None;
            let (mut lazy, mut record_ws_ms) = (false, None);
            while let Some(option) = arguments.rest.next() {
                match option.as_str() {
                    "--snapshot" => snapshot = Some(PathBuf::from(arguments.value(option)?)),
                    "--lazy" => lazy = true,
                    "--record-ws" => {
                        record_ws_ms = Some(arguments.positive(option, "number of milliseconds")?)
                    }
                    other => {
                        if !parse_run_option(&mut arguments, other, &mut options)? {
                            return Err(arguments.unknown(other));
                        }
                    }
                }
            }
            let snapshot = snapshot.ok_or(UsageError::MissingOption {
                command: "restore".into(),
                option: "--snapshot DIR",
            })?;
            if record_ws_ms.is_some() && !lazy {
                return Err(UsageError::MissingOption {
                    command: "restore --record-ws".into(),
                    option: "--lazy",
                });
            }
            let lazy = lazy.then_some(crate::lazy::LazyOptions {
                record_ws_ms,
                timing: options.timing,
                async_pf: !options.no_async_pf,
            });
            Ok(Command::Restore {
                snapshot,
                options,
                lazy,
            })
        }
        "receive" => {
            let mut listen = None;
            while let Some(option) = arguments.rest.next() {
                match option.as_str() {
                    "--listen" => listen = Some(arguments.url(option)?),
                    other => {
                        if !parse_run_option(&mut arguments, other, &mut options)? {
                            return Err(arguments.unknown(other));
                        }
                    }
                }
            }
            let listen = listen.ok_or(UsageError::MissingOption {
                command: "receive".into(),
                option: "--listen URL",
            })?;
            Ok(Command::Receive { listen, options })
        }
        "pause" | "resume" | "power-button" | "info" | "snapshot" | "metrics" | "migrate"
        | "migrate-cancel" => {
            let (mut socket, mut path, mut leave_paused) = (None, None, false);
            let (mut interval_ms, mut json) = (None, false);
            let (mut to, mut downtime_ms, mut max_rounds) =
                (None, DEFAULT_DOWNTIME_MS, DEFAULT_MAX_ROUNDS);
            let mut postcopy = None;
            while let Some(option) = arguments.rest.next() {
                match (command.as_str(), option.as_str()) {
                    (_, "--api") => socket = Some(PathBuf::from(arguments.value(option)?)),
                    ("snapshot", "--path") => path = Some(PathBuf::from(arguments.value(option)?)),
                    ("snapshot", "--leave-paused") => leave_paused = true,
                    ("metrics", "--interval-ms") => {
                        interval_ms = Some(arguments.number(option, "number of milliseconds")?)
                    }
                    ("metrics", "--json") => json = true,
                    ("migrate", "--to") => to = Some(arguments.url(option)?),
                    ("migrate", "--downtime-ms") => {
                        downtime_ms = arguments.positive(option, "downtime in ms (at least 1)")?
                    }
                    ("migrate", "--max-rounds") => {
                        max_rounds = arguments.positive(option, "number of rounds (at least 1)")?
                    }
                    ("migrate", "--postcopy") => postcopy = Some(0),
                    ("migrate", "--postcopy-after") => {
                        postcopy =
                            Some(arguments.positive(option, "number of rounds (at least 1)")?)
                    }
                    (_, other) => return Err(arguments.unknown(other)),
                }
            }
            let socket = socket.ok_or(UsageError::MissingOption {
                command: command.clone(),
                option: "--api SOCKET",
            })?;
            let action = match command.as_str() {
                "pause" => ApiAction::Pause,
                "resume" => ApiAction::Resume,
                "power-button" => ApiAction::PowerButton,
                "info" => ApiAction::Info,
                "metrics" => ApiAction::Metrics { interval_ms, json },
                "migrate" => ApiAction::Migrate {
                    to: to.ok_or(UsageError::MissingOption {
                        command: command.clone(),
                        option: "--to URL",
                    })?,
                    downtime_ms,
                    max_rounds,
                    postcopy,
                },
                "migrate-cancel" => ApiAction::MigrateCancel,
                _ => ApiAction::Snapshot {
                    path: path.ok_or(UsageError::MissingOption {
                        command: command.clone(),
                        option: "--path DIR",
                    })?,
                    leave_paused,
                },
            };
            Ok(Command::Api { socket, action })
        }
        "bench" => {
            let mut bench = BenchOptions {
                kernel: None,
                sizes_mib: vec![128, 1024],
                json: false,
                migrate: false,
                lazy: false,
                postcopy: false,
                tap: false,
                tap_bytes: 256 << 10,
                runs: 7,
            };
            while let Some(option) = arguments.rest.next() {
                match option.as_str() {
                    "--kernel" => bench.kernel = Some(PathBuf::from(arguments.value(option)?)),
                    "--json" => bench.json = true,
                    "--migrate" => bench.migrate = true,
                    "--lazy" => bench.lazy = true,
                    "--postcopy" => bench.postcopy = true,
                    "--tap" => bench.tap = true,
                    "--bytes" => bench.tap_bytes = arguments.positive(option, "number of bytes")?,
                    "--runs" => bench.runs = arguments.positive(option, "number of runs")?,
                    "--sizes-mib" => {
                        let value = arguments.value(option)?;
                        bench.sizes_mib = value
                            .split(',')
                            .map(|size| size.trim().parse())
                            .collect::<Result<_, _>>()
                            .map_err(|_| UsageError::InvalidValue {
                                option: option.clone(),
                                value: value.clone(),
                                expected: "comma-separated list of MiB",
                            })?;
                    }
                    other => return Err(arguments.unknown(other)),
                }
            }
            Ok(Command::Bench(bench))
        }
        "write-test-guest" => {
            let path = arguments.value("PATH")?;
            Ok(Command::WriteTestGuest(PathBuf::from(path)))
        }
        other => Err(UsageError::UnknownCommand(other.to_string())),
    }
}

/// Entry point; returns the process exit status.
pub fn main() -> i32 {
    let main_entered = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("lull-vmm: {error}\n\n{USAGE}");
            return 2;
        }
    };
    match command {
        Command::Help => {
            print!("{USAGE}");
            0
        }
        Command::Run { config, options } => {
            match Machine::boot(&config, options.pv_hypercalls, Box::new(StdoutWriter)) {
                Ok(started) => run_started(started, &options, main_entered),
                Err(error) => {
                    eprintln!("lull-vmm: cannot start the VM: {error}");
                    1
                }
            }
        }
        Command::Restore {
            snapshot,
            options,
            lazy: None,
        } => {
            match Machine::restore_here(&snapshot, options.pv_hypercalls, Box::new(StdoutWriter)) {
                Ok((starting, vcpu0)) => run_here(starting, vcpu0, options, main_entered),
                Err(error) => {
                    eprintln!("lull-vmm: cannot restore {}: {error}", snapshot.display());
                    1
                }
            }
        }
        Command::Restore {
            snapshot,
            options,
            lazy,
        } => {
            match Machine::restore_with(
                &snapshot,
                options.pv_hypercalls,
                Box::new(StdoutWriter),
                lazy.as_ref(),
            ) {
                Ok(started) => run_started(started, &options, main_entered),
                Err(error) => {
                    eprintln!("lull-vmm: cannot restore {}: {error}", snapshot.display());
                    1
                }
            }
        }
        Command::Receive { listen, options } => {
            crate::migration::destination::main(&listen, &options, main_entered)
        }
        Command::Api {
            socket,
            action:
                ApiAction::Migrate {
                    to,
                    downtime_ms,
                    max_rounds,
                    postcopy,
                },
        } => migrate_command(&socket, &to, downtime_ms, max_rounds, postcopy),
        Command::Api { socket, action } => match api_command(&socket, &action) {
            Ok(()) => 0,
            Err(error) => {
                eprintln!("lull-vmm: {error}");
                1
            }
        },
        Command::Bench(options) => crate::bench::main(&options),
        Command::WriteTestGuest(path) => {
            match std::fs::write(&path, crate::test_guest::pvh_elf()) {
                Ok(()) => 0,
                Err(error) => {
                    eprintln!("lull-vmm: cannot write {}: {error}", path.display());
                    1
                }
            }
        }
    }
}

/// Binds the API socket, replacing a stale socket file (never a regular file).
fn bind_api_socket(path: &Path) -> std::io::Result<UnixListener> {
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if metadata.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    UnixListener::bind(path)
}

/// Runs a restored machine with vCPU 0 on this thread (the main thread; see
/// [`Machine::restore_here`]) and everything else [`run_started`] does on a new one, which
/// ends the process when the guest powers off or fails. Returns only if it cannot start.
fn run_here(
    starting: crate::machine::Starting,
    vcpu0: crate::machine::CallerVcpu,
    options: RunOptions,
    main_entered: Instant,
) -> i32 {
    // The machine goes over a channel, not into the closure: if the thread cannot start,
    // vCPU 0 must be dropped before the machine, whose drop waits for it to stop. Boxed: the
    // channel's first block holds 31 of what it carries, and each new page is a page fault.
    let (hand_over, take) = std::sync::mpsc::channel::<Box<crate::machine::Starting>>();
    let controller = std::thread::Builder::new()
        .name("lull-vmm".into())
        .spawn(move || {
            if let Ok(starting) = take.recv() {
                // What `main` does after `run_started` (its `process::exit`), from here: the
                // main thread is in KVM_RUN.
                std::process::exit(run_started(starting.wait_running(), &options, main_entered));
            }
        });
    match controller {
        Ok(_) => {
            let _ = hand_over.send(Box::new(starting));
            // Returns once the machine stops vCPU 0, on the way to the exit above.
            vcpu0.run();
            loop {
                std::thread::park();
            }
        }
        Err(error) => {
            drop(vcpu0);
            drop(starting);
            eprintln!("lull-vmm: cannot start a thread: {error}");
            1
        }
    }
}

/// Serves a started machine until the guest powers off or fails; returns the exit status.
pub fn run_started(started: Started, options: &RunOptions, main_entered: Instant) -> i32 {
    let Started {
        machine,
        events,
        vcpus_running_at,
        phases,
    } = started;
    if options.timing {
        let since_main = vcpus_running_at.duration_since(main_entered).as_secs_f64() * 1e6;
        let phases: serde_json::Map<String, serde_json::Value> = phases
            .iter()
            .map(|(name, took)| {
                (
                    name.to_string(),
                    serde_json::json!((took.as_secs_f64() * 1e6).round()),
                )
            })
            .collect();
        let line = serde_json::json!({
            "event": "vcpus_running",
            "since_main_us": since_main.round(),
            "minor_faults": crate::bench::minor_faults(),
            "clock_monotonic_ns": crate::bench::clock_monotonic_ns(vcpus_running_at),
            "phases_us": phases,
        });
        eprintln!("{line}");
    }
    let terminal = RawTerminal::enter();
    let bus = machine.bus();
    let quit = machine.event_sender();
    let machine = Arc::new(Mutex::new(machine));
    if let Err(error) = console::spawn_stdin_forwarder(bus.serial.clone(), quit, terminal.is_raw())
    {
        eprintln!("lull-vmm: no console input: {error}");
    }
    if let Some(path) = &options.api_sock {
        match bind_api_socket(path)
            .and_then(|listener| api::spawn_server(listener, machine.clone()))
        {
            Ok(_) => {}
            Err(error) => {
                drop(terminal);
                eprintln!(
                    "lull-vmm: cannot serve the API on {}: {error}",
                    path.display()
                );
                return 1;
            }
        }
    }
    if let Some(path) = &options.metrics_file {
        if let Err(error) = spawn_metrics_writer(path, options.metrics_interval_ms, machine.clone())
        {
            eprintln!(
                "lull-vmm: cannot write metrics to {}: {error}",
                path.display()
            );
        }
    }
    let status = match events.recv() {
        Ok(VmEvent::Machine(MachineRequest::PowerOff)) => 0,
        Ok(VmEvent::Machine(MachineRequest::Reset)) => {
            eprintln!("\r\nlull-vmm: the guest asked for a reset; lull-vmm does not reboot guests, exiting");
            0
        }
        Ok(VmEvent::Machine(MachineRequest::DebugExit(value))) => ((value << 1) | 1) as i32,
        Ok(VmEvent::Failed { index, reason }) => {
            eprintln!("\r\nlull-vmm: vCPU {index} failed: {reason}");
            1
        }
        Ok(VmEvent::HostQuit) => 0,
        Ok(VmEvent::MigratedAway) => 0,
        Ok(VmEvent::Fatal(_)) => 1,
        Err(_) => 1,
    };
    drop(terminal);
    if let Some(path) = &options.api_sock {
        let _ = std::fs::remove_file(path);
    }
    // Device sockets (virtio-gpio's control sockets) go too; never wait for the machine to
    // exit (a thread may hold it): a socket left behind is replaced by the next run.
    let sockets = machine.try_lock().map(|m| m.device_sockets());
    for path in sockets.unwrap_or_default() {
        let _ = std::fs::remove_file(path);
    }
    status
}

fn spawn_metrics_writer(
    path: &Path,
    interval_ms: u64,
    machine: Arc<Mutex<Machine>>,
) -> std::io::Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let mut tracker = RateTracker::default();
            loop {
                std::thread::sleep(Duration::from_millis(interval_ms));
                let report = lock(&machine).metrics_with(&mut tracker);
                let Ok(mut line) = serde_json::to_vec(&report) else {
                    continue;
                };
                line.push(b'\n');
                if file.write_all(&line).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}

fn api_command(socket: &Path, action: &ApiAction) -> Result<(), client::ClientError> {
    match action {
        ApiAction::Info => println!(
            "{}",
            String::from_utf8_lossy(&client::request(socket, "GET", "/vm", b"")?)
        ),
        ApiAction::Pause => {
            client::request(socket, "PUT", "/vm/pause", b"")?;
        }
        ApiAction::Resume => {
            client::request(socket, "PUT", "/vm/resume", b"")?;
        }
        ApiAction::PowerButton => {
            client::request(socket, "PUT", "/vm/power-button", b"")?;
        }
        ApiAction::Snapshot { path, leave_paused } => {
            // Convenience over the strict API: pause if running, resume afterwards unless asked not to.
            let info: serde_json::Value =
                serde_json::from_slice(&client::request(socket, "GET", "/vm", b"")?)
                    .unwrap_or_default();
            let was_running = info["state"] == "running";
            if was_running {
                client::request(socket, "PUT", "/vm/pause", b"")?;
            }
            let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            let body = serde_json::json!({ "path": absolute }).to_string();
            let result = client::request(socket, "PUT", "/vm/snapshot", body.as_bytes());
            if was_running && !leave_paused {
                client::request(socket, "PUT", "/vm/resume", b"")?;
            }
            println!("{}", String::from_utf8_lossy(&result?));
        }
        ApiAction::MigrateCancel => {
            client::request(socket, "PUT", "/vm/migration/cancel", b"")?;
            println!("migration cancel requested; the guest keeps running here");
        }
        ApiAction::Migrate { .. } => unreachable!("migrate_command handles it"),
        ApiAction::Metrics { interval_ms, json } => {
            let mut body = client::request(socket, "GET", "/vm/metrics", b"")?;
            if let Some(interval) = interval_ms {
                std::thread::sleep(Duration::from_millis(*interval));
                body = client::request(socket, "GET", "/vm/metrics", b"")?;
            }
            if *json {
                println!("{}", String::from_utf8_lossy(&body));
            } else {
                match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(report) => print!("{}", format_metrics(&report)),
                    Err(_) => println!("{}", String::from_utf8_lossy(&body)),
                }
            }
        }
    }
    Ok(())
}

/// How often `lull-vmm migrate` asks for progress.
const MIGRATE_POLL: Duration = Duration::from_millis(50);

/// `lull-vmm migrate`: starts the migration, shows its progress, prints the summary; 0 only
/// when the guest runs on the destination.
fn migrate_command(
    socket: &Path,
    to: &MigrationUrl,
    downtime_ms: u64,
    max_rounds: u32,
    postcopy: Option<u32>,
) -> i32 {
    use std::io::IsTerminal;
    let mut body = serde_json::json!({
        "url": to.to_string(),
        "downtime_ms": downtime_ms,
        "max_rounds": max_rounds,
    });
    match postcopy {
        Some(0) => body["postcopy"] = true.into(),
        Some(rounds) => body["postcopy_after_rounds"] = rounds.into(),
        None => {}
    }
    let body = body.to_string();
    if let Err(error) = client::request(socket, "PUT", "/vm/migrate", body.as_bytes()) {
        eprintln!("lull-vmm: {error}");
        return 1;
    }
    let terminal = std::io::stdout().is_terminal();
    let mut last_line = String::new();
    let mut last_state = MigrationState::Connecting;
    loop {
        let status: serde_json::Value = match client::request(socket, "GET", "/vm/migration", b"")
            .map(|body| serde_json::from_slice(&body).unwrap_or_default())
        {
            Ok(status) => status,
            Err(error) => {
                if terminal {
                    println!();
                }
                eprintln!(
                    "lull-vmm: lost the source VMM while the migration was {}: {error}",
                    serde_json::to_value(last_state)
                        .ok()
                        .and_then(|s| s.as_str().map(str::to_string))
                        .unwrap_or_default()
                );
                return 1;
            }
        };
        let state = status["state"].as_str().unwrap_or("");
        last_state = match state {
            "precopy" => MigrationState::Precopy,
            "stop_and_copy" => MigrationState::StopAndCopy,
            "waiting_for_destination" => MigrationState::WaitingForDestination,
            _ => last_state,
        };
        let line = progress_line(&status);
        if line != last_line && !matches!(state, "completed" | "failed" | "cancelled") {
            if terminal {
                print!("\r{line}\x1b[K");
                let _ = std::io::stdout().flush();
            } else {
                println!("{line}");
            }
            last_line = line;
        }
        match state {
            "completed" => {
                if terminal {
                    println!();
                }
                match serde_json::from_value::<crate::migration::MigrationSummary>(
                    status["summary"].clone(),
                ) {
                    Ok(summary) => println!("{}", summary.line()),
                    Err(_) => println!("migration completed: {}", status["summary"]),
                }
                return 0;
            }
            "failed" | "cancelled" => {
                if terminal {
                    println!();
                }
                eprintln!(
                    "lull-vmm: migration {state}: {}; the guest keeps running on the source",
                    status["error"].as_str().unwrap_or("(no reason given)")
                );
                return 1;
            }
            _ => std::thread::sleep(MIGRATE_POLL),
        }
    }
}

/// The live line of `lull-vmm migrate`, from a GET /vm/migration answer.
pub fn progress_line(status: &serde_json::Value) -> String {
    let number = |key: &str| status[key].as_f64().unwrap_or(0.0);
    let size = |key: &str| crate::migration::bytes(status[key].as_u64().unwrap_or(0));
    let expected = number("expected_downtime_ms");
    format!(
        "migrate: {} round {}  sent {}  left {}  dirty {:.0} pages/s  rate {}/s  expected downtime {}",
        status["state"].as_str().unwrap_or("?"),
        status["round"],
        size("bytes_sent"),
        size("bytes_left"),
        number("dirty_pages_per_second"),
        crate::migration::bytes(number("transfer_bytes_per_second") as u64),
        if expected < 0.0 {
            "unknown".to_string()
        } else {
            format!("{expected:.2} ms")
        }
    )
}

/// Human-readable metrics: per vCPU, the idle-cost figures first.
pub fn format_metrics(report: &serde_json::Value) -> String {
    let mut out = String::new();
    let number = |value: &serde_json::Value| value.as_f64().unwrap_or(0.0);
    out += &format!(
        "state {}  uptime {:.1} s  rates over the last {:.2} s\n",
        report["state"].as_str().unwrap_or("?"),
        number(&report["uptime_seconds"]),
        number(&report["interval_seconds"])
    );
    for rates in report["rates"].as_array().into_iter().flatten() {
        let kvm = &rates["kvm_per_second"];
        out += &format!(
            "vcpu{}: wakeups/s {:.1}  exits/s {:.1}  irq injections/s {:.1}  halted {}\n",
            rates["index"],
            number(&kvm["halt_wakeup"]),
            number(&kvm["exits"]),
            number(&kvm["irq_injections"]),
            rates["halted_fraction"]
                .as_f64()
                .map_or("n/a".to_string(), |f| format!("{:.1}%", f * 100.0)),
        );
        let mut by_reason: Vec<String> = Vec::new();
        for (reason, value) in kvm.as_object().into_iter().flatten() {
            if reason.ends_with("_exits") && number(value) > 0.0 {
                by_reason.push(format!("{reason} {:.1}", number(value)));
            }
        }
        for (reason, value) in rates["vmm_exits_per_second"]
            .as_object()
            .into_iter()
            .flatten()
        {
            if number(value) > 0.0 {
                by_reason.push(format!("vmm:{reason} {:.1}", number(value)));
            }
        }
        if !by_reason.is_empty() {
            out += &format!("  exits/s by reason: {}\n", by_reason.join(", "));
        }
    }
    let host = &report["host"];
    out += &format!(
        "host: VMM RSS {} KiB (excluding guest RAM), guest RAM resident {} KiB\n",
        host["vmm_rss_kib"], host["guest_memory_rss_kib"]
    );
    out
}

/// Metrics as JSON (for tests and tools that hold a report).
pub fn metrics_json(report: &MetricsReport) -> String {
    serde_json::to_string(report).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn disks_and_nets_are_repeatable_and_checked() {
        use crate::devices::virtio::VirtioConfig;
        let Command::Run { config, .. } = parse(&args(
            "run --kernel k --disk path=a.img --net tap=tap0 --disk path=b.img,readonly",
        ))
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            config.virtio,
            [
                VirtioConfig::Block {
                    path: "a.img".into(),
                    readonly: false
                },
                VirtioConfig::Net {
                    tap: "tap0".into(),
                    mac: None
                },
                VirtioConfig::Block {
                    path: "b.img".into(),
                    readonly: true
                },
            ]
        );
        let error = parse(&args("run --kernel k --disk file=a.img")).unwrap_err();
        assert!(error.to_string().contains("--disk"), "{error}");
        let error = parse(&args("run --kernel k --net tap=t,mac=1")).unwrap_err();
        assert!(error.to_string().starts_with("option --net"), "{error}");
        assert_eq!(
            parse(&args("run --kernel k --disk")),
            Err(UsageError::MissingValue("--disk".into()))
        );
    }

    #[test]
    fn gpio_devices_take_their_place_among_the_others() {
        use crate::devices::virtio::{gpio::GpioConfig, VirtioConfig};
        let Command::Run { config, .. } = parse(&args(
            "run --kernel k --disk path=a.img --gpio lines=a,,b,control=/tmp/c.sock --gpio default",
        ))
        .unwrap() else {
            panic!()
        };
        assert_eq!(config.virtio.len(), 3);
        assert_eq!(
            config.virtio[1],
            VirtioConfig::Gpio(GpioConfig {
                lines: vec!["a".into(), "".into(), "b".into()],
                control: Some("/tmp/c.sock".into()),
                log: None,
            })
        );
        let VirtioConfig::Gpio(default) = &config.virtio[2] else {
            panic!("{:?}", config.virtio[2])
        };
        assert_eq!(default.lines.len(), 8);
        let error = parse(&args("run --kernel k --gpio lines=a,mode=x")).unwrap_err();
        assert!(error.to_string().starts_with("option --gpio"), "{error}");
        assert_eq!(
            parse(&args("run --kernel k --gpio")),
            Err(UsageError::MissingValue("--gpio".into()))
        );
    }

    #[test]
    fn run_with_defaults() {
        let Command::Run { config, options } = parse(&args("run --kernel k.elf")).unwrap() else {
            panic!()
        };
        assert_eq!(
            config,
            MachineConfig {
                kernel: "k.elf".into(),
                vcpus: 1,
                memory_mib: 128,
                cmdline: vec![],
                rsdp_hint: true,
                virtio: vec![],
            }
        );
        assert_eq!(options.metrics_interval_ms, 1000);
        assert_eq!(options.api_sock, None);
    }

    #[test]
    fn run_with_everything() {
        let command = parse(&args(
            "run --kernel k --vcpus 4 --memory 1024 --cmdline nohz=off --api-sock /s --metrics-file /m --metrics-interval-ms 250 --timing --no-rsdp-hint",
        ))
        .unwrap();
        let Command::Run { config, options } = command else {
            panic!()
        };
        assert_eq!(
            (config.vcpus, config.memory_mib, config.cmdline),
            (4, 1024, b"nohz=off".to_vec())
        );
        assert!(!config.rsdp_hint);
        assert_eq!(options.api_sock, Some(PathBuf::from("/s")));
        assert_eq!(options.metrics_file, Some(PathBuf::from("/m")));
        assert_eq!(options.metrics_interval_ms, 250);
        assert!(options.timing);
    }

    #[test]
    fn cmdline_file_is_taken_byte_for_byte() {
        let path = tempfile::Builder::new()
            .prefix("lull-cmdline-")
            .tempfile()
            .unwrap()
            .into_temp_path();
        std::fs::write(&path, b"a b\n").unwrap();
        let Command::Run { config, .. } = parse(&args(&format!(
            "run --kernel k --cmdline-file {}",
            path.display()
        )))
        .unwrap() else {
            panic!()
        };
        assert_eq!(config.cmdline, b"a b\n");
    }

    #[test]
    fn usage_errors_are_typed() {
        assert_eq!(parse(&[]), Err(UsageError::NoCommand));
        assert_eq!(
            parse(&args("fly")),
            Err(UsageError::UnknownCommand("fly".into()))
        );
        assert!(matches!(
            parse(&args("run")),
            Err(UsageError::MissingOption { .. })
        ));
        assert_eq!(
            parse(&args("run --kernel")),
            Err(UsageError::MissingValue("--kernel".into()))
        );
        assert!(matches!(
            parse(&args("run --kernel k --vcpus many")),
            Err(UsageError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse(&args("run --kernel k --vcpus 300")),
            Err(UsageError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse(&args("run --kernel k --metrics-interval-ms 0")),
            Err(UsageError::InvalidValue { .. })
        ));
        assert_eq!(
            parse(&args("run --kernel k --cmdline a --cmdline-file b")),
            Err(UsageError::TwoCommandLines)
        );
        assert!(matches!(
            parse(&args("run --kernel k --cmdline-file /nonexistent/x")),
            Err(UsageError::CommandLineFile { .. })
        ));
        assert!(matches!(
            parse(&args("run --kernel k --bogus")),
            Err(UsageError::UnknownOption { .. })
        ));
        assert!(matches!(
            parse(&args("pause")),
            Err(UsageError::MissingOption { .. })
        ));
        assert!(matches!(
            parse(&args("snapshot --api s")),
            Err(UsageError::MissingOption { .. })
        ));
        assert!(matches!(
            parse(&args("pause --api s --path p")),
            Err(UsageError::UnknownOption { .. })
        ));
    }

    #[test]
    fn api_subcommands() {
        assert_eq!(
            parse(&args("snapshot --api /s --path /d --leave-paused")),
            Ok(Command::Api {
                socket: "/s".into(),
                action: ApiAction::Snapshot {
                    path: "/d".into(),
                    leave_paused: true
                }
            })
        );
        assert_eq!(
            parse(&args("metrics --api /s --interval-ms 500 --json")),
            Ok(Command::Api {
                socket: "/s".into(),
                action: ApiAction::Metrics {
                    interval_ms: Some(500),
                    json: true
                }
            })
        );
        assert_eq!(
            parse(&args("power-button --api /s")),
            Ok(Command::Api {
                socket: "/s".into(),
                action: ApiAction::PowerButton
            })
        );
        assert_eq!(
            parse(&args("restore --snapshot /d --api-sock /s")).unwrap(),
            Command::Restore {
                snapshot: "/d".into(),
                options: RunOptions {
                    api_sock: Some("/s".into()),
                    metrics_interval_ms: 1000,
                    ..Default::default()
                },
                lazy: None,
            }
        );
    }

    #[test]
    fn migration_commands_parse_with_defaults_and_clear_errors() {
        assert_eq!(
            parse(&args("migrate --api /s --to unix:/tmp/m.sock")),
            Ok(Command::Api {
                socket: "/s".into(),
                action: ApiAction::Migrate {
                    to: MigrationUrl::Unix("/tmp/m.sock".into()),
                    downtime_ms: 5,
                    max_rounds: 30,
                    postcopy: None,
                }
            })
        );
        assert_eq!(
            parse(&args(
                "migrate --api /s --to tcp://127.0.0.1:4444 --downtime-ms 300 --max-rounds 3"
            )),
            Ok(Command::Api {
                socket: "/s".into(),
                action: ApiAction::Migrate {
                    to: MigrationUrl::Tcp {
                        host: "127.0.0.1".into(),
                        port: 4444
                    },
                    downtime_ms: 300,
                    max_rounds: 3,
                    postcopy: None,
                }
            })
        );
        assert_eq!(
            parse(&args("migrate-cancel --api /s")),
            Ok(Command::Api {
                socket: "/s".into(),
                action: ApiAction::MigrateCancel
            })
        );
        let Command::Receive { listen, options } =
            parse(&args("receive --listen tcp://0.0.0.0:4444 --api-sock /d")).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            listen,
            MigrationUrl::Tcp {
                host: "0.0.0.0".into(),
                port: 4444
            }
        );
        assert_eq!(options.api_sock, Some(PathBuf::from("/d")));

        let error = |line: &str| parse(&args(line)).unwrap_err().to_string();
        assert_eq!(error("migrate --api /s"), "'migrate' needs --to URL");
        assert_eq!(error("receive"), "'receive' needs --listen URL");
        assert_eq!(
            error("migrate --api /s --to http://x:1"),
            "option --to: 'http://x:1' is not a migration URL: give tcp://HOST:PORT or unix:PATH"
        );
        assert_eq!(
            error("receive --listen tcp://h:99999"),
            "option --listen: 'tcp://h:99999': '99999' is not a port number (1-65535)"
        );
        assert_eq!(
            error("migrate --api /s --to unix:/x --downtime-ms 0"),
            "option --downtime-ms: '0' is not a valid downtime in ms (at least 1)"
        );
        assert_eq!(
            error("migrate --api /s --to unix:/x --max-rounds -1"),
            "option --max-rounds: '-1' is not a valid number of rounds (at least 1)"
        );
        let postcopy = |line: &str| match parse(&args(line)) {
            Ok(Command::Api {
                action: ApiAction::Migrate { postcopy, .. },
                ..
            }) => postcopy,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            postcopy("migrate --api /s --to unix:/x --postcopy"),
            Some(0)
        );
        assert_eq!(
            postcopy("migrate --api /s --to unix:/x --postcopy-after 4"),
            Some(4)
        );
        assert!(matches!(
            parse(&args("migrate --api /s --to unix:/x --postcopy-after 0")),
            Err(UsageError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse(&args("migrate-cancel --api /s --to unix:/x")),
            Err(UsageError::UnknownOption { .. })
        ));
        assert!(matches!(
            parse(&args("receive --listen unix:/x --snapshot /d")),
            Err(UsageError::UnknownOption { .. })
        ));
    }

    #[test]
    fn migrate_progress_line_shows_round_bytes_rate_and_downtime() {
        let status = serde_json::json!({
            "state": "precopy", "round": 2, "bytes_sent": 3 * 1024 * 1024,
            "bytes_left": 8192, "dirty_pages_per_second": 12.4,
            "transfer_bytes_per_second": 512.0 * 1024.0 * 1024.0, "expected_downtime_ms": 0.015
        });
        assert_eq!(
            progress_line(&status),
            "migrate: precopy round 2  sent 3.0 MiB  left 8.0 KiB  dirty 12 pages/s  rate 512.0 MiB/s  expected downtime 0.01 ms"
        );
        let unknown =
            serde_json::json!({"state": "precopy", "round": 0, "expected_downtime_ms": -1.0});
        assert!(progress_line(&unknown).ends_with("expected downtime unknown"));
    }

    #[test]
    fn pv_hypercalls_option_takes_auto_on_off_in_both_spellings() {
        let options = |line: &str| match parse(&args(line)).unwrap() {
            Command::Run { options, .. } | Command::Restore { options, .. } => options,
            other => panic!("{other:?}"),
        };
        assert_eq!(options("run --kernel k").pv_hypercalls, PvHypercalls::Auto);
        assert_eq!(
            options("run --kernel k --pv-hypercalls off").pv_hypercalls,
            PvHypercalls::Off
        );
        assert_eq!(
            options("restore --snapshot /d --pv-hypercalls=on").pv_hypercalls,
            PvHypercalls::On
        );
        assert_eq!(
            options("restore --snapshot /d --pv-hypercalls auto").pv_hypercalls,
            PvHypercalls::Auto
        );
        let error = parse(&args("run --kernel k --pv-hypercalls=maybe")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "option --pv-hypercalls: 'maybe' is not a valid mode (auto, on or off)"
        );
        assert_eq!(
            parse(&args("run --kernel k --pv-hypercalls")),
            Err(UsageError::MissingValue("--pv-hypercalls".into()))
        );
    }

    #[test]
    fn bench_sizes_parse() {
        let Command::Bench(options) = parse(&args("bench --sizes-mib 64,256")).unwrap() else {
            panic!()
        };
        assert_eq!(options.sizes_mib, vec![64, 256]);
        assert!(!options.migrate);
        let Command::Bench(options) = parse(&args("bench --migrate --runs 3")).unwrap() else {
            panic!()
        };
        assert!(options.migrate && options.runs == 3);
        let Command::Bench(options) = parse(&args("bench --postcopy --runs 4")).unwrap() else {
            panic!()
        };
        assert!(options.postcopy && !options.lazy && options.runs == 4);
        assert!(matches!(
            parse(&args("bench --runs 0")),
            Err(UsageError::InvalidValue { .. })
        ));
        assert!(matches!(
            parse(&args("bench --sizes-mib 1,x")),
            Err(UsageError::InvalidValue { .. })
        ));
    }

    #[test]
    fn metrics_format_shows_idle_cost_first() {
        let report = serde_json::json!({
            "state": "running", "uptime_seconds": 3.0, "interval_seconds": 1.0,
            "rates": [{"index": 0, "kvm_per_second": {"halt_wakeup": 0.0, "exits": 2.0, "io_exits": 2.0},
                       "vmm_exits_per_second": {"io_serial": 2.0}, "halted_fraction": 0.99}],
            "host": {"vmm_rss_kib": 2048, "guest_memory_rss_kib": 100}
        });
        let text = format_metrics(&report);
        assert!(text.contains("vcpu0: wakeups/s 0.0  exits/s 2.0"), "{text}");
        assert!(text.contains("halted 99.0%"), "{text}");
        assert!(
            text.contains("io_exits 2.0") && text.contains("vmm:io_serial 2.0"),
            "{text}"
        );
        assert!(text.contains("VMM RSS 2048 KiB"), "{text}");
    }
}

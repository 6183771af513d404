//! `lull-gpio-backend --socket PATH [--lines A,B,...|--ngpio N] [--log FILE] [--control PATH]`:
//! see `--help` and the README.

#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::io::{self, BufReader};
use std::os::unix::net::UnixListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;

use lull_gpio_sim::socket::{check_socket_path, serve_control_socket};
use lull_vhost_user_gpio::backend::{GpioBackend, WAKE_EVENT};
use lull_vhost_user_gpio::cli::{self, Options, Parsed, USAGE};
use lull_vhost_user_gpio::gpio::Gpio;
use lull_vhost_user_gpio::log::Log;
use nix::sys::signal::{SigSet, Signal};
use std::os::fd::AsRawFd;
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{Error as DaemonError, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

const NAME: &str = "lull-gpio-backend";

fn main() -> ExitCode {
    let options = match cli::parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(options)) => options,
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{NAME}: {e}\n(`{NAME} --help` lists the options)");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &Options) -> Result<(), String> {
    let out: Box<dyn io::Write + Send> = match &options.log {
        Some(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("--log {}: {e}", path.display()))?,
        ),
        None => Box::new(io::stderr()),
    };
    let log = Arc::new(Log::new(out));
    check_socket_path(&options.socket, "--socket")?;
    if let Some(control) = &options.control {
        check_socket_path(control, "--control")?;
    }
    let gpio = Arc::new(Gpio::new(&options.lines, log.clone())?);

    // SIGINT/SIGTERM are taken by a thread of their own (blocked here, before any other thread
    // exists, so every thread inherits the mask): it removes the sockets and exits.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .map_err(|e| format!("blocking SIGINT/SIGTERM: {e}"))?;
    {
        let log = log.clone();
        let sockets: Vec<_> = std::iter::once(options.socket.clone())
            .chain(options.control.clone())
            .collect();
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                match signals.wait() {
                    Ok(signal) => log.line(format_args!("{}: exiting", signal.as_str())),
                    Err(e) => log.line(format_args!("sigwait: {e}: exiting")),
                }
                for path in sockets {
                    let _ = std::fs::remove_file(path);
                }
                std::process::exit(0);
            })
            .map_err(|e| format!("signal thread: {e}"))?;
    }

    let mut listener = Listener::new(&options.socket, true)
        .map_err(|e| format!("--socket {}: {e}", options.socket.display()))?;
    if let Some(path) = &options.control {
        let control =
            UnixListener::bind(path).map_err(|e| format!("--control {}: {e}", path.display()))?;
        let gpio = gpio.clone();
        thread::Builder::new()
            .name("control".into())
            .spawn(move || serve_control_socket(control, gpio))
            .map_err(|e| format!("control thread: {e}"))?;
        log.line(format_args!("control socket {}", path.display()));
    }
    if options.stdin {
        let gpio = gpio.clone();
        thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                let result = gpio.serve_control(BufReader::new(io::stdin()), io::stdout(), "stdin");
                if let Err(e) = result {
                    gpio.log.line(format_args!("control (stdin): {e}"));
                }
            })
            .map_err(|e| format!("stdin thread: {e}"))?;
    }

    let names: Vec<String> = options
        .lines
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if n.is_empty() {
                format!("{i}")
            } else {
                format!("{i}:{n}")
            }
        })
        .collect();
    log.line(format_args!(
        "{NAME}: {} line(s) [{}], listening on {}",
        names.len(),
        names.join(" "),
        options.socket.display()
    ));
    let result = loop {
        let served = serve_one(&mut listener, &gpio);
        match &served {
            // Nobody to serve: another instance's `in use` check (see check_socket_path), or
            // a client that gave up. The socket stays served and nothing was changed.
            Ok(Served::Probe) => {
                log.line("the connection hung up without a request (a check whether the socket is served?); still listening");
                continue;
            }
            Ok(Served::FrontEnd) => log.line("front-end disconnected"),
            Err(e) => log.line(format_args!("front-end connection ended: {e}")),
        }
        if !options.keep_listening {
            break served.map(|_| ());
        }
        gpio.reset("for the next front-end");
        log.line(format_args!("listening on {}", options.socket.display()));
    };
    let _ = std::fs::remove_file(&options.socket);
    if let Some(control) = &options.control {
        let _ = std::fs::remove_file(control);
    }
    result
}

/// How a connection ended without an error.
enum Served {
    /// A front-end was served until it disconnected.
    FrontEnd,
    /// The peer hung up before its first request.
    Probe,
}

/// Serves one front-end from accept to disconnect.
fn serve_one(listener: &mut Listener, gpio: &Arc<Gpio>) -> Result<Served, String> {
    let backend = Arc::new(GpioBackend::new(gpio.clone()));
    let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon = VhostUserDaemon::new(NAME.into(), backend.clone(), memory)
        .map_err(|e| format!("vhost-user daemon: {e}"))?;
    let handlers = daemon.get_epoll_handlers();
    for handler in &handlers {
        handler
            .register_listener(gpio.wake_consumer().as_raw_fd(), EventSet::IN, WAKE_EVENT)
            .map_err(|e| format!("registering the control wake-up: {e}"))?;
    }
    daemon
        .start(listener)
        .map_err(|e| format!("accepting the front-end: {e}"))?;
    gpio.log.line("front-end connected");
    let result = daemon.wait();
    for handler in &handlers {
        let _ =
            handler.unregister_listener(gpio.wake_consumer().as_raw_fd(), EventSet::IN, WAKE_EVENT);
        handler.send_exit_event();
    }
    match result {
        Ok(())
        | Err(DaemonError::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) if !backend.was_asked() => Ok(Served::Probe),
        Ok(())
        | Err(DaemonError::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => Ok(Served::FrontEnd),
        Err(e) => Err(e.to_string()),
    }
}

//! The control socket: a Unix stream socket, one thread per client, each line a control
//! command answered by one reply line (see [`crate::control`]).

use std::io::BufReader;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::thread;

use crate::gpio::Gpio;

/// Refuses a path another process is listening on, or that is not a socket; a stale socket
/// (nobody listening) is replaced. `what` names the option in the error (`--control`).
pub fn check_socket_path(path: &Path, what: &str) -> Result<(), String> {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !metadata.file_type().is_socket() {
        return Err(format!(
            "{what} {}: exists and is not a socket (not removing it)",
            path.display()
        ));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(format!(
            "{what} {}: in use (another process is listening on it)",
            path.display()
        ));
    }
    std::fs::remove_file(path)
        .map_err(|e| format!("{what} {}: stale, cannot remove it: {e}", path.display()))
}

/// Binds the control socket at `path` (after [`check_socket_path`]) and serves it on a thread
/// of its own, which blocks in accept(2) and read(2): no CPU while nobody talks to it.
pub fn spawn_control_socket(path: &Path, what: &str, gpio: Arc<Gpio>) -> Result<(), String> {
    check_socket_path(path, what)?;
    let listener =
        UnixListener::bind(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    thread::Builder::new()
        .name("gpio-control".into())
        .spawn(move || serve_control_socket(listener, gpio))
        .map_err(|e| format!("control thread: {e}"))?;
    Ok(())
}

/// Accepts control clients forever, each on a thread of its own.
pub fn serve_control_socket(listener: UnixListener, gpio: Arc<Gpio>) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                gpio.log.line(format_args!("control socket: {e}"));
                continue;
            }
        };
        let client = gpio.clone();
        let spawned = thread::Builder::new()
            .name("control-client".into())
            .spawn(move || {
                let reader = match stream.try_clone() {
                    Ok(reader) => BufReader::new(reader),
                    Err(e) => return client.log.line(format_args!("control socket: {e}")),
                };
                if let Err(e) = client.serve_control(reader, &stream, "socket") {
                    client.log.line(format_args!("control socket client: {e}"));
                }
            });
        if let Err(e) = spawned {
            gpio.log
                .line(format_args!("control socket: no client thread: {e}"));
        }
    }
}

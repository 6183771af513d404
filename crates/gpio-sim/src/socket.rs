//! The control socket: a Unix stream socket, one thread per client, each line a control
//! command answered by one reply line (see [`crate::control`]).

use std::io::BufReader;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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

/// A control socket served on a thread of its own that can be closed again: a migration
/// source hands the path over to its destination, and takes it back if the migration fails.
/// Dropping it leaves the socket served (as [`spawn_control_socket`] does).
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    closing: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

/// [`spawn_control_socket`], closable.
pub fn spawn_closable_control_socket(
    path: &Path,
    what: &str,
    gpio: Arc<Gpio>,
) -> Result<ControlSocket, String> {
    check_socket_path(path, what)?;
    let listener =
        UnixListener::bind(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let closing = Arc::new(AtomicBool::new(false));
    let thread = {
        let closing = closing.clone();
        thread::Builder::new()
            .name("gpio-control".into())
            .spawn(move || serve_until(listener, gpio, &closing))
            .map_err(|e| format!("control thread: {e}"))?
    };
    Ok(ControlSocket {
        path: path.to_path_buf(),
        closing,
        thread: Some(thread),
    })
}

impl ControlSocket {
    /// Stops accepting, closes the listening socket and removes its file (clients already
    /// connected keep their connections). Returns once the path is free for another process.
    pub fn close(mut self) {
        self.closing.store(true, Ordering::SeqCst);
        // Wake the accept(2); the thread sees the flag and drops the listener.
        if UnixStream::connect(&self.path).is_ok() {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Accepts control clients forever, each on a thread of its own.
pub fn serve_control_socket(listener: UnixListener, gpio: Arc<Gpio>) {
    serve_until(listener, gpio, &AtomicBool::new(false));
}

/// Accepts control clients until `closing` is set (checked after each accept).
fn serve_until(listener: UnixListener, gpio: Arc<Gpio>, closing: &AtomicBool) {
    for stream in listener.incoming() {
        if closing.load(Ordering::SeqCst) {
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Write};

    fn chip() -> Arc<Gpio> {
        let log = Arc::new(crate::log::Log::new(Box::new(std::io::sink())));
        Arc::new(Gpio::new(&["a".to_string(), "b".to_string()], log).unwrap())
    }

    fn ask(path: &Path, command: &str) -> String {
        let mut stream = UnixStream::connect(path).unwrap();
        stream.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stream)
            .read_line(&mut line)
            .unwrap();
        line
    }

    #[test]
    fn a_closed_socket_frees_its_path_and_can_be_opened_again() {
        let dir = std::env::temp_dir().join(format!("gpio-sim-close-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        let gpio = chip();
        let socket = spawn_closable_control_socket(&path, "--control", gpio.clone()).unwrap();
        assert!(!ask(&path, "get a").is_empty());
        // A client served before the close keeps its connection.
        let mut kept = UnixStream::connect(&path).unwrap();
        let mut reader = std::io::BufReader::new(kept.try_clone().unwrap());
        let mut line = String::new();
        kept.write_all(b"get a\n").unwrap();
        reader.read_line(&mut line).unwrap();
        socket.close();
        assert!(!path.exists(), "the file is removed");
        assert!(UnixStream::connect(&path).is_err(), "nobody listens");
        line.clear();
        kept.write_all(b"get b\n").unwrap();
        reader.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the kept client is still served");
        // Another process (here: another socket) may now take the path; once it is gone, the
        // first owner takes it back.
        let other = spawn_closable_control_socket(&path, "--control", chip()).unwrap();
        assert!(
            spawn_closable_control_socket(&path, "--control", gpio.clone())
                .unwrap_err()
                .contains("in use"),
            "refused while the other listens"
        );
        other.close();
        let again = spawn_closable_control_socket(&path, "--control", gpio).unwrap();
        assert!(!ask(&path, "get a").is_empty());
        again.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

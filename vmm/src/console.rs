//! The serial console on the host side: guest output to stdout, stdin to the guest's UART.
//! Raw terminal mode only when stdin is a TTY; there, Ctrl-A x quits (as in QEMU).

use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm_sys_util::terminal::Terminal;

use crate::devices::lock;
use crate::devices::serial::SerialConsole;
use crate::vstate::vcpu::VmEvent;

/// Ctrl-A, the escape prefix; Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A.
const ESCAPE: u8 = 0x01;

/// Guest output to the process's stdout, flushed per write (a console must not lag).
pub struct StdoutWriter;

impl Write for StdoutWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut stdout = io::stdout().lock();
        stdout.write_all(bytes)?;
        stdout.flush()?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

/// Puts a TTY stdin into raw mode for the console's lifetime.
pub struct RawTerminal {
    active: bool,
}

impl RawTerminal {
    pub fn enter() -> Self {
        // The lock is held only while switching modes, never while the forwarder reads.
        let active = io::stdin().is_terminal() && io::stdin().lock().set_raw_mode().is_ok();
        Self { active }
    }

    pub fn is_raw(&self) -> bool {
        self.active
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if self.active {
            let _ = io::stdin().lock().set_canon_mode();
        }
    }
}

/// What the escape filter decided about the input so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Filtered {
    Forward(Vec<u8>),
    Quit,
}

/// Tracks Ctrl-A across reads.
#[derive(Default)]
pub struct EscapeFilter {
    pending_escape: bool,
}

impl EscapeFilter {
    pub fn filter(&mut self, input: &[u8]) -> Filtered {
        let mut forward = Vec::with_capacity(input.len());
        for &byte in input {
            if self.pending_escape {
                self.pending_escape = false;
                match byte {
                    b'x' | b'X' => return Filtered::Quit,
                    ESCAPE => forward.push(ESCAPE),
                    other => forward.extend_from_slice(&[ESCAPE, other]),
                }
            } else if byte == ESCAPE {
                self.pending_escape = true;
            } else {
                forward.push(byte);
            }
        }
        Filtered::Forward(forward)
    }
}

/// Copies stdin into the UART (respecting its 64-byte FIFO) on a thread of its own.
pub fn spawn_stdin_forwarder(
    serial: Arc<Mutex<SerialConsole>>,
    quit: Sender<VmEvent>,
    escapes: bool,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            // Read through a duplicate of fd 0, not `io::stdin()`: its lock would be held while the
            // read blocks, and restoring the terminal at exit needs that lock.
            let mut stdin = match io::stdin().as_fd().try_clone_to_owned() {
                Ok(fd) => std::fs::File::from(fd),
                Err(_) => return,
            };
            let mut buffer = [0u8; 4096];
            let mut filter = EscapeFilter::default();
            loop {
                let read = match stdin.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(read) => read,
                };
                let bytes = if escapes {
                    match filter.filter(&buffer[..read]) {
                        Filtered::Quit => {
                            let _ = quit.send(VmEvent::HostQuit);
                            return;
                        }
                        Filtered::Forward(bytes) => bytes,
                    }
                } else {
                    buffer[..read].to_vec()
                };
                let mut sent = 0;
                while sent < bytes.len() {
                    sent += lock(&serial).enqueue_input(&bytes[sent..]);
                    if sent < bytes.len() {
                        // The guest has not drained its FIFO yet.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_a_x_quits_and_ctrl_a_ctrl_a_sends_one() {
        let mut filter = EscapeFilter::default();
        assert_eq!(filter.filter(b"ls\r"), Filtered::Forward(b"ls\r".to_vec()));
        assert_eq!(
            filter.filter(&[ESCAPE, ESCAPE, b'a']),
            Filtered::Forward(vec![ESCAPE, b'a'])
        );
        assert_eq!(filter.filter(&[ESCAPE]), Filtered::Forward(vec![]));
        assert_eq!(filter.filter(b"x"), Filtered::Quit);
    }

    #[test]
    fn other_escapes_pass_through() {
        let mut filter = EscapeFilter::default();
        assert_eq!(
            filter.filter(&[ESCAPE, b'c']),
            Filtered::Forward(vec![ESCAPE, b'c'])
        );
    }
}

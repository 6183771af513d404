//! The back-end as a process: under a real QEMU (vhost-user-gpio-pci), and on its own (signals,
//! a socket in use, the control socket).

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{backend, log_of, skip, wait_for, Control, Guard, TempDir, BACKEND};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
fn control_socket_drives_the_lines() {
    let dir = TempDir::new("control");
    let mut backend = backend(&dir, &["--lines", "amp-enable,button,,led0"]);
    let mut control = Control::connect(&dir.join("control.sock"));
    assert_eq!(control.send("get button"), "ok 0");
    assert_eq!(control.send("set button 1"), "ok");
    assert_eq!(control.send("get 1"), "ok 1");
    assert_eq!(control.send("pulse led0"), "ok");
    assert_eq!(
        control.send("dump"),
        "ok 0:amp-enable:none:out=0:in=0 1:button:none:out=0:in=1 2::none:out=0:in=0 \
         3:led0:none:out=0:in=0"
    );
    assert!(control.send("set 9 1").starts_with("error: no line 9"));
    assert!(control.send("launch").starts_with("error: unknown command"));
    // A second client at the same time.
    assert_eq!(
        Control::connect(&dir.join("control.sock")).send("get button"),
        "ok 1"
    );
    let log = log_of(&dir);
    assert!(log.contains("input 1 (button) <- 1"), "{log}");
    assert!(
        log.contains("control (socket): set button 1 -> ok"),
        "{log}"
    );

    kill(Pid::from_raw(backend.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = backend.wait_timeout("the back-end after SIGTERM", Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(log_of(&dir).contains("SIGTERM: exiting"));
    assert!(!dir.join("gpio.sock").exists(), "the socket is left behind");
}

#[test]
fn a_socket_in_use_is_refused() {
    let dir = TempDir::new("in-use");
    let mut first = backend(&dir, &[]);
    let second = Command::new(BACKEND)
        .arg("--socket")
        .arg(dir.join("gpio.sock"))
        .arg("--no-stdin")
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use"), "{stderr}");
    // The second one's check was a connection without a request: the first one must take it
    // for what it is and go on serving the socket, not end as if its front-end had left.
    wait_for(
        "the first back-end's log of the check",
        Duration::from_secs(10),
        || log_of(&dir).contains("hung up without a request"),
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        first.0.try_wait().unwrap().is_none(),
        "the first back-end exited after the check:\n{}",
        log_of(&dir)
    );
    assert!(
        dir.join("gpio.sock").exists(),
        "the socket is gone after the check:\n{}",
        log_of(&dir)
    );
    assert!(!log_of(&dir).contains("front-end disconnected"));

    kill(Pid::from_raw(first.0.id() as i32), Signal::SIGINT).unwrap();
    let status = first.wait_timeout("the back-end after SIGINT", Duration::from_secs(10));
    assert!(status.success(), "{status}");
}

#[test]
fn bad_command_lines_exit_with_usage_errors() {
    for args in [
        &[][..],
        &["--socket"],
        &["--socket", "/tmp/x", "--ngpio", "0"],
    ] {
        let output = Command::new(BACKEND).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("lull-gpio-backend: "), "{stderr}");
        assert!(stderr.contains("--help"), "{stderr}");
    }
    let help = Command::new(BACKEND).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--socket PATH"));
}

/// QEMU's monitor on stdio: commands in, output gathered by a reader thread.
struct Monitor {
    stdin: std::process::ChildStdin,
    output: mpsc::Receiver<u8>,
    seen: String,
}

impl Monitor {
    fn wait_for(&mut self, text: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        let from = self.seen.len();
        let mut bytes = Vec::new();
        loop {
            if self.seen[from..].contains(text) {
                return self.seen[from..].to_string();
            }
            let left = end.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(byte) => {
                    bytes.push(byte);
                    if let Ok(text) = std::str::from_utf8(&bytes) {
                        self.seen.push_str(text);
                        bytes.clear();
                    }
                }
                Err(_) => panic!(
                    "QEMU's monitor: no `{text}` within {timeout:?}; it printed:\n{}",
                    &self.seen[from..]
                ),
            }
        }
    }

    fn command(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }
}

#[test]
fn qemu_vhost_user_gpio_pci() {
    const TEST: &str = "qemu_vhost_user_gpio_pci";
    let qemu = std::env::var("LULL_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
    match Command::new(&qemu).arg("--version").output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => {
            return skip(
                TEST,
                &format!("`{qemu} --version` failed: {}", output.status),
            )
        }
        Err(e) => return skip(TEST, &format!("{qemu} is not installed ({e})")),
    }
    let devices = Command::new(&qemu)
        .args(["-device", "help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !devices.contains("vhost-user-gpio-pci") {
        return skip(TEST, &format!("{qemu} has no vhost-user-gpio-pci device"));
    }

    let dir = TempDir::new("qemu");
    let mut backend = backend(&dir, &[]);
    let mut child = Command::new(&qemu)
        .args([
            "-object",
            "memory-backend-memfd,id=mem,size=256M,share=on",
            "-M",
            "q35,memory-backend=mem",
            "-m",
            "256M",
            "-accel",
            "tcg",
            "-S",
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "none",
            "-monitor",
            "stdio",
            "-chardev",
        ])
        .arg(format!(
            "socket,id=vg,path={}",
            dir.join("gpio.sock").display()
        ))
        .args(["-device", "vhost-user-gpio-pci,chardev=vg"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting QEMU");
    let stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut qemu_child = Guard(child);
    let (sender, output) = mpsc::channel();
    std::thread::spawn(move || {
        let mut byte = [0];
        while let Ok(1) = stdout.read(&mut byte) {
            if sender.send(byte[0]).is_err() {
                break;
            }
        }
    });
    let mut monitor = Monitor {
        stdin,
        output,
        seen: String::new(),
    };
    monitor.wait_for("(qemu)", Duration::from_secs(30));
    monitor.command("info pci");
    // virtio 1.0 PCI device ID 0x1040 + 41 (GPIO).
    let pci = monitor.wait_for("1af4:1069", Duration::from_secs(10));
    assert!(pci.contains("PCI device 1af4:1069"), "{pci}");

    let log = log_of(&dir);
    for expected in [
        "front-end connected",
        "GET_FEATURES",
        "GET_PROTOCOL_FEATURES",
        // QEMU reads ngpio (8) and the names' size (60 bytes) at realize.
        "GET_CONFIG offset 0 size 8: [08, 00, 00, 00, 3c, 00, 00, 00]",
    ] {
        assert!(log.contains(expected), "no `{expected}` in the log:\n{log}");
    }
    // The control channel works while QEMU is connected.
    let mut control = Control::connect(&dir.join("control.sock"));
    assert_eq!(control.send("set button 1"), "ok");

    monitor.command("quit");
    let status = qemu_child.wait_timeout("QEMU after quit", Duration::from_secs(20));
    assert!(status.success(), "QEMU: {status}");
    let status = backend.wait_timeout("the back-end after QEMU quit", Duration::from_secs(10));
    assert!(status.success(), "back-end: {status}\n{}", log_of(&dir));
    let log = log_of(&dir);
    assert!(log.contains("front-end disconnected"), "{log}");
    assert!(!dir.join("gpio.sock").exists(), "the socket is left behind");
}

//! Finding (and where possible installing) the host tools the tasks need.

use std::process::{Command, Stdio};

/// Whether `program --version` runs.
fn available(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Makes sure `program` exists, installing Debian `package` with apt-get when running as root.
/// Otherwise returns an error with the exact command to run.
pub fn ensure(program: &str, package: &str) -> Result<(), String> {
    if available(program) {
        return Ok(());
    }
    let command = format!("apt-get update && apt-get install -y {package}");
    if !is_root() {
        return Err(format!(
            "{program} is missing; install it with: sudo sh -c '{command}'"
        ));
    }
    eprintln!("xtask: {program} is missing; running: {command}");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("DEBIAN_FRONTEND=noninteractive {command}"))
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if status.success() && available(program) {
        Ok(())
    } else {
        Err(format!(
            "installing {package} failed; run it by hand: {command}"
        ))
    }
}

/// QEMU for x86_64 guests.
pub fn ensure_qemu() -> Result<(), String> {
    ensure("qemu-system-x86_64", "qemu-system-x86")
}

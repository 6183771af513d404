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
    // Another apt (a parallel build, unattended upgrades) may hold the dpkg lock: wait for it
    // rather than fail.
    let waiting = format!(
        "apt-get -o DPkg::Lock::Timeout=600 update && \
         apt-get -o DPkg::Lock::Timeout=600 install -y {package}"
    );
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("DEBIAN_FRONTEND=noninteractive {waiting}"))
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

/// The kernel's target, which `rust-toolchain.toml` names but rustup does not add to a toolchain
/// that is already installed without it.
const KERNEL_TARGET: &str = "x86_64-unknown-none";

/// Lines of `rustup <what> list --installed` for the pinned toolchain, or `None` without rustup.
fn rustup_installed(what: &str) -> Option<Vec<String>> {
    let out = Command::new("rustup")
        .current_dir(crate::kernel::repo_root())
        .args([what, "list", "--installed"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())?;
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| line.trim().to_string())
            .collect(),
    )
}

/// Makes sure the pinned toolchain can build the kernel: the `x86_64-unknown-none` target and
/// `rust-src` are added with rustup when missing (a machine may already have the pinned
/// toolchain without them, and then rustup ignores the `targets` line of
/// `rust-toolchain.toml`). Without rustup, returns the exact command to run instead.
pub fn ensure_kernel_toolchain() -> Result<(), String> {
    static CHECKED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    CHECKED.get_or_init(check_kernel_toolchain).clone()
}

fn check_kernel_toolchain() -> Result<(), String> {
    let Some(targets) = rustup_installed("target") else {
        // No rustup: the toolchain came from elsewhere; check the sysroot for the target.
        let sysroot = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .args(["--print", "sysroot"])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .unwrap_or_default();
        let lib = std::path::Path::new(&sysroot)
            .join("lib/rustlib")
            .join(KERNEL_TARGET);
        return if lib.exists() {
            Ok(())
        } else {
            Err(format!(
                "the Rust toolchain has no {KERNEL_TARGET} target and rustup is not installed; \
                 install rustup (https://rustup.rs) and run: rustup target add {KERNEL_TARGET} \
                 && rustup component add rust-src"
            ))
        };
    };
    let add = |args: &[&str]| -> Result<(), String> {
        let shown = format!("rustup {}", args.join(" "));
        eprintln!(
            "xtask: the pinned toolchain lacks {}; running: {shown}",
            args[args.len() - 1]
        );
        let status = Command::new("rustup")
            .current_dir(crate::kernel::repo_root())
            .args(args)
            .status()
            .map_err(|e| format!("cannot run rustup: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`{shown}` failed; run it by hand"))
        }
    };
    if !targets.iter().any(|t| t == KERNEL_TARGET) {
        add(&["target", "add", KERNEL_TARGET])?;
    }
    let components = rustup_installed("component").unwrap_or_default();
    if !components.iter().any(|c| c.starts_with("rust-src")) {
        add(&["component", "add", "rust-src"])?;
    }
    Ok(())
}

/// Adds `target`'s standard library to the pinned toolchain with rustup if it is missing and
/// rustup exists; whether the target is there afterwards. For optional targets (the musl build
/// of lull-vmm): a failure is reported and the caller falls back.
pub fn try_add_target(target: &str) -> bool {
    let Some(targets) = rustup_installed("target") else {
        return false;
    };
    if targets.iter().any(|t| t == target) {
        return true;
    }
    eprintln!("xtask: the pinned toolchain lacks {target}; running: rustup target add {target}");
    let added = Command::new("rustup")
        .current_dir(crate::kernel::repo_root())
        .args(["target", "add", target])
        .status()
        .is_ok_and(|status| status.success());
    if !added {
        eprintln!("xtask: `rustup target add {target}` failed");
    }
    added
}

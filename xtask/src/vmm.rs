//! Building lull-vmm the way it is measured and deployed: release, statically linked, on musl
//! where the toolchain has it.
//!
//! `cargo build --release -p lull-vmm` gives a dynamically linked PIE; the tests use that.
//! The VMM's start-up is part of restore latency, and on this project's hosts two things in
//! it are expensive: page faults (several µs each under shadow paging) and CPUID (~11 µs
//! each: it always traps to the hypervisor below). So the benchmarks and
//! `cargo xtask run --vmm` build it:
//!
//! - statically (`+crt-static`) and without position independence
//!   (`relocation-model=static`): no dynamic loader mapping libc and relocating, which took
//!   ~45 of the ~120 page faults a restore took before its vCPUs ran;
//! - against musl (`x86_64-unknown-linux-musl`), as Firecracker is, adding its standard
//!   library with rustup when it is missing: glibc's start-up
//!   reads the CPU's features and cache geometry with dozens of CPUID instructions (its
//!   Intel cache-descriptor walk alone repeats leaves 2 and 4 for every cache parameter),
//!   ~0.8 ms of CPU before `main` here (`perf stat lull-vmm help`: 0.95 ms task-clock with
//!   glibc, 0.16 ms with musl). musl's start-up executes none. Without the musl target the
//!   static glibc build is used, and a note says what it costs.
//!
//! The flags go to the target only (`--target`), so build scripts and proc-macros, which
//! cannot be static, are built as usual; the binary lands in `target/<target>/release/`, and
//! what runs is a fresh copy of it beside it, `lull-vmm-installed` ([`installed_copy`]). The
//! glibc build needs glibc's static libraries (`libc.a`, Debian's libc6-dev, which a Rust
//! toolchain on Linux needs anyway); musl's come with its Rust target.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The preferred target: static musl.
const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// The fallback: static glibc (the host target; the VMM exists for x86_64 Linux only).
const GNU_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Rust flags of the static build for `target`.
fn static_rustflags(target: &str) -> String {
    format!(
        r#"target.{target}.rustflags=["-C", "target-feature=+crt-static", "-C", "relocation-model=static"]"#
    )
}

/// Whether the toolchain building in `root` has `target`'s standard library.
fn target_installed(root: &Path, target: &str) -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(output) = Command::new(rustc)
        .current_dir(root)
        .args(["--print", "target-libdir", "--target", target])
        .output()
    else {
        return false;
    };
    if !output.status.success() {
        return false;
    }
    let libdir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    std::fs::read_dir(libdir).is_ok_and(|mut entries| {
        entries.any(|entry| {
            entry.is_ok_and(|entry| entry.file_name().to_string_lossy().starts_with("libstd-"))
        })
    })
}

/// Builds the release lull-vmm, statically linked (musl if installed, else glibc); returns
/// the path of a fresh copy of it ([`installed_copy`]).
pub fn build_release() -> Result<PathBuf, String> {
    let root = crate::kernel::repo_root();
    let target =
        if target_installed(&root, MUSL_TARGET) || crate::tools::try_add_target(MUSL_TARGET) {
            MUSL_TARGET
        } else {
            eprintln!(
                "xtask: building lull-vmm on static glibc: its start-up costs ~0.8 ms more here \
             (CPUID); `rustup target add {MUSL_TARGET}` gives the musl build"
            );
            GNU_TARGET
        };
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(&root).args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "lull-vmm",
        "--target",
        target,
        "--config",
        &static_rustflags(target),
    ]);
    // RUSTFLAGS would replace the configured flags (and so quietly give a dynamic build).
    for key in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET"] {
        command.env_remove(key);
    }
    let status = command
        .status()
        .map_err(|e| format!("cannot build lull-vmm: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building the static lull-vmm for {target} failed (the glibc build needs glibc's \
             static libraries, libc.a: Debian's libc6-dev); `cargo build --release -p \
             lull-vmm` builds a dynamic one"
        ));
    }
    installed_copy(&root.join("target").join(target).join("release/lull-vmm"))
}

/// A fresh copy of `built` beside it (`lull-vmm-installed`), which is what the benchmarks and
/// `run --vmm` start. The binary as the linker left it in the page cache costs more per page
/// fault to start from than the same bytes copied, as any installed VMM is: interleaved
/// restores, same bytes, 2026-12-03: `read_state` 217-230 µs from the linker's file against
/// 157-172 µs from copies (in `target/` or in /tmp), the same number of faults (why: not
/// established; the page cache's folio sizes are the likely difference). Copied under a
/// temporary name and renamed, so a running copy is never written to.
fn installed_copy(built: &Path) -> Result<PathBuf, String> {
    let installed = built.with_file_name("lull-vmm-installed");
    let temporary = built.with_file_name(".lull-vmm-installed.tmp");
    std::fs::copy(built, &temporary)
        .and_then(|_| std::fs::rename(&temporary, &installed))
        .map_err(|e| {
            format!(
                "cannot copy {} to {}: {e}",
                built.display(),
                installed.display()
            )
        })?;
    Ok(installed)
}

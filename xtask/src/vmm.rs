//! Building lull-vmm the way it is measured and deployed: release, statically linked.
//!
//! `cargo build --release -p lull-vmm` gives a dynamically linked PIE; the tests use that.
//! The VMM's start-up is part of restore latency, and on this project's hosts (shadow paging)
//! each page fault costs several µs: the dynamic loader (mapping libc and libgcc_s, resolving
//! and relocating) took ~45 of the ~120 page faults a restore takes before its vCPUs run. So
//! the benchmarks and `cargo xtask run --vmm` build it with glibc linked in
//! (`+crt-static`) and without position independence (`relocation-model=static`: nothing to
//! relocate at start). The flags go to the target only (`--target`), so build scripts and
//! proc-macros, which cannot be static, are built as usual; the binary lands in
//! `target/x86_64-unknown-linux-gnu/release/`. It needs glibc's static libraries (`libc.a`,
//! Debian's libc6-dev, which a Rust toolchain on Linux needs anyway).

use std::path::PathBuf;
use std::process::Command;

/// The host target: the VMM exists for x86_64 Linux only.
const HOST_TARGET: &str = "x86_64-unknown-linux-gnu";
/// Rust flags of the static build.
const STATIC_RUSTFLAGS: &str = r#"target.x86_64-unknown-linux-gnu.rustflags=["-C", "target-feature=+crt-static", "-C", "relocation-model=static"]"#;

/// Builds the release lull-vmm, statically linked; returns its path.
pub fn build_release() -> Result<PathBuf, String> {
    let root = crate::kernel::repo_root();
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(&root).args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "lull-vmm",
        "--target",
        HOST_TARGET,
        "--config",
        STATIC_RUSTFLAGS,
    ]);
    // RUSTFLAGS would replace the configured flags (and so quietly give a dynamic build).
    for key in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET"] {
        command.env_remove(key);
    }
    let status = command
        .status()
        .map_err(|e| format!("cannot build lull-vmm: {e}"))?;
    if !status.success() {
        return Err(
            "building the static lull-vmm failed (it needs glibc's static libraries, \
                    libc.a: Debian's libc6-dev); `cargo build --release -p lull-vmm` builds a \
                    dynamic one"
                .into(),
        );
    }
    Ok(root
        .join("target")
        .join(HOST_TARGET)
        .join("release/lull-vmm"))
}

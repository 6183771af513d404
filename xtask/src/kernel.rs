//! Building the kernel in its variants (shell, in-kernel tests, ZONE_DMA, boot baseline).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A kernel build configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    pub features: Vec<&'static str>,
    pub release: bool,
}

impl Variant {
    /// The interactive kernel.
    pub fn shell(release: bool) -> Self {
        Variant {
            features: vec![],
            release,
        }
    }

    /// A name for the built file: `lull-shell`, `lull-ktest+zone-dma`, ... (never `lull`,
    /// which cargo overwrites with whichever variant it built last).
    fn file_name(&self) -> String {
        if self.features.is_empty() {
            "lull-shell".to_string()
        } else {
            format!("lull-{}", self.features.join("+"))
        }
    }
}

/// The repository root (the directory holding the host workspace).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// Builds the kernel and returns the path of a copy of its ELF named after the variant (so
/// several variants can be used side by side without rebuilding).
pub fn build(variant: &Variant) -> Result<PathBuf, String> {
    let kernel_dir = repo_root().join("kernel");
    let built = build_in(&kernel_dir, variant)?;
    let named = built.with_file_name(variant.file_name());
    std::fs::copy(&built, &named).map_err(|e| format!("copy {}: {e}", built.display()))?;
    Ok(named)
}

/// Builds the kernel whose source is in `kernel_dir` (ours, or another commit's, as the boot
/// bench's reference kernel) and returns the path of the ELF cargo wrote.
pub fn build_in(kernel_dir: &Path, variant: &Variant) -> Result<PathBuf, String> {
    crate::tools::ensure_kernel_toolchain()?;
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(kernel_dir).arg("build").arg("--quiet");
    if variant.release {
        command.arg("--release");
    }
    if !variant.features.is_empty() {
        command.arg("--features").arg(variant.features.join(","));
    }
    // The kernel workspace has its own config (target, rustflags); do not leak ours into it.
    for key in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET"] {
        command.env_remove(key);
    }
    let status = command
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "kernel build in {} failed ({variant:?})",
            kernel_dir.display()
        ));
    }
    let profile = if variant.release { "release" } else { "debug" };
    Ok(kernel_dir
        .join("target/x86_64-unknown-none")
        .join(profile)
        .join("lull"))
}

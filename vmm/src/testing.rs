//! Helpers for tests that need /dev/kvm. Such tests are `#[ignore = "needs /dev/kvm"]`, so a
//! plain `cargo test` reports them as ignored (skipped) instead of passing without testing
//! anything; `cargo xtask test` runs them in a second pass (`-- --ignored`) only where KVM is
//! usable. A test that was asked to run but finds no usable KVM fails, saying why.
//!
//! `LULL_NO_KVM=1` hides KVM from the tests (and from `cargo xtask test`), as on a machine
//! without it.

/// The environment variable that hides /dev/kvm from the tests when set to anything but
/// empty or `0`.
pub const NO_KVM_ENV: &str = "LULL_NO_KVM";

/// Whether [`NO_KVM_ENV`] asks to hide KVM.
pub fn kvm_hidden() -> bool {
    std::env::var_os(NO_KVM_ENV).is_some_and(|value| !value.is_empty() && value != "0")
}

/// `Ok` when /dev/kvm can be opened read-write and is not hidden; otherwise why not.
pub fn kvm_usable() -> Result<(), String> {
    if kvm_hidden() {
        return Err(format!("{NO_KVM_ENV} is set"));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|error| format!("/dev/kvm unusable ({error})"))
}

/// Panics, naming `test` and the reason, unless KVM is usable: an ignored KVM test that was
/// explicitly run must not pass without testing anything.
pub fn require_kvm(test: &str) {
    if let Err(why) = kvm_usable() {
        panic!("{test} needs /dev/kvm: {why}");
    }
}

/// Opens KVM for `test`, or panics saying why it cannot.
pub fn kvm(test: &str) -> kvm_ioctls::Kvm {
    require_kvm(test);
    kvm_ioctls::Kvm::new().unwrap_or_else(|error| panic!("{test}: cannot open /dev/kvm: {error}"))
}

/// Reports `test` as skipped for `reason`: libtest counts a test that returns as passed, so
/// the skip also goes to the file `cargo xtask test` names in `LULL_SKIP_LOG` (one
/// `NAME<TAB>REASON` line), and xtask moves the test from passed to skipped. The caller returns.
pub fn skip(test: &str, reason: &str) {
    use std::io::Write as _;
    let reason = reason.replace(['\n', '\t'], " ");
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(path) = std::env::var_os("LULL_SKIP_LOG") {
        let line = format!("{test}\t{reason}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(error) = written {
            panic!("{test}: cannot record the skip in LULL_SKIP_LOG: {error}");
        }
    }
}

/// A scratch directory for a unit test, named `lull-vmm-{name}-…` in the temp directory and
/// removed when the returned guard is dropped.
#[cfg(test)]
pub(crate) fn scratch_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("lull-vmm-{name}-"))
        .tempdir()
        .unwrap()
}

//! Helpers for tests that need /dev/kvm: they skip, saying why, where it is missing.

/// Opens /dev/kvm, or prints why the calling test is skipped and returns `None`.
pub fn kvm_or_skip(test: &str) -> Option<kvm_ioctls::Kvm> {
    match kvm_ioctls::Kvm::new() {
        Ok(kvm) => Some(kvm),
        Err(error) => {
            eprintln!("SKIPPED {test}: /dev/kvm unavailable ({error})");
            None
        }
    }
}

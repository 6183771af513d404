//! Snapshot files: `state` (versioned, CRC-32-checked envelope around every piece's saved
//! state, encoded with postcard: compact, and decoded in microseconds, which restore latency
//! needs) and `memory` (guest RAM, sparse, mapped copy-on-write on restore).
//!
//! The memory file is not checksummed: restore maps it instead of reading it, which is what
//! keeps restore time independent of guest size. Its size is checked against the state.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vmm_state_file::StateFileError;

use crate::devices::acpi_pm::AcpiPmState;
use crate::devices::serial::SerialConsoleState;
use crate::devices::virtio::VirtioDeviceState;
use crate::vstate::memory::GuestMemoryState;
use crate::vstate::vcpu::VcpuState;
use crate::vstate::vm::VmState;

/// Layout version of [`SnapshotState`]; bump on any incompatible change.
/// 1: JSON payload. 2: postcard payload; kvmclock saved whole; per-vCPU TSC offset.
/// 3: virtio-mmio devices.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 3;
/// File names inside a snapshot directory.
pub const STATE_FILE_NAME: &str = "state";
pub const MEMORY_FILE_NAME: &str = "memory";

/// Everything but guest RAM.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotState {
    /// lull-vmm version that wrote it (informational).
    pub vmm_version: String,
    pub memory: GuestMemoryState,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialConsoleState,
    pub acpi_pm: AcpiPmState,
    /// virtio-mmio devices in slot order (their disks and TAPs are reopened by name).
    pub virtio: Vec<VirtioDeviceState>,
}

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Envelope {
        path: PathBuf,
        source: StateFileError,
    },
    #[error("{path}: state does not decode ({source}); the file is damaged or from an incompatible lull-vmm")]
    Decode {
        path: PathBuf,
        source: postcard::Error,
    },
    #[error("{path}: snapshot has {vcpus} vCPU states; a snapshot needs 1 to 255")]
    VcpuCount { path: PathBuf, vcpus: usize },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the state file atomically (temporary file, then rename). Returns its size.
pub fn write_state(directory: &Path, state: &SnapshotState) -> Result<u64, SnapshotError> {
    let path = directory.join(STATE_FILE_NAME);
    let payload = postcard::to_allocvec(state).map_err(|e| SnapshotError::Io {
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    let file = vmm_state_file::encode(SNAPSHOT_FORMAT_VERSION, &payload);
    let temporary = directory.join(format!(".{STATE_FILE_NAME}.tmp"));
    fs::write(&temporary, &file).map_err(io_error(&temporary))?;
    fs::rename(&temporary, &path).map_err(io_error(&path))?;
    Ok(file.len() as u64)
}

/// Reads and checks a snapshot's state file.
pub fn read_state(directory: &Path) -> Result<SnapshotState, SnapshotError> {
    let path = directory.join(STATE_FILE_NAME);
    let bytes = fs::read(&path).map_err(io_error(&path))?;
    let payload = vmm_state_file::decode(&bytes, SNAPSHOT_FORMAT_VERSION).map_err(|source| {
        SnapshotError::Envelope {
            path: path.clone(),
            source,
        }
    })?;
    let state: SnapshotState =
        postcard::from_bytes(payload).map_err(|source| SnapshotError::Decode {
            path: path.clone(),
            source,
        })?;
    if state.vcpus.is_empty() || state.vcpus.len() > 255 {
        return Err(SnapshotError::VcpuCount {
            path,
            vcpus: state.vcpus.len(),
        });
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory(name: &str) -> tempfile::TempDir {
        crate::testing::scratch_dir(&format!("snapshot-{name}"))
    }

    fn write_raw(dir: &Path, version: u32, payload: &[u8]) {
        fs::write(
            dir.join(STATE_FILE_NAME),
            vmm_state_file::encode(version, payload),
        )
        .unwrap();
    }

    #[test]
    fn missing_state_names_the_file() {
        let error = read_state(Path::new("/nonexistent/lull-snapshot")).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("/nonexistent/lull-snapshot/state"),
            "{error}"
        );
    }

    #[test]
    fn wrong_version_is_refused_before_decoding() {
        let scratch = directory("version");
        let dir = scratch.path();
        write_raw(dir, SNAPSHOT_FORMAT_VERSION + 1, b"{}");
        let error = read_state(dir).unwrap_err();
        assert!(matches!(
            error,
            SnapshotError::Envelope {
                source: StateFileError::UnsupportedVersion { .. },
                ..
            }
        ));
        assert!(error.to_string().contains("version"), "{error}");
    }

    #[test]
    fn corrupted_and_truncated_states_are_refused() {
        let scratch = directory("corrupt");
        let dir = scratch.path();
        write_raw(dir, SNAPSHOT_FORMAT_VERSION, b"{\"not\": \"a snapshot\"}");
        let path = dir.join(STATE_FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        bytes[30] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(read_state(dir)
            .unwrap_err()
            .to_string()
            .contains("corrupted"));
        bytes[30] ^= 1;
        fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        assert!(read_state(dir)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }

    #[test]
    fn valid_envelope_with_foreign_payload_is_a_decode_error() {
        let scratch = directory("foreign");
        let dir = scratch.path();
        write_raw(dir, SNAPSHOT_FORMAT_VERSION, b"{\"not\": \"a snapshot\"}");
        assert!(matches!(read_state(dir), Err(SnapshotError::Decode { .. })));
    }
}

//! The one save/restore trait every stateful piece of a VM implements (vCPU, VM-wide KVM state,
//! guest memory, each device), so snapshot and restore are a walk over the pieces.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Saves a piece of VM state and rebuilds the piece from it.
///
/// `save` runs while the VM is paused; `restore` runs before any vCPU of the new VM runs.
/// A piece whose restore needs live resources (a KVM fd, an interrupt line, a writer) gets
/// them through `RestoreArgs`.
pub trait Persist: Sized {
    /// What is written into the snapshot.
    type State: Serialize + DeserializeOwned;
    /// What restore needs besides the state.
    type RestoreArgs;
    /// Why save or restore failed.
    type Error: std::error::Error;

    fn save(&self) -> Result<Self::State, Self::Error>;
    fn restore(args: Self::RestoreArgs, state: &Self::State) -> Result<Self, Self::Error>;
}

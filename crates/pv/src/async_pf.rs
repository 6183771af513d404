//! Async page faults: sleep the faulting task instead of stalling the whole vCPU.
//!
//! When guest memory is swapped out on the host, a plain guest access stalls the vCPU until
//! the host has paged it in. With async PF (Linux `Documentation/virt/kvm/x86/msr.rst`,
//! MSR_KVM_ASYNC_PF_EN; guest side in `arch/x86/kernel/kvm.c`), the host instead injects a
//! synthetic #PF marked "page not present" carrying a token, the guest schedules another task
//! while the host faults the page in, and when it is in, the host raises the "page ready"
//! interrupt with the same token so the guest wakes the task that waited for it.
//!
//! The two events travel by different paths (an exception and an interrupt), so "ready" can
//! overtake "not present": the interrupt may be taken before the #PF handler got to register
//! its waiter. The table therefore records a ready that found nobody
//! ([`TokenState::ReadyEarly`]),
//! and the not-present that arrives later consumes it and does not sleep. The host also sends
//! a broadcast token (`0xFFFF_FFFF`, [`KVM_WAKE_ALL_TOKEN`]) meaning "I forgot everything
//! (e.g. async PF was re-enabled): wake every waiter".
//!
//! The host is not trusted to keep its side tidy: a ready for a token the guest never saw must
//! not grow guest memory. Waiters are bounded by the guest itself (one per faulting task, and
//! [`RefuseReason::TableFull`] beyond the table's capacity), and early readies are kept in a bounded FIFO
//! that drops the oldest: a genuine early ready is matched within microseconds by the #PF that
//! is already being delivered, so an old unmatched one is almost surely junk, and dropping the
//! newest instead would let a flood of junk starve out the genuine race it exists for. (If a
//! genuine one is dropped after all, its task sleeps until the host's next wake-all, or
//! forever: the table counts drops so the kernel can report them.)
//!
//! This is a sequential state machine: the kernel holds a spinlock (with interrupts off, since
//! the ready event is an interrupt) around every call, so a model over event orders (the
//! tests' proptest) covers it; `not_present` and `page_ready` allocate nothing after
//! [`AsyncPfTable::with_capacity`] (they run in the #PF handler and the ready interrupt).
//!
//! What the kernel does with this module:
//!
//! * boot, per vCPU, if CPUID 0x4000_0001 EAX has [`KVM_FEATURE_ASYNC_PF`] and
//!   [`KVM_FEATURE_ASYNC_PF_INT`]: write the ready vector to [`MSR_KVM_ASYNC_PF_INT`]
//!   *first*, then [`async_pf_en_msr_value`] of a zeroed 64-byte aligned [`ApfData`] area.
//! * #PF handler: [`ApfData::from_bytes`]; if `flags` has [`KVM_PV_REASON_PAGE_NOT_PRESENT`],
//!   clear `flags` to 0 before anything else can fault, take the token from CR2, and call
//!   [`AsyncPfTable::not_present`] (`can_sleep` = the fault came from a context that may
//!   schedule). Act on the [`NotPresentAction`].
//! * ready interrupt: read the `token`, call [`AsyncPfTable::page_ready`] (or
//!   [`AsyncPfTable::wake_all_with`] for [`KVM_WAKE_ALL_TOKEN`]) and wake what it returns; write 0
//!   to `token`, then 1 to [`MSR_KVM_ASYNC_PF_ACK`] so the host can deliver the next one.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::pvclock::{aligned, u32_at, Misaligned};

/// MSR that enables async PF: 64-byte aligned address of [`ApfData`] plus the `KVM_ASYNC_PF_*`
/// bits.
pub const MSR_KVM_ASYNC_PF_EN: u32 = 0x4b56_4d02;
/// MSR holding the interrupt vector of "page ready" notifications (bits 0-7).
pub const MSR_KVM_ASYNC_PF_INT: u32 = 0x4b56_4d06;
/// MSR the guest writes 1 to after handling a "page ready" event.
pub const MSR_KVM_ASYNC_PF_ACK: u32 = 0x4b56_4d07;
/// CPUID 0x4000_0001 EAX bit: async PF exists.
pub const KVM_FEATURE_ASYNC_PF: u32 = 4;
/// CPUID 0x4000_0001 EAX bit: async PF can be delivered as a #PF VM exit to a nested host.
pub const KVM_FEATURE_ASYNC_PF_VMEXIT: u32 = 10;
/// CPUID 0x4000_0001 EAX bit: "page ready" is delivered as an interrupt (required today).
pub const KVM_FEATURE_ASYNC_PF_INT: u32 = 14;

/// [`MSR_KVM_ASYNC_PF_EN`] bit 0: enabled.
pub const KVM_ASYNC_PF_ENABLED: u64 = 1 << 0;
/// [`MSR_KVM_ASYNC_PF_EN`] bit 1: also while the guest runs at CPL 0.
pub const KVM_ASYNC_PF_SEND_ALWAYS: u64 = 1 << 1;
/// [`MSR_KVM_ASYNC_PF_EN`] bit 2: deliver as #PF VM exits to a nested (L1) host.
pub const KVM_ASYNC_PF_DELIVERY_AS_PF_VMEXIT: u64 = 1 << 2;
/// [`MSR_KVM_ASYNC_PF_EN`] bit 3: deliver "page ready" through the interrupt vector.
pub const KVM_ASYNC_PF_DELIVERY_AS_INT: u64 = 1 << 3;
/// `flags` value of a "page not present" #PF.
pub const KVM_PV_REASON_PAGE_NOT_PRESENT: u32 = 1;
/// The token of a "page ready" that wakes every waiter.
pub const KVM_WAKE_ALL_TOKEN: u32 = 0xFFFF_FFFF;
/// Bytes of `struct kvm_vcpu_pv_apf_data` (flags u32, token u32, `pad: [u8; 56]`, enabled u32).
///
/// The ABI document calls the area "64 bytes": the host writes only `flags` and `token` in the
/// first 64, and `enabled` (offset 64) is guest bookkeeping that Linux keeps in the same
/// struct. Allocate 68 bytes (in practice a 128-byte aligned slot) and zero it.
pub const APF_DATA_SIZE: usize = 68;

/// Options for [`async_pf_en_msr_value`] beyond "enabled".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApfOptions {
    /// [`KVM_ASYNC_PF_SEND_ALWAYS`]: also fault asynchronously in kernel mode (the kernel must
    /// then cope with `can_sleep == false`).
    pub send_always: bool,
    /// [`KVM_ASYNC_PF_DELIVERY_AS_PF_VMEXIT`] (only with [`KVM_FEATURE_ASYNC_PF_VMEXIT`]).
    pub as_pf_vmexit: bool,
    /// [`KVM_ASYNC_PF_DELIVERY_AS_INT`]; without it current hosts deliver nothing.
    pub as_int: bool,
}

/// Value for [`MSR_KVM_ASYNC_PF_EN`]: the area's address (64-byte aligned) with the enable bit
/// and the chosen delivery bits.
pub fn async_pf_en_msr_value(gpa: u64, options: ApfOptions) -> Result<u64, Misaligned> {
    let mut value = aligned(gpa, 64)? | KVM_ASYNC_PF_ENABLED;
    if options.send_always {
        value |= KVM_ASYNC_PF_SEND_ALWAYS;
    }
    if options.as_pf_vmexit {
        value |= KVM_ASYNC_PF_DELIVERY_AS_PF_VMEXIT;
    }
    if options.as_int {
        value |= KVM_ASYNC_PF_DELIVERY_AS_INT;
    }
    Ok(value)
}

/// Value for [`MSR_KVM_ASYNC_PF_INT`].
pub fn async_pf_int_msr_value(vector: u8) -> u64 {
    u64::from(vector)
}

/// Value for [`MSR_KVM_ASYNC_PF_ACK`] after a "page ready" was handled.
pub const ASYNC_PF_ACK: u64 = 1;

/// A copy of `struct kvm_vcpu_pv_apf_data`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApfData {
    /// Non-zero ([`KVM_PV_REASON_PAGE_NOT_PRESENT`]) while a "not present" #PF is delivered.
    pub flags: u32,
    /// The token of the "page ready" being delivered.
    pub token: u32,
    /// Guest bookkeeping: async PF is enabled on this vCPU.
    pub enabled: u32,
}

impl ApfData {
    /// Byte offset of `flags`.
    pub const FLAGS_OFFSET: usize = 0;
    /// Byte offset of `token`.
    pub const TOKEN_OFFSET: usize = 4;
    /// Byte offset of `enabled`.
    pub const ENABLED_OFFSET: usize = 64;

    /// Parses the area's little-endian bytes.
    pub fn from_bytes(bytes: &[u8; APF_DATA_SIZE]) -> Self {
        Self {
            flags: u32_at(bytes, Self::FLAGS_OFFSET),
            token: u32_at(bytes, Self::TOKEN_OFFSET),
            enabled: u32_at(bytes, Self::ENABLED_OFFSET),
        }
    }

    /// The area's bytes (pad zero).
    pub fn to_bytes(&self) -> [u8; APF_DATA_SIZE] {
        let mut bytes = [0; APF_DATA_SIZE];
        bytes[0..4].copy_from_slice(&self.flags.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.token.to_le_bytes());
        bytes[64..68].copy_from_slice(&self.enabled.to_le_bytes());
        bytes
    }

    /// Whether the current #PF is an async "page not present" rather than a real fault.
    pub fn page_not_present(&self) -> bool {
        self.flags & KVM_PV_REASON_PAGE_NOT_PRESENT != 0
    }
}

/// What a "page not present" fault must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotPresentAction {
    /// The waiter is registered: block it until [`AsyncPfTable::page_ready`] (or
    /// [`AsyncPfTable::wake_all`]) returns it.
    Sleep,
    /// The page's ready already arrived (and is now consumed): retry the access at once.
    Proceed,
    /// The context cannot sleep: the waiter is registered, and the caller must halt with
    /// interrupts enabled until [`AsyncPfTable::is_ready`] says so (the ready interrupt ends
    /// each halt).
    HaltUntilReady,
}

/// A not-present event the table refused; the waiter comes back to the caller.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused<W> {
    /// Why.
    pub reason: RefuseReason,
    /// The waiter that was not registered.
    pub waiter: W,
}

/// Why [`AsyncPfTable::not_present`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    /// Already as many waiters as the table holds. The fault was not registered: the kernel
    /// may return from the #PF and let the access fault again (the host then has the page or
    /// sends a new token), or treat it as fatal; it must not sleep or halt on it.
    TableFull,
    /// A waiter for this token is already registered: the host reused a live token.
    DuplicateToken,
    /// The broadcast token is not a page's token.
    ReservedToken,
}

impl core::fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::TableFull => "async page fault table full",
            Self::DuplicateToken => "async page fault token already has a waiter",
            Self::ReservedToken => "async page fault token 0xffffffff is the wake-all broadcast",
        })
    }
}

/// One token's state in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenState {
    /// A task sleeps until the token's ready.
    Sleeping,
    /// A non-sleeping context halts until the token's ready.
    Halting,
    /// The ready arrived first (the dummy entry).
    ReadyEarly,
}

/// A registered waiter. A halter's `W` is returned by the ready too, so the kernel can kick
/// its CPU if the ready interrupt arrived on another one.
#[derive(Debug)]
enum Waiter<W> {
    Sleeper(W),
    Halter(W),
}

/// The per-guest table of async PF tokens.
#[derive(Debug)]
pub struct AsyncPfTable<W> {
    /// Sleepers and halters, unordered (swap-removed).
    waiters: Vec<(u32, Waiter<W>)>,
    /// Tokens whose ready came first, oldest first.
    ready_early: VecDeque<u32>,
    max_waiters: usize,
    max_ready_early: usize,
    dropped_ready_early: u64,
}

impl<W> AsyncPfTable<W> {
    /// A table for up to `max_waiters` simultaneous faults and `max_ready_early` unmatched
    /// readies; both are allocated now, none later.
    pub fn with_capacity(max_waiters: usize, max_ready_early: usize) -> Self {
        Self {
            waiters: Vec::with_capacity(max_waiters),
            ready_early: VecDeque::with_capacity(max_ready_early),
            max_waiters,
            max_ready_early,
            dropped_ready_early: 0,
        }
    }

    fn waiter_index(&self, token: u32) -> Option<usize> {
        self.waiters.iter().position(|(t, _)| *t == token)
    }

    /// A "page not present" #PF for `token`: registers `waiter` unless the ready came first.
    pub fn not_present(
        &mut self,
        token: u32,
        waiter: W,
        can_sleep: bool,
    ) -> Result<NotPresentAction, Refused<W>> {
        let refuse = |reason, waiter| Err(Refused { reason, waiter });
        if token == KVM_WAKE_ALL_TOKEN {
            return refuse(RefuseReason::ReservedToken, waiter);
        }
        if let Some(at) = self.ready_early.iter().position(|t| *t == token) {
            self.ready_early.remove(at);
            return Ok(NotPresentAction::Proceed);
        }
        if self.waiter_index(token).is_some() {
            return refuse(RefuseReason::DuplicateToken, waiter);
        }
        if self.waiters.len() >= self.max_waiters {
            return refuse(RefuseReason::TableFull, waiter);
        }
        let (entry, action) = if can_sleep {
            (Waiter::Sleeper(waiter), NotPresentAction::Sleep)
        } else {
            (Waiter::Halter(waiter), NotPresentAction::HaltUntilReady)
        };
        self.waiters.push((token, entry));
        Ok(action)
    }

    /// A "page ready" for `token`: returns its waiter (to wake), or records the early ready
    /// if nobody waits yet, dropping the oldest early ready when that queue is full. A ready
    /// for a token already recorded early is not recorded twice. The broadcast token is
    /// [`wake_all`](Self::wake_all)'s job and changes nothing here.
    pub fn page_ready(&mut self, token: u32) -> Option<W> {
        if token == KVM_WAKE_ALL_TOKEN {
            return None;
        }
        if let Some(at) = self.waiter_index(token) {
            let (Waiter::Sleeper(w) | Waiter::Halter(w)) = self.waiters.swap_remove(at).1;
            return Some(w);
        }
        if !self.ready_early.contains(&token) && self.max_ready_early > 0 {
            if self.ready_early.len() >= self.max_ready_early {
                self.ready_early.pop_front();
                self.dropped_ready_early = self.dropped_ready_early.saturating_add(1);
            }
            self.ready_early.push_back(token);
        }
        None
    }

    /// The broadcast ready: every waiter is passed to `wake` and the table is emptied, early
    /// readies included (the host forgot their tokens; they will never be matched). Allocates
    /// nothing; returns how many were woken.
    pub fn wake_all_with(&mut self, mut wake: impl FnMut(W)) -> usize {
        self.ready_early.clear();
        let woken = self.waiters.len();
        for (_, Waiter::Sleeper(w) | Waiter::Halter(w)) in self.waiters.drain(..) {
            wake(w);
        }
        woken
    }

    /// [`wake_all_with`](Self::wake_all_with), collecting the waiters (allocates).
    pub fn wake_all(&mut self) -> Vec<W> {
        let mut woken = Vec::with_capacity(self.waiters.len());
        self.wake_all_with(|w| woken.push(w));
        woken
    }

    /// For a halting waiter: whether `token`'s ready has come (its entry is gone).
    pub fn is_ready(&self, token: u32) -> bool {
        self.waiter_index(token).is_none()
    }

    /// The state of `token`, if it has one.
    pub fn state(&self, token: u32) -> Option<TokenState> {
        match self.waiters.iter().find(|(t, _)| *t == token) {
            Some((_, Waiter::Sleeper(_))) => Some(TokenState::Sleeping),
            Some((_, Waiter::Halter(_))) => Some(TokenState::Halting),
            None => self
                .ready_early
                .contains(&token)
                .then_some(TokenState::ReadyEarly),
        }
    }

    /// Registered sleepers and halters.
    pub fn waiters(&self) -> usize {
        self.waiters.len()
    }

    /// Recorded early readies.
    pub fn ready_early(&self) -> usize {
        self.ready_early.len()
    }

    /// Early readies dropped because their queue was full (each may be a task that will only
    /// wake at the next wake-all).
    pub fn dropped_ready_early(&self) -> u64 {
        self.dropped_ready_early
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_present_then_ready_wakes_the_sleeper() {
        let mut table = AsyncPfTable::with_capacity(4, 4);
        assert_eq!(
            table.not_present(7, "task", true),
            Ok(NotPresentAction::Sleep)
        );
        assert_eq!(table.state(7), Some(TokenState::Sleeping));
        assert!(!table.is_ready(7));
        assert_eq!(table.page_ready(7), Some("task"));
        assert_eq!(table.state(7), None);
        assert_eq!(table.page_ready(7), None, "woken once");
    }

    #[test]
    fn ready_before_not_present_means_no_sleep() {
        let mut table = AsyncPfTable::with_capacity(4, 4);
        assert_eq!(table.page_ready(9), None);
        assert_eq!(table.state(9), Some(TokenState::ReadyEarly));
        assert_eq!(
            table.not_present(9, "task", true),
            Ok(NotPresentAction::Proceed)
        );
        assert_eq!(table.state(9), None, "the early ready is consumed");
        assert_eq!((table.waiters(), table.ready_early()), (0, 0));
    }

    #[test]
    fn a_context_that_cannot_sleep_halts_until_ready() {
        let mut table = AsyncPfTable::with_capacity(4, 4);
        assert_eq!(
            table.not_present(3, 1usize, false),
            Ok(NotPresentAction::HaltUntilReady)
        );
        assert_eq!(table.state(3), Some(TokenState::Halting));
        assert!(!table.is_ready(3));
        assert_eq!(table.page_ready(3), Some(1), "the halting CPU, to kick");
        assert!(table.is_ready(3));
    }

    #[test]
    fn wake_all_wakes_everyone_and_forgets_early_readies() {
        let mut table = AsyncPfTable::with_capacity(4, 4);
        table.not_present(1, 'a', true).unwrap();
        table.not_present(2, 'b', false).unwrap();
        table.page_ready(3);
        let mut woken = table.wake_all();
        woken.sort_unstable();
        assert_eq!(woken, ['a', 'b']);
        assert_eq!((table.waiters(), table.ready_early()), (0, 0));
        assert!(table.is_ready(2));
        // The forgotten early ready no longer lets token 3 through.
        assert_eq!(table.not_present(3, 'c', true), Ok(NotPresentAction::Sleep));
        // The broadcast token itself is not a page.
        assert_eq!(table.page_ready(KVM_WAKE_ALL_TOKEN), None);
        assert_eq!(table.ready_early(), 0);
        assert_eq!(table.wake_all_with(|_| {}), 1);
    }

    #[test]
    fn waiters_beyond_capacity_are_refused_with_their_waiter() {
        let mut table = AsyncPfTable::with_capacity(2, 1);
        table.not_present(1, 10, true).unwrap();
        table.not_present(2, 20, true).unwrap();
        let refused = table.not_present(3, 30, true).unwrap_err();
        assert_eq!(
            refused,
            Refused {
                reason: RefuseReason::TableFull,
                waiter: 30
            }
        );
        assert_eq!(refused.reason.to_string(), "async page fault table full");
        // An early ready is still consumable when the waiter part is full.
        table.page_ready(4);
        assert_eq!(
            table.not_present(4, 40, true),
            Ok(NotPresentAction::Proceed)
        );
    }

    #[test]
    fn duplicate_and_reserved_tokens_are_refused() {
        let mut table = AsyncPfTable::with_capacity(4, 4);
        table.not_present(5, 1, true).unwrap();
        assert_eq!(
            table.not_present(5, 2, true).unwrap_err().reason,
            RefuseReason::DuplicateToken
        );
        assert_eq!(
            table
                .not_present(KVM_WAKE_ALL_TOKEN, 3, true)
                .unwrap_err()
                .reason,
            RefuseReason::ReservedToken
        );
        assert_eq!(table.page_ready(5), Some(1));
    }

    #[test]
    fn early_readies_are_bounded_and_the_oldest_goes() {
        let mut table = AsyncPfTable::<u8>::with_capacity(1, 2);
        table.page_ready(1);
        table.page_ready(2);
        table.page_ready(2); // a repeat does not take a second place
        assert_eq!((table.ready_early(), table.dropped_ready_early()), (2, 0));
        table.page_ready(3);
        assert_eq!((table.ready_early(), table.dropped_ready_early()), (2, 1));
        assert_eq!(table.state(1), None, "oldest dropped");
        assert_eq!(table.not_present(3, 0, true), Ok(NotPresentAction::Proceed));
        assert_eq!(table.not_present(2, 0, true), Ok(NotPresentAction::Proceed));
    }

    #[test]
    fn a_flood_of_unknown_readies_does_not_grow_the_table() {
        let mut table = AsyncPfTable::<u8>::with_capacity(4, 16);
        for token in 0..100_000 {
            table.page_ready(token);
        }
        assert_eq!(table.ready_early(), 16);
        assert_eq!(table.dropped_ready_early(), 100_000 - 16);
    }

    #[test]
    fn apf_data_layout_and_msr_values() {
        let mut bytes = [0u8; APF_DATA_SIZE];
        bytes[0..4].copy_from_slice(&KVM_PV_REASON_PAGE_NOT_PRESENT.to_le_bytes());
        bytes[4..8].copy_from_slice(&0x1234_5678u32.to_le_bytes());
        bytes[64..68].copy_from_slice(&1u32.to_le_bytes());
        let data = ApfData::from_bytes(&bytes);
        assert_eq!(
            data,
            ApfData {
                flags: 1,
                token: 0x1234_5678,
                enabled: 1
            }
        );
        assert!(data.page_not_present());
        assert_eq!(data.to_bytes(), bytes);

        let all = ApfOptions {
            send_always: true,
            as_pf_vmexit: true,
            as_int: true,
        };
        assert_eq!(async_pf_en_msr_value(0x10_0040, all), Ok(0x10_004f));
        let int_only = ApfOptions {
            as_int: true,
            ..ApfOptions::default()
        };
        assert_eq!(async_pf_en_msr_value(0x10_0000, int_only), Ok(0x10_0009));
        assert!(async_pf_en_msr_value(0x10_0020, int_only).is_err());
        assert_eq!(async_pf_int_msr_value(0xec), 0xec);
        assert_eq!(
            (
                MSR_KVM_ASYNC_PF_EN,
                MSR_KVM_ASYNC_PF_INT,
                MSR_KVM_ASYNC_PF_ACK
            ),
            (0x4b56_4d02, 0x4b56_4d06, 0x4b56_4d07)
        );
    }
}

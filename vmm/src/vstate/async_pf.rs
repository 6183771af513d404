//! Asynchronous page faults injected by the VMM (KVM's paravirt protocol, Linux 2.6.38/39),
//! for pages that have not arrived yet in a lazy restore or a post-copy migration.
//!
//! KVM's own async PF needs the host's page fault to be asynchronous; with userfaultfd the
//! vCPU thread just blocks inside KVM_RUN until the page is placed. So lull-vmm plays the
//! host's part itself:
//!
//! 1. The fault thread reads a userfaultfd fault whose thread id is a vCPU thread's, for a
//!    page not yet in. It asks that vCPU ([`AsyncPf::request`]) and kicks it out of KVM_RUN
//!    (the kick signal: EINTR), and holds the page back until the vCPU answers.
//! 2. On its own thread ([`on_kick`]) the vCPU decides: the guest enabled async PF with
//!    interrupt delivery (MSR_KVM_ASYNC_PF_EN bits 0 and 3, read with KVM_GET_MSRS, and a
//!    vector in MSR_KVM_ASYNC_PF_INT), RFLAGS.IF is set, no exception, interrupt or NMI is
//!    being injected and no interrupt shadow is active (KVM_GET_VCPU_EVENTS), the CPU is in
//!    user mode unless SEND_ALWAYS (bit 1) is set, and the guest consumed the previous
//!    "not present" (the area's `flags` is 0). Then it writes flags = 1
//!    (KVM_PV_REASON_PAGE_NOT_PRESENT) into the guest's `kvm_vcpu_pv_apf_data`, sets CR2 to
//!    a fresh token (KVM_SET_SREGS) and injects #PF with error code 0
//!    (KVM_SET_VCPU_EVENTS, `exception.injected`); the guest sleeps the faulting thread and
//!    runs another. Otherwise it declines and simply waits for the page, as without this.
//! 3. When the page is in, the fault thread writes the token into the area's `token` field
//!    (once the guest has zeroed the previous one: its acknowledgement) and sends the
//!    vector to the vCPU's local APIC as an MSI (KVM_SIGNAL_MSI): "page ready".
//!
//! One VM per process, so the hub is process-wide ([`install`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use crate::vstate::memory::GuestMemoryMmap;
use kvm_bindings::{kvm_msi, kvm_msr_entry, Msrs};
use kvm_ioctls::{VcpuFd, VmFd};
use serde::Serialize;
use vm_memory::{Bytes, GuestAddress};

use crate::vstate::vcpu::{kick_signal, MSR_KVM_ASYNC_PF_EN, MSR_KVM_ASYNC_PF_INT};

const ASYNC_PF_ENABLED: u64 = 1 << 0;
const ASYNC_PF_SEND_ALWAYS: u64 = 1 << 1;
const ASYNC_PF_DELIVERY_AS_INT: u64 = 1 << 3;
/// `kvm_vcpu_pv_apf_data.flags` value for "page not present".
const KVM_PV_REASON_PAGE_NOT_PRESENT: u32 = 1;
/// The token that means "wake everyone"; never handed out.
const WAKE_ALL_TOKEN: u32 = 0xffff_ffff;
const PAGE_FAULT_VECTOR: u8 = 14;
const RFLAGS_IF: u64 = 1 << 9;

/// Why a vCPU did not take an async PF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declined {
    /// The page arrived meanwhile.
    PageIn,
    /// The guest has not enabled async PF with interrupt delivery.
    NotEnabled,
    /// Interrupts off, an event being injected, or an interrupt shadow.
    CannotTake,
    /// The previous "not present" is still in the area.
    AreaBusy,
    /// A KVM call failed (said on stderr once).
    Failed,
}

/// The vCPU's answer to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Injected { token: u32, area: u64, vector: u8 },
    Declined(Declined),
}

/// A vCPU's answer, for the fault thread.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub vcpu: u8,
    pub page: u64,
    pub outcome: Outcome,
}

/// Counters (for the summary line and the JSON event).
#[derive(Debug, Default, Serialize)]
pub struct AsyncPfCounts {
    pub requested: u64,
    pub not_present: u64,
    pub ready: u64,
    pub declined_page_in: u64,
    pub declined_not_enabled: u64,
    pub declined_cannot_take: u64,
    pub declined_area_busy: u64,
    pub declined_failed: u64,
    /// Requests whose vCPU kept faulting in KVM instead of leaving KVM_RUN on the kick.
    pub kick_not_taken: u64,
}

/// How long a vCPU that keeps faulting on the page it was asked about is given to leave
/// KVM_RUN. Where KVM retries a fault in the kernel without looking at signals (measured
/// here for instruction fetches that KVM's emulator makes), the kick never gets the vCPU out
/// while the page is missing, and the retries spin on a host core: then the page is placed
/// anyway, and the vCPU answers "page in" once it leaves KVM_RUN.
pub const KICK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(2);

#[derive(Default)]
struct VcpuSlot {
    thread_id: u32,
    pthread: u64,
    /// The page this vCPU was asked about and has not answered yet, and since when.
    request: Option<u64>,
    asked_at: Option<std::time::Instant>,
    /// After a "not enabled" answer, no request until then (each costs a kick).
    quiet_until: Option<std::time::Instant>,
}

/// How long a vCPU that said "not enabled" is not asked again.
const NOT_ENABLED_QUIET: std::time::Duration = std::time::Duration::from_millis(100);

/// A "page ready" owed to a vCPU.
#[derive(Debug, Clone, Copy)]
struct Owed {
    vcpu: u8,
    page: u64,
    token: u32,
    area: u64,
    vector: u8,
}

/// The process's async-PF state, shared by the fault thread and the vCPU threads.
pub struct AsyncPf {
    memory: GuestMemoryMmap,
    /// Whether a stream page is in (the pager's view).
    is_loaded: Box<dyn Fn(u64) -> bool + Send + Sync>,
    /// The stream page of a guest-physical address.
    page_of: Box<dyn Fn(u64) -> Option<u64> + Send + Sync>,
    vm: OnceLock<Arc<VmFd>>,
    vcpus: Mutex<HashMap<u8, VcpuSlot>>,
    replies: Mutex<Sender<Reply>>,
    reply_receiver: Mutex<Receiver<Reply>>,
    owed: Mutex<Vec<Owed>>,
    next_token: AtomicU32,
    counts: Mutex<AsyncPfCounts>,
    warned: AtomicU64,
    /// Kicks not taken in a row (reset by any answer); at [`GIVE_UP_AFTER`] faults are no
    /// longer offered to vCPUs.
    not_taken_in_row: AtomicU32,
}

/// After this many kicks in a row that did not get a faulting vCPU out of KVM_RUN, faults are
/// no longer offered: on such a host every offer would cost [`KICK_PATIENCE`] of spinning.
pub const GIVE_UP_AFTER: u32 = 3;

static HUB: OnceLock<Arc<AsyncPf>> = OnceLock::new();

/// Per vCPU: whether its thread is inside KVM_RUN (see [`entering_guest`]). A fault from a
/// vCPU thread outside it comes from lull-vmm's own code touching guest memory (device
/// emulation, the async-PF area): that thread cannot take an async PF, and a kick would
/// only run its signal handler and fault again, so the page is loaded at once.
static IN_KVM_RUN: [AtomicBool; 256] = [const { AtomicBool::new(false) }; 256];

/// Called by a vCPU thread right before KVM_RUN.
pub fn entering_guest(index: u8) {
    IN_KVM_RUN[usize::from(index)].store(true, Ordering::Release);
}

/// Called by a vCPU thread right after KVM_RUN returned.
pub fn left_guest(index: u8) {
    IN_KVM_RUN[usize::from(index)].store(false, Ordering::Release);
}

/// Whether `vcpu`'s thread is inside KVM_RUN, so a fault of its thread is the guest's.
pub fn in_guest(vcpu: u8) -> bool {
    IN_KVM_RUN[usize::from(vcpu)].load(Ordering::Acquire)
}

/// Makes `hub` the process's (vCPU threads look for it); false if one was installed already.
pub fn install(hub: Arc<AsyncPf>) -> bool {
    HUB.set(hub).is_ok()
}

/// The installed hub, if any.
pub fn hub() -> Option<&'static Arc<AsyncPf>> {
    HUB.get()
}

/// Called by each vCPU thread before it first enters KVM_RUN: remembers its thread id (what
/// userfaultfd reports) and how to signal it.
pub fn register_vcpu(index: u8) {
    if let Some(hub) = HUB.get() {
        let mut vcpus = hub.lock_vcpus();
        let slot = vcpus.entry(index).or_default();
        slot.thread_id = crate::vstate::uffd::current_thread_id();
        // SAFETY: pthread_self has no preconditions.
        slot.pthread = unsafe { libc::pthread_self() } as u64;
    }
}

/// Called by a vCPU thread whenever KVM_RUN returned EINTR: serves an async-PF request
/// addressed to it, if there is one.
pub fn on_kick(fd: &VcpuFd, index: u8) {
    let Some(hub) = HUB.get() else {
        return;
    };
    let Some(page) = hub
        .lock_vcpus()
        .get_mut(&index)
        .and_then(|slot| slot.request.take())
    else {
        return;
    };
    let outcome = hub.inject(fd, index, page);
    let _ = hub
        .replies
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send(Reply {
            vcpu: index,
            page,
            outcome,
        });
}

impl AsyncPf {
    pub fn new(
        memory: GuestMemoryMmap,
        is_loaded: impl Fn(u64) -> bool + Send + Sync + 'static,
        page_of: impl Fn(u64) -> Option<u64> + Send + Sync + 'static,
    ) -> Arc<Self> {
        let (sender, receiver) = mpsc::channel();
        Arc::new(Self {
            memory,
            is_loaded: Box::new(is_loaded),
            page_of: Box::new(page_of),
            vm: OnceLock::new(),
            vcpus: Mutex::default(),
            replies: Mutex::new(sender),
            reply_receiver: Mutex::new(receiver),
            owed: Mutex::default(),
            next_token: AtomicU32::new(1),
            counts: Mutex::default(),
            warned: AtomicU64::new(0),
            not_taken_in_row: AtomicU32::new(0),
        })
    }

    /// The VM, for "page ready" MSIs (set once it exists).
    pub fn set_vm(&self, vm: Arc<VmFd>) {
        let _ = self.vm.set(vm);
    }

    fn lock_vcpus(&self) -> std::sync::MutexGuard<'_, HashMap<u8, VcpuSlot>> {
        self.vcpus
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn count(&self, change: impl FnOnce(&mut AsyncPfCounts)) {
        change(
            &mut self
                .counts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
    }

    pub fn counts(&self) -> serde_json::Value {
        serde_json::to_value(
            &*self
                .counts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
        .unwrap_or_default()
    }

    /// "Not present"s injected so far.
    pub fn not_present(&self) -> u64 {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .not_present
    }

    /// The vCPU whose thread has id `thread_id`.
    pub fn vcpu_of(&self, thread_id: u32) -> Option<u8> {
        if thread_id == 0 {
            return None;
        }
        self.lock_vcpus()
            .iter()
            .find(|(_, slot)| slot.thread_id == thread_id)
            .map(|(&index, _)| index)
    }

    /// The page `vcpu` was asked about and has not answered for, and how long ago.
    pub fn asking_about(&self, vcpu: u8) -> Option<(u64, std::time::Duration)> {
        self.lock_vcpus().get(&vcpu).and_then(|slot| {
            Some((
                slot.request?,
                slot.asked_at.map(|at| at.elapsed()).unwrap_or_default(),
            ))
        })
    }

    /// Counts a request given up on: the vCPU kept faulting on the page instead of leaving
    /// KVM_RUN (see [`KICK_PATIENCE`]), so the page was placed without its answer.
    pub fn gave_up(&self) {
        self.count(|counts| counts.kick_not_taken += 1);
        if self.not_taken_in_row.fetch_add(1, Ordering::Relaxed) + 1 == GIVE_UP_AFTER
            && self.warned.fetch_add(1, Ordering::Relaxed) == 0
        {
            eprintln!(
                "lull-vmm: async pf: {GIVE_UP_AFTER} vCPUs in a row kept faulting inside KVM_RUN \
                 on a kick (this host's KVM retries the fault without looking at signals); \
                 faults are no longer turned into async page faults"
            );
        }
    }

    /// Gives up on `vcpu`'s open request (it keeps faulting inside KVM_RUN, see
    /// [`KICK_PATIENCE`]): counted once; the page comes when it comes.
    pub fn abandon(&self, vcpu: u8) {
        let taken = self
            .lock_vcpus()
            .get_mut(&vcpu)
            .and_then(|slot| slot.request.take());
        if taken.is_some() {
            self.gave_up();
        }
    }

    /// Whether faults are still offered to vCPUs (see [`GIVE_UP_AFTER`]).
    pub fn offers_faults(&self) -> bool {
        self.not_taken_in_row.load(Ordering::Relaxed) < GIVE_UP_AFTER
    }

    /// Asks `vcpu` to take an async PF for `page` and kicks it; false if it has a request
    /// open already (or is unknown).
    pub fn request(&self, vcpu: u8, page: u64) -> bool {
        let pthread = {
            let mut vcpus = self.lock_vcpus();
            let Some(slot) = vcpus.get_mut(&vcpu) else {
                return false;
            };
            if slot.request.is_some()
                || slot
                    .quiet_until
                    .is_some_and(|until| std::time::Instant::now() < until)
            {
                return false;
            }
            slot.request = Some(page);
            slot.asked_at = Some(std::time::Instant::now());
            slot.pthread
        };
        self.count(|counts| counts.requested += 1);
        // SAFETY: `pthread` is a vCPU thread of this process, which lives as long as the VM
        // (vCPU threads are joined only when the machine stops, and the process exits then);
        // the kick signal has a handler (installed before any vCPU thread starts).
        unsafe { libc::pthread_kill(pthread as libc::pthread_t, kick_signal()) };
        true
    }

    /// The vCPUs' answers so far. The owed "page ready"s are recorded here.
    pub fn take_replies(&self) -> Vec<Reply> {
        let replies: Vec<Reply> = self
            .reply_receiver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .try_iter()
            .collect();
        for reply in &replies {
            if matches!(reply.outcome, Outcome::Injected { .. }) {
                self.not_taken_in_row.store(0, Ordering::Relaxed);
            }
            match reply.outcome {
                Outcome::Injected {
                    token,
                    area,
                    vector,
                } => {
                    self.count(|counts| counts.not_present += 1);
                    self.owed
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .push(Owed {
                            vcpu: reply.vcpu,
                            page: reply.page,
                            token,
                            area,
                            vector,
                        });
                }
                Outcome::Declined(why) => self.count(|counts| match why {
                    Declined::NotEnabled => {
                        counts.declined_not_enabled += 1;
                        if let Some(slot) = self.lock_vcpus().get_mut(&reply.vcpu) {
                            slot.quiet_until = Some(std::time::Instant::now() + NOT_ENABLED_QUIET);
                        }
                    }
                    Declined::PageIn => counts.declined_page_in += 1,
                    Declined::CannotTake => counts.declined_cannot_take += 1,
                    Declined::AreaBusy => counts.declined_area_busy += 1,
                    Declined::Failed => counts.declined_failed += 1,
                }),
            }
        }
        replies
    }

    /// Whether anything is under way (requests unanswered, readies owed): the fault thread
    /// then polls often.
    pub fn busy(&self) -> bool {
        !self
            .owed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_empty()
            || self
                .lock_vcpus()
                .values()
                .any(|slot| slot.request.is_some())
    }

    /// Sends the "page ready"s whose pages are in, one at a time per vCPU: a vCPU's area must
    /// have its previous token consumed (zeroed by the guest) first. Called by the fault
    /// thread (the areas' pages are in: the vCPU wrote `flags` there).
    pub fn deliver_ready(&self) {
        let Some(vm) = self.vm.get() else {
            return;
        };
        let mut owed = self
            .owed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut index = 0;
        while index < owed.len() {
            let ready = owed[index];
            if !(self.is_loaded)(ready.page) {
                index += 1;
                continue;
            }
            let token_address = GuestAddress(ready.area + 4);
            match self.memory.read_obj::<u32>(token_address) {
                Ok(0) => {}
                _ => {
                    index += 1;
                    continue;
                }
            }
            if self.memory.write_obj(ready.token, token_address).is_err() {
                index += 1;
                continue;
            }
            let msi = kvm_msi {
                address_lo: 0xfee0_0000 | (u32::from(ready.vcpu) << 12),
                data: u32::from(ready.vector),
                ..Default::default()
            };
            if let Err(error) = vm.signal_msi(msi) {
                self.warn_once(&format!("KVM_SIGNAL_MSI for a page-ready failed: {error}"));
            }
            owed.swap_remove(index);
            self.count(|counts| counts.ready += 1);
        }
    }

    fn warn_once(&self, message: &str) {
        if self.warned.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!("lull-vmm: async pf: {message}");
        }
    }

    /// On the vCPU's thread, out of KVM_RUN: injects "page not present" for `page` if the
    /// guest can take it now (see the module comment).
    fn inject(&self, fd: &VcpuFd, index: u8, page: u64) -> Outcome {
        use Outcome::Declined as No;
        if (self.is_loaded)(page) {
            return No(Declined::PageIn);
        }
        let mut msrs = match Msrs::from_entries(&[
            kvm_msr_entry {
                index: MSR_KVM_ASYNC_PF_EN,
                ..Default::default()
            },
            kvm_msr_entry {
                index: MSR_KVM_ASYNC_PF_INT,
                ..Default::default()
            },
        ]) {
            Ok(msrs) => msrs,
            Err(_) => return No(Declined::Failed),
        };
        if fd.get_msrs(&mut msrs).ok() != Some(2) {
            return No(Declined::NotEnabled);
        }
        let (enable, vector) = (msrs.as_slice()[0].data, msrs.as_slice()[1].data);
        let wanted = ASYNC_PF_ENABLED | ASYNC_PF_DELIVERY_AS_INT;
        if enable & wanted != wanted || !(32..=255).contains(&vector) {
            return No(Declined::NotEnabled);
        }
        let area = enable & !0x3f;
        // The area on the very page being held back: this thread would wait on it forever.
        if (self.page_of)(area) == Some(page) {
            return No(Declined::AreaBusy);
        }
        let failed = |what: &str, error: kvm_ioctls::Error| {
            self.warn_once(&format!("vCPU {index}: {what} failed: {error}"));
            No(Declined::Failed)
        };
        let regs = match fd.get_regs() {
            Ok(regs) => regs,
            Err(error) => return failed("KVM_GET_REGS", error),
        };
        let mut events = match fd.get_vcpu_events() {
            Ok(events) => events,
            Err(error) => return failed("KVM_GET_VCPU_EVENTS", error),
        };
        let mut sregs = match fd.get_sregs() {
            Ok(sregs) => sregs,
            Err(error) => return failed("KVM_GET_SREGS", error),
        };
        let user_mode = sregs.cs.selector & 3 == 3;
        if regs.rflags & RFLAGS_IF == 0
            || events.exception.injected != 0
            || events.exception.pending != 0
            || events.interrupt.injected != 0
            || events.interrupt.shadow != 0
            || events.nmi.injected != 0
            || (enable & ASYNC_PF_SEND_ALWAYS == 0 && !user_mode)
        {
            return No(Declined::CannotTake);
        }
        // The area's page is in (or comes in now: this thread may fault on it, and the
        // fault thread serves a vCPU that has a request open at once).
        match self.memory.read_obj::<u32>(GuestAddress(area)) {
            Ok(0) => {}
            Ok(_) => return No(Declined::AreaBusy),
            Err(_) => return No(Declined::NotEnabled),
        }
        let mut token = self.next_token.fetch_add(1, Ordering::Relaxed);
        if token == 0 || token == WAKE_ALL_TOKEN {
            token = self.next_token.fetch_add(2, Ordering::Relaxed).max(1);
        }
        if self
            .memory
            .write_obj(KVM_PV_REASON_PAGE_NOT_PRESENT, GuestAddress(area))
            .is_err()
        {
            return No(Declined::NotEnabled);
        }
        sregs.cr2 = u64::from(token);
        if let Err(error) = fd.set_sregs(&sregs) {
            let _ = self.memory.write_obj(0u32, GuestAddress(area));
            return failed("KVM_SET_SREGS", error);
        }
        events.exception.injected = 1;
        events.exception.nr = PAGE_FAULT_VECTOR;
        events.exception.has_error_code = 1;
        events.exception.error_code = 0;
        events.exception_has_payload = 0;
        events.exception_payload = 0;
        if let Err(error) = fd.set_vcpu_events(&events) {
            let _ = self.memory.write_obj(0u32, GuestAddress(area));
            return failed("KVM_SET_VCPU_EVENTS", error);
        }
        Outcome::Injected {
            token,
            area,
            vector: vector as u8,
        }
    }
}

//! KVM asynchronous page faults, guest side (Linux 2.6.38/39's `kvm_async_pf`).
//!
//! When a vCPU touches guest memory the host has to fetch first (swapped out, or not yet
//! arrived in a post-copy migration or a lazy restore), the host may, instead of stopping the
//! vCPU, inject a "page not present" #PF carrying a token in CR2. The faulting thread then
//! sleeps on that token and the CPU runs something else; when the page is in, the host sends a
//! "page ready" interrupt with the same token, and the thread retries its access. A fault where
//! the kernel cannot sleep (interrupts off, a spinlock held) halts until the ready arrives, and
//! the broadcast token 0xFFFF_FFFF wakes everyone. The token bookkeeping, including a ready
//! that overtakes its not-present, is `lull_pv::async_pf::AsyncPfTable`, tested on the host.
//!
//! Lull has only kernel threads, so it asks for faults in kernel mode too (SEND_ALWAYS).

use core::sync::atomic::{AtomicU64, Ordering};

use lull_pv::async_pf::{AsyncPfTable, NotPresentAction, KVM_WAKE_ALL_TOKEN};

use crate::arch::kvm;
use crate::arch::percpu::InterruptsDisabled;
use crate::kernel::locking::IrqSafeLock;
use crate::kernel::paravirt::{self, Op};
use crate::kernel::sched::WaitQueue;
use crate::{pr_warn, printk};

/// Vector of the "page ready" notification (Linux's HYPERVISOR_CALLBACK_VECTOR).
pub const ASYNC_PF_VECTOR: u8 = 0xF3;

/// Simultaneous faults the table holds (one per thread at most; more threads than this
/// faulting at once get a plain retry of the access instead of a sleep).
const MAX_WAITERS: usize = 256;
/// Readies remembered before their not-present (the host is not trusted to send only
/// matching ones: the oldest is forgotten when full).
const MAX_READY_EARLY: usize = 64;

/// The token table; `None` until the first CPU enables async PF. Waiters are thread ids
/// (0 for a CPU halting outside any thread).
static TABLE: IrqSafeLock<Option<AsyncPfTable<u64>>> = IrqSafeLock::new(None);
/// Sleepers re-check their token when any ready arrives.
static WAITERS: WaitQueue = WaitQueue::new();

/// Event counts: not-present, ready, wake-all, proceeded (ready came first), refused.
static NOT_PRESENT: AtomicU64 = AtomicU64::new(0);
static READY: AtomicU64 = AtomicU64::new(0);
static WAKE_ALL: AtomicU64 = AtomicU64::new(0);
static PROCEEDED: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Builds the table (once) and installs the handlers; called by the first `cpu_init`.
fn init_table() {
    let mut table = TABLE.lock();
    if table.is_none() {
        *table = Some(AsyncPfTable::with_capacity(MAX_WAITERS, MAX_READY_EARLY));
        crate::arch::interrupts::set_handler(ASYNC_PF_VECTOR, page_ready_interrupt);
        crate::arch::interrupts::set_async_pf_hook(page_not_present);
    }
}

/// Enables async PF on this CPU when the operation uses KVM (interrupts disabled).
pub fn cpu_init(interrupts_off: &InterruptsDisabled) {
    if !paravirt::uses_kvm(Op::AsyncPf) {
        return;
    }
    init_table();
    if kvm::enable_async_pf(interrupts_off, ASYNC_PF_VECTOR) {
        if interrupts_off.cpu_index() == 0 {
            printk!("kvm-apf: enabled, page-ready vector {ASYNC_PF_VECTOR:#x}, kernel mode too");
        }
    } else {
        pr_warn!(
            "kvm-apf: CPU {} could not enable async page faults",
            interrupts_off.cpu_index()
        );
    }
}

/// A "page not present" #PF for `token` (from the arch #PF entry, interrupts enabled again
/// when `can_sleep`; `can_sleep` is false when the faulting code ran with interrupts off or
/// a raised preempt count). Returns once the page is there.
pub fn page_not_present(token: u32, can_sleep: bool) {
    NOT_PRESENT.fetch_add(1, Ordering::Relaxed);
    let waiter = crate::kernel::sched::current().unwrap_or(0);
    let can_sleep = can_sleep && waiter != 0;
    let action = match TABLE.lock().as_mut() {
        Some(table) => table.not_present(token, waiter, can_sleep),
        None => return,
    };
    match action {
        Ok(NotPresentAction::Proceed) => {
            PROCEEDED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(NotPresentAction::Sleep) => {
            WAITERS.wait_until(|| is_ready(token));
        }
        Ok(NotPresentAction::HaltUntilReady) => {
            // Linux's old kvm_async_pf_task_wait halt path: interrupts on while halted (the
            // ready is an interrupt), off again before returning to the faulting code.
            let were_enabled = crate::arch::cpu::interrupts_enabled();
            loop {
                crate::arch::cpu::disable_interrupts();
                if is_ready(token) {
                    break;
                }
                crate::arch::cpu::enable_interrupts_and_halt();
            }
            if were_enabled {
                crate::arch::cpu::enable_interrupts();
            }
        }
        Err(refused) => {
            // Return to the faulting access: it faults again until the host has the page.
            REFUSED.fetch_add(1, Ordering::Relaxed);
            pr_warn!("kvm-apf: token {token:#x}: {}", refused.reason);
        }
    }
}

fn is_ready(token: u32) -> bool {
    TABLE
        .lock()
        .as_ref()
        .is_none_or(|table| table.is_ready(token))
}

/// "Page ready" for `token` (or the wake-all broadcast): wakes its waiter. Any context.
pub fn page_ready(token: u32) {
    {
        let mut guard = TABLE.lock();
        let Some(table) = guard.as_mut() else {
            return;
        };
        if token == KVM_WAKE_ALL_TOKEN {
            WAKE_ALL.fetch_add(1, Ordering::Relaxed);
            table.wake_all_with(|_| {});
        } else {
            READY.fetch_add(1, Ordering::Relaxed);
            let _ = table.page_ready(token);
        }
    }
    // Sleepers re-check their own token; halters are woken by this interrupt itself, or by
    // the next interrupt on their CPU.
    WAITERS.wake_all();
}

/// The page-ready interrupt (hard-IRQ context).
fn page_ready_interrupt(_vector: u8) {
    let token = kvm::take_page_ready_token(&InterruptsDisabled::new());
    if let Some(token) = token {
        page_ready(token);
    }
}

/// Makes sure the table exists (tests drive the protocol without KVM).
#[cfg_attr(not(feature = "ktest"), allow(dead_code))]
pub fn ensure_table() {
    let mut table = TABLE.lock();
    if table.is_none() {
        *table = Some(AsyncPfTable::with_capacity(MAX_WAITERS, MAX_READY_EARLY));
    }
}

/// Waiters currently registered (sleeping or halting).
pub fn waiters() -> usize {
    TABLE.lock().as_ref().map_or(0, |table| table.waiters())
}

/// `(not_present, ready, wake_all, proceeded, refused)` since boot.
pub fn counts() -> (u64, u64, u64, u64, u64) {
    (
        NOT_PRESENT.load(Ordering::Relaxed),
        READY.load(Ordering::Relaxed),
        WAKE_ALL.load(Ordering::Relaxed),
        PROCEEDED.load(Ordering::Relaxed),
        REFUSED.load(Ordering::Relaxed),
    )
}

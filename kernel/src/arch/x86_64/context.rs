//! Kernel thread contexts and the context switch: callee-saved registers and the stack pointer.
//!
//! A thread that is not running is described by its saved stack pointer: the switch pushes the
//! System V callee-saved registers (`rbp rbx r12..r15`) on the old stack, stores `rsp`, loads
//! the new thread's `rsp` and pops its registers; `ret` resumes it where it switched out (or, for
//! a new thread, in a trampoline that calls its entry function). Caller-saved registers are
//! saved by the compiler around the call; the kernel target has no SSE/x87 state to keep.
//!
//! `on_cpu` is Linux's `task_struct::on_cpu`: the scheduler lock is released before the switch,
//! so another CPU may pick a thread whose registers are still being saved. A CPU switching *to*
//! a thread first waits until that thread's old CPU cleared `on_cpu`, which the switch does only
//! after the last write to the old stack. Waits form no cycle: each CPU waits for a thread
//! chosen strictly earlier than its own.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

global_asm!(
    r#"
    .section .text
    .global lull_switch_context
// rdi = &previous.saved_rsp, rsi = &next.saved_rsp, rdx = &previous.on_cpu
lull_switch_context:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movb $0, (%rdx)
    movq (%rsi), %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret

    .global lull_thread_trampoline
// First code of a new thread: %rbx holds its entry function (`fn() -> !`).
lull_thread_trampoline:
    xorl %ebp, %ebp
    call *%rbx
    ud2
    "#,
    options(att_syntax)
);

extern "C" {
    fn lull_switch_context(previous_rsp: *mut u64, next_rsp: *const u64, previous_on_cpu: *mut u8);
    fn lull_thread_trampoline();
}

/// What a new thread runs first (it never returns: threads end by exiting).
pub type ThreadEntry = fn() -> !;

/// Order of a kernel stack: 64 KiB, as the boot CPU's.
pub const KERNEL_STACK_ORDER: u8 = 4;

/// A kernel stack: pages from the page allocator, owned. A thread's stack is handed to its
/// [`ThreadContext`] and comes back only once the thread has exited and no CPU runs on it; a
/// secondary CPU's stack is kept for good.
#[derive(Debug)]
pub struct KernelStack {
    pages: super::memory::PageBlock,
}

impl KernelStack {
    /// Allocates a stack (`None`: out of memory).
    pub fn alloc() -> Option<KernelStack> {
        super::memory::PageBlock::alloc(KERNEL_STACK_ORDER, lull_buddy::ZoneKind::Normal)
            .map(|pages| KernelStack { pages })
    }

    /// One past the highest address (16-byte aligned: the stack pointer's start).
    pub fn top(&self) -> u64 {
        self.pages.address() + self.pages.size() as u64
    }

    /// Keeps the stack for good and returns its top (a CPU that never stops runs on it).
    pub(super) fn leak_top(self) -> u64 {
        let top = self.top();
        self.pages.leak();
        top
    }
}

/// Contexts of reaped threads, for reuse: the head of a list linked through
/// `ThreadContext::next_free`, so that keeping them allocates nothing (interrupts masked while
/// held: threads are reaped on the way out of an interrupt, too).
static FREE_CONTEXTS: super::sync::IrqSpinCell<Option<&'static ThreadContext>> =
    super::sync::IrqSpinCell::new(None);

/// A thread's saved CPU state between switches. Contexts live for the whole kernel run
/// (`'static`), so a context can never be freed while a CPU still switches through it.
pub struct ThreadContext {
    /// The stack pointer saved by the last switch away (unused while running).
    saved_rsp: AtomicU64,
    /// Whether some CPU is running on (or still switching away from) this context.
    on_cpu: AtomicBool,
    /// Set when the thread has exited: no switch to it happens afterwards.
    exited: AtomicBool,
    /// The thread's stack (none for a CPU's idle thread, which runs on its boot stack).
    stack: spin::Mutex<Option<KernelStack>>,
    /// The next context on the free list while this one is on it.
    next_free: spin::Mutex<Option<&'static ThreadContext>>,
}

impl ThreadContext {
    /// The context of the code running right now on this CPU's boot stack (a CPU's idle thread).
    pub fn for_running_cpu() -> &'static ThreadContext {
        alloc::boxed::Box::leak(alloc::boxed::Box::new(ThreadContext {
            saved_rsp: AtomicU64::new(0),
            on_cpu: AtomicBool::new(true),
            exited: AtomicBool::new(false),
            stack: spin::Mutex::new(None),
            next_free: spin::Mutex::new(None),
        }))
    }

    /// A new thread on `stack`, which the context keeps until [`ThreadContext::take_stack`]:
    /// the first switch to it calls `entry`.
    pub fn new_thread(stack: KernelStack, entry: ThreadEntry) -> &'static ThreadContext {
        const FRAME_WORDS: u64 = 7;
        let frame = stack.top() - FRAME_WORDS * 8;
        // Lowest address first: r15 r14 r13 r12 rbx rbp return-address (the pop order).
        let words: [u64; FRAME_WORDS as usize] = [
            0,
            0,
            0,
            0,
            entry as *const () as usize as u64,
            0,
            lull_thread_trampoline as *const () as usize as u64,
        ];
        // SAFETY: `frame..stack.top()` is the top 56 bytes of the stack, pages we own (moved
        // in) that are identity-mapped and used by nothing else; the write is 8-byte aligned
        // because the top is page aligned.
        unsafe {
            core::ptr::copy_nonoverlapping(words.as_ptr(), frame as usize as *mut u64, words.len())
        };
        let reused = {
            let mut head = FREE_CONTEXTS.lock();
            let context = head.take();
            if let Some(context) = context {
                *head = context.next_free.lock().take();
            }
            context
        };
        if let Some(context) = reused {
            // A reaped thread's context: no CPU runs on it or will switch to it (see `recycle`).
            context.saved_rsp.store(frame, Ordering::SeqCst);
            *context.stack.lock() = Some(stack);
            context.exited.store(false, Ordering::SeqCst);
            return context;
        }
        alloc::boxed::Box::leak(alloc::boxed::Box::new(ThreadContext {
            saved_rsp: AtomicU64::new(frame),
            on_cpu: AtomicBool::new(false),
            exited: AtomicBool::new(false),
            stack: spin::Mutex::new(Some(stack)),
            next_free: spin::Mutex::new(None),
        }))
    }

    /// Gives the context of a reaped thread back for the next [`ThreadContext::new_thread`],
    /// once its stack was taken (the thread exited and no CPU runs on it). Without this every
    /// thread that ever ran kept its context (a threaded IRQ requested and freed 1,000 times
    /// left 1,000 behind). Contexts are still never freed, only reused: the scheduler no longer
    /// names a reaped thread, so nothing switches through it.
    pub fn recycle(&'static self) {
        let retired = self.exited.load(Ordering::SeqCst)
            && !self.on_cpu.load(Ordering::SeqCst)
            && self.stack.lock().is_none();
        if retired {
            let mut head = FREE_CONTEXTS.lock();
            *self.next_free.lock() = head.take();
            *head = Some(self);
        }
    }

    /// Whether a CPU runs on this context (or has not finished switching away from it).
    pub fn on_cpu(&self) -> bool {
        self.on_cpu.load(Ordering::Acquire)
    }

    /// Marks the thread as exited (called by the thread itself before its last switch away,
    /// or for a thread that never ran): [`switch`] refuses to switch to it from now on.
    pub fn mark_exited(&self) {
        self.exited.store(true, Ordering::SeqCst);
    }

    /// Hands the stack back once the thread has exited and no CPU runs on it any more (`None`
    /// before that, or if it was taken already).
    pub fn take_stack(&self) -> Option<KernelStack> {
        let mut stack = self.stack.lock();
        // Ordering with `switch`: it sets `on_cpu` and then checks `exited`, both SeqCst; we
        // read `exited` and then `on_cpu`. So either we see `on_cpu` set and refuse, or the
        // switch sees `exited` and stops before it touches the stack.
        if !self.exited.load(Ordering::SeqCst) || self.on_cpu.load(Ordering::SeqCst) {
            return None;
        }
        stack.take()
    }
}

/// Switches this CPU from `previous` (the context running now) to `next`, returning when some
/// CPU switches back to `previous`. Called with interrupts disabled and no lock held (the
/// thread resumed next may take any lock). Waits while `next` is still switching away on
/// another CPU.
///
/// The scheduler is the only caller, and the contract it keeps is: `previous` is this CPU's
/// running context, and `next` is not running anywhere else (it was chosen under the scheduler
/// lock); its stack is still allocated.
pub fn switch(previous: &'static ThreadContext, next: &'static ThreadContext) {
    if core::ptr::eq(previous, next) {
        return;
    }
    while next.on_cpu.swap(true, Ordering::SeqCst) {
        core::hint::spin_loop();
    }
    if next.exited.load(Ordering::SeqCst) {
        // Its stack may be freed: never resume it.
        panic!("switch to a thread that has exited");
    }
    // SAFETY: `next.saved_rsp` was stored by a previous switch away from `next` (a stack
    // holding the six callee-saved registers and a return address) or built by `new_thread`
    // in the same layout, and `on_cpu` now guarantees no other CPU uses that stack. Our own
    // registers are pushed on the current stack, whose top is stored in `previous` before
    // `previous.on_cpu` is cleared, so whoever switches back finds a complete frame. The
    // pointers come from live `'static` atomics.
    unsafe {
        lull_switch_context(
            previous.saved_rsp.as_ptr(),
            next.saved_rsp.as_ptr(),
            previous.on_cpu.as_ptr() as *mut u8,
        )
    };
}

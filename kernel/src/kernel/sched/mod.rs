//! Kernel threads and the scheduler glue: the `lull-sched` policy behind one IRQ-safe lock,
//! the context switch, per-CPU idle threads, preemption on return from interrupt, wake-ups
//! with reschedule IPIs, and directed yield.
//!
//! The policy (what runs where) is the portable `lull-sched` crate; this module does what it
//! says: switches stacks (`arch::context`), sends the IPIs it asks for, calls its `tick` from
//! the timer interrupt, and arms a per-CPU preemption hrtimer at its
//! `next_preemption_deadline` after every pick (none for an idle CPU or a lone task). Each CPU has an idle thread that is not a scheduler task: it runs
//! whenever the policy picks nothing, and it is the tickless idle loop.
//!
//! Locks: `SCHED` (IRQ-safe) is the scheduler lock, not a big kernel lock: it guards only the
//! policy and the thread table. It is taken inside `time::CPU_TIME[cpu]` and `time::JIFFIES`
//! (timer callbacks wake threads), so it never takes those itself; `CLOCKS` is read before it is
//! taken. Wait-queue locks (`wait.rs`) are released before `SCHED` is taken. No lock is held
//! across a context switch.

mod preempt_timer;
mod wait;

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use lull_sched::{
    CpuSet, Pick, SchedClass, SchedConfig, SchedError, Scheduler, TaskId, TaskInfo, Wakeup, YieldTo,
};

use crate::arch::context::{self, KernelStack, ThreadContext};
use crate::arch::{cpu, interrupts, percpu};
use crate::kernel::locking::{InterruptsDisabled, IrqSafeLock, MAX_CPUS};

pub(crate) use wait::protocol_queue;
pub use wait::{Completion, KernelScheduler, WaitQueue};

/// A kernel thread.
pub struct Thread {
    id: TaskId,
    name: String,
    context: &'static ThreadContext,
    /// What the thread runs, taken by the thread itself when it first runs.
    entry: crate::kernel::locking::SpinLock<Option<alloc::boxed::Box<dyn FnOnce() + Send>>>,
}

impl Drop for Thread {
    fn drop(&mut self) {
        // A thread is dropped once reaped (exited, its CPU switched away): its stack is freed
        // and its context kept for the next thread.
        self.context.release();
        crate::kernel::locking::lockdep::forget_thread(self.id.get());
    }
}

struct State {
    policy: Scheduler,
    /// Every live thread, by task id.
    threads: BTreeMap<u64, Arc<Thread>>,
    /// Exited threads whose stacks may still be in use until their CPU switched away.
    zombies: Vec<Arc<Thread>>,
    /// Each CPU's idle thread context.
    idle: [Option<&'static ThreadContext>; MAX_CPUS],
    /// Possible CPUs (the policy's size).
    nr_cpus: usize,
}

static SCHED: IrqSafeLock<Option<State>> = IrqSafeLock::named("sched::SCHED", None);

/// The scheduler lock's guard. Dropping it publishes every CPU's reschedule request to the
/// per-CPU `need_resched` flags (before the lock is released), so preemption checks read one
/// flag instead of taking the lock.
struct SchedGuard<'a>(crate::kernel::locking::IrqSafeGuard<'a, Option<State>>);

impl Drop for SchedGuard<'_> {
    // Always inlined: taken on every wake-up and switch, and LLVM's choice to outline it
    // flips with unrelated call sites elsewhere (it cost 4 % of `bench pvops` once).
    #[inline(always)]
    fn drop(&mut self) {
        if let Some(state) = self.0.as_ref() {
            for cpu in 0..state.nr_cpus {
                percpu::set_need_resched(cpu, state.policy.need_resched(cpu));
            }
        }
    }
}

impl core::ops::Deref for SchedGuard<'_> {
    type Target = Option<State>;
    fn deref(&self) -> &Option<State> {
        &self.0
    }
}

impl core::ops::DerefMut for SchedGuard<'_> {
    fn deref_mut(&mut self) -> &mut Option<State> {
        &mut self.0
    }
}

#[track_caller]
fn sched_lock() -> SchedGuard<'static> {
    SchedGuard(SCHED.lock())
}

/// Creates the scheduler for `possible_cpus` CPUs and makes the running boot code CPU 0's idle
/// thread. Called once on the boot CPU, interrupts disabled, before secondary CPUs start.
pub fn init(possible_cpus: usize) {
    let policy = match Scheduler::new(possible_cpus.max(1), SchedConfig::default()) {
        Ok(policy) => policy,
        Err(error) => panic!("sched: {error}"),
    };
    let mut idle = [None; MAX_CPUS];
    idle[0] = Some(ThreadContext::for_running_cpu());
    *sched_lock() = Some(State {
        policy,
        threads: BTreeMap::new(),
        zombies: Vec::new(),
        idle,
        nr_cpus: possible_cpus.clamp(1, MAX_CPUS),
    });
    interrupts::set_return_hook(preempt_on_interrupt_return);
}

/// Marks this secondary CPU online in the scheduler; the running code becomes its idle thread.
/// Called once on the CPU, interrupts disabled.
pub fn cpu_online() {
    let interrupts_off = InterruptsDisabled::new();
    let cpu = interrupts_off.cpu_index();
    let now = crate::kernel::time::uptime_ns();
    if let Some(state) = sched_lock().as_mut() {
        state.idle[cpu] = Some(ThreadContext::for_running_cpu());
        if let Err(error) = state.policy.set_cpu_online(cpu, now) {
            crate::pr_warn!("sched: CPU {cpu}: {error}");
        }
    };
}

/// The id of the running thread (`None` in a CPU's idle thread or before threads exist).
pub fn current() -> Option<u64> {
    match percpu::current_task() {
        0 => None,
        id => Some(id),
    }
}

/// Why a thread could not be created.
#[derive(Debug)]
pub enum SpawnError {
    NoMemory,
    NotStarted,
    Policy(SchedError),
}

impl core::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SpawnError::NoMemory => write!(f, "no memory for a kernel stack"),
            SpawnError::NotStarted => write!(f, "the scheduler is not initialised"),
            SpawnError::Policy(error) => write!(f, "{error}"),
        }
    }
}

/// Starts a kernel thread running `body` (Linux's `kthread_run`), in `class`, on the CPUs of
/// `affinity`. Returns its task id. Callable from any context except hard-IRQ.
pub fn kthread_spawn(
    name: &str,
    class: SchedClass,
    affinity: CpuSet,
    body: impl FnOnce() + Send + 'static,
) -> Result<u64, SpawnError> {
    let stack = KernelStack::alloc().ok_or(SpawnError::NoMemory)?;
    let context = ThreadContext::new_thread(stack, thread_start);
    // A thread that never ran: its stack and context are given back at once.
    let abandon = |context: &'static ThreadContext| {
        context.mark_exited();
        context.release();
    };
    let now = crate::kernel::time::uptime_ns();
    let placement = {
        let interrupts_off = InterruptsDisabled::new();
        let cpu = interrupts_off.cpu_index();
        let mut guard = sched_lock();
        let Some(state) = guard.as_mut() else {
            drop(guard);
            abandon(context);
            return Err(SpawnError::NotStarted);
        };
        let (id, placement) = match state.policy.spawn(class, affinity, cpu, now) {
            Ok(result) => result,
            Err(error) => {
                drop(guard);
                abandon(context);
                return Err(SpawnError::Policy(error));
            }
        };
        state.threads.insert(
            id.get(),
            Arc::new(Thread {
                id,
                name: String::from(name),
                context,
                entry: crate::kernel::locking::SpinLock::new(Some(alloc::boxed::Box::new(body))),
            }),
        );
        (id, placement)
    };
    let (id, placement) = placement;
    if placement.send_resched_ipi {
        let _ = crate::kernel::smp::send_reschedule(placement.cpu);
    }
    preempt_point();
    Ok(id.get())
}

/// First code of every thread (from the context-switch trampoline, interrupts disabled, no
/// lock held): runs its body, then exits.
fn thread_start() -> ! {
    let body = current().and_then(|id| {
        let guard = sched_lock();
        let thread = guard.as_ref()?.threads.get(&id)?;
        let body = thread.entry.lock().take();
        body
    });
    cpu::enable_interrupts();
    if let Some(body) = body {
        body();
    }
    exit_current()
}

/// Ends the running thread (its stack is freed once another thread runs on its CPU).
pub fn exit_current() -> ! {
    if let Some(id) = current() {
        crate::kernel::locking::lockdep::thread_exited(id);
    }
    cpu::disable_interrupts();
    if let Some(id) = current() {
        if let Some(state) = sched_lock().as_mut() {
            if let Some(thread) = state.threads.get(&id) {
                let _ = state.policy.exit(thread.id);
                // Never switched to again; its stack comes back once its CPU left it.
                thread.context.mark_exited();
            }
        }
    }
    switch_away(false);
    // Unreachable: a dead thread is never picked again.
    cpu::halt_forever()
}

/// Gives up the CPU (Linux's `schedule()`): a thread that prepared to sleep sleeps until woken;
/// a running one goes back to its run queue. Returns when the thread runs again.
pub fn schedule() {
    switch_away(false);
}

/// Picks what runs next on this CPU and switches to it. `preempt`: the current thread is
/// preempted (it stays runnable even if it was preparing to sleep).
fn switch_away(preempt: bool) {
    let interrupts_off = InterruptsDisabled::new();
    let cpu = interrupts_off.cpu_index();
    let now = crate::kernel::time::uptime_ns();
    let mut reaped: Vec<Arc<Thread>> = Vec::new();
    let preemption_deadline;
    let switch = {
        let steal = crate::kernel::paravirt::steal_delta(&interrupts_off);
        let mut guard = sched_lock();
        let Some(state) = guard.as_mut() else {
            return;
        };
        if steal > 0 {
            account_steal(state, cpu, steal);
        }
        let pick: Result<Pick, SchedError> = if preempt {
            state.policy.preempt(cpu, now)
        } else {
            state.policy.pick_next(cpu, now)
        };
        let Ok(pick) = pick else {
            return;
        };
        if let Some(target) = pick.resched_ipi {
            let _ = crate::kernel::smp::send_reschedule(target);
        }
        // A thread that exited has left its CPU's `current` slot: forget it (its stack stays
        // until the switch away from it has finished).
        if let Some(previous) = pick.previous {
            if state.policy.task_info(previous).map(|info| info.state)
                == Some(lull_sched::TaskState::Dead)
            {
                let _ = state.policy.reap(previous);
                if let Some(thread) = state.threads.remove(&previous.get()) {
                    state.zombies.push(thread);
                }
            }
        }
        let mut index = 0;
        while index < state.zombies.len() {
            let zombie = &state.zombies[index];
            if zombie.context.on_cpu() || Some(zombie.id) == pick.previous {
                index += 1;
            } else {
                reaped.push(state.zombies.swap_remove(index));
            }
        }
        preemption_deadline = state.policy.next_preemption_deadline(cpu);
        if pick.next == pick.previous {
            None
        } else {
            let context_of = |task: Option<TaskId>| match task {
                Some(task) => state
                    .threads
                    .get(&task.get())
                    .map(|thread| thread.context)
                    .or_else(|| {
                        state
                            .zombies
                            .iter()
                            .find(|z| z.id == task)
                            .map(|z| z.context)
                    }),
                None => state.idle[cpu],
            };
            match (context_of(pick.previous), context_of(pick.next)) {
                (Some(previous), Some(next)) => {
                    percpu::set_current_task(&interrupts_off, pick.next.map_or(0, TaskId::get));
                    Some((previous, next))
                }
                _ => None,
            }
        }
    };
    drop(reaped);
    // Preemption is programmed for exactly when the policy wants it (never for a lone task).
    preempt_timer::program_preemption(preemption_deadline);
    if let Some((previous, next)) = switch {
        // The preemption depth belongs to the thread: a thread that sleeps with preemption
        // off (a bug `might_sleep` reports) gets it back, and the next one starts from its own.
        let depth = percpu::preempt_count() & percpu::PREEMPT_MASK;
        if depth != 0 && !preempt {
            report_scheduling_while_atomic(depth);
        }
        percpu::set_preempt_depth(&interrupts_off, 0);
        context::switch(previous, next);
        percpu::set_preempt_depth(&interrupts_off, depth);
    }
}

/// Linux's "BUG: scheduling while atomic": a thread gave up its CPU with preemption disabled
/// (it holds a spinlock or a per-CPU reference).
fn report_scheduling_while_atomic(depth: u32) {
    static REPORTED: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
    if REPORTED.fetch_add(1, core::sync::atomic::Ordering::Relaxed) < 4 {
        crate::pr_warn!(
            "BUG: scheduling while atomic: thread {} (preempt depth {depth})",
            current().unwrap_or(0)
        );
    }
}

/// Preemption point for thread context (after a wake-up, at lock release): switches if this
/// CPU was asked to reschedule and interrupts are enabled.
pub fn preempt_point() {
    if cpu::interrupts_enabled()
        && percpu::preempt_count() == 0
        && current().is_some()
        && need_resched_here()
    {
        switch_away(true);
    }
}

/// Whether this CPU has been asked to reschedule (its published flag: no lock).
fn need_resched_here() -> bool {
    percpu::need_resched()
}

/// Interrupt-return hook (interrupts disabled, the interrupted thread had them enabled).
fn preempt_on_interrupt_return() {
    // The idle thread is not preempted here: its loop checks for work after every halt.
    if current().is_some() && percpu::preempt_count() == 0 && need_resched_here() {
        switch_away(true);
    }
}

/// Hands the host's steal time to the policy (KVM only; out of line so the native paths'
/// code is the same as without paravirt support).
#[cold]
#[inline(never)]
fn account_steal(state: &mut State, cpu: usize, steal: u64) {
    let _ = state.policy.account_steal(cpu, steal);
}

/// The scheduler tick (from the timer interrupt): accounts the running thread and asks for a
/// reschedule when its slice is over or a higher class waits. The switch itself happens on
/// the way out of the interrupt.
pub fn tick() {
    let interrupts_off = InterruptsDisabled::new();
    let cpu = interrupts_off.cpu_index();
    let now = crate::kernel::time::uptime_ns();
    let steal = crate::kernel::paravirt::steal_delta(&interrupts_off);
    if let Some(state) = sched_lock().as_mut() {
        if steal > 0 {
            account_steal(state, cpu, steal);
        }
        let _ = state.policy.tick(cpu, now);
    };
}

/// Wakes thread `id` (any context, including hard-IRQ and timer callbacks). Sends the
/// reschedule IPI the policy asks for; a local reschedule happens at the next preemption point.
pub fn wake_up(id: u64) {
    let now = crate::kernel::time::uptime_ns();
    let ipi = {
        let interrupts_off = InterruptsDisabled::new();
        let cpu = interrupts_off.cpu_index();
        let mut guard = sched_lock();
        let Some(state) = guard.as_mut() else {
            return;
        };
        let Some(task) = state.threads.get(&id).map(|thread| thread.id) else {
            return;
        };
        match state.policy.wake_up(task, cpu, now) {
            Ok(Wakeup::Placed(placement)) if placement.send_resched_ipi => Some(placement.cpu),
            _ => None,
        }
    };
    if let Some(target) = ipi {
        let _ = crate::kernel::smp::send_reschedule(target);
    }
}

/// Marks thread `id` (the running thread) as about to sleep: a wake-up from now on cancels its
/// next sleep. The wait/wake protocol around it is `lull-waitqueue`'s (see `wait.rs`).
fn prepare_to_sleep(id: u64) {
    if let Some(state) = sched_lock().as_mut() {
        if let Some(task) = state.threads.get(&id).map(|thread| thread.id) {
            let _ = state.policy.prepare_to_sleep(task);
        }
    }
}

/// Thread `id` (the running thread) found its condition true: it will not sleep after all.
fn finish_wait(id: u64) {
    if let Some(state) = sched_lock().as_mut() {
        if let Some(task) = state.threads.get(&id).map(|thread| thread.id) {
            let _ = state.policy.finish_wait(task);
        }
    }
}

/// Moves thread `id` to the CPUs of `affinity` (Linux's `set_cpus_allowed_ptr`); a thread
/// running or queued elsewhere moves at its next scheduling point (a reschedule IPI asks).
pub fn set_affinity(id: u64, affinity: CpuSet) -> Result<(), String> {
    let now = crate::kernel::time::uptime_ns();
    let ipi = {
        let interrupts_off = InterruptsDisabled::new();
        let mut guard = sched_lock();
        let state = guard
            .as_mut()
            .ok_or_else(|| String::from("the scheduler is not initialised"))?;
        let task = state
            .threads
            .get(&id)
            .map(|thread| thread.id)
            .ok_or_else(|| alloc::format!("no thread {id}"))?;
        state
            .policy
            .set_affinity(task, affinity, interrupts_off.cpu_index(), now)
            .map_err(|error| alloc::format!("{error}"))?
            .filter(|placement| placement.send_resched_ipi)
            .map(|placement| placement.cpu)
    };
    if let Some(cpu) = ipi {
        let _ = crate::kernel::smp::send_reschedule(cpu);
    }
    preempt_point();
    Ok(())
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
/// `sched_yield()`: lets the other runnable threads of this CPU run first.
pub fn yield_now() {
    let interrupts_off = InterruptsDisabled::new();
    let cpu = interrupts_off.cpu_index();
    let now = crate::kernel::time::uptime_ns();
    let yielded = sched_lock()
        .as_mut()
        .is_some_and(|state| state.policy.yield_now(cpu, now).unwrap_or(false));
    drop(interrupts_off);
    if yielded {
        schedule();
    }
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
/// Directed yield (Linux 2.6.39 `yield_to`): gives the rest of this thread's slice to thread
/// `target`, which runs next on its CPU. Returns whether it yielded.
pub fn yield_to(target: u64) -> bool {
    let yielded = {
        let interrupts_off = InterruptsDisabled::new();
        let cpu = interrupts_off.cpu_index();
        let now = crate::kernel::time::uptime_ns();
        let mut guard = sched_lock();
        let Some(state) = guard.as_mut() else {
            return false;
        };
        let Some(task) = state.threads.get(&target).map(|thread| thread.id) else {
            return false;
        };
        match state.policy.yield_to(cpu, task, now) {
            Ok(YieldTo::Yielded {
                target_cpu,
                send_resched_ipi,
            }) => Some(send_resched_ipi.then_some(target_cpu)),
            _ => None,
        }
    };
    match yielded {
        Some(ipi) => {
            if let Some(cpu) = ipi {
                let _ = crate::kernel::smp::send_reschedule(cpu);
            }
            schedule();
            true
        }
        None => false,
    }
}

/// A CPU's idle thread: runs whatever becomes runnable, else sleeps tickless. Never returns.
pub fn idle_loop() -> ! {
    loop {
        cpu::disable_interrupts();
        let work = {
            let interrupts_off = InterruptsDisabled::new();
            let cpu = interrupts_off.cpu_index();
            let work = sched_lock().as_ref().is_some_and(|state| {
                state.policy.need_resched(cpu)
                    || state
                        .policy
                        .cpu_info(cpu)
                        .is_some_and(|info| info.nr_running > 0)
            });
            work
        };
        if work {
            switch_away(false);
            continue;
        }
        // Halts with interrupts enabled; a wake-up sends this CPU an interrupt (or set the
        // flag checked above before interrupts went off).
        crate::kernel::time::idle();
    }
}

/// One row of `ps`.
pub struct ThreadRow {
    pub info: TaskInfo,
    pub name: String,
}

/// Every thread, by id, with CPU time accounted up to now.
pub fn threads() -> Vec<ThreadRow> {
    let now = crate::kernel::time::uptime_ns();
    let mut guard = sched_lock();
    let Some(state) = guard.as_mut() else {
        return Vec::new();
    };
    for cpu in crate::kernel::smp::online_cpus() {
        let _ = state.policy.account(cpu, now);
    }
    state
        .threads
        .values()
        .filter_map(|thread| {
            Some(ThreadRow {
                info: state.policy.task_info(thread.id)?,
                name: thread.name.clone(),
            })
        })
        .collect()
}

/// A scheduler snapshot of thread `id` (tests).
#[cfg_attr(not(feature = "ktest"), allow(dead_code))]
pub fn task_info(id: u64) -> Option<TaskInfo> {
    let guard = sched_lock();
    let state = guard.as_ref()?;
    state.policy.task_info(state.threads.get(&id)?.id)
}

/// The scheduler's view of CPU `cpu` (idle and steal time, switches), accounted up to now.
pub fn cpu_info(cpu: usize) -> Option<lull_sched::CpuInfo> {
    let now = crate::kernel::time::uptime_ns();
    let mut guard = sched_lock();
    let state = guard.as_mut()?;
    let _ = state.policy.account(cpu, now);
    state.policy.cpu_info(cpu)
}

/// Context switches CPU `cpu` has made (tests, `cpus`).
#[cfg_attr(not(feature = "ktest"), allow(dead_code))]
pub fn context_switches(cpu: usize) -> u64 {
    sched_lock()
        .as_ref()
        .and_then(|state| state.policy.cpu_info(cpu))
        .map_or(0, |info| info.context_switches)
}

/// The scheduler's bookkeeping sizes: tasks the policy knows, live threads, and exited threads
/// waiting for their CPU to leave their stack (leak checks compare them across cycles).
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
pub fn task_counts() -> (usize, usize, usize) {
    let guard = sched_lock();
    guard.as_ref().map_or((0, 0, 0), |state| {
        (
            state.policy.tasks().count(),
            state.threads.len(),
            state.zombies.len(),
        )
    })
}

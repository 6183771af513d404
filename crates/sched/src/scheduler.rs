//! The scheduler: every CPU's run queue and every task, and the policy operations on them.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

use crate::fair::{real_to_exceed, renormalize, to_virtual, SchedConfig};
use crate::runqueue::{FairKey, RunQueue};
use crate::task::Task;
use crate::{CpuId, CpuSet, SchedClass, SchedError, TaskId, TaskInfo, TaskState};

/// Where a task was queued, and whether that CPU must reschedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The CPU whose run queue now holds the task.
    pub cpu: CpuId,
    /// The task should run before that CPU's current task (or the CPU was idle): the CPU's
    /// need-resched flag is set.
    pub preempt: bool,
    /// The caller must send a reschedule IPI to `cpu`: it is another CPU, it must reschedule,
    /// and no earlier call already asked for an IPI that it has not yet acted on.
    pub send_resched_ipi: bool,
}

/// What [`Scheduler::wake_up`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wakeup {
    /// The task was sleeping and is now queued.
    Placed(Placement),
    /// The task was preparing to sleep: it is `Running` again and its `schedule()` will not
    /// sleep (the wake-up is not lost).
    SleepCancelled,
    /// The task was already running or runnable; nothing changed.
    AlreadyRunnable,
}

/// What [`Scheduler::pick_next`] chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "the CPU must switch to `next` (or idle) and send any IPI named"]
pub struct Pick {
    /// The task to run now; `None` means idle.
    pub next: Option<TaskId>,
    /// The task that was current before (`next == previous` means no switch).
    pub previous: Option<TaskId>,
    /// The previous task was no longer allowed here and was pushed to this CPU, which must be
    /// sent a reschedule IPI.
    pub resched_ipi: Option<CpuId>,
}

/// What [`Scheduler::yield_to`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum YieldTo {
    /// The target got the rest of the yielder's slice and runs next on its CPU; the yielder's
    /// CPU must reschedule.
    Yielded {
        target_cpu: CpuId,
        /// The caller must send a reschedule IPI to `target_cpu`.
        send_resched_ipi: bool,
    },
    /// Nothing changed (Linux's `yield_to` returning 0), so a PV spinlock may try another vCPU.
    NotYielded(NotYieldedReason),
}

/// Why [`Scheduler::yield_to`] did not yield.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotYieldedReason {
    /// A task cannot yield to itself.
    TargetIsSelf,
    /// The target is not waiting in a run queue (already running, or sleeping, or dead).
    TargetNotRunnable(TaskState),
    /// Directed yield works between fair tasks only (as in Linux).
    ClassMismatch,
}

/// A snapshot of one CPU's scheduling state, for the `cpus` shell command and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuInfo {
    pub cpu: CpuId,
    pub online: bool,
    pub current: Option<TaskId>,
    /// Waiting tasks plus the current one.
    pub nr_running: usize,
    pub rt_waiting: usize,
    pub fair_waiting: usize,
    pub need_resched: bool,
    /// Nanoseconds spent with no task, up to the last accounting point (steal time excluded).
    pub idle_ns: u64,
    /// Nanoseconds the hypervisor took from this CPU while it was runnable (steal time).
    pub steal_ns: u64,
    pub context_switches: u64,
    pub min_vruntime: u128,
}

/// A broken internal invariant found by [`Scheduler::check_consistency`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsistencyError {
    pub what: &'static str,
    pub task: Option<TaskId>,
    pub cpu: Option<CpuId>,
}

impl fmt::Display for ConsistencyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scheduler inconsistency: {}", self.what)?;
        if let Some(task) = self.task {
            write!(f, " (task {task})")?;
        }
        if let Some(cpu) = self.cpu {
            write!(f, " (CPU {cpu})")?;
        }
        Ok(())
    }
}

/// How a task arrives in a run queue, which decides its fair-class placement.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// Just created: placed at the queue minimum, so forking cannot earn credit.
    New,
    /// Woken from sleep: at most `sleeper_credit_ns` below the minimum.
    Woken,
    /// Moved while runnable: keeps its distance from the minimum.
    Migrated,
}

/// Scheduler policy for all CPUs, driven by a clock passed in by the caller (nanoseconds,
/// monotonic). Holds no hardware state: the kernel switches stacks and sends IPIs as told.
///
/// Context rules for the kernel: every method must be called with this structure locked and
/// with interrupts disabled on the calling CPU; `caller_cpu` is the CPU making the call (it
/// decides whether an IPI is needed).
#[derive(Clone, Debug)]
pub struct Scheduler {
    config: SchedConfig,
    cpus: Vec<RunQueue>,
    tasks: BTreeMap<TaskId, Task>,
    next_task_id: u64,
}

impl Scheduler {
    /// A scheduler for `possible_cpus` CPUs (1..=64). CPU 0 (the boot CPU) starts online;
    /// bring the others up with [`Scheduler::set_cpu_online`].
    pub fn new(possible_cpus: usize, config: SchedConfig) -> Result<Scheduler, SchedError> {
        config.validate()?;
        if possible_cpus == 0 || possible_cpus > CpuSet::CAPACITY {
            return Err(SchedError::TooManyCpus(possible_cpus));
        }
        Ok(Scheduler {
            config,
            cpus: (0..possible_cpus)
                .map(|cpu| RunQueue::new(cpu == 0))
                .collect(),
            tasks: BTreeMap::new(),
            next_task_id: 1,
        })
    }

    /// The tunables this scheduler was built with.
    pub fn config(&self) -> &SchedConfig {
        &self.config
    }

    /// How many CPUs this scheduler was built for.
    pub fn possible_cpus(&self) -> usize {
        self.cpus.len()
    }

    /// The CPUs that are online.
    pub fn online_cpus(&self) -> CpuSet {
        self.cpus
            .iter()
            .enumerate()
            .filter(|(_, queue)| queue.online)
            .map(|(cpu, _)| cpu)
            .collect()
    }

    /// Marks `cpu` online (it starts idle at `now`). Bringing an online CPU online again is a
    /// no-op. CPUs never go offline in this version.
    pub fn set_cpu_online(&mut self, cpu: CpuId, now: u64) -> Result<(), SchedError> {
        let queue = self.cpus.get_mut(cpu).ok_or(SchedError::NoSuchCpu(cpu))?;
        if !queue.online {
            queue.online = true;
            queue.clock = now;
            queue.idle_since = Some(now);
        }
        Ok(())
    }

    // ----- task life cycle -------------------------------------------------------------------

    /// Creates a task and queues it on the best allowed CPU (see [`Scheduler::wake_up`] for the
    /// choice; a fair task starts at that queue's minimum virtual runtime).
    pub fn spawn(
        &mut self,
        class: SchedClass,
        affinity: CpuSet,
        caller_cpu: CpuId,
        now: u64,
    ) -> Result<(TaskId, Placement), SchedError> {
        self.online_queue(caller_cpu)?;
        let target = self
            .select_cpu(affinity, caller_cpu)
            .ok_or(SchedError::NoOnlineCpuInAffinity(affinity))?;
        let id = self.allocate_id();
        self.tasks
            .insert(id, Task::new(id, class, affinity, caller_cpu));
        let placement = self.activate(id, target, caller_cpu, now, Arrival::New);
        Ok((id, placement))
    }

    /// Registers the code already running on `cpu` (the boot thread, or a CPU's first thread)
    /// as a task that is `Running` there.
    pub fn adopt_current(
        &mut self,
        cpu: CpuId,
        class: SchedClass,
        affinity: CpuSet,
        now: u64,
    ) -> Result<TaskId, SchedError> {
        let queue = self.online_queue(cpu)?;
        if queue.current.is_some() {
            return Err(SchedError::CpuBusy(cpu));
        }
        if !affinity.contains(cpu) {
            return Err(SchedError::NoOnlineCpuInAffinity(affinity));
        }
        self.update_current(cpu, now);
        let id = self.allocate_id();
        let mut task = Task::new(id, class, affinity, cpu);
        let Some(queue) = self.cpus.get_mut(cpu) else {
            return Err(SchedError::NoSuchCpu(cpu));
        };
        task.state = TaskState::Running;
        task.vruntime = queue.min_vruntime;
        task.exec_start = queue.clock;
        queue.current = Some(id);
        queue.idle_since = None;
        self.tasks.insert(id, task);
        Ok(id)
    }

    /// Wakes a task.
    ///
    /// A sleeping task is queued on: its previous CPU if that is idle; else an idle CPU its
    /// affinity allows (lowest number); else the allowed CPU with the fewest tasks (the
    /// previous CPU on a tie). A fair task is placed at
    /// `max(own vruntime, queue minimum − sleeper credit)`. It preempts that CPU's current task
    /// when its class and priority win (fair against fair: when it is behind by more than the
    /// wake-up granularity).
    ///
    /// A task preparing to sleep becomes `Running` again ([`Wakeup::SleepCancelled`]). Waking a
    /// dead task is refused.
    pub fn wake_up(
        &mut self,
        task: TaskId,
        caller_cpu: CpuId,
        now: u64,
    ) -> Result<Wakeup, SchedError> {
        self.online_queue(caller_cpu)?;
        let record = self.task_mut(task)?;
        match record.state {
            TaskState::Running | TaskState::Runnable => Ok(Wakeup::AlreadyRunnable),
            TaskState::PreparingToSleep => {
                record.state = TaskState::Running;
                Ok(Wakeup::SleepCancelled)
            }
            TaskState::Dead => Err(SchedError::IllegalTransition {
                task,
                from: TaskState::Dead,
                operation: "wake up",
            }),
            TaskState::Sleeping => {
                let (affinity, previous_cpu) = (record.affinity, record.cpu);
                let target = self
                    .select_cpu(affinity, previous_cpu)
                    .ok_or(SchedError::NoOnlineCpuInAffinity(affinity))?;
                Ok(Wakeup::Placed(self.activate(
                    task,
                    target,
                    caller_cpu,
                    now,
                    Arrival::Woken,
                )))
            }
        }
    }

    /// Queues a sleeping task on a CPU of the caller's choosing (which its affinity must
    /// allow), with the same placement and preemption rules as [`Scheduler::wake_up`].
    pub fn enqueue(
        &mut self,
        task: TaskId,
        cpu: CpuId,
        caller_cpu: CpuId,
        now: u64,
    ) -> Result<Placement, SchedError> {
        self.online_queue(caller_cpu)?;
        self.online_queue(cpu)?;
        let record = self.task(task)?;
        if record.state != TaskState::Sleeping {
            return Err(SchedError::IllegalTransition {
                task,
                from: record.state,
                operation: "enqueue (only a sleeping task can be queued)",
            });
        }
        if !record.affinity.contains(cpu) {
            return Err(SchedError::CpuNotAllowed { task, cpu });
        }
        Ok(self.activate(task, cpu, caller_cpu, now, Arrival::Woken))
    }

    /// Takes a waiting (runnable, not running) task off its run queue; it becomes `Sleeping`.
    /// A running task leaves its CPU only through its own `schedule()`
    /// ([`Scheduler::prepare_to_sleep`] then [`Scheduler::pick_next`]).
    pub fn dequeue(&mut self, task: TaskId) -> Result<(), SchedError> {
        let record = self.task(task)?;
        if record.state != TaskState::Runnable {
            return Err(SchedError::IllegalTransition {
                task,
                from: record.state,
                operation: "dequeue (only a waiting task can be taken off a queue)",
            });
        }
        self.unqueue(task);
        if let Some(record) = self.tasks.get_mut(&task) {
            record.state = TaskState::Sleeping;
        }
        Ok(())
    }

    /// The running task announces it is about to sleep (it is already on its wait queue and
    /// will re-check its condition). See [`TaskState`] for why this step exists.
    pub fn prepare_to_sleep(&mut self, task: TaskId) -> Result<(), SchedError> {
        let record = self.task_mut(task)?;
        match record.state {
            TaskState::Running => {
                record.state = TaskState::PreparingToSleep;
                Ok(())
            }
            from => Err(SchedError::IllegalTransition {
                task,
                from,
                operation: "prepare to sleep (only the running task can)",
            }),
        }
    }

    /// The task found its condition true and will not sleep after all (Linux `finish_wait`).
    /// Also fine when a wake-up already made it `Running`.
    pub fn finish_wait(&mut self, task: TaskId) -> Result<(), SchedError> {
        let record = self.task_mut(task)?;
        match record.state {
            TaskState::Running | TaskState::PreparingToSleep => {
                record.state = TaskState::Running;
                Ok(())
            }
            from => Err(SchedError::IllegalTransition {
                task,
                from,
                operation: "finish waiting (only the running task can)",
            }),
        }
    }

    /// The running task exits: it becomes `Dead` and its CPU must reschedule. Its record stays
    /// (CPU time readable) until [`Scheduler::reap`].
    pub fn exit(&mut self, task: TaskId) -> Result<(), SchedError> {
        let record = self.task_mut(task)?;
        match record.state {
            TaskState::Running | TaskState::PreparingToSleep => {
                record.state = TaskState::Dead;
                let cpu = record.cpu;
                if let Some(queue) = self.cpus.get_mut(cpu) {
                    queue.need_resched = true;
                }
                Ok(())
            }
            from => Err(SchedError::IllegalTransition {
                task,
                from,
                operation: "exit (only the running task can)",
            }),
        }
    }

    /// Forgets a dead task that has left its CPU, returning its final figures.
    pub fn reap(&mut self, task: TaskId) -> Result<TaskInfo, SchedError> {
        let record = self.task(task)?;
        let still_on_cpu = self
            .cpus
            .get(record.cpu)
            .is_some_and(|queue| queue.current == Some(task));
        if record.state != TaskState::Dead || still_on_cpu {
            return Err(SchedError::IllegalTransition {
                task,
                from: record.state,
                operation: "reap (only a dead task that has left its CPU can be reaped)",
            });
        }
        let info = record.info();
        self.tasks.remove(&task);
        Ok(info)
    }

    // ----- switching ---------------------------------------------------------------------------

    /// `schedule()` on `cpu`: accounts the current task, puts it back in the queue if it can
    /// still run (or lets it sleep if it was preparing to), and chooses the next task: the
    /// highest real-time priority (FIFO within a priority), else the `yield_to` buddy, else the
    /// fair task with the smallest virtual runtime. With nothing to run here and
    /// [`SchedConfig::pull_when_idle`], first pulls a waiting task from the busiest CPU.
    pub fn pick_next(&mut self, cpu: CpuId, now: u64) -> Result<Pick, SchedError> {
        self.online_queue(cpu)?;
        self.update_current(cpu, now);
        let mut resched_ipi = None;
        let previous = self
            .cpus
            .get_mut(cpu)
            .and_then(|queue| queue.current.take());
        let mut previous_still_runnable = false;
        if let Some(previous_id) = previous {
            if let Some(record) = self.tasks.get_mut(&previous_id) {
                let yielded = core::mem::take(&mut record.yield_pending);
                match record.state {
                    TaskState::Running if !record.affinity.contains(cpu) => {
                        // Its affinity changed while it ran: push it to an allowed CPU.
                        let affinity = record.affinity;
                        match self.select_cpu(affinity, cpu) {
                            Some(target) => {
                                if let Some(record) = self.tasks.get_mut(&previous_id) {
                                    record.involuntary_switches += 1;
                                }
                                let placement =
                                    self.activate(previous_id, target, cpu, now, Arrival::Migrated);
                                if placement.send_resched_ipi {
                                    resched_ipi = Some(target);
                                }
                            }
                            None => {
                                // Unreachable while affinities always name an online CPU;
                                // staying here beats losing the task.
                                previous_still_runnable = true;
                                self.requeue_previous(cpu, previous_id, false);
                            }
                        }
                    }
                    TaskState::Running => {
                        previous_still_runnable = true;
                        self.requeue_previous(cpu, previous_id, yielded);
                    }
                    TaskState::PreparingToSleep => {
                        record.state = TaskState::Sleeping;
                        record.voluntary_switches += 1;
                    }
                    TaskState::Dead => record.voluntary_switches += 1,
                    // A current task is never queued or asleep; nothing to undo.
                    TaskState::Runnable | TaskState::Sleeping => {}
                }
            }
        }

        let mut next = self.take_next(cpu);
        if next.is_none() && self.config.pull_when_idle && self.pull_task(cpu, now).is_some() {
            next = self.take_next(cpu);
        }

        let Some(queue) = self.cpus.get_mut(cpu) else {
            return Err(SchedError::NoSuchCpu(cpu));
        };
        let now = queue.clock;
        let mut current_fair_vruntime = None;
        if let Some(next_id) = next {
            if let Some(record) = self.tasks.get_mut(&next_id) {
                record.state = TaskState::Running;
                record.cpu = cpu;
                record.exec_start = now;
                record.turn_start_exec_ns = record.sum_exec_ns;
                if matches!(record.class, SchedClass::Fair(_)) {
                    current_fair_vruntime = Some(record.vruntime);
                }
            }
            queue.current = Some(next_id);
            if let Some(since) = queue.idle_since.take() {
                let elapsed = now.saturating_sub(since);
                queue.idle_ns += elapsed - queue.take_steal(elapsed);
            }
        } else if queue.idle_since.is_none() {
            queue.idle_since = Some(now);
        }
        if next != previous {
            queue.context_switches += 1;
            if previous_still_runnable {
                if let Some(record) = previous.and_then(|id| self.tasks.get_mut(&id)) {
                    record.involuntary_switches += 1;
                }
            }
        }
        queue.update_min_vruntime(current_fair_vruntime);
        queue.need_resched = false;
        Ok(Pick {
            next,
            previous,
            resched_ipi,
        })
    }

    /// Preemption (return from interrupt, lock release): like [`Scheduler::pick_next`], except
    /// that a current task preparing to sleep stays runnable — preemption must never put a task
    /// to sleep before it re-checked its condition, or its wake-up could be lost.
    pub fn preempt(&mut self, cpu: CpuId, now: u64) -> Result<Pick, SchedError> {
        let queue = self.online_queue(cpu)?;
        if let Some(record) = queue.current.and_then(|id| self.tasks.get_mut(&id)) {
            if record.state == TaskState::PreparingToSleep {
                record.state = TaskState::Running;
            }
        }
        self.pick_next(cpu, now)
    }

    /// Accounts the current task's CPU time up to `now` and returns whether `cpu` should
    /// reschedule: a higher class or priority is waiting, or the current fair task used up its
    /// slice (after at least the minimum granularity), or the CPU idles with work queued.
    /// A lone task is never asked to reschedule, so a tickless CPU need not tick for it.
    pub fn tick(&mut self, cpu: CpuId, now: u64) -> Result<bool, SchedError> {
        self.online_queue(cpu)?;
        self.update_current(cpu, now);
        let wants = self.wants_resched(cpu);
        let Some(queue) = self.cpus.get_mut(cpu) else {
            return Err(SchedError::NoSuchCpu(cpu));
        };
        queue.need_resched |= wants;
        Ok(queue.need_resched)
    }

    /// Accounts the current task's CPU time (and the CPU's idle time) up to `now`, without any
    /// preemption decision: call before reading [`TaskInfo::cpu_time_ns`] for `ps`.
    pub fn account(&mut self, cpu: CpuId, now: u64) -> Result<(), SchedError> {
        self.online_queue(cpu)?;
        self.update_current(cpu, now);
        Ok(())
    }

    /// Reports `steal_ns` more nanoseconds of steal time on `cpu` (a paravirtualized guest
    /// reads it from the hypervisor): time that passed while the CPU was runnable but not
    /// running. The next accounting takes it off what the current task (or idle) is charged,
    /// so a fair task's virtual runtime grows only by the time it really ran (Linux's
    /// `update_rq_clock_task` with `paravirt_steal_rq_enabled`).
    pub fn account_steal(&mut self, cpu: CpuId, steal_ns: u64) -> Result<(), SchedError> {
        let queue = self.online_queue_mut(cpu)?;
        queue.steal_pending = queue.steal_pending.saturating_add(steal_ns);
        queue.steal_ns = queue.steal_ns.saturating_add(steal_ns);
        Ok(())
    }

    /// When [`Scheduler::tick`] will first return true if nothing else happens, so a tickless
    /// CPU can program its one-shot timer for exactly that moment; `None` when no preemption
    /// is due at all (idle, a lone task, or a FIFO task). Ask again after every call that
    /// changed this CPU's queue.
    pub fn next_preemption_deadline(&self, cpu: CpuId) -> Option<u64> {
        let queue = self.cpus.get(cpu).filter(|queue| queue.online)?;
        if queue.need_resched {
            return Some(queue.clock);
        }
        let Some(current) = queue.current.and_then(|id| self.tasks.get(&id)) else {
            return (queue.nr_queued() > 0).then_some(queue.clock);
        };
        if current.state == TaskState::Dead || !current.affinity.contains(cpu) {
            return Some(queue.clock);
        }
        match current.class {
            SchedClass::RealTime(priority) => queue
                .highest_rt_queued()
                .filter(|&highest| highest > priority.get())
                .map(|_| queue.clock),
            SchedClass::Fair(nice) => {
                if queue.rt_queued() > 0 {
                    return Some(queue.clock);
                }
                let leftmost = queue.leftmost_fair()?;
                let weight = nice.weight();
                let ideal = self.ideal_slice(queue, weight);
                let base = current.exec_start;
                let ran = current.sum_exec_ns - current.turn_start_exec_ns;
                let slice_end = base.saturating_add(ideal.saturating_sub(ran));
                // The virtual-runtime rule: once it is more than a slice ahead of the leftmost.
                let lead_allowed = u128::from(ideal);
                let after = if current.vruntime > leftmost.0 {
                    let lead = current.vruntime - leftmost.0;
                    if lead > lead_allowed {
                        0
                    } else {
                        real_to_exceed(lead_allowed - lead, weight)
                    }
                } else {
                    real_to_exceed(lead_allowed + (leftmost.0 - current.vruntime), weight)
                };
                let min_granularity_end = self.config.min_granularity_ns.saturating_sub(ran);
                let lead_end = base.saturating_add(after.max(min_granularity_end));
                Some(slice_end.min(lead_end))
            }
        }
    }

    /// Whether `cpu` has been asked to reschedule at its next preemption point.
    pub fn need_resched(&self, cpu: CpuId) -> bool {
        self.cpus.get(cpu).is_some_and(|queue| queue.need_resched)
    }

    // ----- yielding ------------------------------------------------------------------------------

    /// `sched_yield()` by `cpu`'s current task; returns whether another task will run.
    /// A FIFO task goes behind the other waiting tasks of its priority (lower priorities still
    /// do not run); a fair task goes behind every waiting fair task.
    pub fn yield_now(&mut self, cpu: CpuId, now: u64) -> Result<bool, SchedError> {
        self.online_queue(cpu)?;
        self.update_current(cpu, now);
        let current = self.running_current(cpu, "yield")?;
        let Some(queue) = self.cpus.get_mut(cpu) else {
            return Err(SchedError::NoSuchCpu(cpu));
        };
        let Some(record) = self.tasks.get_mut(&current) else {
            return Err(SchedError::NoSuchTask(current));
        };
        let someone_else = match record.class {
            SchedClass::RealTime(priority) => {
                let equal_or_higher = queue
                    .highest_rt_queued()
                    .is_some_and(|highest| highest >= priority.get());
                record.yield_pending = equal_or_higher;
                equal_or_higher
            }
            SchedClass::Fair(_) => {
                if let Some(rightmost) = queue.rightmost_fair() {
                    // Equal virtual runtime plus a later insertion puts it after the rightmost.
                    record.vruntime = record.vruntime.max(rightmost.0);
                }
                queue.nr_queued() > 0
            }
        };
        queue.need_resched |= someone_else;
        Ok(someone_else)
    }

    /// Directed yield (Linux 2.6.39 `yield_to`, used by PV spinlocks and many-vCPU guests): the
    /// current fair task of `cpu` gives the rest of its slice to `target`, a waiting fair task
    /// on any CPU. The target's virtual runtime is credited with that time (never below its
    /// queue's sleeper floor) and it runs next on its CPU; the yielder is charged the same time
    /// and its CPU reschedules. When the target's CPU is another one running a fair task, that
    /// CPU is asked to reschedule too.
    pub fn yield_to(
        &mut self,
        cpu: CpuId,
        target: TaskId,
        now: u64,
    ) -> Result<YieldTo, SchedError> {
        self.online_queue(cpu)?;
        self.task(target)?;
        self.update_current(cpu, now);
        let yielder = self.running_current(cpu, "yield to another task")?;
        if yielder == target {
            return Ok(YieldTo::NotYielded(NotYieldedReason::TargetIsSelf));
        }
        let target_record = self.task(target)?;
        if target_record.state != TaskState::Runnable {
            return Ok(YieldTo::NotYielded(NotYieldedReason::TargetNotRunnable(
                target_record.state,
            )));
        }
        let (SchedClass::Fair(target_nice), Some(yielder_weight)) =
            (target_record.class, self.task(yielder)?.class.fair_weight())
        else {
            return Ok(YieldTo::NotYielded(NotYieldedReason::ClassMismatch));
        };
        let target_cpu = target_record.cpu;
        self.update_current(target_cpu, now);

        // The yielder donates what is left of its slice, and pays for it.
        let donated = {
            let queue = self.online_queue(cpu)?;
            let yielder_record = self.task(yielder)?;
            let ran = yielder_record.sum_exec_ns - yielder_record.turn_start_exec_ns;
            self.ideal_slice(queue, yielder_weight).saturating_sub(ran)
        };
        if let Some(record) = self.tasks.get_mut(&yielder) {
            record.vruntime = record
                .vruntime
                .saturating_add(to_virtual(donated, yielder_weight));
        }

        // The target receives it, within the bound a sleeper would get.
        self.unqueue(target);
        let Some(target_queue) = self.cpus.get_mut(target_cpu) else {
            return Err(SchedError::NoSuchCpu(target_cpu));
        };
        let Some(record) = self.tasks.get_mut(&target) else {
            return Err(SchedError::NoSuchTask(target));
        };
        let floor = target_queue
            .min_vruntime
            .saturating_sub(u128::from(self.config.sleeper_credit_ns));
        let credited = record
            .vruntime
            .saturating_sub(to_virtual(donated, target_nice.weight()));
        record.vruntime = credited.max(floor).min(record.vruntime);
        enqueue_on(target_queue, record, target_cpu, false);
        target_queue.next_buddy = Some(target);

        if let Some(queue) = self.cpus.get_mut(cpu) {
            queue.need_resched = true;
        }
        let send_resched_ipi = if target_cpu == cpu {
            false
        } else {
            let preempt = self
                .cpus
                .get(target_cpu)
                .and_then(|queue| queue.current)
                .and_then(|id| self.tasks.get(&id))
                .is_none_or(|current| !current.class.is_real_time());
            self.resched(target_cpu, preempt, cpu)
        };
        Ok(YieldTo::Yielded {
            target_cpu,
            send_resched_ipi,
        })
    }

    // ----- balancing, class and affinity -------------------------------------------------------

    /// Idle balancing: when `cpu` has nothing waiting (and its current task, if any, is
    /// leaving), pulls one waiting task that may run here from the CPU with the most tasks
    /// (ties: lowest number). Real-time tasks are pulled first (highest priority), else the fair
    /// task furthest back on its timeline. Returns the pulled task, now queued here.
    pub fn idle_balance(&mut self, cpu: CpuId, now: u64) -> Result<Option<TaskId>, SchedError> {
        let queue = self.online_queue(cpu)?;
        let current_stays = queue
            .current
            .and_then(|id| self.tasks.get(&id))
            .is_some_and(|current| current.state == TaskState::Running);
        if queue.nr_queued() > 0 || current_stays {
            return Ok(None);
        }
        let pulled = self.pull_task(cpu, now);
        if pulled.is_some() {
            if let Some(queue) = self.cpus.get_mut(cpu) {
                queue.need_resched = true;
            }
        }
        Ok(pulled)
    }

    /// Changes a task's class or priority. Returns where the task is when its CPU must
    /// re-evaluate what runs (and whether to send it an IPI); `None` for a sleeping task.
    pub fn set_class(
        &mut self,
        task: TaskId,
        class: SchedClass,
        caller_cpu: CpuId,
        now: u64,
    ) -> Result<Option<Placement>, SchedError> {
        self.online_queue(caller_cpu)?;
        let record = self.task(task)?;
        let (state, cpu, old_class) = (record.state, record.cpu, record.class);
        let joins_fair = old_class.is_real_time() && !class.is_real_time();
        match state {
            TaskState::Dead => Err(SchedError::IllegalTransition {
                task,
                from: state,
                operation: "change class",
            }),
            TaskState::Sleeping => {
                let record = self.task_mut(task)?;
                record.class = class;
                if joins_fair {
                    // Its old virtual runtime is stale: wake-up placement gives it a fair start.
                    record.vruntime = 0;
                }
                Ok(None)
            }
            TaskState::Runnable => {
                self.update_current(cpu, now);
                self.unqueue(task);
                let Some(queue) = self.cpus.get_mut(cpu) else {
                    return Err(SchedError::NoSuchCpu(cpu));
                };
                let Some(record) = self.tasks.get_mut(&task) else {
                    return Err(SchedError::NoSuchTask(task));
                };
                record.class = class;
                if joins_fair {
                    record.vruntime = queue.min_vruntime;
                }
                enqueue_on(queue, record, cpu, false);
                let preempt = self.should_preempt(cpu, task);
                let send_resched_ipi = self.resched(cpu, preempt, caller_cpu);
                Ok(Some(Placement {
                    cpu,
                    preempt,
                    send_resched_ipi,
                }))
            }
            TaskState::Running | TaskState::PreparingToSleep => {
                self.update_current(cpu, now);
                let min_vruntime = self.cpus.get(cpu).map_or(0, |queue| queue.min_vruntime);
                let record = self.task_mut(task)?;
                record.class = class;
                if joins_fair {
                    record.vruntime = min_vruntime;
                }
                let send_resched_ipi = self.resched(cpu, true, caller_cpu);
                Ok(Some(Placement {
                    cpu,
                    preempt: true,
                    send_resched_ipi,
                }))
            }
        }
    }

    /// Changes a task's CPU affinity (which must name an online CPU). A waiting task on a CPU
    /// it may no longer use moves now (returned placement); a running one is asked to
    /// reschedule and is pushed away by its CPU's next [`Scheduler::pick_next`].
    pub fn set_affinity(
        &mut self,
        task: TaskId,
        affinity: CpuSet,
        caller_cpu: CpuId,
        now: u64,
    ) -> Result<Option<Placement>, SchedError> {
        self.online_queue(caller_cpu)?;
        if affinity.intersection(self.online_cpus()).is_empty() {
            return Err(SchedError::NoOnlineCpuInAffinity(affinity));
        }
        let record = self.task_mut(task)?;
        if record.state == TaskState::Dead {
            return Err(SchedError::IllegalTransition {
                task,
                from: TaskState::Dead,
                operation: "change affinity",
            });
        }
        record.affinity = affinity;
        let (state, cpu) = (record.state, record.cpu);
        if affinity.contains(cpu) {
            return Ok(None);
        }
        match state {
            TaskState::Runnable => {
                self.unqueue(task);
                let Some(target) = self.select_cpu(affinity, cpu) else {
                    return Err(SchedError::NoOnlineCpuInAffinity(affinity));
                };
                Ok(Some(self.activate(
                    task,
                    target,
                    caller_cpu,
                    now,
                    Arrival::Migrated,
                )))
            }
            TaskState::Running | TaskState::PreparingToSleep => {
                let send_resched_ipi = self.resched(cpu, true, caller_cpu);
                Ok(Some(Placement {
                    cpu,
                    preempt: true,
                    send_resched_ipi,
                }))
            }
            TaskState::Sleeping | TaskState::Dead => Ok(None),
        }
    }

    // ----- queries -------------------------------------------------------------------------------

    /// One task's figures.
    pub fn task_info(&self, task: TaskId) -> Option<TaskInfo> {
        self.tasks.get(&task).map(Task::info)
    }

    /// Every task, by id.
    pub fn tasks(&self) -> impl Iterator<Item = TaskInfo> + '_ {
        self.tasks.values().map(Task::info)
    }

    /// The task running on `cpu`.
    pub fn current(&self, cpu: CpuId) -> Option<TaskId> {
        self.cpus.get(cpu).and_then(|queue| queue.current)
    }

    /// One CPU's figures.
    pub fn cpu_info(&self, cpu: CpuId) -> Option<CpuInfo> {
        let queue = self.cpus.get(cpu)?;
        Some(CpuInfo {
            cpu,
            online: queue.online,
            current: queue.current,
            nr_running: queue.nr_running(),
            rt_waiting: queue.rt_queued(),
            fair_waiting: queue.fair_queued(),
            need_resched: queue.need_resched,
            idle_ns: queue.idle_ns,
            steal_ns: queue.steal_ns,
            context_switches: queue.context_switches,
            min_vruntime: queue.min_vruntime,
        })
    }

    /// The tasks waiting on `cpu` in the order this CPU would run them if nothing changed
    /// (real-time by priority then FIFO, then fair by virtual runtime; the `yield_to` buddy
    /// aside).
    pub fn run_order(&self, cpu: CpuId) -> Vec<TaskId> {
        let Some(queue) = self.cpus.get(cpu) else {
            return Vec::new();
        };
        queue
            .rt_waiting()
            .map(|(_, task)| task)
            .chain(queue.fair_waiting().map(|key| key.2))
            .collect()
    }

    /// Checks every internal invariant: each runnable task is queued exactly once, on the CPU
    /// it names, which its affinity allows; each running task is its CPU's current task;
    /// sleeping and dead tasks are in no queue; queue bookkeeping adds up. For tests and for a
    /// debug build of the kernel.
    pub fn check_consistency(&self) -> Result<(), ConsistencyError> {
        let fail = |what, task, cpu| Err(ConsistencyError { what, task, cpu });
        let mut seen: BTreeMap<TaskId, usize> = BTreeMap::new();
        for (cpu, queue) in self.cpus.iter().enumerate() {
            if !queue.online && queue.nr_running() > 0 {
                return fail("offline CPU has tasks", None, Some(cpu));
            }
            if !queue.rt_bookkeeping_consistent() {
                return fail(
                    "real-time bitmap or count disagrees with lists",
                    None,
                    Some(cpu),
                );
            }
            if let Some(current) = queue.current {
                let Some(record) = self.tasks.get(&current) else {
                    return fail("current task does not exist", Some(current), Some(cpu));
                };
                if record.cpu != cpu {
                    return fail("current task names another CPU", Some(current), Some(cpu));
                }
                if !matches!(
                    record.state,
                    TaskState::Running | TaskState::PreparingToSleep | TaskState::Dead
                ) {
                    return fail("current task is not running", Some(current), Some(cpu));
                }
                *seen.entry(current).or_default() += 1;
            }
            for (priority, task) in queue.rt_waiting() {
                let Some(record) = self.tasks.get(&task) else {
                    return fail(
                        "queued real-time task does not exist",
                        Some(task),
                        Some(cpu),
                    );
                };
                if record.class.rt_priority().map(|p| p.get()) != Some(priority) {
                    return fail(
                        "real-time task in the wrong priority list",
                        Some(task),
                        Some(cpu),
                    );
                }
                *seen.entry(task).or_default() += 1;
            }
            let mut fair_weight = 0u64;
            for (vruntime, sequence, task) in queue.fair_waiting() {
                let Some(record) = self.tasks.get(&task) else {
                    return fail("queued fair task does not exist", Some(task), Some(cpu));
                };
                let Some(weight) = record.class.fair_weight() else {
                    return fail("real-time task on the fair timeline", Some(task), Some(cpu));
                };
                if (record.vruntime, record.queue_sequence) != (vruntime, sequence) {
                    return fail("fair timeline key is stale", Some(task), Some(cpu));
                }
                fair_weight += u64::from(weight);
                *seen.entry(task).or_default() += 1;
            }
            if fair_weight != queue.fair_queued_weight() {
                return fail("fair queued weight does not add up", None, Some(cpu));
            }
            if let Some(buddy) = queue.next_buddy {
                let queued_here = self
                    .tasks
                    .get(&buddy)
                    .is_some_and(|r| r.state == TaskState::Runnable && r.cpu == cpu);
                if !queued_here {
                    return fail("yield_to buddy is not waiting here", Some(buddy), Some(cpu));
                }
            }
            for (_, task) in queue.rt_waiting() {
                if self.tasks.get(&task).is_some_and(|r| r.cpu != cpu) {
                    return fail("queued task names another CPU", Some(task), Some(cpu));
                }
            }
            for key in queue.fair_waiting() {
                if self.tasks.get(&key.2).is_some_and(|r| r.cpu != cpu) {
                    return fail("queued task names another CPU", Some(key.2), Some(cpu));
                }
            }
        }
        for (id, record) in &self.tasks {
            let places = seen.get(id).copied().unwrap_or(0);
            let queued = record.state == TaskState::Runnable;
            match record.state {
                TaskState::Running | TaskState::PreparingToSleep | TaskState::Runnable
                    if places != 1 =>
                {
                    return fail("task is not in exactly one place", Some(*id), None);
                }
                TaskState::Sleeping if places != 0 => {
                    return fail("sleeping task is queued or current", Some(*id), None);
                }
                TaskState::Dead if places > 1 => {
                    return fail("dead task is in a queue", Some(*id), None);
                }
                _ => {}
            }
            if queued && !record.affinity.contains(record.cpu) {
                return fail("task waits on a CPU its affinity forbids", Some(*id), None);
            }
            if queued && record.yield_pending {
                return fail("waiting task still has a pending yield", Some(*id), None);
            }
        }
        Ok(())
    }

    // ----- internals ---------------------------------------------------------------------------

    fn allocate_id(&mut self) -> TaskId {
        let id = TaskId::from_raw(self.next_task_id);
        self.next_task_id += 1;
        id
    }

    fn task(&self, task: TaskId) -> Result<&Task, SchedError> {
        self.tasks.get(&task).ok_or(SchedError::NoSuchTask(task))
    }

    fn task_mut(&mut self, task: TaskId) -> Result<&mut Task, SchedError> {
        self.tasks
            .get_mut(&task)
            .ok_or(SchedError::NoSuchTask(task))
    }

    fn online_queue(&self, cpu: CpuId) -> Result<&RunQueue, SchedError> {
        let queue = self.cpus.get(cpu).ok_or(SchedError::NoSuchCpu(cpu))?;
        if queue.online {
            Ok(queue)
        } else {
            Err(SchedError::CpuOffline(cpu))
        }
    }

    fn online_queue_mut(&mut self, cpu: CpuId) -> Result<&mut RunQueue, SchedError> {
        let queue = self.cpus.get_mut(cpu).ok_or(SchedError::NoSuchCpu(cpu))?;
        if queue.online {
            Ok(queue)
        } else {
            Err(SchedError::CpuOffline(cpu))
        }
    }

    /// The current task of `cpu`, which must be `Running` (not leaving).
    fn running_current(&self, cpu: CpuId, operation: &'static str) -> Result<TaskId, SchedError> {
        let current = self
            .cpus
            .get(cpu)
            .and_then(|queue| queue.current)
            .ok_or(SchedError::NoCurrentTask(cpu))?;
        let record = self.task(current)?;
        if record.state != TaskState::Running {
            return Err(SchedError::IllegalTransition {
                task: current,
                from: record.state,
                operation,
            });
        }
        Ok(current)
    }

    /// Charges the current task (or the idle time) of `cpu` up to `now`.
    fn update_current(&mut self, cpu: CpuId, now: u64) {
        let Some(queue) = self.cpus.get_mut(cpu) else {
            return;
        };
        let now = queue.advance_clock(now);
        match queue.current.and_then(|id| self.tasks.get_mut(&id)) {
            Some(record) => {
                let elapsed = now.saturating_sub(record.exec_start);
                let delta = elapsed - queue.take_steal(elapsed);
                record.exec_start = now;
                record.sum_exec_ns = record.sum_exec_ns.saturating_add(delta);
                let fair_vruntime = match record.class {
                    SchedClass::Fair(nice) => {
                        record.vruntime = record
                            .vruntime
                            .saturating_add(to_virtual(delta, nice.weight()));
                        Some(record.vruntime)
                    }
                    SchedClass::RealTime(_) => None,
                };
                queue.update_min_vruntime(fair_vruntime);
            }
            None => {
                if let Some(since) = queue.idle_since {
                    let elapsed = now.saturating_sub(since);
                    queue.idle_ns += elapsed - queue.take_steal(elapsed);
                    queue.idle_since = Some(now);
                }
            }
        }
    }

    /// The wall-clock slice a fair task of `weight` gets on `queue`, where it runs (so it is
    /// counted once even though the current task is not in the timeline).
    fn ideal_slice(&self, queue: &RunQueue, weight: u32) -> u64 {
        let tasks = queue.fair_queued() as u64 + 1;
        let total_weight = queue.fair_queued_weight() + u64::from(weight);
        self.config.slice_ns(weight, total_weight, tasks)
    }

    /// Wake-up placement: previous CPU if idle, else the lowest idle allowed CPU, else the
    /// allowed CPU with the fewest tasks (previous CPU first on a tie, then lowest number).
    fn select_cpu(&self, affinity: CpuSet, previous: CpuId) -> Option<CpuId> {
        let allowed = affinity.intersection(self.online_cpus());
        let idle = |cpu: CpuId| self.cpus.get(cpu).is_some_and(RunQueue::is_idle);
        if allowed.contains(previous) && idle(previous) {
            return Some(previous);
        }
        if let Some(cpu) = allowed.iter().find(|&cpu| idle(cpu)) {
            return Some(cpu);
        }
        allowed.iter().min_by_key(|&cpu| {
            let load = self.cpus.get(cpu).map_or(usize::MAX, RunQueue::nr_running);
            (load, cpu != previous, cpu)
        })
    }

    /// Queues `task` on `target` with the fair placement of `arrival`, then decides preemption.
    fn activate(
        &mut self,
        task: TaskId,
        target: CpuId,
        caller_cpu: CpuId,
        now: u64,
        arrival: Arrival,
    ) -> Placement {
        self.update_current(target, now);
        let Some(record) = self.tasks.get(&task) else {
            return Placement {
                cpu: target,
                preempt: false,
                send_resched_ipi: false,
            };
        };
        let from_min = self
            .cpus
            .get(record.cpu)
            .map_or(0, |queue| queue.min_vruntime);
        let Some(queue) = self.cpus.get_mut(target) else {
            return Placement {
                cpu: target,
                preempt: false,
                send_resched_ipi: false,
            };
        };
        let Some(record) = self.tasks.get_mut(&task) else {
            return Placement {
                cpu: target,
                preempt: false,
                send_resched_ipi: false,
            };
        };
        let moved = record.cpu != target;
        if moved && arrival != Arrival::New {
            record.vruntime = renormalize(record.vruntime, from_min, queue.min_vruntime);
            record.migrations += 1;
        }
        match arrival {
            Arrival::New => record.vruntime = queue.min_vruntime,
            Arrival::Woken => {
                let floor = queue
                    .min_vruntime
                    .saturating_sub(u128::from(self.config.sleeper_credit_ns));
                record.vruntime = record.vruntime.max(floor);
            }
            Arrival::Migrated => {}
        }
        enqueue_on(queue, record, target, false);
        let preempt = self.should_preempt(target, task);
        let send_resched_ipi = self.resched(target, preempt, caller_cpu);
        Placement {
            cpu: target,
            preempt,
            send_resched_ipi,
        }
    }

    /// Whether the just-queued `woken` should run before `cpu`'s current task.
    fn should_preempt(&self, cpu: CpuId, woken: TaskId) -> bool {
        let Some(queue) = self.cpus.get(cpu) else {
            return false;
        };
        let Some(current) = queue.current.and_then(|id| self.tasks.get(&id)) else {
            return true;
        };
        let Some(woken) = self.tasks.get(&woken) else {
            return false;
        };
        if current.state == TaskState::Dead {
            return true;
        }
        match (woken.class, current.class) {
            (SchedClass::RealTime(woken), SchedClass::RealTime(running)) => woken > running,
            (SchedClass::RealTime(_), SchedClass::Fair(_)) => true,
            (SchedClass::Fair(_), SchedClass::RealTime(_)) => false,
            (SchedClass::Fair(woken_nice), SchedClass::Fair(_)) => {
                let granularity =
                    to_virtual(self.config.wakeup_granularity_ns, woken_nice.weight());
                current.vruntime > woken.vruntime.saturating_add(granularity)
            }
        }
    }

    /// Sets `cpu`'s need-resched flag when `preempt`; returns whether an IPI must be sent.
    fn resched(&mut self, cpu: CpuId, preempt: bool, caller_cpu: CpuId) -> bool {
        let Some(queue) = self.cpus.get_mut(cpu) else {
            return false;
        };
        if !preempt {
            return false;
        }
        let already_asked = core::mem::replace(&mut queue.need_resched, true);
        cpu != caller_cpu && !already_asked
    }

    /// What [`Scheduler::tick`] decides, after accounting.
    fn wants_resched(&self, cpu: CpuId) -> bool {
        let Some(queue) = self.cpus.get(cpu) else {
            return false;
        };
        let Some(current) = queue.current.and_then(|id| self.tasks.get(&id)) else {
            return queue.nr_queued() > 0;
        };
        if current.state == TaskState::Dead || !current.affinity.contains(cpu) {
            return true;
        }
        match current.class {
            SchedClass::RealTime(priority) => queue
                .highest_rt_queued()
                .is_some_and(|highest| highest > priority.get()),
            SchedClass::Fair(nice) => {
                if queue.rt_queued() > 0 {
                    return true;
                }
                let Some(leftmost) = queue.leftmost_fair() else {
                    return false;
                };
                let ideal = self.ideal_slice(queue, nice.weight());
                let ran = current.sum_exec_ns - current.turn_start_exec_ns;
                if ran >= ideal {
                    return true;
                }
                if ran < self.config.min_granularity_ns {
                    return false;
                }
                current.vruntime > leftmost.0 && current.vruntime - leftmost.0 > u128::from(ideal)
            }
        }
    }

    /// Puts the task that was current on `cpu` back in its queue: a FIFO task in front of its
    /// equals (it keeps its turn) unless it yielded.
    fn requeue_previous(&mut self, cpu: CpuId, task: TaskId, yielded: bool) {
        let (Some(queue), Some(record)) = (self.cpus.get_mut(cpu), self.tasks.get_mut(&task))
        else {
            return;
        };
        let at_front = record.class.is_real_time() && !yielded;
        enqueue_on(queue, record, cpu, at_front);
    }

    /// Removes a waiting task from its queue (its state is left to the caller).
    fn unqueue(&mut self, task: TaskId) {
        let Some(record) = self.tasks.get(&task) else {
            return;
        };
        let Some(queue) = self.cpus.get_mut(record.cpu) else {
            return;
        };
        match record.class {
            SchedClass::RealTime(priority) => {
                queue.remove_rt(task, priority);
            }
            SchedClass::Fair(nice) => {
                let key: FairKey = (record.vruntime, record.queue_sequence, task);
                queue.remove_fair(key, nice.weight());
            }
        }
    }

    /// Takes the task `cpu` should run next out of its queue.
    fn take_next(&mut self, cpu: CpuId) -> Option<TaskId> {
        let queue = self.cpus.get_mut(cpu)?;
        if let Some(task) = queue.pop_rt() {
            return Some(task);
        }
        let leftmost = queue.leftmost_fair()?;
        let leftmost_weight = self.tasks.get(&leftmost.2)?.class.fair_weight()?;
        if let Some(buddy) = queue.next_buddy.take() {
            // The buddy runs first unless that would be unfair to the leftmost task: at most a
            // wake-up granularity ahead of it (Linux `wakeup_preempt_entity`).
            let buddy_key = self
                .tasks
                .get(&buddy)
                .filter(|record| record.state == TaskState::Runnable && record.cpu == cpu)
                .and_then(|record| {
                    let weight = record.class.fair_weight()?;
                    Some(((record.vruntime, record.queue_sequence, buddy), weight))
                });
            if let Some((key, weight)) = buddy_key {
                let limit = leftmost.0.saturating_add(to_virtual(
                    self.config.wakeup_granularity_ns,
                    leftmost_weight,
                ));
                if key.0 <= limit && queue.remove_fair(key, weight) {
                    return Some(buddy);
                }
            }
        }
        queue.remove_fair(leftmost, leftmost_weight);
        Some(leftmost.2)
    }

    /// Moves one waiting task that may run on `cpu` from the busiest other CPU to `cpu`.
    fn pull_task(&mut self, cpu: CpuId, now: u64) -> Option<TaskId> {
        let allowed_here = |task: TaskId| {
            self.tasks
                .get(&task)
                .is_some_and(|record| record.affinity.contains(cpu))
        };
        let mut best: Option<(usize, TaskId)> = None;
        for (source, queue) in self.cpus.iter().enumerate() {
            if source == cpu || !queue.online || queue.nr_running() < 2 {
                continue;
            }
            if best.is_some_and(|(load, _)| load >= queue.nr_running()) {
                continue;
            }
            // Real-time first (the highest priority waits longest for nothing); else the fair
            // task furthest back, which would wait longest where it is.
            let candidate = queue
                .rt_waiting()
                .map(|(_, task)| task)
                .find(|&task| allowed_here(task))
                .or_else(|| {
                    queue
                        .fair_waiting()
                        .rev()
                        .map(|key| key.2)
                        .find(|&task| allowed_here(task))
                });
            if let Some(task) = candidate {
                best = Some((queue.nr_running(), task));
            }
        }
        let (_, task) = best?;
        self.unqueue(task);
        self.activate(task, cpu, cpu, now, Arrival::Migrated);
        Some(task)
    }
}

/// Queues a task (already off every queue) on `queue`, which belongs to `cpu`.
fn enqueue_on(queue: &mut RunQueue, record: &mut Task, cpu: CpuId, at_front: bool) {
    record.state = TaskState::Runnable;
    record.cpu = cpu;
    match record.class {
        SchedClass::RealTime(priority) => queue.push_rt(record.id, priority, at_front),
        SchedClass::Fair(nice) => {
            record.queue_sequence = queue.next_sequence();
            queue.insert_fair(
                (record.vruntime, record.queue_sequence, record.id),
                nice.weight(),
            );
        }
    }
}

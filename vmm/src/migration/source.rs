//! The sending side of a live migration, on a thread of its own beside the running guest.

use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::vstate::memory::GuestMemoryMmap;
use lull_migration_stream::{Encoder, Limits, SourceInfo, StreamError, StreamKind};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::pages::PageSet;
use super::{
    connect, Connection, MigrationControl, MigrationState, MigrationStatus, MigrationSummary,
    MigrationUrl, Reply,
};
use crate::bench::clock_monotonic_ns;
use crate::devices::lock;
use crate::machine::{Machine, MachineError, RunState};
use crate::snapshot::SnapshotState;
use crate::vstate::dirty_log::DirtyTracker;
use crate::vstate::vcpu::VmEvent;
use crate::vstate::vm::VmError;

const PAGE_SIZE: u64 = 4096;
/// Pages per `MemoryPages` frame: the stream's limit (1 MiB of data at most).
const PAGES_PER_FRAME: u64 = 256;
/// Encoded bytes gathered before one write to the socket.
const WRITE_CHUNK: usize = 1 << 20;
/// Default downtime budget, and the default limit of pre-copy rounds.
pub const DEFAULT_DOWNTIME_MS: u64 = 5;
pub const DEFAULT_MAX_ROUNDS: u32 = 30;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A destination that takes no data for this long is given up on.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the destination may take, after the last byte, to run the guest and say so.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a finished migration waits for `lull-vmm migrate` to read the outcome before the
/// source VMM exits.
const OUTCOME_GRACE: Duration = Duration::from_secs(3);

/// What `PUT /vm/migrate` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateOptions {
    pub url: MigrationUrl,
    /// Stop-and-copy once the dirty pages left would take at most this long to send.
    pub downtime_ms: u64,
    /// Pre-copy rounds (round 0 included) after which stop-and-copy happens regardless.
    pub max_rounds: u32,
    /// Post-copy: `Some(0)` switches at once (no pre-copy: every page the guest touched goes
    /// after the switch); `Some(n)` switches after `n` pre-copy rounds that did not converge,
    /// instead of a forced stop-and-copy; `None`, pre-copy only.
    pub postcopy: Option<u32>,
}

/// Test and benchmark knob: the post-copy background push is limited to this many pages per
/// second (pages asked for by the destination are sent at once), to model a slow link.
pub const POSTCOPY_RATE_VARIABLE: &str = "LULL_VMM_POSTCOPY_PAGES_PER_SECOND";
/// Pages per post-copy background frame: small, so a page request waits little behind it.
const POSTCOPY_CHUNK_PAGES: u64 = 64;
/// How long a post-copy source that switches at once waits for the destination's VM set-up.
const PREPARED_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the source waits, after the switch, for the destination to run the guest before
/// it starts the background push anyway.
const POSTCOPY_QUIET_START: Duration = Duration::from_millis(50);
/// How long the destination may take, after the last page, to say it has them all.
const POSTCOPY_DONE_TIMEOUT: Duration = Duration::from_secs(60);

/// The destination's reply, as the thread that reads it passes it on.
type Replies = Receiver<io::Result<Option<Reply>>>;

/// What the destination's page-request stream says (post-copy).
#[derive(Debug)]
enum Request {
    Page(u64),
    /// It has every page: its page-request stream ended.
    Done,
    Lost(String),
}

/// Why a migration could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot migrate: the VM is {0} (resume it first)")]
    NotRunning(RunState),
    #[error("a migration is already under way or done (see GET /vm/migration)")]
    Busy,
    #[error("cannot start the migration thread: {0}")]
    Thread(io::Error),
}

/// Why a migration failed (the guest runs on here).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect to {url}: {source} (is `lull-vmm receive --listen {url}` running?)")]
    Connect { url: String, source: io::Error },
    #[error("sending to the destination failed: {0}")]
    Send(io::Error),
    #[error("the destination refused the migration: {0}")]
    Refused(String),
    #[error("the destination did not confirm that the guest runs there: {0}")]
    NoConfirmation(String),
    #[error("migration stream: {0}")]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("dirty logging: {0}")]
    DirtyLog(#[from] VmError),
    #[error("reading guest memory: {0}")]
    Memory(String),
    #[error("cannot encode the {what} state: {source}")]
    Encode {
        what: &'static str,
        source: postcard::Error,
    },
    #[error("cancelled")]
    Cancelled,
    #[error("the VM stopped running before the stop-and-copy phase (it is {0})")]
    NotRunning(RunState),
    #[error("lost the destination during post-copy: {0}")]
    PostcopyLost(String),
}

/// Starts migrating `machine` on a new thread; progress is in `machine.migration()`.
pub fn start(machine: &Arc<Mutex<Machine>>, options: MigrateOptions) -> Result<(), StartError> {
    let control = {
        let machine = lock(machine);
        if machine.state() != RunState::Running {
            return Err(StartError::NotRunning(machine.state()));
        }
        machine.migration()
    };
    let fresh = MigrationStatus {
        state: MigrationState::Connecting,
        url: Some(options.url.to_string()),
        downtime_budget_ms: options.downtime_ms,
        max_rounds: options.max_rounds,
        ..Default::default()
    };
    if !control.begin(fresh) {
        return Err(StartError::Busy);
    }
    let machine = machine.clone();
    let thread_control = control.clone();
    std::thread::Builder::new()
        .name("migration".into())
        .spawn(move || run(&machine, &thread_control, &options))
        .map(drop)
        .map_err(|error| {
            control.update(|status| {
                status.state = MigrationState::Failed;
                status.error = Some(format!("cannot start the migration thread: {error}"));
            });
            StartError::Thread(error)
        })
}

/// The migration thread: migrate, publish the outcome, and end this VMM on success.
fn run(machine: &Arc<Mutex<Machine>>, control: &MigrationControl, options: &MigrateOptions) {
    let begin = Instant::now();
    match migrate(machine, control, options, begin) {
        Ok(summary) => {
            let line = summary.line();
            control.update(|status| {
                status.state = MigrationState::Completed;
                status.elapsed_ms = begin.elapsed().as_secs_f64() * 1e3;
                status.bytes_left = 0;
                status.summary = Some(summary);
            });
            eprintln!("\r\nlull-vmm: {line}; the guest runs on {}", options.url);
            let grace = Instant::now() + OUTCOME_GRACE;
            while !control.outcome_was_read() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(5));
            }
            // The outcome is marked read as the API builds its answer, not once the answer
            // is written: give the API thread that moment before the process ends.
            std::thread::sleep(Duration::from_millis(100));
            let _ = lock(machine).event_sender().send(VmEvent::MigratedAway);
        }
        Err(error) => {
            control.set_abort(None);
            // A cancel shuts the socket down: the write it interrupts fails, and that is the
            // cancel, not a failure.
            let cancelled = matches!(error, MigrateError::Cancelled) || control.cancel_requested();
            let error = if cancelled {
                MigrateError::Cancelled
            } else {
                error
            };
            control.update(|status| {
                status.state = if cancelled {
                    MigrationState::Cancelled
                } else {
                    MigrationState::Failed
                };
                status.elapsed_ms = begin.elapsed().as_secs_f64() * 1e3;
                status.error = Some(error.to_string());
            });
            if matches!(error, MigrateError::PostcopyLost(_)) {
                // The guest ran on the destination: its state there is gone, and this copy is
                // out of date. Nothing can run it now; say so and stop.
                let reason = format!(
                    "migration to {} failed in post-copy: {error}; the guest is lost (it ran \
                     on the destination, whose state is gone; this copy is stale), stopping",
                    options.url
                );
                eprintln!("\r\nlull-vmm: {reason}");
                let _ = lock(machine).event_sender().send(VmEvent::Fatal(reason));
                return;
            }
            eprintln!(
                "\r\nlull-vmm: migration to {} {}; the guest keeps running here",
                options.url,
                if cancelled {
                    "cancelled".to_string()
                } else {
                    format!("failed: {error}")
                }
            );
        }
    }
}

/// Resumes the guest here unless disarmed (the migration succeeded).
struct ResumeOnFailure<'a> {
    machine: &'a Mutex<Machine>,
    armed: bool,
}

impl Drop for ResumeOnFailure<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut machine = lock(self.machine);
            if machine.state() == RunState::Paused {
                if let Err(error) = machine.resume() {
                    eprintln!(
                        "\r\nlull-vmm: cannot resume the guest after the failed migration: {error}"
                    );
                }
            }
        }
    }
}

/// Whether the dirty pages left fit the budget at the measured rate; returns the expected
/// time to send them, in ms.
pub fn expected_downtime_ms(dirty_pages: u64, bytes_per_second: f64) -> f64 {
    if dirty_pages == 0 {
        return 0.0;
    }
    if !bytes_per_second.is_finite() || bytes_per_second <= 0.0 {
        return f64::INFINITY;
    }
    (dirty_pages * PAGE_SIZE) as f64 / bytes_per_second * 1e3
}

/// What to do after a pre-copy round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    AnotherRound,
    StopAndCopy { forced: bool },
}

/// The convergence rule: stop and copy when the rest fits the budget, or when `rounds_done`
/// pre-copy rounds reached the limit.
pub fn next_step(expected_ms: f64, budget_ms: u64, rounds_done: u32, max_rounds: u32) -> Next {
    if expected_ms <= budget_ms as f64 {
        Next::StopAndCopy { forced: false }
    } else if rounds_done >= max_rounds {
        Next::StopAndCopy { forced: true }
    } else {
        Next::AnotherRound
    }
}

fn migrate(
    machine: &Arc<Mutex<Machine>>,
    control: &MigrationControl,
    options: &MigrateOptions,
    begin: Instant,
) -> Result<MigrationSummary, MigrateError> {
    let connection =
        connect(&options.url, CONNECT_TIMEOUT).map_err(|source| MigrateError::Connect {
            url: options.url.to_string(),
            source,
        })?;
    let _ = connection.set_write_timeout(Some(WRITE_TIMEOUT));
    let (replies, requests, prepared) = if options.postcopy.is_some() {
        let (replies, requests, prepared) =
            spawn_postcopy_reader(&connection).map_err(MigrateError::Send)?;
        (replies, Some(requests), Some(prepared))
    } else {
        (
            spawn_reply_reader(&connection).map_err(MigrateError::Send)?,
            None,
            None,
        )
    };
    control.set_abort(connection.try_clone().ok());
    if control.cancel_requested() {
        return Err(MigrateError::Cancelled);
    }
    let mut resume = ResumeOnFailure {
        machine,
        armed: true,
    };
    let (mut log, touched, mmap, vcpus) = {
        let machine = lock(machine);
        if machine.state() != RunState::Running {
            return Err(MigrateError::NotRunning(machine.state()));
        }
        let (vm, mmap) = machine.migration_handles();
        // Logging first (KVM's log, and the devices' marks), then the pagemap: a page written
        // in between is in the log.
        let log = DirtyTracker::start(vm, &mmap)?;
        let touched = machine.touched_pages()?;
        (log, touched, mmap, machine.info().vcpus)
    };
    let region_pages = log.slot_pages();
    let info = SourceInfo {
        kind: StreamKind::Migration,
        page_size: PAGE_SIZE as u32,
        vcpu_count: vcpus as u32,
        memory_bytes: region_pages.iter().sum::<u64>() * PAGE_SIZE,
    };
    let mut sender = Sender::start(connection, replies, info, mmap, region_pages.clone())?;
    control.update(|status| status.state = MigrationState::Precopy);

    let first = PageSet::new(touched, &region_pages);
    control.update(|status| status.bytes_left = first.count() * PAGE_SIZE);
    let at_once = options.postcopy == Some(0);
    if let (true, Some(prepared)) = (at_once, &prepared) {
        // The destination creates the VM on the header; pausing before it has would make
        // that set-up downtime. A destination that never says so is given a second.
        let _ = prepared.recv_timeout(PREPARED_TIMEOUT);
    }
    let mut rounds_done = 0u32;
    let mut forced = false;
    let mut first = Some(first);
    if !at_once {
        let mut last_clear = Instant::now();
        if let Some(first) = first.take() {
            sender.send_round(0, &first, Some(control))?;
        }
        rounds_done = 1;
        forced = loop {
            let dirty = PageSet::new(log.peek()?, &region_pages);
            let dirty_pages = dirty.count();
            let rate = sender.rate();
            let expected = expected_downtime_ms(dirty_pages, rate);
            let dirty_rate = dirty_pages as f64 / last_clear.elapsed().as_secs_f64().max(1e-6);
            control.update(|status| {
                status.bytes_left = dirty_pages * PAGE_SIZE;
                status.transfer_bytes_per_second = if rate.is_finite() { rate } else { 0.0 };
                status.expected_downtime_ms = if expected.is_finite() { expected } else { -1.0 };
                status.dirty_pages_per_second = dirty_rate;
                status.elapsed_ms = begin.elapsed().as_secs_f64() * 1e3;
            });
            if control.cancel_requested() {
                return Err(sender.cancel("cancelled on the source"));
            }
            sender.check_reply()?;
            match next_step(
                expected,
                options.downtime_ms,
                rounds_done,
                options.max_rounds,
            ) {
                Next::StopAndCopy { forced } => break forced,
                Next::AnotherRound => {}
            }
            // Re-arm exactly these pages, then read them: a write after this is logged again.
            log.clear(dirty.bitmaps())?;
            last_clear = Instant::now();
            control.update(|status| status.round = rounds_done);
            sender.send_round(rounds_done, &dirty, Some(control))?;
            rounds_done += 1;
        };
    }
    let postcopy = at_once || (forced && options.postcopy.is_some());

    // Stop-and-copy: no cancel from here (the state may already be on its way).
    if !control.enter_stop_and_copy(rounds_done) {
        return Err(sender.cancel("cancelled on the source"));
    }
    let mut guard = lock(machine);
    let paused_at = Instant::now();
    guard.pause()?;
    let paused = Instant::now();
    // Post-copy at once: the pages touched when the log started, and every page written
    // since (a page first written in between is in the log only: without it the destination
    // would give the guest a zero page for it).
    let last = match first {
        Some(first) => first.union(&PageSet::new(log.peek()?, &region_pages)),
        None => PageSet::new(log.peek()?, &region_pages),
    };
    let state = guard.save_state()?;
    let saved = Instant::now();
    // The devices were quiesced by the pause (no request half-served) and their state is
    // saved: hand their host side over before the destination, which opens the same disks,
    // TAPs and gpio sockets, gets the state. A failure from here resumes the guest here, and
    // the resume takes them back.
    guard.release_host_devices()?;
    drop(guard);
    let released = Instant::now();
    if postcopy {
        let requests = requests.ok_or_else(|| {
            MigrateError::PostcopyLost("no page-request reader (internal error)".into())
        })?;
        return postcopy_phase(PostcopyPhase {
            sender,
            requests,
            control,
            resume,
            log,
            state: &state,
            pending: &last,
            round: rounds_done,
            after_precopy: !at_once,
            begin,
            paused_at,
            paused,
            saved,
            released,
        });
    }
    let stop_and_copy_pages = last.count();
    sender.send_round(rounds_done, &last, None)?;
    let state_bytes = sender.send_state(&state, None)?;
    let sent = Instant::now();
    control.update(|status| {
        status.state = MigrationState::WaitingForDestination;
        status.bytes_sent = sender.wire_bytes;
        status.pages_sent = sender.pages_sent;
        status.zero_pages_sent = sender.zero_pages;
        status.bytes_left = 0;
    });
    let running_ns = sender.confirmation()?;
    resume.armed = false;
    let paused_ns = clock_monotonic_ns(paused_at);
    drop(log);
    Ok(MigrationSummary {
        total_ms: begin.elapsed().as_secs_f64() * 1e3,
        bytes_sent: sender.wire_bytes,
        pages_sent: sender.pages_sent,
        zero_pages_sent: sender.zero_pages,
        rounds: rounds_done + 1,
        stop_and_copy_pages,
        state_bytes,
        downtime_ms: running_ns.saturating_sub(paused_ns) as f64 / 1e6,
        forced_by_round_limit: forced,
        source_phases_us: [
            ("pause", paused - paused_at),
            ("dirty_log_and_save_state", saved - paused),
            ("release_host_devices", released - saved),
            ("send_last_pages_and_state", sent - released),
        ]
        .into_iter()
        .map(|(name, took)| (name.to_string(), took.as_secs_f64() * 1e6))
        .collect(),
        source_paused_monotonic_ns: paused_ns,
        destination_running_monotonic_ns: running_ns,
        postcopy: None,
    })
}

/// Everything the post-copy phase takes over from [`migrate`].
struct PostcopyPhase<'a> {
    sender: Sender,
    requests: Receiver<Request>,
    control: &'a MigrationControl,
    resume: ResumeOnFailure<'a>,
    log: DirtyTracker,
    state: &'a SnapshotState,
    /// The pages the destination does not have (current versions).
    pending: &'a PageSet,
    /// The round number post-copy pages carry.
    round: u32,
    after_precopy: bool,
    begin: Instant,
    paused_at: Instant,
    paused: Instant,
    saved: Instant,
    released: Instant,
}

/// Post-copy: the state, the list of pages still to come and `PostcopySwitch`; once the
/// destination runs the guest, every pending page, those it asks for first; `End`; then the
/// destination's word that it has them all.
fn postcopy_phase(phase: PostcopyPhase<'_>) -> Result<MigrationSummary, MigrateError> {
    let PostcopyPhase {
        mut sender,
        requests,
        control,
        mut resume,
        log,
        state,
        pending,
        round,
        after_precopy,
        begin,
        paused_at,
        paused,
        saved,
        released,
    } = phase;
    // The pages KVM itself writes for the guest as its state is restored or its vCPUs first
    // enter (kvmclock, wall clock, steal time, async-PF and PV-EOI areas) go before the
    // switch: the destination must not wait on the source before its vCPUs run.
    let mut round = round;
    let early: Vec<u64> = sender
        .paravirt_pages(state)
        .into_iter()
        .filter(|&page| pending.contains_stream_page(page))
        .collect();
    let pending = if early.is_empty() {
        pending.clone()
    } else {
        for &page in &early {
            sender.send_stream_pages(round, page, 1)?;
        }
        sender
            .encoder
            .dirty_round_end(round, early.len() as u64, 0, &mut sender.out)?;
        round += 1;
        pending.without_stream_pages(&early)
    };
    let pending = &pending;
    let pending_pages = pending.count();
    let state_bytes = sender.send_state(state, Some(pending))?;
    let switched = Instant::now();
    control.update(|status| {
        status.state = MigrationState::Postcopy;
        status.bytes_left = pending_pages * PAGE_SIZE;
    });
    let rate = std::env::var(POSTCOPY_RATE_VARIABLE)
        .ok()
        .and_then(|value| value.parse::<f64>().ok())
        .filter(|rate| *rate > 0.0);
    // Let the destination start its vCPUs before the background push competes with it for
    // the host's cores; push anyway after a while (it might need a page to get there).
    let mut running_ns = None;
    match sender.replies.recv_timeout(POSTCOPY_QUIET_START) {
        Ok(Ok(Some(Reply::Prepared))) => {}
        Ok(Ok(Some(Reply::Running {
            vcpus_running_monotonic_ns,
        }))) => {
            running_ns = Some(vcpus_running_monotonic_ns);
            resume.armed = false;
        }
        Ok(Ok(Some(Reply::Failed { error }))) => return Err(MigrateError::Refused(error)),
        Ok(Ok(None)) | Err(RecvTimeoutError::Disconnected) => {
            resume.armed = false;
            return Err(MigrateError::PostcopyLost(
                "it closed the connection without an answer".into(),
            ));
        }
        Ok(Err(error)) => {
            resume.armed = false;
            return Err(MigrateError::PostcopyLost(error.to_string()));
        }
        Err(RecvTimeoutError::Timeout) => {}
    }
    // Dirty logging off only now: it rewrites the memory slot (~0.4 ms of KVM work for 1 GiB
    // here), which right after the switch competed with the destination for the host's CPUs
    // while the guest ran nowhere.
    drop(log);
    let served = sender.serve_postcopy(round, pending, &requests, rate, control, &mut running_ns);
    if running_ns.is_some() {
        // The guest runs there now: from here on there is no way back.
        resume.armed = false;
    }
    let requested = match served {
        Ok(requested) => requested,
        // It said no before running anything: the guest is still whole here.
        Err(error @ MigrateError::Refused(_)) if running_ns.is_none() => return Err(error),
        Err(error) => {
            resume.armed = false;
            return Err(match error {
                MigrateError::PostcopyLost(_) => error,
                other => MigrateError::PostcopyLost(other.to_string()),
            });
        }
    };
    let running_ns = match running_ns {
        Some(running_ns) => running_ns,
        None => match sender.confirmation() {
            Ok(running_ns) => {
                resume.armed = false;
                running_ns
            }
            Err(error @ MigrateError::Refused(_)) => return Err(error),
            Err(error) => {
                resume.armed = false;
                return Err(MigrateError::PostcopyLost(error.to_string()));
            }
        },
    };
    sender
        .encoder
        .end(&mut sender.out)
        .map_err(|error| MigrateError::PostcopyLost(error.to_string()))?;
    sender
        .flush()
        .map_err(|error| MigrateError::PostcopyLost(error.to_string()))?;
    loop {
        match requests.recv_timeout(POSTCOPY_DONE_TIMEOUT) {
            Ok(Request::Page(_)) => continue, // asked before it saw the page arrive
            Ok(Request::Done) => break,
            Ok(Request::Lost(reason)) => return Err(MigrateError::PostcopyLost(reason)),
            Err(_) => {
                return Err(MigrateError::PostcopyLost(
                    "it did not confirm that every page arrived".into(),
                ))
            }
        }
    }
    let all_pages = switched.elapsed();
    let paused_ns = clock_monotonic_ns(paused_at);
    Ok(MigrationSummary {
        total_ms: begin.elapsed().as_secs_f64() * 1e3,
        bytes_sent: sender.wire_bytes,
        pages_sent: sender.pages_sent,
        zero_pages_sent: sender.zero_pages,
        rounds: round,
        stop_and_copy_pages: early.len() as u64,
        state_bytes,
        downtime_ms: running_ns.saturating_sub(paused_ns) as f64 / 1e6,
        forced_by_round_limit: false,
        source_phases_us: [
            ("pause", paused - paused_at),
            ("dirty_log_and_save_state", saved - paused),
            ("release_host_devices", released - saved),
            ("send_state_and_switch", switched - released),
        ]
        .into_iter()
        .map(|(name, took)| (name.to_string(), took.as_secs_f64() * 1e6))
        .collect(),
        source_paused_monotonic_ns: paused_ns,
        destination_running_monotonic_ns: running_ns,
        postcopy: Some(super::PostcopySummary {
            pages: pending_pages,
            requested_pages: requested,
            after_precopy,
            all_pages_ms: all_pages.as_secs_f64() * 1e3,
        }),
    })
}

/// Reads the destination's reply line and then (post-copy) its page-request stream, on its
/// own thread. The line is read a byte at a time: what follows it is the stream's.
fn spawn_postcopy_reader(
    connection: &Connection,
) -> io::Result<(Replies, Receiver<Request>, Receiver<()>)> {
    use std::io::Read;
    let mut reader = connection.try_clone()?;
    let (reply_sender, replies) = mpsc::channel();
    let (request_sender, requests) = mpsc::channel();
    let (prepared_sender, prepared) = mpsc::channel();
    std::thread::Builder::new()
        .name("migration-requests".into())
        .spawn(move || {
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            let reply = loop {
                match reader.read(&mut byte) {
                    Ok(0) if line.is_empty() => break Ok(None),
                    Ok(0) => {
                        break Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the destination's reply was cut short",
                        ))
                    }
                    Ok(_) if byte[0] == b'\n' => match Reply::parse(&line) {
                        Ok(Reply::Prepared) => {
                            let _ = prepared_sender.send(());
                            line.clear();
                        }
                        other => break other.map(Some),
                    },
                    Ok(_) if line.len() < 64 * 1024 => line.push(byte[0]),
                    Ok(_) => {
                        break Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the destination's reply is too long",
                        ))
                    }
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => break Err(error),
                }
            };
            let running = matches!(reply, Ok(Some(Reply::Running { .. })));
            let _ = reply_sender.send(reply);
            if !running {
                return;
            }
            let _ = reader.set_read_timeout(None);
            let mut stream = lull_migration_stream::StreamReader::new(
                reader,
                StreamKind::PageRequests,
                Limits::default(),
            );
            loop {
                let event = match stream.next_event() {
                    Ok(Some(lull_migration_stream::Event::Frame(frame))) => frame,
                    Ok(Some(lull_migration_stream::Event::Header(_))) => continue,
                    Ok(None) => {
                        let _ = request_sender
                            .send(Request::Lost("its page-request stream ended early".into()));
                        return;
                    }
                    Err(error) => {
                        let _ = request_sender.send(Request::Lost(error.to_string()));
                        return;
                    }
                };
                let message = match event {
                    lull_migration_stream::Frame::PageRequest { gfn } => Request::Page(gfn),
                    lull_migration_stream::Frame::End { .. } => Request::Done,
                    lull_migration_stream::Frame::Cancel { reason } => Request::Lost(reason),
                    other => Request::Lost(format!(
                        "unexpected {:?} in its page-request stream",
                        other.frame_type()
                    )),
                };
                let last = !matches!(message, Request::Page(_));
                if request_sender.send(message).is_err() || last {
                    return;
                }
            }
        })?;
    Ok((replies, requests, prepared))
}

/// Reads the destination's one reply on its own thread, so a refusal in the middle of the
/// stream is seen between two frames rather than when a write finally fails.
fn spawn_reply_reader(connection: &Connection) -> io::Result<Receiver<io::Result<Option<Reply>>>> {
    let mut reader = io::BufReader::new(connection.try_clone()?);
    let (sender, receiver) = mpsc::channel();
    std::thread::Builder::new()
        .name("migration-reply".into())
        .spawn(move || loop {
            match Reply::read_line(&mut reader) {
                Ok(Some(Reply::Prepared)) => continue,
                other => {
                    let _ = sender.send(other);
                    return;
                }
            }
        })?;
    Ok(receiver)
}

/// The stream being written: encoder, socket, counters and the measured rate.
struct Sender {
    connection: Connection,
    replies: Receiver<io::Result<Option<Reply>>>,
    encoder: Encoder,
    out: Vec<u8>,
    mmap: GuestMemoryMmap,
    region_bases: Vec<u64>,
    /// Pages per region (stream pages are the regions' pages end to end).
    region_pages: Vec<u64>,
    bounce: Vec<u8>,
    wire_bytes: u64,
    pages_sent: u64,
    zero_pages: u64,
    /// Time spent reading, encoding and writing pages, for the rate.
    sending: Duration,
    page_bytes: u64,
}

impl Sender {
    fn start(
        connection: Connection,
        replies: Receiver<io::Result<Option<Reply>>>,
        info: SourceInfo,
        mmap: GuestMemoryMmap,
        region_pages: Vec<u64>,
    ) -> Result<Self, MigrateError> {
        let mut out = Vec::with_capacity(WRITE_CHUNK + (2 << 20));
        let encoder = Encoder::start(info, Limits::default(), &mut out)?;
        let region_bases = mmap.iter().map(|region| region.start_addr().0).collect();
        let mut sender = Self {
            connection,
            replies,
            encoder,
            out,
            mmap,
            region_bases,
            region_pages,
            bounce: vec![0; (PAGES_PER_FRAME * PAGE_SIZE) as usize],
            wire_bytes: 0,
            pages_sent: 0,
            zero_pages: 0,
            sending: Duration::ZERO,
            page_bytes: 0,
        };
        sender.flush()?;
        Ok(sender)
    }

    /// Bytes per second over every round so far (infinite before anything was measured).
    fn rate(&self) -> f64 {
        if self.sending.is_zero() {
            return f64::INFINITY;
        }
        self.page_bytes as f64 / self.sending.as_secs_f64()
    }

    fn flush(&mut self) -> Result<(), MigrateError> {
        if self.out.is_empty() {
            return Ok(());
        }
        if let Err(error) = self.connection.write_all(&self.out) {
            // A destination that refused says why before it closes; prefer its reason.
            return Err(match self.replies.recv_timeout(Duration::from_secs(2)) {
                Ok(Ok(Some(Reply::Failed { error }))) => MigrateError::Refused(error),
                _ => MigrateError::Send(error),
            });
        }
        self.wire_bytes += self.out.len() as u64;
        self.out.clear();
        Ok(())
    }

    /// Fails if the destination has already answered (mid-stream, only a refusal can come).
    fn check_reply(&self) -> Result<(), MigrateError> {
        match self.replies.try_recv() {
            Err(TryRecvError::Empty) | Ok(Ok(Some(Reply::Prepared))) => Ok(()),
            Ok(Ok(Some(Reply::Failed { error }))) => Err(MigrateError::Refused(error)),
            Ok(Ok(Some(Reply::Running { .. }))) => Err(MigrateError::Refused(
                "it says the guest runs before the stream ended".into(),
            )),
            Ok(Ok(None)) | Err(TryRecvError::Disconnected) => {
                Err(MigrateError::Send(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the destination closed the connection",
                )))
            }
            Ok(Err(error)) => Err(MigrateError::Send(error)),
        }
    }

    /// Sends `pages` as round `round`, then its `DirtyRoundEnd`. With `control`, progress is
    /// published and a cancel request honoured between frames.
    fn send_round(
        &mut self,
        round: u32,
        pages: &PageSet,
        control: Option<&MigrationControl>,
    ) -> Result<(), MigrateError> {
        let started = Instant::now();
        let mut round_pages = 0u64;
        let total = pages.count();
        for run in pages.runs(PAGES_PER_FRAME) {
            if let Some(control) = control {
                if control.cancel_requested() {
                    return Err(self.cancel("cancelled on the source"));
                }
            }
            let length = (run.count * PAGE_SIZE) as usize;
            let address = GuestAddress(self.region_bases[run.region] + run.first * PAGE_SIZE);
            let buffer = &mut self.bounce[..length];
            self.mmap
                .read_slice(buffer, address)
                .map_err(|error| MigrateError::Memory(error.to_string()))?;
            let before = self.out.len();
            let stream_page = pages.region_start(run.region) + run.first;
            self.encoder
                .memory_pages(round, stream_page, buffer, &mut self.out)?;
            // Frame = 9 bytes of framing + 16 of run header + a marker per page + data pages.
            let frame = (self.out.len() - before) as u64;
            let data_pages = (frame - 9 - 16 - run.count) / PAGE_SIZE;
            self.zero_pages += run.count - data_pages;
            self.pages_sent += run.count;
            self.page_bytes += frame;
            round_pages += run.count;
            if self.out.len() >= WRITE_CHUNK {
                self.flush()?;
                if let Some(control) = control {
                    self.check_reply()?;
                    self.publish(control, round, total - round_pages);
                }
            }
        }
        self.encoder
            .dirty_round_end(round, round_pages, 0, &mut self.out)?;
        self.flush()?;
        self.sending += started.elapsed();
        if let Some(control) = control {
            self.publish(control, round, 0);
        }
        Ok(())
    }

    fn publish(&self, control: &MigrationControl, round: u32, pages_left: u64) {
        control.update(|status| {
            status.round = round;
            status.bytes_sent = self.wire_bytes;
            status.pages_sent = self.pages_sent;
            status.zero_pages_sent = self.zero_pages;
            status.bytes_left = pages_left * PAGE_SIZE;
        });
    }

    /// Device and vCPU state, then `End`; or, for post-copy, the list of `pending` pages (as a
    /// device state, `postcopy_pages`: runs of stream pages) and `PostcopySwitch`. Returns the
    /// state's encoded size.
    fn send_state(
        &mut self,
        state: &SnapshotState,
        pending: Option<&PageSet>,
    ) -> Result<u64, MigrateError> {
        fn encode<T: serde::Serialize>(
            what: &'static str,
            value: &T,
        ) -> Result<Vec<u8>, MigrateError> {
            postcard::to_allocvec(value).map_err(|source| MigrateError::Encode { what, source })
        }
        let before = self.wire_bytes + self.out.len() as u64;
        let devices = [
            ("memory", encode("memory", &state.memory)?),
            ("vm", encode("vm", &state.vm)?),
            ("serial", encode("serial", &state.serial)?),
            ("acpi_pm", encode("acpi_pm", &state.acpi_pm)?),
            // Stream version 2: the virtio-mmio devices (their disks, TAPs and gpio sockets
            // are reopened by name on the destination, as on a restore).
            ("virtio", encode("virtio", &state.virtio)?),
        ];
        for (name, bytes) in &devices {
            self.encoder.device_state(name, bytes, &mut self.out)?;
        }
        if let Some(pending) = pending {
            let runs: Vec<(u64, u64)> = pending
                .runs(u64::MAX)
                .iter()
                .map(|run| (pending.region_start(run.region) + run.first, run.count))
                .collect();
            let bytes = encode("postcopy_pages", &runs)?;
            self.encoder
                .device_state("postcopy_pages", &bytes, &mut self.out)?;
        }
        for (index, vcpu) in state.vcpus.iter().enumerate() {
            let bytes = encode("vcpu", vcpu)?;
            self.encoder
                .vcpu_state(index as u32, &bytes, &mut self.out)?;
        }
        match pending {
            None => self.encoder.end(&mut self.out)?,
            Some(pending) => self
                .encoder
                .postcopy_switch(pending.count(), &mut self.out)?,
        }
        let state_bytes = self.wire_bytes + self.out.len() as u64 - before;
        self.flush()?;
        Ok(state_bytes)
    }

    /// The stream pages of the guest's paravirt areas that KVM writes (see `postcopy_phase`).
    fn paravirt_pages(&self, state: &SnapshotState) -> Vec<u64> {
        use crate::vstate::vcpu::{
            MSR_KVM_ASYNC_PF_EN, MSR_KVM_PV_EOI_EN, MSR_KVM_STEAL_TIME, MSR_KVM_SYSTEM_TIME,
            MSR_KVM_SYSTEM_TIME_NEW, MSR_KVM_WALL_CLOCK, MSR_KVM_WALL_CLOCK_NEW,
        };
        let mut pages = Vec::new();
        for vcpu in &state.vcpus {
            for msr in &vcpu.msrs {
                let address = match msr.index {
                    MSR_KVM_SYSTEM_TIME | MSR_KVM_SYSTEM_TIME_NEW | MSR_KVM_PV_EOI_EN
                        if msr.data & 1 == 1 =>
                    {
                        msr.data & !1
                    }
                    MSR_KVM_STEAL_TIME | MSR_KVM_ASYNC_PF_EN if msr.data & 1 == 1 => {
                        msr.data & !0x3f
                    }
                    MSR_KVM_WALL_CLOCK | MSR_KVM_WALL_CLOCK_NEW if msr.data != 0 => msr.data,
                    _ => continue,
                };
                let mut start = 0;
                for (base, count) in self.region_bases.iter().zip(&self.region_pages) {
                    if address >= *base && address < base + count * PAGE_SIZE {
                        pages.push(start + (address - base) / PAGE_SIZE);
                    }
                    start += count;
                }
            }
        }
        pages.sort_unstable();
        pages.dedup();
        pages
    }

    /// Sends stream pages `first..first + count` (within one region) as one frame of `round`.
    fn send_stream_pages(
        &mut self,
        round: u32,
        first: u64,
        count: u64,
    ) -> Result<(), MigrateError> {
        let mut start = 0;
        let mut region = 0;
        while region < self.region_pages.len() && first >= start + self.region_pages[region] {
            start += self.region_pages[region];
            region += 1;
        }
        let base = *self
            .region_bases
            .get(region)
            .ok_or_else(|| MigrateError::Memory(format!("page {first} is outside guest RAM")))?;
        let length = (count * PAGE_SIZE) as usize;
        let buffer = &mut self.bounce[..length];
        self.mmap
            .read_slice(buffer, GuestAddress(base + (first - start) * PAGE_SIZE))
            .map_err(|error| MigrateError::Memory(error.to_string()))?;
        let before = self.out.len();
        self.encoder
            .memory_pages(round, first, buffer, &mut self.out)?;
        let frame = (self.out.len() - before) as u64;
        let data_pages = (frame - 9 - 16 - count) / PAGE_SIZE;
        self.zero_pages += count - data_pages;
        self.pages_sent += count;
        Ok(())
    }

    /// Post-copy: sends every page of `pending`, a requested one as soon as it is asked for,
    /// the others in order in the background (at most `rate` pages per second, if given).
    /// Returns how many were sent on request.
    fn serve_postcopy(
        &mut self,
        round: u32,
        pending: &PageSet,
        requests: &Receiver<Request>,
        rate: Option<f64>,
        control: &MigrationControl,
        running_ns: &mut Option<u64>,
    ) -> Result<u64, MigrateError> {
        let total: u64 = self.region_pages.iter().sum();
        let mut left_bits = vec![0u64; total.div_ceil(64) as usize];
        for run in pending.runs(u64::MAX) {
            let first = pending.region_start(run.region) + run.first;
            for page in first..first + run.count {
                left_bits[(page / 64) as usize] |= 1 << (page % 64);
            }
        }
        let is_left = |bits: &[u64], page: u64| bits[(page / 64) as usize] >> (page % 64) & 1 == 1;
        let mut left = pending.count();
        let mut requested = 0u64;
        let mut cursor = 0u64;
        let mut background_sent = 0u64;
        let started = Instant::now();
        // Region ends, for runs that must not cross them.
        let ends: Vec<u64> = self
            .region_pages
            .iter()
            .scan(0, |end, pages| {
                *end += pages;
                Some(*end)
            })
            .collect();
        while left > 0 {
            if running_ns.is_none() {
                match self.replies.try_recv() {
                    Err(TryRecvError::Empty) | Ok(Ok(Some(Reply::Prepared))) => {}
                    Ok(Ok(Some(Reply::Running {
                        vcpus_running_monotonic_ns,
                    }))) => *running_ns = Some(vcpus_running_monotonic_ns),
                    Ok(Ok(Some(Reply::Failed { error }))) => {
                        return Err(MigrateError::Refused(error))
                    }
                    Ok(Ok(None)) | Err(TryRecvError::Disconnected) => {
                        return Err(MigrateError::PostcopyLost(
                            "it closed the connection without an answer".into(),
                        ))
                    }
                    Ok(Err(error)) => return Err(MigrateError::PostcopyLost(error.to_string())),
                }
            }
            // Wait for a request while the background push is ahead of its rate.
            let wait = rate.map_or(Duration::ZERO, |rate| {
                Duration::from_secs_f64(background_sent as f64 / rate)
                    .saturating_sub(started.elapsed())
            });
            let first_request = if wait.is_zero() {
                requests.try_recv().map_err(|error| match error {
                    TryRecvError::Empty => None,
                    TryRecvError::Disconnected => Some(()),
                })
            } else {
                requests.recv_timeout(wait).map_err(|error| match error {
                    RecvTimeoutError::Timeout => None,
                    RecvTimeoutError::Disconnected => Some(()),
                })
            };
            let mut next = first_request;
            loop {
                match next {
                    Ok(Request::Page(page)) => {
                        if page < total && is_left(&left_bits, page) {
                            self.send_stream_pages(round, page, 1)?;
                            left_bits[(page / 64) as usize] &= !(1 << (page % 64));
                            left -= 1;
                            requested += 1;
                            self.flush()?;
                        }
                    }
                    Ok(Request::Done) => {
                        return Err(MigrateError::PostcopyLost(
                            "it ended its page requests before every page was sent".into(),
                        ))
                    }
                    Ok(Request::Lost(reason)) => return Err(MigrateError::PostcopyLost(reason)),
                    Err(Some(())) => {
                        return Err(MigrateError::PostcopyLost(
                            "its page-request stream is gone".into(),
                        ))
                    }
                    Err(None) => break,
                }
                next = requests.try_recv().map_err(|error| match error {
                    TryRecvError::Empty => None,
                    TryRecvError::Disconnected => Some(()),
                });
            }
            if !wait.is_zero() || left == 0 {
                continue;
            }
            // The next background run.
            while cursor < total && !is_left(&left_bits, cursor) {
                cursor += 1;
            }
            if cursor >= total {
                continue;
            }
            let region_end = ends
                .iter()
                .copied()
                .find(|&end| end > cursor)
                .unwrap_or(total);
            let mut count = 0;
            while count < POSTCOPY_CHUNK_PAGES
                && cursor + count < region_end
                && is_left(&left_bits, cursor + count)
            {
                count += 1;
            }
            self.send_stream_pages(round, cursor, count)?;
            for page in cursor..cursor + count {
                left_bits[(page / 64) as usize] &= !(1 << (page % 64));
            }
            left -= count;
            cursor += count;
            background_sent += count;
            self.flush()?;
            control.update(|status| {
                status.bytes_sent = self.wire_bytes;
                status.pages_sent = self.pages_sent;
                status.zero_pages_sent = self.zero_pages;
                status.bytes_left = left * PAGE_SIZE;
            });
        }
        Ok(requested)
    }

    /// Ends the stream with `Cancel` (best effort) and returns the error to report.
    fn cancel(&mut self, reason: &str) -> MigrateError {
        self.out.clear();
        if self.encoder.cancel(reason, &mut self.out).is_ok() {
            let _ = self.connection.write_all(&self.out);
        }
        self.connection.shutdown_write();
        MigrateError::Cancelled
    }

    /// Waits for the destination to say its vCPUs run; returns its CLOCK_MONOTONIC instant.
    fn confirmation(&mut self) -> Result<u64, MigrateError> {
        match self.replies.recv_timeout(CONFIRM_TIMEOUT) {
            Ok(Ok(Some(Reply::Running {
                vcpus_running_monotonic_ns,
            }))) => Ok(vcpus_running_monotonic_ns),
            Ok(Ok(Some(Reply::Failed { error }))) => Err(MigrateError::Refused(error)),
            Ok(Ok(None)) | Err(RecvTimeoutError::Disconnected) => Err(
                MigrateError::NoConfirmation("it closed the connection without an answer".into()),
            ),
            Ok(Err(error)) => Err(MigrateError::NoConfirmation(error.to_string())),
            // The readers skip it; never passed on.
            Ok(Ok(Some(Reply::Prepared))) => Err(MigrateError::NoConfirmation(
                "it said it was prepared twice".into(),
            )),
            Err(RecvTimeoutError::Timeout) => Err(MigrateError::NoConfirmation(format!(
                "no answer within {} s",
                CONFIRM_TIMEOUT.as_secs()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_downtime_follows_the_rate() {
        assert_eq!(expected_downtime_ms(0, 0.0), 0.0, "nothing left: no time");
        assert_eq!(expected_downtime_ms(256, 1024.0 * 1024.0 * 1000.0), 1.0);
        assert!(expected_downtime_ms(1, f64::INFINITY).is_infinite());
        assert!(expected_downtime_ms(1, 0.0).is_infinite());
    }

    #[test]
    fn stop_and_copy_when_the_rest_fits_or_the_rounds_run_out() {
        assert_eq!(
            next_step(4.9, 5, 1, 30),
            Next::StopAndCopy { forced: false }
        );
        assert_eq!(
            next_step(5.0, 5, 1, 30),
            Next::StopAndCopy { forced: false }
        );
        assert_eq!(next_step(5.1, 5, 1, 30), Next::AnotherRound);
        assert_eq!(next_step(5.1, 5, 29, 30), Next::AnotherRound);
        assert_eq!(
            next_step(5.1, 5, 30, 30),
            Next::StopAndCopy { forced: true }
        );
        assert_eq!(
            next_step(f64::INFINITY, 5, 30, 30),
            Next::StopAndCopy { forced: true }
        );
    }
}

//! Post-copy, destination side. At `PostcopySwitch` the destination has the guest's state and
//! the list of pages still on the source (`postcopy_pages`). It drops its copies of those
//! pages (older pre-copy versions), registers guest RAM with userfaultfd and starts the vCPUs
//! at once. Three threads then:
//!
//! - the fault thread: a fault on a page still to come is asked for on the page-request
//!   stream (once) and waits for it; a fault on any other missing page gets the zero page
//!   (the source never sends pages the guest never touched); with `--async-pf on` the vCPU is
//!   also offered an async page fault (`vstate::async_pf`);
//! - the reader: places the pages of the migration stream as they come (the source sends
//!   requested pages first, the rest in the background) and, at `End`, releases guest RAM
//!   from userfaultfd and ends the page-request stream;
//! - the writer ([`RequestWriter`]): once the reply line says the guest runs, writes the
//!   page-request stream (header, `PageRequest`s, `End`) on the back channel.
//!
//! A source lost before `End` (connection closed or reset, corrupted stream, 60 s without
//! data) leaves the guest without part of its memory: the destination says so and exits 1 at
//! once (its vCPUs may be waiting on pages that will never come).

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use lull_migration_stream::{
    Encoder, Event, Frame, Limits, Page, SourceInfo, StreamKind, StreamReader,
};
use vm_memory::GuestMemoryBackend as _;

use super::destination::{PageMap, Parts, ReceiveError, Received};
use super::Connection;
use crate::arch::layout;
use crate::console::StdoutWriter;
use crate::lazy::Pager;
use crate::machine::{IncomingVm, Machine};
use crate::vstate::async_pf::{self, AsyncPf};
use crate::vstate::uffd::Fault;

const PAGE_SIZE: u64 = 4096;

/// What the switch needs besides the VM and the stream.
pub struct Settings {
    /// The migration stream's header (the page-request stream echoes it).
    pub info: SourceInfo,
    /// Pages the source says still come.
    pub pages_left: u64,
    pub async_pf: bool,
    pub timing: bool,
}

/// To the writer thread.
enum Message {
    Request(u64),
    /// Every page arrived: end the page-request stream.
    Done,
}

/// Counters shared by the threads.
#[derive(Default)]
struct Stats {
    arrived: AtomicU64,
    requested: AtomicU64,
    wait_total_us: AtomicU64,
    wait_max_us: AtomicU64,
    /// When each requested page was asked for (until it arrives).
    asked_at: Mutex<HashMap<u64, Instant>>,
}

impl Stats {
    fn arrived(&self, page: u64) {
        self.arrived.fetch_add(1, Ordering::Relaxed);
        let asked = self
            .asked_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&page);
        if let Some(asked) = asked {
            let waited = asked.elapsed().as_micros() as u64;
            self.wait_total_us.fetch_add(waited, Ordering::Relaxed);
            self.wait_max_us.fetch_max(waited, Ordering::Relaxed);
        }
    }
}

/// The page-request side, started once the reply line went out.
pub struct RequestWriter {
    messages: Receiver<Message>,
    info: SourceInfo,
    vcpus_at: Arc<OnceLock<Instant>>,
}

impl RequestWriter {
    /// Writes the page-request stream on `answer` (after the reply line) on its own thread.
    pub fn start(self, mut answer: Connection, vcpus_running_at: Instant) {
        let _ = self.vcpus_at.set(vcpus_running_at);
        let spawned = std::thread::Builder::new()
            .name("postcopy-requests".into())
            .spawn(move || {
                let mut out = Vec::new();
                let info = SourceInfo {
                    kind: StreamKind::PageRequests,
                    ..self.info
                };
                let Ok(mut encoder) = Encoder::start(info, Limits::default(), &mut out) else {
                    return;
                };
                if answer.write_all(&out).is_err() {
                    return; // the reader sees the source gone and says so
                }
                while let Ok(message) = self.messages.recv() {
                    out.clear();
                    let last = matches!(message, Message::Done);
                    let encoded = match message {
                        Message::Request(page) => encoder.page_request(page, &mut out),
                        Message::Done => encoder.end(&mut out),
                    };
                    if encoded.is_err() || answer.write_all(&out).is_err() {
                        return;
                    }
                    if last {
                        answer.shutdown_write();
                        return;
                    }
                }
            });
        if let Err(error) = spawned {
            eprintln!(
                "lull-vmm: post-copy: cannot start the page-request thread ({error}); stopping"
            );
            std::process::exit(1);
        }
    }
}

/// One bit per stream page.
struct Bits(Vec<u64>);

impl Bits {
    fn new(pages: u64) -> Self {
        Self(vec![0; pages.div_ceil(64) as usize])
    }
    fn get(&self, page: u64) -> bool {
        self.0
            .get((page / 64) as usize)
            .is_some_and(|word| word >> (page % 64) & 1 == 1)
    }
    fn set(&mut self, page: u64) {
        self.0[(page / 64) as usize] |= 1 << (page % 64);
    }
}

/// The switch: see the module comment.
pub(super) fn switch(
    vm: IncomingVm,
    regions: &[layout::RamRegion],
    present: &[u64],
    mut parts: Parts,
    reader: StreamReader<Connection>,
    settings: Settings,
) -> Result<Received, ReceiveError> {
    let switched_at = Instant::now();
    let runs = parts
        .postcopy_pages
        .take()
        .ok_or(ReceiveError::Missing("postcopy_pages"))?;
    let state = parts.into_state(regions)?;
    let map = PageMap::new(regions);
    let total: u64 = regions.iter().map(|region| region.size / PAGE_SIZE).sum();
    let mut pending = Bits::new(total);
    let mut count = 0u64;
    for &(first, pages) in &runs {
        if first.saturating_add(pages) > total {
            return Err(ReceiveError::Postcopy(format!(
                "page run {first}+{pages} lies outside guest RAM"
            )));
        }
        // Older pre-copy versions of these pages go (the source sends their last ones): the
        // pages written here, in runs of contiguous ones (a run from the source lies within
        // one region). Pages never written here are missing already.
        let is_present = |page: u64| {
            present
                .get((page / 64) as usize)
                .is_some_and(|w| w >> (page % 64) & 1 == 1)
        };
        let mut page = first;
        while page < first + pages {
            pending.set(page);
            if !is_present(page) {
                page += 1;
                continue;
            }
            let start = page;
            while page < first + pages && is_present(page) {
                pending.set(page);
                page += 1;
            }
            let address = map.address(start).expect("checked against the size above");
            vm.memory()
                .discard(address, ((page - start) * PAGE_SIZE) as usize)
                .map_err(|error| ReceiveError::Memory(error.to_string()))?;
        }
        count += pages;
    }
    if count != settings.pages_left {
        return Err(ReceiveError::Postcopy(format!(
            "the switch announces {} pages but the list has {count}",
            settings.pages_left
        )));
    }
    let pager = Pager::new(vm.memory())
        .map_err(|error| ReceiveError::Postcopy(format!("userfaultfd: {error}")))?;
    let pending = Arc::new(pending);
    let stats = Arc::new(Stats::default());
    let done = Arc::new(AtomicBool::new(false));
    let (messages, writer_messages) = mpsc::channel();
    let hub = settings.async_pf.then(|| {
        let (pager, pending) = (pager.clone(), pending.clone());
        let (mmap, map) = (vm.memory().mmap.clone(), pager.map().clone());
        AsyncPf::new(
            vm.memory().mmap.clone(),
            move |page| pager.is_loaded(page) || !pending.get(page),
            move |address| {
                let host = mmap
                    .get_host_address(vm_memory::GuestAddress(address))
                    .ok()?;
                map.page_of(host as u64)
            },
        )
    });
    if let Some(hub) = &hub {
        async_pf::install(hub.clone());
    }
    let vcpus_at = Arc::new(OnceLock::new());
    let thread_error = |error: std::io::Error| ReceiveError::Postcopy(format!("{error}"));
    {
        let (pager, pending, stats, done, messages, hub) = (
            pager.clone(),
            pending.clone(),
            stats.clone(),
            done.clone(),
            messages.clone(),
            hub.clone(),
        );
        std::thread::Builder::new()
            .name("postcopy-faults".into())
            .spawn(move || serve_faults(&pager, &pending, &stats, &done, &messages, hub.as_deref()))
            .map_err(thread_error)?;
    }
    {
        let (pager, stats, vcpus_at, hub) =
            (pager.clone(), stats.clone(), vcpus_at.clone(), hub.clone());
        let pages_left = settings.pages_left;
        let timing = settings.timing;
        std::thread::Builder::new()
            .name("postcopy-pages".into())
            .spawn(move || {
                let summary = Summary {
                    switched_at,
                    vcpus_at,
                    pages_left,
                    timing,
                };
                read_pages(reader, &pager, &stats, &summary, hub.as_deref());
                done.store(true, Ordering::Release);
                let _ = messages.send(Message::Done);
            })
            .map_err(thread_error)?;
    }
    let started = Machine::restore_incoming(vm, &state, Box::new(StdoutWriter))?;
    if let Some(hub) = &hub {
        hub.set_vm(started.machine.migration_handles().0);
    }
    Ok(Received {
        started,
        postcopy: Some(RequestWriter {
            messages: writer_messages,
            info: settings.info,
            vcpus_at,
        }),
    })
}

/// The fault thread (see the module comment).
fn serve_faults(
    pager: &Pager,
    pending: &Bits,
    stats: &Stats,
    done: &AtomicBool,
    messages: &Sender<Message>,
    hub: Option<&AsyncPf>,
) {
    let mut requested = Bits::new(pager.total_pages());
    let mut faults: Vec<Fault> = Vec::new();
    loop {
        let busy = hub.is_some_and(AsyncPf::busy);
        if done.load(Ordering::Acquire) && !busy {
            return;
        }
        faults.clear();
        if let Err(error) = pager.next_faults(&mut faults, if busy { 1 } else { 100 }) {
            eprintln!("lull-vmm: post-copy: reading page faults failed: {error}");
            return;
        }
        for fault in &faults {
            let Some(page) = pager.map().page_of(fault.address) else {
                continue;
            };
            if pager.is_loaded(page) {
                pager.wake(page);
                continue;
            }
            if !pending.get(page) {
                // Never sent: the guest never wrote it on the source (or it went as a zero
                // page in pre-copy).
                if let Err(error) = pager.place_zero(page, 1) {
                    eprintln!("lull-vmm: post-copy: cannot map page {page}: {error}");
                }
                continue;
            }
            if !requested.get(page) {
                requested.set(page);
                stats.requested.fetch_add(1, Ordering::Relaxed);
                stats
                    .asked_at
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(page, Instant::now());
                let _ = messages.send(Message::Request(page));
            }
            if let Some(hub) = hub {
                // Only the guest's own faults (see `async_pf::in_guest`).
                if let Some(vcpu) = hub
                    .vcpu_of(fault.thread_id)
                    .filter(|&vcpu| async_pf::in_guest(vcpu))
                {
                    match hub.asking_about(vcpu) {
                        Some((asked, age)) if asked == page => {
                            if age >= async_pf::KICK_PATIENCE {
                                hub.abandon(vcpu);
                            }
                        }
                        Some(_) => {}
                        None => {
                            if hub.offers_faults() {
                                hub.request(vcpu, page);
                            }
                        }
                    }
                }
            }
        }
        if let Some(hub) = hub {
            hub.take_replies();
            hub.deliver_ready();
        }
    }
}

/// What the reader reports at the end.
struct Summary {
    switched_at: Instant,
    vcpus_at: Arc<OnceLock<Instant>>,
    pages_left: u64,
    timing: bool,
}

/// The reader (see the module comment). Returns at `End`; exits the process if the source
/// is lost first.
fn read_pages(
    mut reader: StreamReader<Connection>,
    pager: &Pager,
    stats: &Stats,
    summary: &Summary,
    hub: Option<&AsyncPf>,
) {
    let lost = |why: String| -> ! {
        eprintln!(
            "\r\nlull-vmm: post-copy: lost the source after {} of {} pages arrived ({why}); the \
             guest cannot run without the rest of its memory, which only the source had: \
             stopping",
            stats.arrived.load(Ordering::Relaxed),
            summary.pages_left
        );
        std::process::exit(1);
    };
    loop {
        let frame = match reader.next_event() {
            Ok(Some(Event::Frame(frame))) => frame,
            Ok(Some(Event::Header(_))) => lost("a second stream header".into()),
            Ok(None) => lost("the stream ended without End".into()),
            Err(error) => lost(error.to_string()),
        };
        match frame {
            Frame::MemoryPages(run) => {
                for (page, content) in run.pages() {
                    let placed = match content {
                        Page::Data(bytes) => pager.place(page, bytes),
                        Page::Zero => pager.place_zero(page, 1),
                    };
                    if let Err(error) = placed {
                        lost(format!("cannot place page {page}: {error}"));
                    }
                    stats.arrived(page);
                }
            }
            Frame::End { .. } => break,
            Frame::Cancel { reason } => lost(format!("it cancelled: {reason}")),
            other => lost(format!(
                "unexpected {:?} after the switch",
                other.frame_type()
            )),
        }
    }
    // Every page the source had is here; the rest are zero: no more faults to serve.
    let released = pager.release();
    let elapsed = summary.switched_at.elapsed();
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let requested = load(&stats.requested);
    let mean_wait_ms = if requested > 0 {
        load(&stats.wait_total_us) as f64 / requested as f64 / 1e3
    } else {
        0.0
    };
    let vcpus_after_ms = summary.vcpus_at.get().map(|at| {
        at.saturating_duration_since(summary.switched_at)
            .as_secs_f64()
            * 1e3
    });
    eprintln!(
        "lull-vmm: post-copy: all {} pages arrived {:.1} ms after the switch ({} asked for by \
         faults, waited {:.2} ms on average, {:.2} ms at most){}",
        summary.pages_left,
        elapsed.as_secs_f64() * 1e3,
        requested,
        mean_wait_ms,
        load(&stats.wait_max_us) as f64 / 1e3,
        if let Err(error) = released {
            format!("; releasing guest RAM from userfaultfd failed: {error}")
        } else {
            String::new()
        }
    );
    if summary.timing {
        eprintln!(
            "{}",
            serde_json::json!({
                "event": "postcopy_complete",
                "since_switch_us": (elapsed.as_secs_f64() * 1e6).round(),
                "vcpus_after_switch_us": vcpus_after_ms.map(|ms| (ms * 1e3).round()),
                "pages": summary.pages_left,
                "requested_pages": requested,
                "mean_wait_us": (mean_wait_ms * 1e3).round(),
                "max_wait_us": load(&stats.wait_max_us),
                "async_pf": hub.map(AsyncPf::counts),
            })
        );
    }
}

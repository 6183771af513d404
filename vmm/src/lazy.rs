//! Lazy restore (`lull-vmm restore --lazy`): guest RAM starts empty, registered with
//! userfaultfd; the vCPUs run at once and each page the guest (or KVM for it) touches first is
//! copied in from the snapshot's memory file when it is touched, while a background thread
//! streams in the rest. Pages in holes of the file are mapped as the zero page.
//!
//! Working-set prefetch, in REAP's manner: `--record-ws MS` serves only faults for the first
//! MS milliseconds after the vCPUs start and records which pages they were (the working set
//! of whatever the guest does then), stored beside the snapshot ([`WORKING_SET_FILE_NAME`]).
//! A later `--lazy` restore of that snapshot copies those pages in first, one `UFFDIO_COPY`
//! per contiguous run, before the vCPUs start, so the guest's first steps take no faults.
//!
//! [`Pager`] is the part post-copy migration shares: the userfaultfd, which pages are in, and
//! placing pages (stream page numbers, as in a memory file, not guest frame numbers).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::vstate::async_pf::{self, AsyncPf};
use crate::vstate::memory::{self, GuestMemory};
use crate::vstate::uffd::{Fault, Uffd, UFFD_FEATURE_THREAD_ID};

pub const PAGE_SIZE: u64 = 4096;
/// The working-set file in a snapshot directory.
pub const WORKING_SET_FILE_NAME: &str = "working-set";
const WORKING_SET_MAGIC: [u8; 8] = *b"LULLWSET";
const WORKING_SET_VERSION: u32 = 1;
/// Test hook: set, a lazy restore with async PF on asks vCPU 0, as soon as the vCPUs run, to
/// take an async PF for the last page of RAM (not touched by an idle guest), then delivers
/// its "page ready". It exercises the guest's side of the protocol where KVM does not let a
/// vCPU that faults on a missing page out of KVM_RUN (see `vstate::async_pf::KICK_PATIENCE`).
pub const ASYNC_PF_PROBE_VARIABLE: &str = "LULL_VMM_ASYNC_PF_PROBE";
/// Pages the background thread reads and places at once.
const BACKGROUND_CHUNK_PAGES: u64 = 64;

/// What `restore --lazy` was asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LazyOptions {
    /// `--record-ws MS`: record the pages touched in the first MS ms (no prefetch then).
    pub record_ws_ms: Option<u64>,
    /// Print a JSON line when every page is in (`--timing`).
    pub timing: bool,
    /// `--async-pf on`: a vCPU that faults on a page not yet in gets an async page fault
    /// where the guest enabled them (see `vstate::async_pf`).
    pub async_pf: bool,
}

/// Guest RAM pages (stream numbering) ↔ host addresses.
#[derive(Debug, Clone)]
pub struct PageMap {
    /// Per region: first stream page, page count, host address.
    regions: Vec<(u64, u64, u64)>,
}

impl PageMap {
    pub fn of(memory: &GuestMemory) -> Self {
        let mut first = 0;
        let regions = memory
            .mmap
            .iter()
            .map(|region| {
                let pages = region.len() / PAGE_SIZE;
                let entry = (first, pages, region.as_ptr() as u64);
                first += pages;
                entry
            })
            .collect();
        Self { regions }
    }

    pub fn total_pages(&self) -> u64 {
        self.regions.iter().map(|(_, pages, _)| pages).sum()
    }

    /// The stream page at host address `address`.
    pub fn page_of(&self, address: u64) -> Option<u64> {
        self.regions.iter().find_map(|&(first, pages, host)| {
            (address >= host && address < host + pages * PAGE_SIZE)
                .then(|| first + (address - host) / PAGE_SIZE)
        })
    }

    /// Splits `first..first + count` at region ends: (first page, count, host address).
    fn pieces(&self, first: u64, count: u64) -> Vec<(u64, u64, u64)> {
        let end = first + count;
        self.regions
            .iter()
            .filter_map(|&(start, pages, host)| {
                let from = first.max(start);
                let to = end.min(start + pages);
                (from < to).then(|| (from, to - from, host + (from - start) * PAGE_SIZE))
            })
            .collect()
    }
}

/// Guest RAM registered with userfaultfd, and which of its pages are in.
pub struct Pager {
    uffd: Uffd,
    map: PageMap,
    loaded: Vec<AtomicU64>,
    loaded_count: AtomicU64,
    total: u64,
}

impl Pager {
    /// Registers all of `memory` (fresh anonymous memory: every page missing).
    pub fn new(memory: &GuestMemory) -> io::Result<Arc<Self>> {
        let uffd = Uffd::new(UFFD_FEATURE_THREAD_ID)?;
        for region in memory.mmap.iter() {
            uffd.register_missing(region.as_ptr() as u64, region.len())?;
        }
        let map = PageMap::of(memory);
        let total = map.total_pages();
        Ok(Arc::new(Self {
            uffd,
            map,
            loaded: (0..total.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            loaded_count: AtomicU64::new(0),
            total,
        }))
    }

    pub fn map(&self) -> &PageMap {
        &self.map
    }

    pub fn total_pages(&self) -> u64 {
        self.total
    }

    pub fn loaded_pages(&self) -> u64 {
        self.loaded_count.load(Ordering::Acquire)
    }

    pub fn all_loaded(&self) -> bool {
        self.loaded_pages() >= self.total
    }

    pub fn is_loaded(&self, page: u64) -> bool {
        self.loaded[(page / 64) as usize].load(Ordering::Acquire) >> (page % 64) & 1 == 1
    }

    fn mark(&self, first: u64, count: u64) {
        let mut added = 0;
        for page in first..first + count {
            let bit = 1u64 << (page % 64);
            if self.loaded[(page / 64) as usize].fetch_or(bit, Ordering::AcqRel) & bit == 0 {
                added += 1;
            }
        }
        self.loaded_count.fetch_add(added, Ordering::AcqRel);
    }

    /// Places `data` (whole pages) at stream pages `first..`, skipping pages already in, and
    /// wakes whoever waits on them.
    pub fn place(&self, first: u64, data: &[u8]) -> io::Result<()> {
        let count = data.len() as u64 / PAGE_SIZE;
        for (page, pages, host) in self.map.pieces(first, count) {
            let offset = ((page - first) * PAGE_SIZE) as usize;
            self.uffd
                .copy(host, &data[offset..offset + (pages * PAGE_SIZE) as usize])?;
            self.mark(page, pages);
        }
        Ok(())
    }

    /// Maps the zero page at stream pages `first..first + count` where they are missing.
    pub fn place_zero(&self, first: u64, count: u64) -> io::Result<()> {
        for (page, pages, host) in self.map.pieces(first, count) {
            self.uffd.zero(host, pages * PAGE_SIZE)?;
            self.mark(page, pages);
        }
        Ok(())
    }

    /// Unregisters all of guest RAM: pages still missing become ordinary zero-fill memory.
    pub fn release(&self) -> io::Result<()> {
        for &(_, pages, host) in &self.map.regions {
            self.uffd.unregister(host, pages * PAGE_SIZE)?;
        }
        Ok(())
    }

    /// Wakes threads waiting on `page` (placed by someone else meanwhile).
    pub fn wake(&self, page: u64) {
        for (_, pages, host) in self.map.pieces(page, 1) {
            let _ = self.uffd.wake(host, pages * PAGE_SIZE);
        }
    }

    /// Waits up to `timeout_ms` for faults and appends them to `faults`.
    pub fn next_faults(&self, faults: &mut Vec<Fault>, timeout_ms: i32) -> io::Result<()> {
        let (ready, _) = self.uffd.wait(None::<&File>, timeout_ms)?;
        if ready {
            self.uffd.read_faults(faults)?;
        }
        Ok(())
    }
}

/// A recorded working set: runs of stream pages (first, count), sorted, for a guest of
/// `total_pages` pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingSet {
    pub total_pages: u64,
    pub runs: Vec<(u64, u32)>,
}

impl WorkingSet {
    /// From pages in any order, duplicates allowed.
    pub fn from_pages(total_pages: u64, mut pages: Vec<u64>) -> Self {
        pages.sort_unstable();
        pages.dedup();
        let mut runs: Vec<(u64, u32)> = Vec::new();
        for page in pages {
            match runs.last_mut() {
                Some((first, count)) if *first + u64::from(*count) == page && *count < u32::MAX => {
                    *count += 1
                }
                _ => runs.push((page, 1)),
            }
        }
        Self { total_pages, runs }
    }

    pub fn pages(&self) -> u64 {
        self.runs.iter().map(|&(_, count)| u64::from(count)).sum()
    }

    /// `LULLWSET`, version (u32), CRC-32 of the rest (u32), total pages (u64), run count
    /// (u32), then each run's first page (u64) and count (u32); little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(12 + self.runs.len() * 12);
        body.extend_from_slice(&self.total_pages.to_le_bytes());
        body.extend_from_slice(&(self.runs.len() as u32).to_le_bytes());
        for &(first, count) in &self.runs {
            body.extend_from_slice(&first.to_le_bytes());
            body.extend_from_slice(&count.to_le_bytes());
        }
        let mut file = Vec::with_capacity(16 + body.len());
        file.extend_from_slice(&WORKING_SET_MAGIC);
        file.extend_from_slice(&WORKING_SET_VERSION.to_le_bytes());
        file.extend_from_slice(&vmm_state_file::crc32(&body).to_le_bytes());
        file.extend_from_slice(&body);
        file
    }

    /// Checks and decodes a file made by [`WorkingSet::encode`] for a guest of
    /// `total_pages` pages; says what is wrong otherwise.
    pub fn decode(bytes: &[u8], total_pages: u64) -> Result<Self, String> {
        if bytes.len() < 28 || bytes[..8] != WORKING_SET_MAGIC {
            return Err("not a working-set file".into());
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let version = u32_at(8);
        if version != WORKING_SET_VERSION {
            return Err(format!(
                "version {version}, this lull-vmm reads {WORKING_SET_VERSION}"
            ));
        }
        let body = &bytes[16..];
        let crc = vmm_state_file::crc32(body);
        if crc != u32_at(12) {
            return Err(format!(
                "corrupted (CRC-32 is {crc:#010x}, the file says {:#010x})",
                u32_at(12)
            ));
        }
        let count = u32_at(24) as usize;
        if body.len() != 12 + count * 12 {
            return Err(format!("{count} runs do not fit its {} bytes", bytes.len()));
        }
        let file_total = u64_at(16);
        if file_total != total_pages {
            return Err(format!(
                "recorded for a guest of {file_total} pages, this one has {total_pages}"
            ));
        }
        let runs: Vec<(u64, u32)> = (0..count)
            .map(|run| (u64_at(28 + run * 12), u32_at(36 + run * 12)))
            .collect();
        if runs
            .iter()
            .any(|&(first, count)| first.saturating_add(u64::from(count)) > total_pages)
        {
            return Err("a run lies outside guest RAM".into());
        }
        Ok(Self { total_pages, runs })
    }

    /// Reads `directory`'s working set; `None` (after a warning) when it is missing or bad.
    pub fn load(directory: &Path, total_pages: u64) -> Option<Self> {
        let path = directory.join(WORKING_SET_FILE_NAME);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
            Err(error) => {
                eprintln!(
                    "lull-vmm: warning: cannot read {} ({error}); restoring without prefetch",
                    path.display()
                );
                return None;
            }
        };
        match Self::decode(&bytes, total_pages) {
            Ok(set) => Some(set),
            Err(problem) => {
                eprintln!(
                    "lull-vmm: warning: ignoring {}: {problem}; restoring without prefetch",
                    path.display()
                );
                None
            }
        }
    }

    /// Writes it to `directory` (temporary file, then rename).
    pub fn store(&self, directory: &Path) -> io::Result<PathBuf> {
        let path = directory.join(WORKING_SET_FILE_NAME);
        let temporary = directory.join(format!(".{WORKING_SET_FILE_NAME}.tmp"));
        std::fs::write(&temporary, self.encode())?;
        std::fs::rename(&temporary, &path)?;
        Ok(path)
    }
}

/// Counters of a lazy restore.
#[derive(Debug, Default)]
pub struct LazyStats {
    pub prefetched_pages: AtomicU64,
    pub faults: AtomicU64,
    /// Pages loaded by the fault thread (a fault on a page already in loads nothing).
    pub fault_pages: AtomicU64,
    pub background_pages: AtomicU64,
}

/// Serves a snapshot's memory file into a [`Pager`].
pub struct SnapshotPages {
    pager: Arc<Pager>,
    file: File,
    /// One bit per page: the file has data there (else a hole: zero).
    data: Vec<u64>,
}

impl SnapshotPages {
    fn has_data(&self, page: u64) -> bool {
        self.data[(page / 64) as usize] >> (page % 64) & 1 == 1
    }

    /// Places `first..first + count`: data runs read from the file, hole runs as zero pages.
    fn load(&self, first: u64, count: u64, buffer: &mut Vec<u8>) -> io::Result<()> {
        let end = first + count;
        let mut page = first;
        while page < end {
            let data = self.has_data(page);
            let start = page;
            while page < end && self.has_data(page) == data {
                page += 1;
            }
            if data {
                let bytes = ((page - start) * PAGE_SIZE) as usize;
                buffer.resize(bytes, 0);
                self.file
                    .read_exact_at(&mut buffer[..bytes], start * PAGE_SIZE)?;
                self.pager.place(start, &buffer[..bytes])?;
            } else {
                self.pager.place_zero(start, page - start)?;
            }
        }
        Ok(())
    }
}

/// A lazy restore under way: the fault thread runs from [`LazyRestore::start`] on; the
/// background thread from [`LazyRestore::vcpus_started`].
pub struct LazyRestore {
    source: Arc<SnapshotPages>,
    directory: PathBuf,
    options: LazyOptions,
    stats: Arc<LazyStats>,
    /// Pages faulted on while recording.
    recording: Arc<Mutex<Option<Vec<u64>>>>,
    stop: Arc<AtomicBool>,
    async_pf: Option<Arc<AsyncPf>>,
    /// Pages of the working set prefetched, and how long that took.
    pub prefetched: Option<(u64, Duration)>,
}

impl LazyRestore {
    /// Registers `memory` (fresh, anonymous) with userfaultfd, starts serving its faults from
    /// `directory`'s memory file (`file`), and prefetches the recorded working set (unless
    /// recording a new one). KVM writes guest memory while vCPU state is restored, so faults
    /// must be served from before that.
    pub fn start(
        memory: &GuestMemory,
        file: File,
        directory: &Path,
        options: &LazyOptions,
    ) -> io::Result<Self> {
        let pager = Pager::new(memory)?;
        let total = pager.total_pages();
        let mut data = vec![0u64; total.div_ceil(64) as usize];
        for (start, end) in memory::data_extents(&file, 0, total * PAGE_SIZE)? {
            for page in start / PAGE_SIZE..end.div_ceil(PAGE_SIZE).min(total) {
                data[(page / 64) as usize] |= 1 << (page % 64);
            }
        }
        let source = Arc::new(SnapshotPages { pager, file, data });
        let stats = Arc::new(LazyStats::default());
        let recording = Arc::new(Mutex::new(options.record_ws_ms.map(|_| Vec::new())));
        let mut prefetched = None;
        if options.record_ws_ms.is_none() {
            if let Some(set) = WorkingSet::load(directory, total) {
                let begin = Instant::now();
                let mut buffer = Vec::new();
                for &(first, count) in &set.runs {
                    source.load(first, u64::from(count), &mut buffer)?;
                }
                stats.prefetched_pages.store(set.pages(), Ordering::Relaxed);
                prefetched = Some((set.pages(), begin.elapsed()));
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let hub = options.async_pf.then(|| {
            let pager = source.pager.clone();
            let map = pager.map().clone();
            let mmap = memory.mmap.clone();
            AsyncPf::new(
                memory.mmap.clone(),
                move |page| pager.is_loaded(page),
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
        {
            let source = source.clone();
            let stats = stats.clone();
            let recording = recording.clone();
            let stop = stop.clone();
            let hub = hub.clone();
            std::thread::Builder::new()
                .name("uffd-faults".into())
                .spawn(move || serve_faults(&source, &stats, &recording, &stop, hub.as_deref()))?;
        }
        Ok(Self {
            source,
            directory: directory.to_path_buf(),
            options: options.clone(),
            stats,
            recording,
            stop,
            async_pf: hub,
            prefetched,
        })
    }

    /// The vCPUs run since `at`: after the recording window, if any (the working set is
    /// stored then), streams in every page not yet in, then reports.
    pub fn vcpus_started(self, at: Instant, vm: Arc<kvm_ioctls::VmFd>) {
        if let Some(hub) = &self.async_pf {
            hub.set_vm(vm);
        }
        let spawned = std::thread::Builder::new()
            .name("uffd-background".into())
            .spawn(move || self.background(at));
        if let Err(error) = spawned {
            eprintln!("lull-vmm: warning: no background loading thread ({error}); pages load only on fault");
        }
    }

    fn background(self, vcpus_at: Instant) {
        if let (Some(hub), Some(_)) = (&self.async_pf, std::env::var_os(ASYNC_PF_PROBE_VARIABLE)) {
            // The last pages of RAM, which an idle guest does not touch: one is held back
            // until vCPU 0 answered; on "not present" it is then loaded and made "ready". A
            // vCPU that cannot take it now (interrupts off) is asked again, about the next.
            let pager = &self.source.pager;
            let wait_idle = || {
                let deadline = Instant::now() + Duration::from_secs(5);
                while hub.busy() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
            };
            let mut page = pager.total_pages();
            for _ in 0..50 {
                wait_idle();
                page -= 1;
                while page > 0 && pager.is_loaded(page) {
                    page -= 1;
                }
                if !hub.request(0, page) {
                    continue;
                }
                wait_idle();
                if hub.not_present() > 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some(ms) = self.options.record_ws_ms {
            std::thread::sleep(
                (vcpus_at + Duration::from_millis(ms)).saturating_duration_since(Instant::now()),
            );
            let pages = self
                .recording
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take()
                .unwrap_or_default();
            let set = WorkingSet::from_pages(self.source.pager.total_pages(), pages);
            match set.store(&self.directory) {
                Ok(path) => eprintln!(
                    "lull-vmm: working set of the first {ms} ms: {} pages in {} runs, stored in {}",
                    set.pages(),
                    set.runs.len(),
                    path.display()
                ),
                Err(error) => eprintln!(
                    "lull-vmm: warning: cannot store the working set in {}: {error}",
                    self.directory.display()
                ),
            }
        }
        let pager = &self.source.pager;
        let total = pager.total_pages();
        let mut buffer = Vec::new();
        let mut page = 0;
        while page < total {
            if pager.is_loaded(page) {
                page += 1;
                continue;
            }
            let start = page;
            while page < total && page - start < BACKGROUND_CHUNK_PAGES && !pager.is_loaded(page) {
                page += 1;
            }
            if let Err(error) = self.source.load(start, page - start, &mut buffer) {
                eprintln!(
                    "lull-vmm: lazy restore: cannot load pages {start}..{page} from the snapshot: {error}; \
                     the guest waits on them"
                );
                return;
            }
            self.stats
                .background_pages
                .fetch_add(page - start, Ordering::Relaxed);
        }
        let elapsed = vcpus_at.elapsed();
        self.stop.store(true, Ordering::Release);
        // Every page is in: nothing is left for userfaultfd to catch.
        if let Err(error) = pager.release() {
            eprintln!("lull-vmm: lazy restore: releasing guest RAM from userfaultfd: {error}");
        }
        let stats = &self.stats;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        eprintln!(
            "lull-vmm: lazy restore: all {total} pages in {:.1} ms after the vCPUs started \
             ({} prefetched, {} on {} faults, {} in the background)",
            elapsed.as_secs_f64() * 1e3,
            load(&stats.prefetched_pages),
            load(&stats.fault_pages),
            load(&stats.faults),
            load(&stats.background_pages),
        );
        if self.options.timing {
            eprintln!(
                "{}",
                serde_json::json!({
                    "event": "all_pages_loaded",
                    "since_vcpus_us": (elapsed.as_secs_f64() * 1e6).round(),
                    "pages": total,
                    "prefetched_pages": load(&stats.prefetched_pages),
                    "faults": load(&stats.faults),
                    "background_pages": load(&stats.background_pages),
                    "async_pf": self.async_pf.as_ref().map(|hub| hub.counts()),
                })
            );
        }
    }
}

/// The fault thread: each fault on a page not yet in loads that page (data or zero); a fault
/// on a page already in (placed by the background thread meanwhile) just wakes the waiter.
/// With async PF, a vCPU's fault is first offered to that vCPU (`vstate::async_pf`) and the
/// page loaded once it answered; the "page ready"s go out as pages arrive.
fn serve_faults(
    source: &SnapshotPages,
    stats: &LazyStats,
    recording: &Mutex<Option<Vec<u64>>>,
    stop: &AtomicBool,
    hub: Option<&AsyncPf>,
) {
    let pager = &source.pager;
    let mut faults = Vec::new();
    let mut buffer = Vec::new();
    // Faults held back while their vCPU is asked (vCPU, page). Every one is served in the
    // end: by the vCPU's answer, or once the request is older than `KICK_PATIENCE`, since
    // a thread blocked in userfaultfd reports its fault only once.
    let mut held: Vec<(u8, u64)> = Vec::new();
    let load = |page: u64, buffer: &mut Vec<u8>| match source.load(page, 1, buffer) {
        Ok(()) => {
            stats.fault_pages.fetch_add(1, Ordering::Relaxed);
        }
        Err(error) => eprintln!(
            "lull-vmm: lazy restore: cannot load page {page} from the snapshot: {error}; \
             the guest waits on it"
        ),
    };
    loop {
        let busy = hub.is_some_and(AsyncPf::busy) || !held.is_empty();
        if stop.load(Ordering::Acquire) && !busy {
            return;
        }
        faults.clear();
        if let Err(error) = pager.next_faults(&mut faults, if busy { 1 } else { 100 }) {
            eprintln!("lull-vmm: lazy restore: reading page faults failed: {error}");
            return;
        }
        for fault in &faults {
            let Some(page) = pager.map().page_of(fault.address) else {
                continue;
            };
            stats.faults.fetch_add(1, Ordering::Relaxed);
            if let Some(pages) = recording
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .as_mut()
            {
                pages.push(page);
            }
            if pager.is_loaded(page) {
                pager.wake(page);
                continue;
            }
            if let Some(hub) = hub {
                // Only a fault the guest made (its vCPU thread inside KVM_RUN) can become an
                // async PF; lull-vmm's own accesses from a vCPU thread are served at once.
                if let Some(vcpu) = hub
                    .vcpu_of(fault.thread_id)
                    .filter(|&vcpu| async_pf::in_guest(vcpu))
                {
                    match hub.asking_about(vcpu) {
                        // Faulting again on the page it is asked about (KVM retries before
                        // it sees the kick): held until it answered, or until it has been
                        // seen not to leave KVM_RUN (below).
                        Some((asked, _)) if asked == page => {
                            if !held.contains(&(vcpu, page)) {
                                held.push((vcpu, page));
                            }
                            continue;
                        }
                        // Another page while answering (the guest's async-PF area): served
                        // at once.
                        Some(_) => {}
                        None => {
                            if hub.offers_faults() && hub.request(vcpu, page) {
                                held.push((vcpu, page));
                                continue;
                            }
                        }
                    }
                }
            }
            load(page, &mut buffer);
        }
        if let Some(hub) = hub {
            for reply in hub.take_replies() {
                if !pager.is_loaded(reply.page) {
                    load(reply.page, &mut buffer);
                }
            }
            held.retain(|&(vcpu, page)| {
                if pager.is_loaded(page) {
                    // Placed (by an answer or the background thread): its waiters woke.
                    return false;
                }
                match hub.asking_about(vcpu) {
                    Some((asked, age)) if asked == page && age < async_pf::KICK_PATIENCE => true,
                    open => {
                        // Still unanswered after the patience: the vCPU did not leave
                        // KVM_RUN. Or answered without the page being placed (a reply
                        // still on its way): placing it now is harmless.
                        if open.is_some_and(|(asked, _)| asked == page) {
                            hub.abandon(vcpu);
                        }
                        load(page, &mut buffer);
                        false
                    }
                }
            });
            hub.deliver_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_sets_round_trip_as_sorted_runs() {
        let set = WorkingSet::from_pages(1000, vec![7, 3, 4, 5, 999, 4, 100]);
        assert_eq!(set.runs, vec![(3, 3), (7, 1), (100, 1), (999, 1)]);
        assert_eq!(set.pages(), 6);
        assert_eq!(WorkingSet::decode(&set.encode(), 1000), Ok(set));
    }

    #[test]
    fn bad_working_set_files_say_what_is_wrong() {
        let bytes = WorkingSet::from_pages(1000, vec![1, 2, 500]).encode();
        let error = |bytes: &[u8], total| WorkingSet::decode(bytes, total).unwrap_err();
        assert!(error(b"hello", 1000).contains("not a working-set file"));
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(error(&flipped, 1000).contains("corrupted"));
        assert!(error(&bytes[..bytes.len() - 4], 1000).contains("corrupted"));
        assert!(error(&bytes, 2000).contains("recorded for a guest of 1000 pages"));
        let mut version = bytes.clone();
        version[8] = 9;
        assert!(error(&version, 1000).contains("version 9"));
        // A run past the end of RAM, with a valid CRC.
        let outside = WorkingSet {
            total_pages: 1000,
            runs: vec![(999, 2)],
        }
        .encode();
        assert!(error(&outside, 1000).contains("outside"));
    }

    #[test]
    fn page_map_splits_at_region_ends() {
        let map = PageMap {
            regions: vec![(0, 10, 0x10_0000), (10, 5, 0x80_0000)],
        };
        assert_eq!(map.total_pages(), 15);
        assert_eq!(map.page_of(0x10_0000 + 3 * PAGE_SIZE + 5), Some(3));
        assert_eq!(map.page_of(0x80_0000 + PAGE_SIZE), Some(11));
        assert_eq!(map.page_of(0x10_0000 + 10 * PAGE_SIZE), None);
        assert_eq!(
            map.pieces(8, 4),
            vec![(8, 2, 0x10_0000 + 8 * PAGE_SIZE), (10, 2, 0x80_0000)]
        );
    }
}

//! `memtouch` and `apfbench`: a working set of a chosen size, for the lazy-restore and
//! async-page-fault benchmarks (issue 12).
//!
//! `memtouch fill SIZE` takes SIZE (rounded up to whole pages) from the page allocator, in the
//! largest blocks it has, and writes a pattern into every page; the pages stay allocated until
//! `memtouch free` (or the next `fill`). A snapshot taken after `fill` therefore holds SIZE of
//! data pages that a lazy restore has to bring in when the guest touches them. `memtouch sum`
//! reads every page back, checks it and prints the checksum and how long it took; `memtouch`
//! alone says what is filled.
//!
//! The pattern: the words at [`CHECKED_WORDS`] of area page `p` hold
//! `seed ^ (p << 12) ^ byte offset`, with `seed` drawn from the clock at `fill` (never 0), so
//! a page that came back zero, stale, or at another page's place reads wrong. Only those four
//! words per page are written and read: KVM's instruction emulator runs this guest at a few
//! million instructions a second, and what the benchmarks need is that every page is touched.
//!
//! `apfbench [SIZE]` is Natapov's async-PF experiment: on the shell's CPU, a fair thread counts
//! loop iterations while a second one reads the filled area (or its first SIZE) page by page (a
//! "cold" pass: right after a lazy restore its pages are still on the host's side), then reads
//! it again (a "warm" pass: every page in); then the spinner runs alone for [`ALONE_MS`]. The
//! spinner's iterations per second during each pass, and the async page faults the guest took
//! in each, show whether the faults stalled the whole vCPU or only the reader.
//!
//! Output lines are `key=value` after the command's name, for `lull-vmm bench --lazy`.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use lull_buddy::{ZoneKind, MAX_ORDER, PAGE_SIZE};
use lull_sched::{CpuSet, SchedClass};

use crate::kernel::locking::IrqSafeLock;
use crate::kernel::sched::Completion;
use crate::kprintln;
use crate::mm::{self, PageBlock};

/// Words (of 512) written and checked in each page: the first, two inside, the last.
const CHECKED_WORDS: [usize; 4] = [0, 170, 341, 511];
/// Free pages `fill` leaves to the rest of the kernel (8 MiB).
const RESERVE_PAGES: u64 = 2048;
/// Spinner iterations between two publications of its count (and looks at its stop flag).
const PUBLISH_EVERY: u64 = 256;
/// Length of `apfbench`'s last phase, the spinner alone.
const ALONE_MS: u64 = 500;

/// The filled area: its blocks in allocation order (area page numbers run through them).
struct Area {
    blocks: Vec<PageBlock>,
    pages: u64,
    seed: u64,
    /// What `sum` must find: the checksum computed while filling.
    checksum: u64,
}

/// The area, when filled. Taken out while a command or `apfbench`'s reader works on it (no
/// lock is held while its pages are touched: a touch may take an async page fault and sleep).
static AREA: IrqSafeLock<Option<Area>> = IrqSafeLock::new(None);

fn expected(seed: u64, page: u64, word: usize) -> u64 {
    seed ^ (page << 12) ^ (word as u64 * 8)
}

/// FNV-1a's step on whole words: order-sensitive, and no pattern cancels out.
fn fold(checksum: u64, value: u64) -> u64 {
    (checksum ^ value).wrapping_mul(0x0000_0100_0000_01B3)
}

fn word_at(bytes: &[u8], word: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[word * 8..word * 8 + 8]);
    u64::from_le_bytes(raw)
}

/// The first wrong word: area page, word index, value read, value expected.
struct Mismatch {
    page: u64,
    word: usize,
    value: u64,
    expected: u64,
}

/// Reads the checked words of the area's first `limit` pages, page by page; the checksum, or
/// the first wrong word.
fn read_back(area: &mut Area, limit: u64) -> Result<u64, Mismatch> {
    let mut checksum = 0xCBF2_9CE4_8422_2325u64;
    let mut page = 0u64;
    for block in &mut area.blocks {
        for bytes in block.as_mut_bytes().chunks_exact(PAGE_SIZE as usize) {
            if page == limit {
                return Ok(checksum);
            }
            for word in CHECKED_WORDS {
                let value = word_at(bytes, word);
                let expected = expected(area.seed, page, word);
                if value != expected {
                    return Err(Mismatch {
                        page,
                        word,
                        value,
                        expected,
                    });
                }
                checksum = fold(checksum, value);
            }
            page += 1;
        }
    }
    Ok(checksum)
}

/// Allocates `pages` pages in the largest blocks available and writes the pattern.
fn fill(pages: u64, seed: u64) -> Result<Area, &'static str> {
    let mut blocks = Vec::new();
    let mut left = pages;
    let mut order = MAX_ORDER;
    while left > 0 {
        while (1u64 << order) > left {
            order -= 1;
        }
        match mm::alloc_pages(order, ZoneKind::Normal) {
            Some(block) => {
                left -= 1 << order;
                blocks.push(block);
            }
            None if order > 0 => order -= 1,
            // Dropping `blocks` gives back what was taken.
            None => return Err("out of memory"),
        }
    }
    let mut checksum = 0xCBF2_9CE4_8422_2325u64;
    let mut page = 0u64;
    for block in &mut blocks {
        for bytes in block.as_mut_bytes().chunks_exact_mut(PAGE_SIZE as usize) {
            for word in CHECKED_WORDS {
                let value = expected(seed, page, word);
                bytes[word * 8..word * 8 + 8].copy_from_slice(&value.to_le_bytes());
                checksum = fold(checksum, value);
            }
            page += 1;
        }
    }
    Ok(Area {
        blocks,
        pages,
        seed,
        checksum,
    })
}

/// KiB in `pages` (saturating: a size typed at the shell can be near `u64::MAX` bytes).
fn kib(pages: u64) -> u64 {
    pages.saturating_mul(PAGE_SIZE / 1024)
}

fn elapsed_us(since_ns: u64) -> u64 {
    crate::kernel::time::uptime_ns().saturating_sub(since_ns) / 1000
}

const USAGE: &str = "usage: memtouch fill SIZE | memtouch sum | memtouch free | memtouch";

/// `memtouch fill SIZE | sum | free` (no argument: what is filled).
pub fn run(args: &[&str]) {
    match args {
        [] => match AREA.lock().as_ref() {
            Some(area) => kprintln!(
                "memtouch: pages={} kib={} blocks={} checksum={:#018x}",
                area.pages,
                kib(area.pages),
                area.blocks.len(),
                area.checksum
            ),
            None => kprintln!("memtouch: nothing filled"),
        },
        ["fill", size] => cmd_fill(size),
        ["sum"] => cmd_sum(),
        ["free"] => match AREA.lock().take() {
            Some(area) => kprintln!("memtouch: freed pages={}", area.pages),
            None => kprintln!("memtouch: nothing filled"),
        },
        ["fill"] => kprintln!("memtouch: fill needs a SIZE (bytes, or with K, M, G: 32M)"),
        _ => kprintln!("{USAGE}"),
    }
}

fn cmd_fill(size: &str) {
    let Some(bytes) = super::parse_size(size).filter(|bytes| *bytes > 0) else {
        kprintln!("memtouch: invalid size '{size}' (bytes, or with K, M, G: 32M)");
        return;
    };
    let pages = bytes.div_ceil(PAGE_SIZE);
    let mut slot = AREA.lock();
    let (_, free) = mm::page_counts();
    let old = slot.as_ref().map_or(0, |area| area.pages);
    let available = free.saturating_add(old).saturating_sub(RESERVE_PAGES);
    if pages > available {
        kprintln!(
            "memtouch: cannot fill {} KiB: {} KiB free, {} KiB kept for the kernel{}",
            kib(pages),
            kib(free.saturating_add(old)),
            kib(RESERVE_PAGES),
            if old > 0 {
                " (the filled area kept)"
            } else {
                ""
            }
        );
        return;
    }
    // The old area goes back first, so that a refill of the same size fits.
    let old = slot.take();
    drop(slot);
    drop(old);
    let begin = crate::kernel::time::uptime_ns();
    // Any nonzero seed; the clock makes each fill's pattern differ from the previous one's.
    let seed = (begin ^ 0x6C75_6C6C_6D74_6368).max(1);
    match fill(pages, seed) {
        Ok(area) => {
            kprintln!(
                "memtouch: filled pages={} kib={} blocks={} us={} checksum={:#018x}",
                area.pages,
                kib(area.pages),
                area.blocks.len(),
                elapsed_us(begin),
                area.checksum
            );
            *AREA.lock() = Some(area);
        }
        Err(why) => kprintln!("memtouch: cannot fill {} KiB: {why}", kib(pages)),
    }
}

fn cmd_sum() {
    let Some(mut area) = AREA.lock().take() else {
        kprintln!("memtouch: nothing filled (memtouch fill SIZE first)");
        return;
    };
    let begin = crate::kernel::time::uptime_ns();
    let pages = area.pages;
    let result = read_back(&mut area, pages);
    let us = elapsed_us(begin);
    match result {
        Ok(checksum) if checksum == area.checksum => kprintln!(
            "memtouch: sum pages={} kib={} us={} checksum={checksum:#018x} ok",
            area.pages,
            kib(area.pages),
            us
        ),
        Ok(checksum) => kprintln!(
            "memtouch: sum pages={} us={us} checksum={checksum:#018x} MISMATCH (filled with {:#018x})",
            area.pages,
            area.checksum
        ),
        Err(bad) => report_mismatch("memtouch", &bad),
    }
    *AREA.lock() = Some(area);
}

fn report_mismatch(command: &str, bad: &Mismatch) {
    kprintln!(
        "{command}: MISMATCH at page {} word {}: {:#018x}, expected {:#018x}",
        bad.page,
        bad.word,
        bad.value,
        bad.expected
    );
}

/// What `apfbench` shares with its two threads.
struct Experiment {
    stop: AtomicBool,
    /// The spinner's iteration count, published every [`PUBLISH_EVERY`] iterations.
    iterations: AtomicU64,
    spinner_done: Completion,
    /// The reader's handover: the area (for a pass, and back), its result.
    slot: IrqSafeLock<Option<(Area, Result<u64, Mismatch>)>>,
    pass_done: Completion,
}

fn spinner(experiment: &Experiment) {
    let mut count = 0u64;
    loop {
        // black_box: each iteration is really executed (not folded into one add of 256).
        count = core::hint::black_box(count + 1);
        if count.is_multiple_of(PUBLISH_EVERY) {
            experiment.iterations.store(count, Ordering::Relaxed);
            if experiment.stop.load(Ordering::Relaxed) {
                break;
            }
        }
    }
    experiment.spinner_done.complete();
}

/// One reader pass over the first `limit` pages, in its own thread on `cpu`; the area comes
/// back with the result (or, when the thread could not start, with why).
fn reader_pass(
    experiment: &Arc<Experiment>,
    area: Area,
    limit: u64,
    cpu: usize,
) -> (Option<Area>, Result<u64, String>) {
    *experiment.slot.lock() = Some((area, Ok(0)));
    let shared = Arc::clone(experiment);
    let spawned = crate::kernel::sched::kthread_spawn(
        "apfbench-reader",
        SchedClass::NORMAL,
        CpuSet::single(cpu),
        move || {
            let taken = shared.slot.lock().take();
            if let Some((mut area, _)) = taken {
                let result = read_back(&mut area, limit);
                *shared.slot.lock() = Some((area, result));
            }
            shared.pass_done.complete();
        },
    );
    if let Err(error) = spawned {
        let area = experiment.slot.lock().take().map(|(area, _)| area);
        return (area, Err(format!("cannot start the reader: {error}")));
    }
    experiment.pass_done.wait();
    match experiment.slot.lock().take() {
        Some((area, Ok(checksum))) => (Some(area), Ok(checksum)),
        Some((area, Err(bad))) => (
            Some(area),
            Err(format!(
                "MISMATCH at page {} word {}: {:#018x}, expected {:#018x}",
                bad.page, bad.word, bad.value, bad.expected
            )),
        ),
        None => (None, Err(String::from("the reader lost the area"))),
    }
}

/// Async-PF event counts (not present, ready), when the guest uses KVM's async PF.
fn apf_counts() -> Option<(u64, u64)> {
    crate::kernel::paravirt::uses_kvm(crate::kernel::paravirt::Op::AsyncPf).then(|| {
        let (not_present, ready, ..) = crate::kernel::async_pf::counts();
        (not_present, ready)
    })
}

/// The spinner's iterations since `before` and the microseconds since `begin`.
fn spinner_rate(experiment: &Experiment, before: u64, begin: u64) -> String {
    let us = elapsed_us(begin).max(1);
    let iterations = experiment
        .iterations
        .load(Ordering::Relaxed)
        .saturating_sub(before);
    format!(
        "us={us} spinner_iterations={iterations} spinner_per_s={}",
        iterations.saturating_mul(1_000_000) / us
    )
}

/// `apfbench [SIZE]`: the spinner's rate while a reader takes the first SIZE of the area
/// (all of it by default) cold, then warm, then alone.
pub fn run_apfbench(args: &[&str]) {
    let size = match args {
        [] => None,
        [size] => match super::parse_size(size).filter(|bytes| *bytes > 0) {
            Some(bytes) => Some(bytes),
            None => {
                kprintln!("apfbench: invalid size '{size}' (bytes, or with K, M, G: 8M)");
                return;
            }
        },
        _ => {
            kprintln!("usage: apfbench [SIZE] (after memtouch fill SIZE)");
            return;
        }
    };
    let Some(area) = AREA.lock().take() else {
        kprintln!("apfbench: nothing filled (memtouch fill SIZE first)");
        return;
    };
    let pages = size.map_or(area.pages, |bytes| bytes.div_ceil(PAGE_SIZE));
    if pages > area.pages {
        kprintln!(
            "apfbench: {} KiB asked for, {} KiB filled",
            kib(pages),
            kib(area.pages)
        );
        *AREA.lock() = Some(area);
        return;
    }
    let cpu = crate::kernel::smp::this_cpu();
    let experiment = Arc::new(Experiment {
        stop: AtomicBool::new(false),
        iterations: AtomicU64::new(0),
        spinner_done: Completion::new(),
        slot: IrqSafeLock::new(None),
        pass_done: Completion::new(),
    });
    let for_spinner = Arc::clone(&experiment);
    if let Err(error) = crate::kernel::sched::kthread_spawn(
        "apfbench-spin",
        SchedClass::NORMAL,
        CpuSet::single(cpu),
        move || spinner(&for_spinner),
    ) {
        kprintln!("apfbench: cannot start the spinner: {error}");
        *AREA.lock() = Some(area);
        return;
    }
    let mut area = Some(area);
    let mut checksums = Vec::new();
    let mut failure = None;
    for phase in ["cold", "warm"] {
        let Some(taken) = area.take() else { break };
        let apf_before = apf_counts();
        let before = experiment.iterations.load(Ordering::Relaxed);
        let begin = crate::kernel::time::uptime_ns();
        let (back, result) = reader_pass(&experiment, taken, pages, cpu);
        let rate = spinner_rate(&experiment, before, begin);
        area = back;
        let apf = match (apf_before, apf_counts()) {
            (Some((np0, r0)), Some((np1, r1))) => format!(
                "apf_not_present={} apf_ready={}",
                np1.saturating_sub(np0),
                r1.saturating_sub(r0)
            ),
            _ => String::from("apf=unused"),
        };
        match result {
            Ok(checksum) => {
                checksums.push(checksum);
                kprintln!("apfbench: phase={phase} pages={pages} {rate} {apf}");
            }
            Err(why) => {
                failure = Some(why);
                break;
            }
        }
    }
    if failure.is_none() {
        // The spinner alone on the CPU (the shell asleep), for reference.
        let before = experiment.iterations.load(Ordering::Relaxed);
        let begin = crate::kernel::time::uptime_ns();
        crate::kernel::time::msleep(ALONE_MS);
        kprintln!(
            "apfbench: phase=alone {}",
            spinner_rate(&experiment, before, begin)
        );
    }
    experiment.stop.store(true, Ordering::Relaxed);
    experiment.spinner_done.wait();
    if let Some(area) = area {
        *AREA.lock() = Some(area);
    }
    match (failure, checksums.as_slice()) {
        (Some(why), _) => kprintln!("apfbench: failed: {why}"),
        (None, [cold, warm]) if cold == warm => {
            kprintln!("apfbench: done checksum={cold:#018x} ok")
        }
        (None, _) => kprintln!("apfbench: failed: the two passes read different checksums"),
    }
}

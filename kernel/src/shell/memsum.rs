//! `memsum`: a memory-integrity witness for snapshot, restore and migration.
//!
//! The first `memsum` starts a kernel thread that owns a 64 KiB pattern area (16 pages) and
//! keeps rewriting it, one page every 10 ms, each rewrite with the page's next generation:
//! every 8-byte word of page `p` in generation `g` holds `mix(p, g, word)`, and each page
//! starts with a seqlock word (odd while the page is being rewritten; a page never written is
//! all zeros, generation 0). `memsum` checks every page against the formula (retrying a page
//! caught mid-rewrite) and prints `memsum: ok ...` with the generations seen and the writer's
//! count of rewrites, or `memsum: MISMATCH at page P word W ...`. A page copied wrongly, lost
//! or half-copied by a migration shows up as a mismatch; a count that stopped rising shows
//! that the writer died. `memsum stop` ends the thread. The writer sleeps between pages, so
//! the guest stays mostly idle (instruction emulators run this slowly).

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use spin::Once;

use crate::kprintln;

const PAGES: usize = 16;
const WORDS_PER_PAGE: usize = 512;
/// Pause between two page rewrites.
const PERIOD_MS: u64 = 10;

struct Area {
    words: Vec<AtomicU64>,
    generation: AtomicU64,
    stop: AtomicBool,
}

static AREA: Once<Arc<Area>> = Once::new();

fn mix(page: usize, generation: u64, word: usize) -> u64 {
    // SplitMix64 of the position and generation: any misplaced or stale word differs.
    let mut x = (page as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(generation.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(word as u64);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn writer(area: Arc<Area>) {
    let mut rewrites = 0u64;
    while !area.stop.load(Ordering::Relaxed) {
        let page = (rewrites % PAGES as u64) as usize;
        let generation = rewrites / PAGES as u64 + 1;
        let base = page * WORDS_PER_PAGE;
        // Seqlock word: odd while the page's words are being rewritten.
        area.words[base].store(generation * 2 + 1, Ordering::Release);
        for word in 1..WORDS_PER_PAGE {
            area.words[base + word].store(mix(page, generation, word), Ordering::Relaxed);
        }
        area.words[base].store(generation * 2, Ordering::Release);
        rewrites += 1;
        area.generation.store(rewrites, Ordering::Release);
        crate::kernel::time::msleep(PERIOD_MS);
    }
}

/// Checks one page: `Ok(generation)` or `Err(word)` of the first wrong word.
fn check_page(area: &Area, page: usize) -> Result<u64, (usize, u64, u64)> {
    let base = page * WORDS_PER_PAGE;
    loop {
        let seq = area.words[base].load(Ordering::Acquire);
        if seq % 2 == 1 {
            core::hint::spin_loop();
            continue;
        }
        let generation = seq / 2;
        let mut bad = None;
        for word in 1..WORDS_PER_PAGE {
            let value = area.words[base + word].load(Ordering::Relaxed);
            let expected = mix(page, generation, word);
            if value != expected && bad.is_none() {
                bad = Some((word, value, expected));
            }
        }
        core::sync::atomic::fence(Ordering::Acquire);
        if area.words[base].load(Ordering::Relaxed) != seq {
            continue; // rewritten while we read: read it again
        }
        return match bad {
            Some(bad) if generation > 0 => Err(bad),
            _ => Ok(generation),
        };
    }
}

/// `memsum [stop]`.
pub fn run(args: &[&str]) {
    if args.first() == Some(&"stop") {
        match AREA.get() {
            Some(area) => {
                area.stop.store(true, Ordering::Relaxed);
                kprintln!("memsum: writer stopping");
            }
            None => kprintln!("memsum: not running"),
        }
        return;
    }
    let area = AREA.call_once(|| {
        let area = Arc::new(Area {
            words: (0..PAGES * WORDS_PER_PAGE)
                .map(|_| AtomicU64::new(0))
                .collect(),
            // The writer's count of page rewrites.
            generation: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let for_writer = Arc::clone(&area);
        if let Err(error) = crate::kernel::sched::kthread_spawn(
            "memsum",
            lull_sched::SchedClass::NORMAL,
            lull_sched::CpuSet::ALL,
            move || writer(for_writer),
        ) {
            kprintln!("memsum: cannot start the writer: {error}");
        }
        area
    });
    let (mut lowest, mut highest, mut sum) = (u64::MAX, 0u64, 0u64);
    for page in 0..PAGES {
        match check_page(area, page) {
            Ok(generation) => {
                lowest = lowest.min(generation);
                highest = highest.max(generation);
                sum = sum.rotate_left(5) ^ mix(page, generation, 0);
            }
            Err((word, value, expected)) => {
                kprintln!(
                    "memsum: MISMATCH at page {page} word {word}: {value:#018x}, expected {expected:#018x}"
                );
                return;
            }
        }
    }
    kprintln!(
        "memsum: ok {PAGES} pages, generations {lowest}..{highest}, {} rewrites so far, sum {sum:#018x}",
        area.generation.load(Ordering::Acquire)
    );
}

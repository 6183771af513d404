//! `blk`: the block layer from the shell.
//!
//! * `blk list` — every disk: size, block size, read-only, cache, discard, driver and device.
//! * `blk read DEV OFFSET LEN` — a hex dump of any range (at most 4 KiB).
//! * `blk write DEV OFFSET LEN [BYTE]` — fills the range with BYTE, or by default with the
//!   pattern `(absolute offset / 512 * 7 + i) mod 251` per byte, which a host can recompute
//!   (a misplaced sector shows).
//! * `blk flush DEV`, `blk discard DEV OFFSET LEN`.
//! * `blk sum DEV OFFSET LEN` — SHA-256 of the range (many requests in flight), to compare
//!   with `sha256sum` on the host.
//! * `blk bench [-w] DEV [SIZE]` — sequential read (and with `-w` first a sequential write,
//!   which overwrites the range) over SIZE (default 16M) in 64 KiB requests, 32 in flight; then
//!   4 KiB random reads at queue depth 1 (IOPS, p50/p99 latency) and 32 (IOPS).
//!
//! Offsets and lengths take K/M/G suffixes; except for `read` they must be multiples of the
//! disk's block size.

use alloc::string::String;
use core::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::block::{self, Op, DEFAULT_DEPTH};
use crate::kernel::time::uptime_ns;
use crate::kprintln;

const USAGE: &str = "usage: blk list | read DEV OFFSET LEN | write DEV OFFSET LEN [BYTE] | \
                     flush DEV | discard DEV OFFSET LEN | sum DEV OFFSET LEN | \
                     bench [-w] DEV [SIZE]";
/// The most `blk read` dumps.
const MAX_DUMP: u64 = 4096;

/// The default write pattern's byte at absolute disk offset `at`.
pub fn pattern_byte(at: u64) -> u8 {
    ((at / 512 * 7 + at % 512) % 251) as u8
}

fn size_arg(text: Option<&&str>, what: &str) -> Result<u64, String> {
    let text = text.ok_or_else(|| alloc::format!("blk: missing {what}\n{USAGE}"))?;
    super::parse_size(text).ok_or_else(|| alloc::format!("blk: invalid {what} {text:?}"))
}

fn rate(bytes: u64, ns: u64) -> String {
    let kib_s = bytes.saturating_mul(1_000_000_000) / ns.max(1) / 1024;
    alloc::format!("{}.{:02} MiB/s", kib_s / 1024, (kib_s % 1024) * 100 / 1024)
}

/// Runs `blk ARGS`.
pub fn run(args: &[&str]) {
    if let Err(message) = dispatch(args) {
        kprintln!("{message}");
    }
}

fn dispatch(args: &[&str]) -> Result<(), String> {
    let Some((&sub, rest)) = args.split_first() else {
        return Err(String::from(USAGE));
    };
    if sub == "list" {
        return list();
    }
    if sub == "bench" {
        return bench(rest);
    }
    let name = rest
        .first()
        .ok_or_else(|| alloc::format!("blk {sub}: missing DEV\n{USAGE}"))?;
    let disk = block::disk(name).map_err(|e| alloc::format!("blk: {e}"))?;
    let fail = |e: block::BlockError| alloc::format!("blk {sub} {name}: {e}");
    match sub {
        "read" => {
            let offset = size_arg(rest.get(1), "OFFSET")?;
            let len = size_arg(rest.get(2), "LEN")?;
            if len > MAX_DUMP {
                return Err(alloc::format!(
                    "blk read: at most {MAX_DUMP} bytes (use `blk sum` for more)"
                ));
            }
            // Any range: the blocks around it are read, the range is shown.
            let unit = u64::from(disk.info().block_size.max(block::SECTOR as u32));
            let start = offset / unit * unit;
            let end = offset
                .checked_add(len)
                .ok_or_else(|| String::from("blk read: OFFSET + LEN overflows"))?
                .div_ceil(unit)
                * unit;
            let mut blocks = alloc::vec![0u8; (end - start) as usize];
            disk.read(start, &mut blocks).map_err(fail)?;
            let skip = (offset - start) as usize;
            let data = &blocks[skip..skip + len as usize];
            let mut text = String::new();
            for (row, chunk) in data.chunks(16).enumerate() {
                let _ = write!(text, "{:08x}:", offset + row as u64 * 16);
                for byte in chunk {
                    let _ = write!(text, " {byte:02x}");
                }
                text.push('\n');
            }
            crate::kprint!("{text}");
            Ok(())
        }
        "write" => {
            let offset = size_arg(rest.get(1), "OFFSET")?;
            let len = size_arg(rest.get(2), "LEN")?;
            let fill = match rest.get(3) {
                None => None,
                Some(text) => Some(parse_byte(text).ok_or_else(|| {
                    alloc::format!("blk write: BYTE must be 0-255 or 0x00-0xff, not {text:?}")
                })?),
            };
            let started = uptime_ns();
            disk.transfer(
                Op::Write,
                offset,
                len,
                DEFAULT_DEPTH,
                |at, buffer| {
                    let bytes = match fill {
                        Some(byte) => alloc::vec![byte; buffer.len()],
                        None => (0..buffer.len() as u64)
                            .map(|i| pattern_byte(offset + at + i))
                            .collect(),
                    };
                    buffer.write_bytes(0, &bytes);
                },
                |_, _| {},
            )
            .map_err(fail)?;
            let took = uptime_ns() - started;
            kprintln!(
                "blk: wrote {len} bytes at {offset} to {name} in {} ms ({})",
                took / 1_000_000,
                rate(len, took)
            );
            Ok(())
        }
        "flush" => {
            disk.flush().map_err(fail)?;
            kprintln!(
                "blk: flushed {name}{}",
                if disk.info().flush {
                    ""
                } else {
                    " (no write-back cache: nothing to do)"
                }
            );
            Ok(())
        }
        "discard" => {
            let offset = size_arg(rest.get(1), "OFFSET")?;
            let len = size_arg(rest.get(2), "LEN")?;
            disk.discard(offset, len).map_err(fail)?;
            kprintln!("blk: discarded {len} bytes at {offset} on {name}");
            Ok(())
        }
        "sum" => {
            let offset = size_arg(rest.get(1), "OFFSET")?;
            let len = size_arg(rest.get(2), "LEN")?;
            let mut hasher = Sha256::new();
            let started = uptime_ns();
            disk.transfer(
                Op::Read,
                offset,
                len,
                DEFAULT_DEPTH,
                |_, _| {},
                |_, buffer| {
                    let mut bytes = alloc::vec![0u8; buffer.len()];
                    buffer.read_bytes(0, &mut bytes);
                    hasher.update(&bytes);
                },
            )
            .map_err(fail)?;
            let took = uptime_ns() - started;
            let mut digest = String::new();
            for byte in hasher.finalize() {
                let _ = write!(digest, "{byte:02x}");
            }
            kprintln!(
                "blk: {name} {offset}+{len} sha256 {digest} ({} ms, {})",
                took / 1_000_000,
                rate(len, took)
            );
            Ok(())
        }
        other => Err(alloc::format!("blk: unknown subcommand {other:?}\n{USAGE}")),
    }
}

fn parse_byte(text: &str) -> Option<u8> {
    match text.strip_prefix("0x") {
        Some(hex) => u8::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn list() -> Result<(), String> {
    let disks = block::disks();
    if disks.is_empty() {
        kprintln!("blk: no disks");
        return Ok(());
    }
    let mut text =
        String::from("NAME      SIZE(B)  SECTORS  BLOCK  RO  CACHE  DISCARD  DRIVER      DEVICE\n");
    for disk in disks {
        let info = disk.info();
        let _ = writeln!(
            text,
            "{:<5} {:>11} {:>8} {:>6}  {:<2}  {:<5}  {:<7}  {:<10}  {}",
            disk.name(),
            info.sectors * block::SECTOR,
            info.sectors,
            info.block_size,
            if info.read_only { "ro" } else { "rw" },
            if info.flush { "wb" } else { "wt" },
            if info.discard { "yes" } else { "no" },
            info.driver,
            info.device
        );
    }
    crate::kprint!("{text}");
    Ok(())
}

/// A xorshift step (the random offsets of `blk bench`).
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn bench(args: &[&str]) -> Result<(), String> {
    let (write, args) = match args.split_first() {
        Some((&"-w", rest)) => (true, rest),
        _ => (false, args),
    };
    let name = args
        .first()
        .ok_or_else(|| String::from("usage: blk bench [-w] DEV [SIZE]"))?;
    let disk = block::disk(name).map_err(|e| alloc::format!("blk: {e}"))?;
    let size = match args.get(1) {
        Some(_) => size_arg(args.get(1), "SIZE")?,
        None => (16 << 20).min(disk.bytes() / 65536 * 65536),
    };
    if size < 65536 || size % 65536 != 0 {
        return Err(String::from("blk bench: SIZE must be a multiple of 64K"));
    }
    let fail = |e: block::BlockError| alloc::format!("blk bench {name}: {e}");
    let mut line = alloc::format!("blk bench {name} {size} bytes:");
    if write {
        let started = uptime_ns();
        disk.transfer(Op::Write, 0, size, DEFAULT_DEPTH, |_, _| {}, |_, _| {})
            .and_then(|()| disk.flush())
            .map_err(fail)?;
        let _ = write!(line, " seqwrite {}", rate(size, uptime_ns() - started));
    }
    let started = uptime_ns();
    disk.transfer(Op::Read, 0, size, DEFAULT_DEPTH, |_, _| {}, |_, _| {})
        .map_err(fail)?;
    let _ = write!(line, " seqread {}", rate(size, uptime_ns() - started));
    let blocks = size / 4096;
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    // Queue depth 1: each read waits for the previous one.
    const QD1: usize = 1000;
    let mut latencies = alloc::vec::Vec::with_capacity(QD1);
    let started = uptime_ns();
    for _ in 0..QD1 {
        let offset = next_random(&mut state) % blocks * 4096;
        let begun = uptime_ns();
        disk.start(Op::Read, offset, 4096, |_| {})
            .and_then(|request| request.wait())
            .map_err(fail)?;
        latencies.push(uptime_ns() - begun);
    }
    let took = uptime_ns() - started;
    latencies.sort_unstable();
    let _ = write!(
        line,
        " randread4k qd1 {} IOPS (p50 {} us, p99 {} us)",
        QD1 as u64 * 1_000_000_000 / took.max(1),
        latencies[QD1 / 2] / 1000,
        latencies[QD1 * 99 / 100] / 1000
    );
    // Queue depth 32.
    const QD32: usize = 4000;
    let mut in_flight = alloc::collections::VecDeque::new();
    let started = uptime_ns();
    for _ in 0..QD32 {
        if in_flight.len() == 32 {
            if let Some(request) = in_flight.pop_front() {
                let request: alloc::sync::Arc<block::Request> = request;
                request.wait().map_err(fail)?;
            }
        }
        let offset = next_random(&mut state) % blocks * 4096;
        in_flight.push_back(disk.start(Op::Read, offset, 4096, |_| {}).map_err(fail)?);
    }
    for request in in_flight {
        request.wait().map_err(fail)?;
    }
    let took = uptime_ns() - started;
    let _ = write!(
        line,
        " qd32 {} IOPS",
        QD32 as u64 * 1_000_000_000 / took.max(1)
    );
    kprintln!("{line}");
    Ok(())
}

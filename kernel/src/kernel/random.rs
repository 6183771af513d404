//! The kernel's entropy pool: hardware RNG drivers (virtio-rng) mix bytes in and are credited
//! with entropy, as Linux's `add_hwgenerator_randomness`. A small mixing pool, not a CSPRNG:
//! nothing in the kernel draws keys from it yet; it counts what it was fed
//! (`/proc/sys/kernel/random/entropy_avail`, bits, capped at the pool size).

use crate::fs::procfs::{self, ProcFile};
use crate::kernel::locking::IrqSafeLock;

/// Pool size in bytes (Linux's `poolsize` is in bits: 512 × 8 = 4096 there; 64 bytes here).
const POOL_BYTES: usize = 64;
const POOL_BITS: u32 = (POOL_BYTES * 8) as u32;

struct Pool {
    words: [u64; POOL_BYTES / 8],
    position: usize,
    entropy_bits: u32,
    bytes_mixed: u64,
}

static POOL: IrqSafeLock<Pool> = IrqSafeLock::new(Pool {
    words: [0; POOL_BYTES / 8],
    position: 0,
    entropy_bits: 0,
    bytes_mixed: 0,
});

/// Mixes `bytes` into the pool and credits `entropy_bits` (capped at the pool size).
/// Any context (the lock masks interrupts).
pub fn add_hwgenerator_randomness(bytes: &[u8], entropy_bits: u32) {
    let mut pool = POOL.lock();
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        let input = u64::from_le_bytes(word);
        let index = pool.position % pool.words.len();
        let next = pool.words[(index + 1) % pool.words.len()];
        // A rotate-xor-multiply step: every input bit reaches every later word.
        let mixed =
            (pool.words[index].rotate_left(23) ^ input ^ next).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        pool.words[index] = mixed;
        pool.position = pool.position.wrapping_add(1);
    }
    pool.bytes_mixed += bytes.len() as u64;
    pool.entropy_bits = pool
        .entropy_bits
        .saturating_add(entropy_bits)
        .min(POOL_BITS);
}

/// Bits of entropy credited (`entropy_avail`).
pub fn entropy_avail() -> u32 {
    POOL.lock().entropy_bits
}

/// Registers `/proc/sys/kernel/random/{entropy_avail,poolsize,bytes_mixed}`.
pub fn init() {
    procfs::register_table(&[
        ProcFile {
            path: "/proc/sys/kernel/random/entropy_avail",
            read: Some(|| alloc::format!("{}\n", entropy_avail())),
            write: None,
        },
        ProcFile {
            path: "/proc/sys/kernel/random/poolsize",
            read: Some(|| alloc::format!("{POOL_BITS}\n")),
            write: None,
        },
        ProcFile {
            path: "/proc/sys/kernel/random/bytes_mixed",
            read: Some(|| alloc::format!("{}\n", POOL.lock().bytes_mixed)),
            write: None,
        },
    ]);
}

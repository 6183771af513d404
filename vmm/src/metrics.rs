//! Host-side metrics of guest cost: KVM's binary statistics per vCPU (KVM_GET_STATS_FD) and the
//! VMM's own exit counters, turned into rates per second. This is how an operator checks that
//! an idle guest costs nothing: `halt_wakeup`/s and `exits`/s near zero.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::time::Instant;

use serde::Serialize;

/// `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: libc::c_ulong = 0xae << 8 | 0xce;
/// Size of `struct kvm_stats_header`.
const STATS_HEADER_SIZE: usize = 24;
/// Fixed part of `struct kvm_stats_desc` before the name.
const STATS_DESCRIPTOR_FIXED_SIZE: usize = 16;
/// KVM_STATS_TYPE_MASK and the histogram types we skip.
const STATS_TYPE_MASK: u32 = 0xf;
const STATS_TYPE_LINEAR_HIST: u32 = 3;
const STATS_TYPE_LOG_HIST: u32 = 4;

/// Why KVM statistics could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("KVM_GET_STATS_FD failed: {0} (kernel older than 5.14?)")]
    Open(io::Error),
    #[error("reading KVM statistics failed: {0}")]
    Read(io::Error),
    #[error("KVM statistics header is malformed: {0}")]
    Malformed(&'static str),
}

/// One scalar statistic: its name and where its value lives in the stats file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatDescriptor {
    pub name: String,
    /// Byte offset of the value from the start of the data block.
    pub offset: u32,
}

/// Reads one KVM object's binary statistics.
pub struct KvmStats {
    file: File,
    data_offset: u64,
    data_length: usize,
    descriptors: Vec<StatDescriptor>,
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        bytes.get(offset..offset + 2)?.try_into().ok()?,
    ))
}

/// Parses the header and descriptor block of a stats file (pure, so tests can feed it bytes).
/// Returns (data offset, scalar descriptors).
pub fn parse_stats_layout(
    header: &[u8],
    descriptors: &[u8],
) -> Result<(u64, Vec<StatDescriptor>), StatsError> {
    let field = |offset| u32_at(header, offset).ok_or(StatsError::Malformed("short header"));
    let name_size = field(4)? as usize;
    let count = field(8)? as usize;
    let data_offset = u64::from(field(20)?);
    let stride = STATS_DESCRIPTOR_FIXED_SIZE + name_size;
    if descriptors.len()
        < stride
            .checked_mul(count)
            .ok_or(StatsError::Malformed("overflow"))?
    {
        return Err(StatsError::Malformed(
            "descriptor block shorter than announced",
        ));
    }
    let mut result = Vec::new();
    for index in 0..count {
        let descriptor = &descriptors[index * stride..(index + 1) * stride];
        let flags = u32_at(descriptor, 0).ok_or(StatsError::Malformed("descriptor"))?;
        let size = u16_at(descriptor, 6).ok_or(StatsError::Malformed("descriptor"))?;
        let offset = u32_at(descriptor, 8).ok_or(StatsError::Malformed("descriptor"))?;
        let kind = flags & STATS_TYPE_MASK;
        if size != 1 || kind == STATS_TYPE_LINEAR_HIST || kind == STATS_TYPE_LOG_HIST {
            continue;
        }
        let name_bytes = &descriptor[STATS_DESCRIPTOR_FIXED_SIZE..];
        let name_end = name_bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(name_bytes.len());
        let name = String::from_utf8_lossy(&name_bytes[..name_end]).into_owned();
        result.push(StatDescriptor { name, offset });
    }
    Ok((data_offset, result))
}

/// The statistics file of a KVM vCPU or VM fd (KVM_GET_STATS_FD), for [`KvmStats::from_file`].
/// A vCPU's must be asked for while it is not in KVM_RUN: every vCPU ioctl waits for the vCPU's
/// mutex, which KVM_RUN holds (a halted guest's, indefinitely).
pub fn stats_file(kvm_object: &impl AsRawFd) -> Result<File, StatsError> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1.
    let fd = unsafe { libc::ioctl(kvm_object.as_raw_fd(), KVM_GET_STATS_FD as _) };
    if fd < 0 {
        return Err(StatsError::Open(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

impl KvmStats {
    /// Opens the statistics of a KVM vCPU or VM fd.
    pub fn open(kvm_object: &impl AsRawFd) -> Result<Self, StatsError> {
        Self::from_file(stats_file(kvm_object)?)
    }

    /// Reads the layout of a statistics file (plain reads: any thread, any time).
    pub fn from_file(file: File) -> Result<Self, StatsError> {
        let mut header = [0u8; STATS_HEADER_SIZE];
        file.read_exact_at(&mut header, 0)
            .map_err(StatsError::Read)?;
        let name_size = u32_at(&header, 4).unwrap_or(0) as usize;
        let count = u32_at(&header, 8).unwrap_or(0) as usize;
        let descriptor_offset = u64::from(u32_at(&header, 16).unwrap_or(0));
        let mut descriptors = vec![0u8; count * (STATS_DESCRIPTOR_FIXED_SIZE + name_size)];
        file.read_exact_at(&mut descriptors, descriptor_offset)
            .map_err(StatsError::Read)?;
        let (data_offset, descriptors) = parse_stats_layout(&header, &descriptors)?;
        let data_length = descriptors
            .iter()
            .map(|d| d.offset as usize + 8)
            .max()
            .unwrap_or(0);
        Ok(Self {
            file,
            data_offset,
            data_length,
            descriptors,
        })
    }

    /// Current value of every scalar statistic.
    pub fn read(&self) -> Result<BTreeMap<String, u64>, StatsError> {
        let mut data = vec![0u8; self.data_length];
        self.file
            .read_exact_at(&mut data, self.data_offset)
            .map_err(StatsError::Read)?;
        Ok(self
            .descriptors
            .iter()
            .map(|descriptor| {
                let at = descriptor.offset as usize;
                let value = u64::from_le_bytes(data[at..at + 8].try_into().unwrap_or([0; 8]));
                (descriptor.name.clone(), value)
            })
            .collect())
    }
}

/// One vCPU's counters at one instant.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VcpuSample {
    pub index: u8,
    /// KVM statistics (cumulative counters and instant values), empty if unavailable.
    pub kvm: BTreeMap<String, u64>,
    /// The VMM's own exit counters by reason.
    pub vmm_exits: BTreeMap<String, u64>,
}

/// Rates of one vCPU over an interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VcpuRates {
    pub index: u8,
    /// Per-second increase of each KVM counter (`halt_wakeup`, `exits`, `irq_injections`, …).
    pub kvm_per_second: BTreeMap<String, f64>,
    pub vmm_exits_per_second: BTreeMap<String, f64>,
    /// Fraction of the interval the vCPU spent halted (from `halt_wait_ns`), if KVM reports it.
    pub halted_fraction: Option<f64>,
}

/// A metrics report: cumulative values plus rates since the previous sample.
#[derive(Debug, Clone, Serialize)]
pub struct MetricsReport {
    pub uptime_seconds: f64,
    pub interval_seconds: f64,
    pub state: String,
    pub vcpus: Vec<VcpuSample>,
    pub rates: Vec<VcpuRates>,
    pub host: HostMemory,
}

/// Turns successive samples into rates.
#[derive(Default)]
pub struct RateTracker {
    previous: Option<(Instant, Vec<VcpuSample>)>,
}

fn per_second(
    now: &BTreeMap<String, u64>,
    before: Option<&BTreeMap<String, u64>>,
    seconds: f64,
) -> BTreeMap<String, f64> {
    now.iter()
        .map(|(name, &value)| {
            let old = before.and_then(|b| b.get(name)).copied().unwrap_or(0);
            (name.clone(), value.saturating_sub(old) as f64 / seconds)
        })
        .collect()
}

impl RateTracker {
    /// Rates between the previous call (or `start`, with zero counters) and `samples` at `now`.
    pub fn rates(
        &mut self,
        start: Instant,
        now: Instant,
        samples: &[VcpuSample],
    ) -> (f64, Vec<VcpuRates>) {
        let (since, previous) = match &self.previous {
            Some((at, previous)) => (*at, Some(previous.as_slice())),
            None => (start, None),
        };
        let seconds = now.duration_since(since).as_secs_f64().max(1e-9);
        let rates = samples
            .iter()
            .map(|sample| {
                let before = previous.and_then(|p| p.iter().find(|s| s.index == sample.index));
                let kvm_per_second = per_second(&sample.kvm, before.map(|b| &b.kvm), seconds);
                let halted_fraction = kvm_per_second
                    .get("halt_wait_ns")
                    .map(|ns| (ns / 1e9).min(1.0));
                VcpuRates {
                    index: sample.index,
                    kvm_per_second,
                    vmm_exits_per_second: per_second(
                        &sample.vmm_exits,
                        before.map(|b| &b.vmm_exits),
                        seconds,
                    ),
                    halted_fraction,
                }
            })
            .collect();
        self.previous = Some((now, samples.to_vec()));
        (seconds, rates)
    }
}

/// The VMM process's resident memory, split into guest RAM and everything else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HostMemory {
    pub rss_kib: u64,
    pub guest_memory_rss_kib: u64,
    /// RSS excluding guest RAM: the VMM's own footprint, shared library pages included.
    pub vmm_rss_kib: u64,
    /// Pages of that footprint private to this process (what each extra VM really costs:
    /// the binary's and libc's pages are shared between VMMs).
    pub vmm_private_kib: u64,
}

/// Sums `Rss:` of /proc/self/smaps, attributing mappings inside `guest_ranges` to the guest.
pub fn host_memory(guest_ranges: &[(usize, usize)]) -> io::Result<HostMemory> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    Ok(host_memory_from_smaps(&smaps, guest_ranges))
}

/// Pure part of [`host_memory`].
pub fn host_memory_from_smaps(smaps: &str, guest_ranges: &[(usize, usize)]) -> HostMemory {
    let mut total = 0;
    let mut guest = 0;
    let mut private = 0;
    let mut in_guest = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, _end)) = first.split_once('-') {
            if let Ok(start) = usize::from_str_radix(start, 16) {
                in_guest = guest_ranges
                    .iter()
                    .any(|&(base, length)| start >= base && start < base + length);
                continue;
            }
        }
        let kib = |rest: &str| -> u64 {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0)
        };
        if let Some(rest) = line.strip_prefix("Rss:") {
            total += kib(rest);
            if in_guest {
                guest += kib(rest);
            }
        } else if let Some(rest) = line
            .strip_prefix("Private_Clean:")
            .or_else(|| line.strip_prefix("Private_Dirty:"))
        {
            if !in_guest {
                private += kib(rest);
            }
        }
    }
    HostMemory {
        rss_kib: total,
        guest_memory_rss_kib: guest,
        vmm_rss_kib: total - guest,
        vmm_private_kib: private,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(flags: u32, size: u16, offset: u32, name: &str, name_size: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&0i16.to_le_bytes());
        bytes.extend_from_slice(&size.to_le_bytes());
        bytes.extend_from_slice(&offset.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        let mut name_bytes = name.as_bytes().to_vec();
        name_bytes.resize(name_size, 0);
        bytes.extend_from_slice(&name_bytes);
        bytes
    }

    fn header(name_size: u32, count: u32, data_offset: u32) -> Vec<u8> {
        [0, name_size, count, 24, 24, data_offset]
            .iter()
            .flat_map(|v: &u32| v.to_le_bytes())
            .collect()
    }

    #[test]
    fn scalar_stats_are_kept_and_histograms_skipped() {
        let mut descriptors = descriptor(0, 1, 0, "halt_wakeup", 48);
        descriptors.extend(descriptor(STATS_TYPE_LOG_HIST, 32, 8, "halt_poll_hist", 48));
        descriptors.extend(descriptor(0x20, 1, 264, "halt_wait_ns", 48));
        let (data_offset, parsed) = parse_stats_layout(&header(48, 3, 400), &descriptors).unwrap();
        assert_eq!(data_offset, 400);
        let names: Vec<_> = parsed.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["halt_wakeup", "halt_wait_ns"]);
        assert_eq!(parsed[1].offset, 264);
    }

    #[test]
    fn short_descriptor_block_is_an_error() {
        let descriptors = descriptor(0, 1, 0, "exits", 48);
        assert!(matches!(
            parse_stats_layout(&header(48, 2, 0), &descriptors),
            Err(StatsError::Malformed(_))
        ));
        assert!(matches!(
            parse_stats_layout(&[0; 4], &[]),
            Err(StatsError::Malformed(_))
        ));
    }

    #[test]
    fn rates_are_per_second_deltas() {
        let start = Instant::now();
        let sample = |exits: u64, wait_ns: u64| VcpuSample {
            index: 0,
            kvm: BTreeMap::from([("exits".into(), exits), ("halt_wait_ns".into(), wait_ns)]),
            vmm_exits: BTreeMap::from([("io_serial".into(), exits / 2)]),
        };
        let mut tracker = RateTracker::default();
        let t1 = start + std::time::Duration::from_secs(2);
        let (seconds, rates) = tracker.rates(start, t1, &[sample(100, 1_000_000_000)]);
        assert!((seconds - 2.0).abs() < 1e-9);
        assert_eq!(rates[0].kvm_per_second["exits"], 50.0);
        assert_eq!(rates[0].halted_fraction, Some(0.5));
        let t2 = t1 + std::time::Duration::from_secs(4);
        let (_, rates) = tracker.rates(start, t2, &[sample(140, 4_000_000_000)]);
        assert_eq!(rates[0].kvm_per_second["exits"], 10.0);
        assert_eq!(rates[0].vmm_exits_per_second["io_serial"], 5.0);
        assert_eq!(rates[0].halted_fraction, Some(0.75));
    }

    #[test]
    fn smaps_split_attributes_guest_ranges() {
        let smaps = "\
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                 512 kB
55aa00000000-55aa00010000 r-xp 00000000 08:01 1 /usr/bin/lull-vmm
Rss:                  40 kB
Private_Clean:         8 kB
Private_Dirty:         4 kB
";
        let memory = host_memory_from_smaps(smaps, &[(0x7f00_0000_0000, 0x10_0000)]);
        let expected = HostMemory {
            rss_kib: 552,
            guest_memory_rss_kib: 512,
            vmm_rss_kib: 40,
            vmm_private_kib: 12,
        };
        assert_eq!(memory, expected);
    }

    #[test]
    fn own_smaps_are_readable() {
        let memory = host_memory(&[]).unwrap();
        assert!(memory.rss_kib > 0);
        assert_eq!(memory.guest_memory_rss_kib, 0);
    }
}

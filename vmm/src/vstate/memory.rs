//! Guest RAM: anonymous memory for a fresh boot, or the snapshot's memory file mapped
//! copy-on-write (MAP_PRIVATE) on restore, so restore cost does not grow with guest size.
//!
//! Writing a memory file needs to know which pages the guest changed. The page tables say it
//! exactly (`/proc/self/pagemap`): a page of a private mapping that this process holds its own
//! copy of is anonymous (present and not file-backed, or swapped out); any other page is
//! either untouched (anonymous memory: zero) or still the snapshot file's page. Residency
//! (mincore) is not enough: a swapped-out page is not resident but holds data, and a page
//! the guest only read from the snapshot file is resident but unchanged.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vm_memory::bitmap::{AtomicBitmap, NewBitmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::layout::RamRegion;
use crate::persist::Persist;

const PAGE_SIZE: usize = 4096;

/// Guest RAM as the VMM maps it, with a dirty bitmap per region (one bit per 4 KiB page) that
/// every write made through vm-memory sets: the device threads' writes (used rings, block
/// reads, network RX buffers), which KVM's dirty log does not see because they do not go
/// through the guest's MMU. A migration source unites it with KVM's log
/// (`vstate::dirty_log::DirtyTracker`). Cost: one atomic OR per page a device write touches.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<AtomicBitmap>;
type GuestRegionMmap = vm_memory::GuestRegionMmap<AtomicBitmap>;

/// Why guest memory could not be created, saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot allocate {bytes} bytes of guest memory: {source}")]
    Allocate {
        bytes: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("cannot open memory file {path}: {source}")]
    OpenFile { path: PathBuf, source: io::Error },
    #[error(
        "memory file {path} is {found} bytes but the snapshot's guest has {expected} bytes of RAM \
         (truncated or from another snapshot)"
    )]
    FileSizeMismatch {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("cannot map memory file {path}: {source}")]
    MapFile {
        path: PathBuf,
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("guest memory regions overlap or are invalid: {0}")]
    Regions(String),
    #[error("cannot write memory file {path}: {source}")]
    WriteFile { path: PathBuf, source: io::Error },
}

/// Where the guest's RAM comes from.
#[derive(Debug)]
pub enum MemoryBacking {
    /// Fresh anonymous memory: pages the guest never wrote are zero.
    Anonymous,
    /// A snapshot's memory file, mapped privately (writes stay in this process). The file is
    /// kept open: a later snapshot copies the pages the guest did not change from it, even
    /// after its name was replaced (e.g. by a snapshot written to the same directory).
    SnapshotFile { path: PathBuf, file: File },
}

/// The guest's RAM and how it is backed.
pub struct GuestMemory {
    pub mmap: GuestMemoryMmap,
    pub regions: Vec<RamRegion>,
    pub backing: MemoryBacking,
}

/// Saved form: the regions, laid end to end in the memory file in this order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMemoryState {
    pub regions: Vec<RamRegion>,
}

impl GuestMemoryState {
    pub fn total_bytes(&self) -> u64 {
        self.regions.iter().map(|region| region.size).sum()
    }
}

/// How a memory file was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryFileReport {
    /// Apparent size of the file (= guest RAM).
    pub file_bytes: u64,
    /// Bytes written from guest memory (non-zero pages the guest changed); the rest are
    /// holes or copied.
    pub written_bytes: u64,
    /// Bytes copied from the snapshot the guest was restored from (its data extents, in the
    /// kernel, with copy_file_range); 0 for a booted guest.
    pub copied_bytes: u64,
}

impl GuestMemory {
    /// Fresh, zeroed, lazily-allocated memory for `regions`.
    pub fn anonymous(regions: &[RamRegion]) -> Result<Self, MemoryError> {
        let ranges: Vec<(GuestAddress, usize)> = regions
            .iter()
            .map(|r| (GuestAddress(r.guest_address), r.size as usize))
            .collect();
        let mmap =
            GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Allocate {
                bytes: regions.iter().map(|r| r.size).sum(),
                source,
            })?;
        Ok(Self {
            mmap,
            regions: regions.to_vec(),
            backing: MemoryBacking::Anonymous,
        })
    }

    /// Host virtual address ranges of guest RAM (for telling guest pages from VMM pages).
    pub fn host_ranges(&self) -> Vec<(usize, usize)> {
        self.mmap
            .iter()
            .map(|region| (region.as_ptr() as usize, region.len() as usize))
            .collect()
    }

    /// Which pages may hold something other than zeros, per region (one bit per page, 64 to
    /// a word, in region order): for anonymous memory the pages this process holds its own
    /// copy of (`/proc/self/pagemap`, see the module comment; others were never written and
    /// read as zero), for a snapshot-backed guest also the data extents of its memory file
    /// (holes read as zero). What a migration's first round sends; costs 8 bytes of pagemap
    /// per page and a few `lseek`s, and touches no guest page.
    pub fn touched_pages(&self) -> io::Result<Vec<Vec<u64>>> {
        let mut bitmaps = Vec::with_capacity(self.regions.len());
        let mut file_offset = 0u64;
        for region in self.mmap.iter() {
            let length = region.len() as usize;
            let pages = length.div_ceil(PAGE_SIZE);
            let mut words = vec![0u64; pages.div_ceil(64)];
            for (page, own) in own_pages(region.as_ptr() as usize, length)?
                .into_iter()
                .enumerate()
            {
                if own {
                    words[page / 64] |= 1 << (page % 64);
                }
            }
            if let MemoryBacking::SnapshotFile { file, .. } = &self.backing {
                for (start, end) in data_extents(file, file_offset, length as u64)? {
                    let first = ((start - file_offset) / PAGE_SIZE as u64) as usize;
                    let last = ((end - file_offset).div_ceil(PAGE_SIZE as u64) as usize).min(pages);
                    for page in first..last {
                        words[page / 64] |= 1 << (page % 64);
                    }
                }
            }
            bitmaps.push(words);
            file_offset += length as u64;
        }
        Ok(bitmaps)
    }

    /// Writes guest RAM to `path`: the pages the guest changed (see the module comment),
    /// over a copy of the snapshot it was restored from, if any. Zero pages become holes.
    /// Must be called with all vCPUs paused.
    ///
    /// The file is written under a temporary name and renamed into place, so writing over the
    /// snapshot this guest was restored from is safe: its RAM stays mapped from the old file,
    /// which lives on (unnamed) while mapped, and a failed write leaves the old snapshot whole.
    pub fn write_file(&self, path: &Path) -> Result<MemoryFileReport, MemoryError> {
        let write_error = |source| MemoryError::WriteFile {
            path: path.to_path_buf(),
            source,
        };
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temporary = path.with_file_name(format!(".{name}.tmp"));
        let result = self.write_file_at(&temporary);
        if result.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        let report = result.map_err(write_error)?;
        std::fs::rename(&temporary, path).map_err(write_error)?;
        Ok(report)
    }

    fn write_file_at(&self, path: &Path) -> io::Result<MemoryFileReport> {
        let file = File::create(path)?;
        let total: u64 = self.regions.iter().map(|r| r.size).sum();
        file.set_len(total)?;
        let copied = match &self.backing {
            MemoryBacking::Anonymous => 0,
            MemoryBacking::SnapshotFile { file: source, .. } => {
                copy_data_extents(source, &file, total)?
            }
        };
        let restored = matches!(self.backing, MemoryBacking::SnapshotFile { .. });
        let mut file_offset = 0u64;
        let mut written = 0u64;
        for region in self.mmap.iter() {
            let length = region.len() as usize;
            let base = region.as_ptr();
            // SAFETY: `base..base+length` is this region's live mapping, owned by `self.mmap`
            // for the duration of the borrow; vCPUs are paused, so nothing writes to it while
            // we read (the caller guarantees this), and u8 has no invalid bit patterns.
            let bytes = unsafe { std::slice::from_raw_parts(base as *const u8, length) };
            let changed = own_pages(base as usize, length)?;
            let mut page = 0;
            while page < changed.len() {
                if !changed[page] {
                    page += 1;
                    continue;
                }
                // A run of changed pages that are all zero, or all not zero.
                let zero = is_zero_page(bytes, page);
                let run_start = page;
                while page < changed.len() && changed[page] && is_zero_page(bytes, page) == zero {
                    page += 1;
                }
                let start = run_start * PAGE_SIZE;
                let end = (page * PAGE_SIZE).min(length);
                let at = file_offset + start as u64;
                if !zero {
                    file.write_all_at(&bytes[start..end], at)?;
                    written += (end - start) as u64;
                } else if restored {
                    // The copy may hold data the guest has since zeroed.
                    punch_hole(&file, at, (end - start) as u64)?;
                }
            }
            file_offset += length as u64;
        }
        Ok(MemoryFileReport {
            file_bytes: total,
            written_bytes: written,
            copied_bytes: copied,
        })
    }
}

fn is_zero_page(bytes: &[u8], page: usize) -> bool {
    let start = page * PAGE_SIZE;
    let end = (start + PAGE_SIZE).min(bytes.len());
    bytes[start..end].iter().all(|&byte| byte == 0)
}

/// `/proc/self/pagemap` entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PAGEMAP_PRESENT: u64 = 1 << 63;
const PAGEMAP_SWAPPED: u64 = 1 << 62;
const PAGEMAP_FILE_OR_SHARED_ANONYMOUS: u64 = 1 << 61;
/// Pagemap entries read per system call (512 KiB of entries = 256 MiB of guest RAM).
const PAGEMAP_BATCH: usize = 64 * 1024;

/// Which pages of the private mapping `base..base+length` this process holds its own copy
/// of: present and anonymous, or swapped out. For anonymous memory these are the pages the
/// guest (or the VMM) touched; for a private file mapping, the pages written since it was
/// mapped. Others read as zero (anonymous) or as the file.
fn own_pages(base: usize, length: usize) -> io::Result<Vec<bool>> {
    let pagemap = File::open("/proc/self/pagemap")?;
    let pages = length.div_ceil(PAGE_SIZE);
    let mut own = Vec::with_capacity(pages);
    let mut buffer = vec![0u8; PAGEMAP_BATCH * 8];
    let first_page = base / PAGE_SIZE;
    while own.len() < pages {
        let count = (pages - own.len()).min(PAGEMAP_BATCH);
        let entries = &mut buffer[..count * 8];
        pagemap.read_exact_at(entries, ((first_page + own.len()) * 8) as u64)?;
        own.extend(entries.chunks_exact(8).map(|entry| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(entry);
            let entry = u64::from_ne_bytes(raw);
            entry & PAGEMAP_SWAPPED != 0
                || (entry & PAGEMAP_PRESENT != 0 && entry & PAGEMAP_FILE_OR_SHARED_ANONYMOUS == 0)
        }));
    }
    Ok(own)
}

/// Copies the data extents of `source` (its first `length` bytes) to the same offsets of
/// `destination`, in the kernel (copy_file_range: a reflink where the file system shares
/// extents); holes stay holes. Returns the bytes copied.
fn copy_data_extents(source: &File, destination: &File, length: u64) -> io::Result<u64> {
    let seek = |offset: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
        // SAFETY: lseek on an fd we own; it only moves that fd's offset (we use pread/pwrite
        // and copy_file_range with explicit offsets, so nothing depends on it).
        let at = unsafe { libc::lseek(source.as_raw_fd(), offset as libc::off_t, whence) };
        if at < 0 {
            let error = io::Error::last_os_error();
            // ENXIO: no data at or after `offset`.
            return if error.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(error)
            };
        }
        Ok(Some(at as u64))
    };
    let mut copied = 0;
    let mut offset = 0u64;
    while offset < length {
        let Some(data) = seek(offset, libc::SEEK_DATA)? else {
            break;
        };
        if data >= length {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(length).min(length);
        let mut from = data as libc::loff_t;
        let mut to = data as libc::loff_t;
        while (from as u64) < hole {
            // SAFETY: both fds are open files we own; the offsets are valid pointers to
            // loff_t that the kernel advances; no memory of ours is written otherwise.
            let done = unsafe {
                libc::copy_file_range(
                    source.as_raw_fd(),
                    &mut from,
                    destination.as_raw_fd(),
                    &mut to,
                    (hole - from as u64) as usize,
                    0,
                )
            };
            if done < 0 {
                return Err(io::Error::last_os_error());
            }
            if done == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "snapshot memory file shrank while it was copied",
                ));
            }
            copied += done as u64;
        }
        offset = hole;
    }
    Ok(copied)
}

/// The data extents (start, end) of `file` within `offset..offset + length`, clipped to it.
pub(crate) fn data_extents(file: &File, offset: u64, length: u64) -> io::Result<Vec<(u64, u64)>> {
    let seek = |at: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
        // SAFETY: lseek on an fd we own; it only moves that fd's offset, which nothing else
        // uses (all reads and copies give explicit offsets).
        let found = unsafe { libc::lseek(file.as_raw_fd(), at as libc::off_t, whence) };
        if found < 0 {
            let error = io::Error::last_os_error();
            return if error.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(error)
            };
        }
        Ok(Some(found as u64))
    };
    let end = offset + length;
    let mut extents = Vec::new();
    let mut at = offset;
    while at < end {
        let Some(data) = seek(at, libc::SEEK_DATA)? else {
            break;
        };
        if data >= end {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        extents.push((data, hole));
        at = hole;
    }
    Ok(extents)
}

/// Makes `length` bytes at `offset` of `file` a hole (they read as zero).
fn punch_hole(file: &File, offset: u64, length: u64) -> io::Result<()> {
    // SAFETY: fallocate on an fd we own; it only changes that file's contents.
    let result = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            length as libc::off_t,
        )
    };
    if result == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(error);
    }
    // A file system without holes: write the zeros.
    let zeros = vec![0u8; PAGE_SIZE];
    let mut at = offset;
    while at < offset + length {
        let chunk = (offset + length - at).min(PAGE_SIZE as u64) as usize;
        file.write_all_at(&zeros[..chunk], at)?;
        at += chunk as u64;
    }
    Ok(())
}

impl GuestMemory {
    /// For a lazy restore: fresh anonymous memory of `state`'s regions (every page missing
    /// until placed through userfaultfd, see `crate::lazy`) backed, for later snapshots and
    /// migrations, by the snapshot file at `path` (pages not placed yet are the file's).
    /// Returns the memory and a second handle on the file to read pages from.
    pub fn restore_lazy(
        path: PathBuf,
        state: &GuestMemoryState,
    ) -> Result<(Self, File), MemoryError> {
        let open_error = |source| MemoryError::OpenFile {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(open_error)?;
        let found = file.metadata().map_err(open_error)?.len();
        let reader = file.try_clone().map_err(open_error)?;
        let expected = state.total_bytes();
        if found != expected {
            return Err(MemoryError::FileSizeMismatch {
                path,
                expected,
                found,
            });
        }
        let mut memory = Self::anonymous(&state.regions)?;
        memory.backing = MemoryBacking::SnapshotFile { path, file };
        Ok((memory, reader))
    }
}

impl GuestMemory {
    /// Drops the contents of `length` bytes at guest address `address` (page aligned, inside
    /// one region): fresh anonymous memory reads zero there again, and memory registered with
    /// userfaultfd faults there again (post-copy: pages the source still has newer copies of).
    pub fn discard(&self, address: GuestAddress, length: usize) -> io::Result<()> {
        let slice = self
            .mmap
            .get_slice(address, length)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error.to_string()))?;
        let host = slice.ptr_guard_mut().as_ptr();
        // SAFETY: `host..host + length` lies inside one live region of guest memory (checked
        // by `get_slice`), a private anonymous mapping owned by `self.mmap`. MADV_DONTNEED only
        // replaces its pages by zero (or missing) pages; nothing in this process holds a Rust
        // reference into guest memory (it is accessed through volatile slices).
        let result = unsafe { libc::madvise(host.cast(), length, libc::MADV_DONTNEED) };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Saving lists the regions (the bytes go to the memory file through
/// [`GuestMemory::write_file`]); restoring maps the memory file copy-on-write.
impl Persist for GuestMemory {
    type State = GuestMemoryState;
    type RestoreArgs = PathBuf;
    type Error = MemoryError;

    fn save(&self) -> Result<GuestMemoryState, MemoryError> {
        Ok(GuestMemoryState {
            regions: self.regions.clone(),
        })
    }

    fn restore(path: PathBuf, state: &GuestMemoryState) -> Result<Self, MemoryError> {
        let file = File::open(&path).map_err(|source| MemoryError::OpenFile {
            path: path.clone(),
            source,
        })?;
        let found = file
            .metadata()
            .map_err(|source| MemoryError::OpenFile {
                path: path.clone(),
                source,
            })?
            .len();
        let expected = state.total_bytes();
        if found != expected {
            return Err(MemoryError::FileSizeMismatch {
                path,
                expected,
                found,
            });
        }
        let mut regions = Vec::with_capacity(state.regions.len());
        let mut offset = 0u64;
        for region in &state.regions {
            let file_offset = FileOffset::new(
                file.try_clone().map_err(|source| MemoryError::OpenFile {
                    path: path.clone(),
                    source,
                })?,
                offset,
            );
            let mapping = MmapRegionBuilder::new_with_bitmap(
                region.size as usize,
                AtomicBitmap::with_len(region.size as usize),
            )
            .with_file_offset(file_offset)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|source| MemoryError::MapFile {
                path: path.clone(),
                source,
            })?;
            let guest_region = GuestRegionMmap::new(mapping, GuestAddress(region.guest_address))
                .ok_or_else(|| {
                    MemoryError::Regions(format!("region {region:?} wraps the address space"))
                })?;
            regions.push(guest_region);
            offset += region.size;
        }
        let mmap = GuestMemoryMmap::from_regions(regions)
            .map_err(|e| MemoryError::Regions(e.to_string()))?;
        Ok(Self {
            mmap,
            regions: state.regions.clone(),
            backing: MemoryBacking::SnapshotFile { path, file },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn temp_dir(name: &str) -> tempfile::TempDir {
        crate::testing::scratch_dir(&format!("memory-{name}"))
    }

    #[test]
    fn memory_file_round_trips_and_is_sparse() {
        let regions = [RamRegion {
            guest_address: 0,
            size: 8 << 20,
        }];
        let memory = GuestMemory::anonymous(&regions).unwrap();
        memory
            .mmap
            .write_slice(b"hello", GuestAddress(0x1234))
            .unwrap();
        memory
            .mmap
            .write_obj(0xdead_beefu32, GuestAddress(0x7f_fff0))
            .unwrap();
        let scratch = temp_dir("roundtrip");
        let path = scratch.path().join("memory");
        let report = memory.write_file(&path).unwrap();
        assert_eq!(report.file_bytes, 8 << 20);
        assert_eq!(
            report.written_bytes,
            2 * PAGE_SIZE as u64,
            "only the two touched pages"
        );

        let restored = GuestMemory::restore(path.clone(), &memory.save().unwrap()).unwrap();
        let mut hello = [0u8; 5];
        restored
            .mmap
            .read_slice(&mut hello, GuestAddress(0x1234))
            .unwrap();
        assert_eq!(&hello, b"hello");
        assert_eq!(
            restored
                .mmap
                .read_obj::<u32>(GuestAddress(0x7f_fff0))
                .unwrap(),
            0xdead_beef
        );
        // Copy-on-write: writing to the restored guest does not change the file.
        restored
            .mmap
            .write_slice(b"HELLO", GuestAddress(0x1234))
            .unwrap();
        let again = GuestMemory::restore(path.clone(), &memory.save().unwrap()).unwrap();
        again
            .mmap
            .read_slice(&mut hello, GuestAddress(0x1234))
            .unwrap();
        assert_eq!(&hello, b"hello");
        // A restored guest can be snapshotted again.
        let second = path.with_file_name("memory2");
        restored.write_file(&second).unwrap();
        let third = GuestMemory::restore(second, &memory.save().unwrap()).unwrap();
        third
            .mmap
            .read_slice(&mut hello, GuestAddress(0x1234))
            .unwrap();
        assert_eq!(&hello, b"HELLO");
    }

    /// Regression test: a restored guest's memory file must record exactly what changed since
    /// the restore (written, zeroed, never-before-touched pages) and keep the rest, also when
    /// it is written over the file the memory is mapped from.
    #[test]
    fn snapshot_of_restored_memory_keeps_changes_and_the_rest() {
        let regions = [RamRegion {
            guest_address: 0,
            size: 8 << 20,
        }];
        let memory = GuestMemory::anonymous(&regions).unwrap();
        let page = |n: u64| GuestAddress(n * PAGE_SIZE as u64);
        for n in [1, 2, 3, 4] {
            memory.mmap.write_obj(0x1000_u64 + n, page(n)).unwrap();
        }
        let scratch = temp_dir("restored");
        let path = scratch.path().join("memory");
        let state = memory.save().unwrap();
        memory.write_file(&path).unwrap();

        let restored = GuestMemory::restore(path.clone(), &state).unwrap();
        // Page 1 is only read, page 2 rewritten, page 3 zeroed, page 100 first written now.
        assert_eq!(restored.mmap.read_obj::<u64>(page(1)).unwrap(), 0x1001);
        restored.mmap.write_obj(0x2222_u64, page(2)).unwrap();
        restored.mmap.write_obj(0_u64, page(3)).unwrap();
        restored.mmap.write_obj(0x6464_u64, page(100)).unwrap();
        // Over the very file the restored memory is mapped from.
        let report = restored.write_file(&path).unwrap();
        assert_eq!(
            report.written_bytes,
            2 * PAGE_SIZE as u64,
            "pages 2 and 100 only: unchanged pages are copied, not read from guest memory"
        );
        assert!(report.copied_bytes >= 4 * PAGE_SIZE as u64, "{report:?}");
        // The restored memory still reads its own view (its old file lives on while mapped).
        assert_eq!(restored.mmap.read_obj::<u64>(page(4)).unwrap(), 0x1004);

        let again = GuestMemory::restore(path, &state).unwrap();
        let read = |n| again.mmap.read_obj::<u64>(page(n)).unwrap();
        assert_eq!(
            [read(1), read(2), read(3), read(4), read(100), read(5)],
            [0x1001, 0x2222, 0, 0x1004, 0x6464, 0]
        );
    }

    #[test]
    fn own_pages_are_those_written() {
        let regions = [RamRegion {
            guest_address: 0,
            size: 1 << 20,
        }];
        let memory = GuestMemory::anonymous(&regions).unwrap();
        memory.mmap.write_obj(1u8, GuestAddress(5 * 4096)).unwrap();
        let (base, length) = memory.host_ranges()[0];
        let own = own_pages(base, length).unwrap();
        assert_eq!(own.len(), 256);
        assert_eq!(
            own.iter()
                .enumerate()
                .filter(|(_, &o)| o)
                .map(|(i, _)| i)
                .collect::<Vec<_>>(),
            vec![5]
        );
    }

    #[test]
    fn touched_pages_are_those_written_or_in_the_snapshot_file() {
        let regions = [RamRegion {
            guest_address: 0,
            size: 1 << 20,
        }];
        let memory = GuestMemory::anonymous(&regions).unwrap();
        let page = |n: u64| GuestAddress(n * PAGE_SIZE as u64);
        memory.mmap.write_obj(1u8, page(3)).unwrap();
        memory.mmap.write_obj(1u8, page(200)).unwrap();
        let bits = |bitmaps: Vec<Vec<u64>>| -> Vec<usize> {
            (0..256)
                .filter(|p| bitmaps[0][p / 64] >> (p % 64) & 1 == 1)
                .collect()
        };
        assert_eq!(bits(memory.touched_pages().unwrap()), vec![3, 200]);
        // Restored from a file: the file's data pages count even if never touched since.
        let scratch = temp_dir("touched");
        let path = scratch.path().join("memory");
        memory.write_file(&path).unwrap();
        let restored = GuestMemory::restore(path, &memory.save().unwrap()).unwrap();
        restored.mmap.write_obj(1u8, page(100)).unwrap();
        let touched = bits(restored.touched_pages().unwrap());
        for expected in [3, 100, 200] {
            assert!(touched.contains(&expected), "{touched:?}");
        }
        // File systems allocate data in blocks, possibly bigger than a page, but never all.
        assert!(touched.len() < 64, "{touched:?}");
    }

    #[test]
    fn truncated_memory_file_is_a_size_error() {
        let regions = [RamRegion {
            guest_address: 0,
            size: 4 << 20,
        }];
        let memory = GuestMemory::anonymous(&regions).unwrap();
        let scratch = temp_dir("truncated");
        let path = scratch.path().join("memory");
        memory.write_file(&path).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        match GuestMemory::restore(path, &memory.save().unwrap()) {
            Err(MemoryError::FileSizeMismatch {
                expected, found, ..
            }) => {
                assert_eq!((expected, found), (4 << 20, 1 << 20));
            }
            other => panic!("expected a size mismatch, got {:?}", other.err()),
        }
    }

    #[test]
    fn missing_memory_file_is_an_open_error() {
        let state = GuestMemoryState {
            regions: vec![RamRegion {
                guest_address: 0,
                size: 1 << 20,
            }],
        };
        assert!(matches!(
            GuestMemory::restore(PathBuf::from("/nonexistent/lull/memory"), &state),
            Err(MemoryError::OpenFile { .. })
        ));
    }
}

//! Guest RAM: anonymous memory for a fresh boot, or the snapshot's memory file mapped
//! copy-on-write (MAP_PRIVATE) on restore, so restore cost does not grow with guest size.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use crate::arch::layout::RamRegion;
use crate::persist::Persist;

const PAGE_SIZE: usize = 4096;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryBacking {
    /// Fresh anonymous memory: untouched pages are known to be zero and not resident.
    Anonymous,
    /// A snapshot's memory file, mapped privately (writes stay in this process).
    SnapshotFile(PathBuf),
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
    /// Bytes actually written (non-zero pages); the rest are holes.
    pub written_bytes: u64,
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

    /// Writes guest RAM to `path`, skipping zero pages (they become holes) and, for anonymous
    /// memory, pages that were never touched. Must be called with all vCPUs paused.
    pub fn write_file(&self, path: &Path) -> Result<MemoryFileReport, MemoryError> {
        let write_error = |source| MemoryError::WriteFile {
            path: path.to_path_buf(),
            source,
        };
        let file = File::create(path).map_err(write_error)?;
        let total: u64 = self.regions.iter().map(|r| r.size).sum();
        file.set_len(total).map_err(write_error)?;
        let mut file_offset = 0u64;
        let mut written = 0u64;
        for region in self.mmap.iter() {
            let length = region.len() as usize;
            let base = region.as_ptr();
            // SAFETY: `base..base+length` is this region's live mapping, owned by `self.mmap`
            // for the duration of the borrow; vCPUs are paused, so nothing writes to it while
            // we read (the caller guarantees this), and u8 has no invalid bit patterns.
            let bytes = unsafe { std::slice::from_raw_parts(base as *const u8, length) };
            let resident = match self.backing {
                MemoryBacking::Anonymous => resident_pages(base, length).map_err(write_error)?,
                MemoryBacking::SnapshotFile(_) => vec![true; length.div_ceil(PAGE_SIZE)],
            };
            let mut page = 0;
            while page < resident.len() {
                // Collect a run of resident, non-zero pages and write it with one pwrite.
                let run_start = page;
                while page < resident.len() && resident[page] && !is_zero_page(bytes, page) {
                    page += 1;
                }
                if page > run_start {
                    let start = run_start * PAGE_SIZE;
                    let end = (page * PAGE_SIZE).min(length);
                    file.write_all_at(&bytes[start..end], file_offset + start as u64)
                        .map_err(write_error)?;
                    written += (end - start) as u64;
                } else {
                    page += 1;
                }
            }
            file_offset += length as u64;
        }
        Ok(MemoryFileReport {
            file_bytes: total,
            written_bytes: written,
        })
    }
}

fn is_zero_page(bytes: &[u8], page: usize) -> bool {
    let start = page * PAGE_SIZE;
    let end = (start + PAGE_SIZE).min(bytes.len());
    bytes[start..end].iter().all(|&byte| byte == 0)
}

/// Which pages of `base..base+length` are resident (mincore). Never-touched anonymous pages
/// are not, and read as zero, so they need not be read or written.
fn resident_pages(base: *mut u8, length: usize) -> io::Result<Vec<bool>> {
    let pages = length.div_ceil(PAGE_SIZE);
    let mut vector = vec![0u8; pages];
    // SAFETY: `base` is page-aligned (mmap result) and `length` bytes are mapped; `vector`
    // has one byte per page as mincore(2) requires.
    let result = unsafe { libc::mincore(base.cast(), length, vector.as_mut_ptr()) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(vector.into_iter().map(|flags| flags & 1 != 0).collect())
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
            let mapping = MmapRegionBuilder::new(region.size as usize)
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
            backing: MemoryBacking::SnapshotFile(path),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("lull-vmm-memory-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
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
        let path = temp_dir("roundtrip").join("memory");
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

    #[test]
    fn truncated_memory_file_is_a_size_error() {
        let regions = [RamRegion {
            guest_address: 0,
            size: 4 << 20,
        }];
        let memory = GuestMemory::anonymous(&regions).unwrap();
        let path = temp_dir("truncated").join("memory");
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

//! The receiving side: `lull-vmm receive --listen URL` takes one migration stream, builds the
//! VM from it, runs it and confirms; or refuses it, saying why, and exits non-zero.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use lull_migration_stream::{Event, Frame, Limits, Page, StreamError, StreamKind, StreamReader};
use vm_memory::{Bytes, GuestAddress};

use super::{postcopy, Connection, Listener, MigrationUrl, Reply};
use crate::arch::layout;
use crate::bench::clock_monotonic_ns;
use crate::cli::{run_started, RunOptions};
use crate::console::StdoutWriter;
use crate::devices::acpi_pm::AcpiPmState;
use crate::devices::serial::SerialConsoleState;
use crate::devices::virtio::VirtioDeviceState;
use crate::machine::{IncomingVm, Machine, MachineError, Started};
use crate::snapshot::SnapshotState;
use crate::vstate::hypercall::PvHypercalls;
use crate::vstate::memory::GuestMemoryState;
use crate::vstate::vcpu::VcpuState;
use crate::vstate::vm::VmState;

const PAGE_SIZE: u64 = 4096;
/// A source that sends nothing for this long is given up on.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// After a refusal, how long the rest of the source's stream is read and dropped so that the
/// refusal reaches it before the connection closes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an incoming migration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("{0}")]
    Stream(#[from] StreamError),
    #[error("the source cancelled the migration: {0}")]
    Cancelled(String),
    #[error("the stream carries {0}, which this lull-vmm does not receive")]
    Unsupported(&'static str),
    #[error("post-copy: {0}")]
    Postcopy(String),
    #[error("the source's guest has {0}; this lull-vmm takes 4 KiB pages and 1 to 255 vCPUs")]
    Guest(String),
    #[error("the {name} state does not decode ({source}): the source is an incompatible lull-vmm")]
    Decode {
        name: String,
        source: postcard::Error,
    },
    #[error("unknown device state '{0}' in the stream (an incompatible lull-vmm)")]
    UnknownDevice(String),
    #[error("the {0} state arrived twice")]
    Duplicate(String),
    #[error("the stream ended without the {0} state")]
    Missing(&'static str),
    #[error("the source's memory regions {found:?} are not those of a guest of this size here {expected:?}")]
    Regions {
        found: Vec<layout::RamRegion>,
        expected: Vec<layout::RamRegion>,
    },
    #[error("writing guest memory: {0}")]
    Memory(String),
    #[error(transparent)]
    Machine(#[from] MachineError),
}

/// `lull-vmm receive`: listen, take one migration, run the guest (returns its exit status)
/// or refuse it (1).
pub fn main(url: &MigrationUrl, options: &RunOptions, main_entered: Instant) -> i32 {
    let listener = match Listener::bind(url) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("lull-vmm: cannot listen on {url}: {error}");
            return 1;
        }
    };
    eprintln!("lull-vmm: waiting for a migration on {url}");
    let connection = match listener.accept() {
        Ok(connection) => connection,
        Err(error) => {
            eprintln!("lull-vmm: cannot accept a migration on {url}: {error}");
            return 1;
        }
    };
    drop(listener);
    let mut answer = match connection.try_clone() {
        Ok(answer) => answer,
        Err(error) => {
            eprintln!("lull-vmm: migration connection: {error}");
            return 1;
        }
    };
    let drain = connection.try_clone().ok();
    let mut prepared_answer = answer.try_clone().ok();
    let on_prepared = move || {
        // Best effort: a source that does not hear it waits a second and goes on.
        if let Some(answer) = prepared_answer.as_mut() {
            let _ = Reply::Prepared.write_to(answer);
        }
    };
    match receive(
        connection,
        options.pv_hypercalls,
        !options.no_async_pf,
        options.timing,
        on_prepared,
    ) {
        Ok(Received { started, postcopy }) => {
            let running = Reply::Running {
                vcpus_running_monotonic_ns: clock_monotonic_ns(started.vcpus_running_at),
            };
            if let Err(error) = running.write_to(&mut answer) {
                // The source resumes its own copy when it hears nothing: this one must stop.
                eprintln!(
                    "lull-vmm: cannot confirm to the source ({error}); stopping this copy of the guest"
                );
                if postcopy.is_some() {
                    // Its pages are on the source: nothing can be done without it.
                    std::process::exit(1);
                }
                return 1;
            }
            match postcopy {
                Some(requests) => {
                    eprintln!(
                        "lull-vmm: post-copy migration: the guest runs here; its remaining pages \
                         come from the source"
                    );
                    requests.start(answer, started.vcpus_running_at);
                }
                None => eprintln!("lull-vmm: migration received; the guest runs here"),
            }
            run_started(started, options, main_entered)
        }
        Err(error) => {
            eprintln!("lull-vmm: migration refused: {error}");
            let _ = Reply::Failed {
                error: error.to_string(),
            }
            .write_to(&mut answer);
            answer.shutdown_write();
            if let Some(rest) = drain {
                drain_until_closed(rest);
            }
            1
        }
    }
}

/// Reads and drops what the source still sends until it closes (it does once it has read
/// the refusal) or [`DRAIN_TIMEOUT`] passes.
fn drain_until_closed(mut connection: Connection) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let _ = connection.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = vec![0u8; 64 << 10];
    while Instant::now() < deadline {
        match connection.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

/// Where stream pages land: per region, its first stream page and guest address.
pub(super) struct PageMap {
    starts: Vec<(u64, u64, u64)>,
}

impl PageMap {
    pub(super) fn new(regions: &[layout::RamRegion]) -> Self {
        let mut start = 0;
        let starts = regions
            .iter()
            .map(|region| {
                let entry = (start, region.size / PAGE_SIZE, region.guest_address);
                start += region.size / PAGE_SIZE;
                entry
            })
            .collect();
        Self { starts }
    }

    pub(super) fn address(&self, page: u64) -> Option<GuestAddress> {
        self.starts
            .iter()
            .find(|(first, count, _)| page >= *first && page < first + count)
            .map(|(first, _, base)| GuestAddress(base + (page - first) * PAGE_SIZE))
    }
}

/// The state pieces as they arrive.
#[derive(Default)]
pub(super) struct Parts {
    memory: Option<GuestMemoryState>,
    vm: Option<VmState>,
    serial: Option<SerialConsoleState>,
    acpi_pm: Option<AcpiPmState>,
    virtio: Option<Vec<VirtioDeviceState>>,
    vcpus: Vec<Option<VcpuState>>,
    /// Post-copy: the pages still to come, as runs (first stream page, count).
    pub(super) postcopy_pages: Option<Vec<(u64, u64)>>,
}

fn decode<T: serde::de::DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T, ReceiveError> {
    postcard::from_bytes(bytes).map_err(|source| ReceiveError::Decode {
        name: name.to_string(),
        source,
    })
}

fn put<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), ReceiveError> {
    if slot.replace(value).is_some() {
        return Err(ReceiveError::Duplicate(name.to_string()));
    }
    Ok(())
}

impl Parts {
    fn device(&mut self, name: &str, bytes: &[u8]) -> Result<(), ReceiveError> {
        match name {
            "memory" => put(&mut self.memory, name, decode(name, bytes)?),
            "vm" => put(&mut self.vm, name, decode(name, bytes)?),
            "serial" => put(&mut self.serial, name, decode(name, bytes)?),
            "acpi_pm" => put(&mut self.acpi_pm, name, decode(name, bytes)?),
            "virtio" => put(&mut self.virtio, name, decode(name, bytes)?),
            "postcopy_pages" => put(&mut self.postcopy_pages, name, decode(name, bytes)?),
            other => Err(ReceiveError::UnknownDevice(other.to_string())),
        }
    }

    pub(super) fn into_state(
        self,
        regions: &[layout::RamRegion],
    ) -> Result<SnapshotState, ReceiveError> {
        let memory = self.memory.ok_or(ReceiveError::Missing("memory"))?;
        if memory.regions != regions {
            return Err(ReceiveError::Regions {
                found: memory.regions,
                expected: regions.to_vec(),
            });
        }
        Ok(SnapshotState {
            vmm_version: String::new(),
            memory,
            vm: self.vm.ok_or(ReceiveError::Missing("vm"))?,
            serial: self.serial.ok_or(ReceiveError::Missing("serial"))?,
            acpi_pm: self.acpi_pm.ok_or(ReceiveError::Missing("acpi_pm"))?,
            virtio: self.virtio.ok_or(ReceiveError::Missing("virtio"))?,
            vcpus: self
                .vcpus
                .into_iter()
                .map(|vcpu| vcpu.ok_or(ReceiveError::Missing("vcpu")))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// The guest being received, once the header has arrived.
struct Incoming {
    vm: IncomingVm,
    regions: Vec<layout::RamRegion>,
    pages: PageMap,
    /// Pages written with data so far: a zero page over one of them must clear it.
    written: Vec<u64>,
    /// Pages this process wrote at all (data, or zeros over data): present in memory, so
    /// post-copy must drop them if the source still has a newer version.
    present: Vec<u64>,
}

impl Incoming {
    fn apply(&mut self, run: &lull_migration_stream::PageRun) -> Result<(), ReceiveError> {
        let memory = &self.vm.memory().mmap;
        for (page, content) in run.pages() {
            let address = self
                .pages
                .address(page)
                .ok_or_else(|| ReceiveError::Memory(format!("page {page} is outside guest RAM")))?;
            let (word, bit) = ((page / 64) as usize, page % 64);
            let result = match content {
                Page::Data(bytes) => {
                    self.written[word] |= 1 << bit;
                    self.present[word] |= 1 << bit;
                    memory.write_slice(bytes, address)
                }
                // Fresh memory is zero: only a page that had data needs clearing.
                Page::Zero if self.written[word] >> bit & 1 == 1 => {
                    self.written[word] &= !(1 << bit);
                    memory.write_slice(&[0u8; PAGE_SIZE as usize], address)
                }
                Page::Zero => Ok(()),
            };
            result.map_err(|error| ReceiveError::Memory(error.to_string()))?;
        }
        Ok(())
    }
}

/// A received guest, running; in post-copy, with the page-request side still to start.
pub struct Received {
    pub started: Started,
    pub postcopy: Option<postcopy::RequestWriter>,
}

/// Reads the whole stream from `connection` into a new VM and starts it; in post-copy, reads
/// up to the switch, starts the guest with its missing pages served through userfaultfd, and
/// leaves a thread reading the rest.
pub fn receive(
    connection: Connection,
    pv: PvHypercalls,
    async_pf: bool,
    timing: bool,
    mut on_prepared: impl FnMut(),
) -> Result<Received, ReceiveError> {
    let _ = connection.set_read_timeout(Some(READ_TIMEOUT));
    let mut reader = StreamReader::new(connection, StreamKind::Migration, Limits::default());
    let mut incoming: Option<Incoming> = None;
    let mut parts = Parts::default();
    loop {
        let Some(event) = reader.next_event()? else {
            // `next_event` reports a stream that ends early as an error; End returns below.
            return Err(ReceiveError::Stream(StreamError::EndMissing { frames: 0 }));
        };
        match event {
            Event::Header(info) => {
                if info.page_size != PAGE_SIZE as u32 || info.vcpu_count > 255 {
                    return Err(ReceiveError::Guest(format!(
                        "{}-byte pages and {} vCPUs",
                        info.page_size, info.vcpu_count
                    )));
                }
                let regions = layout::ram_regions(info.memory_bytes);
                let total_pages = info.memory_bytes / PAGE_SIZE;
                let vm = Machine::prepare_incoming(&regions, info.vcpu_count as u8, pv)?;
                parts.vcpus = (0..info.vcpu_count).map(|_| None).collect();
                on_prepared();
                incoming = Some(Incoming {
                    vm,
                    pages: PageMap::new(&regions),
                    regions,
                    written: vec![0; total_pages.div_ceil(64) as usize],
                    present: vec![0; total_pages.div_ceil(64) as usize],
                });
            }
            Event::Frame(frame) => {
                let Some(target) = incoming.as_mut() else {
                    // The decoder delivers frames only after a header.
                    return Err(ReceiveError::Stream(StreamError::AfterError));
                };
                match frame {
                    Frame::MemoryPages(run) => target.apply(&run)?,
                    Frame::DirtyRoundEnd { .. } => {}
                    Frame::DeviceState { name, bytes } => parts.device(&name, &bytes)?,
                    Frame::VcpuState { index, bytes } => {
                        let state = decode("vcpu", &bytes)?;
                        // The decoder checked the index and that it comes once.
                        if let Some(slot) = parts.vcpus.get_mut(index as usize) {
                            *slot = Some(state);
                        }
                    }
                    Frame::End { .. } => break,
                    Frame::Cancel { reason } => return Err(ReceiveError::Cancelled(reason)),
                    Frame::PostcopySwitch { pages_left } => {
                        let Some(incoming) = incoming else {
                            return Err(ReceiveError::Stream(StreamError::AfterError));
                        };
                        let info = reader
                            .decoder()
                            .info()
                            .cloned()
                            .ok_or_else(|| ReceiveError::Postcopy("no stream header".into()))?;
                        return postcopy::switch(
                            incoming.vm,
                            &incoming.regions,
                            &incoming.present,
                            parts,
                            reader,
                            postcopy::Settings {
                                info,
                                pages_left,
                                async_pf,
                                timing,
                            },
                        );
                    }
                    Frame::PageRequest { .. } => {
                        return Err(ReceiveError::Unsupported("page requests"))
                    }
                }
            }
        }
    }
    let Some(incoming) = incoming else {
        return Err(ReceiveError::Stream(StreamError::AfterError));
    };
    if parts.postcopy_pages.is_some() {
        return Err(ReceiveError::Postcopy(
            "a list of post-copy pages but no switch".into(),
        ));
    }
    let state = parts.into_state(&incoming.regions)?;
    Ok(Received {
        started: Machine::restore_incoming(incoming.vm, &state, Box::new(StdoutWriter))?,
        postcopy: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_pages_map_across_the_mmio_hole() {
        let regions = layout::ram_regions(4 << 30);
        assert_eq!(regions.len(), 2, "{regions:?}");
        let map = PageMap::new(&regions);
        let low_pages = regions[0].size / PAGE_SIZE;
        assert_eq!(map.address(0), Some(GuestAddress(0)));
        assert_eq!(
            map.address(low_pages - 1),
            Some(GuestAddress(regions[0].size - PAGE_SIZE))
        );
        assert_eq!(map.address(low_pages), Some(GuestAddress(layout::FOUR_GIB)));
        assert_eq!(map.address((4 << 30) / PAGE_SIZE), None);
    }

    #[test]
    fn state_parts_are_checked_for_duplicates_unknowns_and_gaps() {
        let mut parts = Parts::default();
        let regions = layout::ram_regions(64 << 20);
        let memory = postcard::to_allocvec(&GuestMemoryState {
            regions: regions.clone(),
        })
        .unwrap();
        parts.device("memory", &memory).unwrap();
        assert!(matches!(
            parts.device("memory", &memory),
            Err(ReceiveError::Duplicate(_))
        ));
        assert!(matches!(
            parts.device("gpu", b""),
            Err(ReceiveError::UnknownDevice(_))
        ));
        assert!(matches!(
            parts.device("vm", b"\x01"),
            Err(ReceiveError::Decode { .. })
        ));
        let error = Parts {
            memory: Some(GuestMemoryState {
                regions: regions.clone(),
            }),
            ..Default::default()
        }
        .into_state(&regions)
        .unwrap_err();
        assert!(matches!(error, ReceiveError::Missing("vm")), "{error}");
        let error = Parts {
            memory: Some(GuestMemoryState {
                regions: layout::ram_regions(32 << 20),
            }),
            ..Default::default()
        }
        .into_state(&regions)
        .unwrap_err();
        assert!(matches!(error, ReceiveError::Regions { .. }), "{error}");
    }
}

//! userfaultfd(2), as lazy restore and post-copy use it: guest RAM (private anonymous memory)
//! is registered for missing-page faults; a fault by a vCPU (inside KVM_RUN, where KVM touches
//! the page for the guest) or by any VMM thread blocks until a handler places the page with
//! `UFFDIO_COPY` or `UFFDIO_ZEROPAGE`.
//!
//! Raw ioctls rather than the `userfaultfd` crate: its `-sys` crate generates its bindings with
//! bindgen at build time, which needs libclang on every machine that builds lull-vmm (this
//! project's build machines and CI have none). The ABI used here is small and stable: the
//! structures of `<linux/userfaultfd.h>` below.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use vmm_sys_util::ioctl::ioctl_with_mut_ref;

const PAGE_SIZE: u64 = 4096;

const UFFD_API: u64 = 0xaa;
/// `uffd_msg.arg.pagefault.feat.ptid` is filled in (the faulting thread's id).
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1;
const USERFAULTFD_IOC_NEW: libc::c_ulong = 0xaa00; // _IO(0xAA, 0x00)

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// `struct uffd_msg` is 32 bytes, packed: event (u8) at 0; for a page fault, flags (u64) at
/// 8, address (u64) at 16, the thread id (u32) at 24.
const UFFD_MSG_BYTES: usize = 32;

vmm_sys_util::ioctl_iowr_nr!(UFFDIO_API, 0xaa, 0x3f, UffdioApi);
vmm_sys_util::ioctl_iowr_nr!(UFFDIO_REGISTER, 0xaa, 0x00, UffdioRegister);
vmm_sys_util::ioctl_ior_nr!(UFFDIO_UNREGISTER, 0xaa, 0x01, UffdioRange);
vmm_sys_util::ioctl_ior_nr!(UFFDIO_WAKE, 0xaa, 0x02, UffdioRange);
vmm_sys_util::ioctl_iowr_nr!(UFFDIO_COPY, 0xaa, 0x03, UffdioCopy);
vmm_sys_util::ioctl_iowr_nr!(UFFDIO_ZEROPAGE, 0xaa, 0x04, UffdioZeropage);

/// A missing-page fault on registered memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Host virtual address (page-aligned by the kernel unless EXACT_ADDRESS was asked for).
    pub address: u64,
    pub write: bool,
    /// The faulting thread (0 without UFFD_FEATURE_THREAD_ID).
    pub thread_id: u32,
}

/// A userfaultfd with its API handshake done. Non-blocking: [`Uffd::read_faults`] returns
/// what is queued; [`Uffd::wait`] polls.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    /// The features the kernel granted.
    pub features: u64,
}

fn last_error<T>() -> io::Result<T> {
    Err(io::Error::last_os_error())
}

impl Uffd {
    /// Opens a userfaultfd that handles kernel-mode faults too (KVM touches guest pages from
    /// the kernel), asking for `features` (those the kernel lacks are dropped, not an error).
    /// The system call first, `/dev/userfaultfd` where the system call is not permitted.
    pub fn new(features: u64) -> io::Result<Self> {
        let open = || -> io::Result<OwnedFd> {
            let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
            // SAFETY: userfaultfd(2) takes flags and returns a new fd or -1; no memory is
            // passed.
            let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
            if fd >= 0 {
                // SAFETY: the system call returned a new fd that nothing else owns.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            }
            let syscall_error = io::Error::last_os_error();
            // SAFETY: open(2) with a NUL-terminated literal path.
            let device =
                unsafe { libc::open(c"/dev/userfaultfd".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
            if device < 0 {
                return Err(syscall_error);
            }
            // SAFETY: `device` is a new fd that nothing else owns.
            let device = unsafe { OwnedFd::from_raw_fd(device) };
            // SAFETY: USERFAULTFD_IOC_NEW takes the new fd's flags by value and returns a
            // new fd or -1; no memory is passed.
            let fd = unsafe { libc::ioctl(device.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) };
            if fd < 0 {
                return Err(syscall_error);
            }
            // SAFETY: the ioctl returned a new fd that nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        // Ask what the kernel has on one fd (UFFDIO_API with no features), then enable what
        // we want of it on a fresh one (the handshake happens once per fd).
        let probe = open()?;
        let mut api = UffdioApi {
            api: UFFD_API,
            ..Default::default()
        };
        // SAFETY: UFFDIO_API reads and writes one `UffdioApi`, which lives here.
        if unsafe { ioctl_with_mut_ref(&probe, UFFDIO_API(), &mut api) } < 0 {
            return last_error();
        }
        let features = features & api.features;
        drop(probe);
        let fd = open()?;
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        // SAFETY: as above.
        if unsafe { ioctl_with_mut_ref(&fd, UFFDIO_API(), &mut api) } < 0 {
            return last_error();
        }
        Ok(Self {
            fd,
            features: api.features,
        })
    }

    /// Registers `start..start + len` (host addresses of private anonymous memory, page
    /// aligned) for missing-page faults.
    pub fn register_missing(&self, start: u64, len: u64) -> io::Result<()> {
        let mut register = UffdioRegister {
            range: UffdioRange { start, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one `UffdioRegister`, which lives here.
        // Registering changes how faults on the range are handled, not its contents.
        if unsafe { ioctl_with_mut_ref(&self.fd, UFFDIO_REGISTER(), &mut register) } < 0 {
            return last_error();
        }
        Ok(())
    }

    /// Ends the registration of `start..start + len`: missing pages fault as usual again
    /// (anonymous memory: zero-filled), and threads waiting on them are woken.
    pub fn unregister(&self, start: u64, len: u64) -> io::Result<()> {
        let mut range = UffdioRange { start, len };
        // SAFETY: UFFDIO_UNREGISTER reads one `UffdioRange`, which lives here.
        if unsafe { ioctl_with_mut_ref(&self.fd, UFFDIO_UNREGISTER(), &mut range) } < 0 {
            return last_error();
        }
        Ok(())
    }

    /// Places `data` (whole pages) at `destination` where pages are missing, and wakes the
    /// threads waiting on them. Pages already there (placed meanwhile by another thread) are
    /// skipped. Returns the number of pages placed.
    pub fn copy(&self, destination: u64, data: &[u8]) -> io::Result<u64> {
        let len = data.len() as u64;
        debug_assert!(len.is_multiple_of(PAGE_SIZE) && destination.is_multiple_of(PAGE_SIZE));
        let mut done = 0u64;
        let mut placed = 0u64;
        while done < len {
            let mut copy = UffdioCopy {
                dst: destination + done,
                src: data.as_ptr() as u64 + done,
                len: len - done,
                mode: 0,
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY reads `len` bytes from `src`, which lie inside `data`
            // (borrowed for the call), and fills only *missing* pages of the range registered
            // with this userfaultfd (refusing pages already present with EEXIST, and ranges
            // not registered): it cannot overwrite memory anything else has a view of.
            let result = unsafe { ioctl_with_mut_ref(&self.fd, UFFDIO_COPY(), &mut copy) };
            let copied = copy.copy.max(0) as u64;
            done += copied;
            placed += copied / PAGE_SIZE;
            if result >= 0 {
                continue;
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                // The page at `done` is there already: skip it.
                Some(libc::EEXIST) => done += PAGE_SIZE,
                // Interrupted or the mapping was changing: retry the rest.
                Some(libc::EAGAIN) | Some(libc::EINTR) => {}
                _ => return Err(error),
            }
        }
        Ok(placed)
    }

    /// Maps the zero page at the missing pages of `start..start + len`, waking waiters.
    pub fn zero(&self, start: u64, len: u64) -> io::Result<()> {
        let mut done = 0u64;
        while done < len {
            let mut zero = UffdioZeropage {
                range: UffdioRange {
                    start: start + done,
                    len: len - done,
                },
                mode: 0,
                zeropage: 0,
            };
            // SAFETY: UFFDIO_ZEROPAGE reads and writes one `UffdioZeropage`, which lives
            // here; it maps the zero page only where pages of the registered range are missing.
            let result = unsafe { ioctl_with_mut_ref(&self.fd, UFFDIO_ZEROPAGE(), &mut zero) };
            done += zero.zeropage.max(0) as u64;
            if result >= 0 {
                continue;
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EEXIST) => done += PAGE_SIZE,
                Some(libc::EAGAIN) | Some(libc::EINTR) => {}
                _ => return Err(error),
            }
        }
        Ok(())
    }

    /// Wakes threads waiting on `start..start + len` (whose pages are there now).
    pub fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        let mut range = UffdioRange { start, len };
        // SAFETY: UFFDIO_WAKE reads one `UffdioRange`, which lives here.
        if unsafe { ioctl_with_mut_ref(&self.fd, UFFDIO_WAKE(), &mut range) } < 0 {
            return last_error();
        }
        Ok(())
    }

    /// Appends the queued page faults to `faults` (other events are not asked for).
    pub fn read_faults(&self, faults: &mut Vec<Fault>) -> io::Result<()> {
        let mut buffer = [0u8; UFFD_MSG_BYTES * 64];
        loop {
            // SAFETY: read(2) writes at most `buffer.len()` bytes into `buffer`.
            let read = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            if read < 0 {
                let error = io::Error::last_os_error();
                return match error.raw_os_error() {
                    Some(libc::EAGAIN) => Ok(()),
                    Some(libc::EINTR) => continue,
                    _ => Err(error),
                };
            }
            for message in buffer[..read as usize].chunks_exact(UFFD_MSG_BYTES) {
                if message[0] != UFFD_EVENT_PAGEFAULT {
                    continue;
                }
                let word = |at: usize| {
                    let mut raw = [0u8; 8];
                    raw.copy_from_slice(&message[at..at + 8]);
                    u64::from_ne_bytes(raw)
                };
                let mut tid = [0u8; 4];
                tid.copy_from_slice(&message[24..28]);
                faults.push(Fault {
                    address: word(16),
                    write: word(8) & UFFD_PAGEFAULT_FLAG_WRITE != 0,
                    thread_id: u32::from_ne_bytes(tid),
                });
            }
            if (read as usize) < buffer.len() {
                return Ok(());
            }
        }
    }

    /// Waits until a fault is queued or `other` (an eventfd, say) is readable, at most
    /// `timeout_ms` (-1: no limit). Returns (fault queued, `other` readable).
    pub fn wait(&self, other: Option<&impl AsRawFd>, timeout_ms: i32) -> io::Result<(bool, bool)> {
        let mut fds = [
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: other.map_or(-1, AsRawFd::as_raw_fd),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll(2) reads and writes the two pollfds, which live here (a negative fd
        // is ignored).
        let result = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if result < 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EINTR) {
                return Ok((false, false));
            }
            return Err(error);
        }
        Ok((fds[0].revents != 0, fds[1].revents != 0))
    }
}

/// The calling thread's id (what a fault's `thread_id` names).
pub fn current_thread_id() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private anonymous mapping of `pages` pages (unmapped on drop).
    struct Mapping(u64, usize);

    impl Mapping {
        fn new(pages: usize) -> Self {
            let len = pages * PAGE_SIZE as usize;
            // SAFETY: a new anonymous mapping; nothing else refers to it.
            let address = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(address, libc::MAP_FAILED);
            Self(address as u64, len)
        }

        fn read(&self, page: usize) -> u64 {
            // SAFETY: inside the live mapping; reading may fault and wait for a handler.
            unsafe { std::ptr::read_volatile((self.0 + page as u64 * PAGE_SIZE) as *const u64) }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: unmaps the mapping this value owns.
            unsafe { libc::munmap(self.0 as *mut libc::c_void, self.1) };
        }
    }

    /// A thread touching registered memory blocks until a page is copied in; it then reads
    /// what was copied (and a zero page reads zero); the fault names the thread.
    #[test]
    fn faults_are_reported_and_resolved_by_copy_and_zero() {
        let uffd = match Uffd::new(UFFD_FEATURE_THREAD_ID) {
            Ok(uffd) => uffd,
            Err(error) => {
                eprintln!("skipped: userfaultfd unavailable here ({error})");
                return;
            }
        };
        let mapping = std::sync::Arc::new(Mapping::new(8));
        uffd.register_missing(mapping.0, mapping.1 as u64).unwrap();
        let reader = {
            let mapping = mapping.clone();
            std::thread::spawn(move || (current_thread_id(), mapping.read(3), mapping.read(5)))
        };
        let mut faults = Vec::new();
        for _ in 0..2 {
            faults.clear();
            while faults.is_empty() {
                uffd.wait(None::<&OwnedFd>, 5000).unwrap();
                uffd.read_faults(&mut faults).unwrap();
            }
            let fault = faults[0];
            let page = (fault.address - mapping.0) / PAGE_SIZE;
            if page == 3 {
                let mut data = vec![0u8; PAGE_SIZE as usize];
                data[..8].copy_from_slice(&0x1234_5678u64.to_ne_bytes());
                assert_eq!(uffd.copy(fault.address, &data).unwrap(), 1);
                // Copying again places nothing (the page is there).
                assert_eq!(uffd.copy(fault.address, &data).unwrap(), 0);
            } else {
                assert_eq!(page, 5);
                uffd.zero(fault.address, PAGE_SIZE).unwrap();
            }
        }
        let (thread, three, five) = reader.join().unwrap();
        assert_eq!((three, five), (0x1234_5678, 0));
        if uffd.features & UFFD_FEATURE_THREAD_ID != 0 {
            assert_eq!(faults[0].thread_id, thread);
        }
        // A multi-page copy over pages 2-5, of which 3 and 5 are present, fills 2 and 4.
        let data = vec![7u8; 4 * PAGE_SIZE as usize];
        assert_eq!(uffd.copy(mapping.0 + 2 * PAGE_SIZE, &data).unwrap(), 2);
        assert_eq!(mapping.read(4) & 0xff, 7);
        assert_eq!(mapping.read(3), 0x1234_5678);
    }
}

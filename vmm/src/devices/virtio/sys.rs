//! The host system calls of the virtio backends that have no safe wrapper: opening a TAP
//! device (TUNSETIFF, TUNSETVNETHDRSZ, TUNSETOFFLOAD) and fallocate for discard and write
//! zeroes. All of the backends' `unsafe` is in this file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (linux/if_tun.h).
const IFF_TAP: u16 = 0x0002;
const IFF_NO_PI: u16 = 0x1000;
const IFF_VNET_HDR: u16 = 0x4000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (a union of 24 bytes).
#[repr(C)]
struct InterfaceRequest {
    name: [u8; libc::IFNAMSIZ],
    flags: u16,
    _rest: [u8; 22],
}

/// Opens (or, with CAP_NET_ADMIN, creates) the TAP device `name`: non-blocking, without
/// packet information, with `vnet_header_bytes`-byte virtio-net headers and no offloads.
pub fn open_tap(name: &str, vnet_header_bytes: i32) -> io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{name}' is not a valid interface name (1 to 15 bytes)"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| io::Error::new(e.kind(), format!("/dev/net/tun: {e}")))?;
    let mut request = InterfaceRequest {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _rest: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq` (40 bytes on x86_64), which
    // `InterfaceRequest` lays out with the same size; `request` lives across the call and
    // `file` is an open /dev/net/tun descriptor.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut request) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points at a live i32.
    let result = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETVNETHDRSZ as _,
            &vnet_header_bytes,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    // No offloads: the guest is offered none, so the TAP must hand it whole, checksummed
    // frames. TUNSETOFFLOAD takes the flags by value.
    // SAFETY: TUNSETOFFLOAD takes an unsigned long argument by value; no memory is touched.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD as _, 0u64) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// `fallocate(2)` on `file`: `punch` frees the range (FALLOC_FL_PUNCH_HOLE), otherwise it is
/// zeroed in place (FALLOC_FL_ZERO_RANGE); the file size never changes.
pub fn fallocate_zero(file: &File, offset: u64, len: u64, punch: bool) -> io::Result<()> {
    let mode = libc::FALLOC_FL_KEEP_SIZE
        | if punch {
            libc::FALLOC_FL_PUNCH_HOLE
        } else {
            libc::FALLOC_FL_ZERO_RANGE
        };
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate only takes integers; `file` is an open descriptor for its duration.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

//! The CMOS real-time clock: the register protocol and the calendar decoding. The boot reads it
//! once through the raw ports to set the wall clock (as Linux's `mach_get_cmos_time`, before any
//! driver exists); later the `rtc_cmos` driver reads it through the ports it claimed, with the
//! same code ([`read_via`]).

use super::port::{inb, outb};

/// A calendar time as the RTC holds it (UTC by convention on virtual machines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcTime {
    pub year: u32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

fn read_register(register: u8) -> u8 {
    outb(0x70, register | 0x80); // bit 7: keep NMIs masked while selecting
    inb(0x71)
}

/// The index/data pair as the driver reaches it: `register` selected (NMIs kept masked), its
/// value read.
pub trait CmosRegisters {
    fn read(&self, register: u8) -> u8;
}

struct RawPorts;

impl CmosRegisters for RawPorts {
    fn read(&self, register: u8) -> u8 {
        read_register(register)
    }
}

fn bcd(value: u8) -> u32 {
    (value & 0x0F) as u32 + (value >> 4) as u32 * 10
}

fn read_raw(cmos: &dyn CmosRegisters) -> [u8; 7] {
    [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32].map(|register| cmos.read(register))
}

/// Whether an MC146818-style RTC answers: register D (valid RAM and time) reads 0x80 on one
/// (bits 0-6 are always zero), and a port with no device behind it reads all ones. Without
/// this check, a machine with no CMOS clock (lull-vmm, Firecracker, microvm `rtc=off`) made the
/// update-in-progress wait below spin a million times, each port access a VM exit: 5-6 s.
pub fn present(cmos: &dyn CmosRegisters) -> bool {
    let status_d = cmos.read(0x0D);
    status_d != 0xFF && status_d & 0x7F == 0
}

/// Reads the RTC through the raw ports (boot, before drivers): see [`read_via`].
pub fn read() -> Option<RtcTime> {
    read_via(&RawPorts)
}

/// Reads the RTC, waiting out an update in progress and re-reading until two reads agree.
/// `None` at once when no RTC answers, or when no sane time is read (out-of-range fields).
pub fn read_via(cmos: &dyn CmosRegisters) -> Option<RtcTime> {
    if !present(cmos) {
        return None;
    }
    let mut previous = None;
    for _ in 0..10 {
        let mut spins = 0;
        while cmos.read(0x0A) & 0x80 != 0 && spins < 100_000 {
            spins += 1;
        }
        let raw = read_raw(cmos);
        if previous == Some(raw) {
            break;
        }
        previous = Some(raw);
    }
    let raw = previous?;
    let status_b = cmos.read(0x0B);
    let binary = status_b & 0x04 != 0;
    let decode = |v: u8| if binary { v as u32 } else { bcd(v) };
    let mut hour = decode(raw[2] & 0x7F);
    if status_b & 0x02 == 0 && raw[2] & 0x80 != 0 {
        hour = (hour % 12) + 12; // 12-hour mode, PM
    }
    let century = match decode(raw[6]) {
        c @ 19..=21 => c,
        _ => 20,
    };
    let time = RtcTime {
        year: century * 100 + decode(raw[5]),
        month: decode(raw[4]),
        day: decode(raw[3]),
        hour,
        minute: decode(raw[1]),
        second: decode(raw[0]),
    };
    let sane = (1..=12).contains(&time.month)
        && (1..=31).contains(&time.day)
        && time.hour < 24
        && time.minute < 60
        && time.second < 61;
    sane.then_some(time)
}

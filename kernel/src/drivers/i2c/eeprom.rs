//! `eeprom`: a client driver for 256-byte SMBus EEPROMs (the SPD chips QEMU's `smbus-eeprom`
//! models at 0x50-0x57 on q35), after Linux's legacy `eeprom` driver and `at24` for `spd`.
//!
//! The probe checks that the chip answers a byte-data read. While bound, the device has an
//! `eeprom` file: `/sys/bus/i2c/devices/0-0050/eeprom` reads the 256 bytes, one byte-data read
//! each. Lull's sysfs is text, so the content is shown in `i2cdump`'s layout (hex and ASCII)
//! rather than as raw bytes.

use alloc::string::String;

use lull_driver_core::{Driver, DriverDesc, Errno, ProbeContext, ProbeError};
use lull_i2c::SmbusOp;

/// The driver's name.
pub const DRIVER: &str = "eeprom";

/// The chip's size.
pub const SIZE: usize = 256;

struct EepromDriver;

impl Driver for EepromDriver {
    fn probe(&self, ctx: &mut ProbeContext<'_>) -> Result<(), ProbeError> {
        let (nr, address) = lull_i2c::parse_client_name(ctx.device_name()).ok_or(Errno::EINVAL)?;
        let adapter = super::adapter(nr).ok_or(Errno::ENODEV)?;
        adapter
            .xfer(address, SmbusOp::ReadByteData(0))
            .map_err(|error| {
                crate::pr_err!("eeprom {}: no answer: {error}", ctx.device_name());
                Errno::ENODEV
            })?;
        Ok(())
    }
}

/// Reads the whole chip of client `device` (`N-00AA`), `None` for a register that failed.
pub fn read_all(device: &str) -> Option<[Option<u8>; SIZE]> {
    let (nr, address) = lull_i2c::parse_client_name(device)?;
    let adapter = super::adapter(nr)?;
    let mut bytes = [None; SIZE];
    for (register, byte) in bytes.iter_mut().enumerate() {
        *byte = adapter
            .xfer(address, SmbusOp::ReadByteData(register as u8))
            .ok()
            .map(|data| data.value() as u8);
    }
    Some(bytes)
}

fn bound_to_us(device: &str) -> bool {
    crate::drivers::base::with_model(|model| {
        model
            .device_state("i2c", device)
            .and_then(|state| state.driver().map(|d| d == DRIVER))
    })
    .flatten()
    .unwrap_or(false)
}

/// The `i2c` bus's extra device files: `eeprom` on devices this driver is bound to.
fn attributes(device: &str, attribute: Option<&str>) -> Option<String> {
    if !bound_to_us(device) {
        return None;
    }
    match attribute {
        None => Some(String::from("eeprom")),
        Some("eeprom") => {
            let bytes = read_all(device)?;
            Some(lull_i2c::tools::dump_bytes(|register| {
                bytes[register as usize]
            }))
        }
        Some(_) => None,
    }
}

/// Registers the driver on the `i2c` bus and the `eeprom` file.
pub fn register() {
    crate::drivers::base::register_attributes("i2c", attributes);
    let ids = alloc::vec!["spd", "eeprom", "24c02"];
    if let Err(error) =
        crate::drivers::base::register_driver(DriverDesc::new("i2c", DRIVER, ids, EepromDriver))
    {
        crate::pr_err!("eeprom: cannot register the driver: {error}");
    }
}

//! The PC parallel port (IEEE 1284 SPP, `PNP0400`) as a GPIO chip: its 8 data lines and 4
//! control lines are outputs, its 5 status lines inputs, 17 lines in connector order.
//!
//! Values are the *wire* levels, as gpiolib's raw values always are: the port's hardware
//! inverts `nStrobe`, `nAutoFd` and `nSelectIn` between the control register and the connector,
//! and `Busy` between the connector and the status register, so this chip inverts those bits
//! back. `gpioset gpiochip0 8=0` (nStrobe low, asserted) thus writes control bit 0 = 1.
//!
//! The register accesses go through [`ParportIo`], which the kernel implements over its claimed
//! I/O ports (and the tests over an array). A port that has gone (the driver unbound, its
//! ports revoked) answers `None`/`false` and the chip reports [`ChipError::Io`].
//!
//! Writes to the control register keep the bits that are not lines (4: ACK interrupt enable,
//! 5: data direction) as they read back; the data lines are outputs only (the bidirectional
//! mode that would make them inputs is not used).

use crate::chip::{ChipError, Direction, GpioChip};

/// Register offsets from the port's base.
pub const REG_DATA: u8 = 0;
/// The status register (read-only).
pub const REG_STATUS: u8 = 1;
/// The control register.
pub const REG_CONTROL: u8 = 2;
/// Ports the chip uses from the base (data, status, control).
pub const PORTS: u16 = 3;

/// The lines, by offset: name, register, bit, whether the wire is the inverse of the bit, and
/// whether it is an output.
const LINES: [(&str, u8, u8, bool, bool); 17] = [
    ("D0", REG_DATA, 0, false, true),
    ("D1", REG_DATA, 1, false, true),
    ("D2", REG_DATA, 2, false, true),
    ("D3", REG_DATA, 3, false, true),
    ("D4", REG_DATA, 4, false, true),
    ("D5", REG_DATA, 5, false, true),
    ("D6", REG_DATA, 6, false, true),
    ("D7", REG_DATA, 7, false, true),
    ("nStrobe", REG_CONTROL, 0, true, true),
    ("nAutoFd", REG_CONTROL, 1, true, true),
    ("nInit", REG_CONTROL, 2, false, true),
    ("nSelectIn", REG_CONTROL, 3, true, true),
    ("nError", REG_STATUS, 3, false, false),
    ("Select", REG_STATUS, 4, false, false),
    ("PaperOut", REG_STATUS, 5, false, false),
    ("nAck", REG_STATUS, 6, false, false),
    ("Busy", REG_STATUS, 7, true, false),
];

/// Control bits that are lines (the rest are kept as read).
const CONTROL_LINE_BITS: u8 = 0x0f;

/// The port's three registers, as the driver reaches them.
pub trait ParportIo: Send + Sync {
    /// Reads register `reg` (`REG_*`), or `None` when the port is gone.
    fn read(&self, reg: u8) -> Option<u8>;
    /// Writes register `reg`; `false` when the port is gone.
    fn write(&self, reg: u8, value: u8) -> bool;
}

/// A parallel port as a GPIO chip.
pub struct ParportChip<P: ParportIo> {
    io: P,
    parent: Option<alloc::string::String>,
    /// Serialises read-modify-write of the data and control registers between lines.
    lock: lull_spinlock::SpinLock<()>,
}

impl<P: ParportIo> ParportChip<P> {
    /// The chip over `io`; `parent` is the device it belongs to (`acpi/PNP0400:00`).
    pub fn new(io: P, parent: Option<&str>) -> Self {
        Self {
            io,
            parent: parent.map(alloc::borrow::ToOwned::to_owned),
            lock: lull_spinlock::SpinLock::new(()),
        }
    }

    fn line(offset: u32) -> Result<(&'static str, u8, u8, bool, bool), ChipError> {
        usize::try_from(offset)
            .ok()
            .and_then(|index| LINES.get(index))
            .copied()
            .ok_or(ChipError::InvalidOffset(offset))
    }

    fn update(&self, reg: u8, mask: u8, bits: u8) -> Result<(), ChipError> {
        let _guard = self.lock.lock();
        let current = self.io.read(reg).ok_or(ChipError::Io)?;
        // Only the bits in `mask` change (on the control register, the ones that are not
        // lines keep what they read back).
        let value = (current & !mask) | (bits & mask);
        if self.io.write(reg, value) {
            Ok(())
        } else {
            Err(ChipError::Io)
        }
    }
}

impl<P: ParportIo> GpioChip for ParportChip<P> {
    fn label(&self) -> &str {
        "parport"
    }

    fn num_lines(&self) -> u32 {
        LINES.len() as u32
    }

    fn parent(&self) -> Option<&str> {
        self.parent.as_deref()
    }

    fn line_name(&self, offset: u32) -> Option<&str> {
        Self::line(offset).ok().map(|line| line.0)
    }

    fn get(&self, offset: u32) -> Result<bool, ChipError> {
        let (_, reg, bit, inverted, _) = Self::line(offset)?;
        let value = self.io.read(reg).ok_or(ChipError::Io)?;
        Ok((value >> bit & 1 != 0) != inverted)
    }

    fn set(&self, offset: u32, value: bool) -> Result<(), ChipError> {
        let (_, reg, bit, inverted, output) = Self::line(offset)?;
        if !output {
            return Err(ChipError::NotSupported);
        }
        let bits = if value != inverted { 1 << bit } else { 0 };
        self.update(reg, 1 << bit, bits)
    }

    fn get_direction(&self, offset: u32) -> Result<Direction, ChipError> {
        let (.., output) = Self::line(offset)?;
        Ok(if output {
            Direction::Output
        } else {
            Direction::Input
        })
    }

    fn direction_input(&self, offset: u32) -> Result<(), ChipError> {
        match Self::line(offset)? {
            (.., false) => Ok(()),
            _ => Err(ChipError::NotSupported),
        }
    }

    fn direction_output(&self, offset: u32, value: bool) -> Result<(), ChipError> {
        self.set(offset, value)
    }

    /// One read per register, however many of its lines are asked for.
    fn get_multiple(&self, mask: &[u64], bits: &mut [u64]) -> Result<(), ChipError> {
        let mut registers: [Option<u8>; 3] = [None; 3];
        for offset in crate::chip::bitmap_iter(mask) {
            let (_, reg, bit, inverted, _) = Self::line(offset)?;
            let value = match registers[usize::from(reg)] {
                Some(value) => value,
                None => {
                    let value = self.io.read(reg).ok_or(ChipError::Io)?;
                    registers[usize::from(reg)] = Some(value);
                    value
                }
            };
            crate::chip::bitmap_assign(bits, offset, (value >> bit & 1 != 0) != inverted);
        }
        Ok(())
    }

    /// The data lines in mask go out in one write (a byte on the port, as a printer sees it);
    /// control lines in a second.
    fn set_multiple(&self, mask: &[u64], bits: &[u64]) -> Result<(), ChipError> {
        let (mut masks, mut values) = ([0u8; 3], [0u8; 3]);
        for offset in crate::chip::bitmap_iter(mask) {
            let (_, reg, bit, inverted, output) = Self::line(offset)?;
            if !output {
                return Err(ChipError::NotSupported);
            }
            masks[usize::from(reg)] |= 1 << bit;
            if crate::chip::bitmap_test(bits, offset) != inverted {
                values[usize::from(reg)] |= 1 << bit;
            }
        }
        for reg in [REG_DATA, REG_CONTROL] {
            let index = usize::from(reg);
            if masks[index] != 0 {
                let mask = if reg == REG_CONTROL {
                    masks[index] & CONTROL_LINE_BITS
                } else {
                    masks[index]
                };
                self.update(reg, mask, values[index])?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GpioRegistry, LineConfig};
    use alloc::boxed::Box;
    use alloc::sync::Arc;
    use alloc::vec::Vec;

    /// Registers in memory, with every write logged and the port removable.
    /// The three registers (`None`: the port went away) and the writes, in order.
    type PortState = (Option<[u8; 3]>, Vec<(u8, u8)>);

    #[derive(Clone, Default)]
    struct FakePort(
        Arc<lull_spinlock::SpinLock<PortState>>,
        Arc<core::sync::atomic::AtomicUsize>,
    );

    impl FakePort {
        fn new(status: u8) -> Self {
            Self(
                Arc::new(lull_spinlock::SpinLock::new((
                    Some([0, status, 0]),
                    Vec::new(),
                ))),
                Arc::default(),
            )
        }
        fn reads(&self) -> usize {
            self.1.load(core::sync::atomic::Ordering::Relaxed)
        }
        fn writes(&self) -> Vec<(u8, u8)> {
            self.0.lock().1.clone()
        }
    }

    impl ParportIo for FakePort {
        fn read(&self, reg: u8) -> Option<u8> {
            self.1.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            self.0.lock().0.map(|r| r[usize::from(reg)])
        }
        fn write(&self, reg: u8, value: u8) -> bool {
            let mut state = self.0.lock();
            let Some(registers) = state.0.as_mut() else {
                return false;
            };
            registers[usize::from(reg)] = value;
            state.1.push((reg, value));
            true
        }
    }

    fn registry_with(port: &FakePort) -> GpioRegistry {
        let registry = GpioRegistry::new();
        let chip = ParportChip::new(port.clone(), Some("acpi/PNP0400:00"));
        registry.add_chip(Box::new(chip), None).unwrap();
        registry
    }

    #[test]
    fn data_lines_write_the_data_register_and_keep_the_other_bits() {
        let port = FakePort::new(0);
        let registry = registry_with(&port);
        let lines = registry
            .get_array("gpiochip0", &[0, 2], "test", LineConfig::as_is())
            .unwrap();
        for desc in lines.descs() {
            desc.direction_output(true).unwrap();
        }
        assert_eq!(port.writes(), [(REG_DATA, 0x01), (REG_DATA, 0x05)]);
        drop(lines);
        let d7 = registry
            .get_by_name("D7", "test", LineConfig::output(true))
            .unwrap();
        assert_eq!(port.writes().last(), Some(&(REG_DATA, 0x85)));
        d7.set_value(false).unwrap();
        assert_eq!(port.writes().last(), Some(&(REG_DATA, 0x05)));
    }

    #[test]
    fn inverted_control_and_status_lines_report_the_wire() {
        // Status 0x80: the Busy bit set means the Busy wire is low.
        let port = FakePort::new(0x80 | 0x40);
        let registry = registry_with(&port);
        let strobe = registry
            .get_by_name("nStrobe", "test", LineConfig::output(false))
            .unwrap();
        // nStrobe low on the wire: control bit 0 set.
        assert_eq!(port.writes(), [(REG_CONTROL, 0x01)]);
        assert!(!strobe.get_raw_value().unwrap());
        let init = registry
            .get_by_name("nInit", "test", LineConfig::output(true))
            .unwrap();
        assert_eq!(port.writes().last(), Some(&(REG_CONTROL, 0x05)));
        assert!(init.get_raw_value().unwrap());
        let busy = registry
            .get_by_name("Busy", "test", LineConfig::input())
            .unwrap();
        assert!(!busy.get_raw_value().unwrap());
        let ack = registry
            .get_by_name("nAck", "test", LineConfig::input())
            .unwrap();
        assert!(ack.get_raw_value().unwrap());
    }

    #[test]
    fn control_writes_keep_the_interrupt_and_direction_bits() {
        let port = FakePort::new(0);
        port.0.lock().0.as_mut().unwrap()[2] = 0x30;
        let registry = registry_with(&port);
        let select_in = registry
            .get_by_name("nSelectIn", "test", LineConfig::output(false))
            .unwrap();
        assert_eq!(port.writes(), [(REG_CONTROL, 0x38)]);
        select_in.set_value(true).unwrap();
        assert_eq!(port.writes().last(), Some(&(REG_CONTROL, 0x30)));
    }

    #[test]
    fn fixed_directions_are_refused() {
        let port = FakePort::new(0);
        let registry = registry_with(&port);
        let error = registry
            .get_by_name("PaperOut", "test", LineConfig::output(true))
            .unwrap_err();
        assert!(!error.to_string().is_empty());
        let d0 = registry
            .get_by_name("D0", "test", LineConfig::as_is())
            .unwrap();
        assert!(d0.direction_input().is_err());
        assert!(port.writes().is_empty(), "{:?}", port.writes());
    }

    #[test]
    fn bulk_set_writes_one_byte_per_register() {
        let port = FakePort::new(0);
        let registry = registry_with(&port);
        let lines = registry
            .get_array("gpiochip0", &[0, 1, 7, 8], "test", LineConfig::as_is())
            .unwrap();
        lines.set_values(&[true, false, true, false]).unwrap();
        assert_eq!(port.writes(), [(REG_DATA, 0x81), (REG_CONTROL, 0x01)]);
    }

    #[test]
    fn bulk_get_reads_each_register_once() {
        let port = FakePort::new(0xd9);
        let registry = registry_with(&port);
        let lines = registry
            .get_array(
                "gpiochip0",
                &[12, 13, 14, 15, 16],
                "test",
                LineConfig::input(),
            )
            .unwrap();
        let before = port.reads();
        assert_eq!(
            lines.get_raw_values().unwrap(),
            [true, true, false, true, false]
        );
        assert_eq!(port.reads() - before, 1);
    }

    #[test]
    fn a_port_that_went_away_is_an_io_error_not_a_panic() {
        let port = FakePort::new(0);
        let registry = registry_with(&port);
        let d0 = registry
            .get_by_name("D0", "test", LineConfig::as_is())
            .unwrap();
        port.0.lock().0 = None;
        assert!(d0.set_value(true).is_err());
        assert!(d0.get_value().is_err());
        let listing = crate::tools::gpioinfo(&registry, &[]).unwrap();
        assert!(listing.contains("\"D0\""), "{listing}");
    }

    #[test]
    fn names_and_directions_list_as_gpioinfo_prints_them() {
        let port = FakePort::new(0);
        let registry = registry_with(&port);
        let listing = crate::tools::gpioinfo(&registry, &["gpiochip0"]).unwrap();
        assert!(listing.starts_with("gpiochip0 - 17 lines:"), "{listing}");
        assert!(listing.contains("\"nStrobe\""), "{listing}");
        let busy = listing.lines().find(|l| l.contains("\"Busy\"")).unwrap();
        assert!(busy.contains("input"), "{busy}");
        let d3 = listing.lines().find(|l| l.contains("\"D3\"")).unwrap();
        assert!(d3.contains("output"), "{d3}");
    }
}

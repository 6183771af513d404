//! Host tests: the i801 protocol against a model of the controller with SMBus EEPROMs behind
//! it, the error mapping, and the i2c-tools parsing and formats.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::i801::{self, HostRegs};
use crate::tools::{self, Cell, Command, ProbeMode};
use crate::{client_name, parse_client_name, I2cError, SmbusData, SmbusOp};

/// What the modelled bus does with the next transaction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    /// Never finishes (until killed).
    Hang,
    /// Loses arbitration.
    Collision,
}

/// A model of the ICH SMBus host (the behaviour the datasheet describes) with 256-byte EEPROMs
/// that keep a read/write pointer, as SPD EEPROMs do.
struct Model {
    regs: RefCell<[u8; 32]>,
    eeproms: RefCell<BTreeMap<u8, ([u8; 256], u8)>>,
    fault: Fault,
    interrupt: bool,
    writes: RefCell<Vec<(u8, u8)>>,
}

impl Model {
    fn new() -> Self {
        let mut eeproms = BTreeMap::new();
        for address in 0x50..0x58u8 {
            let mut data = [0u8; 256];
            for (i, byte) in data.iter_mut().enumerate() {
                *byte = (i as u8) ^ address;
            }
            eeproms.insert(address, (data, 0));
        }
        Model {
            regs: RefCell::new([0; 32]),
            eeproms: RefCell::new(eeproms),
            fault: Fault::None,
            interrupt: true,
            writes: RefCell::new(Vec::new()),
        }
    }

    fn execute(&self) {
        let mut regs = self.regs.borrow_mut();
        let slave = regs[i801::XMIT_SLVA as usize];
        let (address, read) = (slave >> 1, slave & 1 == 1);
        let protocol = regs[i801::HST_CNT as usize] & 0x1c;
        let command = regs[i801::HST_CMD as usize];
        match self.fault {
            Fault::Hang => {
                regs[0] |= i801::STS_HOST_BUSY;
                return;
            }
            Fault::Collision => {
                regs[0] |= i801::STS_BUS_ERR;
                return;
            }
            Fault::None => {}
        }
        let mut eeproms = self.eeproms.borrow_mut();
        let Some((data, pointer)) = eeproms.get_mut(&address) else {
            regs[0] |= i801::STS_DEV_ERR;
            return;
        };
        let next = |pointer: &mut u8| {
            let byte = data[*pointer as usize];
            *pointer = pointer.wrapping_add(1);
            byte
        };
        match (protocol, read) {
            (i801::PROT_QUICK, _) => {}
            (i801::PROT_BYTE, true) => regs[5] = next(pointer),
            (i801::PROT_BYTE, false) => *pointer = command,
            (i801::PROT_BYTE_DATA, true) => {
                *pointer = command;
                regs[5] = next(pointer);
            }
            (i801::PROT_BYTE_DATA, false) => {
                data[command as usize] = regs[5];
                *pointer = command.wrapping_add(1);
            }
            (i801::PROT_WORD_DATA, true) => {
                *pointer = command;
                regs[5] = next(pointer);
                regs[6] = next(pointer);
            }
            (i801::PROT_WORD_DATA, false) => {
                data[command as usize] = regs[5];
                data[command.wrapping_add(1) as usize] = regs[6];
            }
            _ => {
                regs[0] |= i801::STS_DEV_ERR;
                return;
            }
        }
        regs[0] |= i801::STS_INTR;
    }
}

impl HostRegs for &Model {
    fn read(&self, reg: u8) -> u8 {
        self.regs.borrow()[reg as usize]
    }

    fn write(&self, reg: u8, value: u8) {
        self.writes.borrow_mut().push((reg, value));
        match reg {
            i801::HST_STS => self.regs.borrow_mut()[0] &= !(value & !i801::STS_HOST_BUSY),
            i801::HST_CNT => {
                if value & i801::CNT_KILL != 0 {
                    let mut regs = self.regs.borrow_mut();
                    regs[0] = (regs[0] & !i801::STS_HOST_BUSY) | i801::STS_FAILED;
                }
                self.regs.borrow_mut()[2] = value & !i801::CNT_START;
                if value & i801::CNT_START != 0 {
                    self.regs.borrow_mut()[2] |= value & 0x1c;
                    self.execute();
                }
            }
            _ => self.regs.borrow_mut()[reg as usize] = value,
        }
    }

    fn uses_interrupt(&self) -> bool {
        self.interrupt
    }

    fn wait_for_completion(&mut self) -> Option<u8> {
        // Bounded poll, as the kernel's fallback.
        for _ in 0..100 {
            let status = self.read(i801::HST_STS);
            if status & i801::STS_HOST_BUSY == 0 && status & i801::STS_DONE_MASK != 0 {
                return Some(status);
            }
        }
        None
    }
}

fn xfer(model: &Model, address: u8, op: SmbusOp) -> Result<SmbusData, I2cError> {
    let mut regs = model;
    i801::transfer(&mut regs, address, op)
}

#[test]
fn byte_data_write_then_read_back() {
    let model = Model::new();
    assert_eq!(
        xfer(&model, 0x50, SmbusOp::WriteByteData(0x10, 0xa5)),
        Ok(SmbusData::None)
    );
    assert_eq!(
        xfer(&model, 0x50, SmbusOp::ReadByteData(0x10)),
        Ok(SmbusData::Byte(0xa5))
    );
    // Another chip is untouched.
    assert_eq!(
        xfer(&model, 0x51, SmbusOp::ReadByteData(0x10)),
        Ok(SmbusData::Byte(0x10 ^ 0x51))
    );
    // The interrupt was asked for, and the slave register carried the R/W bit.
    let writes = model.writes.borrow();
    assert!(writes.contains(&(i801::XMIT_SLVA, 0x50 << 1)));
    assert!(writes.contains(&(i801::XMIT_SLVA, 0x50 << 1 | 1)));
    assert!(writes.contains(&(
        i801::HST_CNT,
        i801::PROT_BYTE_DATA | i801::CNT_START | i801::CNT_INTREN
    )));
}

#[test]
fn word_data_is_little_endian_both_ways() {
    let model = Model::new();
    xfer(&model, 0x52, SmbusOp::WriteWordData(0x20, 0xbeef)).unwrap();
    assert_eq!(model.eeproms.borrow()[&0x52].0[0x20], 0xef);
    assert_eq!(model.eeproms.borrow()[&0x52].0[0x21], 0xbe);
    assert_eq!(
        xfer(&model, 0x52, SmbusOp::ReadWordData(0x20)),
        Ok(SmbusData::Word(0xbeef))
    );
}

#[test]
fn send_byte_sets_the_pointer_receive_byte_follows_it() {
    let model = Model::new();
    xfer(&model, 0x53, SmbusOp::WriteByte(0x40)).unwrap();
    assert_eq!(
        xfer(&model, 0x53, SmbusOp::ReadByte),
        Ok(SmbusData::Byte(0x40 ^ 0x53))
    );
    assert_eq!(
        xfer(&model, 0x53, SmbusOp::ReadByte),
        Ok(SmbusData::Byte(0x41 ^ 0x53))
    );
}

#[test]
fn errors_map_to_linux_errnos() {
    let model = Model::new();
    let nack = xfer(&model, 0x20, SmbusOp::Quick { read: false });
    assert_eq!(nack, Err(I2cError::Nack));
    assert_eq!(I2cError::Nack.errno(), 6);
    // The status was cleared: the next transaction works.
    assert!(xfer(&model, 0x50, SmbusOp::Quick { read: false }).is_ok());

    let mut colliding = Model::new();
    colliding.fault = Fault::Collision;
    let error = xfer(&colliding, 0x50, SmbusOp::ReadByte).unwrap_err();
    assert_eq!((error, error.errno()), (I2cError::BusCollision, 11));

    let mut hung = Model::new();
    hung.fault = Fault::Hang;
    let error = xfer(&hung, 0x50, SmbusOp::ReadByte).unwrap_err();
    assert_eq!((error, error.errno()), (I2cError::Timeout, 110));
    // Killed, KILL cleared, status clean: the controller is usable again.
    let writes = hung.writes.borrow().clone();
    let kill = writes
        .iter()
        .position(|&w| w == (i801::HST_CNT, i801::CNT_KILL))
        .expect("KILL written");
    assert_eq!(writes[kill + 1], (i801::HST_CNT, 0));
    assert_eq!(hung.regs.borrow()[0], 0);
    hung.fault = Fault::None;
    assert_eq!(
        xfer(&hung, 0x50, SmbusOp::ReadByteData(1)),
        Ok(SmbusData::Byte(1 ^ 0x50))
    );
}

#[test]
fn busy_controller_is_not_touched() {
    let model = Model::new();
    model.regs.borrow_mut()[0] = i801::STS_HOST_BUSY;
    assert_eq!(xfer(&model, 0x50, SmbusOp::ReadByte), Err(I2cError::Busy));
    assert!(model.writes.borrow().is_empty());
}

#[test]
fn stale_status_is_cleared_before_starting() {
    let model = Model::new();
    model.regs.borrow_mut()[0] = i801::STS_DEV_ERR | i801::STS_INTR;
    assert_eq!(
        xfer(&model, 0x50, SmbusOp::ReadByteData(0)),
        Ok(SmbusData::Byte(0x50))
    );
    assert_eq!(
        model.writes.borrow()[0],
        (i801::HST_STS, i801::STS_DEV_ERR | i801::STS_INTR)
    );
}

#[test]
fn polling_mode_leaves_intren_off_and_bad_address_is_refused() {
    let mut model = Model::new();
    model.interrupt = false;
    xfer(&model, 0x50, SmbusOp::ReadByte).unwrap();
    assert!(model
        .writes
        .borrow()
        .iter()
        .all(|&(reg, v)| reg != i801::HST_CNT || v & i801::CNT_INTREN == 0));
    assert_eq!(
        xfer(&model, 0x80, SmbusOp::ReadByte),
        Err(I2cError::Invalid)
    );
}

#[test]
fn client_names_are_linux_style() {
    assert_eq!(client_name(0, 0x50), "0-0050");
    assert_eq!(client_name(12, 0x7f), "12-007f");
    assert_eq!(parse_client_name("0-0050"), Some((0, 0x50)));
    assert_eq!(parse_client_name("3-0080"), None);
    assert_eq!(parse_client_name("i2c-0"), None);
}

#[test]
fn default_probe_reads_eeprom_addresses() {
    assert_eq!(crate::default_probe_op(0x50), SmbusOp::ReadByte);
    assert_eq!(crate::default_probe_op(0x37), SmbusOp::ReadByte);
    assert_eq!(
        crate::default_probe_op(0x48),
        SmbusOp::Quick { read: false }
    );
}

#[test]
fn tools_parse_as_i2c_tools() {
    assert_eq!(tools::parse(&["i2cdetect", "-l"]), Ok(Command::List));
    assert_eq!(
        tools::parse(&["i2cdetect", "-y", "0"]),
        Ok(Command::Detect {
            bus: 0,
            first: 0x08,
            last: 0x77,
            mode: ProbeMode::Auto
        })
    );
    assert_eq!(
        tools::parse(&["i2cdetect", "-y", "-a", "-r", "i2c-1", "0x50", "0x57"]),
        Ok(Command::Detect {
            bus: 1,
            first: 0x50,
            last: 0x57,
            mode: ProbeMode::Read
        })
    );
    assert_eq!(
        tools::parse(&["i2cget", "-y", "0", "0x50", "0x10"]),
        Ok(Command::Get {
            bus: 0,
            address: 0x50,
            op: SmbusOp::ReadByteData(0x10)
        })
    );
    assert_eq!(
        tools::parse(&["i2cget", "-y", "0", "0x50", "0x10", "w"]),
        Ok(Command::Get {
            bus: 0,
            address: 0x50,
            op: SmbusOp::ReadWordData(0x10)
        })
    );
    assert_eq!(
        tools::parse(&["i2cget", "-y", "0", "0x50"]),
        Ok(Command::Get {
            bus: 0,
            address: 0x50,
            op: SmbusOp::ReadByte
        })
    );
    assert_eq!(
        tools::parse(&["i2cset", "-y", "0", "0x50", "0x10", "0xa5"]),
        Ok(Command::Set {
            bus: 0,
            address: 0x50,
            op: SmbusOp::WriteByteData(0x10, 0xa5)
        })
    );
    assert_eq!(
        tools::parse(&["i2cset", "-y", "0", "0x50", "0x10", "0x1234", "w"]),
        Ok(Command::Set {
            bus: 0,
            address: 0x50,
            op: SmbusOp::WriteWordData(0x10, 0x1234)
        })
    );
    assert_eq!(
        tools::parse(&["i2cdump", "-y", "0", "0x50"]),
        Ok(Command::Dump {
            bus: 0,
            address: 0x50
        })
    );
    // Octal, as strtol base 0.
    assert_eq!(tools::parse_number("0120"), Some(0x50));
}

#[test]
fn tools_errors_are_i2c_tools_messages() {
    assert_eq!(
        tools::parse(&["i2cget", "-y", "0", "0x05"]),
        Err("Error: Chip address out of range (0x08-0x77)!".into())
    );
    assert!(tools::parse(&["i2cget", "-y", "-a", "0", "0x05"]).is_ok());
    assert_eq!(
        tools::parse(&["i2cget", "-y", "0", "zz"]),
        Err("Error: Chip address is not a number!".into())
    );
    assert_eq!(
        tools::parse(&["i2cget", "-y", "0", "0x50", "0x100"]),
        Err("Error: Data address invalid!".into())
    );
    assert_eq!(
        tools::parse(&["i2cset", "-y", "0", "0x50", "0", "0x100"]),
        Err("Error: Data value out of range!".into())
    );
    assert!(tools::parse(&["i2cget", "-y", "0", "0x50", "0", "q"])
        .unwrap_err()
        .starts_with("Error: Invalid mode!"));
    assert_eq!(
        tools::parse(&["i2cget", "-y", "bus", "0x50"]),
        Err("Error: I2C bus name doesn't match any bus present!".into())
    );
    assert_eq!(
        tools::no_such_bus(3),
        "Error: Could not open file `/dev/i2c-3' or `/dev/i2c/3': No such file or directory"
    );
}

#[test]
fn detect_grid_layout() {
    let grid = tools::detect_grid(0x08, 0x77, |a| match a {
        0x50..=0x57 => Cell::Present,
        0x48 => Cell::Busy,
        _ => Cell::Absent,
    });
    let lines: Vec<&str> = grid.lines().collect();
    assert_eq!(lines.len(), 9);
    assert_eq!(
        lines[0],
        "     0  1  2  3  4  5  6  7  8  9  a  b  c  d  e  f"
    );
    assert_eq!(
        lines[1],
        "00:                         -- -- -- -- -- -- -- -- "
    );
    assert_eq!(
        lines[5],
        "40: -- -- -- -- -- -- -- -- UU -- -- -- -- -- -- -- "
    );
    assert_eq!(
        lines[6],
        "50: 50 51 52 53 54 55 56 57 -- -- -- -- -- -- -- -- "
    );
    assert_eq!(
        lines[8],
        "70: -- -- -- -- -- -- -- --                         "
    );
}

#[test]
fn dump_and_value_formats() {
    assert_eq!(tools::format_value(SmbusData::Byte(5)), "0x05");
    assert_eq!(tools::format_value(SmbusData::Word(0xbeef)), "0xbeef");
    let dump = tools::dump_bytes(|r| if r == 0x11 { None } else { Some(r) });
    let lines: Vec<&str> = dump.lines().collect();
    assert_eq!(lines.len(), 17);
    assert_eq!(
        lines[0],
        "     0  1  2  3  4  5  6  7  8  9  a  b  c  d  e  f    0123456789abcdef"
    );
    assert_eq!(
        lines[1],
        "00: 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f    .???????????????"
    );
    assert!(lines[2].starts_with("10: 10 XX 12"));
    assert!(lines[2].ends_with("   ?X??????????????"));
    assert!(lines[5].ends_with("   @ABCDEFGHIJKLMNO"));
    assert!(lines[16].ends_with("??????????????."));
    assert_eq!(
        tools::list_line(0, "SMBus I801 adapter at 0700"),
        "i2c-0\tsmbus     \tSMBus I801 adapter at 0700      \tSMBus adapter"
    );
}

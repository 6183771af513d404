//! The Intel ICH/PCH SMBus host controller ("i801"; ICH9 is PCI 8086:2930, QEMU's q35 has it at
//! 00:1f.3): one transaction at a time through a 32-byte I/O block at BAR 4 (SMBA).
//!
//! A transaction (ICH9 datasheet §18.2 register descriptions):
//! 1. `HST_STS` must not say `HOST_BUSY`; stale completion bits are cleared (write 1 to clear).
//! 2. `XMIT_SLVA` = address << 1 | R/W, `HST_CMD` = command, `HST_D0`/`HST_D1` = data to write.
//! 3. `HST_CNT` = protocol | `START` (| `INTREN` when the interrupt is used).
//! 4. Wait for `INTR` (done) or an error bit: `DEV_ERR` (no acknowledge, or an illegal command),
//!    `BUS_ERR` (lost arbitration / collision), `FAILED` (killed). The wait is the caller's
//!    ([`HostRegs::wait_for_completion`]): in the kernel, asleep until the interrupt handler has
//!    captured and cleared the status, or a bounded poll where there is no interrupt.
//! 5. On timeout, `KILL` the transaction, and report `ETIMEDOUT`.
//! 6. Read `HST_D0`/`HST_D1` for reads; clear the status.

use crate::{Functionality, I2cError, SmbusData, SmbusOp};

/// Host status (write 1 to clear).
pub const HST_STS: u8 = 0x00;
/// Host control.
pub const HST_CNT: u8 = 0x02;
/// Host command (the SMBus command byte).
pub const HST_CMD: u8 = 0x03;
/// Transmit slave address: address << 1 | read.
pub const XMIT_SLVA: u8 = 0x04;
/// Host data 0.
pub const HST_D0: u8 = 0x05;
/// Host data 1.
pub const HST_D1: u8 = 0x06;

/// `HST_STS`: a transaction is running.
pub const STS_HOST_BUSY: u8 = 0x01;
/// `HST_STS`: the transaction completed.
pub const STS_INTR: u8 = 0x02;
/// `HST_STS`: no acknowledge, or an invalid command.
pub const STS_DEV_ERR: u8 = 0x04;
/// `HST_STS`: bus collision / lost arbitration.
pub const STS_BUS_ERR: u8 = 0x08;
/// `HST_STS`: the transaction was killed.
pub const STS_FAILED: u8 = 0x10;
/// `HST_STS`: block transfer byte done.
pub const STS_BYTE_DONE: u8 = 0x80;
/// Every bit that ends a transaction.
pub const STS_DONE_MASK: u8 = STS_INTR | STS_DEV_ERR | STS_BUS_ERR | STS_FAILED;
/// Every bit cleared before a transaction.
pub const STS_CLEAR_MASK: u8 = STS_DONE_MASK | STS_BYTE_DONE;

/// `HST_CNT`: interrupt on completion.
pub const CNT_INTREN: u8 = 0x01;
/// `HST_CNT`: kill the running transaction.
pub const CNT_KILL: u8 = 0x02;
/// `HST_CNT`: start.
pub const CNT_START: u8 = 0x40;

/// `HST_CNT` protocol field values.
pub const PROT_QUICK: u8 = 0x00;
/// Byte (send/receive).
pub const PROT_BYTE: u8 = 0x04;
/// Byte data.
pub const PROT_BYTE_DATA: u8 = 0x08;
/// Word data.
pub const PROT_WORD_DATA: u8 = 0x0c;

/// PCI config offset of the host configuration register (HOSTC).
pub const PCI_HOSTC: u16 = 0x40;
/// HOSTC: host controller enabled (SMBus I/O decoded).
pub const HOSTC_HST_EN: u8 = 0x01;
/// HOSTC: I2C mode instead of SMBus (we want it clear).
pub const HOSTC_I2C_EN: u8 = 0x04;
/// PCI config offset of SMBA (BAR 4).
pub const PCI_SMBA: u16 = 0x20;
/// Size of the SMBus I/O block.
pub const SMBA_LEN: u16 = 32;

/// What i801 does here (no block transfers, no PEC, no host notify).
pub const FUNCTIONALITY: Functionality = Functionality::SMBUS_BASIC;

/// The controller's registers and the wait for a transaction's end.
pub trait HostRegs {
    /// Reads the register at `reg` (an offset in the SMBus I/O block).
    fn read(&self, reg: u8) -> u8;
    /// Writes the register at `reg`.
    fn write(&self, reg: u8, value: u8);
    /// Whether to set `INTREN` (the completion is signalled by the interrupt).
    fn uses_interrupt(&self) -> bool;
    /// Called after `START`: waits (bounded) until the transaction ends and returns the status
    /// that ended it (`HST_STS` with at least one of [`STS_DONE_MASK`]), or `None` on timeout.
    fn wait_for_completion(&mut self) -> Option<u8>;
    /// Pauses between setting and clearing `KILL` (the controller needs a moment).
    fn pause_after_kill(&mut self) {}
}

/// The register values that set up `op` to `address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    /// `XMIT_SLVA`.
    pub slave: u8,
    /// `HST_CMD`, if the protocol sends one.
    pub command: Option<u8>,
    /// `HST_D0`, if written.
    pub data0: Option<u8>,
    /// `HST_D1`, if written.
    pub data1: Option<u8>,
    /// The `HST_CNT` protocol field.
    pub protocol: u8,
}

/// Encodes `op` for the controller; `Invalid` for an address above 0x7f.
pub fn setup(address: u8, op: SmbusOp) -> Result<Setup, I2cError> {
    if address > 0x7f {
        return Err(I2cError::Invalid);
    }
    let slave = |read: bool| address << 1 | u8::from(read);
    let none = Setup {
        slave: slave(op.is_read()),
        command: None,
        data0: None,
        data1: None,
        protocol: PROT_QUICK,
    };
    Ok(match op {
        SmbusOp::Quick { .. } => none,
        SmbusOp::ReadByte => Setup {
            protocol: PROT_BYTE,
            ..none
        },
        // A send byte carries its byte in HST_CMD.
        SmbusOp::WriteByte(byte) => Setup {
            command: Some(byte),
            protocol: PROT_BYTE,
            ..none
        },
        SmbusOp::ReadByteData(command) => Setup {
            command: Some(command),
            protocol: PROT_BYTE_DATA,
            ..none
        },
        SmbusOp::WriteByteData(command, value) => Setup {
            command: Some(command),
            data0: Some(value),
            protocol: PROT_BYTE_DATA,
            ..none
        },
        SmbusOp::ReadWordData(command) => Setup {
            command: Some(command),
            protocol: PROT_WORD_DATA,
            ..none
        },
        SmbusOp::WriteWordData(command, value) => Setup {
            command: Some(command),
            data0: Some(value as u8),
            data1: Some((value >> 8) as u8),
            protocol: PROT_WORD_DATA,
            ..none
        },
    })
}

/// The error a final status means, if any (checked in order of severity: a killed transaction,
/// a collision, then a missing acknowledge).
pub fn status_error(status: u8) -> Option<I2cError> {
    if status & STS_FAILED != 0 {
        Some(I2cError::Io)
    } else if status & STS_BUS_ERR != 0 {
        Some(I2cError::BusCollision)
    } else if status & STS_DEV_ERR != 0 {
        Some(I2cError::Nack)
    } else if status & STS_INTR == 0 {
        Some(I2cError::Io)
    } else {
        None
    }
}

/// Runs one transaction on the controller behind `regs` (the caller holds the adapter lock).
pub fn transfer<R: HostRegs>(
    regs: &mut R,
    address: u8,
    op: SmbusOp,
) -> Result<SmbusData, I2cError> {
    let setup = setup(address, op)?;
    // Before: not busy, no stale completion bits.
    let status = regs.read(HST_STS);
    if status & STS_HOST_BUSY != 0 {
        return Err(I2cError::Busy);
    }
    if status & STS_CLEAR_MASK != 0 {
        regs.write(HST_STS, status & STS_CLEAR_MASK);
        if regs.read(HST_STS) & STS_CLEAR_MASK != 0 {
            return Err(I2cError::Busy);
        }
    }
    regs.write(XMIT_SLVA, setup.slave);
    if let Some(command) = setup.command {
        regs.write(HST_CMD, command);
    }
    if let Some(data0) = setup.data0 {
        regs.write(HST_D0, data0);
    }
    if let Some(data1) = setup.data1 {
        regs.write(HST_D1, data1);
    }
    let interrupt = if regs.uses_interrupt() { CNT_INTREN } else { 0 };
    regs.write(HST_CNT, setup.protocol | CNT_START | interrupt);
    let Some(status) = regs.wait_for_completion() else {
        kill(regs);
        return Err(I2cError::Timeout);
    };
    // The interrupt handler may already have cleared it; clearing again is harmless.
    regs.write(HST_STS, status & STS_CLEAR_MASK);
    if let Some(error) = status_error(status) {
        return Err(error);
    }
    Ok(match op {
        SmbusOp::ReadByte | SmbusOp::ReadByteData(_) => SmbusData::Byte(regs.read(HST_D0)),
        SmbusOp::ReadWordData(_) => {
            let low = regs.read(HST_D0);
            let high = regs.read(HST_D1);
            SmbusData::Word(u16::from_le_bytes([low, high]))
        }
        _ => SmbusData::None,
    })
}

/// Kills a transaction that did not end: `KILL`, a pause, `KILL` cleared, status cleared.
pub fn kill<R: HostRegs>(regs: &mut R) {
    regs.write(HST_CNT, CNT_KILL);
    regs.pause_after_kill();
    regs.write(HST_CNT, 0);
    let status = regs.read(HST_STS);
    regs.write(HST_STS, status & STS_CLEAR_MASK);
}

//! Fake hardware: configuration space and MSI-X tables that behave like devices, for tests.
//!
//! [`FakeConfigSpace`] holds functions built with [`FakeFunction`]'s builder. Each byte of a
//! function's space has a writable-bits mask, which is all the device semantics the crate relies
//! on: BARs keep their type bits and hardwire the address bits below their size to zero (so the
//! all-ones write reads back the size mask), the command register's enables are writable, the
//! status register and IDs are read-only, MSI/MSI-X control bits are writable where the
//! specification says. Absent functions read all ones and ignore writes. Accesses must be
//! dword-aligned and, for a fake built with [`FakeConfigSpace::legacy`], below 256 bytes; the
//! fake panics otherwise, so a test catches code that would fault on the real mechanism.
//!
//! Every write is logged with the command register's value at that moment, so tests can check
//! ordering properties such as "no BAR held all ones while decoding was on".

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use crate::access::{ConfigAccess, EXTENDED_CONFIG_SIZE, LEGACY_CONFIG_SIZE};
use crate::msi::{MsixTable, MSIX_ENTRY_SIZE, MSIX_ENTRY_VECTOR_CTRL, MSIX_VECTOR_MASKED};
use pci_types::PciAddress;

/// One emulated function: its 4 KiB of configuration space and which bits of it are writable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeFunction {
    config: Vec<u8>,
    writable: Vec<u8>,
    next_cap: u16,
    last_cap: Option<u16>,
    next_ext: u16,
    last_ext: Option<u16>,
}

impl FakeFunction {
    fn blank(vendor: u16, device: u16, header_type: u8) -> Self {
        let mut f = FakeFunction {
            config: vec![0; usize::from(EXTENDED_CONFIG_SIZE)],
            writable: vec![0; usize::from(EXTENDED_CONFIG_SIZE)],
            next_cap: 0x40,
            last_cap: None,
            next_ext: 0x100,
            last_ext: None,
        };
        f.set16(0x00, vendor);
        f.set16(0x02, device);
        f.config[0x0E] = header_type;
        // Command: I/O, memory, bus master, parity, SERR#, INTx disable.
        f.writable[0x04] = 0x47;
        f.writable[0x05] = 0x05;
        // Interrupt line is scratch for firmware.
        f.writable[0x3C] = 0xFF;
        f
    }

    /// A type 0 function with the given IDs and class code.
    pub fn endpoint(
        vendor: u16,
        device: u16,
        class: u8,
        subclass: u8,
        prog_if: u8,
        revision: u8,
    ) -> Self {
        let mut f = Self::blank(vendor, device, 0x00);
        f.set_class(class, subclass, prog_if, revision);
        f
    }

    /// A PCI-to-PCI bridge (type 1, class 0604) with firmware-assigned bus numbers.
    pub fn bridge(vendor: u16, device: u16, primary: u8, secondary: u8, subordinate: u8) -> Self {
        let mut f = Self::blank(vendor, device, 0x01);
        f.set_class(0x06, 0x04, 0x00, 0x00);
        f.config[0x18] = primary;
        f.config[0x19] = secondary;
        f.config[0x1A] = subordinate;
        for b in 0x18..0x1B {
            f.writable[b] = 0xFF;
        }
        f
    }

    fn set_class(&mut self, class: u8, subclass: u8, prog_if: u8, revision: u8) {
        self.config[0x08] = revision;
        self.config[0x09] = prog_if;
        self.config[0x0A] = subclass;
        self.config[0x0B] = class;
    }

    fn set16(&mut self, at: usize, v: u16) {
        self.config[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set32(&mut self, at: usize, v: u32) {
        self.config[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn set_writable32(&mut self, at: usize, mask: u32) {
        self.writable[at..at + 4].copy_from_slice(&mask.to_le_bytes());
    }

    /// Set header-type bit 7 (function 0 of a multi-function device).
    pub fn multifunction(mut self) -> Self {
        self.config[0x0E] |= 0x80;
        self
    }

    /// Set the subsystem IDs (type 0).
    pub fn subsystem(mut self, vendor: u16, id: u16) -> Self {
        self.set16(0x2C, vendor);
        self.set16(0x2E, id);
        self
    }

    /// Set the interrupt pin (1..=4) and line.
    pub fn interrupt(mut self, pin: u8, line: u8) -> Self {
        self.config[0x3D] = pin;
        self.config[0x3C] = line;
        self
    }

    /// Set the command register's initial value.
    pub fn command(mut self, command: u16) -> Self {
        self.set16(0x04, command);
        self
    }

    /// A 32-bit memory BAR of `size` bytes (a power of two >= 16) at `base`.
    pub fn bar_mem32(mut self, slot: usize, base: u32, size: u32, prefetchable: bool) -> Self {
        let at = 0x10 + 4 * slot;
        self.set32(
            at,
            (base & !(size - 1)) | if prefetchable { 0x8 } else { 0 },
        );
        self.set_writable32(at, !(size - 1) & !0xF);
        self
    }

    /// A 64-bit memory BAR of `size` bytes in `slot` and `slot + 1`.
    pub fn bar_mem64(mut self, slot: usize, base: u64, size: u64, prefetchable: bool) -> Self {
        let at = 0x10 + 4 * slot;
        let base = base & !(size - 1);
        self.set32(at, (base as u32) | 0x4 | if prefetchable { 0x8 } else { 0 });
        self.set32(at + 4, (base >> 32) as u32);
        let mask = !(size - 1);
        self.set_writable32(at, (mask as u32) & !0xF);
        self.set_writable32(at + 4, (mask >> 32) as u32);
        self
    }

    /// An I/O BAR of `size` ports (a power of two >= 4) at `base`, decoding 16 address bits (the
    /// upper half reads zero, as on x86 chipset devices).
    pub fn bar_io(mut self, slot: usize, base: u16, size: u16) -> Self {
        let at = 0x10 + 4 * slot;
        self.set32(at, u32::from(base & !(size - 1)) | 1);
        self.set_writable32(at, u32::from(!(size - 1)) & 0xFFFC);
        self
    }

    /// A BAR with an arbitrary value and writable mask (for broken devices).
    pub fn bar_raw(mut self, slot: usize, value: u32, writable: u32) -> Self {
        let at = 0x10 + 4 * slot;
        self.set32(at, value);
        self.set_writable32(at, writable);
        self
    }

    /// Append a conventional capability with `id` and `body` (the bytes after ID and next);
    /// links it into the chain and sets the status register's CAP_LIST bit.
    pub fn capability(self, id: u8, body: &[u8]) -> Self {
        self.capability_with_writable(id, body, &[])
    }

    fn capability_with_writable(mut self, id: u8, body: &[u8], writable: &[u8]) -> Self {
        let at = self.next_cap;
        let len = (2 + body.len()).next_multiple_of(4) as u16;
        assert!(
            at + len <= LEGACY_CONFIG_SIZE,
            "fake capability does not fit in 256 bytes"
        );
        let a = usize::from(at);
        self.config[a] = id;
        self.config[a + 1] = 0;
        self.config[a + 2..a + 2 + body.len()].copy_from_slice(body);
        self.writable[a + 2..a + 2 + writable.len()].copy_from_slice(writable);
        match self.last_cap {
            Some(prev) => self.config[usize::from(prev) + 1] = at as u8,
            None => self.config[0x34] = at as u8,
        }
        self.config[0x06] |= 0x10;
        self.last_cap = Some(at);
        self.next_cap = at + len;
        self
    }

    /// An MSI capability for `2^mmc_log2` vectors.
    pub fn msi(self, mmc_log2: u8, is_64bit: bool, per_vector_masking: bool) -> Self {
        let control: u16 = (u16::from(mmc_log2 & 7) << 1)
            | (u16::from(is_64bit) << 7)
            | (u16::from(per_vector_masking) << 8);
        let mut body = Vec::new();
        let mut writable = Vec::new();
        body.extend_from_slice(&control.to_le_bytes());
        writable.extend_from_slice(&[0x71, 0x00]);
        body.extend_from_slice(&[0; 4]);
        writable.extend_from_slice(&0xFFFF_FFFCu32.to_le_bytes());
        if is_64bit {
            body.extend_from_slice(&[0; 4]);
            writable.extend_from_slice(&[0xFF; 4]);
        }
        body.extend_from_slice(&[0; 4]);
        writable.extend_from_slice(&[0xFF, 0xFF, 0, 0]);
        if per_vector_masking {
            body.extend_from_slice(&[0; 8]);
            writable.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]);
        }
        self.capability_with_writable(0x05, &body, &writable)
    }

    /// An MSI-X capability: `table_size` entries at `table_offset` in BAR `table_bir`, PBA at
    /// `pba_offset` in BAR `pba_bir`.
    pub fn msix(
        self,
        table_size: u16,
        table_bir: u8,
        table_offset: u32,
        pba_bir: u8,
        pba_offset: u32,
    ) -> Self {
        let control = (table_size - 1) & 0x7FF;
        let mut body = Vec::new();
        body.extend_from_slice(&control.to_le_bytes());
        body.extend_from_slice(&(table_offset | u32::from(table_bir)).to_le_bytes());
        body.extend_from_slice(&(pba_offset | u32::from(pba_bir)).to_le_bytes());
        self.capability_with_writable(0x11, &body, &[0x00, 0xC0])
    }

    /// A virtio-pci vendor capability (`virtio_pci_cap`, 16 bytes; 20 with a notify multiplier).
    pub fn virtio_cap(
        self,
        cfg_type: u8,
        bar: u8,
        offset: u32,
        length: u32,
        notify_off_multiplier: Option<u32>,
    ) -> Self {
        let cap_len: u8 = if notify_off_multiplier.is_some() {
            20
        } else {
            16
        };
        let mut body = vec![cap_len, cfg_type, bar, 0, 0, 0];
        body.extend_from_slice(&offset.to_le_bytes());
        body.extend_from_slice(&length.to_le_bytes());
        if let Some(m) = notify_off_multiplier {
            body.extend_from_slice(&m.to_le_bytes());
        }
        self.capability(0x09, &body)
    }

    /// Append an extended capability (at 0x100 and up) with `id`, `version` and `body` (the bytes
    /// after its 4-byte header).
    pub fn extended_capability(mut self, id: u16, version: u8, body: &[u8]) -> Self {
        let at = self.next_ext;
        let len = (4 + body.len()).next_multiple_of(4) as u16;
        assert!(
            at + len <= EXTENDED_CONFIG_SIZE,
            "fake extended capability does not fit"
        );
        let a = usize::from(at);
        self.set32(a, u32::from(id) | (u32::from(version & 0xF) << 16));
        self.config[a + 4..a + 4 + body.len()].copy_from_slice(body);
        if let Some(prev) = self.last_ext {
            let p = usize::from(prev);
            let header = u32::from_le_bytes([
                self.config[p],
                self.config[p + 1],
                self.config[p + 2],
                self.config[p + 3],
            ]);
            self.set32(p, (header & 0x000F_FFFF) | (u32::from(at) << 20));
        }
        self.last_ext = Some(at);
        self.next_ext = at + len;
        self
    }
}

/// A config write as the fake saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FakeWrite {
    /// Function written.
    pub addr: PciAddress,
    /// Dword offset.
    pub offset: u16,
    /// Value written.
    pub value: u32,
    /// The function's command register just before the write.
    pub command_before: u16,
}

/// Emulated configuration space of a set of functions.
#[derive(Debug)]
pub struct FakeConfigSpace {
    functions: RefCell<BTreeMap<PciAddress, FakeFunction>>,
    config_size: u16,
    writes: RefCell<Vec<FakeWrite>>,
    reads: Cell<usize>,
}

impl FakeConfigSpace {
    /// A fake reached through ECAM (4 KiB per function).
    pub fn ecam() -> Self {
        Self::with_size(EXTENDED_CONFIG_SIZE)
    }

    /// A fake reached through the legacy ports (256 bytes per function).
    pub fn legacy() -> Self {
        Self::with_size(LEGACY_CONFIG_SIZE)
    }

    fn with_size(config_size: u16) -> Self {
        FakeConfigSpace {
            functions: RefCell::new(BTreeMap::new()),
            config_size,
            writes: RefCell::new(Vec::new()),
            reads: Cell::new(0),
        }
    }

    /// Add (or replace) the function at `bus:dev.fn` of segment 0.
    pub fn insert(&self, bus: u8, dev: u8, func: u8, function: FakeFunction) -> PciAddress {
        let addr = PciAddress::new(0, bus, dev, func);
        self.insert_at(addr, function);
        addr
    }

    /// Add (or replace) the function at `addr`.
    pub fn insert_at(&self, addr: PciAddress, function: FakeFunction) {
        self.functions.borrow_mut().insert(addr, function);
    }

    /// Remove a function (surprise removal): it reads all ones from now on.
    pub fn remove(&self, addr: PciAddress) {
        self.functions.borrow_mut().remove(&addr);
    }

    /// Overwrite a byte, bypassing the writable mask (to corrupt a device in a test).
    pub fn poke8(&self, addr: PciAddress, offset: u16, value: u8) {
        if let Some(f) = self.functions.borrow_mut().get_mut(&addr) {
            f.config[usize::from(offset)] = value;
        }
    }

    /// Overwrite a dword, bypassing the writable mask.
    pub fn poke32(&self, addr: PciAddress, offset: u16, value: u32) {
        if let Some(f) = self.functions.borrow_mut().get_mut(&addr) {
            f.set32(usize::from(offset), value);
        }
    }

    /// Read a dword without logging or range checks.
    pub fn peek32(&self, addr: PciAddress, offset: u16) -> u32 {
        match self.functions.borrow().get(&addr) {
            Some(f) => {
                let o = usize::from(offset);
                u32::from_le_bytes([
                    f.config[o],
                    f.config[o + 1],
                    f.config[o + 2],
                    f.config[o + 3],
                ])
            }
            None => u32::MAX,
        }
    }

    /// A copy of a function's whole configuration space.
    pub fn snapshot(&self, addr: PciAddress) -> Option<Vec<u8>> {
        self.functions.borrow().get(&addr).map(|f| f.config.clone())
    }

    /// Every write so far, in order.
    pub fn writes(&self) -> Vec<FakeWrite> {
        self.writes.borrow().clone()
    }

    /// Forget the logged writes.
    pub fn clear_writes(&self) {
        self.writes.borrow_mut().clear();
    }

    /// Number of reads so far.
    pub fn read_count(&self) -> usize {
        self.reads.get()
    }

    fn check(&self, offset: u16) {
        assert_eq!(offset & 3, 0, "unaligned config access at {offset:#x}");
        assert!(
            offset < self.config_size,
            "config access at {offset:#x} beyond {:#x}",
            self.config_size
        );
    }
}

impl ConfigAccess for FakeConfigSpace {
    fn read32(&self, addr: PciAddress, offset: u16) -> u32 {
        self.check(offset);
        self.reads.set(self.reads.get() + 1);
        self.peek32(addr, offset)
    }

    fn write32(&self, addr: PciAddress, offset: u16, value: u32) {
        self.check(offset);
        let mut functions = self.functions.borrow_mut();
        let Some(f) = functions.get_mut(&addr) else {
            return;
        };
        let command_before = u16::from_le_bytes([f.config[4], f.config[5]]);
        self.writes.borrow_mut().push(FakeWrite {
            addr,
            offset,
            value,
            command_before,
        });
        let o = usize::from(offset);
        for (i, byte) in value.to_le_bytes().iter().enumerate() {
            let mask = f.writable[o + i];
            f.config[o + i] = (f.config[o + i] & !mask) | (byte & mask);
        }
    }

    fn config_size(&self) -> u16 {
        self.config_size
    }
}

/// An emulated MSI-X table: entries start masked with zero address and data (the reset state).
/// It counts writes to an entry's address or data while that entry is unmasked, which the
/// specification leaves undefined, so tests can assert there were none.
#[derive(Debug)]
pub struct FakeMsixTable {
    words: RefCell<Vec<u32>>,
    unmasked_writes: Cell<usize>,
    writes: RefCell<Vec<(u32, u32)>>,
}

impl FakeMsixTable {
    /// A table of `entries` entries.
    pub fn new(entries: u16) -> Self {
        let mut words = vec![0u32; usize::from(entries) * 4];
        for e in 0..usize::from(entries) {
            words[e * 4 + 3] = MSIX_VECTOR_MASKED;
        }
        FakeMsixTable {
            words: RefCell::new(words),
            unmasked_writes: Cell::new(0),
            writes: RefCell::new(Vec::new()),
        }
    }

    /// Entry `index`: (address, data, masked).
    pub fn entry(&self, index: u16) -> (u64, u32, bool) {
        let w = self.words.borrow();
        let i = usize::from(index) * 4;
        (
            (u64::from(w[i + 1]) << 32) | u64::from(w[i]),
            w[i + 2],
            w[i + 3] & MSIX_VECTOR_MASKED != 0,
        )
    }

    /// Writes to an unmasked entry's address or data so far.
    pub fn unmasked_writes(&self) -> usize {
        self.unmasked_writes.get()
    }

    /// Every write so far: (offset, value).
    pub fn writes(&self) -> Vec<(u32, u32)> {
        self.writes.borrow().clone()
    }
}

impl MsixTable for FakeMsixTable {
    fn read32(&self, offset: u32) -> u32 {
        self.words.borrow()[(offset / 4) as usize]
    }

    fn write32(&self, offset: u32, value: u32) {
        let mut w = self.words.borrow_mut();
        let entry = (offset / MSIX_ENTRY_SIZE) as usize;
        let field = offset % MSIX_ENTRY_SIZE;
        if field != MSIX_ENTRY_VECTOR_CTRL && w[entry * 4 + 3] & MSIX_VECTOR_MASKED == 0 {
            self.unmasked_writes.set(self.unmasked_writes.get() + 1);
        }
        w[(offset / 4) as usize] = value;
        self.writes.borrow_mut().push((offset, value));
    }
}

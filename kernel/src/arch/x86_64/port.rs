//! Port I/O: the only place `in`/`out` instructions are issued.

use x86_64::instructions::port::Port;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O cannot violate Rust memory safety; the devices Lull addresses (16550,
    // PIT, PIC, ACPI PM, isa-debug-exit) are reached only through their owners in arch/.
    unsafe { Port::<u8>::new(port).write(value) }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    // SAFETY: as for `outb`.
    unsafe { Port::<u8>::new(port).read() }
}

/// Writes a 16-bit word to an I/O port.
pub fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`.
    unsafe { Port::<u16>::new(port).write(value) }
}

/// Reads a 16-bit word from an I/O port.
pub fn inw(port: u16) -> u16 {
    // SAFETY: as for `outb`.
    unsafe { Port::<u16>::new(port).read() }
}

/// Writes a 32-bit word to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe { Port::<u32>::new(port).write(value) }
}

/// Reads a 32-bit word from an I/O port.
pub fn inl(port: u16) -> u32 {
    // SAFETY: as for `outb`.
    unsafe { Port::<u32>::new(port).read() }
}

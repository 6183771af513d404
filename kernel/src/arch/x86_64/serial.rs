//! 16550 UART on COM1: the console (polled output, interrupt-driven input).

use super::port::{inb, outb};

/// COM1 base I/O port.
pub const COM1: u16 = 0x3f8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u8 = 4;

const DATA: u16 = 0;
const INTERRUPT_ENABLE: u16 = 1;
const LINE_CONTROL: u16 = 3;
const MODEM_CONTROL: u16 = 4;
const LINE_STATUS: u16 = 5;

const LSR_DATA_READY: u8 = 1 << 0;
const LSR_TX_EMPTY: u8 = 1 << 5;
const IER_RX_AVAILABLE: u8 = 1 << 0;

/// The name of the boot's reservation of COM1's ports (`/proc/ioports`) until the `serial`
/// driver takes the UART over.
pub(super) const BOOT_CLAIM: &str = "serial (COM1)";

/// Gives up the boot's reservation of COM1's ports, so the `serial` driver can claim them;
/// whether it was held.
pub fn release_boot_claim() -> bool {
    super::io::unreserve(COM1, BOOT_CLAIM)
}

/// Reserves COM1's ports for the console again (the driver's probe failed after
/// [`release_boot_claim`]).
pub fn restore_boot_claim() {
    let _ = super::io::reserve(COM1, 8, BOOT_CLAIM);
}

/// Programs COM1 for 115200 8N1; interrupts stay off until `set_rx_interrupt`.
///
/// The FIFO control register is deliberately left as firmware set it: changing the FIFO
/// enable bit clears the receive buffer, and input may already be waiting (commands piped
/// into QEMU before the kernel ran). Unread bytes simply wait in the UART (QEMU holds further
/// input until there is room) and raise the interrupt once it is enabled.
pub fn init() {
    outb(COM1 + INTERRUPT_ENABLE, 0);
    outb(COM1 + LINE_CONTROL, 0x80); // DLAB on
    outb(COM1 + DATA, 1); // divisor 1 = 115200 baud
    outb(COM1 + INTERRUPT_ENABLE, 0);
    outb(COM1 + LINE_CONTROL, 0x03); // 8N1, DLAB off
    outb(COM1 + MODEM_CONTROL, 0x0B); // DTR, RTS, OUT2 (routes the IRQ)
}

/// Sends one byte, waiting for room in the transmitter.
pub fn write_byte(byte: u8) {
    let mut spins = 0u32;
    while inb(COM1 + LINE_STATUS) & LSR_TX_EMPTY == 0 && spins < 100_000 {
        core::hint::spin_loop();
        spins += 1;
    }
    outb(COM1 + DATA, byte);
}

/// Sends bytes, turning `\n` into `\r\n` as a terminal expects.
pub fn write_bytes(bytes: &[u8]) {
    for &byte in bytes {
        if byte == b'\n' {
            write_byte(b'\r');
        }
        write_byte(byte);
    }
}

/// Returns a received byte, if one is waiting.
pub fn try_read_byte() -> Option<u8> {
    if inb(COM1 + LINE_STATUS) & LSR_DATA_READY != 0 {
        Some(inb(COM1 + DATA))
    } else {
        None
    }
}

/// Turns the receive interrupt on or off (off = flow control: QEMU holds input while the FIFO
/// is full, so nothing is lost while the kernel's input ring drains).
pub fn set_rx_interrupt(enabled: bool) {
    outb(
        COM1 + INTERRUPT_ENABLE,
        if enabled { IER_RX_AVAILABLE } else { 0 },
    );
}

/// Writes formatted text straight to COM1, without any lock (emergency reports).
pub fn write_fmt(args: core::fmt::Arguments<'_>) {
    struct Com1;
    impl core::fmt::Write for Com1 {
        fn write_str(&mut self, text: &str) -> core::fmt::Result {
            write_bytes(text.as_bytes());
            Ok(())
        }
    }
    let _ = core::fmt::Write::write_fmt(&mut Com1, args);
}

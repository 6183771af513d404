//! PCI: the bus scan and `lspci` (first step of the driver model's PCI bus).
//!
//! The logic (enumeration through bridges, BAR sizing with decoding off, capability walks,
//! lspci formatting) is `lull-pci`, host-tested against fake config spaces; this module runs
//! it on the machine's config mechanism (`arch::pci::Conf1`, the 0xCF8/0xCFC ports, segment
//! 0). The scan happens on first use, in thread context, so it adds nothing to boot. Not yet
//! here: ECAM (MCFG), binding drivers, MSI/MSI-X set-up and `/sys/bus/pci`.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use lull_pci::{enumerate, Enumeration, HostBridge};
use spin::Once;

use crate::arch::pci::Conf1;

static SCAN: Once<Enumeration> = Once::new();

/// The functions found on the PCI buses (scanned once, on first call).
pub fn scan() -> &'static Enumeration {
    SCAN.call_once(|| enumerate(Conf1::get(), &[HostBridge::LEGACY]))
}

/// `lspci [-n|-v]`: one line per function as Linux's `lspci -nn` (`-n`: numbers only; `-v`:
/// BARs, IRQ pin/line and capabilities too).
pub fn lspci(args: &[&str]) -> Result<String, String> {
    let mode = match args {
        [] => 'd',
        ["-n"] => 'n',
        ["-v"] => 'v',
        _ => return Err(String::from("usage: lspci [-n|-v]")),
    };
    let scan = scan();
    let mut text = String::new();
    for function in &scan.functions {
        let line = match mode {
            'n' => lull_pci::lspci_numeric_line(function),
            'v' => lull_pci::lspci_verbose(function),
            _ => lull_pci::lspci_line(function),
        };
        let _ = writeln!(text, "{line}");
    }
    let problems: Vec<String> = scan
        .problems
        .iter()
        .map(|p| alloc::format!("{p}"))
        .collect();
    for problem in problems {
        let _ = writeln!(text, "lspci: {problem}");
    }
    Ok(text)
}

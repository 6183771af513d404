//! Host tests: AML written out byte by byte with a small assembler, loaded and evaluated
//! against a fake host that records its region accesses and notifications.

extern crate std;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use std::collections::BTreeMap;

use crate::devices::{self, PrtSource};
use crate::resource::Resource;
use crate::{Error, Host, Namespace, Space, Value};

#[derive(Default)]
struct FakeHost {
    memory: BTreeMap<u64, u8>,
    io: BTreeMap<u64, u8>,
    notified: Vec<(String, u64)>,
    accesses: Vec<(Space, u64, u8, Option<u64>)>,
}

impl FakeHost {
    fn bank(&mut self, space: Space) -> &mut BTreeMap<u64, u8> {
        match space {
            Space::Memory => &mut self.memory,
            _ => &mut self.io,
        }
    }
}

impl Host for FakeHost {
    fn read(&mut self, space: Space, address: u64, width: u8) -> Result<u64, Error> {
        self.accesses.push((space, address, width, None));
        let bank = self.bank(space);
        let mut value = 0u64;
        for i in 0..width as u64 {
            value |= (*bank.get(&(address + i)).unwrap_or(&0) as u64) << (8 * i);
        }
        Ok(value)
    }
    fn write(&mut self, space: Space, address: u64, width: u8, value: u64) -> Result<(), Error> {
        self.accesses.push((space, address, width, Some(value)));
        let bank = self.bank(space);
        for i in 0..width as u64 {
            bank.insert(address + i, (value >> (8 * i)) as u8);
        }
        Ok(())
    }
    fn notify(&mut self, path: &str, value: u64) {
        self.notified.push((path.into(), value));
    }
}

// --- A small AML assembler -------------------------------------------------------------

fn pkg_length(content: usize) -> Vec<u8> {
    if content < 63 {
        return vec![(content + 1) as u8];
    }
    if content + 2 < 1 << 12 {
        let total = content + 2;
        return vec![0x40 | (total & 0x0F) as u8, (total >> 4) as u8];
    }
    let total = content + 3;
    vec![
        0x80 | (total & 0x0F) as u8,
        (total >> 4) as u8,
        (total >> 12) as u8,
    ]
}

fn pkg(op: &[u8], body: Vec<u8>) -> Vec<u8> {
    let mut out = op.to_vec();
    out.extend(pkg_length(body.len()));
    out.extend(body);
    out
}

fn seg(name: &str) -> [u8; 4] {
    let mut s = [b'_'; 4];
    s[..name.len()].copy_from_slice(name.as_bytes());
    s
}

/// A NameString: `\A.B`, `A.B.C`, `^X`, `X`.
fn name(path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = path;
    if let Some(r) = rest.strip_prefix('\\') {
        out.push(b'\\');
        rest = r;
    }
    while let Some(r) = rest.strip_prefix('^') {
        out.push(b'^');
        rest = r;
    }
    let parts: Vec<&str> = rest.split('.').filter(|p| !p.is_empty()).collect();
    match parts.len() {
        0 => out.push(0),
        1 => {}
        2 => out.push(0x2E),
        n => {
            out.push(0x2F);
            out.push(n as u8);
        }
    }
    for part in parts {
        out.extend(seg(part));
    }
    out
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn scope(path: &str, body: Vec<u8>) -> Vec<u8> {
    pkg(&[0x10], cat(&[name(path), body]))
}

fn device(n: &str, body: Vec<u8>) -> Vec<u8> {
    pkg(&[0x5B, 0x82], cat(&[name(n), body]))
}

fn name_decl(n: &str, value: Vec<u8>) -> Vec<u8> {
    cat(&[vec![0x08], name(n), value])
}

fn method(n: &str, args: u8, body: Vec<u8>) -> Vec<u8> {
    pkg(&[0x14], cat(&[name(n), vec![args], body]))
}

fn int(v: u64) -> Vec<u8> {
    match v {
        0 => vec![0x00],
        1 => vec![0x01],
        v if v <= 0xFF => vec![0x0A, v as u8],
        v if v <= 0xFFFF => cat(&[vec![0x0B], (v as u16).to_le_bytes().to_vec()]),
        v if v <= 0xFFFF_FFFF => cat(&[vec![0x0C], (v as u32).to_le_bytes().to_vec()]),
        v => cat(&[vec![0x0E], v.to_le_bytes().to_vec()]),
    }
}

fn eisa(id: &str) -> Vec<u8> {
    let b = id.as_bytes();
    let l = |c: u8| (c - 0x40) as u32;
    let h = |c: u8| (c as char).to_digit(16).unwrap();
    let v = (l(b[0]) << 26)
        | (l(b[1]) << 21)
        | (l(b[2]) << 16)
        | (h(b[3]) << 12)
        | (h(b[4]) << 8)
        | (h(b[5]) << 4)
        | h(b[6]);
    int(v.swap_bytes() as u64)
}

fn string(text: &str) -> Vec<u8> {
    cat(&[vec![0x0D], text.as_bytes().to_vec(), vec![0]])
}

fn package(elements: &[Vec<u8>]) -> Vec<u8> {
    pkg(&[0x12], cat(&[vec![elements.len() as u8], cat(elements)]))
}

fn buffer(bytes: &[u8]) -> Vec<u8> {
    pkg(&[0x11], cat(&[int(bytes.len() as u64), bytes.to_vec()]))
}

fn if_else(predicate: Vec<u8>, then: Vec<u8>, otherwise: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = pkg(&[0xA0], cat(&[predicate, then]));
    if let Some(otherwise) = otherwise {
        out.extend(pkg(&[0xA1], otherwise));
    }
    out
}

fn op2(op: u8, a: Vec<u8>, b: Vec<u8>) -> Vec<u8> {
    cat(&[vec![op], a, b])
}

fn ret(value: Vec<u8>) -> Vec<u8> {
    cat(&[vec![0xA4], value])
}

fn store(value: Vec<u8>, target: Vec<u8>) -> Vec<u8> {
    cat(&[vec![0x70], value, target])
}

fn region(n: &str, space: u8, offset: u64, length: u64) -> Vec<u8> {
    cat(&[
        vec![0x5B, 0x80],
        name(n),
        vec![space],
        int(offset),
        int(length),
    ])
}

/// `Field(region, flags) { name, bits ... }`; an empty name is a reserved gap.
fn field(region: &str, flags: u8, units: &[(&str, usize)]) -> Vec<u8> {
    let mut list = Vec::new();
    for (n, bits) in units {
        if n.is_empty() {
            list.push(0x00);
        } else {
            list.extend(seg(n));
        }
        let mut encoded = pkg_length(*bits);
        // Field widths use the PkgLength encoding of the number itself.
        if *bits < 63 {
            encoded = vec![*bits as u8];
        } else {
            encoded[0] = 0x40 | (*bits & 0x0F) as u8;
            encoded[1] = (*bits >> 4) as u8;
        }
        list.extend(encoded);
    }
    pkg(&[0x5B, 0x81], cat(&[name(region), vec![flags], list]))
}

fn table(signature: &[u8; 4], revision: u8, body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(signature);
    out.extend(((36 + body.len()) as u32).to_le_bytes());
    out.push(revision);
    out.push(0); // checksum (the interpreter does not check it; the kernel does)
    out.extend(b"LULLTS");
    out.extend(b"TESTTABL");
    out.extend(1u32.to_le_bytes());
    out.extend(b"LULL");
    out.extend(1u32.to_le_bytes());
    out.extend(body);
    out
}

const LOCAL0: u8 = 0x60;
const ARG0: u8 = 0x68;

/// A q35-like DSDT: a PCI root whose `_PRT` depends on `\_PIC`, two link devices, a serial
/// port, and `\_S5`.
fn q35_like() -> Vec<u8> {
    let prt_entry =
        |adr: u64, pin: u64, link: &str| package(&[int(adr), int(pin), name(link), int(0)]);
    let gsi_link = |n: &str, gsi: u8| {
        device(
            n,
            cat(&[
                name_decl("_HID", eisa("PNP0C0F")),
                name_decl("_UID", int(gsi as u64)),
                // Interrupt(ResourceConsumer, Level, ActiveHigh, Shared) {gsi}
                name_decl(
                    "_CRS",
                    buffer(&[0x89, 0x06, 0x00, 0x09, 0x01, gsi, 0, 0, 0, 0x79, 0x00]),
                ),
            ]),
        )
    };
    let body = cat(&[
        name_decl("PICF", int(0)),
        method("_PIC", 1, store(vec![ARG0], name("PICF"))),
        scope(
            "\\_SB",
            cat(&[device(
                "PCI0",
                cat(&[
                    name_decl("_HID", eisa("PNP0A08")),
                    name_decl("_CID", eisa("PNP0A03")),
                    name_decl("_ADR", int(0)),
                    name_decl("_UID", int(0)),
                    name_decl("PRTP", package(&[prt_entry(0x1FFFF, 0, "LNKA")])),
                    name_decl(
                        "PRTA",
                        package(&[
                            prt_entry(0x1FFFF, 0, "GSIA"),
                            prt_entry(0x2FFFF, 1, "GSIB"),
                            package(&[int(0x3FFFF), int(2), int(0), int(22)]),
                        ]),
                    ),
                    method(
                        "_PRT",
                        0,
                        if_else(
                            op2(0x93, name("PICF"), int(0)),
                            ret(name("PRTP")),
                            Some(ret(name("PRTA"))),
                        ),
                    ),
                    gsi_link("GSIA", 16),
                    gsi_link("GSIB", 17),
                    device(
                        "ISA_",
                        cat(&[
                            name_decl("_ADR", int(0x001F_0000)),
                            device(
                                "COM1",
                                cat(&[
                                    name_decl("_HID", eisa("PNP0501")),
                                    name_decl("_UID", int(1)),
                                    method("_STA", 0, ret(int(0x0F))),
                                    name_decl(
                                        "_CRS",
                                        buffer(&[
                                            0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x00, 0x08, 0x22,
                                            0x10, 0x00, 0x79, 0x00,
                                        ]),
                                    ),
                                ]),
                            ),
                            device(
                                "GONE",
                                cat(&[
                                    name_decl("_HID", eisa("PNP0400")),
                                    name_decl("_STA", int(0)),
                                    device("KID_", name_decl("_HID", eisa("PNP0401"))),
                                ]),
                            ),
                        ]),
                    ),
                ]),
            )]),
        ),
        name_decl("_S5_", package(&[int(5), int(5), int(0), int(0)])),
    ]);
    table(b"DSDT", 1, body)
}

fn loaded(dsdt: &[u8], host: &mut FakeHost) -> Namespace {
    let mut ns = Namespace::new();
    let errors = ns.load_table(dsdt, host).expect("loads");
    assert!(errors.is_empty(), "{errors:?}");
    ns
}

#[test]
fn s5_is_evaluated() {
    let mut host = FakeHost::default();
    let mut ns = loaded(&q35_like(), &mut host);
    let s5 = ns.evaluate(&mut host, "\\_S5", vec![]).unwrap();
    let Value::Package(elements) = s5 else {
        panic!("{s5:?}")
    };
    assert_eq!(elements[0], Value::Integer(5));
}

#[test]
fn devices_are_enumerated_with_ids_status_and_resources() {
    let mut host = FakeHost::default();
    let mut ns = loaded(&q35_like(), &mut host);
    let list = devices::devices(&mut ns, &mut host);
    let paths: Vec<&str> = list.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "\\_SB_.PCI0",
            "\\_SB_.PCI0.GSIA",
            "\\_SB_.PCI0.GSIB",
            "\\_SB_.PCI0.ISA_",
            "\\_SB_.PCI0.ISA_.COM1",
            "\\_SB_.PCI0.ISA_.GONE"
        ],
        "the child of an absent device is not listed"
    );
    let root = &list[0];
    assert!(root.is("PNP0A08") && root.is("PNP0A03"));
    let com1 = list.iter().find(|d| d.is("PNP0501")).unwrap();
    assert_eq!(com1.uid.as_deref(), Some("1"));
    assert_eq!(com1.status, 0x0F);
    assert!(com1.resources.contains(&Resource::Io {
        base: 0x3F8,
        length: 8
    }));
    let gone = list.iter().find(|d| d.path.ends_with("GONE")).unwrap();
    assert_eq!(gone.status, 0);
    assert!(gone.resources.is_empty());
}

#[test]
fn prt_follows_pic_mode_and_resolves_links() {
    let mut host = FakeHost::default();
    let mut ns = loaded(&q35_like(), &mut host);
    let root = ns.find("\\_SB.PCI0").unwrap();
    let pic = devices::pci_routing(&mut ns, &mut host, root).unwrap();
    assert_eq!(pic.len(), 1, "PIC mode table before _PIC(1)");
    ns.evaluate(&mut host, "\\_PIC", vec![Value::Integer(1)])
        .unwrap();
    let apic = devices::pci_routing(&mut ns, &mut host, root).unwrap();
    assert_eq!(apic.len(), 3);
    assert_eq!(apic[0].device, 1);
    assert_eq!(apic[0].function, 0xFFFF);
    assert_eq!(
        apic[0].source,
        PrtSource::Link {
            path: "\\_SB_.PCI0.GSIA".into(),
            index: 0,
            gsi: Some(16)
        }
    );
    assert_eq!(apic[1].pin, 1);
    assert_eq!(apic[2].source, PrtSource::Gsi(22));
}

/// QEMU's Generic Event Device as microvm describes it: an event selector register in MMIO
/// and `_EVT` notifying the power button when bit 1 is set.
fn ged_like() -> Vec<u8> {
    let evt = cat(&[
        store(name("ESEL"), vec![LOCAL0]),
        if_else(
            op2(
                0x93,
                cat(&[vec![0x7B], vec![LOCAL0], int(2), vec![0]]),
                int(2),
            ),
            cat(&[vec![0x86], name("\\_SB.PWRB"), int(0x80)]),
            None,
        ),
    ]);
    let body = scope(
        "\\_SB",
        cat(&[
            device(
                "GED_",
                cat(&[
                    name_decl("_HID", string("ACPI0013")),
                    name_decl("_UID", string("GED")),
                    name_decl(
                        "_CRS",
                        buffer(&[0x89, 0x06, 0x00, 0x03, 0x01, 0x09, 0, 0, 0, 0x79, 0x00]),
                    ),
                    region("EREG", 0, 0xFEA0_0000, 4),
                    // DWordAcc, NoLock, WriteAsZeros
                    field("EREG", 0x03 | (2 << 5), &[("ESEL", 32)]),
                    // Method(_EVT, 1, Serialized)
                    method("_EVT", 0x09, evt),
                ]),
            ),
            device("PWRB", name_decl("_HID", eisa("PNP0C0C"))),
        ]),
    );
    table(b"DSDT", 2, body)
}

#[test]
fn ged_event_notifies_the_power_button() {
    let mut host = FakeHost::default();
    let mut ns = loaded(&ged_like(), &mut host);
    let list = devices::devices(&mut ns, &mut host);
    let ged = list.iter().find(|d| d.is("ACPI0013")).unwrap();
    let found = devices::find_by_id(&mut ns, &mut host, &["ACPI0013", "PNP0C0C"]);
    assert_eq!(found.len(), 2);
    assert_eq!(&found[0], ged);
    assert_eq!(ged.uid.as_deref(), Some("GED"));
    assert!(matches!(&ged.resources[0], Resource::Interrupt { irqs, .. } if irqs == &vec![9]));
    // No event pending: nothing notified, one 32-bit read of the selector.
    host.accesses.clear();
    ns.evaluate(&mut host, "\\_SB.GED._EVT", vec![Value::Integer(9)])
        .unwrap();
    assert!(host.notified.is_empty());
    assert_eq!(host.accesses, vec![(Space::Memory, 0xFEA0_0000, 4, None)]);
    // The power-down event.
    host.memory.insert(0xFEA0_0000, 2);
    ns.evaluate(&mut host, "\\_SB.GED._EVT", vec![Value::Integer(9)])
        .unwrap();
    assert_eq!(host.notified, vec![("\\_SB_.PWRB".into(), 0x80)]);
}

#[test]
fn fields_preserve_neighbours_and_write_as_told() {
    let body = cat(&[
        region("PORT", 1, 0x500, 4),
        // ByteAcc, Preserve: A is bits 0-3, B bits 4-11 (spans two bytes).
        field("PORT", 0x01, &[("A", 4), ("B", 8)]),
        // WordAcc, WriteAsOnes over the second word.
        field("PORT", 0x02 | (1 << 5), &[("", 16), ("C", 4)]),
    ]);
    let mut host = FakeHost::default();
    let mut ns = loaded(&table(b"SSDT", 2, body), &mut host);
    host.io.insert(0x500, 0x5A);
    host.io.insert(0x501, 0xF0);
    assert_eq!(
        ns.evaluate(&mut host, "\\B", vec![]).unwrap(),
        Value::Integer(0x05)
    );
    // Store 0xAB to B: low nibble of 0x500 keeps A (0xA), high nibble of 0x501 kept (0xF).
    let store_b = table(b"SSDT", 2, store(int(0xAB), name("\\B")));
    ns.load_table(&store_b, &mut host).unwrap();
    assert_eq!(host.io[&0x500], 0xBA);
    assert_eq!(host.io[&0x501], 0xFA);
    let store_c = table(b"SSDT", 2, store(int(0x3), name("\\C")));
    ns.load_table(&store_c, &mut host).unwrap();
    assert_eq!(host.io[&0x502], 0xF3);
    assert_eq!(host.io[&0x503], 0xFF);
}

#[test]
fn method_locals_buffer_fields_and_cleanup() {
    // Method(CRS_) { Name(RES_, ResourceTemplate { Interrupt {0} }) CreateDWordField(RES_, 5,
    // IRQ_) Store(Add(Arg0, 1), IRQ_) Return(RES_) }
    let body = method(
        "MCRS",
        1,
        cat(&[
            name_decl(
                "RES_",
                buffer(&[0x89, 0x06, 0x00, 0x09, 0x01, 0, 0, 0, 0, 0x79, 0x00]),
            ),
            cat(&[vec![0x8A], name("RES_"), int(5), name("IRQ_")]),
            store(
                cat(&[vec![0x72], vec![ARG0], int(1), vec![0]]),
                name("IRQ_"),
            ),
            ret(name("RES_")),
        ]),
    );
    let mut host = FakeHost::default();
    let mut ns = loaded(&table(b"DSDT", 2, body), &mut host);
    for _ in 0..2 {
        let value = ns
            .evaluate(&mut host, "\\MCRS", vec![Value::Integer(10)])
            .unwrap();
        let Value::Buffer(bytes) = value else {
            panic!()
        };
        assert_eq!(bytes[5], 11);
        assert!(ns.find("\\MCRS.RES_").is_none(), "method objects removed");
    }
}

#[test]
fn endless_loops_and_recursion_end_with_errors() {
    let body = cat(&[
        method("LOOP", 0, pkg(&[0xA2], cat(&[int(1)]))),
        method("RECU", 0, ret(name("RECU"))),
    ]);
    let mut host = FakeHost::default();
    let mut ns = loaded(&table(b"DSDT", 2, body), &mut host);
    assert_eq!(
        ns.evaluate(&mut host, "\\LOOP", vec![]),
        Err(Error::Timeout)
    );
    assert_eq!(
        ns.evaluate(&mut host, "\\RECU", vec![]),
        Err(Error::TooDeep)
    );
}

#[test]
fn errors_inside_a_device_skip_only_that_device() {
    let body = scope(
        "\\_SB",
        cat(&[
            device("BAD_", cat(&[name_decl("_HID", int(1)), vec![0x5B, 0x20]])),
            device("GOOD", name_decl("_HID", string("LULL0001"))),
        ]),
    );
    let mut host = FakeHost::default();
    let mut ns = Namespace::new();
    let errors = ns.load_table(&table(b"DSDT", 2, body), &mut host).unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(ns.find("\\_SB.GOOD._HID").is_some());
}

#[test]
fn garbage_never_panics() {
    let reference = [q35_like(), ged_like()];
    let mut seed: u64 = 0x1234_5678;
    let mut next = || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as usize
    };
    for round in 0..3000 {
        let mut bytes = reference[round % 2].clone();
        match round % 3 {
            0 => bytes.truncate(36 + next() % (bytes.len() - 36)),
            1 => {
                for _ in 0..1 + next() % 4 {
                    let at = 36 + next() % (bytes.len() - 36);
                    bytes[at] = next() as u8;
                }
            }
            _ => {
                for byte in bytes.iter_mut().skip(36) {
                    *byte = next() as u8;
                }
            }
        }
        let mut host = FakeHost::default();
        let mut ns = Namespace::new();
        let _ = ns.load_table(&bytes, &mut host);
        let _ = devices::devices(&mut ns, &mut host);
        if let Some(root) = ns.find("\\_SB.PCI0") {
            let _ = devices::pci_routing(&mut ns, &mut host, root);
        }
        let _ = ns.evaluate(&mut host, "\\_SB.GED._EVT", vec![Value::Integer(9)]);
    }
}

/// How deep AML can nest on a kernel thread's 64 KiB stack: the deepest expression the
/// interpreter accepts must fit (release build; the kernel's debug build uses opt-level 1).
#[test]
fn deepest_nesting_fits_a_kernel_stack() {
    let depth = 200;
    let mut expression = int(1);
    for _ in 0..depth {
        expression = cat(&[vec![0x72], expression, int(1), vec![0]]);
    }
    let body = method("DEEP", 0, ret(expression));
    let dsdt = table(b"DSDT", 2, body);
    let stack = if cfg!(debug_assertions) {
        1 << 20
    } else {
        40 << 10
    };
    let outcome = std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || {
            let mut host = FakeHost::default();
            let mut ns = Namespace::new();
            ns.load_table(&dsdt, &mut host).unwrap();
            ns.evaluate(&mut host, "\\DEEP", vec![])
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(outcome, Err(Error::TooDeep));
}

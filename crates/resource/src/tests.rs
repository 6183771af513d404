//! Unit tests: each error names its owner, nesting, release, and the proc formats.

use alloc::string::ToString;
use alloc::vec::Vec;

use crate::*;

fn busy(owner: &'static str, start: u64, end: u64) -> ResourceError {
    ResourceError::Busy {
        owner: owner.into(),
        start,
        end,
    }
}

fn partial(owner: &'static str, start: u64, end: u64) -> ResourceError {
    ResourceError::PartialOverlap {
        owner: owner.into(),
        start,
        end,
    }
}

/// (start, end, name, depth) of every resource, in iteration order.
fn layout(tree: &ResourceTree) -> Vec<(u64, u64, &str, usize)> {
    tree.iter()
        .map(|r| (r.start, r.end, r.name, r.depth))
        .collect()
}

#[test]
fn overlapping_a_busy_region_names_its_owner() {
    let mut io = ResourceTree::io_ports();
    io.request_region(0x3f8, 8, "serial").unwrap();
    // Inside, straddling the start, straddling the end, covering it whole.
    for (start, len) in [(0x3fa, 2), (0x3f0, 9), (0x3ff, 4), (0x3f0, 0x20)] {
        assert_eq!(
            io.request_region(start, len, "intruder"),
            Err(busy("serial", 0x3f8, 0x3ff)),
            "request {start:#x}+{len:#x}"
        );
    }
    // Neighbours on both sides are fine.
    io.request_region(0x3f0, 8, "below").unwrap();
    io.request_region(0x400, 1, "above").unwrap();
    assert_eq!(io.len(), 3);
}

#[test]
fn crossing_a_container_boundary_is_a_partial_overlap() {
    let mut mem = ResourceTree::memory();
    mem.insert_resource(
        0xfe00_0000,
        0x100_0000,
        "PCI Bus 0000:00",
        Occupancy::Container,
    )
    .unwrap();
    assert_eq!(
        mem.request_region(0xfdff_f000, 0x2000, "bar"),
        Err(partial("PCI Bus 0000:00", 0xfe00_0000, 0xfeff_ffff))
    );
    assert_eq!(
        mem.request_region(0xfeff_f000, 0x2000, "bar"),
        Err(partial("PCI Bus 0000:00", 0xfe00_0000, 0xfeff_ffff))
    );
    // insert_resource that crosses a boundary is refused the same way.
    assert_eq!(
        mem.insert_resource(0xfeff_0000, 0x2_0000, "window", Occupancy::Container),
        Err(partial("PCI Bus 0000:00", 0xfe00_0000, 0xfeff_ffff))
    );
    assert_eq!(mem.len(), 1);
}

#[test]
fn ranges_that_are_not_ranges_are_refused() {
    let mut io = ResourceTree::io_ports();
    assert_eq!(
        io.request_region(0x60, 0, "kbd"),
        Err(ResourceError::ZeroLength { start: 0x60 })
    );
    assert_eq!(
        io.request_region(0xfff0, 0x11, "past the end"),
        Err(ResourceError::OutOfRange {
            start: 0xfff0,
            end: 0x1_0000,
            limit: 0xffff
        })
    );
    assert_eq!(
        io.insert_resource(0x1_0000, 1, "beyond", Occupancy::Container),
        Err(ResourceError::OutOfRange {
            start: 0x1_0000,
            end: 0x1_0000,
            limit: 0xffff
        })
    );
    // The last port is claimable.
    io.request_region(0xffff, 1, "last").unwrap();

    let mut mem = ResourceTree::memory();
    assert_eq!(
        mem.request_region(2, u64::MAX, "too long"),
        Err(ResourceError::Overflow {
            start: 2,
            len: u64::MAX
        })
    );
    // 1 + (u64::MAX - 1) is exactly the last address: allowed.
    mem.request_region(1, u64::MAX, "everything but zero")
        .unwrap();
    assert_eq!(mem.owner_of(u64::MAX), Some("everything but zero"));
    assert_eq!(mem.owner_of(0), None);
}

#[test]
fn a_request_nests_in_the_deepest_container_that_covers_it() {
    let mut mem = ResourceTree::memory();
    let bus = mem
        .insert_resource(
            0xc000_0000,
            0x4000_0000,
            "PCI Bus 0000:00",
            Occupancy::Container,
        )
        .unwrap();
    let bridge = mem
        .insert_resource(
            0xfd00_0000,
            0x100_0000,
            "PCI Bus 0000:01",
            Occupancy::Container,
        )
        .unwrap();
    assert_eq!(mem.parent(bridge), Some(bus));
    let bar = mem
        .request_region(0xfd00_0000, 0x1000, "0000:01:00.0")
        .unwrap();
    assert_eq!(mem.parent(bar), Some(bridge));
    assert_eq!(mem.get(bar).unwrap().depth, 2);
    assert_eq!(mem.get(bar).unwrap().occupancy, Occupancy::Busy);
    // A request with exactly a container's range nests in it too (Linux descends on equality).
    let whole = mem.request_region(0xc000_0000, 0x1000, "vga").unwrap();
    assert_eq!(mem.parent(whole), Some(bus));

    // Nothing nests inside a busy region.
    assert_eq!(
        mem.request_region(0xfd00_0800, 0x10, "inside the BAR"),
        Err(busy("0000:01:00.0", 0xfd00_0000, 0xfd00_0fff))
    );
    assert_eq!(
        layout(&mem),
        [
            (0xc000_0000, 0xffff_ffff, "PCI Bus 0000:00", 0),
            (0xc000_0000, 0xc000_0fff, "vga", 1),
            (0xfd00_0000, 0xfdff_ffff, "PCI Bus 0000:01", 1),
            (0xfd00_0000, 0xfd00_0fff, "0000:01:00.0", 2),
        ]
    );
    assert_eq!(mem.owner_of(0xfd00_0010), Some("0000:01:00.0"));
    assert_eq!(mem.owner_of(0xfd00_1000), Some("PCI Bus 0000:01"));
    assert_eq!(mem.owner_of(0xc000_1000), Some("PCI Bus 0000:00"));
    assert_eq!(mem.owner_of(0xbfff_ffff), None);
}

#[test]
fn a_request_exactly_covering_a_container_nests_inside_it() {
    let mut io = ResourceTree::io_ports();
    let window = io
        .insert_resource(0xcf8, 8, "PCI conf1", Occupancy::Container)
        .unwrap();
    let claim = io.request_region(0xcf8, 8, "pci").unwrap();
    assert_eq!(io.parent(claim), Some(window));
    assert_eq!(io.proc_text(), "0cf8-0cff : PCI conf1\n  0cf8-0cff : pci\n");
}

#[test]
fn insert_resource_adopts_what_it_covers_and_goes_inside_busy_regions() {
    let mut mem = ResourceTree::memory();
    let ram = mem
        .request_region(0x10_0000, 0x7ff0_0000, "System RAM")
        .unwrap();
    let rom = mem.request_region(0xc_0000, 0x8000, "Video ROM").unwrap();
    // As Linux's "Kernel code" inside the busy "System RAM".
    let code = mem
        .insert_resource(0x100_0000, 0x20_0000, "Kernel code", Occupancy::Busy)
        .unwrap();
    assert_eq!(mem.parent(code), Some(ram));
    // A window inserted afterwards adopts the ROM it covers.
    let legacy = mem
        .insert_resource(0xa_0000, 0x6_0000, "legacy", Occupancy::Container)
        .unwrap();
    assert_eq!(mem.parent(rom), Some(legacy));
    // Inserting with the same range as an existing resource goes around it, as in Linux.
    let outer = mem
        .insert_resource(0x10_0000, 0x7ff0_0000, "outer", Occupancy::Container)
        .unwrap();
    assert_eq!(mem.parent(ram), Some(outer));
    assert_eq!(
        layout(&mem),
        [
            (0xa_0000, 0xf_ffff, "legacy", 0),
            (0xc_0000, 0xc_7fff, "Video ROM", 1),
            (0x10_0000, 0x7fff_ffff, "outer", 0),
            (0x10_0000, 0x7fff_ffff, "System RAM", 1),
            (0x100_0000, 0x11f_ffff, "Kernel code", 2),
        ]
    );
    // Covering one resource whole and another partly is refused, naming the partial one.
    assert_eq!(
        mem.insert_resource(0x8_0000, 0x4_0000, "odd", Occupancy::Container),
        Err(partial("legacy", 0xa_0000, 0xf_ffff))
    );
}

#[test]
fn release_then_request_again() {
    let mut io = ResourceTree::io_ports();
    let serial = io.request_region(0x3f8, 8, "serial").unwrap();
    io.release(serial).unwrap();
    assert!(io.is_empty());
    assert_eq!(io.owner_of(0x3f8), None);
    let again = io.request_region(0x3f8, 8, "serial again").unwrap();
    assert_eq!(io.owner_of(0x3fb), Some("serial again"));
    // The old handle names nothing, even though the slot was reused.
    assert_eq!(io.release(serial), Err(ResourceError::UnknownHandle));
    assert_eq!(io.get(serial), None);
    assert_eq!(io.get(again).unwrap().name, "serial again");
    // A handle from the other space's tree is refused.
    let mut mem = ResourceTree::memory();
    let ram = mem.request_region(0, 0x1000, "ram").unwrap();
    assert_eq!(io.release(ram), Err(ResourceError::UnknownHandle));
    assert_eq!(ram.space(), Space::Memory);
}

#[test]
fn releasing_a_parent_with_children_is_refused_and_changes_nothing() {
    let mut io = ResourceTree::io_ports();
    let bus = io
        .insert_resource(0x1000, 0x1000, "PCI Bus 0000:00", Occupancy::Container)
        .unwrap();
    let first = io.request_region(0x1000, 0x40, "0000:00:02.0").unwrap();
    let second = io.request_region(0x1080, 0x20, "0000:00:03.0").unwrap();
    let before = io.proc_text();
    assert_eq!(
        io.release(bus),
        Err(ResourceError::HasChildren {
            owner: "0000:00:02.0".into(),
            start: 0x1000,
            end: 0x103f
        })
    );
    assert_eq!(io.proc_text(), before);
    io.release(first).unwrap();
    io.release(second).unwrap();
    io.release(bus).unwrap();
    assert!(io.is_empty());
    assert_eq!(io.proc_text(), "");
}

#[test]
fn remove_resource_moves_children_up() {
    let mut io = ResourceTree::io_ports();
    io.request_region(0x60, 1, "keyboard").unwrap();
    let bus = io
        .insert_resource(0x1000, 0x1000, "PCI Bus 0000:00", Occupancy::Container)
        .unwrap();
    let bar = io.request_region(0x1080, 0x20, "0000:00:03.0").unwrap();
    io.request_region(0x2000, 1, "after").unwrap();
    io.remove_resource(bus).unwrap();
    assert_eq!(io.parent(bar), None);
    assert_eq!(io.get(bar).unwrap().depth, 0);
    assert_eq!(
        io.proc_text(),
        "0060-0060 : keyboard\n1080-109f : 0000:00:03.0\n2000-2000 : after\n"
    );
}

#[test]
fn proc_ioports_matches_linux_text() {
    let mut io = ResourceTree::io_ports();
    io.request_region(0x0000, 0x20, "dma1").unwrap();
    io.request_region(0x0060, 1, "keyboard").unwrap();
    io.request_region(0x0070, 8, "rtc0").unwrap();
    io.insert_resource(0x0cf8, 8, "PCI conf1", Occupancy::Busy)
        .unwrap();
    io.insert_resource(0x0d00, 0xf300, "PCI Bus 0000:00", Occupancy::Container)
        .unwrap();
    io.insert_resource(0x0600, 0x80, "pnp 00:05", Occupancy::Container)
        .unwrap();
    io.request_region(0x0604, 4, "ACPI PM1a_CNT_BLK").unwrap();
    io.request_region(0xc000, 0x40, "0000:00:02.0").unwrap();
    io.insert_resource(0x03c0, 0x20, "vga+", Occupancy::Busy)
        .unwrap();
    assert_eq!(
        io.proc_text(),
        "0000-001f : dma1\n\
         0060-0060 : keyboard\n\
         0070-0077 : rtc0\n\
         03c0-03df : vga+\n\
         0600-067f : pnp 00:05\n\
         \x20 0604-0607 : ACPI PM1a_CNT_BLK\n\
         0cf8-0cff : PCI conf1\n\
         0d00-ffff : PCI Bus 0000:00\n\
         \x20 c000-c03f : 0000:00:02.0\n"
    );
}

#[test]
fn proc_iomem_matches_linux_text() {
    let mut mem = ResourceTree::memory();
    mem.insert_resource(0x0, 0x1000, "Reserved", Occupancy::Busy)
        .unwrap();
    mem.insert_resource(0x1000, 0x9_f000, "System RAM", Occupancy::Busy)
        .unwrap();
    mem.insert_resource(0x10_0000, 0x7fee_0000, "System RAM", Occupancy::Busy)
        .unwrap();
    mem.insert_resource(0x100_0000, 0xe0_0000, "Kernel code", Occupancy::Busy)
        .unwrap();
    mem.insert_resource(
        0x80_0000_0000,
        0x10_0000_0000,
        "PCI Bus 0000:00",
        Occupancy::Container,
    )
    .unwrap();
    mem.insert_resource(0x1_0000_0000, 0x8000_0000, "System RAM", Occupancy::Busy)
        .unwrap();
    mem.request_region(0x80_0000_0000, 0x4000, "0000:00:03.0")
        .unwrap();
    assert_eq!(
        mem.proc_text(),
        "00000000-00000fff : Reserved\n\
         00001000-0009ffff : System RAM\n\
         00100000-7ffdffff : System RAM\n\
         \x20 01000000-01dfffff : Kernel code\n\
         100000000-17fffffff : System RAM\n\
         8000000000-8fffffffff : PCI Bus 0000:00\n\
         \x20 8000000000-8000003fff : 0000:00:03.0\n"
    );
}

#[test]
fn proc_indentation_stops_at_five_levels_as_in_linux() {
    let mut io = ResourceTree::io_ports();
    for level in 0..7u64 {
        io.insert_resource(
            0x100 + level,
            0x100 - 2 * level,
            alloc::format!("level {level}"),
            Occupancy::Container,
        )
        .unwrap();
    }
    assert_eq!(
        io.proc_text(),
        "0100-01ff : level 0\n\
         \x20 0101-01fe : level 1\n\
         \x20   0102-01fd : level 2\n\
         \x20     0103-01fc : level 3\n\
         \x20       0104-01fb : level 4\n\
         \x20         0105-01fa : level 5\n\
         \x20         0106-01f9 : level 6\n"
    );
    assert_eq!(io.find(0x180).unwrap().depth, 6);
}

#[test]
fn errors_read_as_sentences_naming_the_owner() {
    let message = busy("serial", 0x3f8, 0x3ff).to_string();
    assert_eq!(
        message,
        "range is busy: 0x3f8-0x3ff is claimed by \"serial\""
    );
    assert!(partial("PCI Bus 0000:00", 0x1000, 0x1fff)
        .to_string()
        .contains("\"PCI Bus 0000:00\" at 0x1000-0x1fff"));
}

#[test]
fn owned_names_are_accepted() {
    let mut mem = ResourceTree::memory();
    let name = alloc::format!("0000:00:{:02x}.0", 3);
    mem.request_region(0x1000, 0x1000, name).unwrap();
    assert_eq!(mem.owner_of(0x1800), Some("0000:00:03.0"));
}

//! Host tests against fake hardware.

use crate::access::{read16, read8, EcamRegion};
use crate::capability::CAP_ID_PCIE;
use crate::header::COMMAND;
use crate::*;
use std::collections::BTreeSet;
use std::string::ToString;
use std::vec::Vec;

const ROOT: [HostBridge; 1] = [HostBridge::LEGACY];

fn addr(bus: u8, dev: u8, func: u8) -> PciAddress {
    PciAddress::new(0, bus, dev, func)
}

/// virtio-rng-pci as QEMU presents it (modern-only): MSI-X with 2 vectors in BAR 1, the virtio
/// structures in a 16 KiB 64-bit prefetchable BAR 4.
fn virtio_rng() -> FakeFunction {
    FakeFunction::endpoint(0x1af4, 0x1044, 0x00, 0xff, 0x00, 0x01)
        .subsystem(0x1af4, 0x1100)
        .interrupt(1, 11)
        .command(0x0007)
        .bar_mem32(1, 0xfe80_1000, 0x1000, false)
        .bar_mem64(4, 0x8_0000_0000, 0x4000, true)
        .msix(2, 1, 0x0000, 1, 0x0800)
        .virtio_cap(1, 4, 0x0000, 0x1000, None)
        .virtio_cap(3, 4, 0x1000, 0x1000, None)
        .virtio_cap(4, 4, 0x2000, 0x1000, None)
        .virtio_cap(2, 4, 0x3000, 0x1000, Some(4))
        .virtio_cap(5, 0, 0, 0, None)
}

/// The q35 functions a Lull guest sees.
fn q35() -> FakeConfigSpace {
    let hw = FakeConfigSpace::ecam();
    hw.insert(
        0,
        0,
        0,
        FakeFunction::endpoint(0x8086, 0x29c0, 0x06, 0x00, 0x00, 0x00).subsystem(0x1af4, 0x1100),
    );
    hw.insert(
        0,
        1,
        0,
        FakeFunction::endpoint(0x1234, 0x1111, 0x03, 0x00, 0x00, 0x02)
            .command(0x0003)
            .bar_mem32(0, 0xfd00_0000, 16 << 20, true)
            .bar_mem32(2, 0xfebf_0000, 0x1000, false),
    );
    hw.insert(0, 2, 0, virtio_rng());
    hw.insert(
        0,
        0x1f,
        0,
        FakeFunction::endpoint(0x8086, 0x2918, 0x06, 0x01, 0x00, 0x02).multifunction(),
    );
    hw.insert(
        0,
        0x1f,
        2,
        FakeFunction::endpoint(0x8086, 0x2922, 0x01, 0x06, 0x01, 0x02)
            .bar_io(4, 0xc040, 32)
            .bar_mem32(5, 0xfebf_1000, 0x1000, false)
            .msi(0, true, false),
    );
    hw.insert(
        0,
        0x1f,
        3,
        FakeFunction::endpoint(0x8086, 0x2930, 0x0c, 0x05, 0x00, 0x02)
            .command(0x0001)
            .interrupt(1, 10)
            .bar_io(4, 0x0700, 64),
    );
    hw
}

mod access_tests {
    use super::*;

    #[test]
    fn ecam_offset_packs_bus_device_function_register() {
        assert_eq!(ecam_offset(0, 0, 0, 0), Some(0));
        assert_eq!(
            ecam_offset(1, 2, 3, 0x104),
            Some((1 << 20) | (2 << 15) | (3 << 12) | 0x104)
        );
        assert_eq!(ecam_offset(255, 31, 7, 0xFFC), Some(0x0FFF_FFFC));
        assert_eq!(ecam_offset(0, 32, 0, 0), None);
        assert_eq!(ecam_offset(0, 0, 8, 0), None);
        assert_eq!(ecam_offset(0, 0, 0, 0x1000), None);
    }

    #[test]
    fn cf8_address_sets_enable_and_drops_low_register_bits() {
        assert_eq!(cf8_address(0, 0x1f, 3, 0x10), Some(0x8000_FB10));
        assert_eq!(cf8_address(0, 0x1f, 3, 0x13), Some(0x8000_FB10));
        assert_eq!(cf8_address(0xAB, 0, 0, 0xFC), Some(0x80AB_00FC));
        assert_eq!(
            cf8_address(0, 0, 0, 0x100),
            None,
            "extended space is ECAM only"
        );
        assert_eq!(cf8_address(0, 32, 0, 0), None);
        assert_eq!(cf8_address(0, 0, 8, 0), None);
    }

    #[test]
    fn ecam_region_uses_mcfg_bus_zero_base_convention() {
        let r = EcamRegion {
            base: 0xB000_0000,
            segment: 0,
            start_bus: 0x10,
            end_bus: 0x1F,
        };
        assert_eq!(
            r.physical_address(PciAddress::new(0, 0x10, 0, 0), 0),
            Some(0xB100_0000)
        );
        assert_eq!(
            r.physical_address(PciAddress::new(0, 0x11, 1, 2), 0x40),
            Some(0xB110_A040)
        );
        assert_eq!(r.physical_address(PciAddress::new(0, 0x0F, 0, 0), 0), None);
        assert_eq!(r.physical_address(PciAddress::new(1, 0x10, 0, 0), 0), None);
        assert_eq!(
            r.physical_address(PciAddress::new(0, 0x10, 0, 0), 0x1000),
            None
        );
        assert_eq!(r.window_len(), 16 << 20);
    }

    #[test]
    fn narrow_reads_extract_from_the_containing_dword() {
        let hw = q35();
        let smbus = addr(0, 0x1f, 3);
        assert_eq!(read8(&hw, smbus, 0x00), 0x86);
        assert_eq!(read8(&hw, smbus, 0x01), 0x80);
        assert_eq!(read8(&hw, smbus, 0x02), 0x30);
        assert_eq!(read8(&hw, smbus, 0x03), 0x29);
        assert_eq!(read16(&hw, smbus, 0x02), 0x2930);
        assert_eq!(read8(&hw, smbus, 0x0B), 0x0c);
        assert_eq!(read8(&hw, smbus, 0x0A), 0x05);
        assert_eq!(read8(&hw, smbus, 0x3D), 1);
        assert_eq!(
            read16(&hw, addr(9, 9, 0), 0x00),
            0xFFFF,
            "absent function reads all ones"
        );
    }
}

mod bar_tests {
    use super::*;

    fn size_of(function: FakeFunction) -> [Bar; 6] {
        let hw = FakeConfigSpace::ecam();
        let a = hw.insert(0, 3, 0, function);
        size_bars(&hw, a, 6)
    }

    fn dev() -> FakeFunction {
        FakeFunction::endpoint(0x1af4, 0x1000, 0x02, 0x00, 0x00, 0x00)
    }

    #[test]
    fn memory_32_io_and_absent_bars_are_sized() {
        let bars = size_of(
            dev()
                .bar_mem32(0, 0xfe00_0000, 0x1000, false)
                .bar_io(1, 0xc000, 32),
        );
        assert_eq!(
            bars[0],
            Bar::Memory {
                address: 0xfe00_0000,
                size: 0x1000,
                width: MemoryWidth::Bits32,
                prefetchable: false
            }
        );
        assert_eq!(
            bars[1],
            Bar::Io {
                port: 0xc000,
                size: 32
            }
        );
        assert!(bars[2..].iter().all(|b| *b == Bar::Absent));
        assert_eq!(
            region_line(0, &bars[0]).unwrap(),
            "Region 0: Memory at fe000000 (32-bit, non-prefetchable) [size=4K]"
        );
        assert_eq!(
            region_line(1, &bars[1]).unwrap(),
            "Region 1: I/O ports at c000 [size=32]"
        );
        assert_eq!(region_line(2, &bars[2]), None);
    }

    #[test]
    fn bar_64_bit_uses_two_slots_and_sizes_above_4g() {
        let bars = size_of(dev().bar_mem64(2, 0x8_0000_0000, 0x4000, true).bar_mem64(
            4,
            0x40_0000_0000,
            8 << 30,
            false,
        ));
        assert_eq!(
            bars[2],
            Bar::Memory {
                address: 0x8_0000_0000,
                size: 0x4000,
                width: MemoryWidth::Bits64,
                prefetchable: true
            }
        );
        assert_eq!(bars[3], Bar::Upper64);
        assert_eq!(
            bars[4],
            Bar::Memory {
                address: 0x40_0000_0000,
                size: 8 << 30,
                width: MemoryWidth::Bits64,
                prefetchable: false
            }
        );
        assert_eq!(bars[5], Bar::Upper64);
        assert_eq!(
            region_line(2, &bars[2]).unwrap(),
            "Region 2: Memory at 800000000 (64-bit, prefetchable) [size=16K]"
        );
        assert_eq!(region_line(3, &bars[3]), None);
        assert_eq!(
            region_line(4, &bars[4]).unwrap(),
            "Region 4: Memory at 4000000000 (64-bit, non-prefetchable) [size=8G]"
        );
    }

    #[test]
    fn sizing_disables_decoding_and_restores_everything() {
        let hw = FakeConfigSpace::ecam();
        let a = hw.insert(0, 2, 0, virtio_rng().bar_io(0, 0xc000, 32));
        let before = hw.snapshot(a).unwrap();
        let bars = size_bars(&hw, a, 6);
        assert!(bars[4].is_present() && bars[1].is_present() && bars[0].is_present());
        assert_eq!(
            hw.snapshot(a).unwrap(),
            before,
            "BARs and command restored byte for byte"
        );
        let writes = hw.writes();
        let all_ones: Vec<_> = writes
            .iter()
            .filter(|w| w.value == 0xFFFF_FFFF && (0x10..0x28).contains(&w.offset))
            .collect();
        let probed: Vec<u16> = all_ones.iter().map(|w| w.offset).collect();
        assert_eq!(
            probed,
            [0x10, 0x14, 0x18, 0x1C, 0x20, 0x24],
            "every slot probed once, BAR4's upper half included"
        );
        for w in &all_ones {
            assert_eq!(
                w.command_before & 0x3,
                0,
                "BAR {:#x} sized with decoding on",
                w.offset
            );
        }
        // The command register was written exactly twice: decode off, then the original back.
        let cmd: Vec<_> = writes
            .iter()
            .filter(|w| w.offset == COMMAND)
            .map(|w| w.value)
            .collect();
        assert_eq!(cmd, [0x0004, 0x0007]);
    }

    #[test]
    fn sizing_leaves_command_alone_when_decoding_is_already_off() {
        let hw = FakeConfigSpace::ecam();
        let a = hw.insert(0, 3, 0, dev().bar_mem32(0, 0xfe00_0000, 0x1000, false));
        size_bars(&hw, a, 6);
        assert!(hw.writes().iter().all(|w| w.offset != COMMAND));
    }

    #[test]
    fn broken_bars_are_errors_not_panics() {
        let bars = size_of(
            dev()
                // Address mask with a hole: 0xFFF0_F000.
                .bar_raw(0, 0xfe00_0000, 0xFFF0_F000)
                // Nothing answering.
                .bar_raw(1, 0xFFFF_FFFF, 0)
                // Memory type 11b.
                .bar_raw(2, 0xfe00_0006, 0xFFFF_F000)
                // Type bits writable.
                .bar_raw(3, 0xfe00_0000, 0xFFFF_F00F)
                // 64-bit in the last slot.
                .bar_raw(5, 0xfe00_0004, 0xFFFF_F000),
        );
        assert_eq!(
            bars[0],
            Bar::Invalid(BarError::NotPowerOfTwo { mask: 0xFFF0_F000 })
        );
        assert_eq!(bars[1], Bar::Invalid(BarError::AllOnes));
        assert_eq!(
            bars[2],
            Bar::Invalid(BarError::ReservedMemoryType { raw: 0xfe00_0006 })
        );
        assert_eq!(
            bars[3],
            Bar::Invalid(BarError::TypeBitsChanged {
                before: 0xfe00_0000,
                after: 0xFFFF_F00F
            })
        );
        assert_eq!(bars[4], Bar::Absent);
        assert_eq!(bars[5], Bar::Invalid(BarError::Truncated64));
        assert!(region_line(0, &bars[0]).unwrap().contains("holes"));
    }

    #[test]
    fn io_bar_with_a_hole_is_rejected_but_16_bit_decoder_is_fine() {
        let bars = size_of(dev().bar_raw(0, 0xc001, 0xFF7C).bar_io(1, 0x700, 64));
        assert_eq!(
            bars[0],
            Bar::Invalid(BarError::NotPowerOfTwo { mask: 0xFF7C })
        );
        assert_eq!(
            bars[1],
            Bar::Io {
                port: 0x700,
                size: 64
            }
        );
    }

    #[test]
    fn bridges_size_only_two_bars() {
        let hw = FakeConfigSpace::ecam();
        let a = hw.insert(
            0,
            1,
            0,
            FakeFunction::bridge(0x1b36, 0x000c, 0, 1, 1).bar_mem32(0, 0xfe40_0000, 0x1000, false),
        );
        let bars = size_bars(&hw, a, header::bar_count(HeaderType::PciPciBridge));
        assert!(bars[0].is_present());
        assert!(bars[1..].iter().all(|b| *b == Bar::Absent));
        assert!(
            hw.writes().iter().all(|w| w.offset < 0x18),
            "bus numbers and beyond untouched"
        );
    }

    #[test]
    fn sizes_print_like_lspci() {
        assert_eq!(format_size(32).to_string(), "32");
        assert_eq!(format_size(4096).to_string(), "4K");
        assert_eq!(format_size(1536).to_string(), "1536");
        assert_eq!(format_size(16 << 20).to_string(), "16M");
        assert_eq!(format_size(8 << 30).to_string(), "8G");
        assert_eq!(format_size(1 << 50).to_string(), "1024T");
    }
}

mod capability_tests {
    use super::*;

    fn endpoint() -> FakeFunction {
        FakeFunction::endpoint(0x1af4, 0x1000, 0x02, 0x00, 0x00, 0x00)
    }

    #[test]
    fn virtio_rng_capabilities_parse() {
        let hw = FakeConfigSpace::ecam();
        let a = hw.insert(0, 2, 0, virtio_rng());
        let walk = capabilities(&hw, a);
        assert_eq!(walk.error, None);
        assert_eq!(walk.capabilities.len(), 6);
        let Capability::MsiX(x) = &walk.capabilities[0] else {
            panic!("first is MSI-X")
        };
        assert_eq!(
            (
                x.table_size,
                x.table_bir,
                x.table_offset,
                x.pba_bir,
                x.pba_offset
            ),
            (2, 1, 0, 1, 0x800)
        );
        assert!(!x.enabled && !x.function_masked);
        let virtio: Vec<VirtioPciCap> = walk
            .capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Vendor(v) => Some(v.virtio().unwrap()),
                _ => None,
            })
            .collect();
        let types: Vec<_> = virtio.iter().map(|v| v.cfg_type).collect();
        assert_eq!(
            types,
            [
                VirtioCfgType::Common,
                VirtioCfgType::Isr,
                VirtioCfgType::Device,
                VirtioCfgType::Notify,
                VirtioCfgType::PciCfg
            ]
        );
        let notify = virtio[3];
        assert_eq!(
            (
                notify.bar,
                notify.offset,
                notify.length,
                notify.notify_off_multiplier
            ),
            (4, 0x3000, 0x1000, Some(4))
        );
        assert_eq!(virtio[0].notify_off_multiplier, None);
        assert_eq!((virtio[2].bar, virtio[2].offset), (4, 0x2000));
    }

    #[test]
    fn virtio_cap_parser_rejects_short_and_reserved_bar() {
        let mut cap = [0x09, 0, 16, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0];
        assert_eq!(VirtioPciCap::parse(&cap).unwrap().length, 0x1000);
        assert_eq!(
            VirtioPciCap::parse(&cap[..15]),
            Err(VirtioCapError::TooShort { len: 15 })
        );
        cap[4] = 6;
        assert_eq!(
            VirtioPciCap::parse(&cap),
            Err(VirtioCapError::ReservedBar(6))
        );
        cap[4] = 0;
        cap[3] = 2;
        assert_eq!(
            VirtioPciCap::parse(&cap),
            Err(VirtioCapError::TooShort { len: 16 }),
            "notify needs 20 bytes"
        );
    }

    #[test]
    fn msi_register_layout_depends_on_64bit_and_masking() {
        let hw = FakeConfigSpace::ecam();
        let a = hw.insert(0, 3, 0, endpoint().msi(2, true, true));
        let b = hw.insert(0, 4, 0, endpoint().msi(0, false, false));
        let Capability::Msi(m64) = capabilities(&hw, a).capabilities[0].clone() else {
            panic!()
        };
        let Capability::Msi(m32) = capabilities(&hw, b).capabilities[0].clone() else {
            panic!()
        };
        assert_eq!(m64.max_vectors(), 4);
        assert_eq!(
            (
                m64.address_hi_offset(),
                m64.data_offset(),
                m64.mask_offset(),
                m64.pending_offset()
            ),
            (Some(0x48), 0x4C, Some(0x50), Some(0x54))
        );
        assert_eq!(m32.max_vectors(), 1);
        assert_eq!(
            (
                m32.address_hi_offset(),
                m32.data_offset(),
                m32.mask_offset()
            ),
            (None, 0x48, None)
        );
    }

    #[test]
    fn status_without_cap_list_means_no_capabilities() {
        let hw = FakeConfigSpace::ecam();
        let a = hw.insert(0, 3, 0, endpoint().msi(0, true, false));
        hw.poke8(a, 0x06, 0x00);
        assert_eq!(capabilities(&hw, a), CapabilityWalk::default());
    }

    #[test]
    fn pointer_into_the_header_ends_the_walk_keeping_earlier_entries() {
        let hw = FakeConfigSpace::ecam();
        let a = hw.insert(
            0,
            3,
            0,
            endpoint()
                .capability(CAP_ID_PCIE, &[0; 6])
                .msi(0, true, false),
        );
        hw.poke8(a, 0x41, 0x20);
        let walk = capabilities(&hw, a);
        assert_eq!(
            walk.capabilities,
            [Capability::Other {
                id: CAP_ID_PCIE,
                offset: 0x40
            }]
        );
        assert_eq!(
            walk.error,
            Some(CapabilityError::PointerOutOfRange {
                from: 0x40,
                pointer: 0x20
            })
        );
    }

    #[test]
    fn a_looped_chain_is_reported_and_each_entry_listed_once() {
        let hw = FakeConfigSpace::ecam();
        let a = hw.insert(
            0,
            3,
            0,
            endpoint()
                .capability(0x01, &[0; 6])
                .capability(CAP_ID_PCIE, &[0; 6]),
        );
        hw.poke8(a, 0x49, 0x40);
        let walk = capabilities(&hw, a);
        assert_eq!(walk.capabilities.len(), 2);
        assert_eq!(
            walk.error,
            Some(CapabilityError::Loop {
                from: 0x48,
                pointer: 0x40
            })
        );
        // A capability pointing at itself.
        hw.poke8(a, 0x41, 0x40);
        assert_eq!(
            capabilities(&hw, a).error,
            Some(CapabilityError::Loop {
                from: 0x40,
                pointer: 0x40
            })
        );
    }

    #[test]
    fn reserved_low_pointer_bits_are_masked() {
        let hw = FakeConfigSpace::ecam();
        let a = hw.insert(0, 3, 0, endpoint().capability(0x01, &[0; 6]));
        hw.poke8(a, 0x34, 0x43);
        let walk = capabilities(&hw, a);
        assert_eq!(
            walk.capabilities,
            [Capability::Other {
                id: 0x01,
                offset: 0x40
            }]
        );
        assert_eq!(walk.error, None);
    }

    #[test]
    fn a_full_chain_of_48_is_walked_and_an_all_ones_entry_stops_it() {
        let mut f = endpoint();
        for _ in 0..48 {
            f = f.capability(0x01, &[0, 0]);
        }
        let hw = FakeConfigSpace::ecam();
        let a = hw.insert(0, 3, 0, f);
        let walk = capabilities(&hw, a);
        assert_eq!((walk.capabilities.len(), walk.error), (48, None));
        assert_eq!(walk.capabilities[47].offset(), 0xFC);
        hw.poke32(a, 0x80, 0xFFFF_FFFF);
        let walk = capabilities(&hw, a);
        assert_eq!(walk.capabilities.len(), 16);
        assert_eq!(walk.error, Some(CapabilityError::AllOnes { at: 0x80 }));
    }

    #[test]
    fn extended_capabilities_via_ecam_only() {
        let f = endpoint()
            .extended_capability(0x0001, 2, &[0; 0x44])
            .extended_capability(0x000E, 1, &[0; 4]);
        let ecam = FakeConfigSpace::ecam();
        let a = ecam.insert(0, 3, 0, f.clone());
        let walk = extended_capabilities(&ecam, a);
        assert_eq!(walk.error, None);
        assert_eq!(
            walk.capabilities,
            [
                ExtendedCapability {
                    id: 1,
                    version: 2,
                    offset: 0x100
                },
                ExtendedCapability {
                    id: 0xE,
                    version: 1,
                    offset: 0x148
                }
            ]
        );
        // The legacy fake panics on any access at or past 0x100, so this also proves none is made.
        let legacy = FakeConfigSpace::legacy();
        let b = legacy.insert(0, 3, 0, f);
        assert_eq!(extended_capabilities(&legacy, b), CapabilityWalk::default());
    }

    #[test]
    fn extended_loops_and_bad_pointers_are_reported() {
        let hw = FakeConfigSpace::ecam();
        let a = hw.insert(
            0,
            3,
            0,
            endpoint()
                .extended_capability(0x0001, 1, &[0; 4])
                .extended_capability(0x0002, 1, &[0; 4]),
        );
        hw.poke32(a, 0x108, 0x1000_0002 | (0x100 << 20));
        let walk = extended_capabilities(&hw, a);
        assert_eq!(walk.capabilities.len(), 2);
        assert_eq!(
            walk.error,
            Some(CapabilityError::Loop {
                from: 0x108,
                pointer: 0x100
            })
        );
        hw.poke32(a, 0x108, 0x0001_0002 | (0x080 << 20));
        assert_eq!(
            extended_capabilities(&hw, a).error,
            Some(CapabilityError::PointerOutOfRange {
                from: 0x108,
                pointer: 0x80
            })
        );
        // A conventional function behind ECAM: 0x100 reads zero, no list, no error.
        let b = hw.insert(0, 4, 0, endpoint());
        assert_eq!(extended_capabilities(&hw, b), CapabilityWalk::default());
    }
}

mod enumeration_tests {
    use super::*;

    #[test]
    fn q35_topology_is_found_with_bars_and_capabilities() {
        let hw = q35();
        let e = enumerate(&hw, &ROOT);
        assert_eq!(e.problems, []);
        let found: Vec<PciAddress> = e.functions.iter().map(|f| f.address).collect();
        assert_eq!(
            found,
            [
                addr(0, 0, 0),
                addr(0, 1, 0),
                addr(0, 2, 0),
                addr(0, 0x1f, 0),
                addr(0, 0x1f, 2),
                addr(0, 0x1f, 3)
            ]
        );

        let host = e.function(addr(0, 0, 0)).unwrap();
        assert_eq!(
            (host.vendor, host.device, host.class, host.subclass),
            (0x8086, 0x29c0, 0x06, 0x00)
        );
        assert_eq!(
            host.device_type(),
            pci_types::device_type::DeviceType::HostBridge
        );
        assert!(host.capabilities.is_empty());

        let smbus = e.function(addr(0, 0x1f, 3)).unwrap();
        assert_eq!(
            smbus.bars[4],
            Bar::Io {
                port: 0x0700,
                size: 64
            }
        );
        assert_eq!(
            (smbus.interrupt_pin, smbus.interrupt_line, smbus.revision),
            (1, 10, 2)
        );
        assert_eq!(smbus.class_code(), 0x0c0500);
        assert_eq!(
            smbus.command,
            CommandRegister::IO_ENABLE,
            "command as found, restored after sizing"
        );

        let rng = e.function(addr(0, 2, 0)).unwrap();
        assert_eq!((rng.subsystem_vendor, rng.subsystem_id), (0x1af4, 0x1100));
        assert_eq!(rng.msix().unwrap().table_size, 2);
        assert_eq!(rng.vendor_capabilities().count(), 5);
        assert!(matches!(
            rng.bars[4],
            Bar::Memory {
                width: MemoryWidth::Bits64,
                size: 0x4000,
                ..
            }
        ));
        assert_eq!(rng.bars[5], Bar::Upper64);

        let sata = e.function(addr(0, 0x1f, 2)).unwrap();
        assert!(sata.msi().unwrap().is_64bit);
        assert!(e.function(addr(0, 0x1f, 0)).unwrap().multifunction);
    }

    #[test]
    fn functions_beyond_zero_need_the_multifunction_bit() {
        let hw = FakeConfigSpace::ecam();
        hw.insert(
            0,
            4,
            0,
            FakeFunction::endpoint(0x8086, 0x10d3, 0x02, 0x00, 0, 0),
        );
        hw.insert(
            0,
            4,
            1,
            FakeFunction::endpoint(0x8086, 0x10d3, 0x02, 0x00, 0, 0),
        );
        // Function 1 of a slot with no function 0 is not scanned either.
        hw.insert(
            0,
            5,
            1,
            FakeFunction::endpoint(0x8086, 0x10d3, 0x02, 0x00, 0, 0),
        );
        let e = enumerate(&hw, &ROOT);
        assert_eq!(
            e.functions.iter().map(|f| f.address).collect::<Vec<_>>(),
            [addr(0, 4, 0)]
        );
    }

    fn bridged() -> FakeConfigSpace {
        let hw = FakeConfigSpace::ecam();
        hw.insert(
            0,
            0,
            0,
            FakeFunction::endpoint(0x8086, 0x29c0, 0x06, 0x00, 0, 0),
        );
        hw.insert(0, 0x1c, 0, FakeFunction::bridge(0x1b36, 0x000c, 0, 1, 2));
        hw.insert(0, 0x1d, 0, FakeFunction::bridge(0x1b36, 0x000c, 0, 3, 3));
        hw.insert(1, 0, 0, FakeFunction::bridge(0x1b36, 0x000e, 1, 2, 2));
        hw.insert(
            1,
            3,
            0,
            FakeFunction::endpoint(0x1af4, 0x1041, 0x02, 0x00, 0, 1).interrupt(2, 0),
        );
        hw.insert(
            2,
            5,
            0,
            FakeFunction::endpoint(0x1af4, 0x1042, 0x01, 0x00, 0, 1).interrupt(1, 0),
        );
        hw.insert(
            3,
            0,
            0,
            FakeFunction::endpoint(0x8086, 0x10d3, 0x02, 0x00, 0, 0).bar_mem64(
                0,
                0xfe00_0000,
                0x20000,
                false,
            ),
        );
        hw
    }

    #[test]
    fn bridges_are_descended_depth_first_in_device_order() {
        let hw = bridged();
        let e = enumerate(&hw, &ROOT);
        assert_eq!(e.problems, []);
        let found: Vec<PciAddress> = e.functions.iter().map(|f| f.address).collect();
        assert_eq!(
            found,
            [
                addr(0, 0, 0),
                addr(0, 0x1c, 0),
                addr(0, 0x1d, 0),
                addr(1, 0, 0),
                addr(1, 3, 0),
                addr(2, 5, 0),
                addr(3, 0, 0)
            ]
        );
        let b = e.function(addr(0, 0x1c, 0)).unwrap();
        assert_eq!(b.header_type, HeaderType::PciPciBridge);
        assert_eq!(
            b.bridge,
            Some(BridgeBuses {
                primary: 0,
                secondary: 1,
                subordinate: 2
            })
        );
        assert_eq!(e.upstream_bridge(0, 2).unwrap().address, addr(1, 0, 0));
        assert_eq!(e.upstream_bridge(0, 3).unwrap().address, addr(0, 0x1d, 0));
        assert!(e.upstream_bridge(0, 0).is_none());
        let bridges = [addr(0, 0x1c, 0), addr(0, 0x1d, 0), addr(1, 0, 0)];
        let bridge_writes: Vec<u16> = hw
            .writes()
            .iter()
            .filter(|w| bridges.contains(&w.addr))
            .map(|w| w.offset)
            .collect();
        assert!(
            !bridge_writes.is_empty() && bridge_writes.iter().all(|o| *o < 0x18),
            "bus numbers never rewritten"
        );
        assert!(matches!(
            e.function(addr(3, 0, 0)).unwrap().bars[0],
            Bar::Memory { size: 0x20000, .. }
        ));
    }

    #[test]
    fn looped_and_unconfigured_bridges_are_reported_not_followed() {
        let hw = FakeConfigSpace::ecam();
        hw.insert(0, 1, 0, FakeFunction::bridge(0x1b36, 0x000c, 0, 1, 1));
        // Points back at its own bus.
        hw.insert(1, 0, 0, FakeFunction::bridge(0x1b36, 0x000e, 1, 1, 1));
        // Points at the root bus.
        hw.insert(1, 1, 0, FakeFunction::bridge(0x1b36, 0x000e, 1, 0, 0xFF));
        // Unconfigured (firmware left zeros).
        hw.insert(0, 2, 0, FakeFunction::bridge(0x1b36, 0x000c, 0, 0, 0));
        let e = enumerate(&hw, &ROOT);
        assert_eq!(e.functions.len(), 4, "every bus scanned once");
        let loops: Vec<PciAddress> = e
            .problems
            .iter()
            .filter_map(|p| match p {
                ScanProblem::BridgeLoop { bridge, .. } => Some(*bridge),
                _ => None,
            })
            .collect();
        assert_eq!(loops, [addr(0, 2, 0), addr(1, 0, 0), addr(1, 1, 0)]);
        assert!(e.problems[0].to_string().contains("not above its own bus"));
    }

    #[test]
    fn bad_bus_ranges_are_reported() {
        let hw = FakeConfigSpace::ecam();
        hw.insert(0, 1, 0, FakeFunction::bridge(0x1b36, 0x000c, 0, 1, 2));
        hw.insert(0, 2, 0, FakeFunction::bridge(0x1b36, 0x000c, 0, 2, 2));
        hw.insert(0, 3, 0, FakeFunction::bridge(0x1b36, 0x000c, 0, 7, 5));
        hw.insert(1, 0, 0, FakeFunction::bridge(0x1b36, 0x000e, 1, 9, 9));
        hw.insert(
            2,
            0,
            0,
            FakeFunction::endpoint(0x1af4, 0x1041, 0x02, 0, 0, 0),
        );
        let e = enumerate(&hw, &ROOT);
        assert_eq!(
            e.problems,
            [
                ScanProblem::OverlappingRange {
                    bridge: addr(0, 2, 0),
                    buses: BridgeBuses {
                        primary: 0,
                        secondary: 2,
                        subordinate: 2
                    },
                    other: addr(0, 1, 0)
                },
                ScanProblem::InvertedRange {
                    bridge: addr(0, 3, 0),
                    buses: BridgeBuses {
                        primary: 0,
                        secondary: 7,
                        subordinate: 5
                    }
                },
                ScanProblem::OutsideParentRange {
                    bridge: addr(1, 0, 0),
                    buses: BridgeBuses {
                        primary: 1,
                        secondary: 9,
                        subordinate: 9
                    },
                    parent_end: 2
                },
            ]
        );
        // Bus 2 is not behind 00:01.0 (nothing bridges 1 to 2), and 00:02.0 was refused.
        assert!(e.function(addr(2, 0, 0)).is_none());
    }

    #[test]
    fn a_bus_reached_twice_is_scanned_once() {
        let hw = FakeConfigSpace::ecam();
        hw.insert(0, 1, 0, FakeFunction::bridge(0x1b36, 0x000c, 0, 0x10, 0x10));
        hw.insert(
            0x10,
            0,
            0,
            FakeFunction::endpoint(0x1af4, 0x1041, 0x02, 0, 0, 0),
        );
        // A second host bridge whose root is bus 0x10, listed first.
        let hosts = [
            HostBridge {
                segment: 0,
                root_bus: 0x10,
                end_bus: 0x1F,
            },
            HostBridge {
                segment: 0,
                root_bus: 0,
                end_bus: 0x0F,
            },
        ];
        let e = enumerate(&hw, &hosts);
        assert_eq!(
            e.functions
                .iter()
                .filter(|f| f.address == addr(0x10, 0, 0))
                .count(),
            1
        );
        assert!(matches!(
            e.problems[..],
            [ScanProblem::OutsideParentRange { .. }]
        ));
        let hosts = [
            hosts[0],
            HostBridge {
                segment: 0,
                root_bus: 0,
                end_bus: 0xFF,
            },
        ];
        let e = enumerate(&hw, &hosts);
        assert_eq!(
            e.functions
                .iter()
                .filter(|f| f.address == addr(0x10, 0, 0))
                .count(),
            1
        );
        assert!(matches!(
            e.problems[..],
            [ScanProblem::BusAlreadyScanned { .. }]
        ));
    }

    #[test]
    fn broken_functions_are_reported_alongside_the_rest() {
        let hw = q35();
        let rng = addr(0, 2, 0);
        hw.poke8(rng, 0x34, 0x10);
        hw.insert(
            0,
            5,
            0,
            FakeFunction::endpoint(0x1af4, 0x1000, 0x02, 0, 0, 0).bar_raw(
                0,
                0xfe00_0000,
                0xFFF0_F000,
            ),
        );
        let e = enumerate(&hw, &ROOT);
        assert_eq!(e.functions.len(), 7);
        assert_eq!(
            e.problems,
            [
                ScanProblem::Capabilities {
                    function: rng,
                    error: CapabilityError::PointerOutOfRange {
                        from: 0x34,
                        pointer: 0x10
                    }
                },
                ScanProblem::Bar {
                    function: addr(0, 5, 0),
                    slot: 0
                },
            ]
        );
        assert!(e.function(rng).unwrap().capabilities.is_empty());
    }

    #[test]
    fn extended_capabilities_collected_during_ecam_scan_only() {
        let f = FakeFunction::endpoint(0x1af4, 0x1041, 0x02, 0, 0, 0)
            .extended_capability(0x0001, 2, &[0; 8]);
        let ecam = FakeConfigSpace::ecam();
        ecam.insert(0, 3, 0, f.clone());
        assert_eq!(
            enumerate(&ecam, &ROOT).functions[0]
                .extended_capabilities
                .len(),
            1
        );
        let legacy = FakeConfigSpace::legacy();
        legacy.insert(0, 3, 0, f);
        assert!(enumerate(&legacy, &ROOT).functions[0]
            .extended_capabilities
            .is_empty());
    }

    #[test]
    fn other_segments_are_scanned_and_named_with_their_domain() {
        let hw = FakeConfigSpace::ecam();
        hw.insert_at(
            PciAddress::new(1, 0x40, 0, 0),
            FakeFunction::endpoint(0x1af4, 0x1042, 0x01, 0x00, 0, 0),
        );
        let e = enumerate(
            &hw,
            &[HostBridge {
                segment: 1,
                root_bus: 0x40,
                end_bus: 0x7F,
            }],
        );
        assert_eq!(e.functions.len(), 1);
        assert_eq!(slot_name(e.functions[0].address), "0001:40:00.0");
        assert!(enumerate(&hw, &ROOT).functions.is_empty());
    }
}

mod msi_tests {
    use super::*;

    #[test]
    fn x86_message_composition() {
        let m = X86Msi::fixed(3, 0x41).compose();
        assert_eq!(
            m,
            MsiMessage {
                address: 0xFEE0_3000,
                data: 0x41
            }
        );
        assert_eq!((m.x86_destination(), m.x86_vector()), (3, 0x41));
        let m = X86Msi {
            dest_apic_id: 0xFF,
            vector: 0x30,
            dest_mode: DestinationMode::Logical,
            redirection_hint: true,
            delivery: DeliveryMode::LowestPriority,
        }
        .compose();
        assert_eq!(
            m,
            MsiMessage {
                address: 0xFEEF_F00C,
                data: 0x130
            }
        );
        let nmi = X86Msi {
            delivery: DeliveryMode::Nmi,
            ..X86Msi::fixed(0, 2)
        }
        .compose();
        assert_eq!(nmi.data, 0x402);
        assert_eq!(nmi.data & (1 << 15), 0, "edge triggered");
    }

    fn msi_device(
        mmc_log2: u8,
        is_64: bool,
        maskable: bool,
    ) -> (FakeConfigSpace, PciAddress, MsiCapability) {
        let hw = FakeConfigSpace::ecam();
        let a = hw.insert(
            0,
            3,
            0,
            FakeFunction::endpoint(0x8086, 0x2922, 0x01, 0x06, 1, 2)
                .command(0x0006)
                .msi(mmc_log2, is_64, maskable),
        );
        let Capability::Msi(cap) = capabilities(&hw, a).capabilities[0].clone() else {
            panic!("MSI expected")
        };
        hw.clear_writes();
        (hw, a, cap)
    }

    #[test]
    fn msi_enable_programs_then_enables_and_disables_intx() {
        let (hw, a, cap) = msi_device(3, true, true);
        let msg = MsiMessage {
            address: 0x1_FEE0_1000,
            data: 0x48,
        };
        msi_enable(&hw, a, &cap, msg, 4).unwrap();
        assert_eq!(hw.peek32(a, 0x44), 0xFEE0_1000);
        assert_eq!(hw.peek32(a, 0x48), 1);
        assert_eq!(hw.peek32(a, 0x4C) & 0xFFFF, 0x48);
        let control = (hw.peek32(a, 0x40) >> 16) as u16;
        assert_eq!(control & 1, 1, "enabled");
        assert_eq!((control >> 4) & 7, 2, "4 vectors enabled");
        assert_eq!(
            hw.peek32(a, 0x50),
            !0xF,
            "vectors 0..4 unmasked, the rest masked"
        );
        assert_ne!(hw.peek32(a, 0x04) & (1 << 10), 0, "INTx disabled");
        assert_eq!(hw.peek32(a, 0x04) & 0x7, 0x6, "other command bits kept");
        // Order: the enabling control write comes after the address and data writes.
        let w = hw.writes();
        let data_at = w.iter().position(|w| w.offset == 0x4C).unwrap();
        let enable_at = w
            .iter()
            .position(|w| w.offset == 0x40 && w.value & (1 << 16) != 0)
            .unwrap();
        let first_mask = w.iter().position(|w| w.offset == 0x50).unwrap();
        assert!(first_mask < data_at && data_at < enable_at);
        assert_eq!(
            w[first_mask].value,
            u32::MAX,
            "all masked while programming"
        );

        msi_disable(&hw, a, &cap);
        assert_eq!((hw.peek32(a, 0x40) >> 16) & 1, 0);
        assert_eq!(hw.peek32(a, 0x04) & (1 << 10), 0, "INTx back on");
    }

    #[test]
    fn msi_requests_are_validated_before_anything_is_written() {
        let (hw, a, cap) = msi_device(2, false, false);
        let msg = X86Msi::fixed(0, 0x40).compose();
        assert_eq!(
            msi_enable(&hw, a, &cap, msg, 3),
            Err(MsiError::CountNotPowerOfTwo(3))
        );
        assert_eq!(
            msi_enable(&hw, a, &cap, msg, 8),
            Err(MsiError::TooManyVectors {
                requested: 8,
                supported: 4
            })
        );
        let odd = X86Msi::fixed(0, 0x41).compose();
        assert_eq!(
            msi_enable(&hw, a, &cap, odd, 4),
            Err(MsiError::MisalignedVector {
                vector: 0x41,
                count: 4
            })
        );
        let high = MsiMessage {
            address: 1 << 32,
            data: 0x40,
        };
        assert_eq!(
            msi_enable(&hw, a, &cap, high, 1),
            Err(MsiError::AddressNeeds64Bit(1 << 32))
        );
        assert_eq!(
            msi_set_vector_masked(&hw, a, &cap, 0, true),
            Err(MsiError::NoMasking)
        );
        assert!(hw.writes().is_empty());
        msi_enable(&hw, a, &cap, msg, 4).unwrap();
        assert_eq!(
            hw.peek32(a, 0x48) & 0xFFFF,
            0x40,
            "32-bit layout: data at cap+8"
        );
    }

    #[test]
    fn msi_vector_mask_bits() {
        let (hw, a, cap) = msi_device(1, true, true);
        msi_set_vector_masked(&hw, a, &cap, 1, true).unwrap();
        assert_eq!(hw.peek32(a, 0x50), 0b10);
        msi_set_vector_masked(&hw, a, &cap, 1, false).unwrap();
        assert_eq!(hw.peek32(a, 0x50), 0);
        assert_eq!(
            msi_set_vector_masked(&hw, a, &cap, 2, true),
            Err(MsiError::NoSuchVector(2))
        );
    }

    fn msix_device() -> (FakeConfigSpace, PciAddress, MsixCapability, FakeMsixTable) {
        let hw = FakeConfigSpace::ecam();
        let a = hw.insert(0, 2, 0, virtio_rng().msix(4, 1, 0, 1, 0x800));
        let e = enumerate(&hw, &ROOT);
        // The second MSI-X capability added (4 entries) is the one used here.
        let cap = e.functions[0]
            .capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::MsiX(x) => Some(*x),
                _ => None,
            })
            .next_back()
            .unwrap();
        hw.clear_writes();
        (hw, a, cap, FakeMsixTable::new(4))
    }

    #[test]
    fn msix_enable_masks_function_programs_masked_entries_then_unmasks() {
        let (hw, a, cap, table) = msix_device();
        let msgs = [
            X86Msi::fixed(0, 0x30).compose(),
            X86Msi::fixed(1, 0x31).compose(),
        ];
        msix_enable(&hw, a, &cap, &table, &msgs).unwrap();
        assert_eq!(table.entry(0), (0xFEE0_0000, 0x30, false));
        assert_eq!(table.entry(1), (0xFEE0_1000, 0x31, false));
        assert!(
            table.entry(2).2 && table.entry(3).2,
            "unused entries masked"
        );
        assert_eq!(
            table.unmasked_writes(),
            0,
            "no entry rewritten while unmasked"
        );
        let control_writes: Vec<u32> = hw
            .writes()
            .iter()
            .filter(|w| w.offset == u16::from(cap.offset))
            .map(|w| w.value >> 16)
            .collect();
        assert_eq!(control_writes.len(), 2);
        assert_eq!(
            control_writes[0] & 0xC000,
            0xC000,
            "enable with function mask first"
        );
        assert_eq!(
            control_writes[1] & 0xC000,
            0x8000,
            "function mask cleared last"
        );
        let cmd_write = hw
            .writes()
            .iter()
            .position(|w| w.offset == COMMAND)
            .unwrap();
        let last_control = hw
            .writes()
            .iter()
            .rposition(|w| w.offset == u16::from(cap.offset))
            .unwrap();
        assert!(cmd_write < last_control, "INTx off before vectors can fire");
        assert_ne!(hw.peek32(a, 4) & (1 << 10), 0);
    }

    #[test]
    fn msix_retarget_and_disable() {
        let (hw, a, cap, table) = msix_device();
        msix_enable(&hw, a, &cap, &table, &[X86Msi::fixed(0, 0x30).compose()]).unwrap();
        msix_update_entry(&table, &cap, 0, X86Msi::fixed(1, 0x52).compose()).unwrap();
        assert_eq!(
            table.entry(0),
            (0xFEE0_1000, 0x52, false),
            "retargeted and still unmasked"
        );
        assert_eq!(table.unmasked_writes(), 0);
        msix_update_entry(&table, &cap, 3, X86Msi::fixed(1, 0x53).compose()).unwrap();
        assert!(table.entry(3).2, "a masked entry stays masked");
        assert_eq!(
            msix_update_entry(&table, &cap, 4, X86Msi::fixed(0, 0x30).compose()),
            Err(MsiError::NoSuchVector(4))
        );

        msix_disable(&hw, a, &cap, &table);
        assert!((0..4).all(|i| table.entry(i).2));
        assert_eq!(
            hw.peek32(a, u16::from(cap.offset)) >> 30,
            0,
            "enable and function mask clear"
        );
        assert_eq!(hw.peek32(a, 4) & (1 << 10), 0, "INTx back on");
    }

    #[test]
    fn msix_refuses_more_messages_than_entries() {
        let (hw, a, cap, table) = msix_device();
        let msgs = [X86Msi::fixed(0, 0x30).compose(); 5];
        assert_eq!(
            msix_enable(&hw, a, &cap, &table, &msgs),
            Err(MsiError::TooManyVectors {
                requested: 5,
                supported: 4
            })
        );
        assert!(hw.writes().is_empty() && table.writes().is_empty());
    }

    #[test]
    fn msix_enable_masked_leaves_every_entry_masked_until_asked() {
        let (hw, a, cap, table) = msix_device();
        let msgs = [
            X86Msi::fixed(0, 0x38).compose(),
            X86Msi::fixed(0, 0x39).compose(),
        ];
        msix_enable_masked(&hw, a, &cap, &table, &msgs).unwrap();
        assert_eq!(table.entry(0), (0xFEE0_0000, 0x38, true));
        assert_eq!(table.entry(1), (0xFEE0_0000, 0x39, true));
        assert!((0..4).all(|i| msix_entry_masked(&table, i)));
        assert_eq!(table.unmasked_writes(), 0);
        assert_eq!(
            hw.peek32(a, u16::from(cap.offset)) >> 30,
            0b10,
            "enabled, function mask clear"
        );
        // A handler is requested for vector 1: unmask it; the affinity then moves it to CPU 1
        // (APIC id 1), new vector 0x40: rewritten under its mask, left unmasked.
        msix_set_entry_masked(&table, 1, false);
        msix_update_entry(&table, &cap, 1, X86Msi::fixed(1, 0x40).compose()).unwrap();
        assert_eq!(table.entry(1), (0xFEE0_1000, 0x40, false));
        assert!(table.entry(0).2, "entry 0 untouched and masked");
        assert_eq!(table.unmasked_writes(), 0, "never rewritten unmasked");
    }

    #[test]
    fn msi_set_message_retargets_under_mask_or_disable() {
        // Maskable: the vectors are masked for the rewrite and their mask state restored.
        let (hw, a, cap) = msi_device(2, true, true);
        msi_enable(&hw, a, &cap, X86Msi::fixed(0, 0x40).compose(), 2).unwrap();
        hw.clear_writes();
        msi_set_message(&hw, a, &cap, X86Msi::fixed(1, 0x60).compose()).unwrap();
        assert_eq!(hw.peek32(a, 0x44), 0xFEE0_1000);
        assert_eq!(hw.peek32(a, 0x4C) & 0xFFFF, 0x60);
        assert_eq!(hw.peek32(a, 0x50), !0b11, "mask state restored");
        let w = hw.writes();
        assert_eq!((w[0].offset, w[0].value), (0x50, u32::MAX), "masked first");
        assert_eq!(w.last().map(|w| w.offset), Some(0x50), "unmasked last");
        assert_eq!(
            (hw.peek32(a, 0x40) >> 16) & 0x71,
            0x11,
            "still enabled with 2 vectors"
        );
        // A misaligned base for the enabled count is refused before any write.
        hw.clear_writes();
        assert_eq!(
            msi_set_message(&hw, a, &cap, X86Msi::fixed(1, 0x61).compose()),
            Err(MsiError::MisalignedVector {
                vector: 0x61,
                count: 2
            })
        );
        assert!(hw.writes().is_empty());

        // Not maskable: MSI is disabled around the rewrite, then enabled again.
        let (hw, a, cap) = msi_device(0, false, false);
        msi_enable(&hw, a, &cap, X86Msi::fixed(0, 0x40).compose(), 1).unwrap();
        hw.clear_writes();
        msi_set_message(&hw, a, &cap, X86Msi::fixed(2, 0x41).compose()).unwrap();
        assert_eq!(hw.peek32(a, 0x44), 0xFEE0_2000);
        assert_eq!(hw.peek32(a, 0x48) & 0xFFFF, 0x41);
        let controls: Vec<u32> = hw
            .writes()
            .iter()
            .filter(|w| w.offset == 0x40)
            .map(|w| (w.value >> 16) & 1)
            .collect();
        assert_eq!(controls, [0, 1], "disabled for the rewrite, then enabled");
        assert_ne!(hw.peek32(a, 0x04) & (1 << 10), 0, "INTx stays off");
    }

    #[test]
    fn msix_function_mask_toggles_only_its_bit() {
        let (hw, a, cap, _) = msix_device();
        msix_set_function_masked(&hw, a, &cap, true);
        assert_eq!(hw.peek32(a, u16::from(cap.offset)) >> 16, 0x4003);
        msix_set_function_masked(&hw, a, &cap, false);
        assert_eq!(hw.peek32(a, u16::from(cap.offset)) >> 16, 0x0003);
    }
}

mod vector_tests {
    use super::*;

    const PER_CPU: usize = (LAST_DEVICE_VECTOR - FIRST_DEVICE_VECTOR) as usize + 1;

    #[test]
    fn reserved_vectors_are_never_handed_out() {
        let reserved = [0x30, 0x80, 0xEF, 0x10];
        let mut a = VectorAllocator::new(2, &reserved);
        assert_eq!(
            a.vectors_per_cpu(),
            PER_CPU - 3,
            "0x10 is outside the range anyway"
        );
        let mut seen = BTreeSet::new();
        while let Ok(v) = a.allocate(&CpuMask::first(2)) {
            assert!((FIRST_DEVICE_VECTOR..=LAST_DEVICE_VECTOR).contains(&v.vector));
            assert!(!reserved.contains(&v.vector));
            assert!(seen.insert(v), "{v:?} handed out twice");
        }
        assert_eq!(seen.len(), 2 * (PER_CPU - 3));
    }

    #[test]
    fn allocation_balances_across_the_affinity_mask() {
        let mut a = VectorAllocator::new(4, &[]);
        let mask = {
            let mut m = CpuMask::empty();
            m.insert(1);
            m.insert(3);
            m
        };
        let cpus: Vec<usize> = (0..6).map(|_| a.allocate(&mask).unwrap().cpu).collect();
        assert_eq!(cpus, [1, 3, 1, 3, 1, 3]);
        a.allocate_on(3).unwrap();
        assert_eq!(a.allocate(&mask).unwrap().cpu, 1, "fewest used wins");
        assert_eq!(
            (a.used_on(0), a.used_on(1), a.used_on(2), a.used_on(3)),
            (0, 4, 0, 4)
        );
    }

    #[test]
    fn exhaustion_is_a_clear_error() {
        let mut a = VectorAllocator::new(2, &[]);
        for _ in 0..PER_CPU {
            a.allocate(&CpuMask::single(0)).unwrap();
        }
        let err = a.allocate(&CpuMask::single(0)).unwrap_err();
        assert_eq!(
            err,
            VectorError::Exhausted {
                cpus: CpuMask::single(0),
                per_cpu: PER_CPU
            }
        );
        assert_eq!(
            err.to_string(),
            "no free interrupt vector on CPUs 0 (all 192 device vectors of each in use)"
        );
        assert_eq!(
            a.allocate(&CpuMask::first(2)).unwrap().cpu,
            1,
            "the other CPU still has room"
        );
        assert_eq!(
            a.allocate(&CpuMask::single(7)),
            Err(VectorError::NoCpuInMask)
        );
        assert_eq!(a.allocate_on(7), Err(VectorError::NoSuchCpu(7)));
        assert_eq!(a.allocate(&CpuMask::empty()), Err(VectorError::NoCpuInMask));
    }

    #[test]
    fn frees_restore_counts_exactly_and_double_free_is_an_error() {
        let mut a = VectorAllocator::new(2, &[0x80]);
        let warm: Vec<_> = (0..5)
            .map(|_| a.allocate(&CpuMask::first(2)).unwrap())
            .collect();
        let before = a.clone();
        let (u0, u1) = (a.used_on(0), a.used_on(1));
        let more: Vec<_> = (0..17)
            .map(|_| a.allocate(&CpuMask::first(2)).unwrap())
            .collect();
        assert_eq!(a.used_on(0) + a.used_on(1), u0 + u1 + 17);
        for v in more {
            a.free(v).unwrap();
        }
        assert_eq!((a.used_on(0), a.used_on(1)), (u0, u1));
        assert_eq!(a, before);
        a.free(warm[0]).unwrap();
        assert_eq!(a.free(warm[0]), Err(VectorError::NotAllocated(warm[0])));
        let never = VectorAssignment {
            cpu: 1,
            vector: 0xE0,
        };
        assert_eq!(a.free(never), Err(VectorError::NotAllocated(never)));
        assert_eq!(
            a.free(VectorAssignment {
                cpu: 9,
                vector: 0x40
            }),
            Err(VectorError::NoSuchCpu(9))
        );
    }

    #[test]
    fn a_thousand_cycles_leave_the_allocator_as_new() {
        let fresh = VectorAllocator::new(2, &[0x80, 0x81]);
        let mut a = fresh.clone();
        let mut held = Vec::new();
        for i in 0..1000usize {
            // Grow and shrink a working set so frees happen out of allocation order.
            for _ in 0..(i % 7) + 1 {
                held.push(a.allocate(&CpuMask::first(2)).unwrap());
            }
            for _ in 0..(i % 5) + 1 {
                if let Some(v) = held.pop() {
                    a.free(v).unwrap();
                }
            }
            if i % 3 == 0 && !held.is_empty() {
                let v = held.remove(0);
                a.free(v).unwrap();
            }
            let distinct: BTreeSet<_> = held.iter().collect();
            assert_eq!(distinct.len(), held.len());
            assert_eq!(a.used_on(0) + a.used_on(1), held.len());
            if held.len() > 300 {
                for v in held.drain(..) {
                    a.free(v).unwrap();
                }
            }
        }
        for v in held.drain(..) {
            a.free(v).unwrap();
        }
        assert_eq!(a, fresh);
    }

    #[test]
    fn blocks_are_aligned_contiguous_and_on_one_cpu() {
        let mut a = VectorAllocator::new(2, &[0x30, 0x31, 0x32]);
        let fresh = a.clone();
        let single = a.allocate_on(0).unwrap();
        assert_eq!(single.vector, 0x33);
        let block = a.allocate_block(&CpuMask::first(2), 4).unwrap();
        assert_eq!(block.len(), 4);
        assert!(block.iter().all(|v| v.cpu == 1), "the emptier CPU");
        assert_eq!(
            block[0].vector, 0x34,
            "lowest block aligned to 4 clear of the reserved"
        );
        assert!(block.windows(2).all(|w| w[1].vector == w[0].vector + 1));
        let block8 = a.allocate_block(&CpuMask::single(0), 8).unwrap();
        assert_eq!(block8[0].vector % 8, 0);
        assert!(block8[0].vector >= 0x38);
        assert_eq!(a.total_in_use(), 13);
        assert_eq!(
            a.allocate_block(&CpuMask::first(2), 3),
            Err(VectorError::BadBlock(3))
        );
        assert_eq!(
            a.allocate_block(&CpuMask::single(5), 1),
            Err(VectorError::NoCpuInMask)
        );
        for v in block.into_iter().chain(block8).chain([single]) {
            a.free(v).unwrap();
        }
        assert_eq!(a, fresh);
        assert_eq!(a.total_in_use(), 0);
        // Fill CPU 0 but one vector: no block of 2 fits there any more.
        let mut held = Vec::new();
        while a.free_on(0) > 1 {
            held.push(a.allocate_on(0).unwrap());
        }
        assert!(matches!(
            a.allocate_block(&CpuMask::single(0), 2),
            Err(VectorError::Exhausted { .. })
        ));
        assert_eq!(a.allocate_block(&CpuMask::single(0), 1).unwrap().len(), 1);
    }

    #[test]
    fn affinity_moves_return_every_vector_when_done() {
        // Moves as the kernel does them: allocate on the new CPU, reprogram, then free the old
        // one; a later move completes first. After all moves and frees the allocator is exactly
        // as built.
        let mut a = VectorAllocator::new(4, &[0xE0]);
        let fresh = a.clone();
        let mut live: Vec<VectorAssignment> = (0..8)
            .map(|_| a.allocate(&CpuMask::first(4)).unwrap())
            .collect();
        assert_eq!(
            (0..4).map(|c| a.used_on(c)).collect::<Vec<_>>(),
            [2, 2, 2, 2],
            "spread over the CPUs of the mask"
        );
        let mut pending: Vec<Option<VectorAssignment>> = vec![None; live.len()];
        for round in 0..50usize {
            for (i, v) in live.iter_mut().enumerate() {
                if let Some(old) = pending[i].take() {
                    a.free(old).unwrap();
                }
                let target = (round + i) % 4;
                if target == v.cpu {
                    continue;
                }
                let PendingMove { old, new } = a.move_vector(*v, target).unwrap();
                assert!(a.is_allocated(old) && a.is_allocated(new));
                pending[i] = Some(old);
                *v = new;
            }
            let in_flight = pending.iter().flatten().count();
            assert_eq!(a.total_in_use(), live.len() + in_flight);
        }
        for v in pending.into_iter().flatten().chain(live) {
            a.free(v).unwrap();
        }
        assert_eq!(a, fresh);
    }

    #[test]
    fn moving_a_vector_keeps_the_old_until_completed() {
        let mut a = VectorAllocator::new(2, &[]);
        let old = a.allocate_on(0).unwrap();
        let pending = a.move_vector(old, 1).unwrap();
        assert_eq!(pending.new.cpu, 1);
        assert!(
            a.is_allocated(old) && a.is_allocated(pending.new),
            "both live until the device is reprogrammed"
        );
        let new = pending.new;
        assert_eq!(a.complete_move(pending).unwrap(), new);
        assert!(!a.is_allocated(old) && a.is_allocated(new));
        assert_eq!((a.used_on(0), a.used_on(1)), (0, 1));

        let pending = a.move_vector(new, 0).unwrap();
        let back = pending.new;
        assert_eq!(a.abort_move(pending).unwrap(), new);
        assert!(a.is_allocated(new) && !a.is_allocated(back));

        for _ in 0..PER_CPU {
            a.allocate_on(0).unwrap();
        }
        let before = a.clone();
        assert!(matches!(
            a.move_vector(new, 0),
            Err(VectorError::Exhausted { .. })
        ));
        assert_eq!(a, before, "a failed move changes nothing");
        let stale = VectorAssignment {
            cpu: 1,
            vector: LAST_DEVICE_VECTOR,
        };
        assert_eq!(
            a.move_vector(stale, 0),
            Err(VectorError::NotAllocated(stale))
        );
    }

    #[test]
    fn smp_affinity_masks_parse_and_print_like_linux() {
        assert_eq!(CpuMask::first(2).display(2).to_string(), "3");
        assert_eq!(CpuMask::single(1).display(8).to_string(), "02");
        assert_eq!(CpuMask::first(40).display(40).to_string(), "ff,ffffffff");
        assert_eq!(
            CpuMask::single(32).display(64).to_string(),
            "00000001,00000000"
        );
        assert_eq!(CpuMask::parse_hex("3\n", 2), Ok(CpuMask::first(2)));
        assert_eq!(
            CpuMask::parse_hex("00000001,00000000", 64),
            Ok(CpuMask::single(32))
        );
        assert_eq!(
            CpuMask::parse_hex("ff,ffffffff", 40),
            Ok(CpuMask::first(40))
        );
        assert_eq!(CpuMask::parse_hex("", 2), Err(CpuMaskError::Empty));
        assert_eq!(CpuMask::parse_hex("xyz", 2), Err(CpuMaskError::BadDigit));
        assert_eq!(
            CpuMask::parse_hex("123456789", 64),
            Err(CpuMaskError::BadGroup)
        );
        assert_eq!(CpuMask::parse_hex("1,,1", 96), Err(CpuMaskError::BadGroup));
        assert_eq!(CpuMask::parse_hex("4", 2), Err(CpuMaskError::TooManyCpus));
        for n in [1usize, 2, 31, 32, 33, 64, 100, 256] {
            let m = CpuMask::first(n);
            assert_eq!(
                CpuMask::parse_hex(&m.display(n).to_string(), n),
                Ok(m),
                "round trip for {n} CPUs"
            );
        }
    }
}

mod intx_tests {
    use super::*;

    #[test]
    fn swizzle_rotates_by_device_number() {
        assert_eq!(swizzle(0, 0), 0);
        assert_eq!(swizzle(1, 2), 3);
        assert_eq!(swizzle(3, 1), 0);
        assert_eq!(swizzle(2, 31), 1);
    }

    fn tables() -> RoutingTables {
        let mut t = RoutingTables::new();
        t.insert(
            0,
            0,
            RoutingTable {
                entries: vec![
                    PrtEntry::new(0x1f, 0, PrtSource::Gsi(16)),
                    PrtEntry::new(
                        0x1c,
                        0,
                        PrtSource::Link {
                            name: "\\_SB.GSIA".into(),
                            index: 0,
                        },
                    ),
                    PrtEntry::new(
                        0x1c,
                        1,
                        PrtSource::Link {
                            name: "\\_SB.GSIB".into(),
                            index: 0,
                        },
                    ),
                    PrtEntry::new(0x1c, 2, PrtSource::Gsi(18)),
                    PrtEntry::new(0x1c, 3, PrtSource::Gsi(19)),
                    PrtEntry::new(0x1d, 0, PrtSource::Gsi(20)),
                ],
            },
        );
        t
    }

    fn bridged_topology() -> Enumeration {
        let hw = FakeConfigSpace::ecam();
        hw.insert(0, 0x1c, 0, FakeFunction::bridge(0x1b36, 0x000c, 0, 1, 2));
        hw.insert(0, 0x1d, 0, FakeFunction::bridge(0x1b36, 0x000c, 0, 3, 3));
        hw.insert(1, 0, 0, FakeFunction::bridge(0x1b36, 0x000e, 1, 2, 2));
        hw.insert(
            1,
            3,
            0,
            FakeFunction::endpoint(0x1af4, 0x1041, 0x02, 0, 0, 1).interrupt(2, 0),
        );
        hw.insert(
            2,
            5,
            0,
            FakeFunction::endpoint(0x1af4, 0x1042, 0x01, 0, 0, 1).interrupt(1, 0),
        );
        hw.insert(
            0,
            0x1f,
            3,
            FakeFunction::endpoint(0x8086, 0x2930, 0x0c, 0x05, 0, 2).interrupt(1, 10),
        );
        enumerate(&hw, &ROOT)
    }

    #[test]
    fn root_bus_device_uses_its_own_entry() {
        let r = route_intx(&tables(), &bridged_topology(), addr(0, 0x1f, 3), 1).unwrap();
        assert_eq!(
            r,
            IntxRoute {
                source: PrtSource::Gsi(16),
                matched_at: addr(0, 0x1f, 3),
                pin: 0
            }
        );
    }

    #[test]
    fn behind_bridges_the_pin_is_swizzled_up_to_a_prt() {
        let topo = bridged_topology();
        // 01:03.0 INTB (pin index 1): (1 + 3) % 4 = 0 at 00:1c.0 -> GSIA.
        let r = route_intx(&tables(), &topo, addr(1, 3, 0), 2).unwrap();
        assert_eq!(r.matched_at, addr(0, 0x1c, 0));
        assert_eq!(r.pin, 0);
        assert_eq!(
            r.source,
            PrtSource::Link {
                name: "\\_SB.GSIA".into(),
                index: 0
            }
        );
        // 02:05.0 INTA: (0 + 5) % 4 = 1 at 01:00.0, then (1 + 0) % 4 = 1 at 00:1c.0 -> GSIB.
        let r = route_intx(&tables(), &topo, addr(2, 5, 0), 1).unwrap();
        assert_eq!((r.matched_at, r.pin), (addr(0, 0x1c, 0), 1));
        // Every pin of 02:05.0 lands on a different line.
        let gsis: BTreeSet<String> = (1..=4)
            .map(|p| {
                std::format!(
                    "{:?}",
                    route_intx(&tables(), &topo, addr(2, 5, 0), p)
                        .unwrap()
                        .source
                )
            })
            .collect();
        assert_eq!(gsis.len(), 4);
    }

    #[test]
    fn a_bridge_level_prt_takes_precedence() {
        let mut t = tables();
        t.insert(
            0,
            2,
            RoutingTable {
                entries: vec![PrtEntry::new(5, 0, PrtSource::Gsi(40))],
            },
        );
        let r = route_intx(&t, &bridged_topology(), addr(2, 5, 0), 1).unwrap();
        assert_eq!(
            r,
            IntxRoute {
                source: PrtSource::Gsi(40),
                matched_at: addr(2, 5, 0),
                pin: 0
            }
        );
    }

    #[test]
    fn missing_routes_and_pins_are_errors() {
        let topo = bridged_topology();
        assert_eq!(
            route_intx(&tables(), &topo, addr(1, 3, 0), 0),
            Err(IntxError::NoPin(0))
        );
        assert_eq!(
            route_intx(&tables(), &topo, addr(1, 3, 0), 5),
            Err(IntxError::NoPin(5))
        );
        let err = route_intx(&RoutingTables::new(), &topo, addr(1, 3, 0), 2).unwrap_err();
        assert_eq!(
            err,
            IntxError::NoEntry {
                device: addr(0, 0x1c, 0),
                pin: 0
            }
        );
        assert_eq!(err.to_string(), "no _PRT entry for 0000:00:1c.0 INTA");
    }
}

mod names_tests {
    use super::*;

    fn lines(hw: &FakeConfigSpace) -> (Vec<String>, Vec<String>) {
        let e = enumerate(hw, &ROOT);
        (
            e.functions.iter().map(lspci_line).collect(),
            e.functions.iter().map(lspci_numeric_line).collect(),
        )
    }

    #[test]
    fn q35_lspci_output() {
        let (named, numeric) = lines(&q35());
        assert_eq!(
            named,
            [
                "00:00.0 Host bridge [0600]: Intel Corporation 82G33/G31/P35/P31 Express DRAM Controller [8086:29c0]",
                "00:01.0 VGA compatible controller [0300]: Technical Corp. QEMU Virtual Video Controller [1234:1111] (rev 02)",
                "00:02.0 Unclassified device [00ff]: Red Hat, Inc. Virtio 1.0 RNG [1af4:1044] (rev 01)",
                "00:1f.0 ISA bridge [0601]: Intel Corporation 82801IB (ICH9) LPC Interface Controller [8086:2918] (rev 02)",
                "00:1f.2 SATA controller [0106]: Intel Corporation 82801IR/IO/IH (ICH9R/DO/DH) 6 port SATA Controller [AHCI mode] [8086:2922] (rev 02)",
                "00:1f.3 SMBus [0c05]: Intel Corporation 82801I (ICH9 Family) SMBus Controller [8086:2930] (rev 02)",
            ]
        );
        assert_eq!(numeric[5], "00:1f.3 0c05: 8086:2930 (rev 02)");
        assert_eq!(numeric[0], "00:00.0 0600: 8086:29c0");
    }

    #[test]
    fn unknown_ids_and_classes_are_numeric() {
        let hw = FakeConfigSpace::ecam();
        hw.insert(
            0,
            1,
            0,
            FakeFunction::endpoint(0xabcd, 0x1234, 0x0c, 0x7f, 0, 0),
        );
        hw.insert(
            0,
            2,
            0,
            FakeFunction::endpoint(0x1af4, 0x10ff, 0xee, 0x01, 0, 3),
        );
        let (named, _) = lines(&hw);
        assert_eq!(
            named[0],
            "00:01.0 Serial bus controller [0c7f]: Device [abcd:1234]"
        );
        assert_eq!(
            named[1],
            "00:02.0 Class [ee01]: Red Hat, Inc. Device [1af4:10ff] (rev 03)"
        );
        assert_eq!(device_name(0x1af4, 0x1000), Some("Virtio network device"));
        assert_eq!(
            device_name(0x8086, 0x10d3),
            Some("82574L Gigabit Network Connection")
        );
        assert_eq!(class_name(0x06, 0x04), Some("PCI bridge"));
    }

    #[test]
    fn verbose_output_lists_regions_and_capabilities() {
        let e = enumerate(&q35(), &ROOT);
        let rng = lspci_verbose(e.function(addr(0, 2, 0)).unwrap());
        let expected = [
            "00:02.0 Unclassified device [00ff]: Red Hat, Inc. Virtio 1.0 RNG [1af4:1044] (rev 01)",
            "\tSubsystem: Red Hat, Inc. Device [1af4:1100]",
            "\tInterrupt: pin A routed to IRQ 11",
            "\tRegion 1: Memory at fe801000 (32-bit, non-prefetchable) [size=4K]",
            "\tRegion 4: Memory at 800000000 (64-bit, prefetchable) [size=16K]",
            "\tCapabilities: [40] MSI-X: Enable- Count=2 Masked-",
            "\tCapabilities: [4c] Vendor Specific Information: VirtIO: CommonCfg BAR=4 offset=00000000 size=00001000",
            "\tCapabilities: [5c] Vendor Specific Information: VirtIO: ISR BAR=4 offset=00001000 size=00001000",
            "\tCapabilities: [6c] Vendor Specific Information: VirtIO: DeviceCfg BAR=4 offset=00002000 size=00001000",
            "\tCapabilities: [7c] Vendor Specific Information: VirtIO: Notify off-mult=4 BAR=4 offset=00003000 size=00001000",
            "\tCapabilities: [90] Vendor Specific Information: VirtIO: PCICfg BAR=0 offset=00000000 size=00000000",
        ];
        assert_eq!(rng, expected.join("\n"));
        let sata = lspci_verbose(e.function(addr(0, 0x1f, 2)).unwrap());
        assert!(sata.contains("\tRegion 4: I/O ports at c040 [size=32]"));
        assert!(sata.contains("\tCapabilities: [40] MSI: Enable- Count=1/1 Maskable- 64bit+"));
    }

    #[test]
    fn sysfs_attributes() {
        let e = enumerate(&q35(), &ROOT);
        let smbus = e.function(addr(0, 0x1f, 3)).unwrap();
        assert_eq!(sysfs::device_dir_name(smbus), "0000:00:1f.3");
        assert_eq!(sysfs::vendor(smbus), "0x8086\n");
        assert_eq!(sysfs::device(smbus), "0x2930\n");
        assert_eq!(sysfs::class(smbus), "0x0c0500\n");
        assert_eq!(sysfs::revision(smbus), "0x02\n");
        let res = sysfs::resource(smbus);
        let lines: Vec<&str> = res.lines().collect();
        assert_eq!(lines.len(), 7);
        assert_eq!(
            lines[4],
            "0x0000000000000700 0x000000000000073f 0x0000000000040101"
        );
        assert_eq!(
            lines[0],
            "0x0000000000000000 0x0000000000000000 0x0000000000000000"
        );
        let rng = e.function(addr(0, 2, 0)).unwrap();
        assert_eq!(
            sysfs::resource(rng).lines().nth(4).unwrap(),
            "0x0000000800000000 0x0000000800003fff 0x000000000014220c"
        );
    }
}

//! Host tests against [`FakeChip`]: requests and conflicts, polarity, bulk access, events,
//! removal under held lines, devres, and the text views.

use std::boxed::Box;
use std::string::{String, ToString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::vec;
use std::vec::Vec;

use lull_devres::{DevresList, ManagedResource};

use crate::testing::FakeChip;
use crate::tools::{gpiodetect, gpiofind, gpioget, gpioinfo, gpiomon, gpioset, HoldMode};
use crate::{
    debugfs_gpio, Direction, EventKind, GpioDescArray, GpioError, GpioRegistry, IrqType,
    LineConfig, RawEvent,
};

fn registry_with(chip: &FakeChip) -> GpioRegistry {
    let registry = GpioRegistry::new();
    let handle = registry.add_chip(Box::new(chip.clone()), None).unwrap();
    chip.attach(handle.event_sink());
    registry
}

fn amp_chip() -> FakeChip {
    FakeChip::new("virtio-gpio", &["amp-enable", "button", "", "led"])
}

struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting_waker() -> (Arc<CountingWaker>, Waker) {
    let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
    (counter.clone(), Waker::from(counter))
}

#[test]
fn second_claim_fails_naming_the_first_consumer_until_released() {
    let chip = amp_chip();
    let registry = registry_with(&chip);
    let amp = registry
        .get_by_name("amp-enable", "q35-hda", LineConfig::output(false))
        .unwrap();
    assert_eq!(amp.consumer(), "q35-hda");
    assert_eq!(amp.name(), Some("amp-enable"));
    assert_eq!(amp.global_number(), 512);

    for attempt in [
        registry.get_by_name("amp-enable", "gpioset", LineConfig::as_is()),
        registry.get("gpiochip0", 0, "gpioset", LineConfig::as_is()),
        registry.get_global(512, "legacy", LineConfig::as_is()),
    ] {
        let error = attempt.unwrap_err();
        assert_eq!(
            error,
            GpioError::Busy {
                chip: "gpiochip0".into(),
                offset: 0,
                holder: "q35-hda".into()
            }
        );
        assert_eq!(error.errno(), 16);
        assert_eq!(
            error.to_string(),
            "line 0 of gpiochip0 is busy: requested by \"q35-hda\""
        );
    }
    drop(amp);
    let again = registry
        .get("virtio-gpio", 0, "gpioset", LineConfig::as_is())
        .unwrap();
    assert_eq!(again.consumer(), "gpioset");
}

#[test]
fn chips_are_found_by_name_number_path_and_label() {
    let chip = amp_chip();
    let registry = registry_with(&chip);
    for selector in ["gpiochip0", "0", "/dev/gpiochip0", "virtio-gpio"] {
        let line = registry
            .get(selector, 3, "test", LineConfig::as_is())
            .unwrap();
        assert_eq!(line.name(), Some("led"));
    }
    assert_eq!(
        registry
            .get("gpiochip1", 0, "t", LineConfig::as_is())
            .unwrap_err(),
        GpioError::NoSuchChip("gpiochip1".into())
    );
    assert_eq!(
        registry
            .get("gpiochip0", 4, "t", LineConfig::as_is())
            .unwrap_err(),
        GpioError::OffsetOutOfRange {
            chip: "gpiochip0".into(),
            offset: 4,
            lines: 4
        }
    );
    assert_eq!(
        registry
            .get_by_name("nope", "t", LineConfig::as_is())
            .unwrap_err(),
        GpioError::NoSuchLine("nope".into())
    );
    let (info, offset) = registry.find_line("button").unwrap();
    assert_eq!((info.name(), offset), ("gpiochip0".to_string(), 1));
}

#[test]
fn numbering_uses_lowest_free_numbers_and_dynamic_bases_from_512() {
    let registry = GpioRegistry::new();
    let a = registry
        .add_chip(Box::new(FakeChip::unnamed("a", 8)), None)
        .unwrap();
    let b = registry
        .add_chip(Box::new(FakeChip::unnamed("b", 4)), None)
        .unwrap();
    let fixed = registry
        .add_chip(Box::new(FakeChip::unnamed("parport", 8)), Some(0))
        .unwrap();
    assert_eq!((a.number(), a.base()), (0, 512));
    assert_eq!((b.number(), b.base()), (1, 520));
    assert_eq!((fixed.number(), fixed.base()), (2, 0));
    assert_eq!(
        registry
            .add_chip(Box::new(FakeChip::unnamed("clash", 2)), Some(518))
            .unwrap_err(),
        GpioError::BaseConflict { base: 518 }
    );
    assert_eq!(
        registry
            .add_chip(Box::new(FakeChip::unnamed("empty", 0)), None)
            .unwrap_err(),
        GpioError::NoLines
    );
    registry.remove_chip(0, || {}).unwrap();
    // The freed number and the freed range are reused first.
    let c = registry
        .add_chip(Box::new(FakeChip::unnamed("c", 8)), None)
        .unwrap();
    assert_eq!((c.number(), c.base()), (0, 512));
    let d = registry
        .add_chip(Box::new(FakeChip::unnamed("d", 8)), None)
        .unwrap();
    assert_eq!((d.number(), d.base()), (3, 524));
    assert_eq!(
        registry.remove_chip(9, || {}).unwrap_err(),
        GpioError::NoSuchChip("gpiochip9".into())
    );
}

#[test]
fn active_low_inverts_logical_values_but_not_raw_ones() {
    let chip = amp_chip();
    let registry = registry_with(&chip);
    let led = registry
        .get("gpiochip0", 3, "led", LineConfig::output(true).active_low())
        .unwrap();
    assert!(led.is_active_low());
    assert!(
        !chip.level(3),
        "logical 1 on an active-low line is a low wire"
    );
    assert!(led.get_value().unwrap());
    assert!(!led.get_raw_value().unwrap());
    led.set_value(false).unwrap();
    assert!(chip.level(3));
    led.set_raw_value(false).unwrap();
    assert!(!chip.level(3));
    led.set_active_low(false).unwrap();
    assert!(!led.get_value().unwrap());

    let button = registry
        .get("gpiochip0", 1, "button", LineConfig::input().active_low())
        .unwrap();
    chip.drive_input(1, false, 0);
    assert!(
        button.get_value().unwrap(),
        "a low active-low input is active"
    );
}

#[test]
fn directions_are_set_read_and_enforced() {
    let chip = amp_chip();
    let registry = registry_with(&chip);
    let line = registry
        .get("gpiochip0", 2, "t", LineConfig::input())
        .unwrap();
    assert_eq!(line.get_direction().unwrap(), Direction::Input);
    assert_eq!(
        line.set_value(true).unwrap_err(),
        GpioError::NotOutput { offset: 2 }
    );
    line.direction_output(true).unwrap();
    assert_eq!(chip.direction(2), Direction::Output);
    assert!(chip.level(2));
    line.set_value(false).unwrap();
    assert!(!chip.level(2));
    line.direction_input().unwrap();
    assert_eq!(line.get_direction().unwrap(), Direction::Input);
}

#[test]
fn a_request_whose_configuration_fails_leaves_the_line_free() {
    let chip = amp_chip();
    let registry = registry_with(&chip);
    chip.fail_io(true);
    assert_eq!(
        registry
            .get("gpiochip0", 0, "amp", LineConfig::output(true))
            .unwrap_err(),
        GpioError::Chip(crate::ChipError::Io)
    );
    chip.fail_io(false);
    assert!(registry
        .get("gpiochip0", 0, "amp", LineConfig::output(true))
        .is_ok());
}

#[test]
fn bulk_access_is_one_chip_call_and_respects_polarity() {
    let chip = FakeChip::unnamed("bank", 8);
    let registry = registry_with(&chip);
    let lines = registry
        .get_array("gpiochip0", &[1, 4, 6], "bulk", LineConfig::output(false))
        .unwrap();
    lines.descs()[1].set_active_low(true).unwrap();
    chip.take_log();
    lines.set_values(&[true, true, false]).unwrap();
    assert_eq!(chip.take_log(), ["set_multiple 0x52 0x2"]);
    assert_eq!(
        (chip.level(1), chip.level(4), chip.level(6)),
        (true, false, false)
    );
    assert_eq!(lines.get_values().unwrap(), [true, true, false]);
    assert_eq!(lines.get_raw_values().unwrap(), [true, false, false]);
    assert_eq!(chip.take_log(), ["get_multiple 0x52", "get_multiple 0x52"]);
    assert_eq!(
        lines.set_values(&[true]).unwrap_err(),
        GpioError::InvalidBulk
    );
    lines.set_raw_values(&[false, false, false]).unwrap();
    assert_eq!(lines.get_raw_values().unwrap(), [false, false, false]);
}

#[test]
fn bulk_requests_are_all_or_nothing() {
    let chip = FakeChip::unnamed("bank", 8);
    let registry = registry_with(&chip);
    let held = registry
        .get("gpiochip0", 5, "holder", LineConfig::as_is())
        .unwrap();
    let error = registry
        .get_array("gpiochip0", &[2, 5, 7], "bulk", LineConfig::as_is())
        .unwrap_err();
    assert_eq!(
        error,
        GpioError::Busy {
            chip: "gpiochip0".into(),
            offset: 5,
            holder: "holder".into()
        }
    );
    // Neither 2 nor 7 was taken.
    assert!(registry
        .get("gpiochip0", 2, "x", LineConfig::as_is())
        .is_ok());
    assert!(registry
        .get("gpiochip0", 7, "x", LineConfig::as_is())
        .is_ok());
    assert_eq!(
        registry
            .get_array("gpiochip0", &[1, 1], "dup", LineConfig::as_is())
            .unwrap_err(),
        GpioError::InvalidBulk
    );
    assert_eq!(
        registry
            .get_array("gpiochip0", &[], "none", LineConfig::as_is())
            .unwrap_err(),
        GpioError::InvalidBulk
    );
    drop(held);

    let other = FakeChip::unnamed("other", 2);
    registry.add_chip(Box::new(other), None).unwrap();
    let a = registry
        .get("gpiochip0", 0, "m", LineConfig::as_is())
        .unwrap();
    let b = registry
        .get("gpiochip1", 0, "m", LineConfig::as_is())
        .unwrap();
    assert_eq!(
        GpioDescArray::new(vec![a, b]).unwrap_err(),
        GpioError::InvalidBulk
    );
    assert_eq!(
        GpioDescArray::new(vec![]).unwrap_err(),
        GpioError::InvalidBulk
    );
}

#[test]
fn edge_events_arrive_in_order_with_timestamps_and_sequence_numbers() {
    let chip = amp_chip();
    let registry = registry_with(&chip);
    let button = registry
        .get("gpiochip0", 1, "button", LineConfig::input())
        .unwrap();
    assert_eq!(
        button.read_event().unwrap_err(),
        GpioError::EventsNotRequested
    );
    button.request_irq(IrqType::EdgeBoth).unwrap();
    assert_eq!(chip.irq_state(1), (IrqType::EdgeBoth, true));
    let (count, waker) = counting_waker();
    button.set_waker(&waker).unwrap();

    chip.drive_input(1, true, 1_000);
    assert_eq!(count.0.load(Ordering::SeqCst), 1);
    chip.drive_input(1, true, 1_500); // no change, no edge
    chip.drive_input(1, false, 2_000);
    assert!(button.has_event());
    let first = button.read_event().unwrap().unwrap();
    let second = button.read_event().unwrap().unwrap();
    assert_eq!(button.read_event().unwrap(), None);
    assert_eq!(
        (
            first.kind,
            first.timestamp_ns,
            first.seqno,
            first.line_seqno
        ),
        (EventKind::RisingEdge, 1_000, 1, 1)
    );
    assert_eq!(
        (
            second.kind,
            second.timestamp_ns,
            second.seqno,
            second.line_seqno
        ),
        (EventKind::FallingEdge, 2_000, 2, 2)
    );
    // The waker is one-shot: the second edge did not wake again.
    assert_eq!(count.0.load(Ordering::SeqCst), 1);

    // Releasing masks the interrupt and clears the trigger.
    drop(button);
    assert_eq!(chip.irq_state(1), (IrqType::None, false));
}

#[test]
fn a_waker_registered_after_an_event_is_woken_at_once() {
    let chip = amp_chip();
    let registry = registry_with(&chip);
    let button = registry
        .get("gpiochip0", 1, "b", LineConfig::input())
        .unwrap();
    button.request_irq(IrqType::EdgeRising).unwrap();
    chip.drive_input(1, true, 5);
    let (count, waker) = counting_waker();
    button.set_waker(&waker).unwrap();
    assert_eq!(count.0.load(Ordering::SeqCst), 1);
}

#[test]
fn edge_filters_and_active_low_are_logical() {
    let chip = amp_chip();
    let registry = registry_with(&chip);
    let button = registry
        .get("gpiochip0", 1, "b", LineConfig::input().active_low())
        .unwrap();
    chip.drive_input(1, true, 0);
    button.request_irq(IrqType::EdgeRising).unwrap();
    // A logical rising edge on an active-low line is the falling edge on the wire.
    assert_eq!(chip.irq_state(1), (IrqType::EdgeFalling, true));
    chip.drive_input(1, false, 10);
    chip.drive_input(1, true, 20);
    let event = button.read_event().unwrap().unwrap();
    assert_eq!(
        (event.kind, event.timestamp_ns),
        (EventKind::RisingEdge, 10)
    );
    assert_eq!(button.read_event().unwrap(), None);
    // A chip that reports an edge nobody asked for is filtered, not queued.
    let sink = registry
        .add_chip(Box::new(FakeChip::unnamed("x", 1)), None)
        .unwrap()
        .event_sink();
    assert!(!sink.report(0, RawEvent::Rising, 0));
    // Flipping polarity re-programs the wire trigger.
    button.set_active_low(false).unwrap();
    assert_eq!(chip.irq_state(1), (IrqType::EdgeRising, true));
}

#[test]
fn a_full_queue_drops_the_oldest_events_and_counts_them() {
    let chip = amp_chip();
    let registry = registry_with(&chip);
    let button = registry
        .get("gpiochip0", 1, "b", LineConfig::input())
        .unwrap();
    button.request_events(IrqType::EdgeBoth, 2).unwrap();
    for t in 1..=5u64 {
        chip.drive_input(1, t % 2 == 1, t);
    }
    assert_eq!(button.dropped_events(), 3);
    let events: Vec<u64> = std::iter::from_fn(|| button.read_event().unwrap())
        .map(|e| e.line_seqno)
        .collect();
    assert_eq!(events, [4, 5], "the newest two remain; gaps show the loss");
}

#[test]
fn level_events_fire_once_until_acknowledged() {
    let chip = amp_chip();
    let registry = registry_with(&chip);
    let line = registry
        .get("gpiochip0", 2, "lvl", LineConfig::input())
        .unwrap();
    line.request_irq(IrqType::LevelHigh).unwrap();
    chip.drive_input(2, true, 100);
    chip.drive_input(2, true, 200);
    let event = line.read_event().unwrap().unwrap();
    assert_eq!(
        (event.kind, event.timestamp_ns),
        (EventKind::LevelActive, 100)
    );
    assert_eq!(
        line.read_event().unwrap(),
        None,
        "masked until acknowledged"
    );
    assert_eq!(chip.irq_state(2), (IrqType::LevelHigh, false));
    // Still high when acknowledged: the chip reports again at unmask.
    line.ack_level().unwrap();
    assert_eq!(
        line.read_event().unwrap().unwrap().kind,
        EventKind::LevelActive
    );
    chip.drive_input(2, false, 300);
    line.ack_level().unwrap();
    assert_eq!(line.read_event().unwrap(), None);
    assert_eq!(chip.irq_state(2), (IrqType::LevelHigh, true));
    chip.drive_input(2, true, 400);
    assert_eq!(line.read_event().unwrap().unwrap().timestamp_ns, 400);
}

#[test]
fn chips_without_interrupts_refuse_event_requests() {
    let chip = FakeChip::unnamed("parport", 8).without_irq();
    let registry = registry_with(&chip);
    let line = registry
        .get("gpiochip0", 0, "t", LineConfig::input())
        .unwrap();
    assert_eq!(
        line.request_irq(IrqType::EdgeBoth).unwrap_err(),
        GpioError::NoInterrupts
    );
}

#[test]
fn removing_a_chip_with_lines_requested_turns_descriptors_into_errors() {
    let chip = amp_chip();
    let registry = registry_with(&chip);
    let amp = registry
        .get_by_name("amp-enable", "q35-hda", LineConfig::output(true))
        .unwrap();
    let button = registry
        .get("gpiochip0", 1, "button", LineConfig::input())
        .unwrap();
    button.request_irq(IrqType::EdgeBoth).unwrap();
    chip.drive_input(1, true, 7);

    let report = registry.remove_chip(0, || {}).unwrap();
    assert_eq!(report.name, "gpiochip0");
    assert_eq!(
        report.still_requested,
        [(0, "q35-hda".to_string()), (1, "button".to_string())]
    );
    assert!(amp.is_chip_gone());
    chip.take_log();
    assert_eq!(amp.set_value(false).unwrap_err(), GpioError::ChipGone);
    assert_eq!(amp.get_value().unwrap_err(), GpioError::ChipGone);
    assert_eq!(amp.direction_input().unwrap_err(), GpioError::ChipGone);
    assert_eq!(amp.get_direction().unwrap_err(), GpioError::ChipGone);
    // An event queued before removal can still be read; then the line says it is gone.
    assert_eq!(button.read_event().unwrap().unwrap().timestamp_ns, 7);
    assert_eq!(button.read_event().unwrap_err(), GpioError::ChipGone);
    chip.drive_input(1, false, 8); // the old sink is dead: nothing queued, no panic
    assert!(
        chip.take_log().is_empty(),
        "no call reached the removed chip"
    );
    drop(amp);
    drop(button);
    assert!(
        chip.take_log().is_empty(),
        "release does not call a removed chip"
    );
    assert!(registry.chips().is_empty());
    assert!(registry
        .get_by_name("amp-enable", "x", LineConfig::as_is())
        .is_err());
}

#[test]
fn descriptors_sit_on_a_devres_list_and_are_released_with_it() {
    let chip = amp_chip();
    let registry = registry_with(&chip);
    let mut devres = DevresList::new();
    let amp = registry
        .get_by_name("amp-enable", "q35-hda", LineConfig::output(false))
        .unwrap();
    assert_eq!(
        amp.describe().to_string(),
        "gpio gpiochip0 line 0 (gpio-512) for \"q35-hda\""
    );
    devres.add(amp);
    let array = registry
        .get_array("gpiochip0", &[2, 3], "q35-hda", LineConfig::input())
        .unwrap();
    assert_eq!(
        array.describe().to_string(),
        "gpio gpiochip0 lines 2,3 for \"q35-hda\""
    );
    devres.add(array);
    assert!(registry
        .get("gpiochip0", 0, "x", LineConfig::as_is())
        .is_err());
    assert_eq!(devres.release_all(), 2);
    for offset in [0, 2, 3] {
        assert!(registry
            .get("gpiochip0", offset, "x", LineConfig::as_is())
            .is_ok());
    }
}

#[test]
fn debugfs_lists_requested_and_named_lines_as_linux() {
    let chip = amp_chip();
    let registry = registry_with(&chip);
    registry
        .add_chip(Box::new(FakeChip::unnamed("parport", 2)), Some(0))
        .unwrap();
    let _amp = registry
        .get_by_name("amp-enable", "q35-hda", LineConfig::output(true))
        .unwrap();
    let led = registry
        .get(
            "gpiochip0",
            3,
            "a-consumer-label-longer-than-20",
            LineConfig::output(true).active_low(),
        )
        .unwrap();
    let button = registry
        .get("gpiochip0", 1, "gpiomon", LineConfig::input())
        .unwrap();
    button.request_irq(IrqType::EdgeBoth).unwrap();
    let _port = registry
        .get("gpiochip1", 1, "lp", LineConfig::output(false))
        .unwrap();
    assert_eq!(
        debugfs_gpio(&registry),
        "gpiochip0: GPIOs 512-515, virtio-gpio:\n\
         \x20gpio-512 (amp-enable          |q35-hda             ) out hi \n\
         \x20gpio-513 (button              |gpiomon             ) in  lo IRQ \n\
         \x20gpio-515 (led                 |a-consumer-label-lon) out lo ACTIVE LOW\n\
         \n\
         gpiochip1: GPIOs 0-1, parport:\n\
         \x20gpio-1   (                    |lp                  ) out lo \n"
    );
    drop(led);
    assert!(debugfs_gpio(&registry).contains(" gpio-515 (led                 )\n"));
}

#[test]
fn gpiodetect_and_gpioinfo_match_libgpiod_v1() {
    let chip = amp_chip();
    let registry = registry_with(&chip);
    registry
        .add_chip(Box::new(FakeChip::unnamed("parport", 1)), None)
        .unwrap();
    assert_eq!(
        gpiodetect(&registry),
        "gpiochip0 [virtio-gpio] (4 lines)\ngpiochip1 [parport] (1 lines)\n"
    );
    let _amp = registry
        .get_by_name("amp-enable", "q35-hda", LineConfig::output(true))
        .unwrap();
    let _led = registry
        .get(
            "gpiochip0",
            3,
            "a-very-long-consumer",
            LineConfig::input().active_low(),
        )
        .unwrap();
    assert_eq!(
        gpioinfo(&registry, &["gpiochip0"]).unwrap(),
        "gpiochip0 - 4 lines:\n\
         \tline   0: \"amp-enable\"    \"q35-hda\"  output  active-high [used]\n\
         \tline   1:     \"button\"       unused   input  active-high \n\
         \tline   2:      unnamed       unused   input  active-high \n\
         \tline   3:        \"led\" \"a-very-long-consumer\" input active-low [used]\n"
    );
    let all = gpioinfo(&registry, &[]).unwrap();
    assert!(all.ends_with(
        "gpiochip1 - 1 lines:\n\tline   0:      unnamed       unused   input  active-high \n"
    ));
    assert_eq!(
        gpioinfo(&registry, &["gpiochip7"]).unwrap_err().to_string(),
        "gpioinfo: looking up GPIO chip gpiochip7: no GPIO chip \"gpiochip7\""
    );
}

#[test]
fn gpioget_reads_and_releases_and_names_a_busy_holder() {
    let chip = amp_chip();
    let registry = registry_with(&chip);
    chip.drive_input(1, true, 0);
    assert_eq!(
        gpioget(&registry, &["gpiochip0", "1", "2"]).unwrap(),
        "1 0\n"
    );
    assert_eq!(gpioget(&registry, &["-l", "0", "1", "2"]).unwrap(), "0 1\n");
    assert_eq!(
        gpioget(
            &registry,
            &["--active-low", "--bias=as-is", "virtio-gpio", "2"]
        )
        .unwrap(),
        "1\n"
    );
    let _held = registry
        .get("gpiochip0", 2, "q35-hda", LineConfig::as_is())
        .unwrap();
    assert_eq!(
        gpioget(&registry, &["gpiochip0", "1", "2"])
            .unwrap_err()
            .to_string(),
        "gpioget: error reading GPIO values: line 2 of gpiochip0 is busy: requested by \"q35-hda\""
    );
    // Line 1 was released after the successful reads and the failed one.
    assert!(registry
        .get("gpiochip0", 1, "x", LineConfig::as_is())
        .is_ok());
    for (args, message) in [
        (vec![], "gpioget: gpiochip must be specified"),
        (
            vec!["gpiochip0"],
            "gpioget: at least one GPIO line offset must be specified",
        ),
        (vec!["gpiochip0", "x"], "gpioget: invalid GPIO offset: x"),
        (vec!["-z", "gpiochip0"], "gpioget: invalid option -- 'z'"),
        (
            vec!["-B", "pull-up", "gpiochip0", "1"],
            "gpioget: bias 'pull-up' is not supported by Lull's GPIO chips",
        ),
    ] {
        assert_eq!(gpioget(&registry, &args).unwrap_err().to_string(), message);
    }
}

#[test]
fn gpioset_drives_lines_and_returns_them_with_the_hold_mode() {
    let chip = amp_chip();
    let registry = registry_with(&chip);
    let outcome = gpioset(&registry, &["gpiochip0", "0=1", "3=0"]).unwrap();
    assert_eq!(outcome.hold, HoldMode::Exit);
    assert!(chip.level(0) && !chip.level(3));
    assert_eq!(
        gpioset(&registry, &["gpiochip0", "0=0"]).unwrap_err().to_string(),
        "gpioset: error setting the GPIO line values: line 0 of gpiochip0 is busy: requested by \"gpioset\""
    );
    drop(outcome);
    let outcome = gpioset(
        &registry,
        &["-l", "-m", "time", "-s", "1", "-u", "500", "0", "0=1"],
    )
    .unwrap();
    assert_eq!(
        outcome.hold,
        HoldMode::Time {
            nanoseconds: 1_000_500_000
        }
    );
    assert!(!chip.level(0), "active-low 1 is a low wire");
    drop(outcome);
    let outcome = gpioset(&registry, &["--mode=signal", "-b", "gpiochip0", "2=1"]).unwrap();
    assert_eq!((outcome.hold, outcome.background), (HoldMode::Signal, true));
    drop(outcome);
    for (args, message) in [
        (
            vec!["gpiochip0"],
            "gpioset: at least one GPIO line offset to value mapping must be specified",
        ),
        (
            vec!["gpiochip0", "1"],
            "gpioset: invalid offset<->value mapping: 1",
        ),
        (vec!["gpiochip0", "1=2"], "gpioset: value must be 0 or 1"),
        (
            vec!["-m", "forever", "gpiochip0", "1=1"],
            "gpioset: invalid mode: forever",
        ),
        (
            vec!["-s", "1", "gpiochip0", "1=1"],
            "gpioset: can't specify wait time in this mode",
        ),
        (
            vec!["-b", "gpiochip0", "1=1"],
            "gpioset: can't daemonize in this mode",
        ),
        (
            vec!["-m", "time", "gpiochip0", "1=1"],
            "gpioset: for time mode both seconds and microseconds must be specified",
        ),
        (
            vec!["--mode"],
            "gpioset: option '--mode' requires an argument",
        ),
    ] {
        assert_eq!(gpioset(&registry, &args).unwrap_err().to_string(), message);
    }
}

#[test]
fn gpiomon_prints_events_as_libgpiod_v1_and_stops_after_n() {
    let chip = amp_chip();
    let registry = registry_with(&chip);
    let mut monitor = gpiomon(&registry, &["-n", "3", "gpiochip0", "1", "2"]).unwrap();
    let (count, waker) = counting_waker();
    monitor.set_waker(&waker).unwrap();
    chip.drive_input(2, true, 1_500_000_000);
    chip.drive_input(1, true, 2_000_000_001);
    // The waker sits on each watched line and fires once per line.
    assert_eq!(count.0.load(Ordering::SeqCst), 2);
    let output = monitor.poll().unwrap();
    assert_eq!(
        output.text,
        "event:  RISING EDGE offset: 2 timestamp: [       1.500000000]\n\
         event:  RISING EDGE offset: 1 timestamp: [       2.000000001]\n"
    );
    assert!(!output.finished);
    chip.drive_input(1, false, 3_000_000_000);
    chip.drive_input(2, false, 4_000_000_000);
    let output = monitor.poll().unwrap();
    assert_eq!(
        output.text,
        "event: FALLING EDGE offset: 1 timestamp: [       3.000000000]\n"
    );
    assert!(output.finished);
    assert_eq!(
        gpiomon(&registry, &["gpiochip0", "1"]).unwrap_err().to_string(),
        "gpiomon: error requesting GPIO lines: line 1 of gpiochip0 is busy: requested by \"gpiomon\""
    );
    drop(monitor);

    let mut monitor = gpiomon(
        &registry,
        &["-r", "--format=%o %e %s.%n %% %x", "gpiochip0", "1"],
    )
    .unwrap();
    chip.drive_input(1, true, 5_000_000_007);
    chip.drive_input(1, false, 6_000_000_000);
    assert_eq!(monitor.poll().unwrap().text, "1 1 5.7 % %x\n");
    drop(monitor);

    let mut monitor = gpiomon(&registry, &["-sf", "gpiochip0", "1"]).unwrap();
    chip.drive_input(1, true, 1);
    chip.drive_input(1, false, 2);
    assert_eq!(
        monitor.poll().unwrap(),
        crate::tools::MonitorOutput {
            text: String::new(),
            finished: false
        }
    );
}

#[test]
fn debugfs_names_the_parent_and_sleeping_chips() {
    let registry = GpioRegistry::new();
    let chip = FakeChip::new("virtio-gpio", &["amp-enable"]).sleeping_child_of("virtio/virtio1");
    registry.add_chip(Box::new(chip), None).unwrap();
    let amp = registry
        .get_by_name("amp-enable", "q35-hda", LineConfig::output(false))
        .unwrap();
    assert!(amp.can_sleep());
    assert_eq!(
        debugfs_gpio(&registry),
        "gpiochip0: GPIOs 512-512, parent: virtio/virtio1, virtio-gpio, can sleep:\n\
         \x20gpio-512 (amp-enable          |q35-hda             ) out lo \n"
    );
}

#[test]
fn a_managed_chip_registration_unregisters_with_its_device() {
    let registry = Arc::new(GpioRegistry::new());
    let chip = amp_chip();
    let mut devres = DevresList::new();
    let registration =
        crate::ChipRegistration::new(registry.clone(), Box::new(chip.clone()), None).unwrap();
    chip.attach(registration.handle().event_sink());
    assert_eq!(
        registration.describe().to_string(),
        "gpiochip gpiochip0 (virtio-gpio, GPIOs 512-515)"
    );
    devres.add(registration);
    // A consumer on another device still holds a line when the controller unbinds.
    let amp = registry
        .get_by_name("amp-enable", "q35-hda", LineConfig::output(true))
        .unwrap();
    assert_eq!(devres.release_all(), 1);
    assert!(registry.chips().is_empty());
    assert_eq!(amp.set_value(false).unwrap_err(), GpioError::ChipGone);
}

#[test]
fn gpiofind_names_the_chip_and_offset() {
    let chip = amp_chip();
    let registry = registry_with(&chip);
    assert_eq!(gpiofind(&registry, &["led"]).unwrap(), "gpiochip0 3\n");
    assert_eq!(
        gpiofind(&registry, &["nope"]).unwrap_err().to_string(),
        "gpiofind: not found: no GPIO line named \"nope\""
    );
    assert!(gpiofind(&registry, &[]).is_err());
}

#[test]
fn a_line_requested_for_interrupts_cannot_become_an_output() {
    let chip = amp_chip();
    let registry = registry_with(&chip);
    let button = registry
        .get("gpiochip0", 1, "b", LineConfig::input())
        .unwrap();
    button.request_irq(IrqType::EdgeBoth).unwrap();
    let error = button.direction_output(true).unwrap_err();
    assert_eq!(error, GpioError::UsedAsIrq { offset: 1 });
    assert_eq!(error.errno(), 5);
    assert_eq!(chip.direction(1), Direction::Input);
    button.disable_events();
    assert_eq!(chip.irq_state(1), (IrqType::None, false));
    button.direction_output(true).unwrap();
}

#[test]
fn racing_claims_give_each_line_one_owner_and_removal_races_do_not_panic() {
    let registry = Arc::new(GpioRegistry::new());
    let chip = FakeChip::unnamed("race", 4);
    registry.add_chip(Box::new(chip.clone()), None).unwrap();
    let winners = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..2)
        .map(|thread| {
            let registry = registry.clone();
            let winners = winners.clone();
            std::thread::spawn(move || {
                for round in 0..2000u32 {
                    let consumer = format!("t{thread}");
                    if let Ok(line) =
                        registry.get("race", round % 4, &consumer, LineConfig::output(true))
                    {
                        winners.fetch_add(1, Ordering::SeqCst);
                        // While held, nobody else can take it, and it names this thread.
                        assert_eq!(line.consumer(), consumer);
                        match registry.get("race", round % 4, "other", LineConfig::as_is()) {
                            Err(GpioError::Busy { holder, .. }) => assert_eq!(holder, consumer),
                            other => panic!("second claim: {other:?}"),
                        }
                        line.set_value(round % 2 == 0).unwrap();
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(winners.load(Ordering::SeqCst) > 0);
    // Every line is free again.
    assert!(registry
        .get_array("race", &[0, 1, 2, 3], "end", LineConfig::as_is())
        .is_ok());

    // A chip removed while another thread hammers a descriptor: accesses turn into ChipGone.
    let line = registry
        .get("race", 0, "user", LineConfig::output(false))
        .unwrap();
    let user = std::thread::spawn(move || {
        let mut gone = 0;
        for _ in 0..20_000 {
            match line.set_value(true) {
                Ok(()) => {}
                Err(GpioError::ChipGone) => gone += 1,
                Err(other) => panic!("{other:?}"),
            }
        }
        (gone, line)
    });
    std::thread::yield_now();
    let report = registry.remove_chip(0, std::thread::yield_now).unwrap();
    assert!(report.still_requested.len() <= 1);
    let (_gone, line) = user.join().unwrap();
    assert_eq!(line.set_value(true).unwrap_err(), GpioError::ChipGone);
    drop(line);
}

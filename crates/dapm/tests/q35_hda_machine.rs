//! The q35-hda machine in miniature: QEMU's `hda-duplex` codec graph (DAC nid 2 → pin nid 3,
//! pin nid 5 → ADC nid 4) as DAPM widgets, a codec back-end that turns power changes into HDA
//! `SET_POWER_STATE` verbs, and the machine's speaker event driving the `amp-enable` GPIO line
//! through lull-gpio. One log holds verbs and amp levels in the order they reach the hardware,
//! which is what the end-to-end test will read from QEMU's verb trace and the GPIO back-end.

use lull_dapm::{Dapm, DapmBackend, EventMask, PowerEvent, Widget, WidgetKind};
use lull_gpio::testing::FakeChip;
use lull_gpio::{GpioDesc, GpioRegistry, LineConfig};

const SECOND: u64 = 1_000_000_000;

/// The codec and machine drivers' side of a power update.
struct Machine {
    amp: GpioDesc,
    log: Vec<String>,
}

fn nid(widget: &str) -> Option<u8> {
    match widget {
        "DAC" => Some(2),
        "Line Out Pin" => Some(3),
        "ADC" => Some(4),
        "Mic Pin" => Some(5),
        _ => None,
    }
}

impl DapmBackend for Machine {
    fn update_bits(&mut self, reg: u32, mask: u32, value: u32) {
        self.log.push(format!("reg {reg:#x} {mask:#x}={value:#x}"));
    }

    fn widget_power(&mut self, widget: &str, on: bool) {
        if let Some(nid) = nid(widget) {
            // SET_POWER_STATE (0x705): D0 on, D3 off.
            self.log.push(format!(
                "nid {nid} verb 0x705 payload {}",
                if on { 0 } else { 3 }
            ));
        }
    }

    fn widget_event(&mut self, widget: &str, event: PowerEvent) {
        if widget == "Speaker" {
            let on = event == PowerEvent::PostPowerUp;
            self.amp.set_value(on).unwrap();
            self.log.push(format!("amp-enable {}", u8::from(on)));
        }
    }
}

fn card() -> Dapm {
    let mut dapm = Dapm::new();
    dapm.add_switch("Master Playback Switch", true).unwrap();
    for widget in [
        Widget::aif_in("HDA Playback", "Playback"),
        Widget::new(WidgetKind::Dac, "DAC"),
        Widget::new(WidgetKind::Pga, "Line Out Pin"),
        Widget::new(WidgetKind::Speaker, "Speaker")
            .events(EventMask::POST_PMU | EventMask::PRE_PMD),
        Widget::new(WidgetKind::Mic, "Mic"),
        Widget::new(WidgetKind::Pga, "Mic Pin"),
        Widget::new(WidgetKind::Adc, "ADC"),
        Widget::aif_out("HDA Capture", "Capture"),
    ] {
        dapm.add_widget(widget).unwrap();
    }
    for (sink, control, source) in [
        ("DAC", None, "HDA Playback"),
        ("Line Out Pin", Some("Master Playback Switch"), "DAC"),
        ("Speaker", None, "Line Out Pin"),
        ("Mic Pin", None, "Mic"),
        ("ADC", None, "Mic Pin"),
        ("HDA Capture", None, "ADC"),
    ] {
        dapm.add_route(sink, control, source).unwrap();
    }
    dapm
}

fn machine() -> (Machine, FakeChip) {
    let chip = FakeChip::new("virtio-gpio", &["amp-enable"]);
    let registry = GpioRegistry::new();
    registry.add_chip(Box::new(chip.clone()), None).unwrap();
    let amp = registry
        .get_by_name("amp-enable", "q35-hda", LineConfig::output(false))
        .unwrap();
    (
        Machine {
            amp,
            log: Vec::new(),
        },
        chip,
    )
}

#[test]
fn the_amp_goes_high_after_the_dac_and_pin_and_low_before_them() {
    let mut dapm = card();
    let (mut machine, chip) = machine();
    assert!(!chip.level(0), "idle: amp low");

    dapm.stream_start("Playback", 0)
        .unwrap()
        .apply(&mut machine);
    assert!(chip.level(0));
    assert_eq!(
        machine.log,
        [
            "nid 2 verb 0x705 payload 0",
            "nid 3 verb 0x705 payload 0",
            "amp-enable 1"
        ]
    );
    machine.log.clear();

    // Stop at 10 s: the amp stays on for pmdown_time.
    dapm.stream_stop("Playback", 10 * SECOND)
        .unwrap()
        .apply(&mut machine);
    assert!(machine.log.is_empty() && chip.level(0));
    // Reopen at 12 s: no power cycle.
    dapm.stream_start("Playback", 12 * SECOND)
        .unwrap()
        .apply(&mut machine);
    dapm.stream_stop("Playback", 13 * SECOND)
        .unwrap()
        .apply(&mut machine);
    assert!(machine.log.is_empty());
    dapm.advance(18 * SECOND - 1).apply(&mut machine);
    assert!(
        machine.log.is_empty() && chip.level(0),
        "not before pmdown_time"
    );
    let deadline = dapm.next_deadline().unwrap();
    assert_eq!(deadline, 18 * SECOND);
    dapm.advance(deadline).apply(&mut machine);
    assert!(!chip.level(0));
    assert_eq!(
        machine.log,
        [
            "amp-enable 0",
            "nid 3 verb 0x705 payload 3",
            "nid 2 verb 0x705 payload 3"
        ]
    );
}

#[test]
fn muting_powers_the_only_path_down_and_capture_leaves_the_amp_alone() {
    let mut dapm = card();
    let (mut machine, chip) = machine();
    dapm.stream_start("Playback", 0)
        .unwrap()
        .apply(&mut machine);
    machine.log.clear();
    dapm.set_switch("Master Playback Switch", false)
        .unwrap()
        .apply(&mut machine);
    assert_eq!(
        machine.log,
        [
            "amp-enable 0",
            "nid 3 verb 0x705 payload 3",
            "nid 2 verb 0x705 payload 3"
        ]
    );
    dapm.stream_stop("Playback", 0).unwrap().apply(&mut machine);
    dapm.advance(10 * SECOND).apply(&mut machine);
    machine.log.clear();

    dapm.stream_start("Capture", 20 * SECOND)
        .unwrap()
        .apply(&mut machine);
    assert_eq!(
        machine.log,
        ["nid 5 verb 0x705 payload 0", "nid 4 verb 0x705 payload 0"],
        "capture powers the ADC and its pin only"
    );
    assert!(!chip.level(0));
}

//! Host tests on a synthetic card with playback, capture, an analogue bypass, a signal
//! generator, shared supplies and a machine amplifier event.

use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use crate::{
    BiasLevel, ControlValue, Dapm, DapmBackend, DapmError, DapmOp, EventMask, PowerEvent,
    PowerUpdate, Widget, WidgetKind,
};

const SECOND: u64 = 1_000_000_000;

/// ```text
///            VREF (supply) ─────────────┬──────────────┐
///  AIF RX ─► DAC ─[DAC Switch]─► Out Mixer ─► Speaker PGA ─[Speaker Volume]─► Speaker (amp event)
///  Tone ───[Tone Switch]────────►     │   └──[HP Switch]──► HP
///  Line In ─[Bypass Switch]──────►    │
///  Mic ─"Mic"─►  Capture Mux ─► ADC ─► AIF TX            Mic Bias (supply) ─► Mic
///  Line In ─"Line"─►
/// ```
fn card() -> Dapm {
    let mut dapm = Dapm::new();
    dapm.add_switch("DAC Switch", true).unwrap();
    dapm.add_switch("HP Switch", true).unwrap();
    dapm.add_switch("Bypass Switch", false).unwrap();
    dapm.add_switch("Tone Switch", false).unwrap();
    dapm.add_enum("Capture Source", &["Mic", "Line"], 0)
        .unwrap();
    dapm.add_volume("Speaker Volume", 0, 74, 60, true).unwrap();
    dapm.add_volume("Master Volume", 0, 74, 60, false).unwrap();
    let amp = EventMask::POST_PMU | EventMask::PRE_PMD;
    for widget in [
        Widget::aif_in("AIF RX", "Playback"),
        Widget::new(WidgetKind::Dac, "DAC").power_bit(0x1, 0, false),
        Widget::new(WidgetKind::Mixer, "Out Mixer").power_bit(0x1, 1, false),
        Widget::new(WidgetKind::Pga, "Speaker PGA").power_bit(0x1, 2, false),
        Widget::new(WidgetKind::Speaker, "Speaker").events(amp),
        Widget::new(WidgetKind::Headphone, "HP"),
        Widget::new(WidgetKind::Siggen, "Tone"),
        Widget::new(WidgetKind::LineIn, "Line In"),
        Widget::new(WidgetKind::Mic, "Mic"),
        Widget::mux("Capture Mux", "Capture Source"),
        Widget::new(WidgetKind::Adc, "ADC").power_bit(0x2, 0, false),
        Widget::aif_out("AIF TX", "Capture"),
        Widget::new(WidgetKind::Supply, "VREF").power_bit(0x0, 0, false),
        Widget::new(WidgetKind::Supply, "Mic Bias"),
    ] {
        dapm.add_widget(widget).unwrap();
    }
    for (sink, control, source) in [
        ("DAC", None, "AIF RX"),
        ("Out Mixer", Some("DAC Switch"), "DAC"),
        ("Out Mixer", Some("Tone Switch"), "Tone"),
        ("Out Mixer", Some("Bypass Switch"), "Line In"),
        ("Speaker PGA", Some("Master Volume"), "Out Mixer"),
        ("Speaker", Some("Speaker Volume"), "Speaker PGA"),
        ("HP", Some("HP Switch"), "Out Mixer"),
        ("Capture Mux", Some("Mic"), "Mic"),
        ("Capture Mux", Some("Line"), "Line In"),
        ("ADC", None, "Capture Mux"),
        ("AIF TX", None, "ADC"),
        ("DAC", None, "VREF"),
        ("ADC", None, "VREF"),
        ("Mic", None, "Mic Bias"),
    ] {
        assert!(dapm.add_route(sink, control, source).unwrap().is_empty());
    }
    dapm
}

const PLAYBACK_PATH: [&str; 7] = [
    "AIF RX",
    "DAC",
    "Out Mixer",
    "Speaker PGA",
    "Speaker",
    "HP",
    "VREF",
];

fn position(update: &PowerUpdate, wanted: &DapmOp) -> usize {
    update
        .ops
        .iter()
        .position(|op| op == wanted)
        .unwrap_or_else(|| panic!("{wanted:?} not in {:#?}", update.ops))
}

fn power(widget: &str, on: bool) -> DapmOp {
    DapmOp::Power {
        widget: widget.to_string(),
        on,
    }
}

fn event(widget: &str, event: PowerEvent) -> DapmOp {
    DapmOp::Event {
        widget: widget.to_string(),
        event,
    }
}

fn sorted(mut names: Vec<&str>) -> Vec<&str> {
    names.sort_unstable();
    names
}

#[test]
fn an_idle_card_powers_nothing() {
    let dapm = card();
    assert!(dapm.powered_widgets().is_empty());
    assert_eq!(dapm.bias_level(), BiasLevel::Off);
    assert_eq!(dapm.next_deadline(), None);
}

#[test]
fn playback_powers_the_playback_path_in_linux_sequence_order() {
    let mut dapm = card();
    let update = dapm.stream_start("Playback", 0).unwrap();
    assert_eq!(
        sorted(dapm.powered_widgets()),
        sorted(PLAYBACK_PATH.to_vec())
    );
    let powered: Vec<&str> = update.power_changes().map(|(w, _)| w).collect();
    assert_eq!(
        powered,
        [
            "VREF",
            "AIF RX",
            "DAC",
            "Out Mixer",
            "Speaker PGA",
            "HP",
            "Speaker"
        ],
        "supplies first, then dapm_up_seq: aif, dac, mixer, pga, hp, spk"
    );
    assert_eq!(update.ops[0], DapmOp::Bias(BiasLevel::Standby));
    assert_eq!(update.ops[1], DapmOp::Bias(BiasLevel::Prepare));
    assert_eq!(update.ops.last(), Some(&DapmOp::Bias(BiasLevel::On)));
    assert_eq!(dapm.bias_level(), BiasLevel::On);
    // Register writes: VREF, then DAC, mixer and PGA in their own steps (one bit each).
    let writes: Vec<&DapmOp> = update
        .ops
        .iter()
        .filter(|op| matches!(op, DapmOp::UpdateBits { .. }))
        .collect();
    assert_eq!(
        writes,
        [
            &DapmOp::UpdateBits {
                reg: 0,
                mask: 1,
                value: 1
            },
            &DapmOp::UpdateBits {
                reg: 1,
                mask: 1,
                value: 1
            },
            &DapmOp::UpdateBits {
                reg: 1,
                mask: 2,
                value: 2
            },
            &DapmOp::UpdateBits {
                reg: 1,
                mask: 4,
                value: 4
            },
        ]
    );
}

#[test]
fn the_amplifier_is_enabled_after_the_dac_and_pins_and_disabled_before_them() {
    let mut dapm = card();
    let up = dapm.stream_start("Playback", 0).unwrap();
    let amp_on = position(&up, &event("Speaker", PowerEvent::PostPowerUp));
    for widget in PLAYBACK_PATH {
        assert!(
            position(&up, &power(widget, true)) < amp_on,
            "{widget} before the amp"
        );
    }
    assert_eq!(up.events().count(), 1);

    dapm.stream_stop("Playback", SECOND).unwrap();
    let down = dapm.advance(SECOND + 5 * SECOND);
    let amp_off = position(&down, &event("Speaker", PowerEvent::PrePowerDown));
    for widget in PLAYBACK_PATH {
        assert!(
            position(&down, &power(widget, false)) > amp_off,
            "{widget} after the amp"
        );
    }
    let order: Vec<&str> = down.power_changes().map(|(w, _)| w).collect();
    assert_eq!(
        order,
        [
            "Speaker",
            "HP",
            "Speaker PGA",
            "Out Mixer",
            "DAC",
            "AIF RX",
            "VREF"
        ],
        "dapm_down_seq: spk, hp, pga, mixer, dac, aif, supplies last"
    );
    assert_eq!(
        down.ops
            .iter()
            .filter(|op| matches!(op, DapmOp::Bias(_)))
            .collect::<Vec<_>>(),
        [
            &DapmOp::Bias(BiasLevel::Prepare),
            &DapmOp::Bias(BiasLevel::Standby),
            &DapmOp::Bias(BiasLevel::Off)
        ]
    );
    assert!(dapm.powered_widgets().is_empty());
}

#[test]
fn power_down_waits_for_pmdown_time_and_a_reopen_cancels_it() {
    let mut dapm = card();
    dapm.stream_start("Playback", 0).unwrap();
    assert!(dapm
        .stream_stop("Playback", 10 * SECOND)
        .unwrap()
        .is_empty());
    assert_eq!(dapm.next_deadline(), Some(15 * SECOND));
    assert!(dapm.stream_active("Playback").unwrap());
    assert!(
        dapm.advance(15 * SECOND - 1).is_empty(),
        "not before pmdown_time"
    );
    assert!(dapm.is_powered("Speaker").unwrap());

    // Reopen inside pmdown_time: no power cycle, no events, no deadline.
    assert!(dapm
        .stream_start("Playback", 12 * SECOND)
        .unwrap()
        .is_empty());
    assert_eq!(dapm.next_deadline(), None);
    assert!(dapm.advance(20 * SECOND).is_empty());
    assert_eq!(
        sorted(dapm.powered_widgets()),
        sorted(PLAYBACK_PATH.to_vec())
    );

    // A second stop keeps the first deadline.
    dapm.stream_stop("Playback", 30 * SECOND).unwrap();
    dapm.stream_stop("Playback", 33 * SECOND).unwrap();
    assert_eq!(dapm.next_deadline(), Some(35 * SECOND));
    assert!(!dapm.advance(35 * SECOND).is_empty());
    assert!(dapm.powered_widgets().is_empty());
    assert!(!dapm.stream_active("Playback").unwrap());
}

#[test]
fn a_start_that_arrives_after_the_deadline_still_cancels_without_a_power_cycle() {
    // The timer's work had not run yet when the stream was reopened (Linux cancels the
    // delayed work in prepare): the widgets stay up.
    let mut dapm = card();
    dapm.stream_start("Playback", 0).unwrap();
    dapm.stream_stop("Playback", SECOND).unwrap();
    assert!(dapm
        .stream_start("Playback", 7 * SECOND)
        .unwrap()
        .is_empty());
    assert!(dapm.is_powered("DAC").unwrap());
}

#[test]
fn starting_one_stream_carries_out_another_streams_due_power_down() {
    let mut dapm = card();
    dapm.stream_start("Playback", 0).unwrap();
    dapm.stream_stop("Playback", SECOND).unwrap();
    let update = dapm.stream_start("Capture", 7 * SECOND).unwrap();
    assert!(update.power_changes().any(|c| c == ("DAC", false)));
    assert!(update.power_changes().any(|c| c == ("ADC", true)));
    assert!(
        dapm.is_powered("VREF").unwrap(),
        "the shared supply stays up"
    );
    assert!(
        !update.power_changes().any(|(w, _)| w == "VREF"),
        "and is not cycled"
    );
}

#[test]
fn pmdown_time_is_settable_and_zero_powers_down_at_once() {
    let mut dapm = card();
    assert_eq!(dapm.pmdown_time_ms(), 5000);
    dapm.set_pmdown_time_ms(250);
    dapm.stream_start("Playback", 0).unwrap();
    dapm.stream_stop("Playback", SECOND).unwrap();
    assert_eq!(dapm.next_deadline(), Some(SECOND + 250_000_000));
    dapm.advance(SECOND + 250_000_000);
    dapm.set_pmdown_time_ms(0);
    dapm.stream_start("Playback", 2 * SECOND).unwrap();
    let down = dapm.stream_stop("Playback", 3 * SECOND).unwrap();
    assert!(down.power_changes().any(|c| c == ("Speaker", false)));
    assert!(dapm.powered_widgets().is_empty());
}

#[test]
fn capture_powers_only_the_capture_path_and_stops_at_once() {
    let mut dapm = card();
    let update = dapm.stream_start("Capture", 0).unwrap();
    assert_eq!(
        sorted(dapm.powered_widgets()),
        sorted(vec![
            "Mic",
            "Capture Mux",
            "ADC",
            "AIF TX",
            "VREF",
            "Mic Bias"
        ])
    );
    let order: Vec<&str> = update.power_changes().map(|(w, _)| w).collect();
    assert_eq!(
        order,
        ["Mic Bias", "VREF", "AIF TX", "Mic", "Capture Mux", "ADC"],
        "within a sequence step, widgets without a register (Linux's NOPM, -1) sort first"
    );
    let down = dapm.stream_stop("Capture", SECOND).unwrap();
    assert_eq!(
        dapm.next_deadline(),
        None,
        "capture has no delayed power-down"
    );
    let order: Vec<&str> = down.power_changes().map(|(w, _)| w).collect();
    assert_eq!(
        order,
        ["ADC", "Mic", "Capture Mux", "AIF TX", "Mic Bias", "VREF"]
    );
    assert!(dapm.powered_widgets().is_empty());
}

#[test]
fn a_mux_powers_only_its_selected_input() {
    let mut dapm = card();
    dapm.stream_start("Capture", 0).unwrap();
    let update = dapm.set_enum("Capture Source", "Line").unwrap();
    assert!(dapm.is_powered("Line In").unwrap());
    assert!(!dapm.is_powered("Mic").unwrap());
    assert!(!dapm.is_powered("Mic Bias").unwrap());
    // Old input down, then the mux write, then the new input up.
    let mic_down = position(&update, &power("Mic", false));
    let write = position(
        &update,
        &DapmOp::Control {
            name: "Capture Source".into(),
            value: ControlValue::Enum(1, "Line".into()),
        },
    );
    let line_up = position(&update, &power("Line In", true));
    assert!(mic_down < write && write < line_up);
    // The bypass switch is off, so the line input does not reach the outputs.
    assert!(!dapm.is_powered("Out Mixer").unwrap());
    assert_eq!(
        dapm.control_value("Capture Source").unwrap(),
        ControlValue::Enum(1, "Line".into())
    );
}

#[test]
fn muting_the_only_path_powers_it_down_and_unmuting_powers_it_up() {
    let mut dapm = card();
    dapm.disable_pin("HP").unwrap();
    dapm.stream_start("Playback", 0).unwrap();
    let update = dapm.set_switch("DAC Switch", false).unwrap();
    assert!(
        dapm.powered_widgets().is_empty(),
        "no path: nothing powered, VREF neither"
    );
    let write = position(
        &update,
        &DapmOp::Control {
            name: "DAC Switch".into(),
            value: ControlValue::Switch(false),
        },
    );
    assert!(position(&update, &power("DAC", false)) < write);
    assert!(position(&update, &event("Speaker", PowerEvent::PrePowerDown)) < write);
    assert_eq!(dapm.bias_level(), BiasLevel::Off);

    let update = dapm.set_switch("DAC Switch", true).unwrap();
    let write = position(
        &update,
        &DapmOp::Control {
            name: "DAC Switch".into(),
            value: ControlValue::Switch(true),
        },
    );
    assert!(write < position(&update, &power("DAC", true)));
    assert!(dapm.is_powered("Speaker").unwrap());
    // Same value again: nothing to do, not even a write.
    assert!(dapm.set_switch("DAC Switch", true).unwrap().is_empty());
}

#[test]
fn a_volume_affects_power_only_when_muted_to_zero_is_configured() {
    let mut dapm = card();
    dapm.stream_start("Playback", 0).unwrap();
    let update = dapm.set_volume("Master Volume", 0).unwrap();
    assert_eq!(
        update.ops,
        [DapmOp::Control {
            name: "Master Volume".into(),
            value: ControlValue::Volume(0)
        }]
    );
    assert!(dapm.is_powered("Speaker").unwrap());
    let update = dapm.set_volume("Speaker Volume", 0).unwrap();
    assert!(!dapm.is_powered("Speaker").unwrap());
    assert!(
        dapm.is_powered("HP").unwrap(),
        "the headphone path is unaffected"
    );
    assert!(update
        .events()
        .any(|e| e == ("Speaker", PowerEvent::PrePowerDown)));
    dapm.set_volume("Speaker Volume", 1).unwrap();
    assert!(dapm.is_powered("Speaker").unwrap());
    assert_eq!(
        dapm.set_volume("Speaker Volume", 75).unwrap_err(),
        DapmError::OutOfRange {
            control: "Speaker Volume".into(),
            value: 75
        }
    );
}

#[test]
fn an_analogue_bypass_and_a_signal_generator_need_no_stream() {
    let mut dapm = card();
    dapm.set_switch("Bypass Switch", true).unwrap();
    assert_eq!(
        sorted(dapm.powered_widgets()),
        sorted(vec!["Out Mixer", "Speaker PGA", "Speaker", "HP", "Line In"])
    );
    assert!(
        !dapm.is_powered("DAC").unwrap(),
        "no stream: the DAC stays off"
    );
    dapm.set_switch("Bypass Switch", false).unwrap();
    assert!(dapm.powered_widgets().is_empty());
    dapm.set_switch("Tone Switch", true).unwrap();
    assert!(dapm.is_powered("Tone").unwrap() && dapm.is_powered("Speaker").unwrap());
    // Unplugging every output leaves the generator with nowhere to go.
    dapm.disable_pin("Speaker").unwrap();
    dapm.disable_pin("HP").unwrap();
    assert!(dapm.powered_widgets().is_empty());
    dapm.enable_pin("HP").unwrap();
    assert!(dapm.is_powered("HP").unwrap() && !dapm.is_powered("Speaker").unwrap());
}

#[test]
fn a_supply_shared_by_two_paths_stays_up_until_both_are_down() {
    let mut dapm = card();
    dapm.set_pmdown_time_ms(0);
    dapm.stream_start("Playback", 0).unwrap();
    let update = dapm.stream_start("Capture", 0).unwrap();
    assert!(!update.power_changes().any(|(w, _)| w == "VREF"));
    dapm.stream_stop("Capture", 1).unwrap();
    assert!(dapm.is_powered("VREF").unwrap());
    assert!(!dapm.is_powered("ADC").unwrap());
    let update = dapm.stream_stop("Playback", 2).unwrap();
    assert!(!dapm.is_powered("VREF").unwrap());
    assert_eq!(update.power_changes().last(), Some(("VREF", false)));
}

#[test]
fn widgets_of_one_step_share_one_coalesced_register_write() {
    let mut dapm = Dapm::new();
    dapm.add_widget(Widget::aif_in("RX", "Playback")).unwrap();
    dapm.add_widget(Widget::new(WidgetKind::Dac, "DAC L").power_bit(0x26, 0, true))
        .unwrap();
    dapm.add_widget(Widget::new(WidgetKind::Dac, "DAC R").power_bit(0x26, 1, true))
        .unwrap();
    dapm.add_widget(Widget::new(WidgetKind::LineOut, "Out"))
        .unwrap();
    for dac in ["DAC L", "DAC R"] {
        dapm.add_route(dac, None, "RX").unwrap();
        dapm.add_route("Out", None, dac).unwrap();
    }
    let up = dapm.stream_start("Playback", 0).unwrap();
    // AC97-style power-down bits: powering up clears them, in one write.
    let writes: Vec<&DapmOp> = up
        .ops
        .iter()
        .filter(|op| matches!(op, DapmOp::UpdateBits { .. }))
        .collect();
    assert_eq!(
        writes,
        [&DapmOp::UpdateBits {
            reg: 0x26,
            mask: 3,
            value: 0
        }]
    );
    dapm.set_pmdown_time_ms(0);
    let down = dapm.stream_stop("Playback", 0).unwrap();
    assert!(down.ops.contains(&DapmOp::UpdateBits {
        reg: 0x26,
        mask: 3,
        value: 3
    }));
}

#[test]
fn sub_sequences_order_widgets_of_one_kind() {
    let mut dapm = Dapm::new();
    dapm.add_widget(Widget::aif_in("RX", "Playback")).unwrap();
    dapm.add_widget(Widget::new(WidgetKind::Pga, "Late").subseq(2))
        .unwrap();
    dapm.add_widget(Widget::new(WidgetKind::Pga, "Early").subseq(1))
        .unwrap();
    dapm.add_widget(Widget::new(WidgetKind::Output, "Out"))
        .unwrap();
    dapm.add_route("Late", None, "RX").unwrap();
    dapm.add_route("Early", None, "Late").unwrap();
    dapm.add_route("Out", None, "Early").unwrap();
    let up = dapm.stream_start("Playback", 0).unwrap();
    let order: Vec<&str> = up.power_changes().map(|(w, _)| w).collect();
    assert_eq!(order, ["RX", "Out", "Early", "Late"]);
    dapm.set_pmdown_time_ms(0);
    let down = dapm.stream_stop("Playback", 0).unwrap();
    let order: Vec<&str> = down.power_changes().map(|(w, _)| w).collect();
    assert_eq!(order, ["Late", "Early", "Out", "RX"]);
}

#[test]
fn pre_and_post_events_bracket_the_power_change() {
    let mut dapm = Dapm::new();
    let all = EventMask::PRE_PMU | EventMask::POST_PMU | EventMask::PRE_PMD | EventMask::POST_PMD;
    dapm.add_widget(Widget::aif_in("RX", "Playback")).unwrap();
    dapm.add_widget(
        Widget::new(WidgetKind::Headphone, "HP")
            .events(all)
            .power_bit(3, 4, false),
    )
    .unwrap();
    dapm.add_route("HP", None, "RX").unwrap();
    let up = dapm.stream_start("Playback", 0).unwrap();
    let pre = position(&up, &event("HP", PowerEvent::PrePowerUp));
    let write = position(
        &up,
        &DapmOp::UpdateBits {
            reg: 3,
            mask: 16,
            value: 16,
        },
    );
    let post = position(&up, &event("HP", PowerEvent::PostPowerUp));
    assert!(pre < write && write < post);
    dapm.set_pmdown_time_ms(0);
    let down = dapm.stream_stop("Playback", 0).unwrap();
    let events: Vec<_> = down.events().collect();
    assert_eq!(
        events,
        [
            ("HP", PowerEvent::PrePowerDown),
            ("HP", PowerEvent::PostPowerDown)
        ]
    );
}

#[test]
fn an_idle_card_can_keep_standby_bias() {
    let mut dapm = card();
    assert_eq!(
        dapm.set_idle_bias_off(false).ops,
        [DapmOp::Bias(BiasLevel::Standby)]
    );
    dapm.set_pmdown_time_ms(0);
    let up = dapm.stream_start("Playback", 0).unwrap();
    assert_eq!(up.ops[0], DapmOp::Bias(BiasLevel::Prepare));
    let down = dapm.stream_stop("Playback", 0).unwrap();
    assert_eq!(down.ops.last(), Some(&DapmOp::Bias(BiasLevel::Standby)));
    assert_eq!(dapm.bias_level(), BiasLevel::Standby);
}

#[test]
fn updates_apply_through_a_backend_in_order() {
    #[derive(Default)]
    struct Recorder(Vec<String>);
    impl DapmBackend for Recorder {
        fn update_bits(&mut self, reg: u32, mask: u32, value: u32) {
            self.0.push(format!("R{reg} {mask:#x}={value:#x}"));
        }
        fn widget_event(&mut self, widget: &str, event: PowerEvent) {
            self.0.push(format!("{widget} {event:?}"));
        }
        fn set_bias(&mut self, level: BiasLevel) {
            self.0.push(format!("bias {level}"));
        }
    }
    let mut dapm = card();
    dapm.disable_pin("HP").unwrap();
    let mut recorder = Recorder::default();
    dapm.stream_start("Playback", 0)
        .unwrap()
        .apply(&mut recorder);
    assert_eq!(
        recorder.0,
        [
            "bias Standby",
            "bias Prepare",
            "R0 0x1=0x1",
            "R1 0x1=0x1",
            "R1 0x2=0x2",
            "R1 0x4=0x4",
            "Speaker PostPowerUp",
            "bias On"
        ]
    );
}

#[test]
fn the_dump_shows_bias_streams_and_every_widget() {
    let mut dapm = card();
    dapm.disable_pin("HP").unwrap();
    dapm.stream_start("Playback", 0).unwrap();
    dapm.stream_stop("Playback", SECOND).unwrap();
    let dump = dapm.dump();
    assert!(
        dump.starts_with(
            "bias: On\n\
         pmdown_time: 5000 ms\n\
         stream Playback (playback): active, power-down due at 6000000000 ns\n\
         stream Capture (capture): inactive\n\
         AIF RX: On  in 1 out 1\n\
         \x20stream Playback active\n\
         \x20out  \"static\" \"DAC\"\n\
         DAC: On  in 1 out 1 - R1(0x1) mask 0x1\n\
         \x20in  \"static\" \"AIF RX\"\n\
         \x20in  \"static\" \"VREF\"\n\
         \x20out  \"DAC Switch\" \"Out Mixer\"\n"
        ),
        "{dump}"
    );
    assert!(
        dump.contains("HP: Off  in 1 out 0\n pin disconnected\n in  \"HP Switch\" \"Out Mixer\"\n"),
        "{dump}"
    );
    assert!(
        dump.contains(
            "Capture Mux: Off  in 1 out 0\n in  \"Mic\" \"Mic\"\n out  \"static\" \"ADC\"\n"
        ),
        "{dump}"
    );
    assert!(
        dump.contains("VREF: On  in 0 out 0 - R0(0x0) mask 0x1\n"),
        "{dump}"
    );
}

#[test]
fn mistakes_are_refused_and_leave_the_graph_unchanged() {
    let mut dapm = card();
    assert_eq!(
        dapm.add_widget(Widget::new(WidgetKind::Dac, "DAC"))
            .unwrap_err(),
        DapmError::Duplicate("DAC".into())
    );
    assert_eq!(
        dapm.add_switch("DAC Switch", true).unwrap_err(),
        DapmError::Duplicate("DAC Switch".into())
    );
    assert_eq!(
        dapm.add_route("DAC", None, "Nowhere").unwrap_err(),
        DapmError::UnknownWidget("Nowhere".into())
    );
    assert_eq!(
        dapm.add_route("Capture Mux", Some("Tape"), "Mic")
            .unwrap_err(),
        DapmError::UnknownMuxItem {
            control: "Capture Source".into(),
            item: "Tape".into()
        }
    );
    assert!(matches!(
        dapm.add_route("Capture Mux", None, "Mic"),
        Err(DapmError::UnknownMuxItem { .. })
    ));
    assert_eq!(
        dapm.add_route("HP", Some("Capture Source"), "Out Mixer")
            .unwrap_err(),
        DapmError::WrongControlKind("Capture Source".into())
    );
    assert!(matches!(
        dapm.add_widget(Widget::new(WidgetKind::Mux, "Bare Mux")),
        Err(DapmError::Invalid(_))
    ));
    assert_eq!(
        dapm.add_widget(Widget::mux("M", "DAC Switch")).unwrap_err(),
        DapmError::WrongControlKind("DAC Switch".into())
    );
    assert!(matches!(
        dapm.add_widget(Widget::aif_out("TX2", "Playback")),
        Err(DapmError::Invalid(_))
    ));
    assert_eq!(
        dapm.stream_start("HDMI", 0).unwrap_err(),
        DapmError::UnknownStream("HDMI".into())
    );
    assert_eq!(
        dapm.set_switch("Nope", true).unwrap_err(),
        DapmError::UnknownControl("Nope".into())
    );
    assert_eq!(
        dapm.set_volume("DAC Switch", 1).unwrap_err(),
        DapmError::WrongControlKind("DAC Switch".into())
    );
    assert_eq!(
        dapm.set_switch("Master Volume", true).unwrap_err(),
        DapmError::WrongControlKind("Master Volume".into())
    );
    assert_eq!(
        dapm.set_enum("Capture Source", "Tape").unwrap_err(),
        DapmError::UnknownMuxItem {
            control: "Capture Source".into(),
            item: "Tape".into()
        }
    );
    assert_eq!(
        dapm.disable_pin("DAC").unwrap_err(),
        DapmError::NotAPin("DAC".into())
    );
    assert!(dapm.add_enum("Empty", &[], 0).is_err());
    assert!(dapm.add_volume("Bad", 5, 1, 3, false).is_err());
    assert_eq!(dapm.widget_names().len(), 14);
    assert!(dapm.powered_widgets().is_empty());
    assert_eq!(
        DapmError::UnknownMuxItem {
            control: "Capture Source".into(),
            item: "Tape".into()
        }
        .to_string(),
        "control \"Capture Source\" has no item \"Tape\""
    );
}

#[test]
fn two_widgets_on_one_stream_both_follow_it() {
    let mut dapm = Dapm::new();
    dapm.add_widget(Widget::aif_in("RX L", "Playback")).unwrap();
    dapm.add_widget(Widget::aif_in("RX R", "Playback")).unwrap();
    dapm.add_widget(Widget::new(WidgetKind::Output, "Out"))
        .unwrap();
    dapm.add_route("Out", None, "RX L").unwrap();
    dapm.add_route("Out", None, "RX R").unwrap();
    dapm.stream_start("Playback", 0).unwrap();
    assert_eq!(dapm.powered_widgets(), vec!["RX L", "RX R", "Out"]);
}

#[test]
fn controls_are_listed_with_their_values_items_and_ranges() {
    let mut dapm = card();
    dapm.set_enum("Capture Source", "Line").unwrap();
    let controls = dapm.controls();
    assert_eq!(controls.len(), 7);
    assert_eq!(controls[0], ("DAC Switch", ControlValue::Switch(true)));
    assert_eq!(
        controls[4],
        ("Capture Source", ControlValue::Enum(1, "Line".into()))
    );
    assert_eq!(controls[6], ("Master Volume", ControlValue::Volume(60)));
    assert_eq!(dapm.enum_items("Capture Source").unwrap(), ["Mic", "Line"]);
    assert_eq!(dapm.volume_range("Speaker Volume").unwrap(), (0, 74));
    assert_eq!(
        dapm.volume_range("DAC Switch").unwrap_err(),
        DapmError::WrongControlKind("DAC Switch".into())
    );
    assert!(dapm.enum_items("Master Volume").is_err());
}

#[test]
fn a_forced_widget_is_powered_with_its_supplies_until_disabled() {
    let mut dapm = card();
    let update = dapm.force_enable_pin("Mic").unwrap();
    assert_eq!(sorted(dapm.powered_widgets()), ["Mic", "Mic Bias"]);
    assert_eq!(
        update.power_changes().collect::<Vec<_>>(),
        [("Mic Bias", true), ("Mic", true)]
    );
    assert_eq!(dapm.bias_level(), BiasLevel::On);
    assert!(dapm.force_enable_pin("Mic").unwrap().is_empty());
    assert!(
        dapm.dump().contains("Mic: On (forced)  in 1 out 0\n"),
        "{}",
        dapm.dump()
    );
    // Capture while forced: the rest of the path joins, nothing is cycled.
    let update = dapm.stream_start("Capture", 0).unwrap();
    assert!(!update
        .power_changes()
        .any(|(w, _)| w == "Mic" || w == "Mic Bias"));
    dapm.stream_stop("Capture", 0).unwrap();
    assert_eq!(sorted(dapm.powered_widgets()), ["Mic", "Mic Bias"]);
    // Disabling releases the force (and disconnects the pin).
    dapm.disable_pin("Mic").unwrap();
    assert!(dapm.powered_widgets().is_empty());
    dapm.stream_start("Capture", 0).unwrap();
    assert!(
        !dapm.is_powered("Mic").unwrap(),
        "the pin stays disconnected"
    );
    dapm.enable_pin("Mic").unwrap();
    assert!(dapm.is_powered("Mic").unwrap());
    // Non-pins may be forced too, and disabled to release them.
    dapm.force_enable_pin("DAC").unwrap();
    assert!(dapm.is_powered("DAC").unwrap() && dapm.is_powered("VREF").unwrap());
    dapm.disable_pin("DAC").unwrap();
    assert!(!dapm.is_powered("DAC").unwrap());
}

#[test]
fn one_widget_can_be_dumped_alone() {
    let mut dapm = card();
    dapm.stream_start("Playback", 0).unwrap();
    assert_eq!(
        dapm.dump_widget("Speaker").unwrap(),
        "Speaker: On  in 1 out 1\n in  \"Speaker Volume\" \"Speaker PGA\"\n"
    );
    assert!(dapm.dump().contains(&dapm.dump_widget("DAC").unwrap()));
    assert_eq!(
        dapm.dump_widget("Nope").unwrap_err(),
        DapmError::UnknownWidget("Nope".into())
    );
}

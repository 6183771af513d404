//! Sound: the AC'97 controller's driver and the alsa-utils-like commands that play through it.
//!
//! What is here today is the platform side of one card (q35's `AC97`: codec registers and
//! bus-master DMA, [`ac97`]); the ASoC split into codec, platform and machine drivers with DAPM
//! (`crates/dapm`, host-tested) is not wired to it yet.

pub mod ac97;
pub mod hda;

use alloc::string::String;

/// Registers the sound drivers. Thread context, from the boot-time probe.
pub fn init() {
    ac97::register();
    hda::register();
}

/// `speaker-test [-t sine] [-f FREQ] [-l LOOPS] [-r RATE] [-c CHANNELS]` (alsa-utils' options):
/// plays a sine tone at 50 % of full scale, one second per loop (default 1 loop, 440 Hz),
/// through the AC'97 card. Returns what it prints.
pub fn cmd_speaker_test(args: &[&str]) -> Result<String, String> {
    let mut frequency = 440u32;
    let mut loops = 1u32;
    let mut rate = ac97::RATE;
    let mut channels = 2usize;
    let mut index = 0;
    let number = |option: &str, value: Option<&&str>| -> Result<u32, String> {
        value
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| alloc::format!("speaker-test: option {option} takes a number"))
    };
    while index < args.len() {
        let option = args[index];
        let value = args.get(index + 1);
        match option {
            "-t" | "--test" => match value.copied() {
                Some("sine") => {}
                Some(other) => {
                    return Err(alloc::format!(
                        "speaker-test: test type {other:?}: only sine is implemented"
                    ))
                }
                None => return Err(String::from("speaker-test: option -t takes a type")),
            },
            "-f" | "--frequency" => frequency = number(option, value)?,
            "-l" | "--nloops" => loops = number(option, value)?,
            "-r" | "--rate" => rate = number(option, value)?,
            "-c" | "--channels" => channels = number(option, value)? as usize,
            other => return Err(alloc::format!("speaker-test: unknown option {other}")),
        }
        index += 2;
    }
    if rate != ac97::RATE {
        return Err(alloc::format!(
            "speaker-test: rate {rate}: the AC'97 card plays {} Hz only",
            ac97::RATE
        ));
    }
    if channels != 2 {
        return Err(String::from(
            "speaker-test: the AC'97 card plays 2 channels only",
        ));
    }
    if loops == 0 || loops > 60 {
        return Err(String::from(
            "speaker-test: 1 to 60 loops (this shell cannot be interrupted)",
        ));
    }
    crate::drivers::wait_for_device_probe();
    let mut sine = lull_pcm::Sine::new(frequency, rate, channels, 50)
        .map_err(|e| alloc::format!("speaker-test: {e}"))?;
    let mut left = u64::from(loops) * u64::from(rate) * 2 * channels as u64;
    crate::kprint!(
        "speaker-test (Lull)\n\nPlayback device is AC97\nStream parameters are {rate}Hz, \
         S16_LE, {channels} channels\nSine wave rate is {frequency}.0000Hz\n"
    );
    let stats = ac97::play(|period| {
        let want = (period.len() as u64).min(left) as usize;
        let written = sine.fill(&mut period[..want]);
        left -= written as u64;
        written
    })
    .map_err(|e| alloc::format!("speaker-test: {e}"))?;
    Ok(alloc::format!(
        "played {} frames: {} periods, {} interrupts, {} underruns, {} ms\n",
        stats.bytes / (2 * channels as u64),
        stats.periods,
        stats.interrupts,
        stats.underruns,
        stats.elapsed_ns / 1_000_000
    ))
}

/// `amixer sset Master VALUE` with VALUE `mute`, `unmute` (0 dB) or `-NdB` (attenuation in
/// 1.5 dB steps, rounded down, to -94.5 dB).
pub fn cmd_amixer(args: &[&str]) -> Result<String, String> {
    let value = match args {
        ["sset", "Master", value] | ["set", "Master", value] => *value,
        _ => return Err(String::from("usage: amixer sset Master mute|unmute|-NdB")),
    };
    crate::drivers::wait_for_device_probe();
    let setting = match value {
        "mute" => None,
        "unmute" | "0dB" => Some(0),
        text => {
            let db = text
                .strip_prefix('-')
                .and_then(|t| t.strip_suffix("dB"))
                .and_then(|t| t.parse::<f32>().ok())
                .filter(|db| (0.0..=94.5).contains(db))
                .ok_or_else(|| alloc::format!("amixer: invalid value {text:?}"))?;
            Some((db / 1.5) as u8)
        }
    };
    let register = ac97::set_master(setting).map_err(|e| alloc::format!("amixer: {e}"))?;
    Ok(alloc::format!(
        "Simple mixer control 'Master',0\n  Master register {register:#06x}: {}\n",
        match setting {
            None => String::from("[off]"),
            Some(steps) => alloc::format!(
                "[on] -{}.{}dB",
                steps as u32 * 3 / 2,
                if steps % 2 == 1 { 5 } else { 0 }
            ),
        }
    ))
}

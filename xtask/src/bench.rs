//! Benchmarks (`cargo xtask bench`): figures measured from outside the guest where possible.

use std::time::{Duration, Instant};

use crate::kernel::{self, Variant};
use crate::qemu::{Guest, Machine, QemuConfig};

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// Wall time from spawning QEMU until `marker` appears on the serial console, in ms, and
/// from the guest's first console byte until then.
fn time_to_marker(config: &QemuConfig, marker: &str) -> Result<(f64, f64, String), String> {
    let started = Instant::now();
    let mut guest = Guest::spawn(config)?;
    let text = guest.expect(marker, Duration::from_secs(60))?;
    let now = Instant::now();
    let elapsed = (now - started).as_secs_f64() * 1000.0;
    let since_first = guest
        .first_output_at()
        .map_or(f64::NAN, |first| (now - first).as_secs_f64() * 1000.0);
    Ok((elapsed, since_first, text))
}

/// The kernel the boot target was set and met with: the last commit of 2026-11-22, whose
/// boot measured 9.6 ms (q35) and 8.8 ms (microvm) on that day's host (BENCHMARKS.md). Booted
/// beside today's kernel, it tells how much of a change in the boot figures is the host's.
const REFERENCE_COMMIT: &str = "a58e222";
const REFERENCE_MS: &str = "9.6 ms q35, 8.8 ms microvm on 2026-11-22";

/// Builds the reference kernel (its source from git, into `target/bench-reference/`). The inner
/// `Err` says why it cannot be had (a shallow clone without the commit, a failed build): the
/// row is then skipped, and the other boot figures are still measured.
fn reference_kernel() -> Result<Result<std::path::PathBuf, String>, String> {
    use std::process::{Command, Stdio};
    let root = kernel::repo_root();
    let dir = root.join("target/bench-reference").join(REFERENCE_COMMIT);
    let elf = dir.join("kernel/target/x86_64-unknown-none/release/lull");
    if elf.exists() {
        return Ok(Ok(elf));
    }
    let known = Command::new("git")
        .current_dir(&root)
        .args(["cat-file", "-e", &format!("{REFERENCE_COMMIT}^{{commit}}")])
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !known.success() {
        return Ok(Err(format!(
            "commit {REFERENCE_COMMIT} is not in this clone (a shallow clone?)"
        )));
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let archive = Command::new("sh")
        .current_dir(&root)
        .arg("-c")
        .arg(format!(
            "git archive {REFERENCE_COMMIT} kernel crates | tar -x -C '{}'",
            dir.display()
        ))
        .status()
        .map_err(|e| format!("cannot run git archive: {e}"))?;
    if !archive.success() {
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(Err(format!(
            "git archive {REFERENCE_COMMIT} | tar -x failed"
        )));
    }
    println!(
        "bench: building the reference kernel ({REFERENCE_COMMIT}) in {}",
        dir.display()
    );
    Ok(kernel::build_in(&dir.join("kernel"), &Variant::shell(true)))
}

/// Boot-to-prompt: median of 5 wall-clock runs, minus QEMU's own start-up (a kernel that
/// prints one line at entry and halts), on q35 and microvm; and the reference kernel's first
/// byte to prompt, booted alternately with today's.
pub fn boot_time(runs: usize) -> Result<Vec<String>, String> {
    let shell = kernel::build(&Variant::shell(true))?;
    let baseline = kernel::build(&Variant {
        features: vec!["boot-baseline"],
        release: true,
    })?;
    let reference = reference_kernel()?;
    if let Err(why) = &reference {
        println!("SKIPPED boot-reference: {why}");
    }
    let mut rows = Vec::new();
    for machine in [Machine::Q35, Machine::Microvm] {
        let mut prompt = Vec::new();
        let mut base = Vec::new();
        let mut claimed = Vec::new();
        let mut from_banner = Vec::new();
        let mut reference_banner = Vec::new();
        for _ in 0..runs {
            if let Ok(reference) = &reference {
                let mut config = QemuConfig::new(reference);
                config.machine = machine;
                reference_banner.push(time_to_marker(&config, "lull> ")?.1);
            }
            let mut config = QemuConfig::new(&shell);
            config.machine = machine;
            let (ms, since_first, text) = time_to_marker(&config, "lull> ")?;
            prompt.push(ms);
            from_banner.push(since_first);
            if let Some(us) = text
                .lines()
                .find_map(|l| l.split("kernel ready in ").nth(1))
                .and_then(|rest| rest.trim_end_matches(" us").trim().parse::<f64>().ok())
            {
                claimed.push(us / 1000.0);
            }
            let mut config = QemuConfig::new(&baseline);
            config.machine = machine;
            base.push(time_to_marker(&config, "lull-baseline")?.0);
        }
        let banner_ms = median(&mut from_banner);
        let prompt_ms = median(&mut prompt);
        let base_ms = median(&mut base);
        let claimed_ms = if claimed.is_empty() {
            f64::NAN
        } else {
            median(&mut claimed)
        };
        let row = format!(
            "boot-to-prompt {machine:?}: prompt {prompt_ms:.1} ms, QEMU+firmware baseline {base_ms:.1} ms, \
             kernel {:.1} ms (median of {runs}); kernel's own claim {claimed_ms:.1} ms",
            prompt_ms - base_ms
        );
        println!("{row}");
        rows.push(row);
        // QEMU's own start-up moves by tens of ms from run to run on a shared host, and the
        // row above subtracts two medians of it; this one has none of it in: from the kernel's
        // first console byte (its banner) to the prompt. It leaves out the kernel's time
        // before the banner (entry, CPU set-up, the first printk: ~100 blocks), so it is a
        // lower bound of the kernel's time.
        let row = format!(
            "boot-from-banner {machine:?}: first console byte to prompt {banner_ms:.1} ms \
             (median of {runs}; a lower bound of the kernel's time, without QEMU's start-up)"
        );
        println!("{row}");
        rows.push(row);
        if let Ok(reference) = &reference {
            let row = format!(
                "boot-reference {machine:?}: first console byte to prompt {banner_ms:.1} ms, \
                 the reference kernel ({REFERENCE_COMMIT}; {REFERENCE_MS}) {:.1} ms in the same \
                 runs, alternating (median of {runs}); its code before the prompt: {} blocks",
                median(&mut reference_banner),
                translated_before_prompt(reference, machine)?.0
            );
            println!("{row}");
            rows.push(row);
        }
        let mut touched = Vec::new();
        for (kernel, marker) in [(&shell, "lull> "), (&baseline, "lull-baseline")] {
            let mut config = QemuConfig::new(kernel);
            config.machine = machine;
            let mut guest = Guest::spawn(&config)?;
            guest.expect(marker, Duration::from_secs(60))?;
            // Stopped at once: after the prompt the device probe runs and allocates. The host
            // still sees the prompt a little late, so on microvm one run in a few also counts
            // the probe's first 2 MiB region (at 20 MiB).
            let _ = std::process::Command::new("kill")
                .args(["-STOP", &guest.pid().to_string()])
                .status();
            touched.push(guest_ram_resident_kib(guest.pid(), config.memory_mib)?);
        }
        let row = format!(
            "boot-memory {machine:?}: guest RAM resident in QEMU at the prompt {} KiB \
             (AnonHugePages {} KiB), baseline kernel {} KiB ({} KiB): the host's first touch \
             of each 2 MiB page is a fault of 0.4-14 ms on this host",
            touched[0].0, touched[0].1, touched[1].0, touched[1].1
        );
        println!("{row}");
        rows.push(row);
        let (blocks, bytes) = translated_before_prompt(&shell, machine)?;
        let row = format!(
            "boot-code {machine:?}: {blocks} translation blocks, {bytes} bytes of kernel code \
             translated by TCG before the prompt (host-load independent)"
        );
        println!("{row}");
        rows.push(row);
    }
    Ok(rows)
}

/// `(Rss, AnonHugePages)` in KiB of QEMU's guest-RAM mapping (the anonymous one of exactly
/// `memory_mib`): how much guest memory the host has had to back so far. QEMU asks for
/// transparent huge pages there, so each first touch of a 2 MiB region costs the host a
/// 2 MiB fault, which is why this is counted (host-load independent, like the code count).
fn guest_ram_resident_kib(pid: u32, memory_mib: u32) -> Result<(u64, u64), String> {
    let path = format!("/proc/{pid}/smaps");
    let smaps = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let (mut in_ram, mut rss) = (false, None);
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(key), Some(value)) = (fields.next(), fields.next()) else {
            continue;
        };
        match key {
            "Size:" => in_ram = value.parse::<u64>().ok() == Some(u64::from(memory_mib) * 1024),
            "Rss:" if in_ram => rss = value.parse::<u64>().ok(),
            "AnonHugePages:" if in_ram => {
                if let (Some(rss), Ok(huge)) = (rss, value.parse::<u64>()) {
                    return Ok((rss, huge));
                }
            }
            _ => {}
        }
    }
    Err(format!(
        "{path}: no mapping of {memory_mib} MiB (guest RAM)"
    ))
}

/// The executable segments' address range in an x86_64 ELF.
fn text_range(elf: &[u8]) -> Option<std::ops::Range<u64>> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    let (phoff, phentsize, phnum) = (u64_at(0x20)? as usize, u16_at(0x36)?, u16_at(0x38)?);
    let mut range: Option<std::ops::Range<u64>> = None;
    for index in 0..usize::from(phnum) {
        let header = phoff + index * usize::from(phentsize);
        // PT_LOAD with PF_X.
        if u32_at(header)? != 1 || u32_at(header + 4)? & 1 == 0 {
            continue;
        }
        let (start, size) = (u64_at(header + 0x10)?, u64_at(header + 0x28)?);
        range = Some(match range {
            Some(r) => r.start.min(start)..r.end.max(start + size),
            None => start..start + size,
        });
    }
    range
}

/// What TCG translated of the kernel's own code before the console showed `lull> `: QEMU
/// logs each translation block (`-d in_asm`) and each byte written to the UART
/// (`trace:serial_write`) into one file, in order. Boot time on TCG is mostly this
/// translation, and unlike wall time it does not move with the host's load.
fn translated_before_prompt(
    kernel: &std::path::Path,
    machine: Machine,
) -> Result<(usize, usize), String> {
    let elf = std::fs::read(kernel).map_err(|e| format!("{}: {e}", kernel.display()))?;
    let text = text_range(&elf).ok_or("the kernel ELF has no executable segment")?;
    let log = kernel::repo_root().join(format!("target/trace/boot-code-{machine:?}.log"));
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&log);
    let mut config = QemuConfig::new(kernel);
    config.machine = machine;
    config.extra.extend([
        "-d".to_string(),
        "in_asm,trace:serial_write".to_string(),
        "-D".to_string(),
        log.display().to_string(),
    ]);
    let mut guest = Guest::spawn(&config)?;
    guest.expect("lull> ", Duration::from_secs(120))?;
    drop(guest);
    let contents = std::fs::read_to_string(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let (mut blocks, mut bytes, mut serial) = (0usize, 0usize, String::new());
    let (mut first, mut inside) = (false, false);
    for line in contents.lines() {
        if let Some(rest) = line.strip_prefix("serial_write write addr 0x00 val 0x") {
            if let Ok(byte) = u8::from_str_radix(rest.trim(), 16) {
                serial.push(byte as char);
                if serial.ends_with("lull> ") {
                    return Ok((blocks, bytes));
                }
            }
        } else if line.starts_with("IN:") {
            first = true;
        } else if let Some((address, rest)) =
            line.strip_prefix("0x").and_then(|l| l.split_once(':'))
        {
            let Ok(address) = u64::from_str_radix(address, 16) else {
                continue;
            };
            if first {
                first = false;
                inside = text.contains(&address);
                blocks += usize::from(inside);
            }
            if inside {
                // "  0f 01 c1     vmcall": the instruction's bytes come first.
                bytes += rest
                    .split("  ")
                    .map(str::trim)
                    .find(|field| !field.is_empty())
                    .map_or(0, |hex| hex.split_whitespace().count());
            }
        }
    }
    Err(format!(
        "no prompt in QEMU's serial_write trace ({})",
        log.display()
    ))
}

/// The guest's `blk bench -w vda` on a 64 MiB raw file behind virtio-blk (q35: virtio-blk-pci,
/// microvm: virtio-blk-device; `cache=none,aio=threads`, so the host's page cache does not
/// flatter the reads): sequential write and read MB/s with 32 requests of 64 KiB in flight, 4 KiB
/// random-read IOPS at queue depth 1 (with p50/p99 latency) and 32. The figures are the guest's
/// own clock (kvm-clock/TSC under TCG runs at host time). On q35 Debian's Linux 6.1 runs the
/// same measurements (`blkbench`: O_DIRECT, Linux AIO) against the same image, in the same run.
pub fn block_throughput() -> Result<Vec<String>, String> {
    let shell = kernel::build(&Variant::shell(true))?;
    let image = kernel::repo_root().join("target/bench-blk.img");
    let file = std::fs::File::create(&image).map_err(|e| format!("{}: {e}", image.display()))?;
    file.set_len(64 << 20)
        .map_err(|e| format!("{}: {e}", image.display()))?;
    drop(file);
    let mut rows = Vec::new();
    for (machine, device) in [
        (Machine::Q35, "virtio-blk-pci"),
        (Machine::Microvm, "virtio-blk-device"),
    ] {
        let mut config = QemuConfig::new(&shell);
        config.machine = machine;
        let drive = [
            "-drive".to_string(),
            format!(
                "file={},if=none,id=d0,format=raw,cache=none,aio=threads",
                image.display()
            ),
            "-device".to_string(),
            format!("{device},drive=d0"),
        ];
        config.extra = [
            "-global".to_string(),
            "virtio-mmio.force-legacy=false".to_string(),
        ]
        .to_vec();
        config.extra.extend(drive.iter().cloned());
        let mut guest = Guest::spawn(&config)?;
        guest.expect("lull> ", Duration::from_secs(60))?;
        let text = guest.run("blk bench -w vda", Duration::from_secs(300))?;
        let line = text
            .lines()
            .find(|l| l.starts_with("blk bench vda"))
            .ok_or_else(|| format!("{machine:?}: blk bench printed:\n{text}"))?;
        let row = format!("blk {machine:?} ({device}): {line}");
        println!("{row}");
        rows.push(row);
        guest.send(b"poweroff\n")?;
        let _ = guest.wait_exit(Duration::from_secs(30));
        if machine == Machine::Q35 {
            let line = crate::linuxref::measure_linux_blk(&drive, 16 << 20)
                .map_err(|e| format!("Linux reference (block): {e}"))?;
            let row = format!("blk Linux 6.1 Q35 ({device}): {line}");
            println!("{row}");
            rows.push(row);
        }
    }
    let _ = std::fs::remove_file(&image);
    Ok(rows)
}

/// Sound: 10 s of `speaker-test -t sine -f 1000` on q35's AC'97 (its 4 KiB periods) and on
/// the HD Audio card (`ich9-intel-hda` + `hda-output`) at 10, 20 and 40 ms periods, recorded
/// by QEMU's wav back-end. From the guest: frames, periods, interrupts (and per second),
/// underruns, and how long DAPM's power-up took before the DMA engine started. From outside:
/// whether the recording is bit-identical to the samples sent (a dropped or repeated period
/// would show), and how long after the command reached QEMU the recording started to grow (the
/// file polled every millisecond; QEMU's audio timer runs every 10 ms, so that is the grain).
pub fn sound_playback() -> Result<Vec<String>, String> {
    let shell = kernel::build(&Variant::shell(true))?;
    let mut rows = Vec::new();
    for (card, period_us) in [
        ("AC97", None),
        ("HDA", Some(10_000u32)),
        ("HDA", Some(20_000)),
        ("HDA", Some(40_000)),
    ] {
        rows.push(sound_run(&shell, card, period_us)?);
    }
    Ok(rows)
}

fn sound_run(
    shell: &std::path::Path,
    card: &str,
    period_us: Option<u32>,
) -> Result<String, String> {
    let wav = kernel::repo_root().join("target/bench-sound.wav");
    let _ = std::fs::remove_file(&wav);
    let mut config = QemuConfig::new(shell);
    config.extra = vec!["-audiodev".into(), crate::e2e::wav_audiodev(&wav)];
    if card == "AC97" {
        config
            .extra
            .extend(["-device".into(), "AC97,audiodev=snd0".into()]);
    } else {
        config.extra.extend([
            "-device".into(),
            "ich9-intel-hda".into(),
            "-device".into(),
            "hda-output,audiodev=snd0".into(),
        ]);
    }
    let mut guest = Guest::spawn(&config)?;
    guest.expect("lull> ", Duration::from_secs(60))?;
    guest.run("udevadm settle", Duration::from_secs(30))?;
    let header = std::fs::metadata(&wav).map(|m| m.len()).unwrap_or(0);
    let command = match period_us {
        Some(us) => format!("speaker-test -t sine -f 1000 -l 10 -p {us}"),
        None => String::from("speaker-test -t sine -f 1000 -l 10"),
    };
    guest.send(format!("{command}\n").as_bytes())?;
    let sent = Instant::now();
    let mut first_sample = None;
    while sent.elapsed() < Duration::from_secs(5) {
        if std::fs::metadata(&wav).map(|m| m.len()).unwrap_or(0) > header {
            first_sample = Some(sent.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let text = guest.expect("lull> ", Duration::from_secs(120))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("played "))
        .ok_or_else(|| format!("speaker-test printed:\n{text}"))?
        .to_string();
    guest.send(b"poweroff\n")?;
    let _ = guest.wait_exit(Duration::from_secs(30));
    let (_, samples) = crate::e2e::read_wav(&wav)?;
    let expected = lull_pcm::sine_bytes(1000, 48_000, 2, 50, 480_000).map_err(|e| e.to_string())?;
    let expected: Vec<i16> = expected
        .chunks_exact(2)
        .map(|p| i16::from_le_bytes([p[0], p[1]]))
        .collect();
    let recorded = samples.len().min(expected.len());
    let first_difference = (0..recorded).find(|&i| samples[i] != expected[i]);
    let _ = std::fs::remove_file(&wav);
    // "… N interrupts, … M ms; …": interrupts per second of playback.
    let number_before = |unit: &str| -> Option<f64> {
        let at = line.find(unit)?;
        line[..at].split_whitespace().last()?.parse().ok()
    };
    let per_second = match (number_before(" interrupts"), number_before(" ms;")) {
        (Some(interrupts), Some(ms)) if ms > 0.0 => {
            format!("{:.1} interrupts/s", interrupts * 1e3 / ms)
        }
        _ => String::from("interrupts/s unknown"),
    };
    let periods = match period_us {
        Some(us) => format!("{} ms periods", us / 1000),
        None => String::from("4 KiB periods"),
    };
    Ok(format!(
        "sound {card} (q35, 10 s sine at 1 kHz, {periods}): guest: {line}; {per_second}; \
         recording: {} of {} frames, {}; first sample {} after the command",
        recorded / 2,
        expected.len() / 2,
        match first_difference {
            None => String::from("bit-identical"),
            Some(at) => format!("differs from frame {}", at / 2),
        },
        first_sample.map_or(String::from("not seen within 5 s"), |t| format!(
            "{:.1} ms",
            t.as_secs_f64() * 1e3
        )),
    ))
}

/// A host sink for a guest's TCP stream: accepts one connection, reads `bytes` (or to EOF),
/// closes, and returns the bytes and the time from the first byte to the last.
fn tcp_sink(
    listener: std::net::TcpListener,
    bytes: u64,
) -> std::thread::JoinHandle<Result<(u64, f64), String>> {
    std::thread::spawn(move || {
        use std::io::Read as _;
        let (mut stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(300)))
            .map_err(|e| e.to_string())?;
        let mut buffer = vec![0u8; 1 << 16];
        let mut total = 0u64;
        let mut first: Option<Instant> = None;
        while total < bytes {
            let n = stream.read(&mut buffer).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            first.get_or_insert_with(Instant::now);
            total += n as u64;
        }
        let seconds = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
        Ok((total, seconds))
    })
}

/// Sends `bytes` of zeros to `127.0.0.1:port` (retrying the connect while the guest's listener
/// comes up) and returns when the host has written them and closed.
fn tcp_send(port: u16, bytes: u64) -> Result<Instant, String> {
    use std::io::Write as _;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() > deadline => return Err(format!("connect: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let started = Instant::now();
    let chunk = vec![0u8; 1 << 16];
    let mut sent = 0u64;
    while sent < bytes {
        stream.write_all(&chunk).map_err(|e| format!("send: {e}"))?;
        sent += chunk.len() as u64;
    }
    Ok(started)
}

fn mib_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / seconds.max(1e-9)
}

/// The `min/avg/max` round trip in ms from a ping summary line: Lull's `rtt min/avg/max =
/// a/b/c ms` or busybox's `round-trip min/avg/max = a/b/c ms`.
fn ping_rtt(text: &str) -> Option<(f64, f64, f64)> {
    let line = text.lines().find(|l| l.contains("min/avg/max"))?;
    let figures = line.split('=').nth(1)?.trim().trim_end_matches("ms").trim();
    let mut parts = figures.split('/').map(|f| f.trim().parse::<f64>());
    match (parts.next()?, parts.next()?, parts.next()?) {
        (Ok(min), Ok(avg), Ok(max)) => Some((min, avg, max)),
        _ => None,
    }
}

/// TCP throughput over QEMU's user network on q35 (virtio-net-pci), 64 MiB each way, timed on
/// the host: guest → host from the sink's first byte to its last; host → guest from the
/// host's connect until the guest's console says it has everything. Lull (`nc`) and Debian's
/// Linux 6.1 (busybox `nc`, `dd`) in the same run and configuration, twice each way: first
/// both guests compute the SHA-256 of what they send and receive (Lull's `nc`; Linux pipes
/// through `sha256sum`), then neither does (`nc --no-hash`; `dd | nc`, `nc > /dev/null`).
/// Then 20 pings to the user network's gateway (10.0.2.2) from each.
pub fn tcp_throughput() -> Result<Vec<String>, String> {
    const BYTES: u64 = 64 << 20;
    let shell = kernel::build(&Variant::shell(true))?;
    let mut rows = Vec::new();
    for system in ["Lull", "Linux 6.1"] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("host listener: {e}"))?;
        let sink_port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let forward = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free host port: {e}"))?
            .port();
        let netdev = [
            "-netdev".to_string(),
            format!("user,id=n0,hostfwd=tcp:127.0.0.1:{forward}-:5001"),
            "-device".to_string(),
            "virtio-net-pci,netdev=n0".to_string(),
        ];
        let new_sink = || -> Result<_, String> {
            let clone = listener.try_clone().map_err(|e| format!("listener: {e}"))?;
            Ok(tcp_sink(clone, BYTES))
        };
        let long = Duration::from_secs(600);
        // (bytes the host got, guest -> host s, host -> guest s): hashing, then not.
        let mut phases = Vec::new();
        let ping;
        if system == "Lull" {
            let mut config = QemuConfig::new(&shell);
            config.extra = netdev.to_vec();
            let mut guest = Guest::spawn(&config)?;
            guest.expect("DHCP lease 10.0.2.15", Duration::from_secs(60))?;
            for flag in ["", " --no-hash"] {
                let sink = new_sink()?;
                guest.run(&format!("nc{flag} -s {BYTES} 10.0.2.2 {sink_port}"), long)?;
                let (out_bytes, out_s) = sink.join().map_err(|_| "sink panicked")??;
                guest.send(format!("nc{flag} -l 5001\n").as_bytes())?;
                guest.expect("listening on port 5001", Duration::from_secs(30))?;
                let started = tcp_send(forward, BYTES)?;
                guest.expect(&format!("received {BYTES} bytes"), long)?;
                phases.push((out_bytes, out_s, started.elapsed().as_secs_f64()));
                guest.expect("lull> ", Duration::from_secs(30))?;
            }
            ping = guest.run("ping -c 20 10.0.2.2", Duration::from_secs(60))?;
            guest.send(b"poweroff\n")?;
            let _ = guest.wait_exit(Duration::from_secs(30));
        } else {
            // Each sink accepts before the guest sends (the guest starts at once).
            let mut sink = Some(new_sink()?);
            let mut guest = crate::linuxref::boot_linux_net(&netdev, BYTES, sink_port)?;
            for (sent, received) in [
                ("LINUXREF-NET-SENT", "LINUXREF-NET-RECEIVED"),
                ("LINUXREF-NET-RAW-SENT", "LINUXREF-NET-RAW-RECEIVED"),
            ] {
                let this = sink.take().ok_or("no host sink")?;
                let (out_bytes, out_s) = this.join().map_err(|_| "sink panicked")??;
                if phases.is_empty() {
                    sink = Some(new_sink()?);
                }
                guest.expect(sent, long)?;
                // busybox nc says nothing when it listens; give it a moment (QEMU's forward
                // accepts at once and resets the connection if nothing listens in the guest
                // yet).
                std::thread::sleep(Duration::from_secs(2));
                let started = tcp_send(forward, BYTES)?;
                guest.expect(received, long)?;
                phases.push((out_bytes, out_s, started.elapsed().as_secs_f64()));
            }
            ping = guest.expect("LINUXREF-PING-END", Duration::from_secs(60))?;
            crate::linuxref::finish_linux(&mut guest)?;
        }
        for ((out_bytes, out_s, in_s), mode) in phases.iter().zip(["hashing", "not hashing"]) {
            if *out_bytes != BYTES {
                return Err(format!(
                    "{system} ({mode}): the host received {out_bytes} of {BYTES} bytes"
                ));
            }
            let row = format!(
                "tcp {system} q35 (virtio-net-pci, user net, {mode}): guest -> host {:.2} MiB/s, host -> guest {:.2} MiB/s (64 MiB each, host-timed)",
                mib_s(BYTES, *out_s),
                mib_s(BYTES, *in_s)
            );
            println!("{row}");
            rows.push(row);
        }
        let (min, avg, max) =
            ping_rtt(&ping).ok_or_else(|| format!("{system}: no ping summary in {ping:?}"))?;
        let row = format!(
            "ping {system} q35 (virtio-net-pci, user net) to 10.0.2.2, 20 echoes: rtt min/avg/max {min:.3}/{avg:.3}/{max:.3} ms"
        );
        println!("{row}");
        rows.push(row);
    }
    Ok(rows)
}

/// Interrupts a Lull guest took while idle at its prompt, counted from QEMU's trace.
pub struct IdleMeasurement {
    pub counts: crate::trace::Counts,
    pub lapic_timer_per_s: f64,
    pub other_per_s: f64,
}

/// Boots `kernel` with tracing, lets it settle 1 s at the prompt, counts interrupts over an
/// idle window of `seconds`, then powers it off.
pub fn measure_lull_idle(
    kernel: &std::path::Path,
    append: &str,
    seconds: u64,
    cpus: u32,
) -> Result<IdleMeasurement, String> {
    measure_lull_idle_on(Machine::Q35, kernel, append, seconds, cpus)
}

/// [`measure_lull_idle`] on a chosen machine model.
pub fn measure_lull_idle_on(
    machine: Machine,
    kernel: &std::path::Path,
    append: &str,
    seconds: u64,
    cpus: u32,
) -> Result<IdleMeasurement, String> {
    measure_lull_idle_with(machine, kernel, append, seconds, cpus, &[])
}

/// [`measure_lull_idle_on`] with more QEMU arguments (devices that must not wake an idle guest).
pub fn measure_lull_idle_with(
    machine: Machine,
    kernel: &std::path::Path,
    append: &str,
    seconds: u64,
    cpus: u32,
    extra: &[&str],
) -> Result<IdleMeasurement, String> {
    let log = crate::kernel::repo_root()
        .join("target/trace")
        .join(format!(
            "lull-idle-{machine:?}-{}-{}{}.log",
            cpus,
            append.replace(['=', ' '], "_"),
            if extra.is_empty() { "" } else { "-devices" }
        ));
    let mut config = QemuConfig::new(kernel);
    config.machine = machine;
    config.append = append.to_string();
    config.cpus = cpus;
    config.extra = extra.iter().map(|a| a.to_string()).collect();
    crate::trace::enable(&mut config, &log)?;
    let mut guest = Guest::spawn(&config)?;
    guest.expect("lull> ", Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(1));
    let start = std::time::SystemTime::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let end = std::time::SystemTime::now();
    guest.send(b"poweroff\n")?;
    let code = guest.wait_exit(Duration::from_secs(30))?;
    if code != 0 {
        return Err(format!(
            "guest exited with {code} after the idle window:\n{}",
            guest.output()
        ));
    }
    let counts = crate::trace::count_events(
        &log,
        crate::trace::trim_window(start, end, Duration::from_millis(100)),
    )?;
    counts
        .ensure_traced()
        .map_err(|e| format!("trace {}: {e}", log.display()))?;
    Ok(IdleMeasurement {
        lapic_timer_per_s: counts.per_second(counts.lapic_timer),
        other_per_s: counts.per_second(counts.other_deliveries()),
        counts,
    })
}

/// Lull's wake-up latency as its `latency` shell command reports it.
pub struct LullLatency {
    pub samples: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// `(µs, count)` per non-empty bucket.
    pub histogram: Vec<(u64, u64)>,
}

fn number_after(line: &str, key: &str) -> Option<u64> {
    line.split(key)
        .nth(1)?
        .split_whitespace()
        .next()?
        .trim_end_matches(',')
        .parse()
        .ok()
}

/// Parses the output of `latency N`.
pub fn parse_lull_latency(output: &str) -> Result<LullLatency, String> {
    let summary = output
        .lines()
        .find(|l| l.starts_with("latency: ") && l.contains(" samples at "))
        .ok_or_else(|| format!("no latency summary in:\n{output}"))?;
    let samples = summary
        .strip_prefix("latency: ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("bad summary {summary:?}"))?;
    let field =
        |key: &str| number_after(summary, key).ok_or_else(|| format!("no {key:?} in {summary:?}"));
    let mut histogram = Vec::new();
    let mut inside = false;
    for line in output.lines() {
        if line.starts_with("latency histogram") {
            inside = true;
            continue;
        }
        if line.starts_with("latency: end") {
            break;
        }
        if inside {
            let mut words = line.split_whitespace();
            if let (Some(us), Some(count)) = (words.next(), words.next()) {
                if let (Ok(us), Ok(count)) = (us.parse(), count.parse()) {
                    histogram.push((us, count));
                }
            }
        }
    }
    Ok(LullLatency {
        samples,
        p50_us: field("p50 ")?,
        p99_us: field("p99 ")?,
        max_us: field("max ")?,
        histogram,
    })
}

/// Boots Lull and runs `latency SECONDS` in its shell.
pub fn measure_lull_latency(kernel: &std::path::Path, seconds: u64) -> Result<LullLatency, String> {
    let mut guest = Guest::spawn(&QemuConfig::new(kernel))?;
    guest.expect("lull> ", Duration::from_secs(60))?;
    let output = guest.run(
        &format!("latency {seconds}"),
        Duration::from_secs(seconds * 20 + 60),
    )?;
    guest.send(b"poweroff\n")?;
    let _ = guest.wait_exit(Duration::from_secs(30));
    parse_lull_latency(&output)
}

/// One `bench:` line of the kernel's `bench` command, split into its words and `key=value`s.
#[derive(Debug, PartialEq)]
pub struct KernelBenchLine {
    pub words: Vec<String>,
    pub values: Vec<(String, u64)>,
}

impl KernelBenchLine {
    pub fn value(&self, key: &str) -> Option<u64> {
        self.values.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
    pub fn text(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}=");
        self.words
            .iter()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
    }
}

/// Parses the `bench: ...` lines of a `bench` command's output; a line starting `bench:`
/// that has no `key=value` is an error message from the kernel.
pub fn parse_kernel_bench(output: &str) -> Result<Vec<KernelBenchLine>, String> {
    let mut lines = Vec::new();
    for line in output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("bench: "))
    {
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        let values: Vec<(String, u64)> = words
            .iter()
            .filter_map(|w| {
                let (k, v) = w.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect();
        if values.is_empty() {
            return Err(format!("the kernel's bench failed: {line}"));
        }
        lines.push(KernelBenchLine { words, values });
    }
    if lines.is_empty() {
        return Err(format!("no bench lines in:\n{output}"));
    }
    Ok(lines)
}

/// SMP benchmarks, in-kernel on q35 TCG `-smp 4` (one boot): thread ping-pong, IPI round trip,
/// HPET interrupt-to-handler latency hard vs threaded, and lock contention over 1–4 vCPUs.
/// Times are the guest's TSC (and, for the interrupt, the HPET counter against its own
/// comparator); TCG on two host cores is noisy, so these are reported, not targets.
pub fn smp(kernel: &std::path::Path) -> Result<Vec<String>, String> {
    let mut config = QemuConfig::new(kernel);
    config.cpus = 4;
    let mut guest = Guest::spawn(&config)?;
    guest.expect("lull> ", Duration::from_secs(60))?;
    let mut rows = Vec::new();
    let machine = "q35 TCG 4 vCPU 256 MiB";
    let us = |ns: u64| format!("{:.1}", ns as f64 / 1000.0);
    for line in parse_kernel_bench(&guest.run("bench pingpong 5000", Duration::from_secs(300))?)? {
        let ns = line.value("ns_per_switch").ok_or("no ns_per_switch")?;
        let cpus = line.value("cpus").unwrap_or(1);
        rows.push(format!(
            "thread ping-pong ({machine}, `bench pingpong 5000`, two fair threads, completions, {}): {} us per hand-off (wake-up + switch)",
            if cpus == 1 { "same CPU" } else { "two CPUs" },
            us(ns)
        ));
    }
    for line in parse_kernel_bench(&guest.run("bench ipi 2000", Duration::from_secs(300))?)? {
        let field = |k: &str| line.value(k).ok_or_else(|| format!("no {k}"));
        rows.push(format!(
            "IPI round trip ({machine}, `bench ipi 2000`, call-function wait=1, CPU {} -> {}): min {} us, p50 {} us, p99 {} us, max {} us",
            field("from")?, field("to")?, us(field("min_ns")?), us(field("p50_ns")?), us(field("p99_ns")?), us(field("max_ns")?)
        ));
    }
    for line in parse_kernel_bench(&guest.run("bench irq 500", Duration::from_secs(300))?)? {
        let field = |k: &str| line.value(k).ok_or_else(|| format!("no {k}"));
        rows.push(format!(
            "IRQ latency {} ({machine}, `bench irq 500`, HPET comparator -> {}; HPET counter minus comparator): min {} us, p50 {} us, p99 {} us, max {} us",
            line.text("mode").unwrap_or("?"),
            if line.text("mode") == Some("hard") { "primary handler" } else { "irq thread (FIFO 50)" },
            us(field("min_ns")?), us(field("p50_ns")?), us(field("p99_ns")?), us(field("max_ns")?)
        ));
    }
    for line in parse_kernel_bench(&guest.run("bench lock 20000", Duration::from_secs(600))?)? {
        let field = |k: &str| line.value(k).ok_or_else(|| format!("no {k}"));
        rows.push(format!(
            "lock contention {} ({machine}, `bench lock 20000`, {} thread(s) on {} CPU(s), one shared counter): {} ns per acquisition, {} us wall",
            line.text("kind").unwrap_or("?"),
            field("cpus")?, field("cpus")?, field("ns_per_acquisition")?, field("wall_us")?
        ));
    }
    guest.send(b"poweroff\n")?;
    let _ = guest.wait_exit(Duration::from_secs(30));
    Ok(rows)
}

/// Plots both latency histograms into one PNG with gnuplot (installed with apt-get if root).
pub fn plot_latency(
    lull: &std::path::Path,
    linux: &std::path::Path,
    png: &std::path::Path,
) -> Result<std::path::PathBuf, String> {
    crate::tools::ensure("gnuplot", "gnuplot-nox")?;
    let script = format!(
        "set terminal png size 1000,600\n\
         set output '{png}'\n\
         set title 'Wake-up latency, 1 kHz absolute timer, QEMU q35 TCG 1 vCPU'\n\
         set xlabel 'latency (us, log scale)'\n\
         set ylabel 'samples (log scale)'\n\
         set logscale xy\n\
         set grid\n\
         plot '{lull}' using ($1+1):2 with impulses lw 2 title 'Lull (latency 10)', \\\n\
              '{linux}' using ($1+1):2 with points pt 7 ps 0.5 title 'Linux 6.1 (cyclictest)'\n",
        png = png.display(),
        lull = lull.display(),
        linux = linux.display()
    );
    let mut child = std::process::Command::new("gnuplot")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run gnuplot: {e}"))?;
    use std::io::Write as _;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(script.as_bytes())
        .map_err(|e| format!("gnuplot: {e}"))?;
    let status = child.wait().map_err(|e| format!("gnuplot: {e}"))?;
    if !status.success() {
        return Err(format!("gnuplot failed ({status})"));
    }
    Ok(png.to_path_buf())
}

/// Runs the host-side timer scale benchmark and returns its per-structure lines.
pub fn timer_scale() -> Result<Vec<String>, String> {
    let output =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(crate::kernel::repo_root())
            .args([
                "run",
                "--quiet",
                "--release",
                "-p",
                "lull-time",
                "--example",
                "timer_scale",
            ])
            .output()
            .map_err(|e| format!("cannot run timer_scale: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "timer_scale failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .lines()
        .filter(|l| l.starts_with("hrtimer") || l.starts_with("wheel") || l.starts_with("verdict"))
        .map(|l| {
            format!("timer scale (cargo run --release -p lull-time --example timer_scale): {l}")
        })
        .collect())
}

/// Runs `lull-vmm bench` with the real kernel when /dev/kvm is there.
pub fn vmm(kernel: &std::path::Path) -> Result<Vec<String>, String> {
    vmm_bench(kernel, &[], "vmm")
}

/// Live migration of an idle Lull guest of 256 MiB and 1 GiB over a Unix socket on this host
/// (`lull-vmm bench --migrate`): downtime, total time and bytes, median and range of `runs`
/// migrations per size (at least 5), sizes interleaved.
pub fn migrate(kernel: &std::path::Path, runs: usize) -> Result<Vec<String>, String> {
    let runs = runs.max(5).to_string();
    vmm_bench(
        kernel,
        &["--migrate", "--sizes-mib", "256,1024", "--runs", &runs],
        "vmm",
    )
}

/// Lazy restore (eager, lazy with async PF off and on, lazy with a recorded working set; a
/// `meminfo` workload typed at spawn; then a guest that filled 16 MiB with `memtouch fill`:
/// `memtouch sum` with and without prefetch, and the async-PF experiment `apfbench` with async
/// PF off and on) and post-copy migration of an idle Lull guest of 128 MiB and 1 GiB
/// (`lull-vmm bench --lazy`), median and range of `runs` per size and mode (at least 5),
/// interleaved.
pub fn lazy(kernel: &std::path::Path, runs: usize) -> Result<Vec<String>, String> {
    let runs = runs.max(5).to_string();
    vmm_bench(
        kernel,
        &["--lazy", "--sizes-mib", "128,1024", "--runs", &runs],
        "vmm",
    )
}

/// TCP both ways (hashing, then not) and ping over a TAP device with lull-vmm on `/dev/kvm`:
/// `lull-vmm bench --tap`, 64 KiB each way (the guest runs in this host's KVM instruction
/// emulator). Needs root for the network namespace it makes; says why when it cannot run.
pub fn tap(kernel: &std::path::Path) -> Result<Vec<String>, String> {
    vmm_bench(kernel, &["--tap", "--bytes", "65536"], "vmm")
}

/// Builds lull-vmm (release, static: `crate::vmm`) and runs `lull-vmm bench --kernel KERNEL EXTRA`; its lines,
/// prefixed with `prefix: `.
fn vmm_bench(
    kernel: &std::path::Path,
    extra: &[&str],
    prefix: &str,
) -> Result<Vec<String>, String> {
    if !std::path::Path::new("/dev/kvm").exists() {
        return Ok(vec![format!(
            "{prefix}: skipped (no /dev/kvm on this machine)"
        )]);
    }
    let output = std::process::Command::new(crate::vmm::build_release()?)
        .arg("bench")
        .arg("--kernel")
        .arg(kernel)
        .args(extra)
        .output()
        .map_err(|e| format!("cannot run lull-vmm bench: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "lull-vmm bench failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| format!("{prefix}: {l}"))
        .collect())
}

/// Builds the instruction-counting QEMU plugin (xtask/qemu-plugin/insn_count.c) into `out_dir`.
fn insn_count_plugin(out_dir: &std::path::Path) -> Result<std::path::PathBuf, String> {
    crate::tools::ensure("cc", "gcc")?;
    let source = crate::kernel::repo_root().join("xtask/qemu-plugin/insn_count.c");
    let plugin = out_dir.join("insn_count.so");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-o"])
        .arg(&plugin)
        .arg(&source)
        .status()
        .map_err(|e| format!("cannot run cc: {e}"))?;
    if !status.success() {
        return Err(format!("cc failed on {}", source.display()));
    }
    Ok(plugin)
}

/// Boots `kernel` under single-threaded TCG with the counting plugin and instruction-driven
/// virtual time, runs `bench pvops ROUNDS` as init's command line (no console input, whose
/// timing would vary), powers off, and returns the guest instructions QEMU executed in the
/// whole run. Runs repeat to within a few instructions.
fn count_pvops_run(
    kernel: &std::path::Path,
    plugin: &std::path::Path,
    rounds: u64,
    log: &std::path::Path,
) -> Result<u64, String> {
    let _ = std::fs::remove_file(log);
    let mut config = QemuConfig::new(kernel);
    config.single_thread = true;
    config.extra = vec![
        "-plugin".into(),
        plugin.display().to_string(),
        "-d".into(),
        "plugin".into(),
        "-D".into(),
        log.display().to_string(),
        // Virtual time from the instruction count: timer interrupts land at the same
        // instructions every run, so host load cannot change what the guest executes.
        "-icount".into(),
        "shift=0,sleep=off".into(),
    ];
    config.append = format!("-- bench pvops {rounds} ; poweroff");
    let mut guest = Guest::spawn(&config)?;
    let status = guest.wait_exit(Duration::from_secs(600))?;
    let output = guest.output();
    if status != 0 || !output.contains("bench: pvops") {
        return Err(format!(
            "bench pvops did not finish (status {status}):\n{output}"
        ));
    }
    let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    text.lines()
        .find_map(|line| line.strip_prefix("insn_count: "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("no insn_count line in {}", log.display()))
}

/// The paravirt layer's cost on the native path, in instructions counted from outside: the
/// same workload (`bench pvops`: context switches, spinlock/IRQ-safe/mutex round trips,
/// hrtimer reprogramming, self-IPIs with EOI, clock reads, TLB flush requests) on the normal
/// kernel and on a `no-paravirt` build, each run at two sizes so boot and shutdown cancel out
/// (instructions per round = (I(2N) - I(N)) / N), `runs` times each, medians compared.
pub fn pvops(out_dir: &std::path::Path, runs: usize) -> Result<Vec<String>, String> {
    const ROUNDS: u64 = 2_000;
    let plugin = insn_count_plugin(out_dir)?;
    let layered = crate::kernel::build(&crate::kernel::Variant::shell(true))?;
    let baseline = crate::kernel::build(&crate::kernel::Variant {
        features: vec!["no-paravirt"],
        release: true,
    })?;
    let log = out_dir.join("insn_count.log");
    let per_round = |kernel: &std::path::Path| -> Result<(u64, u64, u64), String> {
        let mut samples = Vec::new();
        for _ in 0..runs {
            let small = count_pvops_run(kernel, &plugin, ROUNDS, &log)?;
            let large = count_pvops_run(kernel, &plugin, 2 * ROUNDS, &log)?;
            samples.push(large.saturating_sub(small) / ROUNDS);
        }
        samples.sort_unstable();
        Ok((
            samples[samples.len() / 2],
            samples[0],
            samples[samples.len() - 1],
        ))
    };
    let (base, base_min, base_max) = per_round(&baseline)?;
    let (layer, layer_min, layer_max) = per_round(&layered)?;
    let overhead = (layer as f64 - base as f64) / base as f64 * 100.0;
    Ok(vec![format!(
        "paravirt layer, native path (q35 TCG thread=single 1 vCPU, `bench pvops` {ROUNDS} vs {} rounds, \
         instructions counted by the xtask/qemu-plugin insn_count plugin, {runs} runs each): \
         {layer} instructions per round with the layer (min {layer_min}, max {layer_max}), \
         {base} in a `no-paravirt` build (min {base_min}, max {base_max}): {overhead:+.2} % (goal <= 1 %)",
        2 * ROUNDS
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_bench_lines() {
        let output =
            "bench pingpong\nbench: pingpong cpus=2 rounds=5000 ns_per_switch=32072\nlull> ";
        let lines = parse_kernel_bench(output).unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].value("ns_per_switch"), Some(32072));
        assert_eq!(lines[0].text("cpus"), Some("2"));
        assert!(parse_kernel_bench("bench: needs a second CPU").is_err());
        assert!(parse_kernel_bench("lull> ").is_err());
    }

    #[test]
    fn parses_latency_output() {
        let text = "latency: 3 samples at 1000 Hz: min 20 us, avg 30 us, p50 25 us, p99 40 us, max 41 us\n\
                    latency histogram (us count):\n000020 000001\n000025 000001\n000041 000001\nlatency: end\n";
        let parsed = parse_lull_latency(text).unwrap();
        assert_eq!(
            (parsed.samples, parsed.p50_us, parsed.p99_us, parsed.max_us),
            (3, 25, 40, 41)
        );
        assert_eq!(parsed.histogram, vec![(20, 1), (25, 1), (41, 1)]);
        assert!(parse_lull_latency("nothing").is_err());
    }
}

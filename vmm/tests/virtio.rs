//! virtio-mmio devices end to end: a guest driving virtio-blk through the real transport
//! (ioeventfd notify, irqfd interrupt status), idle device threads that use no CPU, snapshot and
//! restore with devices attached, TAP devices in a test-made network namespace, CLI errors, and
//! virtio-gpio driven from the guest shell and from the host through its control socket.
//! KVM tests are ignored (skipped) unless run with `--ignored`; the TAP test also needs the
//! right to create network namespaces and TAP devices, and says it skipped without it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use lull_vmm::test_guest::{READY_BANNER, VIRTIO_BLK_GUEST_BANNER};

const BOOT: Duration = Duration::from_secs(120);

#[test]
#[ignore = "needs /dev/kvm"]
fn a_guest_reads_and_writes_a_disk_through_virtio_mmio() {
    require_kvm("a_guest_reads_and_writes_a_disk_through_virtio_mmio");
    let dir = scratch("virtio-blk-rw");
    let guest = virtio_blk_guest(&dir);
    let image = disk(&dir, 8);
    let argument = format!("path={}", image.display());
    let mut vmm = Vmm::spawn(&[
        "run",
        "--kernel",
        guest.to_str().unwrap(),
        "--disk",
        &argument,
    ]);
    vmm.wait_for(VIRTIO_BLK_GUEST_BANNER, BOOT);
    let status = vmm.wait_exit(BOOT);
    let output = vmm.output();
    assert!(
        output.contains("in=00 data=01010101 out=00 isr=01"),
        "{output}\n{}",
        vmm.errors()
    );
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(
        vmm.errors().contains("virtio-blk0 at 0xd0000000 irq 5: "),
        "{}",
        vmm.errors()
    );
    let file = std::fs::read(&image).unwrap();
    assert!(
        file[512..1024].iter().all(|&b| b == 1),
        "sector 0 copied to sector 1"
    );
    assert!(
        file[1024..1536].iter().all(|&b| b == 3),
        "sector 2 untouched"
    );
}

#[test]
#[ignore = "needs /dev/kvm"]
fn a_read_only_disk_fails_the_guests_write_and_stays_unchanged() {
    require_kvm("a_read_only_disk_fails_the_guests_write_and_stays_unchanged");
    let dir = scratch("virtio-blk-ro");
    let guest = virtio_blk_guest(&dir);
    let image = disk(&dir, 8);
    let before = std::fs::read(&image).unwrap();
    let argument = format!("path={},readonly", image.display());
    let mut vmm = Vmm::spawn(&[
        "run",
        "--kernel",
        guest.to_str().unwrap(),
        "--disk",
        &argument,
    ]);
    vmm.wait_for(VIRTIO_BLK_GUEST_BANNER, BOOT);
    assert_eq!(vmm.wait_exit(BOOT).code(), Some(0));
    let output = vmm.output();
    assert!(
        output.contains("in=00 data=01010101 out=01"),
        "IOERR: {output}"
    );
    assert_eq!(std::fs::read(&image).unwrap(), before);
}

/// utime + stime (clock ticks) of the process's threads whose name starts with `prefix`.
fn thread_cpu_ticks(pid: u32, prefix: &str) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let name = name.trim().to_string();
        if !name.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.join("stat")).unwrap();
        // Fields after the parenthesised name: state is field 3; utime 14, stime 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        found.push((name, ticks));
    }
    found.sort();
    found
}

#[test]
#[ignore = "needs /dev/kvm"]
fn idle_device_threads_use_no_cpu_and_devices_survive_snapshot_restore() {
    require_kvm("idle_device_threads_use_no_cpu_and_devices_survive_snapshot_restore");
    let dir = scratch("virtio-idle");
    let guest = test_guest(&dir);
    let image = disk(&dir, 16);
    let socket = dir.join("api.sock");
    let snapshot = dir.join("snap");
    let argument = format!("path={}", image.display());
    let mut vmm = Vmm::spawn(&[
        "run",
        "--kernel",
        guest.to_str().unwrap(),
        "--cmdline",
        "x",
        "--disk",
        &argument,
        "--api-sock",
        socket.to_str().unwrap(),
    ]);
    // The devices are announced on the guest's command line (the test guest hashes it). Wait
    // for the whole ready line, hash included: the console arrives byte by byte, so a check
    // made as soon as the banner shows can see the line cut short.
    let expected_cmdline = b"x virtio_mmio.device=4K@0xd0000000:5";
    let ready = vmm.wait_for(READY_BANNER, BOOT);
    let end = vmm.wait_for_from(ready, "\n", BOOT);
    let line = vmm.output()[..end]
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains(&lull_vmm::test_guest::expected_ready_line(expected_cmdline)),
        "the ready line names the devices' command line: {line:?}"
    );
    wait_for_socket(&socket, BOOT);
    let before = thread_cpu_ticks(vmm.pid(), "virtio-blk0-io");
    assert_eq!(before.len(), 1, "one I/O thread: {before:?}");
    std::thread::sleep(Duration::from_secs(2));
    let after = thread_cpu_ticks(vmm.pid(), "virtio-blk0-io");
    assert!(
        after[0].1 - before[0].1 <= 1,
        "the idle I/O thread used CPU: {before:?} -> {after:?}"
    );

    // Snapshot with the device attached, then restore it in a new process.
    vmm.send(b"ab");
    vmm.wait_for("ab", BOOT);
    let (ok, _, errors) = client(&[
        "snapshot",
        "--api",
        socket.to_str().unwrap(),
        "--path",
        snapshot.to_str().unwrap(),
        "--leave-paused",
    ]);
    assert!(ok, "{errors}");
    vmm.kill();
    let mut restored = Vmm::spawn(&["restore", "--snapshot", snapshot.to_str().unwrap()]);
    restored.send(b"?");
    restored.wait_for("log=ab", BOOT);
    assert!(
        restored
            .errors()
            .contains("virtio-blk0 at 0xd0000000 irq 5: "),
        "the restored VM has its disk again: {}",
        restored.errors()
    );
    restored.send(b"q");
    assert_eq!(restored.wait_exit(BOOT).code(), Some(0));

    // A snapshot whose disk changed size is refused, naming the disk.
    std::fs::write(&image, [0u8; 512]).unwrap();
    let (ok, _, errors) = client_with_timeout(
        &["restore", "--snapshot", snapshot.to_str().unwrap()],
        CLIENT_TIMEOUT,
    );
    assert!(!ok);
    assert!(
        errors.contains("disk.img") && errors.contains("sectors"),
        "{errors}"
    );
}

#[test]
fn bad_device_options_name_the_option_and_start_nothing() {
    let dir = scratch("virtio-cli");
    let kernel = test_guest(&dir);
    let kernel = kernel.to_str().unwrap();
    let run = |args: &[&str]| {
        let output = Command::new(BINARY).args(args).output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, errors) = run(&["run", "--kernel", kernel, "--disk", "file=x.img"]);
    assert_eq!(code, Some(2));
    assert!(errors.contains("option --disk 'file=x.img'"), "{errors}");
    let (code, errors) = run(&["run", "--kernel", kernel, "--net", "tap=t0,mac=nope"]);
    assert_eq!(code, Some(2));
    assert!(errors.contains("option --net"), "{errors}");
    // A missing file: refused before any VM exists (no KVM needed to see it).
    let (code, errors) = run(&[
        "run",
        "--kernel",
        kernel,
        "--disk",
        "path=/nonexistent/d.img",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        errors.contains("--disk path=/nonexistent/d.img: cannot open"),
        "{errors}"
    );
    assert!(
        !errors.contains("hypercalls"),
        "nothing was started: {errors}"
    );
    // A TAP that cannot be opened ('/' is not allowed in interface names).
    let (code, errors) = run(&["run", "--kernel", kernel, "--net", "tap=bad/name"]);
    assert_eq!(code, Some(1));
    assert!(
        errors.contains("--net tap=bad/name: cannot open the TAP device"),
        "{errors}"
    );
    // --gpio: a malformed value is a usage error; a control path that is not a socket is
    // refused before any VM exists, and left alone.
    let (code, errors) = run(&["run", "--kernel", kernel, "--gpio", "lines=a,b,pin=3"]);
    assert_eq!(code, Some(2));
    assert!(
        errors.contains("option --gpio 'lines=a,b,pin=3'") && errors.contains("'pin='"),
        "{errors}"
    );
    let not_a_socket = dir.join("not-a-socket");
    std::fs::write(&not_a_socket, "keep").unwrap();
    let value = format!("default,control={}", not_a_socket.display());
    let (code, errors) = run(&["run", "--kernel", kernel, "--gpio", &value]);
    assert_eq!(code, Some(1));
    assert!(errors.contains("is not a socket"), "{errors}");
    assert!(
        !errors.contains("hypercalls"),
        "nothing was started: {errors}"
    );
    assert_eq!(std::fs::read_to_string(&not_a_socket).unwrap(), "keep");
    // Nine devices: one too many.
    let image = disk(&dir, 1);
    let argument = format!("path={}", image.display());
    let mut args = vec!["run", "--kernel", kernel];
    for _ in 0..9 {
        args.extend(["--disk", argument.as_str()]);
    }
    let (code, errors) = run(&args);
    assert_eq!(code, Some(1));
    assert!(errors.contains("at most 8 virtio devices"), "{errors}");
}

#[test]
#[ignore = "needs /dev/kvm, and root for a network namespace and a TAP device"]
fn a_tap_in_a_network_namespace_is_opened_and_idles_without_cpu() {
    require_kvm("a_tap_in_a_network_namespace_is_opened_and_idles_without_cpu");
    let name = format!("lullvmm{}", std::process::id());
    if let Err(error) = ip(&["netns", "add", &name]) {
        skip(
            "a_tap_in_a_network_namespace_is_opened_and_idles_without_cpu",
            &format!("cannot create a network namespace: {error}"),
        );
        return;
    }
    let namespace = Namespace(name.clone());
    if let Err(error) = ip(&["-n", &name, "tuntap", "add", "dev", "lt0", "mode", "tap"]) {
        skip(
            "a_tap_in_a_network_namespace_is_opened_and_idles_without_cpu",
            &format!("cannot create a TAP device: {error}"),
        );
        return;
    }
    let dir = scratch("virtio-net");
    let guest = test_guest(&dir);
    let binary_args = [
        "netns",
        "exec",
        &name,
        BINARY,
        "run",
        "--kernel",
        guest.to_str().unwrap(),
        "--cmdline",
        "halt",
        "--net",
        "tap=lt0,mac=02:00:00:00:00:2a",
    ];
    let mut child = Command::new("ip")
        .args(binary_args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // `ip netns exec` execs lull-vmm in place: the child's pid is lull-vmm's.
    let pid = child.id();
    let deadline = std::time::Instant::now() + BOOT;
    let mut ticks = Vec::new();
    while std::time::Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        if std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "lull-vmm")
        {
            ticks = thread_cpu_ticks(pid, "virtio-net0-io");
            if !ticks.is_empty() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ticks.len(), 1, "the net device's I/O thread runs");
    // The TAP is up on the host side and traffic arrives: the guest has no driver, so the
    // frames wait in the TAP; the thread must not spin on them.
    let _ = ip(&["-n", &name, "link", "set", "lt0", "up"]);
    let _ = ip(&["-n", &name, "addr", "add", "10.99.0.1/24", "dev", "lt0"]);
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            &name,
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            "10.99.0.2",
        ])
        .output();
    std::thread::sleep(Duration::from_secs(1));
    let after = thread_cpu_ticks(pid, "virtio-net0-io");
    assert!(after[0].1 - ticks[0].1 <= 1, "{ticks:?} -> {after:?}");
    let link = ip(&["-n", &name, "link", "show", "lt0"]).unwrap();
    assert!(link.contains("lt0"), "{link}");
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(
        errors.contains("virtio-net0 at 0xd0000000 irq 5: tap lt0 mac 02:00:00:00:00:2a"),
        "{errors}"
    );
    drop(namespace);
}

#[test]
#[ignore = "needs /dev/kvm and LULL_KERNEL"]
fn lull_boots_with_disks_attached_stays_idle_and_restores_with_them() {
    let kernel = lull_kernel("lull_boots_with_disks_attached_stays_idle_and_restores_with_them");
    let dir = scratch("virtio-lull");
    let image = disk(&dir, 2048);
    let readonly = dir.join("ro.img");
    std::fs::write(&readonly, vec![7u8; 4096]).unwrap();
    let socket = dir.join("api.sock");
    let snapshot = dir.join("snap");
    let (disk_argument, ro_argument) = (
        format!("path={}", image.display()),
        format!("path={},readonly", readonly.display()),
    );
    let mut vmm = Vmm::spawn(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        "128",
        "--disk",
        &disk_argument,
        "--disk",
        &ro_argument,
        "--api-sock",
        socket.to_str().unwrap(),
    ]);
    let prompt = vmm.wait_for("lull> ", BOOT);
    wait_for_socket(&socket, BOOT);
    let errors = vmm.errors();
    assert!(
        errors.contains("virtio-blk0 at 0xd0000000 irq 5: "),
        "{errors}"
    );
    assert!(
        errors.contains("virtio-blk1 at 0xd0001000 irq 6: ") && errors.contains("read-only"),
        "{errors}"
    );
    // The kernel's virtio-blk driver finds both disks from the command line: the guest hashes
    // what the host wrote, writes a pattern and flushes it, and the read-only disk refuses.
    let list = shell(&mut vmm, "blk list", BOOT);
    assert!(
        list.contains("vda") && list.contains("vdb") && list.contains(" ro "),
        "{list}"
    );
    let host_data = std::fs::read(&image).unwrap();
    let expected = sha256_hex(&host_data[..64 << 10]);
    let sum = shell(&mut vmm, "blk sum vda 0 64K", BOOT);
    assert!(
        sum.contains(&format!("sha256 {expected}")),
        "{sum} (host {expected})"
    );
    let wrote = shell(&mut vmm, "blk write vda 128K 8K", BOOT);
    assert!(wrote.contains("blk: wrote 8192 bytes"), "{wrote}");
    let refused = shell(&mut vmm, "blk write vdb 0 512", BOOT);
    assert!(refused.contains("read-only"), "{refused}");
    let flushed = shell(&mut vmm, "blk flush vda", BOOT);
    assert!(flushed.contains("blk: flushed vda"), "{flushed}");
    let on_disk = std::fs::read(&image).unwrap();
    for (at, byte) in on_disk.iter().enumerate().take(136 << 10).skip(128 << 10) {
        assert_eq!(
            *byte,
            ((at / 512 * 7 + at % 512) % 251) as u8,
            "byte {at} of the image after the guest's flush"
        );
    }
    assert_eq!(on_disk[..128 << 10], host_data[..128 << 10]);
    assert_eq!(on_disk[136 << 10..], host_data[136 << 10..]);
    assert_eq!(std::fs::read(&readonly).unwrap(), vec![7u8; 4096]);
    // Idle again: the devices' threads take no CPU.
    let before = thread_cpu_ticks(vmm.pid(), "virtio-blk");
    assert_eq!(before.len(), 2, "{before:?}");
    std::thread::sleep(Duration::from_secs(2));
    let after = thread_cpu_ticks(vmm.pid(), "virtio-blk");
    for (b, a) in before.iter().zip(&after) {
        assert!(a.1 - b.1 <= 1, "{before:?} -> {after:?}");
    }
    let (ok, _, errors) = client(&[
        "snapshot",
        "--api",
        socket.to_str().unwrap(),
        "--path",
        snapshot.to_str().unwrap(),
        "--leave-paused",
    ]);
    assert!(ok, "{errors}");
    vmm.kill();
    let _ = prompt;
    let mut restored = Vmm::spawn(&["restore", "--snapshot", snapshot.to_str().unwrap()]);
    restored.send(b"\r");
    restored.wait_for("lull> ", BOOT);
    let uptime = shell(&mut restored, "uptime", BOOT);
    assert!(uptime.contains("up "), "{uptime}");
    // The restored guest's driver goes on with the reopened file.
    let again = shell(&mut restored, "blk sum vda 0 64K", BOOT);
    assert!(again.contains(&format!("sha256 {expected}")), "{again}");
    let errors = restored.errors();
    assert!(
        errors.contains("virtio-blk0 at 0xd0000000 irq 5: "),
        "{errors}"
    );
    assert!(
        errors.contains("virtio-blk1 at 0xd0001000 irq 6: "),
        "{errors}"
    );
    restored.send(b"poweroff\r");
    assert_eq!(restored.wait_exit(BOOT).code(), Some(0));
}

/// The Lull guest on lull-vmm with `--net tap=…` in a test-made network namespace: its
/// virtio-net driver and TCP/IP stack answer the host's ping, send 128 KiB to a host process
/// and receive 128 KiB from it, SHA-256 equal on both ends.
#[test]
#[ignore = "needs /dev/kvm, LULL_KERNEL, and root for a network namespace and a TAP device"]
fn lull_exchanges_tcp_with_a_host_process_over_a_tap() {
    use std::io::{Read, Write};
    const TEST: &str = "lull_exchanges_tcp_with_a_host_process_over_a_tap";
    const BYTES: usize = 128 << 10;
    let kernel = lull_kernel(TEST);
    let name = format!("lulltcp{}", std::process::id());
    if let Err(error) = ip(&["netns", "add", &name]) {
        return skip(TEST, &format!("cannot create a network namespace: {error}"));
    }
    let namespace = Namespace(name.clone());
    if let Err(error) = ip(&["-n", &name, "tuntap", "add", "dev", "lt0", "mode", "tap"]) {
        return skip(TEST, &format!("cannot create a TAP device: {error}"));
    }
    ip(&["-n", &name, "addr", "add", "10.99.1.1/24", "dev", "lt0"]).unwrap();
    ip(&["-n", &name, "link", "set", "lt0", "up"]).unwrap();
    ip(&["-n", &name, "link", "set", "lo", "up"]).unwrap();
    // This thread, the VMM it starts and the host's sockets live in the namespace.
    enter_namespace(&name).unwrap();
    let mut vmm = Vmm::spawn(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        "128",
        "--cmdline",
        "ip=10.99.1.2::10.99.1.1:255.255.255.0",
        "--net",
        "tap=lt0,mac=02:00:00:00:00:2b",
    ]);
    vmm.wait_for("lull> ", BOOT);
    let ping = shell(&mut vmm, "ping 10.99.1.1 -c 2", BOOT);
    assert!(ping.contains("2 received"), "{ping}");
    // Guest to host.
    let listener = std::net::TcpListener::bind("10.99.1.1:5001").unwrap();
    let receiver = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let mut data = Vec::new();
        stream.read_to_end(&mut data).unwrap();
        data
    });
    let sent = shell(&mut vmm, &format!("nc -s {BYTES} 10.99.1.1 5001"), BOOT);
    let received = receiver.join().unwrap();
    assert_eq!(received.len(), BYTES, "{sent}");
    let digest = sha256_hex(&received);
    assert_eq!(digest, sha256_hex(&nc_pattern(BYTES)));
    assert!(
        sent.contains(&format!("sha256 {digest}")),
        "{sent} (host {digest})"
    );
    // Host to guest.
    let from = vmm.output().len();
    vmm.send(b"nc -l 5002\r");
    vmm.wait_for_from(from, "listening on port 5002", BOOT);
    let mut stream = std::net::TcpStream::connect("10.99.1.2:5002").unwrap();
    stream.write_all(&nc_pattern(BYTES)).unwrap();
    drop(stream);
    let end = vmm.wait_for_from(from, "lull> ", BOOT);
    let answer = vmm.output()[from..end].to_string();
    assert!(
        answer.contains(&format!("received {BYTES} bytes"))
            && answer.contains(&format!("sha256 {digest}")),
        "{answer} (host sent {digest})"
    );
    vmm.send(b"poweroff\r");
    assert_eq!(vmm.wait_exit(BOOT).code(), Some(0));
    drop(namespace);
}

/// Waits until the file at `path` contains `needle`; returns its text.
fn wait_for_file(path: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} has no {needle:?} after {timeout:?}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Offset of `needle` in `text` at or after `from`, panicking with the text without one.
fn find_after(text: &str, from: usize, needle: &str) -> usize {
    text[from..]
        .find(needle)
        .map(|at| from + at)
        .unwrap_or_else(|| panic!("no {needle:?} after offset {from} in:\n{text}"))
}

#[test]
#[ignore = "needs /dev/kvm and LULL_KERNEL"]
fn lull_drives_virtio_gpio_lines_and_gets_a_line_interrupt_from_the_host() {
    const TEST: &str = "lull_drives_virtio_gpio_lines_and_gets_a_line_interrupt_from_the_host";
    let kernel = lull_kernel(TEST);
    let dir = scratch("virtio-gpio");
    let (control, log, api) = (
        dir.join("gpio.sock"),
        dir.join("gpio.log"),
        dir.join("api.sock"),
    );
    let gpio = format!(
        "lines=amp-enable,button,led0,led1,headphone-detect,mute,reset,irq,control={},log={}",
        control.display(),
        log.display()
    );
    let mut vmm = Vmm::spawn(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        "128",
        "--gpio",
        &gpio,
        "--api-sock",
        api.to_str().unwrap(),
    ]);
    vmm.wait_for("lull> ", BOOT);
    wait_for_socket(&api, BOOT);
    let errors = vmm.errors();
    assert!(
        errors.contains("virtio-gpio0 at 0xd0000000 irq 5: 8 line(s)"),
        "{errors}"
    );

    // Idle with the device bound (after the boot's tail settles): the vCPU is not woken at all
    // and does not exit, and the device's thread takes no CPU.
    std::thread::sleep(Duration::from_secs(2));
    let before = thread_cpu_ticks(vmm.pid(), "virtio-gpio0-io");
    assert_eq!(before.len(), 1, "{before:?}");
    let (ok, json, errors) = client(&[
        "metrics",
        "--api",
        api.to_str().unwrap(),
        "--interval-ms",
        "3000",
        "--json",
    ]);
    assert!(ok, "{errors}");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rates = &report["rates"][0]["kvm_per_second"];
    eprintln!(
        "idle guest with virtio-gpio over 3 s: halt_wakeup/s {} exits/s {}",
        rates["halt_wakeup"], rates["exits"]
    );
    assert_eq!(rates["halt_wakeup"].as_f64(), Some(0.0), "{report}");
    assert!(rates["exits"].as_f64().unwrap() < 5.0, "{report}");
    let after = thread_cpu_ticks(vmm.pid(), "virtio-gpio0-io");
    assert!(after[0].1 - before[0].1 <= 1, "{before:?} -> {after:?}");

    // The guest's driver found the chip with the names the VMM gave it.
    let chips = shell(&mut vmm, "gpiodetect", BOOT);
    let chip = chips
        .lines()
        .find(|l| l.contains("[virtio-gpio] (8 lines)"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("gpiodetect shows no virtio-gpio chip: {chips:?}"))
        .to_string();
    let info = shell(&mut vmm, &format!("gpioinfo {chip}"), BOOT);
    for name in ["amp-enable", "button", "headphone-detect", "irq"] {
        assert!(info.contains(&format!("\"{name}\"")), "{info}");
    }

    // gpioset: value first, then direction, then the level seen on the host.
    let set = shell(&mut vmm, &format!("gpioset {chip} 0=1"), BOOT);
    assert!(!set.contains("error"), "{set}");
    let text = wait_for_file(&log, "line 0 (amp-enable) -> 1", BOOT);
    let value = find_after(&text, 0, "SET_VALUE gpio 0 value 1: ok");
    let direction = find_after(&text, value, "SET_DIRECTION gpio 0 value 1: ok");
    find_after(&text, direction, "line 0 (amp-enable) -> 1");
    assert_eq!(gpio_control(&control, "get amp-enable"), "ok 1");

    // The host drives the button; the guest reads it.
    for level in [1, 0] {
        assert_eq!(gpio_control(&control, &format!("set button {level}")), "ok");
        let got = shell(&mut vmm, &format!("gpioget {chip} 1"), BOOT);
        assert!(
            got.lines().skip(1).any(|l| l.trim() == level.to_string()),
            "gpioget of the button the host set to {level}: {got:?}"
        );
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("control (socket): set button 1 -> ok"),
        "control commands are logged: {text}"
    );

    // A line interrupt end to end: gpiomon unmasks the button (an event buffer on the event
    // queue), the host pulses it, the buffer comes back VALID and gpiomon prints the edge.
    let from = vmm.output().len();
    let logged = std::fs::read_to_string(&log).unwrap().len();
    vmm.send(format!("gpiomon -n 1 -r {chip} 1\r").as_bytes());
    let text = wait_for_file(&log, "line 1 (button) unmasked", BOOT);
    assert!(
        text[logged..].contains("IRQ_TYPE gpio 1 value 1: ok"),
        "gpiomon asked for rising edges: {}",
        &text[logged..]
    );
    assert_eq!(gpio_control(&control, "pulse button"), "ok");
    let end = vmm.wait_for_from(from, "lull> ", BOOT);
    let monitored = vmm.output()[from..end].to_string();
    assert!(
        monitored.contains("RISING EDGE") && monitored.contains("offset: 1"),
        "gpiomon: {monitored:?}"
    );
    assert_eq!(
        monitored.matches("EDGE").count(),
        1,
        "one event (-n 1), rising only: {monitored:?}"
    );
    wait_for_file(&log, "event line 1 (button): VALID", BOOT);

    // Edges with no pause between them: the host pulses the button every 10 ms while gpiomon
    // waits for 10 rising edges. The guest re-queues the line's event buffer from its
    // interrupt thread, so edges arrive while that thread still runs; an interrupt raised then
    // must not be lost (a kernel that masked the irqfd's edge-triggered line until the thread
    // finished lost it here and gpiomon waited forever).
    let from = vmm.output().len();
    vmm.send(format!("gpiomon -n 10 -r {chip} 1\r").as_bytes());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pulser = {
        let (stop, control) = (std::sync::Arc::clone(&stop), control.clone());
        std::thread::spawn(move || {
            let mut pulses = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert_eq!(gpio_control(&control, "pulse button"), "ok");
                pulses += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            pulses
        })
    };
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        vmm.wait_for_from(from, "lull> ", BOOT)
    }));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let pulses = pulser.join().unwrap();
    let end = waited.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let storm = vmm.output()[from..end].to_string();
    eprintln!("pulse storm: {pulses} pulses while gpiomon took 10 edges");
    assert_eq!(storm.matches("RISING EDGE").count(), 10, "{storm:?}");

    // Snapshot while gpiomon waits (its event buffer held by the device), restore in a new
    // process (which binds the control socket again): the edge the host makes then reaches it.
    let logged = std::fs::read_to_string(&log).unwrap().len();
    let from = vmm.output().len();
    vmm.send(format!("gpiomon -n 1 -r {chip} 1\r").as_bytes());
    let deadline = std::time::Instant::now() + BOOT;
    while !std::fs::read_to_string(&log).unwrap()[logged..].contains("line 1 (button) unmasked") {
        assert!(
            std::time::Instant::now() < deadline,
            "gpiomon never unmasked the line"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let snapshot = dir.join("snap");
    snapshot_paused(&api, &snapshot);
    let waiting = vmm.output()[from..].to_string();
    vmm.kill();
    assert!(!waiting.contains("EDGE"), "{waiting:?}");
    let mut restored = Vmm::spawn(&["restore", "--snapshot", snapshot.to_str().unwrap()]);
    let deadline = std::time::Instant::now() + BOOT;
    while std::os::unix::net::UnixStream::connect(&control).is_err()
        || !restored
            .errors()
            .contains("virtio-gpio0 at 0xd0000000 irq 5: ")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the restored VMM has no control socket: {}",
            restored.errors()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(gpio_control(&control, "pulse button"), "ok");
    restored.wait_for("RISING EDGE offset: 1", BOOT);
    restored.wait_for("lull> ", BOOT);
    let text = std::fs::read_to_string(&log).unwrap();
    eprintln!(
        "--- guest ---\n{chips}{monitored}\n--- restored guest ---\n{}\n--- gpio log ---\n{text}",
        restored.output()
    );
    restored.send(b"poweroff\r");
    assert_eq!(restored.wait_exit(BOOT).code(), Some(0));
    assert!(!control.exists(), "the control socket is removed at exit");
    assert!(!control.exists(), "the control socket is removed at exit");
}

/// A snapshot taken with block requests in flight: the guest writes 256 KiB (4 requests of
/// 64 KiB, up to 32 in flight) to a disk made slow by the test hook `LULL_VMM_BLK_DELAY_MS`
/// (10 s a request, while the emulated guest fills and queues one every second or so, several when the host is busy), and the snapshot is taken once the first request is on disk. The pause
/// stops the device after the request in progress, so the snapshot holds requests the guest
/// queued and the device had not taken (lull-vmm says how many; at least one). The restored
/// guest finishes the same command: the requests served before the snapshot are not served
/// again, the queued ones are served once, and a completion the guest had not reaped yet
/// reaches it. Then it flushes; the image holds exactly the written range and nothing else
/// changed, and the guest's SHA-256 of the range equals the host's.
#[test]
#[ignore = "needs /dev/kvm and LULL_KERNEL"]
fn a_snapshot_in_the_middle_of_block_writes_restores_with_none_lost_or_doubled() {
    let kernel =
        lull_kernel("a_snapshot_in_the_middle_of_block_writes_restores_with_none_lost_or_doubled");
    let dir = scratch("virtio-inflight");
    let image = dir.join("zero.img");
    std::fs::write(&image, vec![0u8; 4 << 20]).unwrap();
    let socket = dir.join("api.sock");
    let disk_argument = format!("path={}", image.display());
    let mut vmm = Vmm::spawn_with(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "128",
            "--disk",
            &disk_argument,
            "--api-sock",
            socket.to_str().unwrap(),
        ],
        &[("LULL_VMM_BLK_DELAY_MS", Path::new("10000"))],
        BOOT * 3,
    );
    vmm.wait_for("lull> ", BOOT);
    wait_for_socket(&socket, BOOT);
    let list = shell(&mut vmm, "blk list", BOOT);
    assert!(list.contains("vda"), "{list}");
    const LEN: usize = 256 << 10;
    let from = vmm.output().len();
    vmm.send(b"blk write vda 0 256K 0x5a\r");
    // Wait until the first requests reached the file, then snapshot (the VM pauses).
    let written = |path: &Path| {
        std::fs::read(path)
            .unwrap()
            .iter()
            .take(LEN)
            .filter(|&&b| b == 0x5a)
            .count()
    };
    let deadline = std::time::Instant::now() + BOOT;
    while written(&image) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest's write never reached the image"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // Snapshot (the VM pauses; the device stops after the request in progress). How fast the
    // emulated guest queues requests varies, so until a snapshot holds a queued request (lull-vmm
    // says how many), resume and take another a moment later.
    let queued_in = |errors: &str| -> Option<u32> {
        errors.lines().find_map(|l| {
            let (_, rest) = l.split_once("virtio-blk0 at 0xd0000000 irq 5: ")?;
            let (count, _) = rest.split_once(" requests queued")?;
            count.parse().ok()
        })
    };
    let mut taken = None;
    for attempt in 0..12 {
        let path = dir.join(format!("snap{attempt}"));
        let seen = vmm.errors().len();
        let (ok, _, errors) = client(&[
            "snapshot",
            "--api",
            socket.to_str().unwrap(),
            "--path",
            path.to_str().unwrap(),
            "--leave-paused",
        ]);
        assert!(ok, "{errors}");
        let at_snapshot = written(&image);
        // lull-vmm's stderr arrives through a pipe: give its line a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        let mut queued = None;
        while queued.is_none() && std::time::Instant::now() < deadline {
            queued = queued_in(&vmm.errors()[seen..]);
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(queued) = queued {
            taken = Some((path, at_snapshot, queued));
            break;
        }
        if vmm.output()[from..].contains("blk: wrote") {
            break;
        }
        let (ok, _, errors) = client(&["resume", "--api", socket.to_str().unwrap()]);
        assert!(ok, "{errors}");
        std::thread::sleep(Duration::from_millis(1500));
    }
    let Some((snapshot, at_snapshot, queued)) = taken else {
        panic!(
            "no snapshot held a queued request (lull-vmm's stderr):\n{}",
            vmm.errors()
        );
    };
    assert!(
        at_snapshot > 0 && at_snapshot < LEN,
        "the snapshot was to be taken in the middle of the write: {at_snapshot} of {LEN} bytes \
         written"
    );
    assert!(
        !vmm.output()[from..].contains("blk: wrote"),
        "the write finished before the snapshot"
    );
    vmm.kill();
    let mut restored = Vmm::spawn(&["restore", "--snapshot", snapshot.to_str().unwrap()]);
    // (`wait_for` returns where the text after the needle starts.)
    let done = restored.wait_for("blk: wrote ", BOOT * 2);
    let line_end = restored.wait_for_from(done, "lull> ", BOOT);
    let line = restored.output()[done..line_end].to_string();
    assert!(line.starts_with("262144 bytes at 0 to vda"), "{line}");
    let flushed = shell(&mut restored, "blk flush vda", BOOT);
    assert!(flushed.contains("blk: flushed vda"), "{flushed}");
    let expected = sha256_hex(&vec![0x5au8; LEN]);
    // SHA-256 in KVM's instruction emulator takes ~35 s for 256 KiB alone; allow for a busy host.
    let sum = shell(&mut restored, "blk sum vda 0 256K", BOOT * 3);
    assert!(
        sum.contains(&format!("sha256 {expected}")),
        "{sum} (host {expected})"
    );
    let on_disk = std::fs::read(&image).unwrap();
    assert!(
        on_disk[..LEN].iter().all(|&b| b == 0x5a),
        "the written range"
    );
    assert!(on_disk[LEN..].iter().all(|&b| b == 0), "beyond the range");
    let console = restored.output();
    assert!(
        !console.contains("error") && !console.contains("FAILED"),
        "the driver complained after the restore:\n{console}"
    );
    restored.send(b"poweroff\r");
    assert_eq!(restored.wait_exit(BOOT).code(), Some(0));
    eprintln!(
        "in-flight snapshot: {at_snapshot} of {LEN} bytes on disk and {queued} requests queued \
         when it was taken"
    );
}

//! Network commands: `ip addr|route`, `ping`, `nc`.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use sha2::{Digest, Sha256};

use crate::kernel::time::uptime_ns;
use crate::net::socket::{ping_once, TcpSocket, UdpSocket};
use crate::net::{self, parse_address};
use crate::{kprint, kprintln};

/// `ip addr` / `ip route` (iproute2's shape; `ip a`, `ip r` too).
pub fn cmd_ip(args: &[&str], _: &str) {
    match args {
        ["addr" | "a" | "address", ..] | [] => kprint!("{}", net::ip_addr()),
        ["route" | "r", ..] => kprint!("{}", net::ip_route()),
        [other, ..] => kprintln!("Object \"{other}\" is unknown, try \"ip help\"."),
    }
}

/// `ping HOST [-c N]`: ICMP echo, one a second, as iputils' ping prints.
pub fn cmd_ping(args: &[&str], _: &str) {
    let mut count = 4u32;
    let mut host = None;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        match *word {
            "-c" => match words.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => count = n,
                _ => return kprintln!("ping: invalid count of packets to transmit"),
            },
            other if host.is_none() => host = Some(other),
            other => return kprintln!("ping: unexpected argument {other:?}"),
        }
    }
    let Some(host) = host else {
        return kprintln!("usage: ping HOST [-c COUNT]");
    };
    let Some(address) = parse_address(host) else {
        return kprintln!("ping: {host}: Name or service not known");
    };
    kprintln!("PING {address} ({address}) 56(84) bytes of data.");
    let ident = (uptime_ns() as u16) | 1;
    let (mut received, mut total_us, mut min, mut max) = (0u32, 0u64, u64::MAX, 0u64);
    for seq in 1..=count {
        let started = uptime_ns();
        match ping_once(address, ident, seq as u16, 1000) {
            Ok(us) => {
                received += 1;
                total_us += us;
                min = min.min(us);
                max = max.max(us);
                kprintln!(
                    "64 bytes from {address}: icmp_seq={seq} time={}.{:03} ms",
                    us / 1000,
                    us % 1000
                );
            }
            Err(error) => kprintln!("From {address} icmp_seq={seq} {error}"),
        }
        if seq < count {
            let spent = uptime_ns() - started;
            crate::kernel::time::sleep_ns(1_000_000_000u64.saturating_sub(spent));
        }
    }
    let loss = (count - received) * 100 / count;
    kprintln!("\n--- {address} ping statistics ---");
    kprintln!("{count} packets transmitted, {received} received, {loss}% packet loss");
    if received > 0 {
        let avg = total_us / u64::from(received);
        kprintln!(
            "rtt min/avg/max = {}.{:03}/{}.{:03}/{}.{:03} ms",
            min / 1000,
            min % 1000,
            avg / 1000,
            avg % 1000,
            max / 1000,
            max % 1000
        );
    }
}

/// Byte `i` of the stream `nc -s` sends (hosts regenerate it to check integrity).
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| alloc::format!("{b:02x}")).collect()
}

fn rate(bytes: u64, ns: u64) -> String {
    let ms = ns / 1_000_000;
    let kib_s = (bytes * 1_000_000_000).checked_div(ns).unwrap_or(0) / 1024;
    if kib_s < 1024 {
        // Slow links (an emulated CPU) read better in KiB/s than as 0.00 MiB/s.
        return alloc::format!("{bytes} bytes in {ms} ms ({kib_s} KiB/s)");
    }
    alloc::format!(
        "{bytes} bytes in {ms} ms ({}.{:02} MiB/s)",
        kib_s / 1024,
        (kib_s % 1024) * 100 / 1024
    )
}

/// Bytes `nc` hands the socket at a time.
const NC_CHUNK: usize = 16 * 1024;

/// Sends `total` bytes of the pattern and returns their SHA-256 (`None` with `hash` off). The
/// pattern repeats every 251 bytes, so it is written once and each chunk is a window into it.
fn send_pattern(
    socket: &TcpSocket,
    total: u64,
    hash: bool,
) -> Result<Option<String>, net::socket::NetError> {
    let mut hasher = hash.then(Sha256::new);
    let pattern: Vec<u8> = (0..(NC_CHUNK + 251) as u64).map(pattern_byte).collect();
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(NC_CHUNK as u64) as usize;
        let start = (sent % 251) as usize;
        let chunk = &pattern[start..start + n];
        socket.send_all(chunk, 10_000)?;
        if let Some(hasher) = &mut hasher {
            hasher.update(chunk);
        }
        sent += n as u64;
    }
    Ok(hasher.map(|h| hex(&h.finalize())))
}

/// Receives until the peer closes; returns the byte count and the SHA-256 (`None` with `hash`
/// off: the bytes are only counted).
fn sink(socket: &TcpSocket, hash: bool) -> Result<(u64, Option<String>), net::socket::NetError> {
    let mut hasher = hash.then(Sha256::new);
    let mut chunk = vec![0u8; NC_CHUNK];
    let mut total = 0u64;
    loop {
        let n = socket.recv(&mut chunk, 30_000)?;
        if n == 0 {
            break;
        }
        if let Some(hasher) = &mut hasher {
            hasher.update(&chunk[..n]);
        }
        total += n as u64;
    }
    Ok((total, hasher.map(|h| hex(&h.finalize()))))
}

/// " sha256 HEX", or " (not hashed)".
fn digest_note(digest: Option<String>) -> String {
    digest.map_or_else(
        || String::from(" (not hashed)"),
        |d| alloc::format!(" sha256 {d}"),
    )
}

const NC_USAGE: &str = "nc [--no-hash] [-s BYTES] HOST PORT | nc [--no-hash] -l PORT [-s BYTES] | \
                        nc -u -s BYTES HOST PORT | nc -u -l PORT";
/// Payload bytes per datagram `nc -u` sends.
const UDP_CHUNK: usize = 1024;
/// How long `nc -u -l` waits for the next datagram once one arrived.
const UDP_IDLE_MS: u64 = 5_000;

/// `nc -u -s BYTES HOST PORT`: sends BYTES of the pattern in 1024-byte datagrams, then an
/// empty one (the end marker `nc -u -l` stops at). `nc -u -l PORT`: receives datagrams until
/// an empty one or 5 s of silence and prints the bytes, datagrams and their SHA-256 in
/// arrival order (UDP may lose or reorder; the counts show it).
fn nc_udp(listen: bool, send: Option<u64>, positional: &[&str]) {
    match (listen, send, positional) {
        (true, None, [port]) => {
            let Ok(port) = port.parse::<u16>() else {
                return kprintln!("nc: invalid port {port:?}");
            };
            let socket = match UdpSocket::bind(port) {
                Ok(s) => s,
                Err(e) => return kprintln!("nc: bind udp port {port}: {e}"),
            };
            kprintln!("nc: listening on udp port {port}");
            let mut hasher = Sha256::new();
            let mut buffer = vec![0u8; net::socket::UDP_MAX_PAYLOAD];
            let (mut total, mut datagrams, mut peer, mut started) = (0u64, 0u64, None, 0u64);
            loop {
                let timeout = if datagrams == 0 {
                    u64::MAX
                } else {
                    UDP_IDLE_MS
                };
                match socket.recv_from(&mut buffer, timeout) {
                    Ok((0, _)) => break,
                    Ok((n, from)) => {
                        if datagrams == 0 {
                            started = uptime_ns();
                            peer = Some(from);
                        }
                        hasher.update(&buffer[..n]);
                        total += n as u64;
                        datagrams += 1;
                    }
                    Err(net::socket::NetError::TimedOut) => break,
                    Err(e) => return kprintln!("nc: receive: {e}"),
                }
            }
            let from = peer
                .map(|p| alloc::format!(" from {p}"))
                .unwrap_or_default();
            kprintln!(
                "nc: received {} in {datagrams} datagrams{from} sha256 {}",
                rate(total, uptime_ns().saturating_sub(started)),
                hex(&hasher.finalize())
            );
        }
        (false, Some(total), [host, port]) => {
            let (Some(address), Ok(port)) = (parse_address(host), port.parse::<u16>()) else {
                return kprintln!("nc: bad address {host} {port}");
            };
            let socket = match UdpSocket::bind(0) {
                Ok(s) => s,
                Err(e) => return kprintln!("nc: udp socket: {e}"),
            };
            let started = uptime_ns();
            let mut hasher = Sha256::new();
            let mut chunk = vec![0u8; UDP_CHUNK];
            let (mut sent, mut datagrams) = (0u64, 0u64);
            while sent < total {
                let n = (total - sent).min(UDP_CHUNK as u64) as usize;
                for (k, byte) in chunk[..n].iter_mut().enumerate() {
                    *byte = pattern_byte(sent + k as u64);
                }
                if let Err(e) = socket.send_to(address, port, &chunk[..n], 10_000) {
                    return kprintln!("nc: send to {host} port {port} (udp): {e}");
                }
                hasher.update(&chunk[..n]);
                sent += n as u64;
                datagrams += 1;
            }
            if let Err(e) = socket
                .send_to(address, port, &[], 10_000)
                .and_then(|()| socket.flush(10_000))
            {
                return kprintln!("nc: send the end marker: {e}");
            }
            kprintln!(
                "nc: sent {} in {datagrams} datagrams sha256 {}",
                rate(total, uptime_ns() - started),
                hex(&hasher.finalize())
            );
        }
        (false, None, [_, _]) => kprintln!("nc: -u needs -s BYTES to send (there is no stdin)"),
        _ => kprintln!("usage: {NC_USAGE}"),
    }
}

/// `nc -l PORT [-s BYTES]` / `nc HOST PORT [-s BYTES]`: TCP. Without `-s` it receives until
/// the peer closes and prints the byte count and SHA-256 (sink-and-hash); with `-s N` it sends
/// N bytes of the pattern `byte i = i mod 251` and prints their SHA-256. `--no-hash` skips the
/// SHA-256 (throughput only: the bytes are counted, not checked).
pub fn cmd_nc(args: &[&str], _: &str) {
    let mut listen = false;
    let mut udp = false;
    let mut send = None;
    let mut hash = true;
    let mut positional = alloc::vec::Vec::new();
    let mut words = args.iter();
    while let Some(word) = words.next() {
        match *word {
            "-l" => listen = true,
            "-u" => udp = true,
            "--no-hash" => hash = false,
            "-s" => match words.next().and_then(|n| crate::shell::parse_size(n)) {
                Some(n) => send = Some(n),
                None => return kprintln!("nc: -s needs a byte count (e.g. 64M)"),
            },
            other => positional.push(other),
        }
    }
    if udp {
        if !hash {
            return kprintln!("nc: --no-hash is for TCP (UDP counts and hashes its datagrams)");
        }
        return nc_udp(listen, send, &positional);
    }
    let started;
    let socket = match (listen, positional.as_slice()) {
        (true, [port]) => {
            let Ok(port) = port.parse::<u16>() else {
                return kprintln!("nc: invalid port {port:?}");
            };
            let mut socket = match TcpSocket::listen(port) {
                Ok(s) => s,
                Err(e) => return kprintln!("nc: listen on {port}: {e}"),
            };
            kprintln!("nc: listening on port {port}");
            match socket.accept(u64::MAX) {
                Ok(peer) => kprintln!("nc: connection from {peer}"),
                Err(e) => return kprintln!("nc: accept: {e}"),
            }
            started = uptime_ns();
            socket
        }
        (false, [host, port]) => {
            let (Some(address), Ok(port)) = (parse_address(host), port.parse::<u16>()) else {
                return kprintln!("nc: bad address {host} {port}");
            };
            match TcpSocket::connect(address, port, 10_000) {
                Ok(s) => {
                    started = uptime_ns();
                    s
                }
                Err(e) => return kprintln!("nc: connect to {host} port {port} (tcp) failed: {e}"),
            }
        }
        _ => return kprintln!("usage: {NC_USAGE}"),
    };
    match send {
        Some(total) => match send_pattern(&socket, total, hash) {
            Ok(digest) => {
                let result = socket.close(30_000);
                kprintln!(
                    "nc: sent {}{}",
                    rate(total, uptime_ns() - started),
                    digest_note(digest)
                );
                if let Err(e) = result {
                    kprintln!("nc: close: {e}");
                }
            }
            Err(e) => kprintln!("nc: send: {e}"),
        },
        None => match sink(&socket, hash) {
            Ok((total, digest)) => {
                kprintln!(
                    "nc: received {}{}",
                    rate(total, uptime_ns() - started),
                    digest_note(digest)
                );
                let _ = socket.close(1000);
            }
            Err(e) => kprintln!("nc: receive: {e}"),
        },
    }
}

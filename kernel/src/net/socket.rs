//! Blocking sockets for the rest of the kernel (TCP, UDP, ICMP echo) on the stack `knetd` drives,
//! and the built-in HTTP server (`httpd=PORT`).
//!
//! A call works on the socket under the stack's lock, kicks `knetd` when it queued something,
//! and otherwise sleeps until `knetd`'s next poll (or its timeout, an hrtimer). Timeouts are
//! explicit in every call that waits.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU16, Ordering};

use smoltcp::iface::SocketHandle;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::{icmp, tcp, udp, Socket};
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress, IpEndpoint, Ipv4Address};

use super::{kick, with_stack, Stack, POLLS, SOCKET_WAKE};
use crate::kernel::time::uptime_ns;

/// Why a socket call failed, worded as the errno a Linux tool would print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetError {
    /// No stack (networking off).
    Down,
    /// `ETIMEDOUT`.
    TimedOut,
    /// `ECONNREFUSED` / `ECONNRESET`: the peer reset or refused.
    Refused,
    /// `EADDRINUSE` or an invalid address or port.
    Invalid,
    /// `ENETUNREACH`: no interface or route reaches the address.
    Unreachable,
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetError::Down => "Network is down",
            NetError::TimedOut => "Connection timed out",
            NetError::Refused => "Connection refused",
            NetError::Invalid => "Invalid argument",
            NetError::Unreachable => "Network is unreachable",
        })
    }
}

/// Each TCP socket's receive and send buffer. Above 64 KiB smoltcp scales the window: with
/// 64 KiB, host → guest over QEMU's user network was window-bound (8 MiB/s against 15 with
/// 256 KiB; 1 MiB gained nothing more and a listener holds one per interface).
const TCP_BUFFER: usize = 256 * 1024;
static NEXT_PORT: AtomicU16 = AtomicU16::new(49152);

fn ephemeral_port() -> u16 {
    let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
    if port == u16::MAX {
        NEXT_PORT.store(49152, Ordering::Relaxed);
    }
    port.max(49152)
}

/// Runs `check` under the stack's lock after every poll of `knetd` until it answers, or until
/// `timeout_ms` passed.
fn wait_for<T>(
    timeout_ms: u64,
    mut check: impl FnMut(&mut Stack) -> Option<Result<T, NetError>>,
) -> Result<T, NetError> {
    let deadline = uptime_ns().saturating_add(timeout_ms.saturating_mul(1_000_000));
    loop {
        let polls = POLLS.load(Ordering::Acquire);
        if let Some(answer) = with_stack(&mut check).ok_or(NetError::Down)? {
            return answer;
        }
        let now = uptime_ns();
        if now >= deadline {
            return Err(NetError::TimedOut);
        }
        SOCKET_WAKE.wait_until_timeout(deadline - now, || POLLS.load(Ordering::Acquire) != polls);
    }
}

fn new_tcp() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
    )
}

/// A TCP connection (or a listening socket until [`TcpSocket::accept`]). Dropping it aborts
/// the connection (RST) and frees the socket; [`TcpSocket::close`] ends it gracefully.
pub struct TcpSocket {
    /// The interface whose socket set holds it, and its handle there.
    netif: usize,
    handle: SocketHandle,
    /// A listener's sockets on the other interfaces (freed at accept).
    others: Vec<(usize, SocketHandle)>,
}

/// Runs `f` on socket `handle` of interface `netif` (`None` when it is gone).
fn tcp_of(
    stack: &mut Stack,
    netif: usize,
    handle: SocketHandle,
) -> Option<&mut tcp::Socket<'static>> {
    let sockets = stack.sockets(netif)?;
    if !sockets.iter().any(|(h, _)| h == handle) {
        return None;
    }
    Some(sockets.get_mut::<tcp::Socket>(handle))
}

impl TcpSocket {
    /// Runs `check` on this socket after each poll (see `wait_for`); a socket that vanished
    /// (its interface went down) reads as reset.
    fn wait<T>(
        &self,
        timeout_ms: u64,
        mut check: impl FnMut(&mut tcp::Socket<'static>) -> Option<Result<T, NetError>>,
    ) -> Result<T, NetError> {
        let (netif, handle) = (self.netif, self.handle);
        wait_for(timeout_ms, |stack| match tcp_of(stack, netif, handle) {
            Some(socket) => check(socket),
            None => Some(Err(NetError::Refused)),
        })
    }

    /// Connects to `address:port`, waiting up to `timeout_ms`.
    pub fn connect(
        address: Ipv4Address,
        port: u16,
        timeout_ms: u64,
    ) -> Result<TcpSocket, NetError> {
        let (netif, handle) = with_stack(|stack| {
            let netif = stack.route(address).ok_or(NetError::Unreachable)?;
            let (iface, sockets) = stack.iface_and_sockets(netif).ok_or(NetError::Down)?;
            let mut socket = new_tcp();
            socket
                .connect(iface.context(), (address, port), ephemeral_port())
                .map_err(|_| NetError::Invalid)?;
            Ok((netif, sockets.add(socket)))
        })
        .ok_or(NetError::Down)??;
        let socket = TcpSocket {
            netif,
            handle,
            others: Vec::new(),
        };
        kick();
        socket.wait(timeout_ms, |s| match s.state() {
            tcp::State::Established => Some(Ok(())),
            tcp::State::Closed | tcp::State::TimeWait => Some(Err(NetError::Refused)),
            _ => None,
        })?;
        Ok(socket)
    }

    /// Listens on `port` on every interface that is up. One connection is accepted.
    pub fn listen(port: u16) -> Result<TcpSocket, NetError> {
        let mut handles = with_stack(|stack| {
            let mut handles = Vec::new();
            for netif in stack.up_netifs() {
                let mut socket = new_tcp();
                socket.listen(port).map_err(|_| NetError::Invalid)?;
                if let Some(sockets) = stack.sockets(netif) {
                    handles.push((netif, sockets.add(socket)));
                }
            }
            Ok(handles)
        })
        .ok_or(NetError::Down)??;
        if handles.is_empty() {
            return Err(NetError::Down);
        }
        let (netif, handle) = handles.remove(0);
        Ok(TcpSocket {
            netif,
            handle,
            others: handles,
        })
    }

    /// Waits until a peer connected on one of the interfaces (up to `timeout_ms`;
    /// `u64::MAX`: forever); the listeners on the others are freed.
    pub fn accept(&mut self, timeout_ms: u64) -> Result<IpEndpoint, NetError> {
        let mut all = alloc::vec![(self.netif, self.handle)];
        all.extend(self.others.iter().copied());
        let candidates = all.clone();
        let (netif, handle, peer) = wait_for(timeout_ms, |stack| {
            for &(netif, handle) in &candidates {
                let Some(s) = tcp_of(stack, netif, handle) else {
                    continue;
                };
                match s.state() {
                    tcp::State::Listen | tcp::State::SynReceived => {}
                    _ => {
                        return Some(
                            s.remote_endpoint()
                                .map(|p| (netif, handle, p))
                                .ok_or(NetError::Refused),
                        )
                    }
                }
            }
            None
        })?;
        with_stack(|stack| {
            for &(n, h) in all.iter().filter(|&&(n, h)| (n, h) != (netif, handle)) {
                if let Some(sockets) = stack.sockets(n) {
                    sockets.remove(h);
                }
            }
        });
        self.netif = netif;
        self.handle = handle;
        self.others.clear();
        Ok(peer)
    }

    /// Sends all of `data` (waiting for room; `timeout_ms` bounds each wait for progress).
    pub fn send_all(&self, mut data: &[u8], timeout_ms: u64) -> Result<(), NetError> {
        while !data.is_empty() {
            let sent = self.wait(timeout_ms, |s| {
                if !s.may_send() {
                    return Some(Err(NetError::Refused));
                }
                match s.send_slice(data) {
                    Ok(0) => None,
                    Ok(n) => Some(Ok(n)),
                    Err(_) => Some(Err(NetError::Refused)),
                }
            })?;
            data = &data[sent..];
            kick();
        }
        Ok(())
    }

    /// Receives into `buffer`: the number of bytes, 0 at end of stream.
    pub fn recv(&self, buffer: &mut [u8], timeout_ms: u64) -> Result<usize, NetError> {
        let received = self.wait(timeout_ms, |s| match s.recv_slice(buffer) {
            Ok(0) if s.may_recv() => None,
            Ok(n) => Some(Ok(n)),
            Err(tcp::RecvError::Finished) => Some(Ok(0)),
            Err(tcp::RecvError::InvalidState) => Some(Err(NetError::Refused)),
        })?;
        // The window opened: tell the peer.
        kick();
        Ok(received)
    }

    /// Closes the sending side and waits (up to `timeout_ms`) until the data is delivered and
    /// the peer closed too; then frees the socket.
    pub fn close(self, timeout_ms: u64) -> Result<(), NetError> {
        let (netif, handle) = (self.netif, self.handle);
        with_stack(|stack| {
            if let Some(s) = tcp_of(stack, netif, handle) {
                s.close();
            }
        });
        kick();
        self.wait(timeout_ms, |s| {
            // Drain what the peer still sends so its FIN can be seen.
            let mut sink = [0u8; 512];
            while s.recv_slice(&mut sink).is_ok_and(|n| n > 0) {}
            match s.state() {
                tcp::State::Closed | tcp::State::TimeWait => Some(Ok(())),
                _ => None,
            }
        })
    }
}

impl Drop for TcpSocket {
    fn drop(&mut self) {
        let mut all = alloc::vec![(self.netif, self.handle)];
        all.extend(self.others.iter().copied());
        with_stack(|stack| {
            for &(netif, handle) in &all {
                if let Some(s) = tcp_of(stack, netif, handle) {
                    s.abort();
                }
            }
        });
        kick();
        // The RST goes out on the next poll; then the sockets can go.
        let polls = POLLS.load(Ordering::Acquire);
        SOCKET_WAKE.wait_until_timeout(50_000_000, || POLLS.load(Ordering::Acquire) != polls);
        with_stack(|stack| {
            for &(netif, handle) in &all {
                if tcp_of(stack, netif, handle).is_some() {
                    if let Some(sockets) = stack.sockets(netif) {
                        sockets.remove(handle);
                    }
                }
            }
        });
    }
}

/// Datagrams a UDP socket buffers each way, and the largest one.
const UDP_PACKETS: usize = 64;
/// The largest UDP payload (an unfragmented datagram on a 1500-byte MTU).
pub const UDP_MAX_PAYLOAD: usize = 1472;

fn new_udp() -> udp::Socket<'static> {
    let buffer = || {
        udp::PacketBuffer::new(
            vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
            vec![0; UDP_PACKETS * UDP_MAX_PAYLOAD],
        )
    };
    udp::Socket::new(buffer(), buffer())
}

fn udp_of(
    stack: &mut Stack,
    netif: usize,
    handle: SocketHandle,
) -> Option<&mut udp::Socket<'static>> {
    let sockets = stack.sockets(netif)?;
    if !sockets.iter().any(|(h, _)| h == handle) {
        return None;
    }
    Some(sockets.get_mut::<udp::Socket>(handle))
}

/// A UDP socket bound to a port on every interface that is up (a datagram is sent from the
/// interface whose route reaches its destination). Dropping it frees the sockets.
pub struct UdpSocket {
    sockets: Vec<(usize, SocketHandle)>,
}

impl UdpSocket {
    /// Binds `port` (0: an ephemeral one) on every interface that is up.
    pub fn bind(port: u16) -> Result<UdpSocket, NetError> {
        let port = if port == 0 { ephemeral_port() } else { port };
        let sockets = with_stack(|stack| {
            let mut sockets = Vec::new();
            for netif in stack.up_netifs() {
                let mut socket = new_udp();
                socket.bind(port).map_err(|_| NetError::Invalid)?;
                if let Some(set) = stack.sockets(netif) {
                    sockets.push((netif, set.add(socket)));
                }
            }
            Ok(sockets)
        })
        .ok_or(NetError::Down)??;
        if sockets.is_empty() {
            return Err(NetError::Down);
        }
        Ok(UdpSocket { sockets })
    }

    /// Sends one datagram of at most [`UDP_MAX_PAYLOAD`] bytes (waiting up to `timeout_ms`
    /// for room in the send buffer).
    pub fn send_to(
        &self,
        address: Ipv4Address,
        port: u16,
        data: &[u8],
        timeout_ms: u64,
    ) -> Result<(), NetError> {
        if data.len() > UDP_MAX_PAYLOAD || port == 0 {
            return Err(NetError::Invalid);
        }
        let netif = with_stack(|stack| stack.route(address))
            .ok_or(NetError::Down)?
            .ok_or(NetError::Unreachable)?;
        let &(_, handle) = self
            .sockets
            .iter()
            .find(|(n, _)| *n == netif)
            .ok_or(NetError::Unreachable)?;
        let endpoint = IpEndpoint::new(IpAddress::Ipv4(address), port);
        wait_for(timeout_ms, |stack| {
            let socket = udp_of(stack, netif, handle)?;
            match socket.send_slice(data, endpoint) {
                Ok(()) => Some(Ok(())),
                Err(udp::SendError::BufferFull) => None,
                Err(udp::SendError::Unaddressable) => Some(Err(NetError::Unreachable)),
            }
        })?;
        kick();
        Ok(())
    }

    /// Receives one datagram into `buffer` (truncated to its size) from any interface: its
    /// length and sender. Waits up to `timeout_ms`.
    pub fn recv_from(
        &self,
        buffer: &mut [u8],
        timeout_ms: u64,
    ) -> Result<(usize, IpEndpoint), NetError> {
        let sockets = self.sockets.clone();
        wait_for(timeout_ms, |stack| {
            for &(netif, handle) in &sockets {
                let Some(socket) = udp_of(stack, netif, handle) else {
                    continue;
                };
                match socket.recv_slice(buffer) {
                    Ok((n, meta)) => return Some(Ok((n, meta.endpoint))),
                    Err(udp::RecvError::Exhausted) => {}
                    // Larger than `buffer` (dropped by the stack): the caller's buffer is too small.
                    Err(udp::RecvError::Truncated) => return Some(Err(NetError::Invalid)),
                }
            }
            None
        })
    }
}

impl UdpSocket {
    /// Waits (up to `timeout_ms`) until `knetd` has handed every queued datagram to its
    /// interface: the send buffers hold no payload, then one more poll for any empty ones
    /// (a datagram waiting for ARP stays queued until the neighbour answers).
    pub fn flush(&self, timeout_ms: u64) -> Result<(), NetError> {
        let sockets = self.sockets.clone();
        wait_for(timeout_ms, |stack| {
            let pending: usize = sockets
                .iter()
                .filter_map(|&(netif, handle)| udp_of(stack, netif, handle).map(|s| s.send_queue()))
                .sum();
            (pending == 0).then_some(Ok(()))
        })?;
        kick();
        let polls = POLLS.load(Ordering::Acquire);
        SOCKET_WAKE.wait_until_timeout(timeout_ms.saturating_mul(1_000_000), || {
            POLLS.load(Ordering::Acquire) != polls
        });
        Ok(())
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        // Datagrams still queued go out first (as a Linux socket's would after close).
        let _ = self.flush(2_000);
        let sockets = core::mem::take(&mut self.sockets);
        with_stack(|stack| {
            for (netif, handle) in sockets {
                if udp_of(stack, netif, handle).is_some() {
                    if let Some(set) = stack.sockets(netif) {
                        set.remove(handle);
                    }
                }
            }
        });
    }
}

/// One ICMP echo: the round-trip time in microseconds.
pub fn ping_once(
    address: Ipv4Address,
    ident: u16,
    seq: u16,
    timeout_ms: u64,
) -> Result<u64, NetError> {
    let payload = [0x5au8; 56];
    let (netif, handle) = with_stack(|stack| {
        let netif = stack.route(address).ok_or(NetError::Unreachable)?;
        let mut socket = icmp::Socket::new(
            icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
            icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
        );
        socket
            .bind(icmp::Endpoint::Ident(ident))
            .map_err(|_| NetError::Invalid)?;
        let repr = Icmpv4Repr::EchoRequest {
            ident,
            seq_no: seq,
            data: &payload,
        };
        let mut bytes = vec![0u8; repr.buffer_len()];
        repr.emit(
            &mut Icmpv4Packet::new_unchecked(&mut bytes[..]),
            &ChecksumCapabilities::default(),
        );
        socket
            .send_slice(&bytes, IpAddress::Ipv4(address))
            .map_err(|_| NetError::Invalid)?;
        let sockets = stack.sockets(netif).ok_or(NetError::Down)?;
        Ok((netif, sockets.add(socket)))
    })
    .ok_or(NetError::Down)??;
    let sent = uptime_ns();
    kick();
    let result = wait_for(timeout_ms, |stack| {
        let sockets = stack.sockets(netif)?;
        if !sockets.iter().any(|(h, _)| h == handle) {
            return Some(Err(NetError::Down));
        }
        let s = sockets.get_mut::<icmp::Socket>(handle);
        let mut reply = [0u8; 1024];
        while let Ok((n, _from)) = s.recv_slice(&mut reply) {
            let Ok(packet) = Icmpv4Packet::new_checked(&reply[..n]) else {
                continue;
            };
            if let Ok(Icmpv4Repr::EchoReply {
                ident: i, seq_no, ..
            }) = Icmpv4Repr::parse(&packet, &ChecksumCapabilities::default())
            {
                if i == ident && seq_no == seq {
                    return Some(Ok((uptime_ns() - sent) / 1000));
                }
            }
        }
        None
    });
    with_stack(|stack| {
        if let Some(sockets) = stack.sockets(netif) {
            if sockets.iter().any(|(h, _)| h == handle) {
                sockets.remove(handle);
            }
        }
    });
    result
}

/// Linux's TCP state numbers (`include/net/tcp_states.h`).
fn linux_state(state: tcp::State) -> u8 {
    match state {
        tcp::State::Established => 1,
        tcp::State::SynSent => 2,
        tcp::State::SynReceived => 3,
        tcp::State::FinWait1 => 4,
        tcp::State::FinWait2 => 5,
        tcp::State::TimeWait => 6,
        tcp::State::Closed => 7,
        tcp::State::CloseWait => 8,
        tcp::State::LastAck => 9,
        tcp::State::Listen => 10,
        tcp::State::Closing => 11,
    }
}

fn hex_endpoint(endpoint: Option<IpEndpoint>) -> String {
    match endpoint {
        Some(IpEndpoint {
            addr: IpAddress::Ipv4(address),
            port,
        }) => alloc::format!("{:08X}:{port:04X}", u32::from_le_bytes(address.octets())),
        _ => String::from("00000000:0000"),
    }
}

/// `/proc/net/tcp` in Linux's layout (addresses as the little-endian hex Linux prints).
pub fn proc_net_tcp() -> String {
    let mut out = String::from("  sl  local_address rem_address   st tx_queue rx_queue\n");
    with_stack(|stack| {
        let mut sl = 0;
        for (_, socket) in stack.all_sockets().flat_map(|set| set.iter()) {
            if let Socket::Tcp(s) = socket {
                let local = s.local_endpoint().or_else(|| {
                    let listen = s.listen_endpoint();
                    (listen.port != 0)
                        .then(|| IpEndpoint::new(Ipv4Address::UNSPECIFIED.into(), listen.port))
                });
                let _ = writeln!(
                    out,
                    "{sl:>4}: {} {} {:02X} {:08X}:{:08X}",
                    hex_endpoint(local),
                    hex_endpoint(s.remote_endpoint()),
                    linux_state(s.state()),
                    s.send_queue(),
                    s.recv_queue()
                );
                sl += 1;
            }
        }
    });
    out
}

/// The HTTP server's page: uptime, `/proc/timer_stats`, `/proc/interrupts`.
fn http_page() -> String {
    let uptime = uptime_ns();
    let mut body = alloc::format!(
        "Lull {}\nuptime {}.{:03} s\n\n",
        crate::version_line(),
        uptime / 1_000_000_000,
        (uptime / 1_000_000) % 1000
    );
    for path in ["/proc/timer_stats", "/proc/interrupts"] {
        let _ = writeln!(body, "==> {path} <==");
        body.push_str(&crate::fs::procfs::read(path).unwrap_or_default());
        body.push('\n');
    }
    body
}

fn serve_one(port: u16) -> Result<(), NetError> {
    let mut socket = TcpSocket::listen(port)?;
    socket.accept(u64::MAX)?;
    let mut request = Vec::new();
    let mut chunk = [0u8; 512];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 4096 {
        let n = socket.recv(&mut chunk, 5000)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let line = request.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = core::str::from_utf8(line).unwrap_or("").trim_end();
    let (status, body) = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["GET", "/", ..] => ("200 OK", http_page()),
        ["GET", ..] => ("404 Not Found", String::from("not found\n")),
        _ => ("400 Bad Request", String::from("bad request\n")),
    };
    let response = alloc::format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.send_all(response.as_bytes(), 5000)?;
    socket.close(5000)
}

/// Starts the HTTP server thread on `port` (one connection at a time).
pub fn start_httpd(port: u16) {
    let started = crate::kernel::sched::kthread_spawn(
        "httpd",
        lull_sched::SchedClass::NORMAL,
        lull_sched::CpuSet::ALL,
        move || {
            crate::printk!("httpd: listening on port {port}");
            loop {
                if let Err(error) = serve_one(port) {
                    crate::pr_warn!("httpd: {error}");
                }
            }
        },
    );
    if let Err(error) = started {
        crate::pr_warn!("httpd: cannot start ({error:?})");
    }
}

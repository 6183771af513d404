//! Networking: interfaces, the TCP/IP stack (`smoltcp`) and the thread that drives it.
//!
//! A network driver implements [`NetDevice`] (transmit a frame; its MAC address) and hands
//! received frames to [`netif_rx`]; [`register_netdev`] makes it an interface (`eth0`, …).
//! The loopback interface `lo` (127.0.0.1/8) always exists.
//!
//! # Tickless
//!
//! One kernel thread, `knetd`, polls the stack when something happened — a frame arrived, a
//! socket was written, a timer of the stack's came due — and otherwise sleeps. The stack says
//! when it next needs attention (`poll_delay`: a TCP retransmission, a DHCP renewal); that is
//! an hrtimer-backed timed wait, and with no such deadline the thread sleeps until woken. An
//! idle system with a configured interface takes no timer interrupts for networking.
//!
//! # Locking
//!
//! The stack (interfaces and sockets) is behind one sleeping mutex, taken by `knetd` and by
//! socket calls ([`socket`]). Drivers' receive paths never take it: [`netif_rx`] queues the
//! frame under a leaf IRQ-safe lock and wakes `knetd`.

pub mod socket;

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use lull_cmdline::{Kind, ParamSpec};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr};

use crate::kernel::locking::{IrqSafeLock, Mutex};
use crate::kernel::sched::WaitQueue;
use crate::{pr_warn, printk};

/// Networking parameters (Linux's names).
pub const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "ip",
        kind: Kind::Str,
        default: "",
        help: "Interface configuration as Linux's nfsroot ip=: `dhcp`, or \
               CLIENT:SERVER:GATEWAY:NETMASK:HOSTNAME:DEVICE:AUTOCONF (empty fields allowed); \
               without it, Ethernet interfaces use DHCP.",
    },
    ParamSpec {
        name: "httpd",
        kind: Kind::U64 { min: 0, max: 65535 },
        default: "0",
        help: "Start the built-in HTTP server on this TCP port at boot (0: off).",
    },
];

/// Why a frame was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxError {
    /// No room in the device's queue now (the frame is dropped and counted).
    Busy,
    /// The device is gone or failed.
    Down,
}

/// What a network driver provides.
pub trait NetDevice: Send + Sync {
    /// The MAC address.
    fn mac(&self) -> [u8; 6];
    /// Largest frame, Ethernet header included (1514 for a 1500-byte MTU).
    fn max_frame(&self) -> usize {
        1514
    }
    /// Sends one Ethernet frame (copied; the call does not keep `frame`).
    fn transmit(&self, frame: &[u8]) -> Result<(), TxError>;
}

/// Interface counters, as `/proc/net/dev` shows them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

enum Link {
    Loopback,
    Device(Arc<dyn NetDevice>),
}

/// The smoltcp side of an interface: its receive queue and where transmissions go.
struct Port {
    rx: VecDeque<Vec<u8>>,
    link: Link,
    medium: Medium,
    max_frame: usize,
    stats: Stats,
}

struct RxFrame(Vec<u8>);

impl phy::RxToken for RxFrame {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct TxFrame<'a> {
    port: &'a mut Port,
}

impl phy::TxToken for TxFrame<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let result = f(&mut frame);
        let port = self.port;
        let sent = match &port.link {
            Link::Loopback => {
                port.stats.rx_bytes += len as u64;
                port.stats.rx_packets += 1;
                port.rx.push_back(frame);
                true
            }
            Link::Device(device) => device.transmit(&frame).is_ok(),
        };
        if sent {
            port.stats.tx_bytes += len as u64;
            port.stats.tx_packets += 1;
        } else {
            port.stats.tx_dropped += 1;
        }
        result
    }
}

impl phy::Device for Port {
    type RxToken<'a> = RxFrame;
    type TxToken<'a> = TxFrame<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxFrame, TxFrame<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxFrame(frame), TxFrame { port: self }))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxFrame<'_>> {
        Some(TxFrame { port: self })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = self.medium;
        caps.max_transmission_unit = self.max_frame;
        caps.max_burst_size = Some(32);
        caps
    }
}

/// An interface of the stack.
struct Netif {
    name: String,
    iface: Interface,
    port: Port,
    dhcp: Option<SocketHandle>,
    gateway: Option<Ipv4Address>,
    /// False once its driver unregistered it (kept for the counters; no traffic).
    up: bool,
    /// Unregistered: its name is free again, and once no socket of its set is left (their
    /// owners dropped them) the next interface registered takes its slot. Slot indices are
    /// what sockets and drivers hold, so a slot is reused only when nobody can hold one.
    gone: bool,
    /// The interface's sockets. Each interface polls only its own: a socket set shared by
    /// several interfaces would send a socket's segments out of whichever polled first.
    sockets: SocketSet<'static>,
}

pub(crate) struct Stack {
    netifs: Vec<Netif>,
}

impl Stack {
    /// Interface `netif`'s sockets.
    pub(crate) fn sockets(&mut self, netif: usize) -> Option<&mut SocketSet<'static>> {
        self.netifs.get_mut(netif).map(|n| &mut n.sockets)
    }

    /// Interfaces that are up.
    pub(crate) fn up_netifs(&self) -> Vec<usize> {
        (0..self.netifs.len())
            .filter(|&i| self.netifs[i].up)
            .collect()
    }

    /// The interface that reaches `address`: loopback for 127/8, else one whose network holds
    /// it, else one with a default route.
    pub(crate) fn route(&self, address: Ipv4Address) -> Option<usize> {
        let up = || self.netifs.iter().enumerate().filter(|(_, n)| n.up);
        if address.octets()[0] == 127 {
            return up()
                .find(|(_, n)| n.port.medium == Medium::Ip)
                .map(|(i, _)| i);
        }
        up().find(|(_, n)| {
            n.port.medium == Medium::Ethernet
                && n.iface
                    .ip_addrs()
                    .iter()
                    .any(|cidr| cidr.contains_addr(&address.into()))
        })
        .or_else(|| up().find(|(_, n)| n.gateway.is_some()))
        .map(|(i, _)| i)
    }

    /// The smoltcp interface of `netif` with its sockets (for `connect`'s context).
    pub(crate) fn iface_and_sockets(
        &mut self,
        netif: usize,
    ) -> Option<(&mut Interface, &mut SocketSet<'static>)> {
        self.netifs
            .get_mut(netif)
            .map(|n| (&mut n.iface, &mut n.sockets))
    }

    /// Every interface's sockets (for `/proc/net/tcp`).
    pub(crate) fn all_sockets(&self) -> impl Iterator<Item = &SocketSet<'static>> {
        self.netifs.iter().map(|n| &n.sockets)
    }
}

static STACK: Mutex<Option<Stack>> = Mutex::named("net::STACK", None);
/// Frames received by drivers, waiting for `knetd`: (interface index, frame).
static RX_PENDING: IrqSafeLock<VecDeque<(usize, Vec<u8>)>> = IrqSafeLock::new(VecDeque::new());
/// Frames dropped because `RX_PENDING` was full.
static RX_OVERFLOW: AtomicU64 = AtomicU64::new(0);
const RX_PENDING_MAX: usize = 1024;
/// `knetd` sleeps here; [`kick`] sets `KICKED` and wakes it.
static NET_WAKE: WaitQueue = WaitQueue::new();
static KICKED: AtomicBool = AtomicBool::new(false);
/// Socket users wait here for the next poll (`POLLS` counts them).
pub(crate) static SOCKET_WAKE: WaitQueue = WaitQueue::new();
pub(crate) static POLLS: AtomicU64 = AtomicU64::new(0);

pub(crate) fn now() -> Instant {
    Instant::from_micros((crate::kernel::time::uptime_ns() / 1000) as i64)
}

/// Runs `f` on the stack (thread context). `None` before [`init`].
pub(crate) fn with_stack<R>(f: impl FnOnce(&mut Stack) -> R) -> Option<R> {
    // The stack and the network drivers come up in the boot-time probe.
    crate::drivers::wait_for_device_probe();
    STACK.lock().as_mut().map(f)
}

/// Asks `knetd` to poll (after a socket was written, a frame queued). Any context.
pub fn kick() {
    KICKED.store(true, Ordering::Release);
    NET_WAKE.wake_all();
}

/// A driver's received frame for interface `index`. Any context but hard IRQ is fine; the
/// frame is queued and `knetd` woken.
pub fn netif_rx(index: usize, frame: Vec<u8>) {
    {
        let mut pending = RX_PENDING.lock();
        if pending.len() >= RX_PENDING_MAX {
            RX_OVERFLOW.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.push_back((index, frame));
    }
    kick();
}

fn add_netif(stack: &mut Stack, name: String, link: Link) -> usize {
    stack.netifs.push(new_netif(name, link));
    stack.netifs.len() - 1
}

fn new_netif(name: String, link: Link) -> Netif {
    let (medium, hardware, max_frame) = match &link {
        Link::Loopback => (Medium::Ip, HardwareAddress::Ip, 65535),
        Link::Device(device) => (
            Medium::Ethernet,
            HardwareAddress::Ethernet(EthernetAddress(device.mac())),
            device.max_frame(),
        ),
    };
    let mut port = Port {
        rx: VecDeque::new(),
        link,
        medium,
        max_frame,
        stats: Stats::default(),
    };
    let mut config = Config::new(hardware);
    config.random_seed = crate::kernel::time::uptime_ns() ^ 0x9e37_79b9_7f4a_7c15;
    let iface = Interface::new(config, &mut port, now());
    Netif {
        name,
        iface,
        port,
        dhcp: None,
        gateway: None,
        up: true,
        gone: false,
        sockets: SocketSet::new(Vec::new()),
    }
}

/// Linux's `ip=` value, parsed: `None` = DHCP.
struct StaticConfig {
    address: Ipv4Cidr,
    gateway: Option<Ipv4Address>,
    device: Option<String>,
}

fn parse_ipv4(text: &str) -> Option<Ipv4Address> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        *octet = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Address::from(octets))
}

fn parse_ip_param(text: &str) -> Result<Option<StaticConfig>, String> {
    if text.is_empty() || text == "dhcp" || text == "on" || text == "any" {
        return Ok(None);
    }
    let fields: Vec<&str> = text.split(':').collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or("");
    let client =
        parse_ipv4(field(0)).ok_or_else(|| alloc::format!("bad client address {:?}", field(0)))?;
    let gateway = match field(2) {
        "" => None,
        g => Some(parse_ipv4(g).ok_or_else(|| alloc::format!("bad gateway {g:?}"))?),
    };
    let prefix = match field(3) {
        "" => 24,
        mask => {
            let mask = parse_ipv4(mask).ok_or_else(|| alloc::format!("bad netmask {mask:?}"))?;
            let bits = u32::from(mask);
            if bits.leading_ones() + bits.trailing_zeros() != 32 {
                return Err(alloc::format!("netmask {mask} is not contiguous"));
            }
            bits.leading_ones() as u8
        }
    };
    let device = match field(5) {
        "" => None,
        d => Some(String::from(d)),
    };
    Ok(Some(StaticConfig {
        address: Ipv4Cidr::new(client, prefix),
        gateway,
        device,
    }))
}

/// The `ip=` configuration, parsed once (an error is logged and DHCP used).
fn ip_param() -> Option<StaticConfig> {
    let text = crate::kernel::params::parsed().get_str("ip").unwrap_or("");
    match parse_ip_param(text) {
        Ok(config) => config,
        Err(why) => {
            pr_warn!("ip=: {why}; using DHCP");
            None
        }
    }
}

/// Makes a driver's device an interface (`eth0`, `eth1`…), configured from `ip=` or by DHCP.
/// Returns its index for [`netif_rx`]. Thread context.
pub fn register_netdev(device: Arc<dyn NetDevice>) -> Option<usize> {
    let mac = device.mac();
    let registered = with_stack(|stack| {
        // The lowest free name, as Linux's eth%d; the slot of a gone interface nobody holds a
        // socket of, else a new one.
        let name = (0..)
            .map(|n| alloc::format!("eth{n}"))
            .find(|candidate| !stack.netifs.iter().any(|n| !n.gone && &n.name == candidate))
            .unwrap_or_default();
        let netif = new_netif(name.clone(), Link::Device(device));
        let reusable = stack
            .netifs
            .iter()
            .position(|n| n.gone && n.sockets.iter().next().is_none());
        let index = match reusable {
            Some(slot) => {
                stack.netifs[slot] = netif;
                slot
            }
            None => {
                stack.netifs.push(netif);
                stack.netifs.len() - 1
            }
        };
        let config = ip_param().filter(|c| c.device.as_deref().is_none_or(|d| d == name));
        let netif = &mut stack.netifs[index];
        match config {
            Some(config) => {
                netif.iface.update_ip_addrs(|addrs| {
                    let _ = addrs.push(IpCidr::Ipv4(config.address));
                });
                if let Some(gateway) = config.gateway {
                    let _ = netif.iface.routes_mut().add_default_ipv4_route(gateway);
                    netif.gateway = Some(gateway);
                }
                printk!("net: {name}: {} (ip=)", config.address);
            }
            None => {
                let netif = &mut stack.netifs[index];
                netif.dhcp = Some(netif.sockets.add(dhcpv4::Socket::new()));
                printk!("net: {name}: DHCP");
            }
        }
        (index, name)
    })?;
    let (index, name) = registered;
    printk!(
        "net: {name}: MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5]
    );
    kick();
    Some(index)
}

/// Takes an interface down (its driver unbinds): no more traffic, addresses dropped, its name
/// free again; its slot is reused once its sockets' owners have let go of them.
pub fn unregister_netdev(index: usize) {
    with_stack(|stack| {
        if let Some(netif) = stack.netifs.get_mut(index) {
            netif.up = false;
            netif.gone = true;
            netif.port.link = Link::Loopback;
            // Freed, not cleared: the queue's capacity is however many frames once waited
            // together, and a gone interface's heap must not depend on its last traffic (the
            // unbind/bind leak tests saw 96 bytes come and go with a DHCP reply's timing).
            netif.port.rx = VecDeque::new();
            netif.iface.update_ip_addrs(|addrs| addrs.clear());
            netif.iface.routes_mut().remove_default_ipv4_route();
            if let Some(handle) = netif.dhcp.take() {
                netif.sockets.remove(handle);
            }
            // Its sockets' users see them closed (aborted), then drop them.
            for (_, socket) in netif.sockets.iter_mut() {
                if let smoltcp::socket::Socket::Tcp(tcp) = socket {
                    tcp.abort();
                }
            }
        }
    });
    RX_PENDING.lock().retain(|(i, _)| *i != index);
}

/// One pass over every interface; returns how long until the stack next needs a poll.
fn poll_once(stack: &mut Stack) -> Option<u64> {
    // Taken whole, so the queue keeps no capacity between polls: a burst's size would
    // otherwise stay in the heap as a high-water mark, and the leak tests compare heap bytes.
    let pending = core::mem::take(&mut *RX_PENDING.lock());
    for (index, frame) in pending {
        if let Some(netif) = stack.netifs.get_mut(index).filter(|n| n.up) {
            netif.port.stats.rx_bytes += frame.len() as u64;
            netif.port.stats.rx_packets += 1;
            netif.port.rx.push_back(frame);
        }
    }
    let timestamp = now();
    let mut delay_us: Option<u64> = None;
    for netif in stack.netifs.iter_mut().filter(|n| n.up) {
        // Poll until the receive queue is drained (each poll takes a burst).
        loop {
            netif
                .iface
                .poll(timestamp, &mut netif.port, &mut netif.sockets);
            if netif.port.rx.is_empty() {
                break;
            }
        }
        if let Some(handle) = netif.dhcp {
            let event = netif.sockets.get_mut::<dhcpv4::Socket>(handle).poll();
            match event {
                Some(dhcpv4::Event::Configured(config)) => {
                    netif.iface.update_ip_addrs(|addrs| {
                        addrs.clear();
                        let _ = addrs.push(IpCidr::Ipv4(config.address));
                    });
                    netif.gateway = config.router;
                    match config.router {
                        Some(router) => {
                            let _ = netif.iface.routes_mut().add_default_ipv4_route(router);
                        }
                        None => {
                            netif.iface.routes_mut().remove_default_ipv4_route();
                        }
                    }
                    printk!(
                        "net: {}: DHCP lease {} via {}",
                        netif.name,
                        config.address,
                        config
                            .router
                            .map_or(String::from("no router"), |r| alloc::format!("{r}"))
                    );
                    // The new address may let queued packets go: poll again at once.
                    netif
                        .iface
                        .poll(timestamp, &mut netif.port, &mut netif.sockets);
                }
                Some(dhcpv4::Event::Deconfigured) => {
                    // Also the socket's first event, before any lease: say so only when one
                    // was held.
                    if !netif.iface.ip_addrs().is_empty() {
                        printk!("net: {}: DHCP lease lost", netif.name);
                    }
                    netif.iface.update_ip_addrs(|addrs| addrs.clear());
                    netif.iface.routes_mut().remove_default_ipv4_route();
                    netif.gateway = None;
                }
                None => {}
            }
        }
        if let Some(delay) = netif.iface.poll_delay(timestamp, &netif.sockets) {
            let us = delay.total_micros();
            delay_us = Some(delay_us.map_or(us, |d| d.min(us)));
        }
    }
    delay_us
}

/// `knetd`: poll, tell socket users, sleep until kicked or the stack's next deadline.
fn knetd() {
    loop {
        let delay_us = with_stack(poll_once).flatten();
        POLLS.fetch_add(1, Ordering::AcqRel);
        SOCKET_WAKE.wake_all();
        match delay_us {
            Some(0) => crate::kernel::sched::yield_now(),
            Some(us) => {
                NET_WAKE.wait_until_timeout(us.saturating_mul(1000), || {
                    KICKED.swap(false, Ordering::AcqRel)
                });
            }
            None => NET_WAKE.wait_until(|| KICKED.swap(false, Ordering::AcqRel)),
        }
    }
}

/// Creates the stack with `lo` and starts `knetd` (and the HTTP server if `httpd=` asks).
/// Thread context (the boot-time probe thread calls it before the drivers register).
pub fn init() {
    let mut stack = Stack { netifs: Vec::new() };
    let lo = add_netif(&mut stack, String::from("lo"), Link::Loopback);
    stack.netifs[lo].iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(Ipv4Address::new(127, 0, 0, 1).into(), 8));
    });
    *STACK.lock() = Some(stack);
    let started = crate::kernel::sched::kthread_spawn(
        "knetd",
        lull_sched::SchedClass::NORMAL,
        lull_sched::CpuSet::ALL,
        knetd,
    );
    if let Err(error) = started {
        pr_warn!("net: cannot start knetd ({error:?}); networking is off");
        return;
    }
    match crate::kernel::params::parsed().get_u64("httpd") {
        Some(port) if port > 0 => socket::start_httpd(port as u16),
        _ => {}
    }
    register_proc_files();
}

fn register_proc_files() {
    use crate::fs::procfs::{register, ProcFile};
    register(ProcFile {
        path: "/proc/net/dev",
        read: Some(proc_net_dev),
        write: None,
    });
    register(ProcFile {
        path: "/proc/net/tcp",
        read: Some(socket::proc_net_tcp),
        write: None,
    });
}

/// `/proc/net/dev` in Linux's layout.
fn proc_net_dev() -> String {
    let mut out = String::from(
        "Inter-|   Receive                                                |  Transmit\n \
         face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n",
    );
    let overflow = RX_OVERFLOW.load(Ordering::Relaxed);
    with_stack(|stack| {
        for netif in stack.netifs.iter().filter(|n| !n.gone) {
            let s = netif.port.stats;
            let drops = s.rx_dropped + if netif.name == "lo" { 0 } else { overflow };
            let _ = writeln!(
                out,
                "{:>6}: {:>7} {:>7} {:>4} {:>4} {:>4} {:>5} {:>10} {:>9} {:>8} {:>7} {:>4} {:>4} {:>4} {:>5} {:>7} {:>10}",
                netif.name, s.rx_bytes, s.rx_packets, 0, drops, 0, 0, 0, 0,
                s.tx_bytes, s.tx_packets, 0, s.tx_dropped, 0, 0, 0, 0
            );
        }
    });
    out
}

/// `ip addr`: each interface with its link and addresses, in iproute2's shape.
pub fn ip_addr() -> String {
    let mut out = String::new();
    with_stack(|stack| {
        for (index, netif) in stack.netifs.iter().enumerate().filter(|(_, n)| !n.gone) {
            let state = if netif.up { "UP" } else { "DOWN" };
            let (flags, mtu) = match netif.port.medium {
                Medium::Ip => ("LOOPBACK,UP,LOWER_UP", 65536),
                _ => ("BROADCAST,MULTICAST,UP,LOWER_UP", netif.port.max_frame - 14),
            };
            let _ = writeln!(
                out,
                "{}: {}: <{flags}> mtu {mtu} state {state}",
                index + 1,
                netif.name
            );
            // `hardware_addr` asserts an Ethernet medium: ask only Ethernet interfaces.
            match (netif.port.medium == Medium::Ethernet).then(|| netif.iface.hardware_addr()) {
                Some(HardwareAddress::Ethernet(mac)) => {
                    let m = mac.0;
                    let _ = writeln!(
                        out,
                        "    link/ether {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} brd ff:ff:ff:ff:ff:ff",
                        m[0], m[1], m[2], m[3], m[4], m[5]
                    );
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00"
                    );
                }
            }
            for cidr in netif.iface.ip_addrs() {
                let how = if netif.dhcp.is_some() { " dynamic" } else { "" };
                let _ = writeln!(out, "    inet {cidr} scope global{how} {}", netif.name);
            }
        }
    });
    out
}

/// `ip route`: the default route and each interface's connected network.
pub fn ip_route() -> String {
    let mut out = String::new();
    with_stack(|stack| {
        for netif in stack.netifs.iter().filter(|n| n.up) {
            if let Some(gateway) = netif.gateway {
                let _ = writeln!(out, "default via {gateway} dev {}", netif.name);
            }
        }
        for netif in stack.netifs.iter().filter(|n| n.up) {
            for cidr in netif.iface.ip_addrs() {
                let IpCidr::Ipv4(v4) = cidr;
                let _ = writeln!(
                    out,
                    "{} dev {} scope link src {}",
                    v4.network(),
                    netif.name,
                    v4.address()
                );
            }
        }
    });
    out
}

/// Parses a dotted IPv4 address (shell arguments).
pub fn parse_address(text: &str) -> Option<Ipv4Address> {
    if text == "localhost" {
        return Some(Ipv4Address::new(127, 0, 0, 1));
    }
    parse_ipv4(text)
}

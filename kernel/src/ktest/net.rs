//! The TCP/IP stack on the loopback interface: ICMP echo, and a TCP transfer between two
//! threads whose SHA-256 must match.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

use super::{wait_for, TestResult};
use crate::kernel::locking::IrqSafeLock;
use crate::net::socket::{ping_once, TcpSocket};
use smoltcp::wire::Ipv4Address;

const LOCALHOST: Ipv4Address = Ipv4Address::new(127, 0, 0, 1);

pub fn loopback_answers_ping() -> TestResult {
    let us = ping_once(LOCALHOST, 0x4c4c, 1, 1000).map_err(|e| alloc::format!("ping: {e}"))?;
    ensure!(us < 1_000_000, "round trip {us} us");
    Ok(())
}

pub fn loopback_tcp_transfer_keeps_every_byte() -> TestResult {
    const BYTES: usize = 1 << 20;
    const PORT: u16 = 7001;
    let listener = TcpSocket::listen(PORT).map_err(|e| alloc::format!("listen: {e}"))?;
    let result: Arc<IrqSafeLock<Option<Result<(usize, [u8; 32]), alloc::string::String>>>> =
        Arc::new(IrqSafeLock::new(None));
    let done = Arc::new(AtomicBool::new(false));
    let (server_result, server_done) = (result.clone(), done.clone());
    crate::kernel::sched::kthread_spawn(
        "ktest-nc-server",
        lull_sched::SchedClass::NORMAL,
        lull_sched::CpuSet::ALL,
        move || {
            let outcome = (|| {
                listener
                    .accept(10_000)
                    .map_err(|e| alloc::format!("accept: {e}"))?;
                let mut hasher = Sha256::new();
                let mut buffer = alloc::vec![0u8; 8192];
                let mut total = 0;
                loop {
                    let n = listener
                        .recv(&mut buffer, 10_000)
                        .map_err(|e| alloc::format!("recv: {e}"))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buffer[..n]);
                    total += n;
                }
                let _ = listener.close(1000);
                Ok((total, hasher.finalize().into()))
            })();
            *server_result.lock() = Some(outcome);
            server_done.store(true, Ordering::Release);
        },
    )
    .map_err(|e| alloc::format!("spawn: {e:?}"))?;
    let client =
        TcpSocket::connect(LOCALHOST, PORT, 5000).map_err(|e| alloc::format!("connect: {e}"))?;
    let data: alloc::vec::Vec<u8> = (0..BYTES)
        .map(|i| crate::shell::pattern_byte(i as u64))
        .collect();
    client
        .send_all(&data, 10_000)
        .map_err(|e| alloc::format!("send: {e}"))?;
    client
        .close(10_000)
        .map_err(|e| alloc::format!("close: {e}"))?;
    ensure!(
        wait_for(20_000, || done.load(Ordering::Acquire)),
        "server did not finish"
    );
    let (total, digest) = result.lock().take().ok_or("no server result")??;
    let expected: [u8; 32] = Sha256::digest(&data).into();
    ensure!(total == BYTES, "received {total} of {BYTES} bytes");
    ensure!(digest == expected, "SHA-256 differs");
    Ok(())
}

//! The kernel's floor under the SFU's per-packet cost on loopback: sending one 200-byte
//! datagram to a local socket that another thread drains. On loopback the sender's system call
//! also carries the receive path (routing, socket lookup, queueing, waking the reader), work a
//! real network card would leave to the receiving machine. Compare with the CPU µs per
//! forwarded packet of `benches/scale`.
//!
//! Two cases: readers kept busy (`send_to_200_bytes`: a tight loop, the reader rarely
//! sleeps), and a reader asleep in `recv` at every send (`send_to_sleeping_reader`: the
//! time of the `send_to` call alone, which then also wakes the reader's thread, as when the
//! SFU forwards a packet to a load tester idle between packets).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn udp_loopback(c: &mut Criterion) {
    let receivers: Vec<UdpSocket> = (0..4)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let addrs: Vec<_> = receivers
        .iter()
        .map(|r| r.local_addr().expect("addr"))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in receivers {
        let stop = stop.clone();
        r.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        readers.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                let _ = r.recv_from(&mut buf);
            }
        }));
    }
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sender.set_nonblocking(true).expect("nonblocking");
    let payload = [0x5au8; 200];
    let mut group = c.benchmark_group("udp_loopback");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(3));
    let mut i = 0usize;
    group.bench_function("send_to_200_bytes", |b| {
        b.iter(|| {
            i = (i + 1) % addrs.len();
            // A full receive buffer drops the datagram, as in the SFU; the cost is paid anyway.
            let _ = sender.send_to(&payload, addrs[i]);
        })
    });
    group.finish();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.join();
    }
    sleeping_reader(c);
}

fn sleeping_reader(c: &mut Criterion) {
    let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = receiver.local_addr().expect("addr");
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let received = received.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            // Blocks in `recv` between datagrams; an empty datagram ends it.
            while let Ok((n, _)) = receiver.recv_from(&mut buf) {
                if n == 0 {
                    break;
                }
                received.fetch_add(1, Ordering::Release);
            }
        })
    };
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let payload = [0x5au8; 200];
    let mut group = c.benchmark_group("udp_loopback");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("send_to_sleeping_reader", |b| {
        b.iter_custom(|iters| {
            let mut in_send = Duration::ZERO;
            for _ in 0..iters {
                let before = received.load(Ordering::Acquire);
                let start = Instant::now();
                let _ = sender.send_to(&payload, addr);
                in_send += start.elapsed();
                // Wait (untimed) for the reader to take it and block again.
                let deadline = Instant::now() + Duration::from_millis(100);
                while received.load(Ordering::Acquire) == before && Instant::now() < deadline {
                    std::thread::yield_now();
                }
                std::thread::sleep(Duration::from_micros(30));
            }
            in_send
        })
    });
    group.finish();
    let _ = sender.send_to(&[], addr);
    let _ = reader.join();
}

criterion_group!(benches, udp_loopback);
criterion_main!(benches);

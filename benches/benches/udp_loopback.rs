//! The kernel's floor under the SFU's per-packet cost on loopback: sending one 200-byte
//! datagram to a local socket that another thread drains. On loopback the sender's system call
//! also carries the receive path (routing, socket lookup, queueing, waking the reader), work a
//! real network card would leave to the receiving machine. Compare with the CPU µs per
//! forwarded packet of `benches/scale`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
}

criterion_group!(benches, udp_loopback);
criterion_main!(benches);

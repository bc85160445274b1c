//! The forwarding hot path: one SRTP datagram from a publisher in, one SRTP datagram out per
//! subscriber (unprotect → route → protect), through the SFU's engine with str0m peers, in
//! memory. Reported per incoming packet; divide by the fan-out for the cost per forwarded copy.

use consult_benches::InMemoryCall;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::{Duration, Instant};

fn forwarding(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward_packet");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(20);
    for fanout in [1usize, 10, 50] {
        let mut call = InMemoryCall::new(fanout);
        group.throughput(Throughput::Elements(fanout as u64));
        group.bench_with_input(BenchmarkId::from_parameter(fanout), &fanout, |b, _| {
            b.iter_custom(|iters| {
                // SRTP refuses replays: every iteration needs a fresh packet, made untimed.
                let datagrams = call.publisher_datagrams(iters as usize);
                let start = Instant::now();
                let mut sent = 0;
                for d in &datagrams {
                    sent += call.feed(d);
                }
                let elapsed = start.elapsed();
                // A copy may wait for the next timer when str0m has other work due.
                let late = call.idle(Duration::from_millis(20));
                assert_eq!(
                    sent + late,
                    datagrams.len() * fanout,
                    "every packet forwarded"
                );
                elapsed
            })
        });
    }
    group.finish();

    // The same with the caches cold, as in a running server: between two packets the kernel
    // sends the copies, the receivers (the load tester, on the same cores) read them, and
    // the other connections are served. A 64 MiB sweep between packets (untimed) stands in
    // for that; the difference is what touching each connection's state afresh costs.
    let mut group = c.benchmark_group("forward_packet_cold_caches");
    group.measurement_time(Duration::from_secs(5));
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(10);
    let mut sweep = vec![0u8; 64 << 20];
    for fanout in [1usize, 10, 50] {
        let mut call = InMemoryCall::new(fanout);
        group.throughput(Throughput::Elements(fanout as u64));
        group.bench_with_input(BenchmarkId::from_parameter(fanout), &fanout, |b, _| {
            b.iter_custom(|iters| {
                let datagrams = call.publisher_datagrams(iters as usize);
                let mut elapsed = Duration::ZERO;
                let mut sent = 0;
                for (i, d) in datagrams.iter().enumerate() {
                    for line in sweep.chunks_mut(64) {
                        line[0] = line[0].wrapping_add(i as u8);
                    }
                    std::hint::black_box(&sweep);
                    let start = Instant::now();
                    sent += call.feed(d);
                    elapsed += start.elapsed();
                }
                let late = call.idle(Duration::from_millis(20));
                assert_eq!(
                    sent + late,
                    datagrams.len() * fanout,
                    "every packet forwarded"
                );
                elapsed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, forwarding);
criterion_main!(benches);

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
}

criterion_group!(benches, forwarding);
criterion_main!(benches);

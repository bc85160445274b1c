//! The bandwidth allocator's cost per decision (it runs for every subscriber every 250 ms and
//! on each new estimate): a cart's four tracks, and a larger room with simulcast layers.

use consult_protocol::TrackLabel;
use consult_sfu::allocator::{Allocator, TrackDemand};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn demands(videos: usize, layers: usize) -> Vec<TrackDemand<u32>> {
    let mut t = vec![
        TrackDemand {
            key: 0,
            label: TrackLabel::Stethoscope,
            layers: vec![70_000],
            pinned: false,
            speaking: false,
        },
        TrackDemand {
            key: 1,
            label: TrackLabel::Microphone,
            layers: vec![40_000],
            pinned: false,
            speaking: false,
        },
    ];
    for i in 0..videos {
        let top = 600_000 + 100_000 * i as u64;
        t.push(TrackDemand {
            key: 2 + i as u32,
            label: if i == 0 {
                TrackLabel::Otoscope
            } else {
                TrackLabel::Camera
            },
            layers: (0..layers).map(|l| top >> (2 * (layers - 1 - l))).collect(),
            pinned: false,
            speaking: false,
        });
    }
    t
}

fn allocator(c: &mut Criterion) {
    let mut group = c.benchmark_group("allocate");
    for (name, videos, layers) in [("cart_4_tracks", 2, 1), ("room_10_tracks_3_layers", 8, 3)] {
        let tracks = demands(videos, layers);
        let mut a = Allocator::default();
        let mut now = Instant::now();
        // Estimates moving up and down across the thresholds, as on a poor rural link.
        let estimates = [90_000u64, 250_000, 700_000, 1_500_000, 400_000, 120_000];
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                now += Duration::from_millis(250);
                i = (i + 1) % estimates.len();
                black_box(a.allocate(now, estimates[i], black_box(&tracks)))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, allocator);
criterion_main!(benches);

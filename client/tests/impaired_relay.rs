//! The impaired relay on real sockets: a 100 kbps bottleneck with 50 ms delay carries about
//! 100 kbps of an offered 400 kbps, no packet arrives sooner than the delay, and a step back
//! up to 2 Mbps lets everything through. Functional checks with wide bounds, not benchmarks.

use consult_client::impair::Profile;
use consult_client::relay::LossyRelay;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bottleneck_delay_and_a_step_up() {
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let slow = Profile {
        delay: Duration::from_millis(50),
        ..Profile::rate(100_000, 200)
    };
    let fast = Profile {
        delay: Duration::from_millis(50),
        ..Profile::rate(2_000_000, 200)
    };
    let relay = LossyRelay::start_impaired(
        server.local_addr().unwrap(),
        vec![(Duration::ZERO, slow), (Duration::from_secs(3), fast)],
        vec![(Duration::ZERO, Profile::default())],
        9,
    )
    .await
    .unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let start = Instant::now();
    // 500-byte datagrams every 10 ms (400 kbps) for 5 s, each carrying its send time.
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for i in 0..500u32 {
            tick.tick().await;
            let mut p = vec![0u8; 500];
            p[..4].copy_from_slice(&i.to_be_bytes());
            let sent = start.elapsed().as_micros() as u64;
            p[4..12].copy_from_slice(&sent.to_be_bytes());
            client.send_to(&p, relay.addr()).await.unwrap();
        }
        relay
    });
    let mut got: Vec<(u32, Duration, Duration)> = Vec::new(); // (index, sent, one-way)
    let mut buf = [0u8; 2048];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(7);
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, server.recv_from(&mut buf)).await {
        assert_eq!(n, 500);
        let i = u32::from_be_bytes(buf[..4].try_into().unwrap());
        let sent = Duration::from_micros(u64::from_be_bytes(buf[4..12].try_into().unwrap()));
        got.push((i, sent, start.elapsed() - sent));
    }
    let relay = sender.await.unwrap();
    let (up, _) = relay.link_stats();
    let slow_bytes: usize = got.iter().filter(|g| g.1 < Duration::from_secs(3)).count() * 500;
    let slow_kbps = slow_bytes as f64 * 8.0 / 3.0 / 1000.0;
    let fast_sent = got
        .iter()
        .filter(|g| g.1 >= Duration::from_secs(3) + Duration::from_millis(300))
        .count();
    let min_delay = got.iter().map(|g| g.2).min().unwrap();
    eprintln!(
        "first 3 s at 100 kbps: {slow_kbps:.0} kbps through; then {fast_sent} packets at 2 Mbps; \
         shortest one-way {min_delay:?}; link {up:?}"
    );
    assert!((70.0..=130.0).contains(&slow_kbps), "{slow_kbps} kbps");
    assert!(min_delay >= Duration::from_millis(50), "{min_delay:?}");
    // From 0.3 s after the step (queue drained), everything sent gets through.
    assert!(fast_sent >= 165, "{fast_sent} of ~170");
    assert!(up.dropped_queue > 100, "the bottleneck dropped the excess");
}

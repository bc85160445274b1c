//! The load tester against an in-process server: two small consultations, the physician behind
//! a delaying link. Checks what the report says against what must have happened.

use clap::Parser;
use consult_loadtest::options::Options;
use consult_signaling::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rooms_report_counts_latency_and_server_figures() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let dir = std::env::temp_dir().join(format!("consult-loadtest-{}", std::process::id()));
    let server = consult_signaling::start(Config::for_tests(dir.clone()))
        .await
        .expect("server starts");
    let url = format!("http://{}", server.http_addr);
    let sfu = server.udp_addr.to_string();
    let pid = std::process::id().to_string();
    let options = Options::parse_from([
        "consult-loadtest",
        "--url",
        &url,
        "--rooms",
        "2",
        "--duration",
        "5",
        "--warmup",
        "1.5",
        "--impair",
        "physician",
        "--impair-delay-ms",
        "40",
        "--simulcast",
        "camera",
        "--sfu-addr",
        &sfu,
        "--server-pid",
        &pid,
        "--quiet",
    ]);
    let report = consult_loadtest::run(options).await.expect("run");
    println!("{}", report.table());
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);

    let p = &report.participants;
    assert_eq!(
        (p.planned, p.joined, p.admitted, p.failed),
        (6, 6, 6, 0),
        "{:?}",
        p.errors
    );
    // Everyone but the first physician of each room joins while media flows.
    assert_eq!(report.first_media_ms.n, 4);
    assert!(report.first_media_ms.p50 > 0.0);
    let m = &report.media;
    assert_eq!(m.streams_expected, 32);
    assert_eq!(m.streams_received, 32);
    assert_eq!(m.tracks_published, 16);
    assert_eq!(m.corrupt, 0);
    assert!(m.window_received > 1000, "{}", m.window_received);
    assert!(m.loss_pct < 2.0, "loss {} %", m.loss_pct);
    // The physician's link adds 40 ms each way: its streams and what it receives show it.
    assert!(m.latency_ms.max >= 40.0, "max {}", m.latency_ms.max);
    assert!(m.latency_ms.p50 > 0.0);
    for label in ["camera", "microphone", "otoscope", "stethoscope"] {
        assert!(m.by_label.contains_key(label), "{label} missing");
    }
    // Cameras go out as simulcast: receivers get the top layer (the SFU starts on whichever
    // layer's keyframe comes first, then switches up).
    let cam = &m.by_label["camera"];
    let total: u64 = cam.layer_packets.iter().sum();
    assert!(
        cam.layer_packets[2] * 10 >= total * 9,
        "camera layers {:?}",
        cam.layer_packets
    );
    assert_eq!(m.by_label["otoscope"].layer_packets[1..], [0, 0, 0]);
    let s = &report.server;
    let c = s.counters.as_ref().expect("metrics scraped");
    assert!(c.rtp_forwarded > c.rtp_in, "{c:?}");
    assert!(s.cpu_us_per_forwarded_packet.is_some_and(|v| v > 0.0));
    assert!(s.forward_delay_us_p50.is_some(), "{s:?}");
    assert!(s.rss_mib_max.is_some_and(|r| r > 1.0));
    assert!(!report.timeline.is_empty());
    serde_json::to_string(&report).expect("serialisable");
}

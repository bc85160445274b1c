//! Recorded files as standard tools see them (`ffprobe`, `ffmpeg` from Debian): codec, channels,
//! rate, duration; the Ogg/Opus file decodes to the very samples a direct decode of the RTP
//! payloads gives; a recorder killed mid-recording leaves a readable file. Skipped (with a
//! message) where ffmpeg is not installed.

use consult_recorder::ogg_opus::OggOpusRecorder;
use consult_recorder::sealed::{self, SealedWriter};
use consult_recorder::vp8_ivf::Vp8IvfRecorder;

const KEY: sealed::Key = [0x42; 32];
use std::path::{Path, PathBuf};
use std::process::Command;

fn have_ffmpeg() -> bool {
    let ok = Command::new("ffprobe").arg("-version").output().is_ok()
        && Command::new("ffmpeg").arg("-version").output().is_ok();
    if !ok {
        eprintln!("ffmpeg/ffprobe missing: file checks skipped");
    }
    ok
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("recorder-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// `ffprobe` stream fields and the format duration.
fn probe(path: &Path) -> (String, f64) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries"])
        .arg("stream=codec_name,channels,sample_rate,width,height:format=duration")
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let duration = text
        .lines()
        .find_map(|l| l.strip_prefix("duration="))
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    (text, duration)
}

/// Heart-like test signal: low thumps plus a murmur tone, 48 kHz mono.
fn signal(seconds: f32) -> Vec<f32> {
    let n = (seconds * 48_000.0) as usize;
    (0..n)
        .map(|i| {
            let t = i as f32 / 48_000.0;
            let beat = (t % 0.8) / 0.8;
            let thump = if beat < 0.1 {
                (1.0 - beat * 10.0) * 0.5
            } else {
                0.0
            };
            thump * (2.0 * std::f32::consts::PI * 50.0 * t).sin()
                + 0.05 * (2.0 * std::f32::consts::PI * 300.0 * t).sin()
        })
        .collect()
}

/// 20 ms Opus packets of `pcm` (audio application, as the cart's stethoscope profile).
fn encode(pcm: &[f32]) -> Vec<Vec<u8>> {
    let mut enc =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Audio).unwrap();
    enc.set_bitrate(opus::Bitrate::Bits(64_000)).unwrap();
    pcm.chunks_exact(960)
        .map(|f| enc.encode_vec_float(f, 1500).unwrap())
        .collect()
}

#[test]
fn ogg_opus_is_the_rtp_stream_sample_for_sample() {
    if !have_ffmpeg() {
        return;
    }
    let packets = encode(&signal(10.0));
    let path = tmp("steth.ogg");
    let file = std::fs::File::create(&path).unwrap();
    let mut rec = OggOpusRecorder::new(file, 7, 1, &[("TITLE", "stethoscope")]).unwrap();
    // Sequence numbers and timestamps as the SFU forwards them; two packets swapped, three
    // lost, a random start timestamp near the wrap.
    let ts0 = u32::MAX - 48_000;
    let mut order: Vec<usize> = (0..packets.len()).collect();
    order.swap(200, 201);
    let lost = [100usize, 101, 102];
    for &i in &order {
        if lost.contains(&i) {
            continue;
        }
        rec.push(
            1000 + i as u64,
            ts0.wrapping_add(960 * i as u32),
            &packets[i],
        )
        .unwrap();
    }
    let (_, stats) = rec.finish().unwrap();
    eprintln!("{stats:?}");
    assert_eq!(stats.packets_written, packets.len() as u64 - 3);
    assert_eq!(stats.lost_frames_filled, 3);

    let (info, duration) = probe(&path);
    eprintln!("ffprobe:\n{info}");
    assert!(info.contains("codec_name=opus"), "{info}");
    assert!(info.contains("channels=1"), "{info}");
    assert!(info.contains("sample_rate=48000"), "{info}");
    assert!((duration - 10.0).abs() < 0.1, "duration {duration}");

    // ffmpeg's libopus decode of the file vs libopus on the RTP payloads (PLC for the lost).
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-c:a",
            "libopus",
            "-request_sample_fmt",
            "flt",
            "-i",
        ])
        .arg(&path)
        .args(["-f", "f32le", "-ac", "1", "-ar", "48000", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from_file: Vec<f32> = out
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let mut dec = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let mut direct = Vec::new();
    let mut buf = vec![0f32; 5760];
    for (i, p) in packets.iter().enumerate() {
        let n = if lost.contains(&i) {
            dec.decode_float(&[], &mut buf[..960], false).unwrap()
        } else {
            dec.decode_float(p, &mut buf, false).unwrap()
        };
        direct.extend_from_slice(&buf[..n]);
    }
    eprintln!(
        "decoded: file {} samples, direct {}",
        from_file.len(),
        direct.len()
    );
    assert!(from_file.len() >= direct.len());
    let max_diff = direct
        .iter()
        .zip(&from_file)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("largest sample difference: {max_diff:e}");
    // Same libopus, same packets, float output: identical.
    assert!(max_diff == 0.0, "samples differ by {max_diff}");
}

/// Child side of the kill test: records in real time until killed.
#[test]
#[ignore = "run by recorder_killed_mid_recording_leaves_a_readable_file"]
fn recording_child() {
    let Ok(path) = std::env::var("RECORDER_CHILD_OUT") else {
        return;
    };
    let packets = encode(&signal(30.0));
    // As the server writes recordings: encrypted at rest, sealed chunk by chunk.
    let file = SealedWriter::new(std::fs::File::create(path).unwrap(), &KEY).unwrap();
    let mut rec = OggOpusRecorder::new(file, 9, 1, &[]).unwrap();
    for (i, p) in packets.iter().enumerate() {
        rec.push(i as u64, 960 * i as u32, p).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn recorder_killed_mid_recording_leaves_a_readable_file() {
    if !have_ffmpeg() {
        return;
    }
    let path = tmp("killed.ogg");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "recording_child", "--nocapture"])
        .env("RECORDER_CHILD_OUT", &path)
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(3500));
    child.kill().unwrap(); // SIGKILL: no chance to finish the file
    child.wait().unwrap();
    let opened = sealed::open(std::fs::File::open(&path).unwrap(), &KEY).unwrap();
    assert!(
        !opened.complete,
        "a killed recorder never wrote its last chunk"
    );
    eprintln!("{} sealed chunks recovered", opened.chunks);
    let path = tmp("killed-exported.ogg");
    std::fs::write(&path, &opened.plaintext).unwrap();
    let (info, duration) = probe(&path);
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    eprintln!("killed after 3.5 s: ffprobe duration {duration} s\n{info}");
    assert!(info.contains("codec_name=opus"), "{info}");
    assert!(out.status.success());
    // Pages end every second: at most a second (plus process start-up) is lost.
    assert!(duration >= 1.5, "duration {duration}");
}

/// VP8 frames from ffmpeg's encoder (IVF), packetized into RTP as a browser would.
fn vp8_frames() -> Vec<(Vec<u8>, u64)> {
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=15",
        ])
        .args([
            "-t", "4", "-c:v", "libvpx", "-g", "30", "-b:v", "300k", "-f", "ivf", "-",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let ivf = out.stdout;
    let mut frames = Vec::new();
    let mut i = 32;
    while i + 12 <= ivf.len() {
        let size = u32::from_le_bytes(ivf[i..i + 4].try_into().unwrap()) as usize;
        let pts = u64::from_le_bytes(ivf[i + 4..i + 12].try_into().unwrap());
        frames.push((ivf[i + 12..i + 12 + size].to_vec(), pts));
        i += 12 + size;
    }
    frames
}

#[test]
fn vp8_ivf_plays_in_ffmpeg() {
    if !have_ffmpeg() {
        return;
    }
    let frames = vp8_frames();
    let path = tmp("camera.ivf");
    let mut rec = Vp8IvfRecorder::new(std::fs::File::create(&path).unwrap());
    let mut seq = 5000u64;
    for (frame, pts) in &frames {
        // 15 fps in the IVF time base (1/15 s) → 90 kHz.
        let ts = (*pts * 6000) as u32;
        let chunks: Vec<&[u8]> = frame.chunks(1000).collect();
        for (k, c) in chunks.iter().enumerate() {
            let mut p = vec![if k == 0 { 0x10 } else { 0x00 }];
            p.extend_from_slice(c);
            rec.push(seq, ts, k + 1 == chunks.len(), &p).unwrap();
            seq += 1;
        }
    }
    let (_, stats) = rec.finish().unwrap();
    eprintln!("{stats:?} from {} frames", frames.len());
    assert_eq!(stats.frames_written as usize, frames.len());
    let (info, duration) = probe(&path);
    eprintln!("ffprobe:\n{info}");
    assert!(info.contains("codec_name=vp8"), "{info}");
    assert!(
        info.contains("width=320") && info.contains("height=240"),
        "{info}"
    );
    let decoded = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        decoded.status.success() && decoded.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    assert!((duration - 4.0).abs() < 0.2, "duration {duration}");
}

//! A whole consultation through the real server: physician, patient and nurse (webrtc-rs peers)
//! go through the waiting room, publish Opus + VP8 tracks, and receive each other's media
//! intact through the SFU; a participant left in the waiting room receives nothing.

mod common;

use common::*;
use consult_client::ClientEvent;
use consult_protocol::{ClientMsg, ErrorCode, Role, ServerMsg, TrackKind, TrackLabel};
use std::collections::HashMap;
use std::time::Duration;

const PACKETS: u32 = 250;
const INTERVAL: Duration = Duration::from_millis(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_exchange_labelled_media_after_admission() {
    let srv = start_server().await;
    let room = "room-e2e";
    let mut doc = srv.join(room, "dr-martin", Role::Physician).await;
    assert_eq!(doc.state, consult_protocol::AdmissionState::Admitted);

    let mut pat = srv.join(room, "patient-1", Role::Patient).await;
    let mut nurse = srv.join(room, "ide-1", Role::Companion).await;
    let mut visitor = srv.join(room, "visitor", Role::Patient).await;
    for c in [&pat, &nurse, &visitor] {
        assert_eq!(c.state, consult_protocol::AdmissionState::Waiting);
    }

    // The physician sees the three in the waiting room.
    let waiting = doc
        .wait_for(WAIT, |ev| match ev {
            ClientEvent::Server(ServerMsg::WaitingRoom { waiting }) if waiting.len() == 3 => {
                Some(waiting)
            }
            _ => None,
        })
        .await
        .expect("waiting list");
    assert!(waiting
        .iter()
        .any(|p| p.participant_id == pat.participant_id));

    // A waiting participant cannot publish.
    visitor
        .send(ClientMsg::PublishOffer {
            sdp: "v=0".into(),
            tracks: vec![],
        })
        .unwrap();
    let code = visitor
        .wait_for(WAIT, |ev| match ev {
            ClientEvent::Server(ServerMsg::Error { code, .. }) => Some(code),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(code, ErrorCode::NotAdmitted);

    for id in [&pat.participant_id, &nurse.participant_id] {
        doc.send(ClientMsg::Admit {
            participant_id: id.clone(),
        })
        .unwrap();
    }
    pat.wait_admitted(WAIT).await.unwrap();
    nurse.wait_admitted(WAIT).await.unwrap();

    // Everyone admitted publishes a microphone and a camera.
    let labels = [TrackLabel::Microphone, TrackLabel::Camera];
    let mut senders = Vec::new();
    let ids: Vec<String> = [&doc, &pat, &nurse]
        .iter()
        .map(|c| c.participant_id.clone())
        .collect();
    for (i, c) in [&mut doc, &mut pat, &mut nurse].into_iter().enumerate() {
        let tracks = c.publish(&labels).await.expect("publish");
        for t in tracks {
            senders.push(t.send_synthetic(tag(i as u32, t.label), PACKETS, INTERVAL, 160));
        }
    }

    // Each receives the two others' two tracks, labelled and attributed.
    let mut received = Vec::new();
    for (i, c) in [&mut doc, &mut pat, &mut nurse].into_iter().enumerate() {
        for t in take_tracks(c, 4).await {
            let sender = ids
                .iter()
                .position(|id| *id == t.info.participant_id)
                .expect("track from a known participant");
            assert_ne!(sender, i, "no echo of one's own track");
            assert_eq!(t.info.kind, t.info.label.kind());
            let kind = t.info.kind;
            received.push((i, sender, t.info.label, collect(t, kind)));
        }
    }
    for s in senders {
        assert_eq!(s.await.unwrap(), PACKETS);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut per_receiver: HashMap<usize, Vec<(usize, TrackLabel)>> = HashMap::new();
    for (receiver, sender, label, rx) in &received {
        per_receiver
            .entry(*receiver)
            .or_default()
            .push((*sender, *label));
        let r = rx.lock().unwrap();
        assert_eq!(
            r.corrupt, 0,
            "{receiver}←{sender} {label}: corrupted payloads"
        );
        assert!(
            r.tags.iter().all(|t| *t == tag(*sender as u32, *label)),
            "{receiver}←{sender} {label}: payload of another stream"
        );
        let (got, expected) = r.coverage(PACKETS - 1);
        eprintln!(
            "{receiver}<-{sender} {label}: {got}/{expected} packets since first, {} corrupt",
            r.corrupt
        );
        assert!(
            expected > (PACKETS / 2) as usize,
            "{receiver}←{sender} {label}: media started late ({expected} of {PACKETS})"
        );
        assert!(
            got * 100 >= expected * 99,
            "{receiver}←{sender} {label}: {got} of {expected} packets"
        );
        // Sequence numbers as the subscriber sees them: one continuous stream.
        let jumps = r
            .seqs
            .windows(2)
            .filter(|w| w[1].wrapping_sub(w[0]) != 1)
            .count();
        assert!(
            jumps <= expected - got,
            "{receiver}←{sender} {label}: {jumps} seq jumps"
        );
    }
    for receiver in 0..3 {
        let mut got = per_receiver.remove(&receiver).unwrap_or_default();
        got.sort_by_key(|(s, l)| (*s, *l as u32));
        let mut want: Vec<(usize, TrackLabel)> = (0..3)
            .filter(|s| *s != receiver)
            .flat_map(|s| labels.iter().map(move |l| (s, *l)))
            .collect();
        want.sort_by_key(|(s, l)| (*s, *l as u32));
        assert_eq!(got, want, "receiver {receiver} tracks");
    }

    // The participant left waiting got no media and no media session.
    while let Some(ev) = visitor.next_event(Duration::from_millis(100)).await {
        assert!(
            !matches!(ev, ClientEvent::Track(_)),
            "a non-admitted participant received a track"
        );
    }
    let stats = srv.server.sfu().stats().await.unwrap();
    assert_eq!(
        stats.participants, 3,
        "only admitted participants have media"
    );
    assert!(stats.rtp_forwarded >= u64::from(PACKETS) * 6 * 2 * 95 / 100);

    // The audit trail holds the story.
    let audit = srv.server.state.audit.read(Some(room)).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|r| r.action.as_str()).collect();
    for a in ["join", "admit", "track_published"] {
        assert!(actions.contains(&a), "audit lacks {a}: {actions:?}");
    }
    assert_eq!(actions.iter().filter(|a| **a == "admit").count(), 2);
    assert_eq!(
        actions.iter().filter(|a| **a == "track_published").count(),
        6
    );

    // The physician ends the consultation: everyone is told and media stops.
    doc.send(ClientMsg::EndConsultation).unwrap();
    pat.wait_for(WAIT, |ev| match ev {
        ClientEvent::Server(ServerMsg::ConsultationEnded { .. }) => Some(()),
        _ => None,
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(srv.server.sfu().stats().await.unwrap().participants, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_gets_rebased_stream_and_keyframe_and_leaving_renegotiates() {
    let srv = start_server().await;
    let room = "room-late";
    let mut doc = srv.join(room, "dr-late", Role::Physician).await;
    let mut nurse = srv.join(room, "ide-late", Role::Companion).await;
    doc.send(ClientMsg::Admit {
        participant_id: nurse.participant_id.clone(),
    })
    .unwrap();
    nurse.wait_admitted(WAIT).await.unwrap();
    let tracks = nurse
        .publish(&[TrackLabel::Stethoscope, TrackLabel::Otoscope])
        .await
        .unwrap();
    let otoscope_plis = tracks[1].keyframe_requests.clone();
    let senders: Vec<_> = tracks
        .iter()
        .map(|t| t.send_synthetic(tag(2, t.label), 500, Duration::from_millis(10), 300))
        .collect();
    let doc_tracks = take_tracks(&mut doc, 2).await;
    assert!(doc_tracks
        .iter()
        .all(|t| t.info.label.kind() == t.info.kind));
    drop(doc_tracks);
    let t0 = std::time::Instant::now();
    while otoscope_plis.load(std::sync::atomic::Ordering::Relaxed) == 0 && t0.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("first PLI after {:?}", t0.elapsed());
    let plis_before = otoscope_plis.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "keyframe requests: SFU sent {}, publisher got {plis_before}",
        srv.server
            .sfu()
            .stats()
            .await
            .unwrap()
            .keyframe_requests_sent
    );
    assert!(
        plis_before >= 1,
        "a new subscriber makes the SFU ask for a keyframe"
    );

    // A patient joins two seconds into the stream.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut pat = srv.join(room, "pat-late", Role::Patient).await;
    doc.send(ClientMsg::Admit {
        participant_id: pat.participant_id.clone(),
    })
    .unwrap();
    pat.wait_admitted(WAIT).await.unwrap();
    let pat_tracks = take_tracks(&mut pat, 2).await;
    let mut otoscope = None;
    for t in pat_tracks {
        if t.info.label == TrackLabel::Otoscope {
            otoscope = Some(collect(t, TrackKind::Video));
        }
    }
    let otoscope = otoscope.expect("late joiner gets the otoscope");
    for s in senders {
        s.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        let r = otoscope.lock().unwrap();
        let first_counter = *r
            .counters
            .iter()
            .min()
            .expect("media reached the late joiner");
        let first_seq = r.seqs[0];
        eprintln!("late joiner: first packet #{first_counter} arrived as seq {first_seq}");
        assert!(first_counter > 100, "joined mid-stream");
        assert!(
            first_seq <= 3,
            "sequence numbers rebased for the late joiner ({first_seq})"
        );
        let (got, expected) = r.coverage(499);
        assert_eq!(got, expected);
    }
    let plis_after = otoscope_plis.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        plis_after > plis_before,
        "the late joiner's subscription asked for a keyframe"
    );

    // The nurse leaves: everyone is told, her media session goes, and the others renegotiate.
    nurse.leave().await;
    for c in [&mut doc, &mut pat] {
        let reason = c
            .wait_for(WAIT, |ev| match ev {
                ClientEvent::Server(ServerMsg::ParticipantLeft { reason, .. }) => Some(reason),
                _ => None,
            })
            .await
            .unwrap();
        assert_eq!(reason, consult_protocol::LeaveReason::Left);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(srv.server.sfu().stats().await.unwrap().participants, 2);
    // The subscriber connections went through that renegotiation: new media still arrives.
    let mic = pat.publish(&[TrackLabel::Microphone]).await.unwrap();
    let sender = mic[0].send_synthetic(
        tag(3, TrackLabel::Microphone),
        100,
        Duration::from_millis(20),
        120,
    );
    let t = take_tracks(&mut doc, 1).await.remove(0);
    assert_eq!(t.info.participant_id, pat.participant_id);
    let rx = collect(t, TrackKind::Audio);
    sender.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (got, expected) = rx.lock().unwrap().coverage(99);
    assert!(
        got * 100 >= expected * 99 && expected >= 50,
        "{got}/{expected}"
    );
}

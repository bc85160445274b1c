//! The same synthetic participants against Janus's VideoRoom plugin (Janus 1.x WebSocket API),
//! so that an established SFU and ours are measured by one load tester on one machine with the
//! same media, the same webrtc-rs peers and the same report (`--janus-ws`).
//!
//! Mapping: a room is a VideoRoom room (created on demand, not permanent); every participant
//! joins it as a publisher (to learn who publishes), publishes its tracks on that handle, and
//! subscribes to each other publisher's feed on a handle and peer connection of its own (our
//! SFU uses one subscriber connection per participant; for a fan-out from one publisher the
//! two are the same). Janus has no waiting room: "admitted" is "joined".

use crate::participant::{
    impaired_profile, read_track, start_senders, Outcome, RoomShared, RunContext, Seat,
};
use anyhow::{anyhow, bail, Context};
use consult_client::impair::Profile;
use consult_client::relay::LossyRelay;
use consult_client::webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use consult_client::webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use consult_client::webrtc::peer_connection::RTCPeerConnection;
use consult_client::webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use consult_client::webrtc::track::track_remote::TrackRemote;
use consult_protocol::{Role, TrackKind, TrackLabel};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// How long one request may take before the participant gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Janus drops a session after 60 s without a request.
const KEEPALIVE: Duration = Duration::from_secs(15);

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;
type HandleEvents = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Value>>>>;

/// One Janus session over its own WebSocket.
struct Session {
    out: mpsc::UnboundedSender<String>,
    pending: Pending,
    events: HandleEvents,
    id: u64,
    next_transaction: AtomicU64,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Closing the WebSocket ends the session and its handles in Janus.
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Session {
    async fn connect(url: &str) -> anyhow::Result<Session> {
        let mut request = url.into_client_request()?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "janus-protocol".parse().context("header")?,
        );
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .with_context(|| format!("connecting to Janus at {url}"))?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        let pending: Pending = Arc::default();
        let events: HandleEvents = Arc::default();
        let writer = tokio::spawn(async move {
            while let Some(text) = out_rx.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
        });
        let (p, e) = (pending.clone(), events.clone());
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    tracing::warn!("Janus sent something that is not JSON");
                    continue;
                };
                dispatch(&p, &e, v);
            }
        });
        let mut s = Session {
            out,
            pending,
            events,
            id: 0,
            next_transaction: AtomicU64::new(1),
            tasks: vec![writer, reader],
        };
        let created = s.request(json!({"janus": "create"})).await?;
        s.id = created["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no session id in {created}"))?;
        let (out, id) = (s.out.clone(), s.id);
        s.tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(KEEPALIVE);
            tick.tick().await;
            loop {
                tick.tick().await;
                let ka = json!({"janus": "keepalive", "session_id": id, "transaction": "ka"});
                if out.send(ka.to_string()).is_err() {
                    break;
                }
            }
        }));
        Ok(s)
    }

    /// Send a request and wait for its first reply that is not an acknowledgement.
    async fn request(&self, mut body: Value) -> anyhow::Result<Value> {
        let transaction = format!("t{}", self.next_transaction.fetch_add(1, Ordering::Relaxed));
        body["transaction"] = json!(transaction);
        if self.id != 0 {
            body["session_id"] = json!(self.id);
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(transaction.clone(), tx);
        self.out
            .send(body.to_string())
            .map_err(|_| anyhow!("Janus connection closed"))?;
        let reply = tokio::time::timeout(REQUEST_TIMEOUT, rx)
            .await
            .map_err(|_| {
                lock(&self.pending).remove(&transaction);
                anyhow!("Janus did not answer {body} in time")
            })?
            .map_err(|_| anyhow!("Janus connection closed"))?;
        if reply["janus"] == "error" {
            bail!("Janus error: {}", reply["error"]);
        }
        Ok(reply)
    }

    async fn attach(&self) -> anyhow::Result<Handle> {
        let r = self
            .request(json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}))
            .await?;
        let id = r["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no handle id in {r}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.events).insert(id, tx);
        Ok(Handle { id, events: rx })
    }

    /// A VideoRoom request on a handle; returns the plugin's data and the JSEP, if any. A
    /// VideoRoom error is an error.
    async fn message(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> anyhow::Result<(Value, Option<Value>)> {
        let mut m = json!({"janus": "message", "handle_id": handle, "body": body});
        if let Some(j) = jsep {
            m["jsep"] = j;
        }
        let reply = self.request(m).await?;
        let data = reply["plugindata"]["data"].clone();
        if let Some(code) = data["error_code"].as_u64() {
            return Err(VideoRoomError {
                code,
                reason: data["error"].to_string(),
            }
            .into());
        }
        let jsep = reply.get("jsep").cloned();
        Ok((data, jsep))
    }
}

/// An error the VideoRoom plugin answered with.
#[derive(Debug)]
struct VideoRoomError {
    code: u64,
    reason: String,
}

impl std::fmt::Display for VideoRoomError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VideoRoom error {}: {}", self.code, self.reason)
    }
}

impl std::error::Error for VideoRoomError {}

/// VideoRoom's code for "room already exists".
const ROOM_EXISTS: u64 = 427;

/// The SDP of a JSEP object, if any.
fn sdp_of(jsep: Option<Value>) -> Option<String> {
    jsep.and_then(|j| j["sdp"].as_str().map(str::to_owned))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A reply goes to the request waiting for its transaction; anything else (a new publisher,
/// media and hangup notices) to its handle's queue.
fn dispatch(pending: &Pending, events: &HandleEvents, v: Value) {
    if v["janus"] == "ack" {
        return;
    }
    if let Some(t) = v["transaction"].as_str() {
        if let Some(waiter) = lock(pending).remove(t) {
            let _ = waiter.send(v);
            return;
        }
    }
    if let Some(sender) = v["sender"].as_u64() {
        if let Some(q) = lock(events).get(&sender) {
            let _ = q.send(v);
        }
    }
}

struct Handle {
    id: u64,
    events: mpsc::UnboundedReceiver<Value>,
}

/// A publisher in the room, as Janus lists it.
struct Feed {
    id: u64,
    display: String,
}

fn feeds(list: &Value) -> Vec<Feed> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    Some(Feed {
                        id: p["id"].as_u64()?,
                        display: p["display"].as_str().unwrap_or_default().to_owned(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The room of a run: unique per load-tester process, so that runs against one Janus do not
/// meet.
fn room_id(room: usize) -> u64 {
    (u64::from(std::process::id()) << 20) + room as u64 + 1
}

fn role_of(display: &str) -> Role {
    match display.split('-').next() {
        Some("physician") => Role::Physician,
        Some("companion") => Role::Companion,
        _ => Role::Patient,
    }
}

/// Run one participant against Janus to the end of the run.
pub async fn drive(
    ctx: &Arc<RunContext>,
    room: &RoomShared,
    seat: &Seat,
    url: &str,
    ready: oneshot::Sender<()>,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let o = &ctx.options;
    let impaired = o
        .impair
        .filter(|f| f.matches(seat.role))
        .map(|_| impaired_profile(o));
    // Impaired links relay each of this participant's connections (kept to the end).
    let mut relays: Vec<LossyRelay> = Vec::new();
    let started = Instant::now();
    let session = Session::connect(url).await?;
    let mut own = session.attach().await?;
    let room_id = room_id(seat.room);
    let create = json!({
        "request": "create", "room": room_id, "permanent": false, "publishers": 200,
        "bitrate": 0, "audiocodec": "opus", "videocodec": "vp8", "notify_joining": false,
    });
    match session.message(own.id, create, None).await {
        Ok(_) => {}
        // Created by another participant of the room in the meantime.
        Err(e)
            if e.downcast_ref::<VideoRoomError>()
                .is_some_and(|v| v.code == ROOM_EXISTS) => {}
        Err(e) => return Err(e),
    }
    let who = format!("{}-{}", seat.role.as_str(), seat.index);
    let (joined, _) = session
        .message(
            own.id,
            json!({"request": "join", "ptype": "publisher", "room": room_id, "display": who.clone()}),
            None,
        )
        .await?;
    let joined_at = Instant::now();
    out.join_ms = Some(ms(joined_at - started));
    out.admit_ms = Some(0.0);
    ctx.progress.joined.fetch_add(1, Ordering::Relaxed);
    ctx.progress.admitted.fetch_add(1, Ordering::Relaxed);
    let media_flowing = room.media_since.get().is_some_and(|t| *t <= joined_at);

    let labels = o.tracks_of(seat.role).to_vec();
    let mut senders: Vec<(TrackLabel, JoinHandle<u64>)> = Vec::new();
    let mut connections: Vec<Arc<RTCPeerConnection>> = Vec::new();
    if !labels.is_empty() {
        let pc = consult_client::new_peer_connection(false, None, false).await?;
        let mut tracks = Vec::new();
        for l in &labels {
            tracks.push(consult_client::add_local_track(&pc, *l, false, false).await?);
        }
        let mut sdp = consult_client::offer(&pc, None).await?;
        if impaired.is_some() {
            sdp = strip_candidates(&sdp);
        }
        let (_, jsep) = session
            .message(
                own.id,
                json!({"request": "publish", "audio": true, "video": true}),
                Some(json!({"type": "offer", "sdp": sdp})),
            )
            .await?;
        let mut answer =
            sdp_of(jsep).ok_or_else(|| anyhow!("Janus answered the publication without SDP"))?;
        if let Some(profile) = impaired {
            let relay = impair(&answer, profile, seat.index).await?;
            answer = consult_client::rewrite_candidates(&answer, Some(relay.addr()));
            relays.push(relay);
        }
        pc.set_remote_description(RTCSessionDescription::answer(answer)?)
            .await?;
        senders = start_senders(ctx, seat, tracks);
        connections.push(pc);
        let _ = room.media_since.set(Instant::now());
    }
    let _ = ready.send(());

    // Subscribe to every publisher already there, then to each one announced later.
    let (track_tx, mut track_rx) = mpsc::unbounded_channel();
    let mut subscribed: HashSet<u64> = HashSet::new();
    let mut to_subscribe = feeds(&joined["publishers"]);
    let mut receivers: Vec<JoinHandle<crate::receive::TrackStats>> = Vec::new();
    let deadline = tokio::time::Instant::from_std(ctx.receive_end);
    loop {
        for feed in to_subscribe.drain(..) {
            if !subscribed.insert(feed.id) {
                continue;
            }
            let (pc, relay) = subscribe(
                &session,
                room_id,
                &feed,
                ctx,
                impaired,
                seat.index,
                track_tx.clone(),
            )
            .await
            .with_context(|| format!("subscribing to {}", feed.display))?;
            relays.extend(relay);
            connections.push(pc);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            ev = own.events.recv() => {
                let Some(ev) = ev else { bail!("Janus connection closed") };
                tracing::debug!(participant = %who, "Janus event: {ev}");
                let data = &ev["plugindata"]["data"];
                to_subscribe.extend(feeds(&data["publishers"]));
            }
            t = track_rx.recv() => {
                if let Some((track, label, kind, from)) = t {
                    ctx.progress.tracks_received.fetch_add(1, Ordering::Relaxed);
                    receivers.push(read_track(ctx.clone(), track, label, kind, from));
                }
            }
        }
    }
    for (label, h) in senders {
        out.sent.push((label, h.await.unwrap_or(0)));
    }
    for r in receivers {
        if let Ok(stats) = r.await {
            out.received.push(stats);
        }
    }
    if media_flowing {
        if let Some(first) = out.received.iter().filter_map(|s| s.first_at).min() {
            out.first_media_ms = Some(ms(first.saturating_duration_since(joined_at)));
            out.connect_to_media_ms = Some(ms(first.saturating_duration_since(started)));
        }
    }
    for pc in connections {
        let _ = pc.close().await;
    }
    drop(relays);
    Ok(())
}

type TrackSender = mpsc::UnboundedSender<(Arc<TrackRemote>, TrackLabel, TrackKind, Role)>;

/// Subscribe to one publisher's feed on a handle and connection of its own.
async fn subscribe(
    session: &Session,
    room_id: u64,
    feed: &Feed,
    ctx: &Arc<RunContext>,
    impaired: Option<Profile>,
    seed: u32,
    tracks: TrackSender,
) -> anyhow::Result<(Arc<RTCPeerConnection>, Option<LossyRelay>)> {
    let handle = session.attach().await?;
    let (attached, jsep) = session
        .message(
            handle.id,
            json!({"request": "join", "ptype": "subscriber", "room": room_id,
                   "streams": [{"feed": feed.id}]}),
            None,
        )
        .await?;
    let mut offer = sdp_of(jsep).ok_or_else(|| anyhow!("Janus sent no subscriber offer"))?;
    let relay = match impaired {
        Some(profile) => {
            let relay = impair(&offer, profile, seed).await?;
            offer = consult_client::rewrite_candidates(&offer, Some(relay.addr()));
            Some(relay)
        }
        None => None,
    };
    // Our mid → what the publisher sent on its mid (its labels in order, by its role).
    let from = role_of(&feed.display);
    let published = ctx.options.tracks_of(from).to_vec();
    let mut by_mid: HashMap<String, TrackLabel> = HashMap::new();
    for s in attached["streams"].as_array().into_iter().flatten() {
        let (Some(mid), Some(feed_mid)) = (s["mid"].as_str(), s["feed_mid"].as_str()) else {
            continue;
        };
        if let Some(label) = feed_mid
            .parse::<usize>()
            .ok()
            .and_then(|i| published.get(i))
        {
            by_mid.insert(mid.to_owned(), *label);
        }
    }
    let pc = consult_client::new_peer_connection(false, None, false).await?;
    pc.on_track(Box::new(move |track, _receiver, transceiver| {
        let label = transceiver
            .mid()
            .and_then(|m| by_mid.get(m.as_str()).copied());
        let kind = match track.kind() {
            RTPCodecType::Audio => TrackKind::Audio,
            _ => TrackKind::Video,
        };
        match label {
            Some(label) => {
                let _ = tracks.send((track, label, kind, from));
            }
            None => tracing::warn!("Janus sent a track on an m-line it did not describe"),
        }
        Box::pin(async {})
    }));
    // Janus trickles its own candidates after the offer (half-trickle): add them as they come.
    let Handle { id, mut events } = handle;
    let trickled = pc.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if ev["janus"] != "trickle" {
                continue;
            }
            let c = &ev["candidate"];
            let Some(candidate) = c["candidate"].as_str() else {
                continue; // {"completed": true}
            };
            if impaired.is_some() {
                continue; // Janus is reached through the relay only.
            }
            let init = RTCIceCandidateInit {
                candidate: candidate.to_owned(),
                sdp_mid: c["sdpMid"].as_str().map(str::to_owned),
                sdp_mline_index: c["sdpMLineIndex"].as_u64().map(|i| i as u16),
                username_fragment: None,
            };
            if let Err(e) = trickled.add_ice_candidate(init).await {
                tracing::debug!("Janus candidate refused: {e}");
            }
        }
    });
    let feed_name = feed.display.clone();
    pc.on_ice_connection_state_change(Box::new(move |st| {
        tracing::debug!(feed = %feed_name, "subscriber ICE {st}");
        Box::pin(async {})
    }));
    let mut answer = consult_client::answer(&pc, offer).await?;
    if relay.is_some() {
        answer = strip_candidates(&answer);
    }
    session
        .message(
            id,
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": answer})),
        )
        .await?;
    Ok((pc, relay))
}

/// Janus's address in an SDP of its own (its first IPv4 UDP candidate).
fn janus_addr(sdp: &str) -> Option<std::net::SocketAddr> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .find_map(|c| {
            let f: Vec<&str> = c.split_whitespace().collect();
            match f.as_slice() {
                [_, _, proto, _, ip, port, ..] if proto.eq_ignore_ascii_case("udp") => {
                    format!("{ip}:{port}")
                        .parse()
                        .ok()
                        .filter(|a: &std::net::SocketAddr| a.is_ipv4())
                }
                _ => None,
            }
        })
}

/// An impaired link in front of the Janus connection this SDP describes.
async fn impair(sdp: &str, profile: Profile, seed: u32) -> anyhow::Result<LossyRelay> {
    let to = janus_addr(sdp).ok_or_else(|| anyhow!("no Janus candidate to relay to"))?;
    Ok(LossyRelay::start_impaired(
        to,
        vec![(Duration::ZERO, profile)],
        vec![(Duration::ZERO, profile)],
        u64::from(seed),
    )
    .await?)
}

/// Our SDP without candidates: Janus (full ICE) would otherwise check our host candidates
/// directly and could pick that path around the impaired link; without them it learns our
/// address from our checks, which come through the relay.
fn strip_candidates(sdp: &str) -> String {
    sdp.split_inclusive('\n')
        .filter(|l| !l.starts_with("a=candidate:"))
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_go_to_their_request_and_notices_to_their_handle() {
        let pending: Pending = Arc::default();
        let events: HandleEvents = Arc::default();
        let (reply_tx, mut reply_rx) = oneshot::channel();
        lock(&pending).insert("t1".into(), reply_tx);
        let (handle_tx, mut handle_rx) = mpsc::unbounded_channel();
        lock(&events).insert(42, handle_tx);

        // An acknowledgement is not the reply: the request keeps waiting.
        dispatch(
            &pending,
            &events,
            json!({"janus": "ack", "transaction": "t1"}),
        );
        assert!(reply_rx.try_recv().is_err());
        // A publisher announced to handle 42, with no transaction of ours.
        let notice = json!({"janus": "event", "sender": 42,
            "plugindata": {"data": {"videoroom": "event", "publishers": [{"id": 7, "display": "companion-3"}]}}});
        dispatch(&pending, &events, notice.clone());
        // The reply to t1 (an event that carries its transaction), then a stray one.
        let reply = json!({"janus": "event", "sender": 42, "transaction": "t1",
            "plugindata": {"data": {"videoroom": "joined"}}});
        dispatch(&pending, &events, reply.clone());
        dispatch(&pending, &events, json!({"janus": "event", "sender": 9}));

        assert_eq!(reply_rx.try_recv().ok(), Some(reply));
        assert!(lock(&pending).is_empty());
        assert_eq!(handle_rx.try_recv().ok(), Some(notice.clone()));
        assert!(handle_rx.try_recv().is_err());
        let announced = feeds(&notice["plugindata"]["data"]["publishers"]);
        assert_eq!(announced.len(), 1);
        assert_eq!(
            (announced[0].id, role_of(&announced[0].display)),
            (7, Role::Companion)
        );
    }

    #[test]
    fn malformed_publisher_lists_yield_what_is_usable() {
        assert!(feeds(&Value::Null).is_empty());
        let list = json!([{"id": "x"}, {"display": "patient-1"}, {"id": 5}]);
        let f = feeds(&list);
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].id, role_of(&f[0].display)), (5, Role::Patient));
        assert_eq!(role_of("physician-0"), Role::Physician);
    }
}

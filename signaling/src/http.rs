//! HTTP API: token minting, consultation creation with join links, audit trail, health.

use crate::server::AppState;
use crate::token::{unix_now, Grant};
use crate::ws::run_session;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use consult_protocol::{
    ApiError, ConsultationCreated, CreateConsultation, ErrorCode, Invitee, JoinLink, Role,
    ServerMsg, StillInfo, StillUploadRequest, StillUploadStatus, TokenClaims, TokenRequest,
    TokenResponse,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;

/// Largest chunk of a still upload in one request.
const MAX_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Longest token lifetime the API mints.
const MAX_TTL_SECS: u64 = 7 * 24 * 3600;
/// Transport-level WebSocket limit; the protocol's own (smaller) limit answers with an error.
const WS_TRANSPORT_LIMIT: usize = 1024 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route(
            "/app.js",
            get(|| asset("text/javascript", include_str!("../../web-client/app.js"))),
        )
        .route(
            "/protocol.js",
            get(|| {
                asset(
                    "text/javascript",
                    include_str!("../../web-client/protocol.js"),
                )
            }),
        )
        .route(
            "/i18n.js",
            get(|| asset("text/javascript", include_str!("../../web-client/i18n.js"))),
        )
        .route(
            "/style.css",
            get(|| asset("text/css", include_str!("../../web-client/style.css"))),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/ws", get(ws_upgrade))
        .route("/api/tokens", post(mint_token))
        .route("/api/consultations", post(create_consultation))
        .route("/api/revocations", post(revoke))
        .route("/api/audit", get(read_audit))
        .route(
            "/api/consultations/{room}/summary",
            get(consultation_summary),
        )
        .route("/api/stills", post(begin_still).get(list_stills))
        .route(
            "/api/stills/uploads/{id}",
            get(still_upload_status)
                .put(append_still)
                .layer(DefaultBodyLimit::max(MAX_CHUNK_BYTES)),
        )
        .route("/api/stills/{id}", get(get_still))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit_auth_failures,
        ))
        .layer(axum::middleware::from_fn_with_state(
            crate::security_headers::Policy {
                // A real certificate: the generated development one would pin browsers to
                // HTTPS on a developer's machine.
                hsts: !state.config.insecure_http && state.config.tls_cert.is_some(),
            },
            crate::security_headers::add,
        ))
        .with_state(state)
}

/// An error response with a JSON body.
pub struct HttpError(StatusCode, ErrorCode, String);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = ApiError {
            code: self.1,
            message: self.2,
        };
        (self.0, Json(body)).into_response()
    }
}

fn err(status: StatusCode, code: ErrorCode, msg: impl Into<String>) -> HttpError {
    HttpError(status, code, msg.into())
}

async fn index() -> Html<&'static str> {
    Html(include_str!("../../web-client/index.html"))
}

/// A web client file, embedded in the binary so the server needs nothing beside it.
async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn ws_upgrade(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.max_message_size(WS_TRANSPORT_LIMIT)
        .max_frame_size(WS_TRANSPORT_LIMIT)
        .on_upgrade(move |socket| run_session(state, socket, peer.ip()))
}

/// Wrong credentials are limited per address and per API key (`rate_limit`): an address or
/// key that ran out is answered 429 with Retry-After before anything is checked; every 401
/// spends from both. (A WebSocket's bad token is counted by the session: its answer is a 101.)
async fn limit_auth_failures(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let ip = peer.ip();
    let key = api_key_of(request.headers());
    let now = std::time::Instant::now();
    let refused = state.with_limits(|l| {
        let by_address = l.auth_by_address.check(&ip, now).err();
        let by_key = key.as_ref().and_then(|k| l.auth_by_key.check(k, now).err());
        by_address.max(by_key)
    });
    if let Some(retry) = refused {
        return too_many_attempts(retry);
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        let (by_address, by_key) = state.with_limits(|l| {
            let a = l.auth_by_address.spend(&ip, now);
            let k = key.as_ref().and_then(|k| l.auth_by_key.spend(k, now));
            (a, k)
        });
        if let Some(b) = by_address {
            state.audit_burst("", "auth_failures_by_address", &ip.to_string(), b.refused);
        }
        if let Some(b) = by_key {
            state.audit_burst("", "auth_failures_by_key", &b.key, b.refused);
        }
    }
    response
}

/// The API key of a `Basic` Authorization header, if any.
fn api_key_of(headers: &HeaderMap) -> Option<String> {
    use base64::Engine as _;
    let b64 = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let key = text.split_once(':')?.0;
    // Bounded: a key is an identifier, not a place to store megabytes.
    (!key.is_empty() && key.len() <= 128).then(|| key.to_owned())
}

/// 429 with Retry-After (whole seconds, rounded up).
pub fn too_many_attempts(retry: std::time::Duration) -> Response {
    let secs = crate::rate_limit::whole_secs(retry);
    let mut r = err(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::RateLimited,
        format!("too many failed attempts: try again in {secs} s"),
    )
    .into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// Who is calling the API.
enum Caller {
    /// Holder of the API key and secret (a scheduling system, an operator).
    Api,
    /// Holder of an access token.
    Token(TokenClaims),
}

fn digest(s: &[u8]) -> [u8; 32] {
    Sha256::digest(s).into()
}

fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, HttpError> {
    let unauthorized = || {
        err(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "send Basic <api key:secret> or Bearer <access token>",
        )
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthorized)?;
    if let Some(b64) = value.strip_prefix("Basic ") {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| unauthorized())?;
        let expected = format!("{}:{}", state.config.api_key, state.config.api_secret);
        // Compare digests so the comparison time does not depend on the secret's prefix.
        if digest(&decoded) == digest(expected.as_bytes()) {
            return Ok(Caller::Api);
        }
        return Err(unauthorized());
    }
    if let Some(token) = value.strip_prefix("Bearer ") {
        let claims = state.tokens.verify(token.trim()).map_err(|e| {
            err(
                StatusCode::UNAUTHORIZED,
                e.code(),
                "the access token is invalid or expired",
            )
        })?;
        if state.is_revoked(&claims) {
            return Err(err(
                StatusCode::UNAUTHORIZED,
                ErrorCode::BadToken,
                "the access token was revoked",
            ));
        }
        return Ok(Caller::Token(claims));
    }
    Err(unauthorized())
}

/// Revoke tokens (API key and secret only): `{"identity": …}` for every token of that
/// identity issued so far, or `{"token_id": …}` for one token; `reason` is kept in the trail.
/// Durable (the trail is read back at a restart); live sessions holding such a token end.
async fn revoke(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, HttpError> {
    if let Caller::Token(_) = authenticate(&state, &headers)? {
        return Err(err(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "revoking tokens needs the API key and secret",
        ));
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Request {
        identity: Option<String>,
        token_id: Option<String>,
        reason: Option<String>,
    }
    let req: Request = parse_body(&body)?;
    let reason = req.reason.unwrap_or_default();
    if reason.len() > 200 {
        return Err(err(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "reason must be at most 200 characters",
        ));
    }
    let now = unix_now();
    let (revoke, detail) = match (req.identity, req.token_id) {
        (Some(identity), None) => {
            check_text("identity", &identity)?;
            let detail =
                serde_json::json!({"identity": identity, "revoked_at": now, "reason": reason});
            (
                crate::revocation::Revoke::Identity { identity, at: now },
                detail,
            )
        }
        (None, Some(token_id)) => {
            check_text("token_id", &token_id)?;
            let detail =
                serde_json::json!({"token_id": token_id, "revoked_at": now, "reason": reason});
            (crate::revocation::Revoke::Token { token_id }, detail)
        }
        _ => {
            return Err(err(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "give one of identity or token_id",
            ))
        }
    };
    // Written to the trail first: a revocation is kept across restarts by it.
    state
        .audit
        .record("", None, "token_revoked", None, detail.clone());
    state.audit.ping().await.map_err(|e| {
        err(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        )
    })?;
    state.revoke(revoke);
    Ok(Json(detail))
}

fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, HttpError> {
    serde_json::from_slice(body).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            ErrorCode::BadJson
        } else {
            ErrorCode::BadRequest
        };
        err(StatusCode::BAD_REQUEST, code, e.to_string())
    })
}

fn check_ttl(state: &AppState, ttl: Option<u64>) -> Result<u64, HttpError> {
    let max = MAX_TTL_SECS.min(state.tokens.max_lifetime_secs());
    let ttl = ttl.unwrap_or(state.config.token_ttl_secs.min(max));
    if ttl == 0 || ttl > max {
        return Err(err(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            format!("ttl_secs must be between 1 and {max}"),
        ));
    }
    Ok(ttl)
}

fn check_text(field: &str, value: &str) -> Result<(), HttpError> {
    if value.trim().is_empty() || value.len() > 200 {
        return Err(err(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            format!("{field} must be 1 to 200 characters"),
        ));
    }
    Ok(())
}

async fn mint_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<TokenResponse>, HttpError> {
    match authenticate(&state, &headers)? {
        Caller::Api => {}
        Caller::Token(_) => {
            return Err(err(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "minting tokens needs the API key and secret",
            ))
        }
    }
    let req: TokenRequest = parse_body(&body)?;
    check_text("room", &req.room)?;
    check_text("identity", &req.identity)?;
    check_text("name", &req.name)?;
    let ttl = check_ttl(&state, req.ttl_secs)?;
    let (token, expires_at) = state.tokens.mint(
        &Grant {
            room: &req.room,
            identity: &req.identity,
            name: &req.name,
            role: req.role,
            companion_kind: req.companion_kind,
        },
        unix_now(),
        ttl,
    );
    Ok(Json(TokenResponse { token, expires_at }))
}

async fn create_consultation(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ConsultationCreated>, HttpError> {
    let caller = authenticate(&state, &headers)?;
    let req: CreateConsultation = parse_body(&body)?;
    let physician = match (&caller, req.physician) {
        (Caller::Token(c), _) if c.role != Role::Physician => {
            return Err(err(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "only a physician (or the API secret) creates consultations",
            ))
        }
        (Caller::Token(c), None) => Invitee {
            identity: c.sub.clone(),
            name: c.name.clone(),
            companion_kind: None,
        },
        // A physician's token creates consultations as that physician only (it would
        // otherwise mint tokens for any physician).
        (Caller::Token(c), Some(p)) if p.identity != c.sub => {
            return Err(err(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "a physician's token creates consultations as that physician only",
            ))
        }
        (_, Some(p)) => p,
        (Caller::Api, None) => {
            return Err(err(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "physician is required",
            ))
        }
    };
    let now = unix_now();
    let mut ttl = check_ttl(&state, req.ttl_secs)?;
    // What a token mints expires no later than that token: it cannot renew itself.
    if let Caller::Token(c) = &caller {
        ttl = ttl.min(c.exp.saturating_sub(now)).max(1);
    }
    let room = format!("c{:016x}", rand::random::<u64>());
    let mut invitees = vec![(Role::Physician, physician), (Role::Patient, req.patient)];
    if let Some(c) = req.companion {
        invitees.push((Role::Companion, c));
    }
    let mut links = Vec::new();
    let mut expires_at = now + ttl;
    for (role, who) in invitees {
        check_text("identity", &who.identity)?;
        check_text("name", &who.name)?;
        let (token, exp) = state.tokens.mint(
            &Grant {
                room: &room,
                identity: &who.identity,
                name: &who.name,
                role,
                companion_kind: who.companion_kind.filter(|_| role == Role::Companion),
            },
            now,
            ttl,
        );
        expires_at = exp;
        links.push(JoinLink {
            role,
            identity: who.identity,
            name: who.name,
            url: format!("{}/?token={token}", state.base_url),
            token,
        });
    }
    let by = match &caller {
        Caller::Api => None,
        Caller::Token(c) => Some(c.sub.as_str()),
    };
    state.audit.record(
        &room,
        by,
        "consultation_created",
        None,
        serde_json::json!({
            "participants": links.iter().map(|l| serde_json::json!({"role": l.role, "identity": l.identity})).collect::<Vec<_>>(),
            "expires_at": expires_at,
        }),
    );
    Ok(Json(ConsultationCreated {
        room,
        expires_at,
        links,
    }))
}

#[derive(Deserialize)]
struct AuditQuery {
    room: Option<String>,
}

/// Ready when the media plane answers and the audit trail is being written: a consultation
/// must not start where its trail cannot be kept.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let wait = std::time::Duration::from_secs(2);
    let sfu = tokio::time::timeout(wait, state.hub.sfu().stats()).await;
    let audit = tokio::time::timeout(wait, state.audit.ping()).await;
    let mut problems = Vec::new();
    if !matches!(sfu, Ok(Ok(_))) {
        problems.push("media plane not answering");
    }
    if !matches!(audit, Ok(Ok(()))) {
        problems.push("audit trail not being written");
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("; ")).into_response()
    }
}

/// Prometheus metrics; with the API key (`Basic`), as they name rooms and participants.
async fn metrics(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    if !matches!(authenticate(&state, &headers)?, Caller::Api) {
        return Err(err(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "metrics need the API key",
        ));
    }
    let text = state.metrics.render(&state).await.map_err(|e| {
        err(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        )
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The consultation's summary (participants, incidents, stills) for the physician's report:
/// with the API key, or a physician token of that room.
async fn consultation_summary(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(room): axum::extract::Path<String>,
) -> Result<Response, HttpError> {
    match authenticate(&state, &headers)? {
        Caller::Api => {}
        Caller::Token(c) if c.role == Role::Physician && c.room == room => {}
        Caller::Token(_) => {
            return Err(err(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "a physician of this consultation, or the API key, reads its summary",
            ))
        }
    }
    let records = state.audit.read(Some(&room)).await.map_err(|e| {
        err(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        )
    })?;
    if records.is_empty() {
        return Err(err(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such consultation",
        ));
    }
    Ok(Json(crate::summary::summarize(&room, &records)).into_response())
}

async fn read_audit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Response, HttpError> {
    match authenticate(&state, &headers)? {
        Caller::Api => {}
        Caller::Token(c) => {
            if c.role != Role::Physician {
                return Err(err(
                    StatusCode::FORBIDDEN,
                    ErrorCode::Forbidden,
                    "only physicians read the audit trail",
                ));
            }
            if q.room.as_deref() != Some(c.room.as_str()) {
                return Err(err(
                    StatusCode::FORBIDDEN,
                    ErrorCode::WrongRoom,
                    "a token reads the audit trail of its own consultation only",
                ));
            }
        }
    }
    let records = state.audit.read(q.room.as_deref()).await.map_err(|e| {
        err(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        )
    })?;
    Ok(Json(records).into_response())
}

impl From<crate::stills::StillError> for HttpError {
    fn from(e: crate::stills::StillError) -> Self {
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        HttpError(status, e.code, e.message)
    }
}

/// The caller's access token (stills are per participant).
fn token_caller(state: &AppState, headers: &HeaderMap) -> Result<TokenClaims, HttpError> {
    match authenticate(state, headers)? {
        Caller::Token(c) => Ok(c),
        Caller::Api => Err(err(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "uploads are made with a participant's access token",
        )),
    }
}

/// The room a reader may see stills of: a physician's own, or any with the API secret.
fn still_reader_room(
    state: &AppState,
    headers: &HeaderMap,
    room: Option<String>,
) -> Result<String, HttpError> {
    match authenticate(state, headers)? {
        Caller::Api => room.ok_or_else(|| {
            err(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "room is required",
            )
        }),
        Caller::Token(c) => {
            if c.role != Role::Physician {
                return Err(err(
                    StatusCode::FORBIDDEN,
                    ErrorCode::Forbidden,
                    "the gallery is for physicians",
                ));
            }
            if room.as_ref().is_some_and(|r| *r != c.room) {
                return Err(err(
                    StatusCode::FORBIDDEN,
                    ErrorCode::WrongRoom,
                    "a token opens its own consultation only",
                ));
            }
            Ok(c.room)
        }
    }
}

async fn begin_still(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<StillUploadStatus>, HttpError> {
    let who = token_caller(&state, &headers)?;
    refuse_if_ended(&state, &who)?;
    let req: StillUploadRequest = parse_body(&body)?;
    Ok(Json(state.stills.begin(&who, req)?))
}

/// No still into a consultation that has ended (its tokens may live on).
fn refuse_if_ended(state: &AppState, who: &TokenClaims) -> Result<(), HttpError> {
    if state.hub.is_ended(&who.room) {
        return Err(err(
            StatusCode::FORBIDDEN,
            ErrorCode::ConsultationEnded,
            "this consultation has ended",
        ));
    }
    Ok(())
}

async fn still_upload_status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<StillUploadStatus>, HttpError> {
    let who = token_caller(&state, &headers)?;
    Ok(Json(state.stills.status(&who, &id)?))
}

#[derive(Deserialize)]
struct OffsetQuery {
    offset: u64,
}

async fn append_still(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<OffsetQuery>,
    body: Bytes,
) -> Result<Json<StillUploadStatus>, HttpError> {
    let who = token_caller(&state, &headers)?;
    refuse_if_ended(&state, &who)?;
    let status = state.stills.append(&who, &id, q.offset, &body)?;
    if let Some(still) = &status.still {
        state.audit.record(
            &still.room,
            Some(&still.author_identity),
            "still_uploaded",
            None,
            serde_json::json!({
                "still_id": still.still_id, "label": still.label, "size": still.size,
                "sha256": still.sha256, "content_type": still.content_type,
                "taken_at_ms": still.taken_at_ms, "device": still.device,
            }),
        );
        state.hub.notify_physicians(
            &still.room,
            ServerMsg::StillAvailable {
                still: still.clone(),
            },
        );
    }
    Ok(Json(status))
}

#[derive(Deserialize)]
struct RoomQuery {
    room: Option<String>,
}

async fn list_stills(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<RoomQuery>,
) -> Result<Json<Vec<StillInfo>>, HttpError> {
    let room = still_reader_room(&state, &headers, q.room)?;
    Ok(Json(state.stills.list(&room)))
}

async fn get_still(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<RoomQuery>,
) -> Result<Response, HttpError> {
    let room = still_reader_room(&state, &headers, q.room)?;
    let (meta, bytes) = state.stills.get(&room, &id)?;
    Ok((
        [
            (header::CONTENT_TYPE, meta.content_type),
            (header::CACHE_CONTROL, "private, no-store".to_owned()),
        ],
        bytes,
    )
        .into_response())
}

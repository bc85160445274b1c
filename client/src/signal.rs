//! The signaling WebSocket: JSON messages in and out over two channels.

use anyhow::Context;
use consult_protocol::{ClientMsg, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Message;
use tracing::warn;

/// The two ends of a signaling connection.
pub struct Signal {
    pub out: mpsc::UnboundedSender<ClientMsg>,
    pub incoming: mpsc::UnboundedReceiver<ServerMsg>,
    /// Notify to close the WebSocket at once (no `leave`: the server sees a dropped link).
    pub closer: Arc<Notify>,
}

/// Connect. `incoming` ends when the connection closes. `tls` is used for `wss://`.
pub async fn connect(url: &str, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Signal> {
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        // disable_nagle: small messages, latency-bound.
        true,
        Some(tokio_tungstenite::Connector::Rustls(tls)),
    )
    .await
    .with_context(|| format!("connecting to {url}"))?;
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<ClientMsg>();
    let (in_tx, in_rx) = mpsc::unbounded_channel::<ServerMsg>();
    let closer = Arc::new(Notify::new());
    let close = closer.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = close.notified() => break,
                out = out_rx.recv() => {
                    let Some(msg) = out else { break };
                    let Ok(text) = serde_json::to_string(&msg) else { continue };
                    if sink.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                incoming = stream.next() => match incoming {
                    Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerMsg>(t.as_str()) {
                        Ok(m) => {
                            if in_tx.send(m).is_err() {
                                break;
                            }
                        }
                        Err(e) => warn!("unreadable server message: {e}"),
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        let _ = sink.close().await;
    });
    Ok(Signal {
        out: out_tx,
        incoming: in_rx,
        closer,
    })
}

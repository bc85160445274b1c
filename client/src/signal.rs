//! The signaling WebSocket: JSON messages in and out over two channels.

use anyhow::Context;
use consult_protocol::{ClientMsg, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::warn;

/// Connect and return (messages to send, messages received). The receiver ends when the
/// connection closes.
pub async fn connect(
    url: &str,
) -> anyhow::Result<(
    mpsc::UnboundedSender<ClientMsg>,
    mpsc::UnboundedReceiver<ServerMsg>,
)> {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<ClientMsg>();
    let (in_tx, in_rx) = mpsc::unbounded_channel::<ServerMsg>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
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
    Ok((out_tx, in_rx))
}

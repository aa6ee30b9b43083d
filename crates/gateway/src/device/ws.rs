//! The WebSocket transport: TLS (or plaintext when configured `insecure`), the upgrade with the
//! `carebell.device.v1` subprotocol, one envelope per binary frame.

use std::net::SocketAddr;
use std::sync::Arc;

use carebell_proto::device::v1::{Envelope, ErrorCode};
use carebell_proto::{decode_envelope, encode_envelope, CloseCode, WS_SUBPROTOCOL};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::task::TaskTracker;

use super::session::{self, DeviceTransport, Incoming, TransportClosed};
use super::{DeviceContext, DeviceSettings};
use crate::admission::{Admission, Admitted, Handshaking};

/// Per-connection read buffer. tungstenite's default is 128 KiB allocated up front, which is
/// the whole memory budget of thousands of idle tablets; envelopes are small.
const READ_BUFFER_BYTES: usize = 4 * 1024;

pub struct WsListener {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    context: DeviceContext,
    handshakes: Arc<tokio::sync::Semaphore>,
    admission: Arc<Admission>,
}

/// What a connection holds while it handshakes: a process-wide slot and its address's.
struct HandshakePermit {
    _slot: tokio::sync::OwnedSemaphorePermit,
    _address: Handshaking,
}

impl WsListener {
    /// `tls: None` is plaintext, for the explicit `insecure` setting only.
    /// `admission` is shared with the process's other listeners (one connection cap).
    pub fn new(
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        context: DeviceContext,
        admission: Arc<Admission>,
    ) -> Self {
        let handshakes = Arc::new(tokio::sync::Semaphore::new(
            context.settings.max_concurrent_handshakes.max(1),
        ));
        Self {
            listener,
            tls: tls.map(TlsAcceptor::from),
            context,
            handshakes,
            admission,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts until shutdown; each connection is a task on `tracker`. A failing connection is
    /// logged and closed; it never reaches this loop.
    pub async fn run(self, tracker: TaskTracker) {
        // The process's cap on held connections (under its open-file limit), and one address
        // may not hold every handshake slot: past either a connection is closed at once.
        while let Some(Admitted {
            stream,
            peer,
            held: live,
            handshaking: address,
        }) = self
            .admission
            .accept(&self.listener, &self.context.shutdown)
            .await
        {
            let context = self.context.clone();
            let tls = self.tls.clone();
            let handshakes = Arc::clone(&self.handshakes);
            tracker.spawn(async move {
                let _live = live;
                // Admission: wait for a handshake slot, at most the queue's limit.
                let timeout = context.settings.handshake_queue;
                let accepted = std::time::Instant::now();
                let slot = match tokio::time::timeout(timeout, handshakes.acquire_owned()).await {
                    Ok(Ok(slot)) => slot,
                    _ => {
                        tracing::debug!(%peer, "no handshake slot in time; closing");
                        carebell_metrics::connection_abandoned("slot");
                        return;
                    }
                };
                carebell_metrics::metrics()
                    .device_handshake_wait_seconds
                    .observe(accepted.elapsed().as_secs_f64());
                let permit = HandshakePermit {
                    _slot: slot,
                    _address: address,
                };
                handle_connection(context, tls, stream, peer, permit).await;
            });
        }
    }
}

/// One connection: its handshakes, then its session. A future is as large as its largest state
/// and is held for the connection's whole life, so everything that is over once the link is up
/// (the TLS handshake, the HTTP upgrade) is a boxed future of its own, and the WebSocket is
/// boxed once: what a held link costs is then the session and the stream, each stored once.
async fn handle_connection(
    context: DeviceContext,
    tls: Option<TlsAcceptor>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: HandshakePermit,
) {
    let _ = stream.set_nodelay(true);
    match tls {
        Some(acceptor) => {
            let Some((transport, certificate)) = Box::pin(establish_tls(
                &context.settings,
                acceptor,
                stream,
                peer,
                permit,
            ))
            .await
            else {
                return;
            };
            session::run(context, transport, peer.to_string(), certificate).await;
        }
        None => {
            let Some(transport) = Box::pin(upgrade(&context.settings, stream, peer, permit)).await
            else {
                return;
            };
            session::run(context, transport, peer.to_string(), None).await;
        }
    }
}

/// The TLS handshake, then the upgrade; `None` when either failed (logged).
async fn establish_tls(
    settings: &DeviceSettings,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    permit: HandshakePermit,
) -> Option<(
    WsTransport<tokio_rustls::server::TlsStream<TcpStream>>,
    session::ClientCertificate,
)> {
    match tokio::time::timeout(settings.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls_stream)) => {
            let certificate =
                session::client_certificate(tls_stream.get_ref().1.peer_certificates());
            let transport = upgrade(settings, tls_stream, peer, permit).await?;
            Some((transport, certificate))
        }
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            carebell_metrics::connection_abandoned("tls");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            carebell_metrics::connection_abandoned("tls_timeout");
            None
        }
    }
}

fn websocket_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}

#[allow(clippy::result_large_err)] // the signature is tungstenite's callback type
fn check_subprotocol(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    let offered = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|protocol| protocol.trim() == WS_SUBPROTOCOL);
    if !offered {
        let mut refusal = ErrorResponse::new(Some(format!(
            "the WebSocket subprotocol {WS_SUBPROTOCOL} is required"
        )));
        *refusal.status_mut() = StatusCode::BAD_REQUEST;
        return Err(refusal);
    }
    response.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(WS_SUBPROTOCOL),
    );
    Ok(response)
}

/// The path a device's first bytes take before anything else looks at them, without a network
/// or a database: the HTTP upgrade (with the subprotocol check and the frame limits), then the
/// decoding of frames into envelopes. For the fuzz targets in `tests/fuzz`; returns how many
/// envelopes were decoded and how many frames were refused.
#[doc(hidden)]
pub async fn fuzz_websocket<S>(stream: S, max_frame_bytes: usize) -> (usize, usize)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let config = websocket_config(max_frame_bytes);
    let Ok(websocket) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check_subprotocol, Some(config))
            .await
    else {
        return (0, 0);
    };
    let mut transport = WsTransport {
        websocket: Box::new(websocket),
        max_frame_bytes,
        closed: false,
    };
    let (mut envelopes, mut refused) = (0, 0);
    // Every frame is consumed by one `recv`; the bound only guards against a bug here.
    for _ in 0..10_000 {
        match transport.recv().await {
            Incoming::Envelope(_) => envelopes += 1,
            Incoming::Bad(..) => refused += 1,
            Incoming::Closed => break,
        }
    }
    (envelopes, refused)
}

/// The WebSocket upgrade (with the subprotocol check); `None` when it failed (logged).
async fn upgrade<S>(
    settings: &DeviceSettings,
    stream: S,
    peer: SocketAddr,
    permit: HandshakePermit,
) -> Option<WsTransport<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = websocket_config(settings.max_frame_bytes);
    let upgraded = tokio::time::timeout(
        settings.handshake_timeout,
        tokio_tungstenite::accept_hdr_async_with_config(stream, check_subprotocol, Some(config)),
    )
    .await;
    let websocket = match upgraded {
        Ok(Ok(websocket)) => websocket,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "WebSocket upgrade refused");
            carebell_metrics::connection_abandoned("upgrade");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "WebSocket upgrade timed out");
            carebell_metrics::connection_abandoned("upgrade");
            return None;
        }
    };
    // The expensive part is over: the slot goes to the next connection.
    drop(permit);
    Some(WsTransport {
        websocket: Box::new(websocket),
        max_frame_bytes: settings.max_frame_bytes,
        closed: false,
    })
}

struct WsTransport<S> {
    /// Boxed: the stream (TLS state and WebSocket buffers) is the bulk of a held link, and a
    /// box keeps it in one place however the session's futures move the transport.
    websocket: Box<WebSocketStream<S>>,
    max_frame_bytes: usize,
    closed: bool,
}

impl<S> DeviceTransport for WsTransport<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    const KIND: &'static str = "websocket";

    async fn recv(&mut self) -> Incoming {
        if self.closed {
            return Incoming::Closed;
        }
        loop {
            let message = match self.websocket.next().await {
                None => return Incoming::Closed,
                Some(Ok(message)) => message,
                Some(Err(WsError::Capacity(error))) => {
                    return Incoming::Bad(
                        ErrorCode::FrameTooLarge,
                        format!("frame too large: {error}"),
                    );
                }
                Some(Err(WsError::Utf8(_))) => {
                    return Incoming::Bad(
                        ErrorCode::TextFrame,
                        "text frame with invalid UTF-8".to_owned(),
                    );
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "WebSocket read failed");
                    return Incoming::Closed;
                }
            };
            match message {
                Message::Binary(bytes) => {
                    return match decode_envelope(&bytes, self.max_frame_bytes) {
                        Ok(envelope) => Incoming::Envelope(envelope),
                        Err(carebell_proto::FrameError::TooLarge { size, limit }) => Incoming::Bad(
                            ErrorCode::FrameTooLarge,
                            format!("frame of {size} bytes exceeds the limit of {limit} bytes"),
                        ),
                        Err(carebell_proto::FrameError::Malformed(detail)) => Incoming::Bad(
                            ErrorCode::MalformedFrame,
                            format!("binary frame is not a protobuf Envelope: {detail}"),
                        ),
                    };
                }
                Message::Text(_) => {
                    return Incoming::Bad(
                        ErrorCode::TextFrame,
                        "text frames are not part of the protocol; send binary Envelope frames"
                            .to_owned(),
                    );
                }
                Message::Close(_) => return Incoming::Closed,
                // Pings are answered by tungstenite; pongs and raw frames carry nothing for us.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            }
        }
    }

    async fn send(&mut self, envelope: Envelope) -> Result<(), TransportClosed> {
        if self.closed {
            return Err(TransportClosed);
        }
        self.websocket
            .send(Message::Binary(encode_envelope(&envelope).into()))
            .await
            .map_err(|_| TransportClosed)
    }

    async fn close(&mut self, code: CloseCode, reason: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        // Close reasons are limited to 123 bytes by RFC 6455.
        let reason: String = reason.chars().take(60).collect();
        let frame = CloseFrame {
            code: WsCloseCode::from(code),
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            WebSocketStream::close(&mut self.websocket, Some(frame)),
        )
        .await;
    }
}

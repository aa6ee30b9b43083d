//! Device links: the session logic shared by both transports, and the two transports.

mod batch;
mod enrol;
mod grpc;
mod session;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use carebell_dispatch::Hub;
use carebell_presence::Presence;
use carebell_store::Store;
use tokio_util::sync::CancellationToken;

pub use batch::{AlarmBatcher, Batcher, SessionBatchers};
pub use enrol::EnrolmentService;
pub use grpc::DeviceLinkService;
pub use ws::{fuzz_websocket, WsListener};

/// The device protocol's tunables.
#[derive(Debug, Clone)]
pub struct DeviceSettings {
    /// Sent in `Welcome`; the device heartbeats at this interval.
    pub heartbeat_interval: Duration,
    /// A session silent this long is closed. The server sets it to the silence that reports the
    /// device offline (two intervals and a grace): until then a link the node closed only costs
    /// its tablet a reconnect, a full or resumed TLS handshake, which on a loaded node is the
    /// most expensive thing it does, while the device's silence is reported either way.
    pub silence_limit: Duration,
    pub max_frame_bytes: usize,
    /// Each phase of connecting (TLS, the WebSocket upgrade, authentication) must finish
    /// within this.
    pub handshake_timeout: Duration,
    /// On shutdown, devices are told to reconnect after a random delay in this window.
    pub go_away_window: Duration,
    /// Connections in their TLS handshake and WebSocket upgrade at once, per process. The rest
    /// wait (at most `handshake_queue`): a reconnect storm is absorbed at the rate the CPU
    /// allows while connected tablets' alarms keep flowing.
    pub max_concurrent_handshakes: usize,
    /// How long an accepted connection may wait for a handshake slot before it is closed
    /// unserved. A waiting connection costs a socket and a small task, no CPU; it should not
    /// outlast the tablets' own patience, or its slot goes to a tablet that has given up.
    pub handshake_queue: Duration,
    /// Of those, at most this many from one source address (0: no per-address limit), so that
    /// one address cannot hold every slot (slow-loris).
    pub max_handshakes_per_address: usize,
    /// Messages one device may send per second on average, and in a burst (a token bucket);
    /// past it the session answers `RATE_LIMITED` and closes.
    pub max_messages_per_second: f64,
    pub message_burst: f64,
    /// Device connections this process holds at most (WebSocket); past it a new connection is
    /// closed at once, before TLS (0: no cap).
    pub max_connections: usize,
    /// Mutual TLS: every device must present a client certificate (and the one it is bound to).
    pub require_client_certificate: bool,
}

impl Default for DeviceSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(30),
            silence_limit: Duration::from_secs(75),
            max_frame_bytes: carebell_proto::MAX_FRAME_BYTES,
            handshake_timeout: Duration::from_secs(10),
            go_away_window: Duration::from_secs(30),
            max_concurrent_handshakes: 256,
            handshake_queue: Duration::from_secs(50),
            max_handshakes_per_address: 32,
            max_messages_per_second: 20.0,
            message_burst: 60.0,
            max_connections: 0,
            require_client_certificate: false,
        }
    }
}

/// Everything a device session needs; cloned into each connection.
#[derive(Clone)]
pub struct DeviceContext {
    pub store: Store,
    /// Device alarms go through this (group commit) rather than one transaction each.
    pub alarms: AlarmBatcher,
    /// New connections' key lookups and arrivals, and every session's outbox reads and
    /// acknowledgements, go through these (one statement for many sessions).
    pub sessions: SessionBatchers,
    pub hub: Arc<Hub>,
    pub presence: Presence,
    pub settings: Arc<DeviceSettings>,
    pub shutdown: CancellationToken,
}

//! A well-behaved tablet: handshake, heartbeats, acknowledgements both ways, and resending of
//! unacknowledged requests after a reconnect.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use carebell_proto::auth_message;
use carebell_proto::device::v1::{
    envelope::Body, Alarm, AlarmKind, CallCancel, CallRequest, CallState, CallUpdate, ContentItem,
    ContentOpened, Envelope, Error as ErrorMessage, GoAway, Heartbeat, Hello, Notice, OrderRating,
    OrderUpdate, Proof, RejectReason, Reminder, ReminderConfirm, RtcSignal, Welcome,
};
use ed25519_dalek::Signer;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::{
    Credentials, CredentialsError, Link, LinkError, LinkEvent, PendingStore, TransportKind,
};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("the server rejected the tablet: {reason:?}: {message}")]
    Rejected {
        reason: RejectReason,
        message: String,
    },
    #[error("the server closed the link: {reason} (code {code:?}, gRPC {grpc_code:?})")]
    Closed {
        code: Option<u16>,
        grpc_code: Option<tonic::Code>,
        reason: String,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("the tablet is disconnected")]
    Disconnected,
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct TabletConfig {
    pub credentials: Credentials,
    pub transport: TransportKind,
    /// Overrides the heartbeat interval the server asks for (tests use this to stay silent).
    pub heartbeat_override: Option<Duration>,
    pub firmware_version: String,
    /// Where unacknowledged messages are kept across the tablet's own restarts (none: memory
    /// only).
    pub pending: Option<PendingStore>,
}

impl TabletConfig {
    pub fn new(credentials: Credentials, transport: TransportKind) -> Self {
        Self {
            credentials,
            transport,
            heartbeat_override: None,
            firmware_version: concat!("tablet-sim/", env!("CARGO_PKG_VERSION")).to_owned(),
            pending: None,
        }
    }

    pub async fn open_link(&self) -> Result<Link, SimError> {
        let credentials = &self.credentials;
        let ca = credentials.ca_certificate_pem.as_deref();
        let identity = credentials
            .client_certificate_pem
            .as_deref()
            .zip(credentials.client_key_pem.as_deref());
        Ok(match self.transport {
            TransportKind::WebSocket => {
                Link::connect_websocket_as(
                    &credentials.websocket_url,
                    ca,
                    Some(carebell_proto::WS_SUBPROTOCOL),
                    identity,
                )
                .await?
            }
            TransportKind::Grpc => {
                Link::connect_grpc_as(
                    &credentials.grpc_url,
                    ca,
                    &credentials.server_name,
                    identity,
                )
                .await?
            }
        })
    }
}

/// What the tablet shows or hears.
#[derive(Debug, Clone, PartialEq)]
pub enum TabletEvent {
    CallUpdate(CallUpdate),
    OrderUpdate(OrderUpdate),
    /// Voice signalling from the operator's console.
    RtcSignal(RtcSignal),
    Notice(Notice),
    /// A reminder or check-in to confirm.
    Reminder(Reminder),
    /// An item of the station's catalogue.
    Content(ContentItem),
    Error(ErrorMessage),
    GoAway(GoAway),
    Closed {
        code: Option<u16>,
        grpc_code: Option<tonic::Code>,
        reason: String,
    },
}

/// What a tablet carries from one connection to the next: requests the server has not yet
/// acknowledged (to resend), and the updates already shown (to ignore when resent).
#[derive(Debug, Clone, Default)]
pub struct Carryover {
    pub unacknowledged: Vec<Body>,
    pub seen_updates: HashSet<u64>,
}

enum Command {
    Send {
        body: Box<Body>,
        acknowledged: oneshot::Sender<()>,
    },
    Close,
}

/// A connected, authenticated tablet.
pub struct Tablet {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<TabletEvent>,
    welcome: Welcome,
    driver: JoinHandle<Carryover>,
    pending: Option<PendingStore>,
    device_id: String,
}

/// Performs Hello → Challenge → Proof → Welcome on `link`.
pub async fn authenticate(
    link: &mut Link,
    credentials: &Credentials,
    firmware_version: &str,
) -> Result<Welcome, SimError> {
    let key = credentials.signing_key()?;
    link.send(Envelope {
        seq: 1,
        ack: 0,
        body: Some(Body::Hello(Hello {
            device_id: credentials.device_id.clone(),
            protocol_versions: carebell_proto::SUPPORTED_PROTOCOL_VERSIONS.to_vec(),
            firmware_version: firmware_version.to_owned(),
        })),
    })
    .await?;
    let challenge = match expect_body(link).await? {
        (seq, Body::Challenge(challenge)) => (seq, challenge),
        (_, other) => {
            return Err(SimError::Protocol(format!(
                "expected Challenge, got {other:?}"
            )))
        }
    };
    let signature = key.sign(&auth_message(&credentials.device_id, &challenge.1.nonce));
    link.send(Envelope {
        seq: 2,
        ack: challenge.0,
        body: Some(Body::Proof(Proof {
            signature: signature.to_bytes().to_vec(),
        })),
    })
    .await?;
    match expect_body(link).await? {
        (_, Body::Welcome(welcome)) => Ok(welcome),
        (_, other) => Err(SimError::Protocol(format!(
            "expected Welcome, got {other:?}"
        ))),
    }
}

/// The next envelope with a body; a `Rejected` or a close becomes an error.
async fn expect_body(link: &mut Link) -> Result<(u64, Body), SimError> {
    loop {
        match link.recv().await? {
            LinkEvent::Closed {
                code,
                grpc_code,
                reason,
            } => {
                return Err(SimError::Closed {
                    code,
                    grpc_code,
                    reason,
                })
            }
            LinkEvent::Envelope(Envelope { body: None, .. }) => continue,
            LinkEvent::Envelope(Envelope {
                body: Some(Body::Rejected(rejected)),
                ..
            }) => {
                return Err(SimError::Rejected {
                    reason: RejectReason::try_from(rejected.reason)
                        .unwrap_or(RejectReason::Unspecified),
                    message: rejected.message,
                })
            }
            LinkEvent::Envelope(Envelope {
                seq,
                body: Some(body),
                ..
            }) => return Ok((seq, body)),
        }
    }
}

impl Tablet {
    pub async fn connect(config: &TabletConfig) -> Result<Self, SimError> {
        Self::resume(config, Carryover::default()).await
    }

    /// Connects and resends whatever `carryover` holds unacknowledged.
    pub async fn resume(config: &TabletConfig, carryover: Carryover) -> Result<Self, SimError> {
        let mut link = config.open_link().await?;
        let welcome =
            authenticate(&mut link, &config.credentials, &config.firmware_version).await?;
        let heartbeat = config
            .heartbeat_override
            .unwrap_or(Duration::from_millis(u64::from(
                welcome.heartbeat_interval_ms.max(1000),
            )));
        let (commands_tx, commands_rx) = mpsc::channel(16);
        let (events_tx, events_rx) = mpsc::channel(256);
        // Whatever the durable outbox holds goes out too (once: the same message is not resent
        // twice in one connection).
        let mut resend = carryover.unacknowledged;
        if let Some(pending) = &config.pending {
            for body in pending.bodies() {
                if !resend.contains(&body) {
                    resend.push(body);
                }
            }
        }
        let driver = Driver {
            pending: config.pending.clone(),
            link,
            // Hello and Proof used 1 and 2.
            next_seq: 3,
            last_received: 2,
            unacknowledged: BTreeMap::new(),
            seen_updates: carryover.seen_updates,
            events: events_tx,
        };
        let driver = tokio::spawn(driver.run(commands_rx, heartbeat, resend));
        Ok(Self {
            commands: commands_tx,
            events: events_rx,
            welcome,
            driver,
            pending: config.pending.clone(),
            device_id: config.credentials.device_id.clone(),
        })
    }

    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Sends a message and waits until the server acknowledges it (for requests and alarms:
    /// until they are committed).
    pub async fn send(&self, body: Body) -> Result<(), SimError> {
        // Written down before it is sent: if the tablet dies now, it resends after restarting.
        if let (Some(pending), true) = (&self.pending, is_reliable(&body)) {
            pending
                .add(&body)
                .map_err(|error| SimError::Protocol(format!("cannot keep the message: {error}")))?;
        }
        let (acknowledged, acknowledged_rx) = oneshot::channel();
        self.commands
            .send(Command::Send {
                body: Box::new(body),
                acknowledged,
            })
            .await
            .map_err(|_| SimError::Disconnected)?;
        acknowledged_rx.await.map_err(|_| SimError::Disconnected)
    }

    /// A short press: asks for a call. Returns the request id once the server has stored it.
    pub async fn press(&self) -> Result<String, SimError> {
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        self.send(Body::CallRequest(CallRequest {
            request_id: request_id.clone(),
            pressed_at_ms: now_ms(),
        }))
        .await?;
        Ok(request_id)
    }

    /// A long press: an SOS alarm. Returns the alarm id once the server has stored it.
    pub async fn long_press(&self) -> Result<String, SimError> {
        let alarm_id = uuid::Uuid::new_v4().simple().to_string();
        self.send(Body::Alarm(Alarm {
            alarm_id: alarm_id.clone(),
            kind: AlarmKind::Sos as i32,
            raised_at_ms: now_ms(),
            detail: String::new(),
        }))
        .await?;
        Ok(alarm_id)
    }

    /// The senior rates a service (1 to 5 stars); returns once the server has stored it.
    pub async fn rate(&self, order_id: &str, stars: u32) -> Result<(), SimError> {
        self.send(Body::OrderRating(OrderRating {
            order_id: order_id.to_owned(),
            stars,
        }))
        .await
    }

    /// Rotates to `new_key`: signs the rotation with it and waits until the server has stored
    /// it. The caller keeps the new key (in its credentials) for every later connection.
    pub async fn rotate_key(&self, new_key: &ed25519_dalek::SigningKey) -> Result<(), SimError> {
        use ed25519_dalek::Signer;
        let public_key = new_key.verifying_key().to_bytes();
        let message = carebell_proto::rotation_message(&self.device_id, &public_key);
        self.send(Body::KeyRotation(carebell_proto::device::v1::KeyRotation {
            new_public_key: public_key.to_vec(),
            signature: new_key.sign(&message).to_bytes().to_vec(),
        }))
        .await
    }

    /// The senior presses confirm on a reminder or check-in ("taken", "I'm OK"); returns once
    /// the server has stored it.
    pub async fn confirm(&self, occurrence_id: &str) -> Result<(), SimError> {
        self.send(Body::ReminderConfirm(ReminderConfirm {
            occurrence_id: occurrence_id.to_owned(),
        }))
        .await
    }

    /// The senior opens an item of the catalogue; returns once the server has stored it.
    pub async fn open_content(&self, content_id: &str) -> Result<(), SimError> {
        self.send(Body::ContentOpened(ContentOpened {
            content_id: content_id.to_owned(),
        }))
        .await
    }

    /// The next reminder or check-in shown, skipping other events, or `None` after `timeout`.
    pub async fn next_reminder(&mut self, timeout: Duration) -> Option<Reminder> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(TabletEvent::Reminder(reminder))) => return Some(reminder),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    }

    /// The next catalogue item received, skipping other events, or `None` after `timeout`.
    pub async fn next_content(&mut self, timeout: Duration) -> Option<ContentItem> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(TabletEvent::Content(item))) => return Some(item),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    }

    pub async fn cancel(&self, request_id: &str) -> Result<(), SimError> {
        self.send(Body::CallCancel(CallCancel {
            request_id: request_id.to_owned(),
        }))
        .await
    }

    /// The next thing the tablet hears, or `None` after `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<TabletEvent> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits for an update putting `request_id`'s call into `state`, skipping others.
    /// Waits until the tablet hears that order `order_id` is in `state` ("accepted",
    /// "arrived", "called_back", ...), skipping other events.
    pub async fn wait_for_order(
        &mut self,
        order_id: &str,
        state: &str,
        timeout: Duration,
    ) -> Result<OrderUpdate, SimError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| SimError::Timeout(format!("order {order_id} to become {state}")))?;
            match event {
                None => return Err(SimError::Disconnected),
                Some(TabletEvent::OrderUpdate(update))
                    if update.order_id == order_id && update.state == state =>
                {
                    return Ok(update)
                }
                Some(TabletEvent::Closed {
                    code,
                    grpc_code,
                    reason,
                }) => {
                    return Err(SimError::Closed {
                        code,
                        grpc_code,
                        reason,
                    })
                }
                Some(_) => continue,
            }
        }
    }

    pub async fn wait_for_call(
        &mut self,
        request_id: &str,
        state: CallState,
        timeout: Duration,
    ) -> Result<CallUpdate, SimError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| SimError::Timeout(format!("call {request_id} to become {state:?}")))?;
            match event {
                None => return Err(SimError::Disconnected),
                Some(TabletEvent::CallUpdate(update))
                    if update.request_id == request_id && update.state == state as i32 =>
                {
                    return Ok(update)
                }
                Some(TabletEvent::Closed {
                    code,
                    grpc_code,
                    reason,
                }) => {
                    return Err(SimError::Closed {
                        code,
                        grpc_code,
                        reason,
                    })
                }
                Some(_) => continue,
            }
        }
    }

    /// Closes the link; returns what must carry over to the next connection.
    pub async fn close(self) -> Carryover {
        let _ = self.commands.send(Command::Close).await;
        self.driver.await.unwrap_or_default()
    }

    /// Drops the link without a goodbye, as a crash or a pulled cable would.
    pub async fn crash(self) -> Carryover {
        self.driver.abort();
        // An aborted driver carries nothing over: a crashed tablet keeps only what its own
        // storage kept, which for this simulator is nothing.
        Carryover::default()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Messages that must arrive: resent until acknowledged.
fn is_reliable(body: &Body) -> bool {
    matches!(
        body,
        Body::CallRequest(_) | Body::CallCancel(_) | Body::Alarm(_) | Body::OrderRating(_)
    )
}

struct Driver {
    pending: Option<PendingStore>,
    link: Link,
    next_seq: u64,
    last_received: u64,
    /// Our sequence number → the message and who waits for its acknowledgement.
    unacknowledged: BTreeMap<u64, (Body, Option<oneshot::Sender<()>>)>,
    seen_updates: HashSet<u64>,
    events: mpsc::Sender<TabletEvent>,
}

impl Driver {
    async fn send_body(
        &mut self,
        body: Body,
        acknowledged: Option<oneshot::Sender<()>>,
    ) -> Result<(), LinkError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let reliable = is_reliable(&body);
        let envelope = Envelope {
            seq,
            ack: self.last_received,
            body: Some(body.clone()),
        };
        if reliable || acknowledged.is_some() {
            self.unacknowledged.insert(seq, (body, acknowledged));
        }
        self.link.send(envelope).await
    }

    async fn send_ack(&mut self) -> Result<(), LinkError> {
        self.link
            .send(Envelope {
                seq: 0,
                ack: self.last_received,
                body: None,
            })
            .await
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        heartbeat: Duration,
        resend: Vec<Body>,
    ) -> Carryover {
        for body in resend {
            if self.send_body(body, None).await.is_err() {
                break;
            }
        }
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Send { body, acknowledged }) => {
                        if self.send_body(*body, Some(acknowledged)).await.is_err() {
                            break;
                        }
                    }
                    Some(Command::Close) | None => break,
                },
                event = self.link.recv() => match event {
                    Ok(LinkEvent::Envelope(envelope)) => {
                        if self.receive(envelope).await.is_err() {
                            break;
                        }
                    }
                    Ok(LinkEvent::Closed { code, grpc_code, reason }) => {
                        let _ = self.events.send(TabletEvent::Closed { code, grpc_code, reason }).await;
                        break;
                    }
                    Err(error) => {
                        let _ = self.events.send(TabletEvent::Closed { code: None, grpc_code: None, reason: error.to_string() }).await;
                        break;
                    }
                },
                _ = ticker.tick() => {
                    if self.send_body(Body::Heartbeat(Heartbeat { battery_percent: 100 }), None).await.is_err() {
                        break;
                    }
                }
            }
        }
        Carryover {
            unacknowledged: self
                .unacknowledged
                .into_values()
                .map(|(body, _)| body)
                .collect(),
            seen_updates: self.seen_updates,
        }
    }

    async fn receive(&mut self, envelope: Envelope) -> Result<(), LinkError> {
        let still_open = self
            .unacknowledged
            .split_off(&envelope.ack.saturating_add(1));
        for (_, (body, acknowledged)) in std::mem::replace(&mut self.unacknowledged, still_open) {
            if let Some(pending) = &self.pending {
                if let Err(error) = pending.remove(&body) {
                    tracing::warn!(%error, "cannot update the pending file");
                }
            }
            if let Some(acknowledged) = acknowledged {
                let _ = acknowledged.send(());
            }
        }
        if envelope.seq == 0 {
            return Ok(());
        }
        self.last_received = envelope.seq;
        let event = match envelope.body {
            Some(Body::CallUpdate(update)) => self
                .seen_updates
                .insert(update.update_id)
                .then_some(TabletEvent::CallUpdate(update)),
            Some(Body::OrderUpdate(update)) => self
                .seen_updates
                .insert(update.update_id)
                .then_some(TabletEvent::OrderUpdate(update)),
            Some(Body::Notice(notice)) => self
                .seen_updates
                .insert(notice.update_id)
                .then_some(TabletEvent::Notice(notice)),
            Some(Body::Reminder(reminder)) => self
                .seen_updates
                .insert(reminder.update_id)
                .then_some(TabletEvent::Reminder(reminder)),
            Some(Body::ContentItem(item)) => self
                .seen_updates
                .insert(item.update_id)
                .then_some(TabletEvent::Content(item)),
            Some(Body::RtcSignal(signal)) => Some(TabletEvent::RtcSignal(signal)),
            Some(Body::Error(error)) => Some(TabletEvent::Error(error)),
            Some(Body::GoAway(go_away)) => Some(TabletEvent::GoAway(go_away)),
            _ => None,
        };
        if let Some(event) = event {
            // Never let a screen that is not being looked at stall the link (acknowledgements
            // and heartbeats must go on): when the event queue is full, the event is dropped.
            if let Err(mpsc::error::TrySendError::Full(event)) = self.events.try_send(event) {
                tracing::warn!(?event, "tablet event queue full; event dropped");
            }
        }
        self.send_ack().await
    }
}

//! One authenticated device session, whatever the transport: handshake, sequence numbers and
//! acknowledgements, the outbox resend, heartbeat supervision and the handling of every message.

use std::collections::BTreeMap;
use std::future::Future;

use carebell_domain::{CallKind, DeviceId, RequestId};
use carebell_presence::Kind;
use carebell_proto::device::v1::{
    envelope::Body, AlarmKind, CallState, CallUpdate, Challenge, ContentItem, Envelope,
    Error as ErrorMessage, ErrorCode, GoAway, Notice, OrderUpdate, RejectReason, Rejected,
    Reminder, RtcSignal, Welcome,
};
use carebell_proto::{
    auth_message, CloseCode, CLOSE_AUTH_REJECTED, CLOSE_GOING_AWAY, CLOSE_TIMEOUT,
};
use carebell_store::{NewAlarm, OutboxItem, OutboxPayload, StoreError};
use ed25519_dalek::{Signature, VerifyingKey};
use rand::{Rng, RngCore};
use tokio::time::Instant;
use tracing::Instrument;

use super::DeviceContext;

/// What a transport hands the session.
pub(crate) enum Incoming {
    Envelope(Envelope),
    /// A frame that could not be an envelope (malformed, too large, text).
    Bad(ErrorCode, String),
    Closed,
}

/// The transport was closed under us.
#[derive(Debug)]
pub(crate) struct TransportClosed;

/// How a session reads and writes envelopes, and how it ends a connection.
pub(crate) trait DeviceTransport: Send {
    /// The transport's name in metrics: `websocket` or `grpc`.
    const KIND: &'static str;
    fn recv(&mut self) -> impl Future<Output = Incoming> + Send;
    fn send(
        &mut self,
        envelope: Envelope,
    ) -> impl Future<Output = Result<(), TransportClosed>> + Send;
    /// Ends the connection with a WebSocket close code (or the matching gRPC status).
    fn close(&mut self, code: CloseCode, reason: &str) -> impl Future<Output = ()> + Send;
}

/// Longest detail text accepted on an alarm.
const MAX_ALARM_DETAIL_BYTES: usize = 1024;
/// Outbox messages fetched per read.
const OUTBOX_BATCH: i64 = 100;

struct Link<T> {
    transport: T,
    next_seq: u64,
    /// Highest sequence number received from the device and fully processed.
    last_received: u64,
}

impl<T: DeviceTransport> Link<T> {
    async fn send_body(&mut self, body: Body) -> Result<u64, TransportClosed> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.transport
            .send(Envelope {
                seq,
                ack: self.last_received,
                body: Some(body),
            })
            .await?;
        Ok(seq)
    }

    async fn send_ack(&mut self) -> Result<(), TransportClosed> {
        self.transport
            .send(Envelope {
                seq: 0,
                ack: self.last_received,
                body: None,
            })
            .await
    }

    /// Reports an error; closes the connection when the table says the error is fatal.
    /// Returns whether the session may go on.
    async fn error(&mut self, code: ErrorCode, message: &str, ref_seq: u64) -> bool {
        let sent = self
            .send_body(Body::Error(ErrorMessage {
                code: code as i32,
                message: message.to_owned(),
                ref_seq,
            }))
            .await;
        match carebell_proto::close_code_for(code) {
            Some(close_code) => {
                self.transport.close(close_code, message).await;
                false
            }
            None => sent.is_ok(),
        }
    }

    async fn reject(&mut self, reason: RejectReason, message: &str) {
        let _ = self
            .send_body(Body::Rejected(Rejected {
                reason: reason as i32,
                message: message.to_owned(),
            }))
            .await;
        self.transport.close(CLOSE_AUTH_REJECTED, message).await;
    }
}

/// Runs one connection from the first frame to the close.
/// The SHA-256 of the client certificate a device presented in its TLS handshake (mutual TLS).
pub(crate) type ClientCertificate = Option<[u8; 32]>;

/// The SHA-256 of the first certificate in `certificates` (the client's own).
pub(crate) fn client_certificate(
    certificates: Option<&[rustls::pki_types::CertificateDer<'_>]>,
) -> ClientCertificate {
    use sha2::Digest;
    certificates
        .and_then(|certificates| certificates.first())
        .map(|certificate| sha2::Sha256::digest(certificate.as_ref()).into())
}

pub(crate) async fn run<T: DeviceTransport>(
    context: DeviceContext,
    transport: T,
    peer: String,
    certificate: ClientCertificate,
) {
    let mut link = Link {
        transport,
        next_seq: 1,
        last_received: 0,
    };
    // The handshake and the message handling are boxed: a future is as large as its largest
    // state, and an idle session (what a tablet is nearly all the time) would otherwise carry
    // the space of every database call it might make. Boxed, that space is taken only while a
    // message is being handled.
    let authenticated = Box::pin(handshake(&context, &mut link, certificate)).await;
    carebell_metrics::metrics()
        .device_handshakes
        .get_or_create(&vec![
            ("transport", T::KIND.to_owned()),
            (
                "outcome",
                if authenticated.is_some() {
                    "accepted"
                } else {
                    "refused"
                }
                .to_owned(),
            ),
        ])
        .inc();
    let Some(device_id) = authenticated else {
        return;
    };
    let _counted = carebell_metrics::ConnectionGuard::new(T::KIND);
    let span = tracing::info_span!("device", device_id = %device_id, %peer);
    tracing::info!(parent: &span, "device authenticated");
    context.presence.connected(Kind::Device, device_id.as_str());
    // Registered before the arrival is read: an outbox message committed after the read is
    // then announced to this session (the hub keeps the wake-up until the session waits).
    let registration = context.hub.register_device(device_id.as_str());
    // One round trip for what every new session needs (a reconnect storm is one per tablet);
    // the rest only when there is something to do.
    let resend = match context.sessions.arrived(device_id.as_str()).await {
        Ok(arrival) => {
            if arrival.offline_alarm_open {
                // Cleared beside the session, not before it: the clearing is a transaction of
                // several statements, and a session that waited for it read nothing meanwhile,
                // heartbeats included; on a loaded database that is seconds, for every tablet
                // back from an outage. The returning tablets of this process are cleared
                // together (`SessionBatchers::back`, one transaction for many). If this fails,
                // the last-seen refresher clears it at its next pass.
                let (sessions, device, span) = (
                    context.sessions.clone(),
                    device_id.to_string(),
                    span.clone(),
                );
                tokio::spawn(async move {
                    match sessions.back(&device).await {
                        Ok(true) => {
                            tracing::info!(parent: &span, "device back: its offline alarm is cleared");
                        }
                        Ok(false) => {}
                        Err(error) => {
                            tracing::warn!(parent: &span, %error, "could not clear an offline alarm");
                        }
                    }
                });
            }
            arrival.outbox_pending
        }
        Err(error) => {
            tracing::warn!(parent: &span, %error, "could not record the arrival");
            registration.last_seen_unwritten();
            true
        }
    };
    let mut session = Session {
        context: &context,
        device_id: &device_id,
        link,
        inflight: BTreeMap::new(),
        messages: crate::bucket::TokenBucket::full(context.settings.message_burst),
    };
    let reason = session
        .run(&registration, resend)
        .instrument(span.clone())
        .await;
    tracing::info!(parent: &span, reason, "device session ended");
    carebell_metrics::metrics()
        .device_sessions_ended
        .get_or_create(&vec![
            ("transport", T::KIND.to_owned()),
            ("reason", reason.to_owned()),
        ])
        .inc();
    // Last seen when last heard, not now: a silently dropped link must not look alive.
    let silent_for = registration.silent_for();
    drop(registration);
    context
        .presence
        .disconnected(Kind::Device, device_id.as_str());
    if let Err(error) = Box::pin(context.sessions.departed(device_id.as_str(), silent_for)).await {
        tracing::warn!(parent: &span, %error, "could not record last-seen");
    }
}

/// Reads the next envelope within `deadline`, answering bad frames. `None` ends the connection.
async fn recv_handshake<T: DeviceTransport>(
    link: &mut Link<T>,
    deadline: Instant,
) -> Option<Envelope> {
    match tokio::time::timeout_at(deadline, link.transport.recv()).await {
        Err(_) => {
            link.transport
                .close(CLOSE_TIMEOUT, "authentication did not finish in time")
                .await;
            None
        }
        Ok(Incoming::Closed) => None,
        Ok(Incoming::Bad(code, message)) => {
            // Every bad-frame code is fatal, so this also closes with the code's own close code.
            link.error(code, &message, 0).await;
            None
        }
        Ok(Incoming::Envelope(envelope)) => {
            link.last_received = envelope.seq.max(link.last_received);
            Some(envelope)
        }
    }
}

/// Hello → Challenge → Proof → Welcome. Returns the authenticated device, or `None` after
/// rejecting and closing.
async fn handshake<T: DeviceTransport>(
    context: &DeviceContext,
    link: &mut Link<T>,
    certificate: ClientCertificate,
) -> Option<DeviceId> {
    let deadline = Instant::now() + context.settings.handshake_timeout;
    let first = recv_handshake(link, deadline).await?;
    let hello = match first.body {
        Some(Body::Hello(hello)) => hello,
        _ => {
            link.error(
                ErrorCode::NotAuthenticated,
                "not authenticated: the first message must be Hello",
                first.seq,
            )
            .await;
            return None;
        }
    };
    let Some(version) = hello
        .protocol_versions
        .iter()
        .copied()
        .filter(|version| carebell_proto::SUPPORTED_PROTOCOL_VERSIONS.contains(version))
        .max()
    else {
        link.reject(
            RejectReason::UnsupportedVersion,
            "no common protocol version; this server speaks version 1",
        )
        .await;
        return None;
    };

    // The challenge goes out whether or not the device exists, so a prober cannot tell.
    let mut nonce = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut nonce);
    link.send_body(Body::Challenge(Challenge {
        nonce: nonce.to_vec(),
        protocol_version: version,
    }))
    .await
    .ok()?;

    let second = recv_handshake(link, deadline).await?;
    let proof = match second.body {
        Some(Body::Proof(proof)) => proof,
        _ => {
            link.error(
                ErrorCode::NotAuthenticated,
                "not authenticated: expected Proof after Challenge",
                second.seq,
            )
            .await;
            return None;
        }
    };

    let device_id = DeviceId::parse(&hello.device_id).ok();
    let credentials = match &device_id {
        Some(device_id) => match context.sessions.credentials(device_id.as_str()).await {
            Ok(credentials) => credentials,
            Err(error) => {
                tracing::error!(%error, "cannot look up a device key");
                link.error(
                    ErrorCode::Unavailable,
                    "the server cannot check credentials now; retry",
                    second.seq,
                )
                .await;
                return None;
            }
        },
        None => None,
    };
    let verified = match (&device_id, credentials) {
        (Some(device_id), Some((public_key, bound))) => {
            verify(device_id, &public_key, &nonce, &proof.signature)
                && certificate_fits(
                    bound,
                    certificate,
                    context.settings.require_client_certificate,
                )
        }
        _ => false,
    };
    let Some(device_id) = device_id.filter(|_| verified) else {
        tracing::info!(claimed = %hello.device_id.chars().take(64).collect::<String>(), "device authentication failed");
        link.reject(RejectReason::BadCredentials, "authentication failed")
            .await;
        return None;
    };

    let settings = &context.settings;
    link.send_body(Body::Welcome(Welcome {
        session_id: uuid::Uuid::new_v4().to_string(),
        heartbeat_interval_ms: u32::try_from(settings.heartbeat_interval.as_millis())
            .unwrap_or(u32::MAX),
        server_time_ms: chrono::Utc::now().timestamp_millis(),
        max_frame_bytes: u32::try_from(settings.max_frame_bytes).unwrap_or(u32::MAX),
        protocol_version: version,
    }))
    .await
    .ok()?;
    Some(device_id)
}

fn verify(device_id: &DeviceId, public_key: &[u8; 32], nonce: &[u8], signature: &[u8]) -> bool {
    verify_signed(
        public_key,
        &auth_message(device_id.as_str(), nonce),
        signature,
    )
}

/// Mutual TLS: a device bound to a certificate must present it; a presented certificate must
/// be the device's own; with `required`, every device must present one.
fn certificate_fits(bound: Option<[u8; 32]>, presented: ClientCertificate, required: bool) -> bool {
    match (bound, presented) {
        (Some(bound), Some(presented)) => bound == presented,
        (Some(_), None) => false,
        (None, Some(_)) => false,
        (None, None) => !required,
    }
}

/// Whether `signature` is `public_key`'s (strict Ed25519) signature over `message`.
fn verify_signed(public_key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    let Ok(signature) = Signature::from_slice(signature) else {
        return false;
    };
    key.verify_strict(message, &signature).is_ok()
}

/// The new key of a `KeyRotation`, if it is a key and signed the rotation message.
fn check_rotation(
    device_id: &DeviceId,
    rotation: &carebell_proto::device::v1::KeyRotation,
) -> Result<[u8; 32], String> {
    let key: [u8; 32] = rotation
        .new_public_key
        .as_slice()
        .try_into()
        .map_err(|_| "new_public_key must be 32 bytes".to_owned())?;
    let message = carebell_proto::rotation_message(device_id.as_str(), &key);
    if !verify_signed(&key, &message, &rotation.signature) {
        return Err("the signature is not the new key's over the rotation message".to_owned());
    }
    Ok(key)
}

struct Session<'a, T> {
    context: &'a DeviceContext,
    device_id: &'a DeviceId,
    link: Link<T>,
    /// Our sequence number → the outbox message it carried, until the device acknowledges.
    inflight: BTreeMap<u64, i64>,
    /// Messages the device may still send (`max_messages_per_second`, `message_burst`).
    messages: crate::bucket::TokenBucket,
}

impl<T> Session<'_, T> {
    /// Takes one message's token; `false` when the device has sent too many.
    fn take_token(&mut self) -> bool {
        let settings = &self.context.settings;
        self.messages.take(
            settings.max_messages_per_second,
            settings.message_burst,
            std::time::Instant::now(),
        )
    }
}

/// What the session should do after handling one message.
enum Next {
    Continue,
    End(&'static str),
}

impl<T: DeviceTransport> Session<'_, T> {
    /// Runs the session; `resend`: the device has unacknowledged outbox messages (or that could
    /// not be read), which go out first.
    async fn run(
        &mut self,
        registration: &carebell_dispatch::DeviceRegistration,
        resend: bool,
    ) -> &'static str {
        let settings = &self.context.settings;
        let silence_limit = settings.silence_limit;
        // Resumption: whatever the device has not acknowledged goes out again.
        if resend {
            if let Next::End(reason) = Box::pin(self.send_outbox()).await {
                return reason;
            }
        }
        // The futures that live as long as the session are made once, not on every message:
        // a tablet's heartbeat then costs a frame and an acknowledgement, not half a dozen
        // waiter registrations. The silence timer is checked lazily: it fires at the old
        // deadline and is moved on if the device was heard since (at most one re-arm per
        // silence limit instead of one per message).
        let context: &DeviceContext = self.context;
        let mut last_heard = Instant::now();
        let silence = tokio::time::sleep_until(last_heard + silence_limit);
        tokio::pin!(silence);
        let kicked = registration.kicked.cancelled();
        tokio::pin!(kicked);
        let shutdown = context.shutdown.cancelled();
        tokio::pin!(shutdown);
        let outbox_changed = registration.outbox_changed.notified();
        tokio::pin!(outbox_changed);
        let signals = registration.signals.next_batch();
        tokio::pin!(signals);
        // Each branch's own work is boxed (see `run`), so the loop's state between messages is
        // only these long-lived waits. `biased`: the socket is polled first and a heartbeat
        // returns without polling the five other waits; they are polled whenever the socket has
        // nothing, and a device cannot keep it busy for long (`max_messages_per_second`).
        loop {
            tokio::select! {
                biased;
                incoming = self.link.transport.recv() => {
                    last_heard = Instant::now();
                    registration.heard();
                    let next = match incoming {
                        Incoming::Closed => Next::End("closed by the device"),
                        Incoming::Bad(code, message) => {
                            if Box::pin(self.link.error(code, &message, 0)).await { Next::Continue } else { Next::End("bad frame") }
                        }
                        Incoming::Envelope(envelope) => Box::pin(self.handle(envelope)).await,
                    };
                    if let Next::End(reason) = next {
                        return reason;
                    }
                }
                _ = &mut outbox_changed => {
                    outbox_changed.set(registration.outbox_changed.notified());
                    if let Next::End(reason) = Box::pin(self.send_outbox()).await {
                        return reason;
                    }
                }
                batch = &mut signals => {
                    signals.set(registration.signals.next_batch());
                    for signal in batch {
                        let body = Body::RtcSignal(RtcSignal {
                            call_id: signal.call_id.to_string(),
                            kind: signal.kind,
                            payload: signal.payload,
                        });
                        if Box::pin(self.link.send_body(body)).await.is_err() {
                            return "transport closed";
                        }
                    }
                }
                _ = &mut silence => {
                    let deadline = last_heard + silence_limit;
                    if deadline > Instant::now() {
                        silence.as_mut().reset(deadline);
                        continue;
                    }
                    Box::pin(self.link.transport.close(CLOSE_TIMEOUT, "no heartbeat")).await;
                    return "heartbeat supervision timed out";
                }
                _ = &mut kicked => {
                    if registration.revoked() {
                        Box::pin(self.link.reject(RejectReason::BadCredentials, "this device has been revoked")).await;
                        return "device revoked";
                    }
                    Box::pin(self.link.transport.close(CLOSE_GOING_AWAY, "replaced by a newer connection of this device")).await;
                    return "replaced by a newer connection";
                }
                _ = &mut shutdown => {
                    let window = u64::try_from(context.settings.go_away_window.as_millis()).unwrap_or(u64::MAX).max(1);
                    let delay = rand::thread_rng().gen_range(0..window);
                    let _ = Box::pin(self.link.send_body(Body::GoAway(GoAway {
                        reconnect_after_ms: u32::try_from(delay).unwrap_or(u32::MAX),
                        reason: "server shutting down".to_owned(),
                    }))).await;
                    Box::pin(self.link.transport.close(CLOSE_GOING_AWAY, "server shutting down")).await;
                    return "server shutting down";
                }
            }
        }
    }

    /// Sends every unacknowledged outbox message not yet sent on this connection. Selected by
    /// "not in flight" rather than "id above the last sent": outbox ids are allocated in insert
    /// order but committed in any order, so a watermark could skip a late-committing message.
    async fn send_outbox(&mut self) -> Next {
        loop {
            let in_flight: Vec<i64> = self.inflight.values().copied().collect();
            let items = match self
                .context
                .sessions
                .pending_outbox(self.device_id.as_str(), in_flight, OUTBOX_BATCH)
                .await
            {
                Ok(items) => items,
                Err(error) => return self.unavailable(error, 0).await,
            };
            let n_items = items.len();
            for item in items {
                let OutboxItem { id, payload } = item;
                let update_id = u64::try_from(id).unwrap_or_default();
                let body = match payload {
                    OutboxPayload::CallUpdate(payload) => {
                        let state = match payload.state.as_str() {
                            "queued" => CallState::Queued,
                            "offered" => CallState::Ringing,
                            "answered" => CallState::Answered,
                            "ended" => CallState::Ended,
                            "abandoned" => CallState::Abandoned,
                            _ => CallState::Unspecified,
                        };
                        Body::CallUpdate(CallUpdate {
                            update_id,
                            request_id: payload.request_id,
                            call_id: payload.call_id.to_string(),
                            state: state as i32,
                            operator_display_name: payload.operator_display_name,
                            reason: payload.reason,
                        })
                    }
                    OutboxPayload::Notice(payload) => Body::Notice(Notice {
                        update_id,
                        text: payload.text,
                        from: payload.from,
                    }),
                    OutboxPayload::Reminder(payload) => Body::Reminder(Reminder {
                        update_id,
                        occurrence_id: payload.occurrence_id.to_string(),
                        kind: payload.kind,
                        title: payload.title,
                        due_at_ms: payload.due_at_ms,
                        respond_by_ms: payload.respond_by_ms,
                        attempt: payload.attempt,
                    }),
                    OutboxPayload::Content(payload) => Body::ContentItem(ContentItem {
                        update_id,
                        content_id: payload.content_id.to_string(),
                        kind: payload.kind,
                        title: payload.title,
                        body: payload.body,
                        media_url: payload.media_url,
                        language: payload.language,
                        tags: payload.tags,
                    }),
                    OutboxPayload::OrderUpdate(payload) => Body::OrderUpdate(OrderUpdate {
                        update_id,
                        order_id: payload.order_id.to_string(),
                        state: payload.state,
                        service_name_zh: payload.service_name_zh,
                        service_name_en: payload.service_name_en,
                        provider_name: payload.provider_name,
                        staff_name: payload.staff_name,
                        eta_ms: payload.eta_ms,
                        text_zh: payload.text_zh,
                        text_en: payload.text_en,
                    }),
                };
                match self.link.send_body(body).await {
                    Ok(seq) => {
                        self.inflight.insert(seq, id);
                    }
                    Err(TransportClosed) => return Next::End("transport closed"),
                }
            }
            if i64::try_from(n_items).unwrap_or(i64::MAX) < OUTBOX_BATCH {
                return Next::Continue;
            }
        }
    }

    async fn unavailable(&mut self, error: StoreError, ref_seq: u64) -> Next {
        tracing::error!(%error, "database unavailable during a device session");
        self.link
            .error(
                ErrorCode::Unavailable,
                "the server cannot store this now; reconnect and resend",
                ref_seq,
            )
            .await;
        Next::End("database unavailable")
    }

    async fn handle(&mut self, envelope: Envelope) -> Next {
        // A flood is cut off before anything is done for it: the message is neither processed
        // nor acknowledged, so a device that reconnects later resends it (nothing is lost).
        if !self.take_token() {
            let message = format!(
                "more than {} messages a second; reconnect later and resend what is unacknowledged",
                self.context.settings.max_messages_per_second
            );
            self.link
                .error(ErrorCode::RateLimited, &message, envelope.seq)
                .await;
            return Next::End("rate limited");
        }
        if envelope.ack > 0 {
            let still_open = self.inflight.split_off(&envelope.ack.saturating_add(1));
            let acked: Vec<i64> = std::mem::replace(&mut self.inflight, still_open)
                .into_values()
                .collect();
            if let Err(error) = self
                .context
                .sessions
                .ack_outbox(self.device_id.as_str(), acked)
                .await
            {
                return self.unavailable(error, 0).await;
            }
        }
        let seq = envelope.seq;
        if seq == 0 {
            // A pure acknowledgement (a body without a sequence number is ignored likewise).
            return Next::Continue;
        }
        if seq <= self.link.last_received {
            self.link
                .error(
                    ErrorCode::ProtocolViolation,
                    "sequence numbers must increase",
                    seq,
                )
                .await;
            return Next::End("sequence went backwards");
        }
        let Some(body) = envelope.body else {
            // A newer device speaking a message this server does not know: say so, keep going.
            self.link.last_received = seq;
            let going = self
                .link
                .error(
                    ErrorCode::UnknownMessage,
                    "unknown message type; ignored",
                    seq,
                )
                .await;
            return if going {
                Next::Continue
            } else {
                Next::End("transport closed")
            };
        };

        let outcome: Result<(), (ErrorCode, String)> = match body {
            Body::Heartbeat(_) => Ok(()),
            Body::CallRequest(request) => match RequestId::parse(&request.request_id) {
                Err(error) => Err((ErrorCode::InvalidArgument, error.to_string())),
                Ok(request_id) => match self
                    .context
                    .store
                    .create_call(self.device_id.as_str(), request_id.as_str(), CallKind::Call)
                    .await
                {
                    Ok(created) => {
                        tracing::info!(call_id = %created.call_id, created = created.created, "call request stored");
                        Ok(())
                    }
                    Err(error) => return self.unavailable(error, seq).await,
                },
            },
            Body::CallCancel(cancel) => match RequestId::parse(&cancel.request_id) {
                Err(error) => Err((ErrorCode::InvalidArgument, error.to_string())),
                Ok(request_id) => match self
                    .context
                    .store
                    .cancel_call(self.device_id.as_str(), request_id.as_str())
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(StoreError::NotFound { .. }) => Err((
                        ErrorCode::InvalidArgument,
                        "no such call request".to_owned(),
                    )),
                    Err(error) => return self.unavailable(error, seq).await,
                },
            },
            Body::Alarm(alarm) => match self.check_alarm(&alarm) {
                Err(message) => Err((ErrorCode::InvalidArgument, message)),
                Ok(kind) => {
                    let raised_at = chrono::DateTime::from_timestamp_millis(alarm.raised_at_ms)
                        .filter(|_| alarm.raised_at_ms > 0);
                    // Dangers to the senior are emergencies; the device's own troubles are
                    // technical alarms, below emergencies and above calls.
                    let raise = match kind {
                        AlarmKind::Sos
                        | AlarmKind::Fall
                        | AlarmKind::Smoke
                        | AlarmKind::NoActivity => Some(CallKind::Emergency),
                        AlarmKind::LowBattery | AlarmKind::PowerLoss => Some(CallKind::Technical),
                        AlarmKind::Unspecified => None,
                    };
                    // PostgreSQL text cannot hold a NUL, and an alarm must not be lost over its
                    // free-text detail (firmware copying a fixed-size C buffer sends trailing
                    // NULs): each is stored as U+FFFD. Refusing would drop the alarm; failing
                    // would make the tablet resend it for ever.
                    let detail = alarm.detail.replace('\0', "\u{fffd}");
                    match self
                        .context
                        .alarms
                        .record(NewAlarm {
                            device_id: self.device_id.as_str().to_owned(),
                            alarm_id: alarm.alarm_id.clone(),
                            kind: kind.as_str_name().to_owned(),
                            raised_at,
                            detail,
                            raise,
                        })
                        .await
                    {
                        Ok(outcome) => {
                            tracing::info!(alarm = %outcome.alarm_row_id, created = outcome.created, "alarm stored");
                            carebell_metrics::metrics()
                                .alarms_received
                                .get_or_create(&vec![
                                    ("kind", carebell_metrics::alarm_kind(kind.as_str_name())),
                                    (
                                        "outcome",
                                        if outcome.created { "new" } else { "resent" }.to_owned(),
                                    ),
                                ])
                                .inc();
                            Ok(())
                        }
                        // The same id with different content: refused for good (and acknowledged,
                        // so the device stops resending it).
                        Err(StoreError::Refused(message)) => {
                            Err((ErrorCode::InvalidArgument, message))
                        }
                        Err(error) => return self.unavailable(error, seq).await,
                    }
                }
            },
            Body::OrderRating(rating) => match uuid::Uuid::parse_str(&rating.order_id) {
                Err(_) => Err((
                    ErrorCode::InvalidArgument,
                    "order id is not a UUID".to_owned(),
                )),
                Ok(order_id) => match self
                    .context
                    .store
                    .rate_order(self.device_id.as_str(), order_id, rating.stars)
                    .await
                {
                    Ok(()) => Ok(()),
                    // Refused for good (and acknowledged, so the tablet stops resending).
                    Err(
                        error @ (StoreError::Invalid(_)
                        | StoreError::NotFound { .. }
                        | StoreError::Refused(_)
                        | StoreError::OrderTransition(_)),
                    ) => Err((ErrorCode::InvalidArgument, error.to_string())),
                    Err(error) => return self.unavailable(error, seq).await,
                },
            },
            Body::RtcSignal(signal) => match uuid::Uuid::parse_str(&signal.call_id) {
                Err(_) => Err((
                    ErrorCode::InvalidArgument,
                    "call id is not a UUID".to_owned(),
                )),
                Ok(call_id) => match self
                    .context
                    .store
                    .rtc_from_device(
                        self.device_id.as_str(),
                        call_id,
                        &signal.kind,
                        &signal.payload,
                    )
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(error @ (StoreError::Invalid(_) | StoreError::Refused(_))) => {
                        Err((ErrorCode::InvalidArgument, error.to_string()))
                    }
                    Err(error) => return self.unavailable(error, seq).await,
                },
            },
            Body::ReminderConfirm(confirm) => match uuid::Uuid::parse_str(&confirm.occurrence_id) {
                Err(_) => Err((
                    ErrorCode::InvalidArgument,
                    "occurrence id is not a UUID".to_owned(),
                )),
                Ok(occurrence_id) => match self
                    .context
                    .store
                    .confirm_occurrence(self.device_id.as_str(), occurrence_id)
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(error @ StoreError::Refused(_)) => {
                        Err((ErrorCode::InvalidArgument, error.to_string()))
                    }
                    Err(error) => return self.unavailable(error, seq).await,
                },
            },
            Body::ContentOpened(opened) => match uuid::Uuid::parse_str(&opened.content_id) {
                Err(_) => Err((
                    ErrorCode::InvalidArgument,
                    "content id is not a UUID".to_owned(),
                )),
                Ok(content_id) => match self
                    .context
                    .store
                    .content_opened(self.device_id.as_str(), content_id)
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(error @ StoreError::Refused(_)) => {
                        Err((ErrorCode::InvalidArgument, error.to_string()))
                    }
                    Err(error) => return self.unavailable(error, seq).await,
                },
            },
            Body::KeyRotation(rotation) => match check_rotation(self.device_id, &rotation) {
                Err(message) => Err((ErrorCode::InvalidArgument, message)),
                Ok(key) => match self
                    .context
                    .store
                    .rotate_device_key(self.device_id.as_str(), &key)
                    .await
                {
                    Ok(()) => {
                        tracing::info!("device key rotated");
                        Ok(())
                    }
                    Err(error @ (StoreError::NotFound { .. } | StoreError::Refused(_))) => {
                        Err((ErrorCode::InvalidArgument, error.to_string()))
                    }
                    Err(error) => return self.unavailable(error, seq).await,
                },
            },
            Body::Error(error) => {
                tracing::warn!(code = error.code, message = %error.message.chars().take(200).collect::<String>(), "device reported an error");
                Ok(())
            }
            Body::Hello(_) | Body::Proof(_) => {
                self.link
                    .error(
                        ErrorCode::ProtocolViolation,
                        "already authenticated: a session speaks for one device only",
                        seq,
                    )
                    .await;
                return Next::End("second authentication attempt");
            }
            Body::Challenge(_)
            | Body::Welcome(_)
            | Body::Rejected(_)
            | Body::CallUpdate(_)
            | Body::OrderUpdate(_)
            | Body::Notice(_)
            | Body::Reminder(_)
            | Body::ContentItem(_)
            | Body::GoAway(_) => {
                self.link
                    .error(
                        ErrorCode::ProtocolViolation,
                        "this message is sent only by the server",
                        seq,
                    )
                    .await;
                return Next::End("server-only message from device");
            }
        };
        // Processed (stored, or refused for good): acknowledge so the device stops resending.
        self.link.last_received = seq;
        if let Err((code, message)) = outcome {
            if !self.link.error(code, &message, seq).await {
                return Next::End("transport closed");
            }
        }
        match self.link.send_ack().await {
            Ok(()) => Next::Continue,
            Err(TransportClosed) => Next::End("transport closed"),
        }
    }

    fn check_alarm(&self, alarm: &carebell_proto::device::v1::Alarm) -> Result<AlarmKind, String> {
        RequestId::parse(&alarm.alarm_id)
            .map_err(|error| error.to_string().replace("request id", "alarm id"))?;
        if alarm.detail.len() > MAX_ALARM_DETAIL_BYTES {
            return Err(format!(
                "alarm detail is longer than {MAX_ALARM_DETAIL_BYTES} bytes"
            ));
        }
        match AlarmKind::try_from(alarm.kind) {
            Ok(AlarmKind::Unspecified) | Err(_) => Err("unknown alarm kind".to_owned()),
            Ok(kind) => Ok(kind),
        }
    }
}

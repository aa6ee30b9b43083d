//! The operator console API (`carebell.console.v1.Console`): sign-in, status, the live feed of
//! offers and call changes, accept, end with a disposition, and the audited resident look-up.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use carebell_dispatch::{Hub, OperatorEvent};
use carebell_domain::{
    AlarmAction as DomainAction, AlarmOutcome as DomainOutcome, Disposition as DomainDisposition,
    OperatorStatus as DomainStatus,
};
use carebell_presence::{Kind, Presence};
use carebell_proto::console::v1::console_event::Event;
use carebell_proto::console::v1::console_server::{Console, ConsoleServer};
use carebell_proto::console::v1::{
    AcceptRequest, AcceptResponse, AlarmAction, AlarmOutcome, CallChanged, CallKind,
    CancelOrderRequest, CancelOrderResponse, CatalogueRequest, CatalogueResponse, ConsoleEvent,
    ContactSummary, CreateOrderRequest, CreateOrderResponse, DeclineRequest, DeclineResponse,
    DeviceSummary, Disposition, EndCallRequest, EndCallResponse, FailedDeliveriesRequest,
    FailedDeliveriesResponse, FailedDelivery, FamilyCascadeRequest, FamilyCascadeResponse,
    GetResidentRequest, Interaction, ListOrdersRequest, ListOrdersResponse, Offer, OfferWithdrawn,
    OperatorState, OperatorStatus, QueueFigures, QueueStatusRequest, QueueStatusResponse,
    ReclaimCallRequest, ReclaimCallResponse, RecordAlarmActionRequest, RecordAlarmActionResponse,
    RecordOrderCallBackRequest, RecordOrderCallBackResponse, ReinstateProviderRequest,
    ReinstateProviderResponse, ResidentRecord, ResolveAlarmRequest, ResolveAlarmResponse,
    RtcSignal, SendRtcSignalResponse, ServiceReportRequest, ServiceReportResponse,
    SetStatusRequest, SetStatusResponse, SignInRequest, SignInResponse, StatisticsRequest,
    StatisticsResponse, StatusChanged, SubscribeRequest, SuggestProvidersRequest,
    SuggestProvidersResponse, SupervisorAlert, TransferRequest, TransferResponse, WaitingItem,
};
use carebell_store::{OfferRow, OperatorSession, Store};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};
use uuid::Uuid;

mod alarms;
mod orders;

use crate::credentials::{bearer_token, check_lengths, new_token, token_hash, verified_account};
use crate::status_from_store;

/// Longest note on a call's end.
const MAX_NOTE_BYTES: usize = 4000;
/// Longest reason for a status change.
const MAX_REASON_BYTES: usize = 200;
/// Console events buffered per subscription; a console that falls behind resyncs.
const EVENT_BUFFER: usize = 32;

#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    pub session_ttl: Duration,
    /// How long a transferred call rings at the operator it is transferred to.
    pub ring_timeout: Duration,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(12 * 3600),
            ring_timeout: Duration::from_secs(20),
        }
    }
}

/// The skill that makes an operator a supervisor.
pub const SUPERVISOR_SKILL: &str = "supervisor";

fn status_to_proto(status: &str) -> OperatorStatus {
    match status.parse::<DomainStatus>() {
        Ok(DomainStatus::Offline) => OperatorStatus::Offline,
        Ok(DomainStatus::Available) => OperatorStatus::Available,
        Ok(DomainStatus::Away) => OperatorStatus::Away,
        Ok(DomainStatus::OnCall) => OperatorStatus::OnCall,
        Ok(DomainStatus::WrapUp) => OperatorStatus::WrapUp,
        Ok(DomainStatus::Paused) => OperatorStatus::Paused,
        Err(_) => OperatorStatus::Unspecified,
    }
}

fn kind_to_proto(kind: &str) -> CallKind {
    match carebell_domain::CallKind::parse(kind) {
        Some(carebell_domain::CallKind::Emergency) => CallKind::Emergency,
        Some(carebell_domain::CallKind::Technical) => CallKind::Technical,
        Some(carebell_domain::CallKind::Callback) => CallKind::Callback,
        Some(carebell_domain::CallKind::Call) | None => CallKind::Call,
    }
}

pub struct ConsoleService {
    store: Store,
    hub: Arc<Hub>,
    presence: Presence,
    settings: ConsoleSettings,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl ConsoleService {
    pub fn new(
        store: Store,
        hub: Arc<Hub>,
        presence: Presence,
        settings: ConsoleSettings,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            store,
            hub,
            presence,
            settings,
            shutdown,
            tracker,
        }
    }

    pub fn into_server(self) -> ConsoleServer<Self> {
        ConsoleServer::new(self)
    }

    async fn authenticate<T>(&self, request: &Request<T>) -> Result<OperatorSession, Status> {
        let token = bearer_token(request)?;
        self.store
            .session(&token_hash(token))
            .await
            .map_err(status_from_store)?
            .ok_or_else(|| {
                Status::unauthenticated("the session is unknown or has expired; sign in again")
            })
    }
}

impl ConsoleService {
    async fn authenticate_supervisor<T>(
        &self,
        request: &Request<T>,
    ) -> Result<OperatorSession, Status> {
        let session = self.authenticate(request).await?;
        let skills = self
            .store
            .operator_skills(session.operator_id)
            .await
            .map_err(status_from_store)?;
        if !skills.iter().any(|skill| skill == SUPERVISOR_SKILL) {
            return Err(Status::permission_denied("this needs a supervisor"));
        }
        Ok(session)
    }
}

pub use crate::credentials::hash_password;

fn check_note(note: &str) -> Result<(), Status> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(Status::invalid_argument(format!(
            "the note is longer than {MAX_NOTE_BYTES} bytes"
        )));
    }
    Ok(())
}

fn parse_uuid(raw: &str, what: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(raw).map_err(|_| Status::invalid_argument(format!("{what} is not a valid id")))
}

fn millis(at: chrono::DateTime<chrono::Utc>) -> i64 {
    at.timestamp_millis()
}

fn event(event: Event) -> ConsoleEvent {
    ConsoleEvent {
        at_ms: chrono::Utc::now().timestamp_millis(),
        event: Some(event),
    }
}

/// Records how long after its call's creation an offer reaches a console: once, when it is
/// first shown (not again on a resync after a reconnect).
fn observe_offer_latency(offer: &OfferRow) {
    let since_created = chrono::Utc::now() - offer.call_created_at;
    carebell_metrics::observe(
        &carebell_metrics::metrics().offer_latency_seconds,
        &carebell_metrics::label("kind", offer.kind.as_str()),
        since_created.to_std().unwrap_or_default(),
    );
}

fn offer_event(offer: &OfferRow) -> ConsoleEvent {
    let kind = kind_to_proto(&offer.kind);
    event(Event::Offer(Offer {
        offer_id: offer.offer_id.to_string(),
        call_id: offer.call_id.to_string(),
        resident_id: offer.resident_id.to_string(),
        resident_name: offer.resident_name.clone(),
        device_id: offer.device_id.clone(),
        kind: kind as i32,
        expires_at_ms: millis(offer.expires_at),
        call_created_at_ms: millis(offer.call_created_at),
        queue_id: offer.queue_id.clone(),
        escalates_at_ms: match (kind, offer.overflowed, offer.deadline_at) {
            (CallKind::Emergency, false, Some(deadline)) => millis(deadline),
            _ => 0,
        },
    }))
}

impl ConsoleService {
    async fn resident_record(
        &self,
        resident_id: Uuid,
        actor: &OperatorSession,
    ) -> Result<ResidentRecord, Status> {
        let record = self
            .store
            .read_resident(resident_id, &format!("operator:{}", actor.operator_id))
            .await
            .map_err(status_from_store)?;
        let mut devices = Vec::with_capacity(record.devices.len());
        for device in record.devices {
            // Presence is advisory: if Redis is down the record still shows, with "offline".
            let online = self
                .presence
                .lookup(Kind::Device, &device.device_id)
                .await
                .ok()
                .flatten()
                .is_some();
            devices.push(DeviceSummary {
                device_id: device.device_id,
                online,
                last_seen_ms: device.last_seen_at.map(millis).unwrap_or_default(),
            });
        }
        Ok(ResidentRecord {
            resident_id: record.resident_id.to_string(),
            full_name: record.full_name,
            address: record.address,
            phone: record.phone,
            station_name: record.station_name,
            dialect: record.dialect,
            medical_notes: record.medical_notes,
            devices,
            risk_warnings: record.risk_warnings,
            key_safe: record.key_safe,
            contacts: record
                .contacts
                .into_iter()
                .map(|contact| ContactSummary {
                    name: contact.name,
                    relationship: contact.relationship,
                    phone: contact.phone,
                    holds_keys: contact.holds_keys,
                    position: contact.position.unwrap_or(0),
                })
                .collect(),
            recent: record
                .recent
                .into_iter()
                .map(|call| Interaction {
                    call_id: call.call_id.to_string(),
                    kind: call.kind,
                    state: call.state,
                    disposition: call.disposition.unwrap_or_default(),
                    note: call.note.unwrap_or_default(),
                    operator_name: call.operator_name.unwrap_or_default(),
                    created_at_ms: millis(call.created_at),
                })
                .collect(),
            open_orders: record
                .open_orders
                .into_iter()
                .map(orders::service_order)
                .collect(),
        })
    }
}

type QueueStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<QueueStatusResponse, Status>> + Send>>;

/// Statistics over `[from, to)` from the event log.
async fn statistics(
    store: &Store,
    from: Option<chrono::DateTime<chrono::Utc>>,
    to: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<StatisticsResponse, Status> {
    let counts = store
        .recompute_statistics(from, to)
        .await
        .map_err(status_from_store)?;
    let occupancy = store.occupancy(from, to).await.map_err(status_from_store)?;
    let count = |value: i64| u64::try_from(value).unwrap_or(0);
    Ok(StatisticsResponse {
        offered: count(counts.offered),
        answered: count(counts.answered),
        answered_within_60s: count(counts.answered_within_60s),
        answered_within_180s: count(counts.answered_within_180s),
        abandoned: count(counts.abandoned),
        short_abandoned: count(counts.short_abandoned),
        short_abandon_threshold_secs: carebell_store::SHORT_ABANDON_SECS,
        service_level_60s: counts.service_level_60s(),
        service_level_180s: counts.service_level_180s(),
        average_speed_of_answer_secs: counts.average_speed_of_answer_secs(),
        abandonment_rate: counts.abandonment_rate(),
        average_handling_secs: counts.average_handling_secs(),
        occupancy,
    })
}

/// The supervisors' picture: queues, waiting items, operators, the last 24 hours' figures.
async fn queue_snapshot(store: &Store) -> Result<QueueStatusResponse, Status> {
    let status = store.queue_status().await.map_err(status_from_store)?;
    let since = store
        .database_time_ago(24 * 3600)
        .await
        .map_err(status_from_store)?;
    let last_24_hours = statistics(store, Some(since), None).await?;
    Ok(QueueStatusResponse {
        queues: status
            .queues
            .into_iter()
            .map(|queue| QueueFigures {
                queue_id: queue.queue_id,
                waiting: queue.waiting,
                longest_wait_secs: queue.longest_wait_secs,
                eligible_available_operators: queue.eligible_available_operators,
            })
            .collect(),
        waiting: status
            .waiting
            .into_iter()
            .map(|item| WaitingItem {
                call_id: item.call_id.to_string(),
                queue_id: item.queue_id,
                kind: kind_to_proto(&item.kind) as i32,
                resident_name: item.resident_name,
                waited_secs: item.waited_secs,
                ringing: item.ringing,
            })
            .collect(),
        operators: status
            .operators
            .into_iter()
            .map(|operator| OperatorState {
                operator_id: operator.operator_id.to_string(),
                display_name: operator.display_name,
                status: status_to_proto(&operator.status) as i32,
                reason: operator.reason,
                secs_in_status: operator.secs_in_status,
                skills: operator.skills,
            })
            .collect(),
        last_24_hours: Some(last_24_hours),
    })
}

type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<ConsoleEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Console for ConsoleService {
    async fn sign_in(
        &self,
        request: Request<SignInRequest>,
    ) -> Result<Response<SignInResponse>, Status> {
        let source = crate::credentials::client_address(&request);
        let SignInRequest { username, password } = request.into_inner();
        check_lengths(&username, &password)?;
        let credentials = self
            .store
            .operator_credentials(&username)
            .await
            .map_err(status_from_store)?;
        let found = credentials.map(|credentials| {
            let hash = credentials.password_hash.clone();
            (credentials, hash)
        });
        let credentials =
            verified_account(&self.store, "operator", &username, source, found, password).await?;
        let token = new_token();
        let expires_at = self
            .store
            .create_session(
                credentials.operator_id,
                &token_hash(&token),
                self.settings.session_ttl,
            )
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(SignInResponse {
            token,
            operator_id: credentials.operator_id.to_string(),
            display_name: credentials.display_name,
            expires_at_ms: millis(expires_at),
        }))
    }

    async fn set_status(
        &self,
        request: Request<SetStatusRequest>,
    ) -> Result<Response<SetStatusResponse>, Status> {
        let session = self.authenticate(&request).await?;
        let wanted = match OperatorStatus::try_from(request.get_ref().status) {
            Ok(OperatorStatus::Available) => DomainStatus::Available,
            Ok(OperatorStatus::Away) => DomainStatus::Away,
            Ok(OperatorStatus::Offline) => DomainStatus::Offline,
            Ok(OperatorStatus::OnCall) => DomainStatus::OnCall,
            Ok(OperatorStatus::WrapUp) => DomainStatus::WrapUp,
            Ok(OperatorStatus::Paused) => DomainStatus::Paused,
            _ => return Err(Status::invalid_argument("unknown operator status")),
        };
        let wanted = wanted
            .selectable()
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let reason = &request.get_ref().reason;
        if reason.len() > MAX_REASON_BYTES {
            return Err(Status::invalid_argument(format!(
                "the reason is longer than {MAX_REASON_BYTES} bytes"
            )));
        }
        self.store
            .set_operator_status_because(session.operator_id, wanted, reason)
            .await
            .map_err(status_from_store)?;
        let status = match wanted {
            DomainStatus::Available => OperatorStatus::Available,
            _ => OperatorStatus::Away,
        };
        Ok(Response::new(SetStatusResponse {
            status: status as i32,
        }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let session = self.authenticate(&request).await?;
        let operator_id = session.operator_id;
        let is_supervisor = self
            .store
            .operator_skills(operator_id)
            .await
            .map_err(status_from_store)?
            .iter()
            .any(|skill| skill == SUPERVISOR_SKILL);
        let mut subscription = self.hub.subscribe_operator(operator_id);
        let (events_tx, events_rx) = mpsc::channel::<Result<ConsoleEvent, Status>>(EVENT_BUFFER);
        let store = self.store.clone();
        let presence = self.presence.clone();
        let shutdown = self.shutdown.clone();
        let attached_at = self
            .store
            .console_attached(operator_id)
            .await
            .map_err(status_from_store)?;
        presence.connected(Kind::Operator, &operator_id.to_string());

        self.tracker.spawn(async move {
            // Resume: an offer ringing for this operator right now is shown at once.
            let mut resync = true;
            let mut client_left = false;
            loop {
                if resync {
                    resync = false;
                    // Resume: the call this operator holds (a console that reconnects, perhaps
                    // to another node, must still be able to end it) and what rings for them.
                    match store.held_call(operator_id).await {
                        Ok(Some(call_id)) => {
                            let held = event(Event::CallChanged(CallChanged {
                                call_id: call_id.to_string(),
                                state: "answered".to_owned(),
                                disposition: String::new(),
                            }));
                            if events_tx.send(Ok(held)).await.is_err() {
                                client_left = true;
                                break;
                            }
                        }
                        Ok(None) => {}
                        Err(error) => tracing::warn!(%error, "cannot read the held call"),
                    }
                    match store.live_offer_for(operator_id).await {
                        Ok(Some(offer)) => {
                            if events_tx.send(Ok(offer_event(&offer))).await.is_err() {
                                client_left = true;
                                break;
                            }
                        }
                        Ok(None) => {}
                        Err(error) => tracing::warn!(%error, "cannot read the live offer"),
                    }
                }
                let next = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = events_tx.closed() => { client_left = true; break; }
                    next = subscription.events.recv() => next,
                };
                let console_event = match next {
                    Ok(OperatorEvent::Offer { offer_id }) => match store.offer(offer_id).await {
                        Ok(offer) if offer.state == "offered" => {
                            observe_offer_latency(&offer);
                            Some(offer_event(&offer))
                        }
                        Ok(_) => None,
                        Err(error) => {
                            tracing::warn!(%error, "cannot read an offer");
                            None
                        }
                    },
                    Ok(OperatorEvent::OfferWithdrawn { offer_id, call_id, reason }) => {
                        Some(event(Event::OfferWithdrawn(OfferWithdrawn {
                            offer_id: offer_id.to_string(),
                            call_id: call_id.to_string(),
                            reason,
                        })))
                    }
                    Ok(OperatorEvent::CallChanged { call_id, state, disposition }) => {
                        Some(event(Event::CallChanged(CallChanged {
                            call_id: call_id.to_string(),
                            state,
                            disposition: disposition.unwrap_or_default(),
                        })))
                    }
                    Ok(OperatorEvent::StatusChanged { status, reason }) => {
                        Some(event(Event::StatusChanged(StatusChanged {
                            status: status_to_proto(&status) as i32,
                            reason,
                        })))
                    }
                    Ok(OperatorEvent::Alert {
                        call_id,
                        order_id,
                        reason,
                        everyone,
                    }) => (is_supervisor || everyone).then(|| {
                        event(Event::Alert(SupervisorAlert {
                            call_id: call_id.map(|id| id.to_string()).unwrap_or_default(),
                            reason,
                            order_id: order_id.map(|id| id.to_string()).unwrap_or_default(),
                        }))
                    }),
                    Ok(OperatorEvent::RtcSignal { call_id, kind, payload }) => {
                        Some(event(Event::RtcSignal(RtcSignal {
                            call_id: call_id.to_string(),
                            kind,
                            payload,
                        })))
                    }
                    Ok(OperatorEvent::Resync) | Err(RecvError::Lagged(_)) => {
                        resync = true;
                        None
                    }
                    Err(RecvError::Closed) => break,
                };
                if let Some(console_event) = console_event {
                    if events_tx.send(Ok(console_event)).await.is_err() {
                        client_left = true;
                        break;
                    }
                }
            }
            presence.disconnected(Kind::Operator, &operator_id.to_string());
            // A console that went away takes its operator offline (unless another console of
            // theirs is still here), so calls are not offered into the void. On shutdown the
            // console reconnects to another node instead.
            if client_left && !subscription.others_remain() {
                if let Err(error) = store.operator_disconnected(operator_id, attached_at).await {
                    tracing::warn!(%error, %operator_id, "cannot mark a disconnected operator offline");
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(events_rx))))
    }

    async fn accept(
        &self,
        request: Request<AcceptRequest>,
    ) -> Result<Response<AcceptResponse>, Status> {
        let session = self.authenticate(&request).await?;
        let offer_id = parse_uuid(&request.get_ref().offer_id, "offer_id")?;
        let accepted = self
            .store
            .accept_offer(offer_id, session.operator_id)
            .await
            .map_err(status_from_store)?;
        tracing::info!(call_id = %accepted.call_id, operator_id = %session.operator_id, "call answered");
        if !accepted.answered_before {
            carebell_metrics::observe(
                &carebell_metrics::metrics().queue_wait_seconds,
                &carebell_metrics::label("kind", accepted.kind.as_str()),
                Duration::from_millis(u64::try_from(accepted.waited_ms).unwrap_or(0)),
            );
        }
        // The acceptance is committed: a failure to read the record must not make it look
        // refused (a retry would be told the offer is no longer open).
        let resident = match self.resident_record(accepted.resident_id, &session).await {
            Ok(resident) => Some(resident),
            Err(status) => {
                tracing::warn!(%status, "accepted, but the resident's record could not be read");
                None
            }
        };
        Ok(Response::new(AcceptResponse {
            call_id: accepted.call_id.to_string(),
            resident,
        }))
    }

    async fn end_call(
        &self,
        request: Request<EndCallRequest>,
    ) -> Result<Response<EndCallResponse>, Status> {
        let session = self.authenticate(&request).await?;
        let EndCallRequest {
            call_id,
            disposition,
            note,
        } = request.into_inner();
        let call_id = parse_uuid(&call_id, "call_id")?;
        let disposition = match Disposition::try_from(disposition) {
            Ok(Disposition::AccidentalPress) => DomainDisposition::AccidentalPress,
            Ok(Disposition::Companionship) => DomainDisposition::Companionship,
            Ok(Disposition::Information) => DomainDisposition::Information,
            Ok(Disposition::ServiceRequest) => DomainDisposition::ServiceRequest,
            Ok(Disposition::HealthConcern) => DomainDisposition::HealthConcern,
            Ok(Disposition::Emergency) => DomainDisposition::Emergency,
            _ => return Err(Status::invalid_argument("a disposition is required")),
        };
        check_note(&note)?;
        self.store
            .end_call(call_id, session.operator_id, disposition, &note)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(EndCallResponse {}))
    }

    async fn get_resident(
        &self,
        request: Request<GetResidentRequest>,
    ) -> Result<Response<ResidentRecord>, Status> {
        let session = self.authenticate(&request).await?;
        let resident_id = parse_uuid(&request.get_ref().resident_id, "resident_id")?;
        Ok(Response::new(
            self.resident_record(resident_id, &session).await?,
        ))
    }

    async fn record_alarm_action(
        &self,
        request: Request<RecordAlarmActionRequest>,
    ) -> Result<Response<RecordAlarmActionResponse>, Status> {
        let session = self.authenticate(&request).await?;
        let RecordAlarmActionRequest {
            call_id,
            action,
            note,
        } = request.into_inner();
        let call_id = parse_uuid(&call_id, "call_id")?;
        let action = match AlarmAction::try_from(action) {
            Ok(AlarmAction::CalledSenior) => DomainAction::CalledSenior,
            Ok(AlarmAction::Called120) => DomainAction::Called120,
            Ok(AlarmAction::NotifiedFamily) => DomainAction::NotifiedFamily,
            Ok(AlarmAction::SentResponder) => DomainAction::SentResponder,
            _ => return Err(Status::invalid_argument("an action is required")),
        };
        check_note(&note)?;
        self.store
            .record_alarm_action(call_id, session.operator_id, action, &note)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(RecordAlarmActionResponse {}))
    }

    async fn resolve_alarm(
        &self,
        request: Request<ResolveAlarmRequest>,
    ) -> Result<Response<ResolveAlarmResponse>, Status> {
        let session = self.authenticate(&request).await?;
        let ResolveAlarmRequest {
            call_id,
            outcome,
            note,
        } = request.into_inner();
        let call_id = parse_uuid(&call_id, "call_id")?;
        let outcome = match AlarmOutcome::try_from(outcome) {
            Ok(AlarmOutcome::FalseAlarm) => DomainOutcome::FalseAlarm,
            Ok(AlarmOutcome::ResolvedByPhone) => DomainOutcome::ResolvedByPhone,
            Ok(AlarmOutcome::ResponderVisited) => DomainOutcome::ResponderVisited,
            Ok(AlarmOutcome::Ambulance) => DomainOutcome::Ambulance,
            Ok(AlarmOutcome::Hospital) => DomainOutcome::Hospital,
            _ => return Err(Status::invalid_argument("an outcome is required")),
        };
        check_note(&note)?;
        self.store
            .resolve_alarm(call_id, session.operator_id, outcome, &note)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(ResolveAlarmResponse {}))
    }

    async fn reclaim_call(
        &self,
        request: Request<ReclaimCallRequest>,
    ) -> Result<Response<ReclaimCallResponse>, Status> {
        let supervisor = self.authenticate_supervisor(&request).await?;
        let call_id = parse_uuid(&request.get_ref().call_id, "call_id")?;
        self.store
            .reclaim_call(call_id, supervisor.operator_id, self.settings.ring_timeout)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(ReclaimCallResponse {}))
    }

    async fn failed_deliveries(
        &self,
        request: Request<FailedDeliveriesRequest>,
    ) -> Result<Response<FailedDeliveriesResponse>, Status> {
        self.authenticate(&request).await?;
        let dead = self
            .store
            .dead_webhook_deliveries(100)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(FailedDeliveriesResponse {
            deliveries: dead
                .into_iter()
                .map(|delivery| FailedDelivery {
                    delivery_id: delivery.id,
                    body_json: delivery.body.to_string(),
                    attempts: u32::try_from(delivery.attempts).unwrap_or(0),
                    last_error: delivery.last_error,
                    created_at_ms: millis(delivery.created_at),
                })
                .collect(),
        }))
    }

    async fn decline(
        &self,
        request: Request<DeclineRequest>,
    ) -> Result<Response<DeclineResponse>, Status> {
        let session = self.authenticate(&request).await?;
        let offer_id = parse_uuid(&request.get_ref().offer_id, "offer_id")?;
        self.store
            .decline_offer(offer_id, session.operator_id)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(DeclineResponse {}))
    }

    async fn transfer(
        &self,
        request: Request<TransferRequest>,
    ) -> Result<Response<TransferResponse>, Status> {
        use carebell_proto::console::v1::transfer_request::Target;
        let session = self.authenticate(&request).await?;
        let TransferRequest { call_id, target } = request.into_inner();
        let call_id = parse_uuid(&call_id, "call_id")?;
        let target = match target {
            Some(Target::OperatorUsername(username)) if !username.is_empty() => {
                carebell_store::TransferTarget::Operator(username)
            }
            Some(Target::QueueId(queue)) if !queue.is_empty() => {
                carebell_store::TransferTarget::Queue(queue)
            }
            _ => {
                return Err(Status::invalid_argument(
                    "a transfer needs an operator or a queue to go to",
                ))
            }
        };
        self.store
            .transfer_call(
                call_id,
                session.operator_id,
                &target,
                self.settings.ring_timeout,
            )
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(TransferResponse {}))
    }

    async fn queue_status(
        &self,
        request: Request<QueueStatusRequest>,
    ) -> Result<Response<QueueStatusResponse>, Status> {
        self.authenticate_supervisor(&request).await?;
        Ok(Response::new(queue_snapshot(&self.store).await?))
    }

    type WatchQueuesStream = QueueStream;

    async fn watch_queues(
        &self,
        request: Request<QueueStatusRequest>,
    ) -> Result<Response<Self::WatchQueuesStream>, Status> {
        self.authenticate_supervisor(&request).await?;
        let (snapshots_tx, snapshots_rx) = mpsc::channel(2);
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = snapshots_tx.closed() => break,
                    _ = ticker.tick() => {}
                }
                let snapshot = queue_snapshot(&store).await;
                if snapshots_tx.send(snapshot).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(snapshots_rx))))
    }

    async fn statistics(
        &self,
        request: Request<StatisticsRequest>,
    ) -> Result<Response<StatisticsResponse>, Status> {
        self.authenticate_supervisor(&request).await?;
        let bound =
            |ms: i64, what: &str| -> Result<Option<chrono::DateTime<chrono::Utc>>, Status> {
                if ms == 0 {
                    return Ok(None);
                }
                chrono::DateTime::from_timestamp_millis(ms)
                    .map(Some)
                    .ok_or_else(|| Status::invalid_argument(format!("{what} is out of range")))
            };
        let from = bound(request.get_ref().from_ms, "from_ms")?;
        let to = bound(request.get_ref().to_ms, "to_ms")?;
        if let (Some(from), Some(to)) = (from, to) {
            if from >= to {
                return Err(Status::invalid_argument("from_ms must be before to_ms"));
            }
        }
        Ok(Response::new(statistics(&self.store, from, to).await?))
    }

    async fn suggest_providers(
        &self,
        request: Request<SuggestProvidersRequest>,
    ) -> Result<Response<SuggestProvidersResponse>, Status> {
        self.suggest_providers_rpc(request).await
    }

    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<CreateOrderResponse>, Status> {
        self.create_order_rpc(request).await
    }

    async fn cancel_order(
        &self,
        request: Request<CancelOrderRequest>,
    ) -> Result<Response<CancelOrderResponse>, Status> {
        self.cancel_order_rpc(request).await
    }

    async fn record_order_call_back(
        &self,
        request: Request<RecordOrderCallBackRequest>,
    ) -> Result<Response<RecordOrderCallBackResponse>, Status> {
        self.record_order_callback_rpc(request).await
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        self.list_orders_rpc(request).await
    }

    async fn reinstate_provider(
        &self,
        request: Request<ReinstateProviderRequest>,
    ) -> Result<Response<ReinstateProviderResponse>, Status> {
        self.reinstate_provider_rpc(request).await
    }

    async fn service_report(
        &self,
        request: Request<ServiceReportRequest>,
    ) -> Result<Response<ServiceReportResponse>, Status> {
        self.service_report_rpc(request).await
    }

    async fn catalogue(
        &self,
        request: Request<CatalogueRequest>,
    ) -> Result<Response<CatalogueResponse>, Status> {
        self.catalogue_rpc(request).await
    }

    async fn family_cascade(
        &self,
        request: Request<FamilyCascadeRequest>,
    ) -> Result<Response<FamilyCascadeResponse>, Status> {
        self.family_cascade_rpc(request).await
    }

    async fn send_rtc_signal(
        &self,
        request: Request<RtcSignal>,
    ) -> Result<Response<SendRtcSignalResponse>, Status> {
        self.send_rtc_signal_rpc(request).await
    }
}

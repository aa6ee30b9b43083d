//! The family API (`carebell.family.v1.Family`): a family member signs in, follows alerts about
//! their own relatives, acknowledges them ("I'm on my way") and reads the history. Nothing here
//! can reach another family's relatives: every query is keyed by the signed-in account.

use std::pin::Pin;
use std::time::Duration;

use carebell_presence::{Kind, Presence};
use carebell_proto::family::v1::family_server::{Family, FamilyServer};
use carebell_proto::family::v1::{
    AcknowledgeRequest, AcknowledgeResponse, Alert, AlertsRequest, HistoryRequest, HistoryResponse,
    RelativeOrder, RelativeRequest, RelativeStatus, RelativesRequest, RelativesResponse,
    SendMessageRequest, SendMessageResponse, SignInRequest, SignInResponse,
};
use carebell_store::{FamilyAlert, RelativeRow, Store};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::credentials::{bearer_token, check_lengths, new_token, token_hash, verified_account};
use crate::status_from_store;

/// How often a family member's alert stream looks for new alerts.
const POLL: Duration = Duration::from_millis(500);

pub struct FamilyService {
    store: Store,
    presence: Presence,
    session_ttl: Duration,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl FamilyService {
    pub fn new(
        store: Store,
        presence: Presence,
        session_ttl: Duration,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            store,
            presence,
            session_ttl,
            shutdown,
            tracker,
        }
    }

    pub fn into_server(self) -> FamilyServer<Self> {
        FamilyServer::new(self)
    }

    async fn account<T>(&self, request: &Request<T>) -> Result<Uuid, Status> {
        let token = bearer_token(request)?;
        self.store
            .family_session(&token_hash(token))
            .await
            .map_err(status_from_store)?
            .ok_or_else(|| {
                Status::unauthenticated("the session is unknown or has expired; sign in again")
            })
    }
}

fn alert(alert: FamilyAlert) -> Alert {
    Alert {
        alert_id: alert.notification_id,
        call_id: alert.call_id.map(|id| id.to_string()).unwrap_or_default(),
        resident_id: alert.resident_id.to_string(),
        resident_name: alert.resident_name,
        kind: alert.kind,
        state: alert.state,
        sent_at_ms: alert
            .sent_at
            .map(|at| at.timestamp_millis())
            .unwrap_or_default(),
        acknowledged_at_ms: alert
            .acknowledged_at
            .map(|at| at.timestamp_millis())
            .unwrap_or_default(),
    }
}

impl FamilyService {
    async fn relative_message(&self, row: RelativeRow) -> RelativeStatus {
        let mut online = false;
        for device_id in &row.device_ids {
            // Presence is advisory: if Redis is down the tablet shows as offline.
            if let Ok(Some(_)) = self.presence.lookup(Kind::Device, device_id).await {
                online = true;
            }
        }
        let millis = |at: Option<chrono::DateTime<chrono::Utc>>| {
            at.map(|at| at.timestamp_millis()).unwrap_or_default()
        };
        RelativeStatus {
            resident_id: row.resident_id.to_string(),
            name: row.name,
            tablet_online: online,
            last_seen_ms: millis(row.last_seen_at),
            last_call_at_ms: millis(row.last_call_at),
            last_call_state: row.last_call_state.unwrap_or_default(),
            open_orders: row
                .open_orders
                .into_iter()
                .map(|order| RelativeOrder {
                    order_id: order.id.to_string(),
                    service_name_zh: order.service_name_zh,
                    service_name_en: order.service_name_en,
                    state: order.state,
                    eta_ms: millis(order.eta_at),
                })
                .collect(),
        }
    }
}

fn resident_id(raw: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(raw).map_err(|_| Status::invalid_argument("resident id is not a valid id"))
}

type AlertStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Alert, Status>> + Send>>;

#[tonic::async_trait]
impl Family for FamilyService {
    async fn sign_in(
        &self,
        request: Request<SignInRequest>,
    ) -> Result<Response<SignInResponse>, Status> {
        let source = crate::credentials::client_address(&request);
        let SignInRequest { username, password } = request.into_inner();
        check_lengths(&username, &password)?;
        let credentials = self
            .store
            .family_credentials(&username)
            .await
            .map_err(status_from_store)?;
        let found =
            credentials.map(|(account_id, display_name, hash)| ((account_id, display_name), hash));
        let (account_id, display_name) =
            verified_account(&self.store, "family", &username, source, found, password).await?;
        let token = new_token();
        let expires_at = self
            .store
            .create_family_session(account_id, &token_hash(&token), self.session_ttl)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(SignInResponse {
            token,
            display_name,
            expires_at_ms: expires_at.timestamp_millis(),
        }))
    }

    type AlertsStream = AlertStream;

    async fn alerts(
        &self,
        request: Request<AlertsRequest>,
    ) -> Result<Response<Self::AlertsStream>, Status> {
        let account_id = self.account(&request).await?;
        let after_id = request.get_ref().after_id;
        let token = token_hash(bearer_token(&request)?);
        let (alerts_tx, alerts_rx) = mpsc::channel(16);
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            // What this stream has shown, by alert and state: an alert is sent when it first
            // appears and again when its state changes. (Not a watermark of ids: an ordered
            // contact's alert gets its id when the cascade starts and is sent only later.)
            let mut shown: std::collections::HashMap<i64, String> =
                std::collections::HashMap::new();
            loop {
                // The session may expire (or be revoked) while the stream is open.
                match store.family_session(&token).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        let _ = alerts_tx
                            .send(Err(Status::unauthenticated(
                                "the session has expired; sign in again",
                            )))
                            .await;
                        return;
                    }
                    Err(error) => tracing::warn!(%error, "cannot check a family session"),
                }
                match store.family_alerts(account_id, after_id).await {
                    Ok(alerts) => {
                        for found in alerts {
                            if shown.get(&found.notification_id) == Some(&found.state) {
                                continue;
                            }
                            shown.insert(found.notification_id, found.state.clone());
                            if alerts_tx.send(Ok(alert(found))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot read family alerts"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = alerts_tx.closed() => return,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(alerts_rx))))
    }

    async fn acknowledge(
        &self,
        request: Request<AcknowledgeRequest>,
    ) -> Result<Response<AcknowledgeResponse>, Status> {
        let account_id = self.account(&request).await?;
        self.store
            .acknowledge_alert(account_id, request.get_ref().alert_id)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(AcknowledgeResponse {}))
    }

    async fn relatives(
        &self,
        request: Request<RelativesRequest>,
    ) -> Result<Response<RelativesResponse>, Status> {
        let account_id = self.account(&request).await?;
        let rows = self
            .store
            .relatives(account_id)
            .await
            .map_err(status_from_store)?;
        let mut relatives = Vec::with_capacity(rows.len());
        for row in rows {
            relatives.push(self.relative_message(row).await);
        }
        Ok(Response::new(RelativesResponse { relatives }))
    }

    async fn relative(
        &self,
        request: Request<RelativeRequest>,
    ) -> Result<Response<RelativeStatus>, Status> {
        let account_id = self.account(&request).await?;
        let resident_id = resident_id(&request.get_ref().resident_id)?;
        let row = self
            .store
            .relative(account_id, resident_id)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(self.relative_message(row).await))
    }

    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        let account_id = self.account(&request).await?;
        let message = request.get_ref();
        let resident_id = resident_id(&message.resident_id)?;
        self.store
            .send_family_message(account_id, resident_id, &message.text)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(SendMessageResponse {}))
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let account_id = self.account(&request).await?;
        let alerts = self
            .store
            .family_alerts(account_id, 0)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(HistoryResponse {
            alerts: alerts.into_iter().map(alert).collect(),
        }))
    }
}

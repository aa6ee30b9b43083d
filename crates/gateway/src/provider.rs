//! The provider API (`carebell.provider.v1.Provider`): a provider's dispatcher signs in,
//! follows the offers made to the organisation and the orders it holds, accepts or declines,
//! sends staff and reports progress. Every query and action is keyed by the signed-in
//! account's provider: another provider's order is PERMISSION_DENIED, checked in the store
//! under the order's row lock.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use carebell_dispatch::Hub;
use carebell_domain::orders::GeoPoint;
use carebell_proto::provider::v1::provider_server::{Provider, ProviderServer};
use carebell_proto::provider::v1::{
    AcceptRequest, AcceptResponse, AssignStaffRequest, AssignStaffResponse, DeclineRequest,
    DeclineResponse, FeedRequest, FiguresRequest, FiguresResponse, ListOrdersRequest,
    ListOrdersResponse, ListStaffRequest, ListStaffResponse, OrderStatus, OrderView, SignInRequest,
    SignInResponse, StaffMember, UpdateStatusRequest, UpdateStatusResponse,
};
use carebell_store::{OrderRow, ProgressReport, ProviderSession, Store};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::credentials::{bearer_token, check_lengths, new_token, token_hash, verified_account};
use crate::status_from_store;

/// A feed re-reads at least this often, even when no notification arrived.
const FEED_REREAD: Duration = Duration::from_secs(2);

pub struct ProviderService {
    store: Store,
    hub: Arc<Hub>,
    session_ttl: Duration,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl ProviderService {
    pub fn new(
        store: Store,
        hub: Arc<Hub>,
        session_ttl: Duration,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            store,
            hub,
            session_ttl,
            shutdown,
            tracker,
        }
    }

    pub fn into_server(self) -> ProviderServer<Self> {
        ProviderServer::new(self)
    }

    async fn session<T>(&self, request: &Request<T>) -> Result<ProviderSession, Status> {
        let token = bearer_token(request)?;
        self.store
            .provider_session(&token_hash(token))
            .await
            .map_err(status_from_store)?
            .ok_or_else(|| {
                Status::unauthenticated("the session is unknown or has expired; sign in again")
            })
    }
}

fn parse_id(raw: &str, what: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(raw).map_err(|_| Status::invalid_argument(format!("{what} is not a UUID")))
}

fn millis(at: Option<chrono::DateTime<chrono::Utc>>) -> i64 {
    at.map(|at| at.timestamp_millis()).unwrap_or_default()
}

/// How `provider_id` sees an order.
fn view(order: &OrderRow, provider_id: Uuid) -> OrderView {
    let offered_to_us = order.offered_to == Some(provider_id);
    let held = order.provider_id == Some(provider_id);
    let state = if offered_to_us {
        "offered".to_owned()
    } else if held {
        order.state.clone()
    } else {
        "withdrawn".to_owned()
    };
    OrderView {
        order_id: order.id.to_string(),
        state,
        service_code: order.service_code.clone(),
        service_name_zh: order.service_name_zh.clone(),
        service_name_en: order.service_name_en.clone(),
        resident_name: if held {
            order.resident_name.clone()
        } else {
            String::new()
        },
        resident_address: if held {
            order.resident_address.clone()
        } else {
            String::new()
        },
        note: order.note.clone(),
        offer_expires_at_ms: if offered_to_us {
            millis(order.offer_expires_at)
        } else {
            0
        },
        eta_ms: if held { millis(order.eta_at) } else { 0 },
        staff_id: if held {
            order.staff_id.map(|id| id.to_string()).unwrap_or_default()
        } else {
            String::new()
        },
        staff_name: if held {
            order.staff_name.clone().unwrap_or_default()
        } else {
            String::new()
        },
        distance_m: order.distance_m.unwrap_or_default(),
        travel_minutes: order.travel_minutes.unwrap_or_default(),
        in_circle: order.in_circle.unwrap_or_default(),
        price_fen: order.price_fen.unwrap_or_default(),
        created_at_ms: order.created_at.timestamp_millis(),
    }
}

type FeedStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<OrderView, Status>> + Send>>;

#[tonic::async_trait]
impl Provider for ProviderService {
    async fn sign_in(
        &self,
        request: Request<SignInRequest>,
    ) -> Result<Response<SignInResponse>, Status> {
        let source = crate::credentials::client_address(&request);
        let SignInRequest { username, password } = request.into_inner();
        check_lengths(&username, &password)?;
        let credentials = self
            .store
            .provider_credentials(&username)
            .await
            .map_err(status_from_store)?;
        let found =
            credentials.map(|(session, display_name, hash)| ((session, display_name), hash));
        let (session, display_name) =
            verified_account(&self.store, "provider", &username, source, found, password).await?;
        let provider = self
            .store
            .provider(session.provider_id)
            .await
            .map_err(status_from_store)?;
        let token = new_token();
        let expires_at = self
            .store
            .create_provider_session(session.account_id, &token_hash(&token), self.session_ttl)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(SignInResponse {
            token,
            provider_id: session.provider_id.to_string(),
            provider_name: provider.name,
            display_name,
            expires_at_ms: expires_at.timestamp_millis(),
        }))
    }

    type FeedStream = FeedStream;

    async fn feed(&self, request: Request<FeedRequest>) -> Result<Response<FeedStream>, Status> {
        let session = self.session(&request).await?;
        let token = token_hash(bearer_token(&request)?);
        let provider_id = session.provider_id;
        let (views_tx, views_rx) = mpsc::channel(32);
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        let mut changes = self.hub.provider_feeds();
        self.tracker.spawn(async move {
            // What this stream has shown, by order.
            let mut shown: HashMap<Uuid, OrderView> = HashMap::new();
            loop {
                match store.provider_session(&token).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        let _ = views_tx
                            .send(Err(Status::unauthenticated(
                                "the session has expired; sign in again",
                            )))
                            .await;
                        return;
                    }
                    Err(error) => tracing::warn!(%error, "cannot check a provider session"),
                }
                match store.provider_orders(provider_id).await {
                    Ok(orders) => {
                        let mut now_shown: HashMap<Uuid, OrderView> = HashMap::new();
                        for order in &orders {
                            now_shown.insert(order.id, view(order, provider_id));
                        }
                        // Orders gone from the feed: say how they ended for us, once.
                        for (order_id, _) in
                            shown.iter().filter(|(id, _)| !now_shown.contains_key(id))
                        {
                            let last = match store.order(*order_id).await {
                                Ok(order) => {
                                    let last = view(&order, provider_id);
                                    let read = if last.resident_name.is_empty() {
                                        Vec::new()
                                    } else {
                                        vec![order.resident_id]
                                    };
                                    match store.audit_provider_reads(provider_id, &read).await {
                                        Ok(()) => last,
                                        Err(error) => {
                                            tracing::warn!(%error, "cannot audit a provider's read");
                                            continue;
                                        }
                                    }
                                }
                                Err(error) => {
                                    tracing::warn!(%error, "cannot read an order");
                                    continue;
                                }
                            };
                            if views_tx.send(Ok(last)).await.is_err() {
                                return;
                            }
                        }
                        let changed: Vec<&OrderView> = now_shown
                            .iter()
                            .filter(|(order_id, view)| shown.get(*order_id) != Some(*view))
                            .map(|(_, view)| view)
                            .collect();
                        // A view that shows a name and address is a read of that resident,
                        // audited before it is shown.
                        let read: Vec<Uuid> = orders
                            .iter()
                            .filter(|order| {
                                changed.iter().any(|view| {
                                    view.order_id == order.id.to_string()
                                        && !view.resident_name.is_empty()
                                })
                            })
                            .map(|order| order.resident_id)
                            .collect();
                        match store.audit_provider_reads(provider_id, &read).await {
                            Ok(()) => {
                                for view in changed {
                                    if views_tx.send(Ok(view.clone())).await.is_err() {
                                        return;
                                    }
                                }
                                shown = now_shown;
                            }
                            // Not shown, so tried again at the next reading.
                            Err(error) => tracing::warn!(%error, "cannot audit a provider's reads; views held back"),
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot read a provider's orders"),
                }
                let deadline = tokio::time::sleep(FEED_REREAD);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = views_tx.closed() => return,
                        _ = &mut deadline => break,
                        heard = changes.recv() => match heard {
                            Ok(id) if id == provider_id => break,
                            Ok(_) => {}
                            Err(RecvError::Lagged(_)) => break,
                            Err(RecvError::Closed) => return,
                        },
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(views_rx))))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let session = self.session(&request).await?;
        let orders = self
            .store
            .provider_orders(session.provider_id)
            .await
            .map_err(status_from_store)?;
        let views: Vec<OrderView> = orders
            .iter()
            .map(|order| view(order, session.provider_id))
            .collect();
        // Names and addresses are shown only for held orders: each is a read of that resident.
        let read: Vec<Uuid> = orders
            .iter()
            .zip(&views)
            .filter(|(_, view)| !view.resident_name.is_empty())
            .map(|(order, _)| order.resident_id)
            .collect();
        self.store
            .audit_provider_reads(session.provider_id, &read)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(ListOrdersResponse { orders: views }))
    }

    async fn accept(
        &self,
        request: Request<AcceptRequest>,
    ) -> Result<Response<AcceptResponse>, Status> {
        let session = self.session(&request).await?;
        let message = request.get_ref();
        let order_id = parse_id(&message.order_id, "order id")?;
        let staff_id = parse_id(&message.staff_id, "staff id")?;
        self.store
            .accept_order(session.provider_id, order_id, staff_id, message.eta_minutes)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(AcceptResponse {}))
    }

    async fn decline(
        &self,
        request: Request<DeclineRequest>,
    ) -> Result<Response<DeclineResponse>, Status> {
        let session = self.session(&request).await?;
        let message = request.get_ref();
        let order_id = parse_id(&message.order_id, "order id")?;
        self.store
            .decline_order(session.provider_id, order_id, &message.reason)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(DeclineResponse {}))
    }

    async fn assign_staff(
        &self,
        request: Request<AssignStaffRequest>,
    ) -> Result<Response<AssignStaffResponse>, Status> {
        let session = self.session(&request).await?;
        let message = request.get_ref();
        let order_id = parse_id(&message.order_id, "order id")?;
        let staff_id = parse_id(&message.staff_id, "staff id")?;
        self.store
            .assign_staff(session.provider_id, order_id, staff_id)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(AssignStaffResponse {}))
    }

    async fn update_status(
        &self,
        request: Request<UpdateStatusRequest>,
    ) -> Result<Response<UpdateStatusResponse>, Status> {
        let session = self.session(&request).await?;
        let message = request.into_inner();
        let order_id = parse_id(&message.order_id, "order id")?;
        let report = match OrderStatus::try_from(message.status) {
            Ok(OrderStatus::EnRoute) => ProgressReport::EnRoute,
            Ok(OrderStatus::Arrived) => ProgressReport::Arrived {
                position: message
                    .position
                    .map(|p| GeoPoint::new(p.lat, p.lon))
                    .transpose()
                    .map_err(|error| Status::invalid_argument(error.to_string()))?,
            },
            Ok(OrderStatus::Completed) => ProgressReport::Completed {
                notes: message.notes,
                duration_minutes: message.duration_minutes,
            },
            Ok(OrderStatus::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument(
                    "status must be EN_ROUTE, ARRIVED or COMPLETED",
                ))
            }
        };
        self.store
            .report_progress(session.provider_id, order_id, report)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(UpdateStatusResponse {}))
    }

    async fn list_staff(
        &self,
        request: Request<ListStaffRequest>,
    ) -> Result<Response<ListStaffResponse>, Status> {
        let session = self.session(&request).await?;
        let staff = self
            .store
            .provider_staff(session.provider_id)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(ListStaffResponse {
            staff: staff
                .into_iter()
                .map(|(id, name)| StaffMember {
                    staff_id: id.to_string(),
                    name,
                })
                .collect(),
        }))
    }

    async fn figures(
        &self,
        request: Request<FiguresRequest>,
    ) -> Result<Response<FiguresResponse>, Status> {
        let session = self.session(&request).await?;
        let figures = self
            .store
            .provider_figures(session.provider_id)
            .await
            .map_err(status_from_store)?;
        let provider = self
            .store
            .provider(session.provider_id)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(FiguresResponse {
            offers: figures.offers,
            accepted: figures.accepted,
            declined: figures.declined,
            timed_out: figures.timed_out,
            arrivals: figures.arrivals,
            on_time: figures.on_time,
            completed: figures.completed,
            ratings: figures.ratings,
            rating_sum: figures.rating_sum,
            average_rating_centi: if figures.ratings > 0 {
                figures.rating_sum * 100 / figures.ratings
            } else {
                0
            },
            suspended: provider.suspended_at.is_some(),
            suspended_reason: provider.suspended_reason,
        }))
    }
}

//! The console's service-order RPCs: suggestions, creation from a call, cancellation, the
//! call-back, the lists, reinstatement and the station report. Called from the `Console`
//! trait implementation in the parent module.

use carebell_proto::console::v1::{
    CancelOrderRequest, CancelOrderResponse, CatalogueRequest, CatalogueResponse,
    CreateOrderRequest, CreateOrderResponse, ListOrdersRequest, ListOrdersResponse, ProviderReport,
    ProviderSuggestion, RecordOrderCallBackRequest, RecordOrderCallBackResponse,
    ReinstateProviderRequest, ReinstateProviderResponse, ServiceItem, ServiceOrder,
    ServiceReportRequest, ServiceReportResponse, StationReport, SuggestProvidersRequest,
    SuggestProvidersResponse,
};
use carebell_store::{report_csv, NewOrder, OrderRow, Source};
use chrono::NaiveDate;
use tonic::{Request, Response, Status};

use super::{check_note, parse_uuid, ConsoleService};
use crate::status_from_store;

/// Orders listed at most.
const LIST_LIMIT: i64 = 200;

fn suggestion(named: carebell_store::ProviderSuggestion) -> ProviderSuggestion {
    let s = named.suggestion;
    let to_i32 = |value: Option<u32>| value.map_or(0, |v| i32::try_from(v).unwrap_or(i32::MAX));
    ProviderSuggestion {
        provider_id: s.provider_id.to_string(),
        provider_name: named.provider_name,
        distance_m: to_i32(s.distance_m),
        travel_minutes: to_i32(s.travel_minutes),
        in_circle: s.in_circle,
        active_orders: to_i32(Some(s.active_orders)),
        capacity: to_i32(Some(s.capacity)),
        rating_centi: to_i32(s.rating_centi),
        price_fen: named.price_fen,
    }
}

pub(super) fn service_order(order: OrderRow) -> ServiceOrder {
    let millis = |at: Option<chrono::DateTime<chrono::Utc>>| {
        at.map(|at| at.timestamp_millis()).unwrap_or_default()
    };
    ServiceOrder {
        order_id: order.id.to_string(),
        resident_id: order.resident_id.to_string(),
        resident_name: order.resident_name,
        service_code: order.service_code,
        service_name_zh: order.service_name_zh,
        service_name_en: order.service_name_en,
        state: order.state,
        provider_id: order
            .provider_id
            .or(order.offered_to)
            .map(|id| id.to_string())
            .unwrap_or_default(),
        provider_name: order.provider_name.unwrap_or_default(),
        staff_name: order.staff_name.unwrap_or_default(),
        created_at_ms: order.created_at.timestamp_millis(),
        eta_ms: millis(order.eta_at),
        arrived_at_ms: millis(order.arrived_at),
        completed_at_ms: millis(order.completed_at),
        rating: order.rating.map(i32::from).unwrap_or_default(),
        in_circle: order.in_circle.unwrap_or_default(),
        price_fen: order.price_fen.unwrap_or_default(),
        call_id: order.call_id.map(|id| id.to_string()).unwrap_or_default(),
        escalated: order.accept_escalated_at.is_some() || order.arrival_escalated_at.is_some(),
    }
}

fn parse_day(raw: &str, what: &str) -> Result<NaiveDate, Status> {
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map_err(|_| Status::invalid_argument(format!("{what} must be a date like 2026-11-01")))
}

impl ConsoleService {
    pub(super) async fn catalogue_rpc(
        &self,
        request: Request<CatalogueRequest>,
    ) -> Result<Response<CatalogueResponse>, Status> {
        self.authenticate(&request).await?;
        let items = self.store.catalogue().await.map_err(status_from_store)?;
        Ok(Response::new(CatalogueResponse {
            items: items
                .into_iter()
                .map(|item| ServiceItem {
                    code: item.code,
                    name_zh: item.name_zh,
                    name_en: item.name_en,
                    default_price_fen: item.default_price_fen,
                })
                .collect(),
        }))
    }

    pub(super) async fn suggest_providers_rpc(
        &self,
        request: Request<SuggestProvidersRequest>,
    ) -> Result<Response<SuggestProvidersResponse>, Status> {
        self.authenticate(&request).await?;
        let message = request.get_ref();
        let resident_id = parse_uuid(&message.resident_id, "resident id")?;
        let ranked = self
            .store
            .suggest_providers(resident_id, &message.service_code)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(SuggestProvidersResponse {
            providers: ranked.into_iter().map(suggestion).collect(),
        }))
    }

    pub(super) async fn create_order_rpc(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<CreateOrderResponse>, Status> {
        let session = self.authenticate(&request).await?;
        let message = request.into_inner();
        check_note(&message.note)?;
        let call_id = if message.call_id.is_empty() {
            None
        } else {
            Some(parse_uuid(&message.call_id, "call id")?)
        };
        let created = self
            .store
            .create_order(&NewOrder {
                resident_id: parse_uuid(&message.resident_id, "resident id")?,
                service_code: message.service_code,
                call_id,
                note: message.note,
                operator_id: Some(session.operator_id),
            })
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(CreateOrderResponse {
            order_id: created.order_id.to_string(),
            state: created.state.as_str().to_owned(),
            providers: created.suggestions.into_iter().map(suggestion).collect(),
            offered_to: created
                .offered_to
                .map(|id| id.to_string())
                .unwrap_or_default(),
        }))
    }

    pub(super) async fn cancel_order_rpc(
        &self,
        request: Request<CancelOrderRequest>,
    ) -> Result<Response<CancelOrderResponse>, Status> {
        let session = self.authenticate(&request).await?;
        let message = request.get_ref();
        let order_id = parse_uuid(&message.order_id, "order id")?;
        self.store
            .cancel_order(order_id, session.operator_id, &message.reason)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(CancelOrderResponse {}))
    }

    pub(super) async fn record_order_callback_rpc(
        &self,
        request: Request<RecordOrderCallBackRequest>,
    ) -> Result<Response<RecordOrderCallBackResponse>, Status> {
        let session = self.authenticate(&request).await?;
        let message = request.get_ref();
        check_note(&message.note)?;
        let order_id = parse_uuid(&message.order_id, "order id")?;
        self.store
            .record_order_callback(order_id, session.operator_id, &message.note)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(RecordOrderCallBackResponse {}))
    }

    pub(super) async fn list_orders_rpc(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        self.authenticate(&request).await?;
        let message = request.get_ref();
        let orders = if message.resident_id.is_empty() {
            self.store.open_orders(LIST_LIMIT).await
        } else {
            let resident_id = parse_uuid(&message.resident_id, "resident id")?;
            self.store.resident_orders(resident_id, LIST_LIMIT).await
        }
        .map_err(status_from_store)?;
        Ok(Response::new(ListOrdersResponse {
            orders: orders.into_iter().map(service_order).collect(),
        }))
    }

    pub(super) async fn reinstate_provider_rpc(
        &self,
        request: Request<ReinstateProviderRequest>,
    ) -> Result<Response<ReinstateProviderResponse>, Status> {
        let session = self.authenticate_supervisor(&request).await?;
        let provider_id = parse_uuid(&request.get_ref().provider_id, "provider id")?;
        self.store
            .reinstate_provider(provider_id, session.operator_id)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(ReinstateProviderResponse {}))
    }

    pub(super) async fn service_report_rpc(
        &self,
        request: Request<ServiceReportRequest>,
    ) -> Result<Response<ServiceReportResponse>, Status> {
        self.authenticate_supervisor(&request).await?;
        let message = request.get_ref();
        let from = parse_day(&message.from, "from")?;
        let to = parse_day(&message.to, "to")?;
        let station = if message.station_id.is_empty() {
            None
        } else {
            Some(parse_uuid(&message.station_id, "station id")?)
        };
        let stations = self
            .store
            .service_report(from, to, station, Source::Live)
            .await
            .map_err(status_from_store)?;
        let csv = report_csv(from, to, &stations);
        Ok(Response::new(ServiceReportResponse {
            stations: stations
                .into_iter()
                .map(|s| StationReport {
                    station_id: s.station_id.to_string(),
                    station_name: s.station_name,
                    remote_services: s.remote_services,
                    onsite_services: s.orders_completed,
                    emergencies: s.emergencies,
                    calls_answered: s.calls_answered,
                    answered_within_60s: s.answered_within_60s,
                    calls_abandoned: s.calls_abandoned,
                    short_abandoned: s.short_abandoned,
                    orders_created: s.orders_created,
                    orders_cancelled: s.orders_cancelled,
                    escalations: s.escalations,
                    providers: s
                        .providers
                        .into_iter()
                        .map(|p| ProviderReport {
                            provider_id: p.provider_id.to_string(),
                            provider_name: p.provider_name,
                            offers: p.offers,
                            accepted: p.accepted,
                            declined: p.declined,
                            timed_out: p.timed_out,
                            arrivals: p.arrivals,
                            on_time: p.on_time,
                            completed: p.completed,
                            ratings: p.ratings,
                            rating_sum: p.rating_sum,
                        })
                        .collect(),
                })
                .collect(),
            csv,
        }))
    }
}

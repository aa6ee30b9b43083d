//! A small console client (sign in, then authenticated calls), used by the demo's bot operators
//! and by the tests: the same gRPC API a browser console's backend would use.

use carebell_proto::console::v1::console_client::ConsoleClient;
pub use carebell_proto::console::v1::transfer_request::Target;
use carebell_proto::console::v1::{
    AcceptRequest, AcceptResponse, AlarmAction, AlarmOutcome, ConsoleEvent, DeclineRequest,
    Disposition, EndCallRequest, FailedDeliveriesRequest, FailedDelivery, GetResidentRequest,
    OperatorStatus, QueueStatusRequest, QueueStatusResponse, ReclaimCallRequest,
    RecordAlarmActionRequest, ResidentRecord, ResolveAlarmRequest, SetStatusRequest, SignInRequest,
    StatisticsRequest, StatisticsResponse, SubscribeRequest, TransferRequest,
};
use carebell_proto::console::v1::{
    CancelOrderRequest, CreateOrderRequest, CreateOrderResponse, ListOrdersRequest,
    ProviderSuggestion, RecordOrderCallBackRequest, ReinstateProviderRequest, RtcSignal,
    ServiceOrder, ServiceReportRequest, ServiceReportResponse, SuggestProvidersRequest,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status, Streaming};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the console API: {0}")]
    Connect(String),
    #[error(transparent)]
    Status(#[from] Status),
}

/// A signed-in operator's connection to the console API.
#[derive(Clone)]
pub struct OperatorClient {
    client: ConsoleClient<Channel>,
    token: String,
    pub operator_id: String,
    pub display_name: String,
}

/// A request carrying `token` as the bearer credential (the console, family and provider APIs
/// all take it so).
pub(crate) fn authorized<T>(token: &str, message: T) -> Result<Request<T>, Status> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| Status::internal("token is not a valid header value"))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

/// Opens a channel to `url` (`https://` trusting `ca_pem`, or `http://`).
pub async fn channel(url: &str, ca_pem: Option<&str>) -> Result<Channel, ClientError> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|error| ClientError::Connect(error.to_string()))?;
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().domain_name("localhost");
        if let Some(pem) = ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|error| ClientError::Connect(error.to_string()))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|error| ClientError::Connect(format!("{error:?}")))
}

impl OperatorClient {
    pub async fn sign_in(
        channel: Channel,
        username: &str,
        password: &str,
    ) -> Result<Self, ClientError> {
        let mut client = ConsoleClient::new(channel);
        let response = client
            .sign_in(SignInRequest {
                username: username.to_owned(),
                password: password.to_owned(),
            })
            .await?
            .into_inner();
        Ok(Self {
            client,
            token: response.token,
            operator_id: response.operator_id,
            display_name: response.display_name,
        })
    }

    fn request<T>(&self, message: T) -> Result<Request<T>, Status> {
        authorized(&self.token, message)
    }

    pub async fn set_status(&mut self, status: OperatorStatus) -> Result<(), Status> {
        self.set_status_because(status, "").await
    }

    pub async fn set_status_because(
        &mut self,
        status: OperatorStatus,
        reason: &str,
    ) -> Result<(), Status> {
        let request = self.request(SetStatusRequest {
            status: status as i32,
            reason: reason.to_owned(),
        })?;
        self.client.set_status(request).await.map(|_| ())
    }

    pub async fn record_alarm_action(
        &mut self,
        call_id: &str,
        action: AlarmAction,
        note: &str,
    ) -> Result<(), Status> {
        let request = self.request(RecordAlarmActionRequest {
            call_id: call_id.to_owned(),
            action: action as i32,
            note: note.to_owned(),
        })?;
        self.client.record_alarm_action(request).await.map(|_| ())
    }

    pub async fn resolve_alarm(
        &mut self,
        call_id: &str,
        outcome: AlarmOutcome,
        note: &str,
    ) -> Result<(), Status> {
        let request = self.request(ResolveAlarmRequest {
            call_id: call_id.to_owned(),
            outcome: outcome as i32,
            note: note.to_owned(),
        })?;
        self.client.resolve_alarm(request).await.map(|_| ())
    }

    pub async fn reclaim_call(&mut self, call_id: &str) -> Result<(), Status> {
        let request = self.request(ReclaimCallRequest {
            call_id: call_id.to_owned(),
        })?;
        self.client.reclaim_call(request).await.map(|_| ())
    }

    pub async fn failed_deliveries(&mut self) -> Result<Vec<FailedDelivery>, Status> {
        let request = self.request(FailedDeliveriesRequest {})?;
        Ok(self
            .client
            .failed_deliveries(request)
            .await?
            .into_inner()
            .deliveries)
    }

    pub async fn decline(&mut self, offer_id: &str) -> Result<(), Status> {
        let request = self.request(DeclineRequest {
            offer_id: offer_id.to_owned(),
        })?;
        self.client.decline(request).await.map(|_| ())
    }

    pub async fn transfer(&mut self, call_id: &str, target: Target) -> Result<(), Status> {
        let request = self.request(TransferRequest {
            call_id: call_id.to_owned(),
            target: Some(target),
        })?;
        self.client.transfer(request).await.map(|_| ())
    }

    pub async fn queue_status(&mut self) -> Result<QueueStatusResponse, Status> {
        let request = self.request(QueueStatusRequest {})?;
        Ok(self.client.queue_status(request).await?.into_inner())
    }

    pub async fn watch_queues(&mut self) -> Result<Streaming<QueueStatusResponse>, Status> {
        let request = self.request(QueueStatusRequest {})?;
        Ok(self.client.watch_queues(request).await?.into_inner())
    }

    pub async fn statistics(
        &mut self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<StatisticsResponse, Status> {
        let request = self.request(StatisticsRequest { from_ms, to_ms })?;
        Ok(self.client.statistics(request).await?.into_inner())
    }

    pub async fn subscribe(&mut self) -> Result<Streaming<ConsoleEvent>, Status> {
        let request = self.request(SubscribeRequest {})?;
        Ok(self.client.subscribe(request).await?.into_inner())
    }

    pub async fn accept(&mut self, offer_id: &str) -> Result<AcceptResponse, Status> {
        let request = self.request(AcceptRequest {
            offer_id: offer_id.to_owned(),
        })?;
        Ok(self.client.accept(request).await?.into_inner())
    }

    pub async fn end_call(
        &mut self,
        call_id: &str,
        disposition: Disposition,
        note: &str,
    ) -> Result<(), Status> {
        let request = self.request(EndCallRequest {
            call_id: call_id.to_owned(),
            disposition: disposition as i32,
            note: note.to_owned(),
        })?;
        self.client.end_call(request).await.map(|_| ())
    }

    pub async fn suggest_providers(
        &mut self,
        resident_id: &str,
        service_code: &str,
    ) -> Result<Vec<ProviderSuggestion>, Status> {
        let request = self.request(SuggestProvidersRequest {
            resident_id: resident_id.to_owned(),
            service_code: service_code.to_owned(),
        })?;
        Ok(self
            .client
            .suggest_providers(request)
            .await?
            .into_inner()
            .providers)
    }

    /// Creates a service order for a resident (from `call_id`, if not empty).
    pub async fn create_order(
        &mut self,
        resident_id: &str,
        service_code: &str,
        call_id: &str,
        note: &str,
    ) -> Result<CreateOrderResponse, Status> {
        let request = self.request(CreateOrderRequest {
            resident_id: resident_id.to_owned(),
            service_code: service_code.to_owned(),
            call_id: call_id.to_owned(),
            note: note.to_owned(),
        })?;
        Ok(self.client.create_order(request).await?.into_inner())
    }

    pub async fn cancel_order(&mut self, order_id: &str, reason: &str) -> Result<(), Status> {
        let request = self.request(CancelOrderRequest {
            order_id: order_id.to_owned(),
            reason: reason.to_owned(),
        })?;
        self.client.cancel_order(request).await.map(|_| ())
    }

    pub async fn record_order_callback(
        &mut self,
        order_id: &str,
        note: &str,
    ) -> Result<(), Status> {
        let request = self.request(RecordOrderCallBackRequest {
            order_id: order_id.to_owned(),
            note: note.to_owned(),
        })?;
        self.client
            .record_order_call_back(request)
            .await
            .map(|_| ())
    }

    /// A resident's orders, or every open order when `resident_id` is empty.
    pub async fn list_orders(&mut self, resident_id: &str) -> Result<Vec<ServiceOrder>, Status> {
        let request = self.request(ListOrdersRequest {
            resident_id: resident_id.to_owned(),
        })?;
        Ok(self.client.list_orders(request).await?.into_inner().orders)
    }

    pub async fn reinstate_provider(&mut self, provider_id: &str) -> Result<(), Status> {
        let request = self.request(ReinstateProviderRequest {
            provider_id: provider_id.to_owned(),
        })?;
        self.client.reinstate_provider(request).await.map(|_| ())
    }

    pub async fn service_report(
        &mut self,
        from: &str,
        to: &str,
        station_id: &str,
    ) -> Result<ServiceReportResponse, Status> {
        let request = self.request(ServiceReportRequest {
            from: from.to_owned(),
            to: to.to_owned(),
            station_id: station_id.to_owned(),
        })?;
        Ok(self.client.service_report(request).await?.into_inner())
    }

    /// Voice signalling to the tablet of a call this operator holds.
    pub async fn send_rtc_signal(&mut self, signal: RtcSignal) -> Result<(), Status> {
        let request = self.request(signal)?;
        self.client.send_rtc_signal(request).await.map(|_| ())
    }

    pub async fn get_resident(&mut self, resident_id: &str) -> Result<ResidentRecord, Status> {
        let request = self.request(GetResidentRequest {
            resident_id: resident_id.to_owned(),
        })?;
        Ok(self.client.get_resident(request).await?.into_inner())
    }
}

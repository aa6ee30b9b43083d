//! A small provider API client (sign in, then authenticated calls), used by the demo's bot
//! provider and by the tests.

use carebell_proto::provider::v1::provider_client::ProviderClient as Client;
use carebell_proto::provider::v1::{
    AcceptRequest, AssignStaffRequest, DeclineRequest, FeedRequest, FiguresRequest,
    FiguresResponse, ListOrdersRequest, ListStaffRequest, OrderStatus, OrderView, Position,
    SignInRequest, StaffMember, UpdateStatusRequest,
};
use tonic::transport::Channel;
use tonic::{Request, Status, Streaming};

use crate::console_client::ClientError;

/// A signed-in provider account's connection to the provider API.
#[derive(Clone)]
pub struct ProviderClient {
    client: Client<Channel>,
    token: String,
    pub provider_id: String,
    pub provider_name: String,
}

impl ProviderClient {
    pub async fn sign_in(
        channel: Channel,
        username: &str,
        password: &str,
    ) -> Result<Self, ClientError> {
        let mut client = Client::new(channel);
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
            provider_id: response.provider_id,
            provider_name: response.provider_name,
        })
    }

    fn request<T>(&self, message: T) -> Result<Request<T>, Status> {
        crate::console_client::authorized(&self.token, message)
    }

    pub async fn feed(&mut self) -> Result<Streaming<OrderView>, Status> {
        let request = self.request(FeedRequest {})?;
        Ok(self.client.feed(request).await?.into_inner())
    }

    pub async fn list_orders(&mut self) -> Result<Vec<OrderView>, Status> {
        let request = self.request(ListOrdersRequest {})?;
        Ok(self.client.list_orders(request).await?.into_inner().orders)
    }

    pub async fn staff(&mut self) -> Result<Vec<StaffMember>, Status> {
        let request = self.request(ListStaffRequest {})?;
        Ok(self.client.list_staff(request).await?.into_inner().staff)
    }

    pub async fn accept(
        &mut self,
        order_id: &str,
        staff_id: &str,
        eta_minutes: u32,
    ) -> Result<(), Status> {
        let request = self.request(AcceptRequest {
            order_id: order_id.to_owned(),
            staff_id: staff_id.to_owned(),
            eta_minutes,
        })?;
        self.client.accept(request).await.map(|_| ())
    }

    pub async fn decline(&mut self, order_id: &str, reason: &str) -> Result<(), Status> {
        let request = self.request(DeclineRequest {
            order_id: order_id.to_owned(),
            reason: reason.to_owned(),
        })?;
        self.client.decline(request).await.map(|_| ())
    }

    pub async fn assign_staff(&mut self, order_id: &str, staff_id: &str) -> Result<(), Status> {
        let request = self.request(AssignStaffRequest {
            order_id: order_id.to_owned(),
            staff_id: staff_id.to_owned(),
        })?;
        self.client.assign_staff(request).await.map(|_| ())
    }

    /// Reports progress; `position` is sent with ARRIVED, `notes` and `duration_minutes` with
    /// COMPLETED.
    pub async fn update_status(
        &mut self,
        order_id: &str,
        status: OrderStatus,
        position: Option<(f64, f64)>,
        notes: &str,
        duration_minutes: u32,
    ) -> Result<(), Status> {
        let request = self.request(UpdateStatusRequest {
            order_id: order_id.to_owned(),
            status: status as i32,
            position: position.map(|(lat, lon)| Position { lat, lon }),
            notes: notes.to_owned(),
            duration_minutes,
        })?;
        self.client.update_status(request).await.map(|_| ())
    }

    pub async fn figures(&mut self) -> Result<FiguresResponse, Status> {
        let request = self.request(FiguresRequest {})?;
        Ok(self.client.figures(request).await?.into_inner())
    }
}

//! The gRPC transport: `DeviceLink.Link`, a bidirectional stream of the same envelopes.

use std::pin::Pin;

use carebell_proto::device::v1::device_link_server::{DeviceLink, DeviceLinkServer};
use carebell_proto::device::v1::{Envelope, ErrorCode};
use carebell_proto::CloseCode;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use super::session::{self, DeviceTransport, Incoming, TransportClosed};
use super::DeviceContext;

/// Envelopes buffered towards one device. Small: a device that stops reading is soon detected
/// by its missing heartbeats, and the outbox keeps what it has not acknowledged.
const OUTBOUND_CAPACITY: usize = 16;

pub struct DeviceLinkService {
    context: DeviceContext,
    tracker: TaskTracker,
}

impl DeviceLinkService {
    pub fn new(context: DeviceContext, tracker: TaskTracker) -> Self {
        Self { context, tracker }
    }

    /// The tonic service, with the protocol's frame limit applied to decoding.
    pub fn into_server(self) -> DeviceLinkServer<Self> {
        let limit = self.context.settings.max_frame_bytes;
        DeviceLinkServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }
}

type EnvelopeStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Envelope, Status>> + Send>>;

#[tonic::async_trait]
impl DeviceLink for DeviceLinkService {
    type LinkStream = EnvelopeStream;

    async fn link(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let peer = request
            .remote_addr()
            .map(|addr| addr.to_string())
            .unwrap_or_else(|| "unknown".to_owned());
        let certificate = request
            .peer_certs()
            .and_then(|certificates| session::client_certificate(Some(certificates.as_slice())));
        let inbound = request.into_inner();
        let (outbound_tx, outbound_rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let transport = GrpcTransport {
            inbound,
            outbound: outbound_tx,
            closed: false,
        };
        let context = self.context.clone();
        self.tracker
            .spawn(session::run(context, transport, peer, certificate));
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound_rx))))
    }
}

struct GrpcTransport {
    inbound: Streaming<Envelope>,
    outbound: mpsc::Sender<Result<Envelope, Status>>,
    closed: bool,
}

impl DeviceTransport for GrpcTransport {
    const KIND: &'static str = "grpc";
    async fn recv(&mut self) -> Incoming {
        if self.closed {
            return Incoming::Closed;
        }
        match self.inbound.message().await {
            Ok(Some(envelope)) => Incoming::Envelope(envelope),
            Ok(None) => Incoming::Closed,
            Err(status) => match status.code() {
                tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
                    Incoming::Bad(ErrorCode::FrameTooLarge, status.message().to_owned())
                }
                tonic::Code::Internal if status.message().contains("decode") => Incoming::Bad(
                    ErrorCode::MalformedFrame,
                    "message is not a protobuf Envelope".to_owned(),
                ),
                _ => Incoming::Closed,
            },
        }
    }

    async fn send(&mut self, envelope: Envelope) -> Result<(), TransportClosed> {
        if self.closed {
            return Err(TransportClosed);
        }
        self.outbound
            .send(Ok(envelope))
            .await
            .map_err(|_| TransportClosed)
    }

    async fn close(&mut self, code: CloseCode, reason: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        let grpc_code = carebell_proto::grpc_code_for_close(code);
        let _ = self
            .outbound
            .send(Err(Status::new(grpc_code, reason.to_owned())))
            .await;
    }
}

//! The raw device link over either transport. Anything can be sent through it, which is what
//! tests of hostile input need; [`crate::Tablet`] builds correct behaviour on top.

use std::sync::Arc;

use carebell_proto::device::v1::device_link_client::DeviceLinkClient;
use carebell_proto::device::v1::Envelope;
use carebell_proto::{decode_envelope, encode_envelope, MAX_FRAME_BYTES, WS_SUBPROTOCOL};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::Streaming;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    WebSocket,
    Grpc,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("invalid address {0}")]
    BadUrl(String),
    #[error("invalid CA certificate: {0}")]
    BadCertificate(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the link is closed")]
    Closed,
    #[error("the server sent a frame that is not an envelope: {0}")]
    BadFrame(String),
}

/// What arrives on a link.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkEvent {
    Envelope(Envelope),
    /// The server ended the link: the WebSocket close code (or the gRPC status code) and reason.
    Closed {
        code: Option<u16>,
        grpc_code: Option<tonic::Code>,
        reason: String,
    },
}

pub enum Link {
    WebSocket(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
    Grpc {
        outbound: mpsc::Sender<Envelope>,
        inbound: Box<Streaming<Envelope>>,
    },
}

fn root_store(ca_pem: Option<&str>) -> Result<rustls::RootCertStore, LinkError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let certificate =
                certificate.map_err(|error| LinkError::BadCertificate(error.to_string()))?;
            roots
                .add(certificate)
                .map_err(|error| LinkError::BadCertificate(error.to_string()))?;
        }
    }
    Ok(roots)
}

impl Link {
    /// Connects over WebSocket (`wss://` with TLS trusting `ca_pem`, or `ws://`), offering the
    /// protocol's subprotocol.
    pub async fn connect_websocket(url: &str, ca_pem: Option<&str>) -> Result<Self, LinkError> {
        Self::connect_websocket_with_subprotocol(url, ca_pem, Some(WS_SUBPROTOCOL)).await
    }

    /// As [`Link::connect_websocket`], with any subprotocol (or none), for tests of refusal.
    pub async fn connect_websocket_with_subprotocol(
        url: &str,
        ca_pem: Option<&str>,
        subprotocol: Option<&str>,
    ) -> Result<Self, LinkError> {
        Self::connect_websocket_as(url, ca_pem, subprotocol, None).await
    }

    /// As [`Link::connect_websocket_with_subprotocol`], presenting a client certificate and its
    /// key (PEM) when given: mutual TLS.
    pub async fn connect_websocket_as(
        url: &str,
        ca_pem: Option<&str>,
        subprotocol: Option<&str>,
        identity: Option<(&str, &str)>,
    ) -> Result<Self, LinkError> {
        let mut request = url
            .into_client_request()
            .map_err(|error| LinkError::BadUrl(error.to_string()))?;
        if let Some(subprotocol) = subprotocol {
            request.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(subprotocol)
                    .map_err(|error| LinkError::BadUrl(error.to_string()))?,
            );
        }
        let connector = if url.starts_with("wss://") {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|error| LinkError::BadCertificate(error.to_string()))?
                .with_root_certificates(root_store(ca_pem)?);
            let config = match identity {
                None => builder.with_no_client_auth(),
                Some((cert_pem, key_pem)) => {
                    use rustls::pki_types::pem::PemObject;
                    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|error| LinkError::BadCertificate(error.to_string()))?;
                    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                        .map_err(|error| LinkError::BadCertificate(error.to_string()))?;
                    builder
                        .with_client_auth_cert(certs, key)
                        .map_err(|error| LinkError::BadCertificate(error.to_string()))?
                }
            };
            Connector::Rustls(Arc::new(config))
        } else {
            Connector::Plain
        };
        let (websocket, _response) =
            tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector))
                .await
                .map_err(|error| LinkError::Connect(error.to_string()))?;
        Ok(Link::WebSocket(Box::new(websocket)))
    }

    /// Opens the `DeviceLink.Link` stream (`https://` with TLS trusting `ca_pem`, or `http://`).
    pub async fn connect_grpc(
        url: &str,
        ca_pem: Option<&str>,
        server_name: &str,
    ) -> Result<Self, LinkError> {
        Self::connect_grpc_as(url, ca_pem, server_name, None).await
    }

    /// As [`Link::connect_grpc`], presenting a client certificate and key (PEM) when given.
    pub async fn connect_grpc_as(
        url: &str,
        ca_pem: Option<&str>,
        server_name: &str,
        identity: Option<(&str, &str)>,
    ) -> Result<Self, LinkError> {
        let channel = grpc_channel(url, ca_pem, server_name, identity).await?;
        let mut client = DeviceLinkClient::new(channel)
            .max_decoding_message_size(MAX_FRAME_BYTES)
            .max_encoding_message_size(usize::MAX);
        let (outbound, outbound_rx) = mpsc::channel(16);
        let inbound = client
            .link(ReceiverStream::new(outbound_rx))
            .await
            .map_err(|status| LinkError::Connect(status.to_string()))?
            .into_inner();
        Ok(Link::Grpc {
            outbound,
            inbound: Box::new(inbound),
        })
    }

    pub fn kind(&self) -> TransportKind {
        match self {
            Link::WebSocket(_) => TransportKind::WebSocket,
            Link::Grpc { .. } => TransportKind::Grpc,
        }
    }

    pub async fn send(&mut self, envelope: Envelope) -> Result<(), LinkError> {
        match self {
            Link::WebSocket(websocket) => websocket
                .send(Message::Binary(encode_envelope(&envelope).into()))
                .await
                .map_err(|_| LinkError::Closed),
            Link::Grpc { outbound, .. } => {
                outbound.send(envelope).await.map_err(|_| LinkError::Closed)
            }
        }
    }

    /// Sends a raw WebSocket message (text, garbage, oversized): for tests of bad input.
    pub async fn send_raw(&mut self, message: Message) -> Result<(), LinkError> {
        match self {
            Link::WebSocket(websocket) => {
                websocket.send(message).await.map_err(|_| LinkError::Closed)
            }
            Link::Grpc { .. } => Err(LinkError::Closed),
        }
    }

    /// The next envelope or the close. Pings and pongs are skipped.
    pub async fn recv(&mut self) -> Result<LinkEvent, LinkError> {
        match self {
            Link::WebSocket(websocket) => loop {
                match websocket.next().await {
                    None => {
                        return Ok(LinkEvent::Closed {
                            code: None,
                            grpc_code: None,
                            reason: "connection ended".to_owned(),
                        })
                    }
                    Some(Err(error)) => {
                        return Ok(LinkEvent::Closed {
                            code: None,
                            grpc_code: None,
                            reason: error.to_string(),
                        })
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        return decode_envelope(&bytes, MAX_FRAME_BYTES)
                            .map(LinkEvent::Envelope)
                            .map_err(|error| LinkError::BadFrame(error.to_string()))
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Ok(LinkEvent::Closed {
                            code: frame.as_ref().map(|frame| u16::from(frame.code)),
                            grpc_code: None,
                            reason: frame
                                .map(|frame| frame.reason.to_string())
                                .unwrap_or_default(),
                        })
                    }
                    Some(Ok(Message::Text(_))) => {
                        return Err(LinkError::BadFrame(
                            "the server sent a text frame".to_owned(),
                        ))
                    }
                    Some(Ok(_)) => continue,
                }
            },
            Link::Grpc { inbound, .. } => match inbound.message().await {
                Ok(Some(envelope)) => Ok(LinkEvent::Envelope(envelope)),
                Ok(None) => Ok(LinkEvent::Closed {
                    code: None,
                    grpc_code: Some(tonic::Code::Ok),
                    reason: "stream ended".to_owned(),
                }),
                Err(status) => Ok(LinkEvent::Closed {
                    code: None,
                    grpc_code: Some(status.code()),
                    reason: status.message().to_owned(),
                }),
            },
        }
    }
}

/// A gRPC channel to `url` (`https://` trusting `ca_pem` for `server_name`, or `http://`).
pub(crate) async fn grpc_channel(
    url: &str,
    ca_pem: Option<&str>,
    server_name: &str,
    identity: Option<(&str, &str)>,
) -> Result<tonic::transport::Channel, LinkError> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|error| LinkError::BadUrl(error.to_string()))?;
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().domain_name(server_name);
        if let Some(pem) = ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some((cert_pem, key_pem)) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|error| LinkError::BadCertificate(error.to_string()))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|error| LinkError::Connect(format!("{error:?}")))
}

/// Enrols a new tablet: generates its key here, registers the public half with the
/// installer's one-time `code`, and returns the credentials to keep (the private key never
/// leaves this function except in them).
pub async fn enrol(
    grpc_url: &str,
    websocket_url: &str,
    ca_pem: Option<&str>,
    server_name: &str,
    code: &str,
) -> Result<crate::Credentials, EnrolError> {
    use carebell_proto::device::v1::device_enrolment_client::DeviceEnrolmentClient;
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let channel = grpc_channel(grpc_url, ca_pem, server_name, None).await?;
    let response = DeviceEnrolmentClient::new(channel)
        .enrol(carebell_proto::device::v1::EnrolRequest {
            code: code.to_owned(),
            public_key: key.verifying_key().to_bytes().to_vec(),
            firmware_version: concat!("tablet-sim/", env!("CARGO_PKG_VERSION")).to_owned(),
        })
        .await?
        .into_inner();
    let mut credentials =
        crate::Credentials::new(&response.device_id, &key, websocket_url, grpc_url);
    credentials.ca_certificate_pem = ca_pem.map(str::to_owned);
    credentials.server_name = server_name.to_owned();
    Ok(credentials)
}

#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("the server refused the enrolment: {}", .0.message())]
    Refused(#[from] tonic::Status),
}

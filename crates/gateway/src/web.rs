//! The browser side: the operator console, the family page, the provider portal and the tablet
//! emulator (`web/`, embedded at build time), and a JSON bridge to the same gRPC services the
//! native clients use. `POST /api/{service}/{Method}` takes the request message as JSON and calls
//! the service in-process (so authentication, permissions and validation are the gRPC API's,
//! not a second copy); server streams are WebSockets at `/api/{service}/{Method}/stream`, one
//! JSON text frame per message. Served over TLS with the node's certificate.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use carebell_proto::console::v1::console_server::Console;
use carebell_proto::family::v1::family_server::Family;
use carebell_proto::provider::v1::provider_server::Provider;
use futures_util::{SinkExt, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;

use crate::{ConsoleService, FamilyService, ProviderService};

mod assets {
    include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));
}

/// Largest JSON request body accepted.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// A WebRTC ICE server (STUN or TURN), as the browser's `RTCPeerConnection` takes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub credential: String,
}

/// What the pages are told about their surroundings (`GET /api/config`).
#[derive(Debug, Clone, Serialize, Default)]
pub struct WebConfig {
    pub ice_servers: Vec<IceServer>,
    /// Where the tablet emulator connects.
    pub device_websocket_url: String,
}

/// The services the bridge calls.
#[derive(Clone)]
pub struct WebState {
    pub console: Arc<ConsoleService>,
    pub family: Arc<FamilyService>,
    pub provider: Arc<ProviderService>,
    pub config: Arc<WebConfig>,
    pub shutdown: CancellationToken,
}

pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console", get(|| page("console.html")))
        .route("/family", get(|| page("family.html")))
        .route("/provider", get(|| page("provider.html")))
        .route("/tablet", get(|| page("tablet.html")))
        .route("/assets/{file}", get(asset))
        .route("/api/config", get(config))
        .route("/api/{service}/{method}", post(unary))
        .route("/api/{service}/{method}/stream", get(stream))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn find_asset(name: &str) -> Option<(&'static str, &'static [u8])> {
    assets::ASSETS
        .iter()
        .find(|(file, _, _)| *file == name)
        .map(|(_, content_type, bytes)| (*content_type, *bytes))
}

fn serve_asset(name: &str) -> Response {
    match find_asset(name) {
        Some((content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

async fn page(name: &'static str) -> Response {
    serve_asset(name)
}

async fn asset(Path(file): Path<String>) -> Response {
    serve_asset(&file)
}

async fn config(State(state): State<WebState>) -> Json<WebConfig> {
    Json((*state.config).clone())
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// An RPC's failure. Like gRPC-Web, the HTTP exchange itself succeeded: the status is 200 and
/// the body is `{"error": {"code", "message"}}` (no response message has a field `error`), with
/// the gRPC status code also in the `grpc-status` header. (A 4xx would make browsers log every
/// refused call as a failed resource load, which the pages' tests rightly count as errors.)
fn error_response(status: &Status) -> Response {
    let grpc_status = HeaderValue::from(status.code() as i32);
    (
        StatusCode::OK,
        [(header::HeaderName::from_static("grpc-status"), grpc_status)],
        Json(ErrorEnvelope {
            error: ErrorBody {
                code: code_name(status.code()),
                message: status.message(),
            },
        }),
    )
        .into_response()
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorBody<'a>,
}

/// A tonic request carrying the browser's bearer token as gRPC metadata.
fn grpc_request<T>(
    message: T,
    token: Option<&str>,
    client: Option<crate::credentials::ClientAddress>,
) -> Result<tonic::Request<T>, Status> {
    let mut request = tonic::Request::new(message);
    if let Some(client) = client {
        request.extensions_mut().insert(client);
    }
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::unauthenticated("the token is not a valid header value"))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
}

/// Decodes the JSON body, calls the service, encodes the answer.
async fn call<Req, Resp, F, Fut>(
    headers: &HeaderMap,
    body: &Bytes,
    client: Option<crate::credentials::ClientAddress>,
    f: F,
) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let text = if body.is_empty() { &b"{}"[..] } else { body };
    let message: Req = match serde_json::from_slice(text) {
        Ok(message) => message,
        Err(error) => {
            return error_response(&Status::invalid_argument(format!(
                "the request is not valid JSON for this call: {error}"
            )))
        }
    };
    let request = match grpc_request(message, bearer(headers), client) {
        Ok(request) => request,
        Err(status) => return error_response(&status),
    };
    match f(request).await {
        Ok(response) => Json(response.into_inner()).into_response(),
        Err(status) => error_response(&status),
    }
}

macro_rules! dispatch {
    ($headers:expr, $body:expr, $client:expr, $method:expr, $service:expr, $trait:path, { $($name:literal => $fn:ident),* $(,)? }) => {
        match $method {
            $($name => call($headers, $body, $client, |request| <_ as $trait>::$fn(&*$service, request)).await,)*
            other => error_response(&Status::unimplemented(format!("no method {other}"))),
        }
    };
}

async fn unary(
    State(state): State<WebState>,
    Path((service, method)): Path<(String, String)>,
    client: Option<axum::Extension<crate::credentials::ClientAddress>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (headers, body, method) = (&headers, &body, method.as_str());
    let client = client.map(|axum::Extension(client)| client);
    match service.as_str() {
        "console" => dispatch!(headers, body, client, method, state.console, Console, {
            "SignIn" => sign_in,
            "SetStatus" => set_status,
            "Accept" => accept,
            "EndCall" => end_call,
            "GetResident" => get_resident,
            "Decline" => decline,
            "Transfer" => transfer,
            "RecordAlarmAction" => record_alarm_action,
            "ResolveAlarm" => resolve_alarm,
            "FailedDeliveries" => failed_deliveries,
            "ReclaimCall" => reclaim_call,
            "QueueStatus" => queue_status,
            "Statistics" => statistics,
            "SuggestProviders" => suggest_providers,
            "CreateOrder" => create_order,
            "CancelOrder" => cancel_order,
            "RecordOrderCallBack" => record_order_call_back,
            "ListOrders" => list_orders,
            "ReinstateProvider" => reinstate_provider,
            "ServiceReport" => service_report,
            "Catalogue" => catalogue,
            "FamilyCascade" => family_cascade,
            "SendRtcSignal" => send_rtc_signal,
        }),
        "family" => dispatch!(headers, body, client, method, state.family, Family, {
            "SignIn" => sign_in,
            "Acknowledge" => acknowledge,
            "History" => history,
            "Relatives" => relatives,
            "Relative" => relative,
            "SendMessage" => send_message,
        }),
        "provider" => dispatch!(headers, body, client, method, state.provider, Provider, {
            "SignIn" => sign_in,
            "ListOrders" => list_orders,
            "Accept" => accept,
            "Decline" => decline,
            "AssignStaff" => assign_staff,
            "UpdateStatus" => update_status,
            "ListStaff" => list_staff,
            "Figures" => figures,
        }),
        other => error_response(&Status::not_found(format!("no service {other}"))),
    }
}

/// Query parameters as a JSON object for the stream's request message: numbers where they
/// parse as numbers, strings otherwise; `token` is taken out. (Public for the fuzz target
/// `stream_queries`.)
pub fn request_json(mut query: HashMap<String, String>) -> (Option<String>, serde_json::Value) {
    let token = query.remove("token");
    let fields = query
        .into_iter()
        .map(|(key, value)| {
            let value = value
                .parse::<i64>()
                .map(serde_json::Value::from)
                .unwrap_or(serde_json::Value::String(value));
            (key, value)
        })
        .collect();
    (token, serde_json::Value::Object(fields))
}

type BoxedJsonStream = std::pin::Pin<Box<dyn Stream<Item = Result<String, Status>> + Send>>;

/// Opens a server stream of the service and turns its messages into JSON text.
async fn open<Req, Resp, S, F, Fut>(
    token: Option<&str>,
    fields: serde_json::Value,
    f: F,
) -> Result<BoxedJsonStream, Status>
where
    Req: DeserializeOwned,
    Resp: Serialize + Send + 'static,
    S: Stream<Item = Result<Resp, Status>> + Send + 'static,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<S>, Status>>,
{
    let message: Req = serde_json::from_value(fields)
        .map_err(|error| Status::invalid_argument(format!("bad stream parameters: {error}")))?;
    let stream = f(grpc_request(message, token, None)?).await?.into_inner();
    Ok(Box::pin(stream.map(|item| {
        item.and_then(|message| {
            serde_json::to_string(&message)
                .map_err(|error| Status::internal(format!("cannot encode a message: {error}")))
        })
    })))
}

async fn stream(
    State(state): State<WebState>,
    Path((service, method)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let (token, fields) = request_json(query);
    let token = token.as_deref();
    let opened = match (service.as_str(), method.as_str()) {
        ("console", "Subscribe") => {
            open(token, fields, |r| Console::subscribe(&*state.console, r)).await
        }
        ("console", "WatchQueues") => {
            open(token, fields, |r| Console::watch_queues(&*state.console, r)).await
        }
        ("family", "Alerts") => open(token, fields, |r| Family::alerts(&*state.family, r)).await,
        ("provider", "Feed") => open(token, fields, |r| Provider::feed(&*state.provider, r)).await,
        (service, method) => Err(Status::not_found(format!("no stream {service}/{method}"))),
    };
    let shutdown = state.shutdown.clone();
    upgrade
        .max_message_size(MAX_BODY_BYTES)
        .on_upgrade(move |socket| relay(socket, opened, shutdown))
}

fn error_frame(status: &Status) -> Message {
    let body = serde_json::json!({
        "error": { "code": code_name(status.code()), "message": status.message() }
    });
    Message::Text(body.to_string().into())
}

/// Sends each message of the stream as a text frame until either side ends.
async fn relay(
    mut socket: WebSocket,
    opened: Result<BoxedJsonStream, Status>,
    shutdown: CancellationToken,
) {
    let mut messages = match opened {
        Ok(messages) => messages,
        Err(status) => {
            let _ = socket.send(error_frame(&status)).await;
            let _ = socket.close().await;
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = socket.recv() => match incoming {
                // The page says nothing on a stream; it only closes it.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            next = messages.next() => match next {
                Some(Ok(text)) => {
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Some(Err(status)) => {
                    let _ = socket.send(error_frame(&status)).await;
                    break;
                }
                None => break,
            },
        }
    }
    let _ = socket.close().await;
}

/// Serves the router on `listener` (over TLS when `tls` is given) until `shutdown`; each
/// connection is a task of `tracker`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let acceptor = tls.map(|config| {
        let mut config = (*config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "web accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // The browser's address, for the sign-in limits (the bridge's calls are in process).
        let service = TowerToHyperService::new(router.clone().layer(axum::Extension(
            crate::credentials::ClientAddress(peer.ip()),
        )));
        let acceptor = acceptor.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let builder = Builder::new(TokioExecutor::new());
            let served = match acceptor {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(tcp),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            tracing::debug!(%error, %peer, "web TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                    tokio::select! {
                        result = connection => result,
                        _ = shutdown.cancelled() => Ok(()),
                    }
                }
                None => {
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                    tokio::select! {
                        result = connection => result,
                        _ = shutdown.cancelled() => Ok(()),
                    }
                }
            };
            if let Err(error) = served {
                tracing::debug!(%error, %peer, "web connection ended with an error");
            }
        });
    }
}

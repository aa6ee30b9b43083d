//! The floor program for the connection benchmark: bare tokio-tungstenite over rustls, holding
//! TLS WebSocket connections with the gateway's settings (4 KiB read buffer, no write buffer,
//! the same TLS configuration) and doing nothing else. The gateway's memory per connection is
//! measured against this.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::StreamExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args
        .next()
        .ok_or("usage: carebell-floor ADDR CERT KEY")?
        .parse()?;
    let cert = args.next().ok_or("missing CERT")?;
    let key = args.next().ok_or("missing KEY")?;
    let certs = CertificateDer::pem_file_iter(&cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(65_536);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    let listener = socket.listen(4096)?;
    println!("listening");
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let ws_config = WebSocketConfig::default()
                .read_buffer_size(4 * 1024)
                .write_buffer_size(0)
                .max_message_size(Some(64 * 1024));
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async_with_config(
                tls,
                echo_subprotocol,
                Some(ws_config),
            )
            .await
            else {
                return;
            };
            while let Some(Ok(_)) = ws.next().await {}
        });
    }
}

/// Accepts the subprotocol the client offers (as the gateway does for its own).
#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn echo_subprotocol(
    request: &tokio_tungstenite::tungstenite::handshake::server::Request,
    mut response: tokio_tungstenite::tungstenite::handshake::server::Response,
) -> Result<
    tokio_tungstenite::tungstenite::handshake::server::Response,
    tokio_tungstenite::tungstenite::handshake::server::ErrorResponse,
> {
    if let Some(protocol) = request.headers().get("sec-websocket-protocol") {
        response
            .headers_mut()
            .insert("sec-websocket-protocol", protocol.clone());
    }
    Ok(response)
}

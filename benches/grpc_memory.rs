//! Memory per connection over the gRPC device transport (`DeviceLink.Link`, HTTP/2 over TLS)
//! beside the WebSocket transport, in one run: two `carebell serve` processes, one holding N
//! tablets over gRPC and one holding N over WebSocket, each measured as resident memory added
//! divided by connections. Prints JSON and a markdown table; never fails a build.
//!
//! ```text
//! cargo build --release --bins
//! CAREBELL_BENCH_GRPC_TABLETS=5000 cargo bench -p carebell-benches --bench grpc_memory
//! ```

use std::time::Duration;

use carebell_benches::harness::{env_u64, per_connection, rss_bytes, wait_for_port, Setup};
use carebell_benches::{report, Figure};
use firmware_sim::fleet::{fleet_device_id, fleet_signing_key};
use firmware_sim::{Credentials, Tablet, TabletConfig, TransportKind};
use futures_util::StreamExt;

/// Connects tablets `first..first + count` over `transport`; returns those that connected.
async fn connect(
    setup: &Setup,
    transport: TransportKind,
    ws_port: u16,
    grpc_port: u16,
    first: u64,
    count: u64,
) -> Vec<Tablet> {
    let ca = setup.ca_pem();
    futures_util::stream::iter(first..first + count)
        .map(|index| {
            let mut credentials = Credentials::new(
                &fleet_device_id("fleet", index),
                &fleet_signing_key("fleet", index),
                &format!("wss://localhost:{ws_port}/"),
                &format!("https://localhost:{grpc_port}"),
            );
            credentials.ca_certificate_pem = Some(ca.clone());
            async move {
                let config = TabletConfig::new(credentials, transport);
                Tablet::connect(&config).await.ok()
            }
        })
        .buffer_unordered(32)
        .filter_map(|tablet| async move { tablet })
        .collect()
        .await
}

#[tokio::main]
async fn main() {
    let tablets = env_u64("CAREBELL_BENCH_GRPC_TABLETS", 5000);
    // Two sockets per tablet in this process would pass the 20,000-file limit beyond ~9,000.
    let tablets = tablets.min(9000);
    let _ = rlimit::increase_nofile_limit(20_000);
    let setup = Setup::new("grpcmem", tablets * 2);
    let (grpc_ws_port, grpc_port, ws_port) = (18543, 18544, 18545);
    let heartbeat_ms = 10_000;
    let mut figures = Vec::new();
    let mut per = Vec::new();
    for (index, transport, first) in [
        (0, TransportKind::Grpc, 0),
        (1, TransportKind::WebSocket, tablets),
    ] {
        let (listen_ws, listen_grpc) = if index == 0 {
            (grpc_ws_port, grpc_port)
        } else {
            (ws_port, 0)
        };
        let mut gateway = setup.gateway(index, listen_ws, listen_grpc, heartbeat_ms);
        setup
            .wait_for_gateways(listen_ws, std::slice::from_mut(&mut gateway))
            .await;
        if index == 0 {
            wait_for_port(grpc_port).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pid = gateway.id().expect("gateway pid");
        let baseline = rss_bytes(pid);
        let held = connect(&setup, transport, listen_ws, grpc_port, first, tablets).await;
        // Past a heartbeat, so every link has sent and received at least once.
        tokio::time::sleep(Duration::from_millis(heartbeat_ms + 2000)).await;
        let bytes = per_connection(baseline, rss_bytes(pid), held.len() as u64);
        let name = match transport {
            TransportKind::Grpc => "gRPC (HTTP/2 over TLS)",
            TransportKind::WebSocket => "WebSocket over TLS",
        };
        figures.push(Figure {
            name: format!("{name}: tablets held"),
            value: held.len() as f64,
            unit: "connections",
        });
        figures.push(Figure {
            name: format!("{name}: gateway memory per connection"),
            value: bytes,
            unit: "bytes",
        });
        per.push(bytes);
        for tablet in held {
            drop(tablet.crash().await);
        }
        let _ = gateway.kill().await;
    }
    if let [grpc, ws] = per[..] {
        figures.push(Figure {
            name: "gRPC / WebSocket memory per connection".to_owned(),
            value: grpc / ws,
            unit: "x",
        });
    }
    report(
        &format!("device transports: memory per connection ({tablets} tablets each)"),
        &figures,
    );
}

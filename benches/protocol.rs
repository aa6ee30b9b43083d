//! Device protocol figures: envelope codec throughput, authentication cost, and (when
//! PostgreSQL and Redis are reachable) the durable-acknowledgement latency of a call request
//! over WebSocket/TLS through a real node.

use std::time::{Duration, Instant};

use carebell_benches::{quantile_ms, rate, report, Figure};
use carebell_proto::device::v1::envelope::Body;
use carebell_proto::device::v1::{CallRequest, Envelope};
use carebell_proto::{auth_message, decode_envelope, encode_envelope, MAX_FRAME_BYTES};
use ed25519_dalek::{Signer, SigningKey, Verifier};
use firmware_sim::{Tablet, TransportKind};

fn codec_and_auth() -> Vec<Figure> {
    let envelope = Envelope {
        seq: 42,
        ack: 41,
        body: Some(Body::CallRequest(CallRequest {
            request_id: "0123456789abcdef0123456789abcdef".to_owned(),
            pressed_at_ms: 1_700_000_000_000,
        })),
    };
    let bytes = encode_envelope(&envelope);
    let encode = rate(500_000, || {
        std::hint::black_box(encode_envelope(std::hint::black_box(&envelope)));
    });
    let decode = rate(500_000, || {
        std::hint::black_box(decode_envelope(std::hint::black_box(&bytes), MAX_FRAME_BYTES).ok());
    });
    let key = SigningKey::from_bytes(&[9u8; 32]);
    let message = auth_message("tab-0123456789ab", &[7u8; 32]);
    let signature = key.sign(&message);
    let verifying_key = key.verifying_key();
    let verify = rate(5_000, || {
        std::hint::black_box(verifying_key.verify(&message, &signature).is_ok());
    });
    vec![
        Figure {
            name: "call request envelope size".to_owned(),
            value: bytes.len() as f64,
            unit: "bytes",
        },
        Figure {
            name: "envelope encode".to_owned(),
            value: encode,
            unit: "ops/s",
        },
        Figure {
            name: "envelope decode".to_owned(),
            value: decode,
            unit: "ops/s",
        },
        Figure {
            name: "Ed25519 proof verification (one core)".to_owned(),
            value: verify,
            unit: "ops/s",
        },
    ]
}

async fn durable_ack_latency(n_presses: usize) -> Result<Vec<Figure>, String> {
    let node = carebell_tests::TestNode::start(carebell_tests::NodeOptions::default()).await;
    let (_resident, config) = node.tablet_config("bench", TransportKind::WebSocket).await;
    let tablet = Tablet::connect(&config)
        .await
        .map_err(|error| error.to_string())?;
    let mut latencies = Vec::with_capacity(n_presses);
    let start = Instant::now();
    for _ in 0..n_presses {
        let sent = Instant::now();
        tablet.press().await.map_err(|error| error.to_string())?;
        latencies.push(sent.elapsed());
    }
    let elapsed = start.elapsed();
    tablet.close().await;
    node.stop().await;
    latencies.sort();
    Ok(vec![
        Figure {
            name: "press → durable ack p50 (WSS, one tablet)".to_owned(),
            value: quantile_ms(&latencies, 0.5),
            unit: "ms",
        },
        Figure {
            name: "press → durable ack p99".to_owned(),
            value: quantile_ms(&latencies, 0.99),
            unit: "ms",
        },
        Figure {
            name: "press → durable ack max".to_owned(),
            value: quantile_ms(&latencies, 1.0),
            unit: "ms",
        },
        Figure {
            name: "presses per second (sequential)".to_owned(),
            value: n_presses as f64 / elapsed.as_secs_f64(),
            unit: "1/s",
        },
    ])
}

/// From a revocation committed through node A to the tablet held by node B seeing its link
/// closed (the issue asks for under a second).
async fn revocation_latency(n: usize) -> Result<Vec<Figure>, String> {
    let database_url = carebell_tests::fresh_database().await;
    let certificates = carebell_tests::carebell_server::devcert::DevCertificates::generate()
        .map_err(|e| e.to_string())?;
    let options = |node_id: &str| carebell_tests::NodeOptions {
        database_url: Some(database_url.clone()),
        certificates: Some(certificates.clone()),
        node_id: node_id.to_owned(),
        ..carebell_tests::NodeOptions::default()
    };
    let a = carebell_tests::TestNode::start(options("bench-a")).await;
    let b = carebell_tests::TestNode::start(options("bench-b")).await;
    let mut latencies = Vec::with_capacity(n);
    for index in 0..n {
        let (_, config) = b
            .tablet_config(&format!("revoked {index}"), TransportKind::WebSocket)
            .await;
        let mut tablet = Tablet::connect(&config)
            .await
            .map_err(|error| error.to_string())?;
        let start = Instant::now();
        a.store
            .revoke_device(&config.credentials.device_id, "bench", "")
            .await
            .map_err(|error| error.to_string())?;
        loop {
            match tablet.next_event(Duration::from_secs(10)).await {
                Some(firmware_sim::TabletEvent::Closed { .. }) => break,
                Some(_) => continue,
                None => return Err("a revoked tablet was not cut off".to_owned()),
            }
        }
        latencies.push(start.elapsed());
    }
    a.stop().await;
    b.stop().await;
    latencies.sort();
    Ok(vec![
        Figure {
            name: "revocation (node A) → link closed (node B) p50".to_owned(),
            value: quantile_ms(&latencies, 0.5),
            unit: "ms",
        },
        Figure {
            name: "revocation → link closed p99".to_owned(),
            value: quantile_ms(&latencies, 0.99),
            unit: "ms",
        },
        Figure {
            name: "revocation → link closed max".to_owned(),
            value: quantile_ms(&latencies, 1.0),
            unit: "ms",
        },
    ])
}

fn main() {
    report("device protocol (in process)", &codec_and_auth());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start a runtime: {error}");
            return;
        }
    };
    // The end-to-end figure needs PostgreSQL and Redis; without them it is reported as missing
    // rather than failing the run.
    let outcome = runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(120),
            tokio::spawn(durable_ack_latency(1000)),
        )
        .await
    });
    match outcome {
        Ok(Ok(Ok(figures))) => report("call request durable acknowledgement (real node, PostgreSQL)", &figures),
        Ok(Ok(Err(error))) => eprintln!("durable-ack benchmark skipped: {error}"),
        Ok(Err(panic)) => eprintln!("durable-ack benchmark skipped (is PostgreSQL reachable? run ./deploy/test.sh once): {panic}"),
        Err(_) => eprintln!("durable-ack benchmark timed out"),
    }
    let outcome = runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(120),
            tokio::spawn(revocation_latency(100)),
        )
        .await
    });
    match outcome {
        Ok(Ok(Ok(figures))) => report("device revocation across two nodes", &figures),
        Ok(Ok(Err(error))) => eprintln!("revocation benchmark skipped: {error}"),
        Ok(Err(panic)) => eprintln!("revocation benchmark skipped: {panic}"),
        Err(_) => eprintln!("revocation benchmark timed out"),
    }
}

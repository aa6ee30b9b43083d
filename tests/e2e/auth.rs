//! Device authentication: a wrong key, an unknown device and a replayed proof all get the same
//! typed rejection and a closed connection; a session speaks for one device only.

use std::time::Duration;

use carebell_proto::auth_message;
use carebell_proto::device::v1::envelope::Body;
use carebell_proto::device::v1::{CallRequest, Envelope, ErrorCode, Hello, Proof, RejectReason};
use carebell_tests::{NodeOptions, TestNode};
use ed25519_dalek::{Signer, SigningKey};
use firmware_sim::{
    authenticate, Credentials, Link, LinkEvent, SimError, Tablet, TabletConfig, TransportKind,
};

const WAIT: Duration = Duration::from_secs(10);

async fn open(config: &TabletConfig) -> Link {
    config.open_link().await.expect("link opens")
}

/// The rejection every failed authentication must produce, on either transport.
async fn assert_rejected(config: &TabletConfig) {
    let mut link = open(config).await;
    let error = authenticate(&mut link, &config.credentials, "test")
        .await
        .expect_err("must be rejected");
    match error {
        SimError::Rejected { reason, .. } => assert_eq!(reason, RejectReason::BadCredentials),
        other => panic!("expected a BAD_CREDENTIALS rejection, got {other}"),
    }
    assert_closed(&mut link, config.transport).await;
}

async fn assert_closed(link: &mut Link, transport: TransportKind) {
    loop {
        match tokio::time::timeout(WAIT, link.recv())
            .await
            .expect("the server closes the link")
        {
            Ok(LinkEvent::Envelope(_)) => continue,
            Ok(LinkEvent::Closed {
                code, grpc_code, ..
            }) => {
                match transport {
                    TransportKind::WebSocket => {
                        assert_eq!(code, Some(carebell_proto::CLOSE_AUTH_REJECTED))
                    }
                    TransportKind::Grpc => {
                        assert_eq!(grpc_code, Some(tonic::Code::Unauthenticated))
                    }
                }
                return;
            }
            Err(error) => panic!("unexpected link error {error}"),
        }
    }
}

#[tokio::test]
async fn a_wrong_key_an_unknown_device_and_a_replayed_proof_get_the_same_rejection() {
    let node = TestNode::start(NodeOptions::default()).await;
    for transport in [TransportKind::WebSocket, TransportKind::Grpc] {
        let (_resident, config) = node.tablet_config("潘阿姨", transport).await;

        // Wrong key: the right device id, someone else's private key.
        let mut wrong_key = config.clone();
        let impostor = SigningKey::from_bytes(&[42u8; 32]);
        wrong_key.credentials = Credentials::new(
            &config.credentials.device_id,
            &impostor,
            &config.credentials.websocket_url,
            &config.credentials.grpc_url,
        );
        wrong_key.credentials.ca_certificate_pem = config.credentials.ca_certificate_pem.clone();
        assert_rejected(&wrong_key).await;

        // Unknown device.
        let mut unknown = config.clone();
        unknown.credentials.device_id = "tab-nobody".to_owned();
        assert_rejected(&unknown).await;

        // Replay: record a genuine proof, then present it on a new connection.
        let key = config.credentials.signing_key().unwrap();
        let device_id = config.credentials.device_id.clone();
        let mut link = open(&config).await;
        link.send(hello(&device_id)).await.unwrap();
        let nonce = challenge_nonce(&mut link).await;
        let recorded = key
            .sign(&auth_message(&device_id, &nonce))
            .to_bytes()
            .to_vec();
        drop(link);
        let mut link = open(&config).await;
        link.send(hello(&device_id)).await.unwrap();
        let fresh_nonce = challenge_nonce(&mut link).await;
        assert_ne!(fresh_nonce, nonce, "every connection gets a fresh nonce");
        link.send(Envelope {
            seq: 2,
            ack: 1,
            body: Some(Body::Proof(Proof {
                signature: recorded,
            })),
        })
        .await
        .unwrap();
        match next_body(&mut link).await {
            Some(Body::Rejected(rejected)) => {
                assert_eq!(rejected.reason, RejectReason::BadCredentials as i32)
            }
            other => panic!("a replayed proof must be rejected, got {other:?}"),
        }
        assert_closed(&mut link, transport).await;

        // And the genuine device still gets in.
        let tablet = Tablet::connect(&config)
            .await
            .expect("the genuine tablet authenticates");
        tablet.close().await;
    }
}

fn hello(device_id: &str) -> Envelope {
    Envelope {
        seq: 1,
        ack: 0,
        body: Some(Body::Hello(Hello {
            device_id: device_id.to_owned(),
            protocol_versions: vec![1],
            firmware_version: "test".to_owned(),
        })),
    }
}

async fn next_body(link: &mut Link) -> Option<Body> {
    loop {
        match tokio::time::timeout(WAIT, link.recv())
            .await
            .expect("an answer")
        {
            Ok(LinkEvent::Envelope(Envelope { body: None, .. })) => continue,
            Ok(LinkEvent::Envelope(envelope)) => return envelope.body,
            _ => return None,
        }
    }
}

async fn challenge_nonce(link: &mut Link) -> Vec<u8> {
    match next_body(link).await {
        Some(Body::Challenge(challenge)) => {
            assert_eq!(challenge.nonce.len(), 32);
            challenge.nonce
        }
        other => panic!("expected a challenge, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unsupported_protocol_version_is_rejected_with_its_own_reason() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (_resident, config) = node.tablet_config("李伯", TransportKind::WebSocket).await;
    let mut link = open(&config).await;
    let mut envelope = hello(&config.credentials.device_id);
    if let Some(Body::Hello(hello)) = &mut envelope.body {
        hello.protocol_versions = vec![7, 9];
    }
    link.send(envelope).await.unwrap();
    match next_body(&mut link).await {
        Some(Body::Rejected(rejected)) => {
            assert_eq!(rejected.reason, RejectReason::UnsupportedVersion as i32)
        }
        other => panic!("expected a version rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_device_cannot_speak_for_another_device() {
    let node = TestNode::start(NodeOptions::default()).await;
    let (_a, config_a) = node.tablet_config("甲", TransportKind::WebSocket).await;
    let (_b, config_b) = node.tablet_config("乙", TransportKind::WebSocket).await;
    let mut link = open(&config_a).await;
    authenticate(&mut link, &config_a.credentials, "test")
        .await
        .unwrap();
    // A second Hello, claiming to be B, inside A's session.
    let mut claim = hello(&config_b.credentials.device_id);
    claim.seq = 3;
    link.send(claim).await.unwrap();
    match next_body(&mut link).await {
        Some(Body::Error(error)) => assert_eq!(error.code, ErrorCode::ProtocolViolation as i32),
        other => panic!("expected a protocol violation, got {other:?}"),
    }
    // The session is over; nothing more it says is believed.
    let _ = link
        .send(Envelope {
            seq: 4,
            ack: 0,
            body: Some(Body::CallRequest(CallRequest {
                request_id: "as-b".to_owned(),
                pressed_at_ms: 0,
            })),
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b_calls = node
        .store
        .call_state_counts(std::slice::from_ref(&config_b.credentials.device_id))
        .await
        .unwrap();
    let a_calls = node
        .store
        .call_state_counts(std::slice::from_ref(&config_a.credentials.device_id))
        .await
        .unwrap();
    assert!(
        b_calls.is_empty() && a_calls.is_empty(),
        "no call was made for anyone: {b_calls:?} {a_calls:?}"
    );
}

//! The permission table, exhaustively: every RPC of the console, family and provider APIs
//! (read from `proto/`), called as every role, answers as `carebell_gateway::permissions` says:
//! refused (`UNAUTHENTICATED`, or `PERMISSION_DENIED` for a signed-in role without the right)
//! for the roles it does not list, and past the door (any other answer) for those it does.
//! Also the open doors beside the APIs: gRPC health and reflection.

use std::collections::HashMap;
use std::time::Duration;

use carebell_gateway::permissions::{allowed, Role, PAGES, PERMISSIONS};
use carebell_store::NewProvider;
use carebell_tests::{Bridge, NodeOptions, TestNode, PASSWORD};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::Code;

/// Every RPC in the three APIs' proto files: (`package.Service/Method`, server-streaming).
fn rpcs_in_proto() -> Vec<(String, bool)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/carebell");
    let mut rpcs = Vec::new();
    for api in ["console", "family", "provider"] {
        let dir = root.join(api).join("v1");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let package = text
                .lines()
                .find_map(|line| line.trim().strip_prefix("package "))
                .map(|package| package.trim_end_matches(';').to_owned())
                .unwrap();
            let mut service = String::new();
            for line in text.lines().map(str::trim) {
                if let Some(rest) = line.strip_prefix("service ") {
                    service = rest.trim_end_matches('{').trim().to_owned();
                }
                if let Some(rest) = line.strip_prefix("rpc ") {
                    let method = rest.split('(').next().unwrap().trim();
                    let streaming = rest.contains("returns (stream ");
                    rpcs.push((format!("{package}.{service}/{method}"), streaming));
                }
            }
        }
    }
    rpcs.sort();
    rpcs
}

/// Calls `rpc` with an empty request (every field at its default) as the holder of `token`;
/// returns the status code (`Ok` also for a stream that stays open).
async fn call(channel: &Channel, rpc: &str, streaming: bool, token: Option<&str>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(());
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let path = PathAndQuery::try_from(format!("/{rpc}")).unwrap();
    // `()` encodes as an empty message and decodes any message (unknown fields are skipped).
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    if streaming {
        match grpc.server_streaming(request, path, codec).await {
            Err(status) => status.code(),
            Ok(response) => {
                let mut stream = response.into_inner();
                match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                    Ok(Err(status)) => status.code(),
                    _ => Code::Ok,
                }
            }
        }
    } else {
        match grpc.unary(request, path, codec).await {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        }
    }
}

/// One account per signed-in role (password [`PASSWORD`]): `perm-operator`,
/// `perm-supervisor`, `perm-family`, `perm-provider`.
async fn role_accounts(node: &TestNode) {
    let hash = carebell_gateway::console::hash_password(PASSWORD).unwrap();
    node.operator_account("perm-operator", "Operator").await;
    node.operator_account("perm-supervisor", "Supervisor").await;
    node.store
        .set_operator_skills("perm-supervisor", &["supervisor".to_owned()])
        .await
        .unwrap();
    node.store
        .add_family_account("perm-family", "Family", &hash)
        .await
        .unwrap();
    let provider = node
        .store
        .add_provider(&NewProvider::new("权限测试服务社", "LIC-PERMISSIONS"))
        .await
        .unwrap();
    node.store
        .add_provider_account(provider, "perm-provider", "Provider", &hash)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_as_every_role_answers_as_the_permission_table_says() {
    let node = TestNode::start(NodeOptions::default()).await;
    let channel = carebell_server::console_client::channel(&node.grpc_url, Some(&node.ca_pem))
        .await
        .unwrap();
    role_accounts(&node).await;
    let console_token = |username: &'static str| {
        let channel = channel.clone();
        async move {
            carebell_proto::console::v1::console_client::ConsoleClient::new(channel)
                .sign_in(carebell_proto::console::v1::SignInRequest {
                    username: username.to_owned(),
                    password: PASSWORD.to_owned(),
                })
                .await
                .unwrap()
                .into_inner()
                .token
        }
    };
    let mut tokens: HashMap<Role, Option<String>> = HashMap::new();
    tokens.insert(Role::Anonymous, None);
    tokens.insert(Role::Operator, Some(console_token("perm-operator").await));
    tokens.insert(
        Role::Supervisor,
        Some(console_token("perm-supervisor").await),
    );
    tokens.insert(
        Role::Family,
        Some(
            carebell_proto::family::v1::family_client::FamilyClient::new(channel.clone())
                .sign_in(carebell_proto::family::v1::SignInRequest {
                    username: "perm-family".to_owned(),
                    password: PASSWORD.to_owned(),
                })
                .await
                .unwrap()
                .into_inner()
                .token,
        ),
    );
    tokens.insert(
        Role::Provider,
        Some(
            carebell_proto::provider::v1::provider_client::ProviderClient::new(channel.clone())
                .sign_in(carebell_proto::provider::v1::SignInRequest {
                    username: "perm-provider".to_owned(),
                    password: PASSWORD.to_owned(),
                })
                .await
                .unwrap()
                .into_inner()
                .token,
        ),
    );

    // The table and the proto files list the same RPCs.
    let rpcs = rpcs_in_proto();
    let mut in_table: Vec<&str> = PERMISSIONS.iter().map(|p| p.rpc).collect();
    in_table.sort_unstable();
    let in_proto: Vec<&str> = rpcs.iter().map(|(rpc, _)| rpc.as_str()).collect();
    assert_eq!(
        in_table, in_proto,
        "the permission table and proto/ disagree"
    );

    let mut wrong = Vec::new();
    let mut checked = 0;
    for (rpc, streaming) in &rpcs {
        // Sign-in is the open door; an empty one is simply a failed sign-in.
        if rpc.ends_with("/SignIn") {
            continue;
        }
        for role in Role::ALL {
            let code = call(&channel, rpc, *streaming, tokens[&role].as_deref()).await;
            checked += 1;
            let refused = matches!(code, Code::Unauthenticated | Code::PermissionDenied);
            let expected_refusal = !allowed(rpc, role);
            if refused != expected_refusal || code == Code::Unimplemented {
                wrong.push(format!("{rpc} as {role:?}: {code:?}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "answers against the table:\n{}",
        wrong.join("\n")
    );
    // Every RPC but the three sign-ins, as each of the five roles.
    assert_eq!(checked, (rpcs.len() - 3) * Role::ALL.len());
    node.stop().await;
}

/// The browser's way in, exhaustively: every RPC of the table through the bridge
/// (`POST /api/{service}/{Method}`, or the stream's WebSocket) as every role answers as the
/// table says, and every page is the same static shell for every role, with no data in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bridge_call_and_page_as_every_role_answers_as_the_permission_table_says() {
    let node = TestNode::start(NodeOptions::default()).await;
    role_accounts(&node).await;
    // A resident whose name must appear on no page.
    node.resident("页面不应出现的名字").await;
    let bridge = Bridge::new(&node);
    let mut tokens: HashMap<Role, Option<String>> = HashMap::new();
    tokens.insert(Role::Anonymous, None);
    tokens.insert(
        Role::Operator,
        Some(bridge.sign_in("console", "perm-operator").await),
    );
    tokens.insert(
        Role::Supervisor,
        Some(bridge.sign_in("console", "perm-supervisor").await),
    );
    tokens.insert(
        Role::Family,
        Some(bridge.sign_in("family", "perm-family").await),
    );
    tokens.insert(
        Role::Provider,
        Some(bridge.sign_in("provider", "perm-provider").await),
    );
    let streams: Vec<String> = rpcs_in_proto()
        .into_iter()
        .filter(|(_, streaming)| *streaming)
        .map(|(rpc, _)| rpc)
        .collect();

    let mut wrong = Vec::new();
    let mut checked = 0;
    for permission in PERMISSIONS {
        if permission.rpc.ends_with("/SignIn") {
            continue;
        }
        // "carebell.console.v1.Console/Accept" is /api/console/Accept.
        let (path, method) = permission.rpc.split_once('/').unwrap();
        let service = path.split('.').nth(1).unwrap();
        for role in Role::ALL {
            let token = tokens[&role].as_deref();
            let code = if streams.iter().any(|rpc| rpc == permission.rpc) {
                let query = token
                    .map(|token| format!("token={token}"))
                    .unwrap_or_default();
                bridge
                    .stream_answer(service, method, &query, Duration::from_millis(700))
                    .await
                    .and_then(|frame| frame["error"]["code"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "ok".to_owned())
            } else {
                match bridge
                    .call(service, method, token, serde_json::json!({}))
                    .await
                {
                    Ok(_) => "ok".to_owned(),
                    Err(refusal) => refusal.code,
                }
            };
            checked += 1;
            let refused = matches!(code.as_str(), "unauthenticated" | "permission_denied");
            // `unimplemented` is the bridge not knowing the call: never right.
            if refused == allowed(permission.rpc, role) || code == "unimplemented" {
                wrong.push(format!(
                    "{} as {role:?} over the bridge: {code}",
                    permission.rpc
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "bridge answers against the table:\n{}",
        wrong.join("\n")
    );
    assert_eq!(checked, (PERMISSIONS.len() - 3) * Role::ALL.len());

    // Pages: the same bytes for every role, open to those the table lists, with no data.
    for (page, roles) in PAGES {
        let mut bodies = Vec::new();
        for role in Role::ALL {
            let authorization = tokens[&role]
                .as_deref()
                .map(|token| format!("authorization: Bearer {token}\r\n"))
                .unwrap_or_default();
            let head = format!(
                "GET {page} HTTP/1.1\r\nhost: localhost\r\n{authorization}connection: close\r\n\r\n"
            );
            let (status, body) = bridge.exchange(&head, b"").await;
            assert_eq!(
                status == 200,
                roles.contains(&role),
                "{page} as {role:?}: {status}"
            );
            let text = String::from_utf8_lossy(&body).into_owned();
            assert!(!text.contains("页面不应出现的名字"), "{page} holds data");
            bodies.push(text);
        }
        assert!(
            bodies.windows(2).all(|pair| pair[0] == pair[1]),
            "{page} differs by role"
        );
    }
    node.stop().await;
}

/// Probes and tools: gRPC health says every API is serving, and reflection lists the services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_and_reflection_answer() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let node = TestNode::start(NodeOptions::default()).await;
    let channel = carebell_server::console_client::channel(&node.grpc_url, Some(&node.ca_pem))
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in [
        "",
        "carebell.console.v1.Console",
        "carebell.device.v1.DeviceLink",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = responses
        .message()
        .await
        .unwrap()
        .and_then(|response| response.message_response)
    else {
        panic!("no service list");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    for expected in [
        "carebell.console.v1.Console",
        "carebell.family.v1.Family",
        "carebell.provider.v1.Provider",
        "carebell.device.v1.DeviceLink",
        "carebell.device.v1.DeviceEnrolment",
    ] {
        assert!(
            names.iter().any(|name| name == expected),
            "{expected} not in {names:?}"
        );
    }
    node.stop().await;
}

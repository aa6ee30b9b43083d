//! `carebell demo`: calls are placed, offered, answered and closed.

use std::time::Duration;

use carebell_server::demo::{self, DemoOptions};
use carebell_server::settings::{Secret, Settings};
use carebell_tests::TempDir;

#[tokio::test]
async fn the_demo_shows_calls_answered_and_ended() {
    let mut settings = Settings::defaults().unwrap();
    settings.database_url = Secret::new(carebell_tests::fresh_database().await);
    settings.redis_url = None;
    settings.listen.websocket = "127.0.0.1:0".parse().unwrap();
    settings.listen.grpc = "127.0.0.1:0".parse().unwrap();
    settings.listen.web = "127.0.0.1:0".parse().unwrap();
    settings.listen.metrics = "127.0.0.1:0".parse().unwrap();
    let dir = TempDir::new();
    let summary = demo::run(
        settings,
        DemoOptions {
            duration: Some(Duration::from_secs(10)),
            n_operators: 3,
            state_dir: dir.0.clone(),
        },
    )
    .await
    .expect("the demo runs");
    assert!(summary.calls > 0, "{summary:?}");
    assert!(
        summary.ended > 0,
        "calls were answered and ended: {summary:?}"
    );
    assert!(
        summary.orders > 0,
        "service requests became service orders: {summary:?}"
    );
}

//! `tablet-sim` as a newcomer would run it: a credentials file and a script of steps.

use std::process::Stdio;
use std::time::Duration;

use carebell_proto::console::v1::Disposition;
use carebell_tests::{NodeOptions, TempDir, TestNode};

async fn tablet_sim(args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_tablet-sim"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tablet-sim starts")
}

#[tokio::test]
async fn a_scripted_press_is_answered_and_shown() {
    let node = TestNode::start(NodeOptions::default()).await;
    let mut console = node.available_operator("cli", "李秘书 小李").await;
    let resident = node.resident("潘阿姨").await;
    let credentials = node.provision(resident).await;
    let dir = TempDir::new();
    let path = dir.0.join("tablet.json");
    credentials.save_new(&path).unwrap();
    let path = path.to_string_lossy().into_owned();

    let child = tablet_sim(&[
        "--credentials",
        &path,
        "--wait-timeout",
        "20s",
        "press",
        "wait:answered",
        "wait:ended",
    ])
    .await;
    let offer = console
        .next_offer(Duration::from_secs(20))
        .await
        .expect("the press reaches the operator");
    let accepted = console.client.accept(&offer.offer_id).await.unwrap();
    console
        .client
        .end_call(&accepted.call_id, Disposition::Companionship, "")
        .await
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("tablet-sim finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("answered by 李秘书 小李"), "{stdout}");
    assert!(stdout.contains("call ended (companionship)"), "{stdout}");
}

#[tokio::test]
async fn an_unknown_step_and_a_missing_file_are_clear_errors() {
    let output = tablet_sim(&["--credentials", "/nonexistent/tablet.json"])
        .await
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot read credentials file /nonexistent/tablet.json"),
        "{stderr}"
    );

    let node = TestNode::start(NodeOptions::default()).await;
    let resident = node.resident("李伯").await;
    let dir = TempDir::new();
    let path = dir.0.join("tablet.json");
    node.provision(resident).await.save_new(&path).unwrap();
    let output = tablet_sim(&["--credentials", &path.to_string_lossy(), "dance"])
        .await
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown step 'dance'"), "{stderr}");
}

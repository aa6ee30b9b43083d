//! The deployment files under `deploy/` pass their validators (`deploy/validate.sh`: systemd-analyze,
//! hadolint, the Compose schema, kubernetes-validate, `haproxy -c`, `carebell config check`, ...),
//! and those validators reject a file with a defect, saying what is wrong.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use carebell_tests::TempDir;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository holds tests/")
        .to_path_buf()
}

/// Runs `deploy/validate.sh` on `files` (every deployment file when empty). It checks settings
/// with the `carebell` binary built beside this test (`./deploy/test.sh` builds every binary
/// first); when there is none, validate.sh builds it into the same target directory.
fn validate(files: &[&Path]) -> (Output, String) {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the target directory");
    let mut command = Command::new(repository().join("deploy/validate.sh"));
    command.args(files).current_dir(repository());
    let carebell = profile_dir.join("carebell");
    if carebell.exists() {
        command.env("CAREBELL_BIN", &carebell);
    } else if let Some(target_dir) = profile_dir.parent() {
        command.env("CARGO_TARGET_DIR", target_dir);
    }
    let output = command.output().expect("deploy/validate.sh runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, stdout)
}

/// A copy of a deployment file in `dir`, under the same name, with `from` replaced by `to`.
fn defective_copy(dir: &TempDir, file: &str, from: &str, to: &str) -> PathBuf {
    let original = std::fs::read_to_string(repository().join(file)).expect("the file exists");
    assert!(
        original.contains(from),
        "{file} no longer contains {from:?}: update this test"
    );
    let name = Path::new(file).file_name().expect("a file name");
    let copy = dir.0.join(name);
    std::fs::write(&copy, original.replacen(from, to, 1)).expect("the copy is written");
    copy
}

/// Asserts validate.sh rejected `copy` with `label` and that its explanation mentions `reason`.
fn assert_rejected(copy: &Path, label: &str, reason: &str) {
    let (output, stdout) = validate(&[copy]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "validate.sh accepted a defective file\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let heading = format!("FAIL  {}: {label}", copy.display());
    assert!(
        stdout.lines().any(|line| line.starts_with(&heading)),
        "no line starting {heading:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains(reason),
        "the reason {reason:?} is not given\nstdout:\n{stdout}"
    );
    assert!(
        stdout.contains("0 valid, 1 invalid"),
        "the summary is wrong\nstdout:\n{stdout}"
    );
}

#[test]
fn every_deployment_file_passes_its_validator() {
    let (output, stdout) = validate(&[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "deploy/validate.sh failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let validated = [
        ("deploy/systemd/carebell.service", "systemd-analyze verify"),
        ("deploy/systemd/carebell@.service", "systemd-analyze verify"),
        ("deploy/systemd/carebell.sysusers", "systemd-sysusers"),
        ("deploy/systemd/carebell.tmpfiles", "systemd-tmpfiles"),
        ("deploy/systemd/carebell.toml", "carebell config check"),
        (
            "deploy/systemd/carebell.env.example",
            "carebell config check",
        ),
        ("deploy/container/Dockerfile", "hadolint"),
        ("deploy/compose.yaml", "check-jsonschema"),
        ("deploy/haproxy.cfg", "haproxy -dW -c"),
        ("deploy/k8s/namespace.yaml", "kubernetes-validate"),
        ("deploy/k8s/configmap.yaml", "carebell config check"),
        ("deploy/k8s/secret.yaml", "kubernetes-validate"),
        ("deploy/k8s/deployment.yaml", "carebell config check"),
        ("deploy/k8s/pdb.yaml", "kubernetes-validate"),
        ("deploy/k8s/service.yaml", "kubernetes-validate"),
        ("deploy/k8s/migrate-job.yaml", "kubernetes-validate"),
        ("deploy/validate.sh", "shellcheck"),
        ("deploy/turnserver.conf", "turnserver -c on loopback"),
    ];
    for (file, tool) in validated {
        let line = stdout
            .lines()
            .find(|line| line.starts_with(&format!("ok    {file}: ")))
            .unwrap_or_else(|| panic!("{file} is not named as valid\nstdout:\n{stdout}"));
        assert!(
            line.contains(tool),
            "{file} was not checked by {tool}: {line}"
        );
    }
    assert!(
        stdout.contains(&format!(
            "validate.sh: {} valid, 0 invalid, 0 not validated",
            validated.len()
        )),
        "stdout:\n{stdout}"
    );
}

#[test]
fn a_deployment_with_a_field_of_the_wrong_type_is_rejected() {
    let dir = TempDir::new();
    let copy = defective_copy(
        &dir,
        "deploy/k8s/deployment.yaml",
        "replicas: 2",
        "replicas: \"two\"",
    );
    assert_rejected(
        &copy,
        "kubernetes-validate --strict",
        "spec.replicas: 'two' is not of type 'integer'",
    );
}

#[test]
fn a_deployment_with_an_unknown_field_is_rejected() {
    let dir = TempDir::new();
    let copy = defective_copy(
        &dir,
        "deploy/k8s/deployment.yaml",
        "terminationGracePeriodSeconds: 60",
        "terminationGracePeriodSecs: 60",
    );
    assert_rejected(
        &copy,
        "kubernetes-validate --strict",
        "'terminationGracePeriodSecs' was unexpected",
    );
}

#[test]
fn a_deployment_whose_pods_are_killed_before_they_drain_is_rejected() {
    let dir = TempDir::new();
    let copy = defective_copy(
        &dir,
        "deploy/k8s/deployment.yaml",
        "terminationGracePeriodSeconds: 60",
        "terminationGracePeriodSeconds: 5",
    );
    assert_rejected(
        &copy,
        "the project's rules for Kubernetes objects",
        "terminationGracePeriodSeconds must be at least 60",
    );
}

#[test]
fn a_config_map_with_a_setting_carebell_refuses_is_rejected() {
    let dir = TempDir::new();
    let copy = defective_copy(
        &dir,
        "deploy/k8s/configmap.yaml",
        "go_away_window_ms = 30000",
        "go_away_window_ms = \"soon\"",
    );
    assert_rejected(
        &copy,
        "carebell config check",
        "expected an integer for key `device.go_away_window_ms`",
    );
}

#[test]
fn a_unit_with_an_unknown_directive_is_rejected() {
    let dir = TempDir::new();
    let copy = defective_copy(
        &dir,
        "deploy/systemd/carebell.service",
        "PrivateTmp=yes",
        "PrivateTmp=yes\nProtectEverything=yes",
    );
    assert_rejected(
        &copy,
        "systemd-analyze verify",
        "Unknown key 'ProtectEverything' in section [Service]",
    );
}

#[test]
fn a_unit_without_its_hardening_is_rejected() {
    let dir = TempDir::new();
    let copy = defective_copy(
        &dir,
        "deploy/systemd/carebell@.service",
        "ProtectSystem=strict\n",
        "",
    );
    assert_rejected(
        &copy,
        "the project's rules for a Carebell unit",
        "missing: ProtectSystem=strict",
    );
}

#[test]
fn a_unit_over_the_exposure_threshold_is_rejected() {
    // Every protection the project's own rules do not name, taken out: systemd-analyze
    // security alone must notice.
    let original = std::fs::read_to_string(repository().join("deploy/systemd/carebell.service"))
        .expect("the unit exists");
    let optional = [
        "PrivateUsers=",
        "PrivateIPC=",
        "PrivateMounts=",
        "ProtectClock=",
        "ProtectHostname=",
        "ProtectProc=",
        "ProcSubset=",
        "RestrictRealtime=",
        "RestrictSUIDSGID=",
        "LockPersonality=",
        "SystemCallArchitectures=",
        "SystemCallFilter=~",
        "UMask=",
        "RemoveIPC=",
    ];
    let weakened: String = original
        .lines()
        .filter(|line| !optional.iter().any(|key| line.starts_with(key)))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(weakened.len() < original.len());
    let dir = TempDir::new();
    let copy = dir.0.join("carebell.service");
    std::fs::write(&copy, weakened).unwrap();
    assert_rejected(
        &copy,
        "systemd-analyze security --offline=true: exposure",
        "is over 2.0",
    );
}

#[test]
fn a_turn_server_config_with_a_line_coturn_cannot_read_is_rejected() {
    let dir = TempDir::new();
    let copy = defective_copy(
        &dir,
        "deploy/turnserver.conf",
        "stale-nonce=600",
        "stale-nonce=600\nrelay-everything=yes",
    );
    assert_rejected(
        &copy,
        "turnserver rejected lines",
        "Bad configuration format: relay-everything",
    );
}

#[test]
fn a_broken_haproxy_config_is_rejected() {
    let dir = TempDir::new();
    let copy = defective_copy(
        &dir,
        "deploy/haproxy.cfg",
        "balance leastconn",
        "balance busiest",
    );
    assert_rejected(
        &copy,
        "haproxy -dW -c",
        "balance only supports 'roundrobin'",
    );
}

#[test]
fn a_compose_file_whose_nodes_share_a_name_is_rejected() {
    let dir = TempDir::new();
    let copy = defective_copy(
        &dir,
        "deploy/compose.yaml",
        "CAREBELL_NODE_ID: node-2",
        "CAREBELL_NODE_ID: node-1",
    );
    assert_rejected(
        &copy,
        "the project's rules for the stack",
        "CAREBELL_NODE_ID 'node-1' is also node-1's",
    );
}

#[test]
fn a_compose_file_outside_the_specification_is_rejected() {
    let dir = TempDir::new();
    let copy = defective_copy(
        &dir,
        "deploy/compose.yaml",
        "stop_grace_period: 60s",
        "stop_grace_period: 60s\n  stop_grace: 60s",
    );
    assert_rejected(
        &copy,
        "check-jsonschema --builtin-schema vendor.compose-spec",
        "stop_grace",
    );
}

#[test]
fn an_image_that_runs_as_root_is_rejected() {
    let dir = TempDir::new();
    let copy = defective_copy(
        &dir,
        "deploy/container/Dockerfile",
        "USER 10001:10001",
        "USER root",
    );
    assert_rejected(&copy, "hadolint", "DL3002");
}

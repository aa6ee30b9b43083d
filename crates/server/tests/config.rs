//! `carebell config`: the reference in docs/configuration.md names every setting and its
//! environment variable; `config check` accepts a good configuration (printing it with secrets
//! redacted) and refuses a bad one with exit status 64 and a clear message.

use std::process::Command;

use carebell_server::settings::{DEFAULTS, OPTIONAL_SETTINGS};

/// Every key of the defaults, dotted (`device.heartbeat_interval_ms`).
fn default_keys() -> Vec<String> {
    let table: toml::Table = toml::from_str(DEFAULTS).expect("the defaults are TOML");
    let mut keys = Vec::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(section) => {
                keys.extend(section.keys().map(|inner| format!("{key}.{inner}")))
            }
            _ => keys.push(key),
        }
    }
    keys
}

#[test]
fn the_reference_names_every_setting_and_its_environment_variable() {
    let reference = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .expect("docs/configuration.md");
    let keys: Vec<String> = default_keys()
        .into_iter()
        .chain(OPTIONAL_SETTINGS.iter().map(|key| (*key).to_owned()))
        .collect();
    assert!(keys.len() > 40, "{keys:?}");
    for key in keys {
        assert!(
            reference.contains(&format!("| `{key}` |")),
            "{key} is not documented"
        );
        if key != "webrtc.ice_servers" {
            let variable = format!("CAREBELL_{}", key.replace('.', "__").to_uppercase());
            assert!(
                reference.contains(&variable),
                "{variable} is not documented"
            );
        }
    }
}

fn config_check(env: &[(&str, &str)]) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_carebell"));
    command.args(["config", "check"]);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("carebell runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn config_check_accepts_a_good_configuration_and_refuses_a_bad_one() {
    let dir = carebell_tests::TempDir::new();
    let (cert, key) = carebell_server::devcert::DevCertificates::generate()
        .unwrap()
        .write(&dir.0)
        .unwrap();
    let (cert, key) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let good = [
        (
            "CAREBELL_DATABASE_URL",
            "postgres://carebell:hunter2@127.0.0.1:5432/x",
        ),
        ("CAREBELL_TLS__CERT_PATH", cert.as_str()),
        ("CAREBELL_TLS__KEY_PATH", key.as_str()),
    ];
    let (status, text) = config_check(&good);
    assert_eq!(status, 0, "{text}");
    assert!(text.contains("the configuration is valid"), "{text}");
    assert!(text.contains("heartbeat_interval_ms: 30000"), "{text}");
    assert!(!text.contains("hunter2"), "a secret was printed: {text}");

    // A value out of range.
    let mut bad = good.to_vec();
    bad.push(("CAREBELL_DISPATCH__RING_TIMEOUT_MS", "10"));
    let (status, text) = config_check(&bad);
    assert_eq!(status, 64, "{text}");
    assert!(text.contains("ring_timeout_ms"), "{text}");
    // A certificate that is not there.
    let mut missing = good.to_vec();
    missing[1] = ("CAREBELL_TLS__CERT_PATH", "/nonexistent/server.pem");
    let (status, text) = config_check(&missing);
    assert_eq!(status, 64, "{text}");
    assert!(text.contains("/nonexistent/server.pem"), "{text}");
    // Mutual TLS required without a provisioning CA.
    let mut no_ca = good.to_vec();
    no_ca.push(("CAREBELL_DEVICE__REQUIRE_CLIENT_CERTIFICATE", "true"));
    let (status, text) = config_check(&no_ca);
    assert_eq!(status, 64, "{text}");
    assert!(text.contains("client_ca_path"), "{text}");
}

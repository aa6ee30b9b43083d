//! The configuration file: any text, loaded as `carebell serve --config FILE` loads it
//! (`Settings::load`: the defaults, then the file, then `CAREBELL_` variables, then validation),
//! gives settings or an error with a message, never a panic; secrets are never printed.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use carebell_server::settings::Settings;
use libfuzzer_sys::fuzz_target;

/// Where each input is written for the loader, which reads a file (on tmpfs where there is one;
/// one file per process, so parallel jobs do not share it).
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = ["/dev/shm"]
            .iter()
            .map(PathBuf::from)
            .find(|dir| dir.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        dir.join(format!(
            "carebell-fuzz-settings-{}.toml",
            std::process::id()
        ))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    std::fs::write(scratch(), text).expect("the scratch file is writable");
    match Settings::load(Some(scratch())) {
        Ok(settings) => {
            let secrets = [
                Some(&settings.database_url),
                settings.database_migrate_url.as_ref(),
                settings.redis_url.as_ref(),
                settings.webhook.secret.as_ref(),
            ];
            for secret in secrets.into_iter().flatten() {
                assert_eq!(format!("{secret:?}"), "\"[redacted]\"");
            }
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
});

//! The routing rules an administrator uploads (TOML): any text gives a valid rule set or a
//! clear error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(error) = carebell_domain::routing::ValidRuleSet::parse(text) {
            assert!(!error.to_string().is_empty());
        }
    }
});

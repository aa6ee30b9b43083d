//! What the browser bridge parses from a stream's URL (`/api/{service}/{Method}/stream?...`):
//! the first byte picks one of the four streams, the rest is the query string. It is parsed as
//! the bridge parses it (axum's `Query`, then `carebell_gateway::web::request_json`) and decoded
//! into the stream's request message: a message or an error, never a panic; `token` never
//! reaches the message; a decoded message serialises and decodes back to itself.
#![no_main]

use std::collections::HashMap;

use axum::extract::Query;
use axum::http::Uri;
use carebell_proto::{console::v1 as console, family::v1 as family, provider::v1 as provider};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

fn decode<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(
    fields: serde_json::Value,
) {
    if let Ok(message) = serde_json::from_value::<T>(fields) {
        let text = serde_json::to_string(&message).expect("a decoded message serialises");
        let again: T = serde_json::from_str(&text).expect("and decodes again");
        assert_eq!(again, message);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, query)) = data.split_first() else {
        return;
    };
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    // What cannot be in a URI never reaches the bridge (the HTTP server refuses it).
    let Ok(uri) = format!("/api/family/Alerts/stream?{query}").parse::<Uri>() else {
        return;
    };
    let Ok(Query(parameters)) = Query::<HashMap<String, String>>::try_from_uri(&uri) else {
        return;
    };
    let had_token = parameters.contains_key("token");
    let (token, fields) = carebell_gateway::web::request_json(parameters);
    assert_eq!(token.is_some(), had_token);
    assert!(
        fields.get("token").is_none(),
        "the token leaked into the message"
    );
    match which % 4 {
        0 => decode::<console::SubscribeRequest>(fields),
        1 => decode::<console::QueueStatusRequest>(fields),
        2 => decode::<family::AlertsRequest>(fields),
        _ => decode::<provider::FeedRequest>(fields),
    }
});

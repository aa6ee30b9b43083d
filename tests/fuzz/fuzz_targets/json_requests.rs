//! Every JSON body the browser bridge (`/api/{service}/{Method}`) accepts: the first byte picks
//! a request type, the rest is the body. Decoding gives a message or an error, never a panic;
//! a decoded message serialises and decodes back to itself.
#![no_main]

use carebell_proto::{console::v1 as console, family::v1 as family, provider::v1 as provider};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(body: &[u8]) {
    if let Ok(message) = serde_json::from_slice::<T>(body) {
        let text = serde_json::to_string(&message).expect("a decoded message serialises");
        let again: T = serde_json::from_str(&text).expect("and decodes again");
        assert_eq!(again, message);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 24 {
        0 => round_trip::<console::SignInRequest>(body),
        1 => round_trip::<console::SetStatusRequest>(body),
        2 => round_trip::<console::AcceptRequest>(body),
        3 => round_trip::<console::EndCallRequest>(body),
        4 => round_trip::<console::GetResidentRequest>(body),
        5 => round_trip::<console::TransferRequest>(body),
        6 => round_trip::<console::RecordAlarmActionRequest>(body),
        7 => round_trip::<console::ResolveAlarmRequest>(body),
        8 => round_trip::<console::CreateOrderRequest>(body),
        9 => round_trip::<console::CancelOrderRequest>(body),
        10 => round_trip::<console::SuggestProvidersRequest>(body),
        11 => round_trip::<console::ServiceReportRequest>(body),
        12 => round_trip::<console::DeclineRequest>(body),
        13 => round_trip::<console::StatisticsRequest>(body),
        14 => round_trip::<family::SignInRequest>(body),
        15 => round_trip::<family::AcknowledgeRequest>(body),
        16 => round_trip::<family::SendMessageRequest>(body),
        17 => round_trip::<family::RelativeRequest>(body),
        18 => round_trip::<provider::SignInRequest>(body),
        19 => round_trip::<provider::AcceptRequest>(body),
        20 => round_trip::<provider::DeclineRequest>(body),
        21 => round_trip::<provider::AssignStaffRequest>(body),
        22 => round_trip::<provider::UpdateStatusRequest>(body),
        _ => round_trip::<console::RecordOrderCallBackRequest>(body),
    }
});

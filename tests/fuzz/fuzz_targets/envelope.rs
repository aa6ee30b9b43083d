//! The device envelope decoder: any bytes give an envelope or an error, never a panic; what
//! decodes re-encodes to bytes that decode to the same envelope.
#![no_main]

use carebell_proto::{decode_envelope, encode_envelope, MAX_FRAME_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = decode_envelope(data, MAX_FRAME_BYTES) {
        let bytes = encode_envelope(&envelope);
        let again = decode_envelope(&bytes, usize::MAX).expect("a re-encoded envelope decodes");
        assert_eq!(again, envelope);
    }
});

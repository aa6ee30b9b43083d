//! Encoding and decoding of one envelope per frame, with the size limit applied before decoding.

use prost::Message;

use crate::device::v1::Envelope;

/// Why a frame could not be turned into an envelope.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("frame is not a valid protobuf envelope: {0}")]
    Malformed(String),
}

/// Decodes one envelope, refusing frames above `limit` bytes before looking inside them.
pub fn decode_envelope(bytes: &[u8], limit: usize) -> Result<Envelope, FrameError> {
    if bytes.len() > limit {
        return Err(FrameError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    Envelope::decode(bytes).map_err(|error| FrameError::Malformed(error.to_string()))
}

/// Encodes one envelope into a fresh buffer.
pub fn encode_envelope(envelope: &Envelope) -> Vec<u8> {
    envelope.encode_to_vec()
}

/// The bytes a device signs to prove possession of its key:
/// `"carebell.device.v1/auth" 0x00 device_id 0x00 nonce`.
///
/// The domain-separation prefix keeps a signature made for this purpose from being valid for
/// anything else; binding the device id keeps one device's proof from standing for another's.
pub fn auth_message(device_id: &str, nonce: &[u8]) -> Vec<u8> {
    signed_message(b"carebell.device.v1/auth", device_id, nonce)
}

/// What a device signs with its new key to rotate to it (`KeyRotation`):
/// `"carebell.device.v1/rotate" 0x00 device_id 0x00 new_public_key`.
pub fn rotation_message(device_id: &str, new_public_key: &[u8]) -> Vec<u8> {
    signed_message(b"carebell.device.v1/rotate", device_id, new_public_key)
}

/// `prefix 0x00 device_id 0x00 tail`.
fn signed_message(prefix: &[u8], device_id: &str, tail: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(prefix.len() + device_id.len() + tail.len() + 2);
    message.extend_from_slice(prefix);
    message.push(0);
    message.extend_from_slice(device_id.as_bytes());
    message.push(0);
    message.extend_from_slice(tail);
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::v1::{envelope::Body, CallRequest, Heartbeat};
    use proptest::prelude::*;

    #[test]
    fn oversized_frame_is_refused_before_decoding() {
        let bytes = vec![0u8; 100];
        assert_eq!(
            decode_envelope(&bytes, 10),
            Err(FrameError::TooLarge {
                size: 100,
                limit: 10
            })
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let result = decode_envelope(&[0xff, 0xff, 0xff, 0xff], 1024);
        assert!(matches!(result, Err(FrameError::Malformed(_))));
    }

    #[test]
    fn auth_message_binds_the_device_id() {
        assert_ne!(auth_message("a", b"nonce"), auth_message("b", b"nonce"));
        assert_ne!(auth_message("ab", b"c"), auth_message("a", b"bc"));
    }

    proptest! {
        #[test]
        fn call_requests_round_trip(seq in 1u64.., ack in any::<u64>(), request_id in ".{0,64}", pressed_at_ms in any::<i64>()) {
            let envelope = Envelope {
                seq,
                ack,
                body: Some(Body::CallRequest(CallRequest { request_id, pressed_at_ms })),
            };
            let decoded = decode_envelope(&encode_envelope(&envelope), crate::MAX_FRAME_BYTES).unwrap();
            prop_assert_eq!(decoded, envelope);
        }

        #[test]
        fn heartbeats_round_trip(seq in any::<u64>(), battery_percent in 0u32..=100) {
            let envelope = Envelope { seq, ack: 0, body: Some(Body::Heartbeat(Heartbeat { battery_percent })) };
            let decoded = decode_envelope(&encode_envelope(&envelope), crate::MAX_FRAME_BYTES).unwrap();
            prop_assert_eq!(decoded, envelope);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_envelope(&bytes, crate::MAX_FRAME_BYTES);
        }
    }
}

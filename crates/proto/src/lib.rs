//! Wire types of the device protocol and the console API, the frame codec, and the one table
//! from protocol error codes to WebSocket close codes and gRPC statuses.
//!
//! Everything a firmware team needs beyond the `.proto` files lives here and in
//! `docs/protocol.md`; `firmware-sim` depends on this crate and nothing else of the server.

pub mod device {
    pub mod v1 {
        tonic::include_proto!("carebell.device.v1");
    }
}

pub mod console {
    pub mod v1 {
        tonic::include_proto!("carebell.console.v1");
    }
}

pub mod family {
    pub mod v1 {
        tonic::include_proto!("carebell.family.v1");
    }
}
pub mod provider {
    pub mod v1 {
        tonic::include_proto!("carebell.provider.v1");
    }
}

/// The serialized descriptor set of every service, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("carebell_descriptor");

mod codec;
mod error_code;

pub use codec::{auth_message, decode_envelope, encode_envelope, rotation_message, FrameError};
pub use error_code::{
    close_code_for, grpc_code_for_close, CloseCode, CLOSE_AUTH_REJECTED, CLOSE_GOING_AWAY,
    CLOSE_RATE_LIMITED, CLOSE_TIMEOUT,
};

/// The WebSocket subprotocol a tablet must offer.
pub const WS_SUBPROTOCOL: &str = "carebell.device.v1";

/// Protocol versions this build speaks, highest last.
pub const SUPPORTED_PROTOCOL_VERSIONS: &[u32] = &[1];

/// The default limit on one envelope, in bytes (64 KiB); a server may be configured otherwise
/// and announces its limit in `Welcome.max_frame_bytes`.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

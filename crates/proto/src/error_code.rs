//! The one table from protocol error codes to WebSocket close codes and gRPC status codes.
//!
//! Both transports report the same failure the same way: a tablet on either sees the same
//! `ErrorCode` in an `Error` envelope, then (if the error is fatal) the transport's own close.

use crate::device::v1::ErrorCode;

/// A WebSocket close code (RFC 6455 section 7.4, 4000-4999 for this application).
pub type CloseCode = u16;

/// The WebSocket close code that ends a connection for `code`, or `None` when the error is not
/// fatal and the connection stays open.
pub fn close_code_for(code: ErrorCode) -> Option<CloseCode> {
    match code {
        ErrorCode::MalformedFrame => Some(1002),
        ErrorCode::TextFrame => Some(1003),
        ErrorCode::FrameTooLarge => Some(1009),
        ErrorCode::NotAuthenticated => Some(4401),
        ErrorCode::ProtocolViolation => Some(4400),
        ErrorCode::Unavailable => Some(1013),
        ErrorCode::Internal => Some(1011),
        ErrorCode::RateLimited => Some(CLOSE_RATE_LIMITED),
        // Forward compatibility: a newer device may send messages this server does not know;
        // a bad argument is the request's fault, not the session's.
        ErrorCode::UnknownMessage | ErrorCode::InvalidArgument | ErrorCode::Unspecified => None,
    }
}

/// WebSocket close code used after a `Rejected` handshake answer.
pub const CLOSE_AUTH_REJECTED: CloseCode = 4403;
/// WebSocket close code used after a `GoAway`.
pub const CLOSE_GOING_AWAY: CloseCode = 1001;
/// WebSocket close code used when the handshake or heartbeat supervision times out.
pub const CLOSE_TIMEOUT: CloseCode = 4408;
/// WebSocket close code used when a device sent more messages than it may.
pub const CLOSE_RATE_LIMITED: CloseCode = 4429;

/// The gRPC status that ends a device stream where the WebSocket transport would close with
/// `code`: the same table, read from the other side.
pub fn grpc_code_for_close(code: CloseCode) -> tonic::Code {
    match code {
        CLOSE_AUTH_REJECTED | 4401 => tonic::Code::Unauthenticated,
        CLOSE_TIMEOUT => tonic::Code::DeadlineExceeded,
        CLOSE_GOING_AWAY | 1013 => tonic::Code::Unavailable,
        1009 | CLOSE_RATE_LIMITED => tonic::Code::ResourceExhausted,
        1011 => tonic::Code::Internal,
        _ => tonic::Code::InvalidArgument,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_fatal_code_maps_to_a_distinct_failure_status() {
        for raw in 0..=10 {
            let code = ErrorCode::try_from(raw).unwrap();
            if let Some(close) = close_code_for(code) {
                assert_ne!(grpc_code_for_close(close), tonic::Code::Ok, "{code:?}");
            }
        }
        assert_eq!(
            grpc_code_for_close(close_code_for(ErrorCode::NotAuthenticated).unwrap()),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            grpc_code_for_close(close_code_for(ErrorCode::FrameTooLarge).unwrap()),
            tonic::Code::ResourceExhausted
        );
    }

    #[test]
    fn unknown_messages_keep_the_connection_open() {
        assert_eq!(close_code_for(ErrorCode::UnknownMessage), None);
    }
}

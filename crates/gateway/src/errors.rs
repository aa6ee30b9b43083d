//! How store errors become gRPC statuses: the client gets a clear reason, never a database
//! internals dump.

use carebell_store::StoreError;
use tonic::Status;

pub fn status_from_store(error: StoreError) -> Status {
    match error {
        StoreError::NotFound { .. } => Status::not_found(error.to_string()),
        StoreError::OfferNotOpen { .. }
        | StoreError::CallNotHeld { .. }
        | StoreError::Refused(_)
        | StoreError::Transition(_) => Status::failed_precondition(error.to_string()),
        StoreError::NotYourOffer | StoreError::Forbidden(_) => {
            Status::permission_denied(error.to_string())
        }
        StoreError::Invalid(_) => Status::invalid_argument(error.to_string()),
        StoreError::OrderTransition(_) | StoreError::NoProvider(_) => {
            Status::failed_precondition(error.to_string())
        }
        StoreError::Database(_) if is_unstorable_text(&error) => {
            Status::invalid_argument("text must not contain NUL characters (U+0000)")
        }
        StoreError::Database(_) | StoreError::Migrate(_) => {
            tracing::error!(%error, "database error while serving a request");
            Status::unavailable("the database is unavailable; try again")
        }
    }
}

/// Whether PostgreSQL refused a value it cannot store: a NUL character in text (SQLSTATE 22021,
/// "invalid byte sequence") or in JSON (22P05, "unsupported Unicode escape sequence"). Rust
/// strings are valid UTF-8 and allow NUL; PostgreSQL's text does not. The statement failed and
/// its transaction rolled back, so nothing changed: the request was bad, not the database.
pub fn is_unstorable_text(error: &StoreError) -> bool {
    match error {
        StoreError::Database(error) => error
            .as_database_error()
            .and_then(|database| database.code())
            .is_some_and(|code| code == "22021" || code == "22P05"),
        _ => false,
    }
}

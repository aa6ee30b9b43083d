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
        StoreError::Database(_) | StoreError::Migrate(_) => {
            tracing::error!(%error, "database error while serving a request");
            Status::unavailable("the database is unavailable; try again")
        }
    }
}

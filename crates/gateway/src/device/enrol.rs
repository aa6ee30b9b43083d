//! `DeviceEnrolment.Enrol`: a new tablet registers the key it generated itself, with the
//! installer's one-time code. No authentication beyond the code; the code is single-use and
//! short-lived, and every failure of the code gets the same answer.

use carebell_proto::device::v1::device_enrolment_server::{DeviceEnrolment, DeviceEnrolmentServer};
use carebell_proto::device::v1::{EnrolRequest, EnrolResponse};
use carebell_store::{Store, StoreError};
use tonic::{Request, Response, Status};

/// Longest firmware version string accepted.
const MAX_FIRMWARE_VERSION_CHARS: usize = 100;

pub struct EnrolmentService {
    store: Store,
}

impl EnrolmentService {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    pub fn into_server(self) -> DeviceEnrolmentServer<Self> {
        // An enrolment request is a code and a key: a few hundred bytes at most.
        DeviceEnrolmentServer::new(self).max_decoding_message_size(4096)
    }
}

#[tonic::async_trait]
impl DeviceEnrolment for EnrolmentService {
    async fn enrol(
        &self,
        request: Request<EnrolRequest>,
    ) -> Result<Response<EnrolResponse>, Status> {
        let request = request.into_inner();
        let public_key: [u8; 32] = request.public_key.as_slice().try_into().map_err(|_| {
            Status::invalid_argument("public_key must be a 32-byte Ed25519 public key")
        })?;
        if ed25519_dalek::VerifyingKey::from_bytes(&public_key).is_err() {
            return Err(Status::invalid_argument(
                "public_key is not a valid Ed25519 public key",
            ));
        }
        if request.firmware_version.chars().count() > MAX_FIRMWARE_VERSION_CHARS {
            return Err(Status::invalid_argument("firmware_version is too long"));
        }
        match self.store.enrol_device(&request.code, &public_key).await {
            Ok(device_id) => {
                tracing::info!(%device_id, firmware = %request.firmware_version, "device enrolled");
                Ok(Response::new(EnrolResponse { device_id }))
            }
            Err(StoreError::Refused(message)) => Err(Status::permission_denied(message)),
            Err(error) => Err(crate::status_from_store(error)),
        }
    }
}

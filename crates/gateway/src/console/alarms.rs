//! The console's alarm-screen RPCs: the family cascade's progress, and the voice signalling to
//! the tablet of the call the operator holds.

use carebell_proto::console::v1::{
    CascadeContact, FamilyCascadeRequest, FamilyCascadeResponse, RtcSignal, SendRtcSignalResponse,
};
use tonic::{Request, Response, Status};

use super::{millis, parse_uuid, ConsoleService};
use crate::status_from_store;

impl ConsoleService {
    pub(super) async fn family_cascade_rpc(
        &self,
        request: Request<FamilyCascadeRequest>,
    ) -> Result<Response<FamilyCascadeResponse>, Status> {
        self.authenticate(&request).await?;
        let call_id = parse_uuid(&request.get_ref().call_id, "call id")?;
        let (started, contacts) = self
            .store
            .family_cascade(call_id)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(FamilyCascadeResponse {
            started_at_ms: started.map(millis).unwrap_or_default(),
            contacts: contacts
                .into_iter()
                .map(|contact| CascadeContact {
                    contact_id: contact.contact_id.to_string(),
                    name: contact.name,
                    relationship: contact.relationship,
                    position: contact.position.unwrap_or(0),
                    state: contact.state,
                    sent_at_ms: contact.sent_at.map(millis).unwrap_or_default(),
                    acknowledged_at_ms: contact.acknowledged_at.map(millis).unwrap_or_default(),
                })
                .collect(),
        }))
    }

    pub(super) async fn send_rtc_signal_rpc(
        &self,
        request: Request<RtcSignal>,
    ) -> Result<Response<SendRtcSignalResponse>, Status> {
        let session = self.authenticate(&request).await?;
        let signal = request.get_ref();
        let call_id = parse_uuid(&signal.call_id, "call id")?;
        self.store
            .rtc_from_operator(session.operator_id, call_id, &signal.kind, &signal.payload)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(SendRtcSignalResponse {}))
    }
}

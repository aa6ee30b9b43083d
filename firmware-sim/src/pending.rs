//! The tablet's own durable outbox: every message that must arrive (call requests, cancels,
//! alarms) is written to a file before it is sent and removed when the server acknowledges it,
//! so an alarm survives the tablet's own crash or restart and is resent after reconnecting.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use carebell_proto::device::v1::{envelope::Body, Envelope};
use prost::Message;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default)]
struct PendingFile {
    /// Each message as a protobuf `Envelope` (seq 0) in standard base64.
    messages: Vec<String>,
}

/// Shared between the tablet handle (which adds before sending) and its driver (which removes
/// on acknowledgement). A std mutex: held only to update a small list and write a small file.
#[derive(Clone, Debug)]
pub struct PendingStore {
    path: PathBuf,
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
}

fn encode(body: &Body) -> Vec<u8> {
    Envelope {
        seq: 0,
        ack: 0,
        body: Some(body.clone()),
    }
    .encode_to_vec()
}

impl PendingStore {
    /// Opens (or starts) the file at `path`. An unreadable file is an error, not an empty
    /// outbox: losing alarms silently is the one thing this must never do.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let messages = match std::fs::read_to_string(path) {
            Ok(text) => {
                let file: PendingFile = serde_json::from_str(&text)
                    .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))?;
                file.messages
                    .iter()
                    .map(|message| {
                        base64::engine::general_purpose::STANDARD
                            .decode(message)
                            .map_err(|error| {
                                std::io::Error::new(std::io::ErrorKind::InvalidData, error)
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(error),
        };
        Ok(Self {
            path: path.to_owned(),
            messages: Arc::new(Mutex::new(messages)),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Vec<Vec<u8>>) -> T) -> T {
        let mut guard = match self.messages.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Every pending message, oldest first.
    pub fn bodies(&self) -> Vec<Body> {
        self.with(|messages| {
            messages
                .iter()
                .filter_map(|bytes| Envelope::decode(bytes.as_slice()).ok()?.body)
                .collect()
        })
    }

    /// Records `body` as pending (written through to the file before returning).
    pub fn add(&self, body: &Body) -> std::io::Result<()> {
        let bytes = encode(body);
        self.with(|messages| {
            if !messages.contains(&bytes) {
                messages.push(bytes);
            }
            self.write(messages)
        })
    }

    /// The server acknowledged `body`.
    pub fn remove(&self, body: &Body) -> std::io::Result<()> {
        let bytes = encode(body);
        self.with(|messages| {
            let before = messages.len();
            messages.retain(|message| message != &bytes);
            if messages.len() == before {
                return Ok(());
            }
            self.write(messages)
        })
    }

    /// Atomic replacement: a crash leaves either the old file or the new one.
    fn write(&self, messages: &[Vec<u8>]) -> std::io::Result<()> {
        let file = PendingFile {
            messages: messages
                .iter()
                .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes))
                .collect(),
        };
        let text = serde_json::to_string(&file)
            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))?;
        let temporary = self.path.with_extension("tmp");
        {
            use std::io::Write;
            let mut handle = std::fs::File::create(&temporary)?;
            handle.write_all(text.as_bytes())?;
            handle.sync_all()?;
        }
        std::fs::rename(&temporary, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carebell_proto::device::v1::{Alarm, AlarmKind};

    #[test]
    fn pending_alarms_survive_a_restart_until_acknowledged() {
        let dir = std::env::temp_dir().join(format!(
            "carebell-pending-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pending.json");
        let alarm = Body::Alarm(Alarm {
            alarm_id: "a1".to_owned(),
            kind: AlarmKind::Fall as i32,
            raised_at_ms: 1,
            detail: String::new(),
        });
        PendingStore::open(&path).unwrap().add(&alarm).unwrap();
        // "Restart": a new store from the same file.
        let reopened = PendingStore::open(&path).unwrap();
        assert_eq!(reopened.bodies(), vec![alarm.clone()]);
        reopened.remove(&alarm).unwrap();
        assert!(PendingStore::open(&path).unwrap().bodies().is_empty());
        std::fs::write(&path, "not json").unwrap();
        assert!(
            PendingStore::open(&path).is_err(),
            "a damaged file is an error, never an empty outbox"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}

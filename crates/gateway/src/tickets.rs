//! TLS 1.3 session tickets sealed with keys from a file that a node's gateway processes share
//! (`tls.ticket_key_path`), so that a tablet whose process was restarted, or whose reconnect
//! reached another process on the same port, resumes its session instead of paying for a full
//! handshake. Without the setting each process makes its own key (rustls's rotating ticketer),
//! and only a tablet that comes back to the same process resumes.
//!
//! The file holds one key per line: 64 hexadecimal characters (32 random bytes, e.g.
//! `openssl rand -hex 32`); blank lines and lines starting with `#` are skipped. The first key
//! seals new tickets and every key opens them, so a rotation puts a new key on the first line
//! and keeps the old one below it for a ticket lifetime. The file is re-read when it changes;
//! a change that does not parse is logged and the keys in use are kept.
//!
//! A ticket is the key's id (the first four bytes of the key's SHA-256), a random 96-bit nonce
//! and the AES-256-GCM sealed session state. rustls resumes TLS 1.3 sessions only with a fresh
//! key exchange (`psk_dhe_ke`), so a leaked ticket key does not expose recorded traffic.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::tls::TlsError;

/// How long a client may keep a ticket (a hint; a ticket opens as long as its key is listed).
pub const TICKET_LIFETIME_SECS: u32 = 6 * 60 * 60;

/// At most this many keys in the file (the current one and those still opening tickets).
pub const MAX_TICKET_KEYS: usize = 16;

const ID_LEN: usize = 4;

struct Key {
    id: [u8; ID_LEN],
    sealing: LessSafeKey,
}

/// The ticket keys in use, re-read from their file when it changes.
pub struct TicketKeys {
    path: PathBuf,
    keys: RwLock<Arc<Vec<Key>>>,
    stamp: Mutex<Option<SystemTime>>,
    random: SystemRandom,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys are secrets: never printed.
        f.debug_struct("TicketKeys")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn bad(path: &Path, detail: String) -> TlsError {
    TlsError::BadTicketKeys {
        path: path.display().to_string(),
        detail,
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The keys of a ticket key file, first (sealing) key first. Errors name the line and what is
/// wrong with it, never the key's text.
fn parse(text: &str) -> Result<Vec<Key>, String> {
    let mut keys: Vec<Key> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let number = index + 1;
        if line.len() != 64 {
            return Err(format!(
                "line {number}: a ticket key is 64 hexadecimal characters (32 random bytes), \
                 this line has {} characters",
                line.chars().count()
            ));
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(line.as_bytes().chunks(2)) {
            let (Some(high), Some(low)) = (hex_value(pair[0]), hex_value(pair[1])) else {
                return Err(format!(
                    "line {number}: a ticket key is hexadecimal (0-9, a-f)"
                ));
            };
            *byte = high << 4 | low;
        }
        if bytes.iter().all(|byte| *byte == bytes[0]) {
            return Err(format!(
                "line {number}: this ticket key is one byte repeated, not random"
            ));
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..ID_LEN]);
        if keys.iter().any(|key| key.id == id) {
            // The same key listed twice (or, at 1 in 4 billion, two keys sharing an id: the
            // later one is never needed to open a ticket the first did not seal).
            continue;
        }
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| format!("line {number}: not a usable AES-256 key"))?;
        keys.push(Key {
            id,
            sealing: LessSafeKey::new(unbound),
        });
        if keys.len() > MAX_TICKET_KEYS {
            return Err(format!(
                "more than {MAX_TICKET_KEYS} ticket keys; keep the new one and those of the last \
                 ticket lifetime"
            ));
        }
    }
    if keys.is_empty() {
        return Err("no ticket key in the file (one line of 64 hexadecimal characters)".into());
    }
    Ok(keys)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

fn read(path: &Path) -> Result<Vec<Key>, TlsError> {
    let text = std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|detail| bad(path, detail))
}

impl TicketKeys {
    /// Reads the keys from `path`; the server does not start with a file that does not parse.
    pub fn load(path: &Path) -> Result<Arc<Self>, TlsError> {
        let stamp = modified(path);
        let keys = read(path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o007 != 0 {
                    tracing::warn!(path = %path.display(), "the TLS ticket key file can be read by every user; it should be mode 600 or 640");
                }
            }
        }
        Ok(Arc::new(Self {
            path: path.to_owned(),
            keys: RwLock::new(Arc::new(keys)),
            stamp: Mutex::new(stamp),
            random: SystemRandom::new(),
        }))
    }

    /// Re-reads the file if it changed since the last look; `Ok(true)` when new keys are in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = modified(&self.path);
        {
            let mut stamp = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
            if *stamp == now {
                return Ok(false);
            }
            *stamp = now;
        }
        let keys = read(&self.path)?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(true)
    }

    /// How many keys open tickets now.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    /// Never: a loaded file has at least one key.
    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    fn current(&self) -> Arc<Vec<Key>> {
        Arc::clone(&self.keys.read().unwrap_or_else(|e| e.into_inner()))
    }
}

impl rustls::server::ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.current();
        let key = keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(ID_LEN + NONCE_LEN + plain.len() + 16);
        ticket.extend_from_slice(&key.id);
        ticket.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.sealing
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.id),
                &mut sealed,
            )
            .ok()?;
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let id = cipher.get(..ID_LEN)?;
        let nonce = cipher.get(ID_LEN..ID_LEN + NONCE_LEN)?;
        let sealed = cipher.get(ID_LEN + NONCE_LEN..)?;
        let keys = self.current();
        let key = keys.iter().find(|key| key.id == id)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut opened = sealed.to_vec();
        let plain = key
            .sealing
            .open_in_place(nonce, Aad::from(key.id), &mut opened)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use rustls::server::ProducesTickets;

    use super::*;

    const A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn keys(text: &str) -> TicketKeys {
        TicketKeys {
            path: PathBuf::from("test"),
            keys: RwLock::new(Arc::new(parse(text).unwrap())),
            stamp: Mutex::new(None),
            random: SystemRandom::new(),
        }
    }

    #[test]
    fn a_ticket_sealed_by_one_process_opens_in_another_with_the_same_file() {
        let first = keys(A);
        let second = keys(&format!("# node 1\n\n{A}\n"));
        let ticket = first.encrypt(b"session state").unwrap();
        assert_eq!(second.decrypt(&ticket).unwrap(), b"session state");
        // Each ticket has its own nonce.
        assert_ne!(first.encrypt(b"session state").unwrap(), ticket);
    }

    #[test]
    fn after_a_rotation_old_tickets_open_until_their_key_is_removed() {
        let before = keys(A);
        let old_ticket = before.encrypt(b"old").unwrap();
        let rotated = keys(&format!("{B}\n{A}\n"));
        assert_eq!(rotated.decrypt(&old_ticket).unwrap(), b"old");
        let new_ticket = rotated.encrypt(b"new").unwrap();
        // Sealed with the new first key: the old file cannot open it.
        assert!(before.decrypt(&new_ticket).is_none());
        let only_new = keys(B);
        assert!(only_new.decrypt(&old_ticket).is_none());
        assert_eq!(only_new.decrypt(&new_ticket).unwrap(), b"new");
    }

    #[test]
    fn a_forged_truncated_or_foreign_ticket_is_refused_without_a_panic() {
        let node = keys(A);
        let ticket = node.encrypt(b"state").unwrap();
        for cut in 0..ticket.len() {
            assert!(node.decrypt(&ticket[..cut]).is_none(), "cut at {cut}");
        }
        for index in 0..ticket.len() {
            let mut forged = ticket.clone();
            forged[index] ^= 1;
            assert!(node.decrypt(&forged).is_none(), "bit flipped at {index}");
        }
        assert!(keys(B).decrypt(&ticket).is_none());
        assert!(node.decrypt(&[]).is_none());
    }

    #[test]
    fn a_bad_key_file_is_refused_with_the_line_and_without_the_key() {
        let secret_looking = &A[..62];
        let short = parse(secret_looking).err().unwrap();
        assert!(
            short.contains("line 1") && short.contains("62 characters"),
            "{short}"
        );
        assert!(!short.contains(secret_looking));
        let not_hex = parse(&format!("{A}\n{}zz", &B[..62])).err().unwrap();
        assert!(
            not_hex.contains("line 2") && not_hex.contains("hexadecimal"),
            "{not_hex}"
        );
        let empty = parse("# nothing yet\n\n").err().unwrap();
        assert!(empty.contains("no ticket key"), "{empty}");
        let zeros = parse(&"0".repeat(64)).err().unwrap();
        assert!(zeros.contains("not random"), "{zeros}");
        let many: String = (0..=MAX_TICKET_KEYS)
            .map(|index| format!("{:064x}\n", 0x1234_5678_u128 + index as u128))
            .collect();
        assert!(parse(&many).err().unwrap().contains("more than"));
        // The same key twice is one key.
        assert_eq!(parse(&format!("{A}\n{A}\n{B}")).unwrap().len(), 2);
    }

    #[test]
    fn a_changed_file_is_picked_up_and_a_broken_change_keeps_the_keys_in_use() {
        let dir = std::env::temp_dir().join(format!("carebell-tickets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ticket.keys");
        std::fs::write(&path, A).unwrap();
        let node = TicketKeys::load(&path).unwrap();
        let old_ticket = node.encrypt(b"old").unwrap();
        assert!(!node.reload_if_changed().unwrap());

        std::fs::write(&path, format!("{B}\n{A}\n")).unwrap();
        bump(&path, 1);
        assert!(node.reload_if_changed().unwrap());
        assert_eq!(node.len(), 2);
        assert_eq!(node.decrypt(&old_ticket).unwrap(), b"old");
        assert!(keys(B).decrypt(&node.encrypt(b"new").unwrap()).is_some());

        std::fs::write(&path, "not a key").unwrap();
        bump(&path, 2);
        let error = node.reload_if_changed().unwrap_err().to_string();
        assert!(
            error.contains("ticket.keys") && error.contains("line 1"),
            "{error}"
        );
        assert_eq!(node.len(), 2, "the keys in use are kept");
        assert_eq!(node.decrypt(&old_ticket).unwrap(), b"old");
        std::fs::remove_dir_all(&dir).unwrap();

        let missing = TicketKeys::load(&dir.join("absent"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("absent"), "{missing}");
    }

    /// Moves the file's modification time on, so a rewrite within one clock tick is seen.
    fn bump(path: &Path, seconds: u64) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() + std::time::Duration::from_secs(seconds))
            .unwrap();
    }
}

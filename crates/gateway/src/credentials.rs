//! Passwords and session tokens, shared by the console and family APIs: argon2id hashes, a
//! dummy verification for unknown users (so a wrong username costs as much as a wrong
//! password), random bearer tokens stored only as SHA-256 hashes.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

/// Longest username or password accepted at sign-in (argon2 on megabytes is a DoS vector).
pub(crate) const MAX_CREDENTIAL_BYTES: usize = 256;

/// Hashes a password with argon2id and a random salt, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut rand::thread_rng());
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// A hash of a random password, verified against when the username is unknown.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut password = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut password);
        let salt = SaltString::generate(&mut rand::thread_rng());
        Argon2::default()
            .hash_password(&password, &salt)
            .map(|hash| hash.to_string())
            // Hashing random bytes with a fresh salt cannot fail; if it ever did, an empty
            // string makes every unknown-user check fail, which is the safe direction.
            .unwrap_or_default()
    })
}

/// Refuses oversized credentials before any hashing.
pub(crate) fn check_lengths(username: &str, password: &str) -> Result<(), Status> {
    if username.len() > MAX_CREDENTIAL_BYTES || password.len() > MAX_CREDENTIAL_BYTES {
        return Err(Status::invalid_argument("username or password is too long"));
    }
    Ok(())
}

/// Whether `password` matches `stored` (an unknown user, `None`, never matches, in the same
/// time). Runs argon2 off the async threads.
pub(crate) async fn verify_password(
    stored: Option<String>,
    password: String,
) -> Result<bool, Status> {
    let known = stored.is_some();
    let hash = stored.unwrap_or_else(|| dummy_hash().to_owned());
    let matches = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .and_then(|hash| Argon2::default().verify_password(password.as_bytes(), &hash))
            .is_ok()
    })
    .await
    .map_err(|_| Status::internal("password check failed"))?;
    Ok(known && matches)
}

/// The account of a sign-in whose password matches: `found` is the account looked up by
/// username with its stored hash (None: no such user, checked against a dummy hash in the same
/// time). Every API's sign-in refuses with the same message, whichever part was wrong. After
/// [`carebell_store::MAX_SIGN_IN_FAILURES`] failures in a row the name (known or not) is
/// locked for [`carebell_store::SIGN_IN_LOCKOUT`] on every node: refused before any password
/// check, with `RESOURCE_EXHAUSTED`.
pub(crate) async fn verified_account<A>(
    store: &carebell_store::Store,
    kind: &str,
    username: &str,
    source: Option<std::net::IpAddr>,
    found: Option<(A, String)>,
    password: String,
) -> Result<A, Status> {
    if let Some(source) = source {
        failures_by_address().check(source)?;
    }
    let locked = store
        .sign_in_locked(kind, username)
        .await
        .map_err(crate::status_from_store)?;
    if let Some(left) = locked {
        return Err(locked_out(left));
    }
    let (account, stored) = match found {
        Some((account, stored)) => (Some(account), Some(stored)),
        None => (None, None),
    };
    match account {
        Some(account) if verify_password(stored, password).await? => {
            store
                .sign_in_succeeded(kind, username)
                .await
                .map_err(crate::status_from_store)?;
            Ok(account)
        }
        _ => {
            if let Some(source) = source {
                failures_by_address().failed(source);
            }
            let now_locked = store
                .sign_in_failed(kind, username)
                .await
                .map_err(crate::status_from_store)?;
            if now_locked {
                return Err(locked_out(carebell_store::SIGN_IN_LOCKOUT));
            }
            Err(Status::unauthenticated("invalid username or password"))
        }
    }
}

/// The address a request came from: the connection's (gRPC), or the browser's as the web
/// bridge recorded it.
pub(crate) fn client_address<T>(request: &Request<T>) -> Option<std::net::IpAddr> {
    request
        .remote_addr()
        .map(|address| address.ip())
        .or_else(|| {
            request
                .extensions()
                .get::<ClientAddress>()
                .map(|client| client.0)
        })
}

/// The browser's address, put on the requests the web bridge makes in process.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub std::net::IpAddr);

/// Failed sign-ins from one address (any name, any API) allowed per window, per node: past
/// them the address is refused until the window ends (a password spray across many names
/// never reaches a name's own lockout).
pub const MAX_FAILED_SIGN_INS_PER_ADDRESS: u32 = 20;
const ADDRESS_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

struct FailuresByAddress {
    counts:
        std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (u32, std::time::Instant)>>,
}

fn failures_by_address() -> &'static FailuresByAddress {
    static FAILURES: OnceLock<FailuresByAddress> = OnceLock::new();
    FAILURES.get_or_init(|| FailuresByAddress {
        counts: std::sync::Mutex::default(),
    })
}

impl FailuresByAddress {
    fn check(&self, source: std::net::IpAddr) -> Result<(), Status> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        match counts.get(&source) {
            Some((failures, since))
                if *failures >= MAX_FAILED_SIGN_INS_PER_ADDRESS
                    && since.elapsed() < ADDRESS_WINDOW =>
            {
                Err(Status::resource_exhausted(
                    "too many failed sign-ins from this address; try again later",
                ))
            }
            _ => Ok(()),
        }
    }

    fn failed(&self, source: std::net::IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.len() > 100_000 {
            counts.retain(|_, (_, since)| since.elapsed() < ADDRESS_WINDOW);
        }
        let entry = counts
            .entry(source)
            .or_insert((0, std::time::Instant::now()));
        if entry.1.elapsed() >= ADDRESS_WINDOW {
            *entry = (0, std::time::Instant::now());
        }
        entry.0 += 1;
    }
}

fn locked_out(left: std::time::Duration) -> Status {
    Status::resource_exhausted(format!(
        "too many failed sign-ins for this name; try again in {} minutes",
        left.as_secs().div_ceil(60).max(1)
    ))
}

/// A new random bearer token (64 hex digits).
pub(crate) fn new_token() -> String {
    let mut token_bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut token_bytes);
    token_bytes
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// What the database keeps of a token.
pub(crate) fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The bearer token of a request, within the session's request rate (see [`RequestLimiter`]).
pub(crate) fn bearer_token<T>(request: &Request<T>) -> Result<&str, Status> {
    let token = request
        .metadata()
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("sign in first: no authorization header"))?
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| {
            Status::unauthenticated("the authorization header must be 'Bearer <token>'")
        })?;
    request_limiter().check(token)?;
    Ok(token)
}

/// Requests per session token, per node: a token bucket refilled at `rate` a second and
/// holding at most `burst`, far above what a person at a console makes. Past it a call is
/// `RESOURCE_EXHAUSTED` until the bucket refills.
pub struct RequestLimiter {
    rate: f64,
    burst: f64,
    buckets: std::sync::Mutex<std::collections::HashMap<Vec<u8>, crate::bucket::TokenBucket>>,
}

static LIMITER: OnceLock<RequestLimiter> = OnceLock::new();

/// Sets the request limit of every signed-in session on this node (once, at start; later calls
/// change nothing). Without it: 20 a second, 100 at once.
pub fn configure_request_limit(rate: f64, burst: f64) {
    let _ = LIMITER.set(RequestLimiter::new(rate, burst));
}

fn request_limiter() -> &'static RequestLimiter {
    LIMITER.get_or_init(|| RequestLimiter::new(20.0, 100.0))
}

impl RequestLimiter {
    fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            buckets: std::sync::Mutex::default(),
        }
    }

    fn check(&self, token: &str) -> Result<(), Status> {
        let now = std::time::Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 10_000 {
            // Sessions idle for a minute are full again anyway.
            buckets.retain(|_, bucket| now.duration_since(bucket.last_used()).as_secs() < 60);
        }
        let bucket = buckets
            .entry(token_hash(token))
            .or_insert_with(|| crate::bucket::TokenBucket::full(self.burst));
        if !bucket.take(self.rate, self.burst, now) {
            return Err(Status::resource_exhausted(format!(
                "too many requests for this session: at most {} a second; slow down",
                self.rate
            )));
        }
        Ok(())
    }
}

//! Admission of new connections, shared by the device WebSocket listener and the gRPC listener
//! (devices, consoles, family and provider apps): a cap on connections the process holds (under
//! its open-file limit) and a cap on handshakes in progress from one source address, so that
//! one address cannot take every handshake slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The process holds its maximum of connections.
    AtCapacity,
    /// The source address already has its share of handshakes in progress.
    TooManyHandshakes,
}

/// Handshakes in progress per source address.
type HandshakeCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

pub struct Admission {
    /// Connections held now (handshaking or established), by both listeners.
    live: Arc<AtomicUsize>,
    handshakes: HandshakeCounts,
    max_connections: usize,
    max_handshakes_per_address: usize,
}

impl Admission {
    /// `0` for either limit: none.
    pub fn new(max_connections: usize, max_handshakes_per_address: usize) -> Arc<Self> {
        Arc::new(Admission {
            live: Arc::default(),
            handshakes: Arc::default(),
            max_connections,
            max_handshakes_per_address,
        })
    }

    /// Admits a connection from `ip`: it counts against the cap while [`Held`] lives, and
    /// against its address's handshakes while [`Handshaking`] lives.
    pub fn admit(&self, ip: IpAddr) -> Result<(Held, Handshaking), Refused> {
        let held = self.live.fetch_add(1, Ordering::Relaxed);
        let live = Held(Arc::clone(&self.live));
        if self.max_connections > 0 && held >= self.max_connections {
            return Err(Refused::AtCapacity);
        }
        if self.max_handshakes_per_address == 0 {
            return Ok((live, Handshaking(None)));
        }
        let mut counts = self.handshakes.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max_handshakes_per_address {
            return Err(Refused::TooManyHandshakes);
        }
        *count += 1;
        Ok((live, Handshaking(Some((Arc::clone(&self.handshakes), ip)))))
    }

    /// The next connection on `listener` this process admits; `None` once `shutdown` fires. A
    /// failed accept (out of file descriptors and the like) pauses instead of spinning; a
    /// refused connection is closed at once.
    pub async fn accept(
        &self,
        listener: &tokio::net::TcpListener,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Option<Admitted> {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return None,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.admit(peer.ip()) {
                Ok((held, handshaking)) => {
                    return Some(Admitted {
                        stream,
                        peer,
                        held,
                        handshaking,
                    })
                }
                Err(refused) => {
                    tracing::debug!(%peer, ?refused, "connection refused; closing");
                    carebell_metrics::connection_abandoned(match refused {
                        Refused::AtCapacity => "at_capacity",
                        Refused::TooManyHandshakes => "per_address",
                    });
                }
            }
        }
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

/// An accepted connection with its places in the counts.
pub struct Admitted {
    pub stream: tokio::net::TcpStream,
    pub peer: std::net::SocketAddr,
    pub held: Held,
    pub handshaking: Handshaking,
}

/// One connection in the process's count; released when dropped.
pub struct Held(Arc<AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One handshake in its address's count; released when dropped (the handshake is over).
pub struct Handshaking(Option<(HandshakeCounts, IpAddr)>);

impl Drop for Handshaking {
    fn drop(&mut self) {
        if let Some((counts, ip)) = self.0.take() {
            let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = counts.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&ip);
                }
            }
        }
    }
}

/// A stream that holds its place in the connection count for as long as it lives (a gRPC
/// connection is owned by the server once accepted).
pub struct Counted<S> {
    inner: S,
    _held: Held,
}

impl<S> Counted<S> {
    pub fn new(inner: S, held: Held) -> Self {
        Counted { inner, _held: held }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Counted<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn an_address_gets_its_share_of_handshakes_and_no_more() {
        let admission = Admission::new(0, 2);
        let first = admission.admit(ip(1)).unwrap();
        let second = admission.admit(ip(1)).unwrap();
        assert_eq!(
            admission.admit(ip(1)).err(),
            Some(Refused::TooManyHandshakes)
        );
        // Another address is not affected.
        let other = admission.admit(ip(2)).unwrap();
        // A finished handshake frees its address's slot, though the connection stays.
        drop(first.1);
        let third = admission.admit(ip(1)).unwrap();
        assert_eq!(admission.held(), 4);
        drop((second, third, other, first.0));
        assert_eq!(admission.held(), 0);
    }

    #[test]
    fn the_cap_counts_every_held_connection() {
        let admission = Admission::new(2, 0);
        let one = admission.admit(ip(1)).unwrap();
        let two = admission.admit(ip(2)).unwrap();
        assert_eq!(admission.admit(ip(3)).err(), Some(Refused::AtCapacity));
        assert_eq!(admission.held(), 2, "a refused connection is not counted");
        drop(one);
        assert!(admission.admit(ip(3)).is_ok());
        drop(two);
    }
}

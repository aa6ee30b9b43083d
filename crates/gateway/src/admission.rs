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
                Err(refused) => tracing::debug!(%peer, ?refused, "connection refused; closing"),
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

/// A process's handshake slots (TLS and the WebSocket upgrade), given to the **newest**
/// waiting connection first.
///
/// In a reconnect storm more connections arrive than the CPU can take through TLS, and each
/// tablet gives up on its handshake after some seconds (the fleet's and the firmware's 10 s).
/// First come, first served then serves only connections that have waited nearly as long as
/// their tablet will: the server does the handshake's work, and the tablet gives up half-way
/// and tries again, with a new key share and one TLS ticket fewer. At 100,000 the first minute
/// of every storm went that way, 8,000 tablets back in 60 s. Newest first serves tablets that
/// are still waiting; the oldest wait out their timeout unserved, which costs the server only
/// the open socket, and their tablets back off. Below saturation nobody waits, and the order
/// does not matter.
pub struct HandshakeSlots {
    inner: Mutex<Slots>,
}

struct Slots {
    free: usize,
    /// Waiting connections, oldest first; one whose wait ended (timed out) is skipped when
    /// reached, and swept out when the stack has doubled since the last sweep.
    waiting: Vec<tokio::sync::oneshot::Sender<HandshakeSlot>>,
    swept_at: usize,
}

/// One handshake slot; released (to the newest waiter, or as free) when dropped.
pub struct HandshakeSlot {
    slots: Option<Arc<HandshakeSlots>>,
}

impl HandshakeSlots {
    /// `count` slots (at least one).
    pub fn new(count: usize) -> Arc<Self> {
        Arc::new(HandshakeSlots {
            inner: Mutex::new(Slots {
                free: count.max(1),
                waiting: Vec::new(),
                swept_at: 0,
            }),
        })
    }

    /// A slot: at once if one is free, otherwise when one is released and this is the newest
    /// connection still waiting. Bound the wait with a timeout; a wait that is dropped gives up
    /// its place.
    pub async fn acquire(self: &Arc<Self>) -> HandshakeSlot {
        loop {
            let waiting = {
                let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                if inner.free > 0 {
                    inner.free -= 1;
                    return HandshakeSlot {
                        slots: Some(Arc::clone(self)),
                    };
                }
                if inner.waiting.len() >= 64 && inner.waiting.len() >= inner.swept_at * 2 {
                    inner.waiting.retain(|waiter| !waiter.is_closed());
                    inner.swept_at = inner.waiting.len();
                }
                let (sender, receiver) = tokio::sync::oneshot::channel();
                inner.waiting.push(sender);
                receiver
            };
            // A sender is dropped unsent only by a sweep, and a sweep drops only the senders
            // of waits that ended; so this returns, but should it not, the wait starts again.
            if let Ok(slot) = waiting.await {
                return slot;
            }
        }
    }

    /// Connections waiting for a slot now (including ones whose wait has ended and that have
    /// not been skipped yet).
    pub fn waiting(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .waiting
            .len()
    }

    fn release(self: Arc<Self>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(waiter) = inner.waiting.pop() {
            let slot = HandshakeSlot {
                slots: Some(Arc::clone(&self)),
            };
            match waiter.send(slot) {
                Ok(()) => return,
                // That connection stopped waiting: disarm the slot (no release from its drop,
                // under this lock) and try the next newest.
                Err(mut unsent) => unsent.slots = None,
            }
        }
        inner.free += 1;
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            slots.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::time::Duration;

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

    type Order = Arc<Mutex<Vec<&'static str>>>;

    /// Starts a connection's wait for a slot (it records its name when served, then releases
    /// the slot), and returns once the wait is in line.
    async fn wait_in_line(
        slots: &Arc<HandshakeSlots>,
        name: &'static str,
        order: &Order,
    ) -> tokio::task::JoinHandle<()> {
        let before = slots.waiting();
        let (slots_for_wait, order) = (Arc::clone(slots), Arc::clone(order));
        let wait = tokio::spawn(async move {
            let slot = slots_for_wait.acquire().await;
            order.lock().unwrap().push(name);
            drop(slot);
        });
        while slots.waiting() == before {
            tokio::task::yield_now().await;
        }
        wait
    }

    #[tokio::test]
    async fn the_newest_waiting_connection_gets_the_next_slot() {
        let slots = HandshakeSlots::new(1);
        let held = slots.acquire().await;
        let order = Order::default();
        let mut waits = Vec::new();
        for name in ["first", "second", "third"] {
            waits.push(wait_in_line(&slots, name, &order).await);
        }
        assert!(
            order.lock().unwrap().is_empty(),
            "nobody is served while the slot is held"
        );
        drop(held);
        for wait in waits {
            wait.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["third", "second", "first"]);
        assert_eq!(slots.waiting(), 0);
    }

    #[tokio::test]
    async fn a_connection_that_stopped_waiting_is_skipped_and_no_slot_is_lost() {
        let slots = HandshakeSlots::new(2);
        let (one, two) = (slots.acquire().await, slots.acquire().await);
        let order = Order::default();
        let patient = wait_in_line(&slots, "patient", &order).await;
        // The newest waiter gives up (its handshake timeout) before a slot is released.
        let gave_up = tokio::time::timeout(Duration::from_millis(20), slots.acquire()).await;
        assert!(gave_up.is_err());
        drop(one);
        patient.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["patient"]);
        drop(two);
        // Both slots are free again: two are served at once, a third would wait.
        let (again_one, again_two) = (
            slots.acquire().now_or_never(),
            slots.acquire().now_or_never(),
        );
        assert!(again_one.is_some() && again_two.is_some());
        assert!(slots.acquire().now_or_never().is_none());
    }

    #[tokio::test]
    async fn waits_that_ended_are_swept_out_of_the_line() {
        let slots = HandshakeSlots::new(1);
        let _held = slots.acquire().await;
        for _ in 0..1_000 {
            assert!(slots.acquire().now_or_never().is_none());
        }
        assert!(slots.waiting() <= 64, "{} left in line", slots.waiting());
    }
}

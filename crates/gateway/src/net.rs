//! Listening sockets: a large accept backlog (tokio's `TcpListener::bind` uses 128) and
//! `SO_REUSEPORT`, so several gateway processes can share one port.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket};

pub const DEFAULT_BACKLOG: u32 = 4096;

pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

//! Binding a listener socket, with explicit dual-stack behaviour.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// Pending connections the kernel queues before `accept` (as Rust's std uses).
const BACKLOG: i32 = 1024;

/// Binds `addr` for accepting. An IPv6 address is bound IPv6-only (`IPV6_V6ONLY`), so that
/// `0.0.0.0:25` and `[::]:25` can be bound together whatever the system default
/// (`net.ipv6.bindv6only`); an IPv4-mapped address (`[::ffff:a.b.c.d]`) is the exception,
/// since it can only carry IPv4.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let SocketAddr::V6(a) = addr {
        socket.set_only_v6(a.ip().to_ipv4_mapped().is_none())?;
    }
    // As std and tokio do: a restart can bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// `addr` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) turned into the IPv4 address it
/// stands for: how an IPv4 client of an IPv6 socket, or of a TCP6 PROXY header, appears.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

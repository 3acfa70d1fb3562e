//! Binding listeners: one `SO_REUSEPORT` socket per worker and address, so the kernel
//! spreads connections across workers with no shared accept lock. When an address
//! asks for port 0, the first socket picks the port and the others bind to it.

use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog, as nginx's default on Linux.
const BACKLOG: i32 = 511;

/// Binds `workers` sockets to `addr`; returns them and the address actually bound.
pub fn bind_reuseport(
    addr: SocketAddr,
    workers: usize,
) -> std::io::Result<(Vec<TcpListener>, SocketAddr)> {
    let first = bind_one(addr)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(bind_one(bound)?);
    }
    Ok((listeners, bound))
}

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

//! Binding listeners: one `SO_REUSEPORT` socket per worker and address, so the kernel
//! spreads connections across workers with no shared accept lock. When an address
//! asks for port 0, the first socket picks the port and the others bind to it.
//!
//! `SO_REUSEPORT` would also let a second process of the same user bind an address
//! this one serves (a forgotten old instance, a double start) and silently take half
//! of its connections: before the group is bound, the address is bound once without
//! it, which fails with "address in use" when anything listens there already.

use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog, as nginx's default on Linux.
const BACKLOG: i32 = 511;

/// Binds `workers` sockets to `addr`; returns them and the address actually bound.
pub fn bind_reuseport(
    addr: SocketAddr,
    workers: usize,
) -> std::io::Result<(Vec<TcpListener>, SocketAddr)> {
    bind_group(addr, workers, true)
}

/// [`bind_reuseport`], without the "address in use" probe when `exclusive` is false:
/// for a reload that moves a listener of this process to another address of the same
/// port (`127.0.0.1:80` to `0.0.0.0:80`), where the probe would meet our own socket.
pub fn bind_group(
    addr: SocketAddr,
    workers: usize,
    exclusive: bool,
) -> std::io::Result<(Vec<TcpListener>, SocketAddr)> {
    if exclusive && addr.port() != 0 {
        probe(addr)?;
    }
    let first = bind_one(addr)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(bind_one(bound)?);
    }
    Ok((listeners, bound))
}

/// Binds `addr` without `SO_REUSEPORT` (and lets it go): fails when some socket
/// listens there.
fn probe(addr: SocketAddr) -> std::io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Connections of an earlier run in TIME_WAIT do not count.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())
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

/// Which entry of a later generation's listener list (`[[server.tls]]` or `[[tcp]]`) a
/// socket opened at start-up for entry `index` on `listen` serves: that position while
/// it still has that address, else the entry on that address (it moved within the
/// list; port 0 names no one address). `None`: the generation has no such listener,
/// and the socket serves on as before until a restart. The accept loops and the
/// reload report both follow this one rule, so what a report says is what runs.
pub fn serving_entry<T>(
    entries: &[T],
    listen_of: impl Fn(&T) -> SocketAddr,
    index: usize,
    listen: SocketAddr,
) -> Option<usize> {
    if entries.get(index).is_some_and(|e| listen_of(e) == listen) {
        return Some(index);
    }
    if listen.port() == 0 {
        return None;
    }
    entries.iter().position(|e| listen_of(e) == listen)
}

/// Accept failures (`EMFILE` and friends) and refusals at the connection limit come
/// in bursts of thousands a second: an accept loop logs them through this, at most
/// one line a second, saying how many it left out. So do a `[[tcp]]` frontend's
/// per-connection warnings (a dead backend fails every connection that picks it).
#[derive(Debug, Default)]
pub struct Throttle {
    last: Option<std::time::Instant>,
    left_out: u64,
}

impl Throttle {
    /// Whether to log now; `Some(n)`: `n` earlier events were not logged.
    pub fn admit(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1))
        {
            self.left_out += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_another_group_listens_on_is_in_use() {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let (_first, bound) = bind_reuseport(any, 2).unwrap_or_else(|e| panic!("bind: {e}"));
        let second = bind_reuseport(bound, 2);
        assert_eq!(
            second.map(|_| ()).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::AddrInUse)
        );
        drop(_first);
        // Free again: binds.
        assert!(bind_reuseport(bound, 2).is_ok());
    }

    #[test]
    fn a_burst_is_one_line_then_a_count() {
        let mut t = Throttle::default();
        assert_eq!(t.admit(), Some(0));
        for _ in 0..5 {
            assert_eq!(t.admit(), None);
        }
        t.last = t.last.map(|l| l - std::time::Duration::from_secs(2));
        assert_eq!(t.admit(), Some(5));
    }
}

//! The workers' listeners: one per worker on the same address.

use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};

/// One listener per worker on `addr`, all with SO_REUSEPORT (and
/// SO_REUSEADDR: a restart must not wait out TIME_WAIT) and a deep backlog.
/// With port 0, the first picks the port and the others take the same.
pub(super) fn bind_workers(
    addr: SocketAddr,
    workers: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = bind_one(addr)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(bind_one(addr)?);
    }
    Ok(listeners)
}

/// A non-blocking listener on `addr` (`Socket::new` sets close-on-exec).
fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    /// Whether `fd` is close-on-exec, from /proc/self/fdinfo (`flags` is
    /// octal; O_CLOEXEC is 0o2000000).
    fn cloexec(fd: i32) -> bool {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .expect("a flags line");
        u32::from_str_radix(flags.trim(), 8).unwrap() & 0o2000000 != 0
    }

    #[test]
    fn workers_share_one_port_with_non_blocking_listeners() {
        let listeners = bind_workers("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = listeners[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for l in &listeners {
            assert_eq!(l.local_addr().unwrap().port(), port);
            let s = socket2::SockRef::from(l);
            assert!(s.reuse_port().unwrap() && s.reuse_address().unwrap());
            assert!(s.is_listener().unwrap());
            assert!(s.nonblocking().unwrap());
            assert!(cloexec(l.as_raw_fd()));
        }
    }
}

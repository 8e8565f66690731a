//! Two more floors for a userspace hop, beside the epoll pump in
//! `apps::relay`: the same byte pump on a tokio runtime (`tokio-relay`),
//! and on io_uring (`uring-relay`). They answer two questions about
//! Sidetrack's hop: how much of it is the runtime's machinery rather than
//! the HTTP work (tokio against epoll, the same system calls), and whether
//! io_uring, two system calls per request instead of six, would make a
//! faster hop on these machines.
//!
//! Both accept on `listen`, connect to `to` for each client, and move bytes
//! both ways until either side closes; nothing is parsed.

use std::{
    io,
    net::{TcpListener, TcpStream},
    os::fd::{AsRawFd, OwnedFd},
};

/// A tokio current-thread runtime with only the I/O driver (as Sidetrack's
/// workers have it), a task per direction, each a `read` into a buffer and a
/// `write_all` of what it read.
pub fn tokio_relay(listen: &str, to: &str) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        loop {
            let (client, _) = listener.accept().await?;
            let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                continue;
            };
            client.set_nodelay(true)?;
            server.set_nodelay(true)?;
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut from, mut into) in [(cr, sw), (sr, cw)] {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if into.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    // Ends the other direction too: the peer sees EOF.
                    let _ = into.shutdown().await;
                });
            }
        }
    })
}

/// What a completion is for: bits 0–1 the operation, the rest the pair.
const OP_RECV_CLIENT: u64 = 0;
const OP_RECV_SERVER: u64 = 1;
const OP_SEND: u64 = 2;
const OP_ACCEPT: u64 = 3;
const BUF: usize = 16 * 1024;

/// A client, its server connection, a buffer per direction, and how many
/// receives of theirs the ring still holds (a send posts a completion only
/// when it fails, and its linked receive then posts one too, cancelled).
struct Pair {
    socks: [OwnedFd; 2],
    bufs: [Box<[u8]>; 2],
    pending: u32,
    closing: bool,
}

/// An io_uring ring (single issuer, task work deferred to the waiting
/// call), one thread. Each direction keeps a receive armed; a received
/// message goes out as a send linked to the next receive on the same
/// socket, the send posting nothing when it succeeds. So a message costs
/// one `io_uring_enter`, which submits that send and receive and waits
/// for the next completion: two system calls per request and response,
/// against the epoll pump's six. The connect to `to` for a new client
/// blocks the ring's thread: once per connection, outside the measured loop.
pub fn uring_relay(listen: &str, to: &str) -> io::Result<()> {
    use io_uring::{IoUring, opcode, squeue, types};

    let listener = TcpListener::bind(listen)?;
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(1024)?;
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    let accept = opcode::Accept::new(
        types::Fd(listener.as_raw_fd()),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    )
    .build()
    .user_data(OP_ACCEPT);
    let mut queue: Vec<squeue::Entry> = vec![accept.clone()];
    // Completions taken off the ring, reused: the loop allocates nothing
    // per message.
    let mut done: Vec<(u64, i32)> = Vec::with_capacity(64);
    let recv = |pair: &mut Pair, id: usize, side: usize| {
        let buf = &mut pair.bufs[side];
        opcode::Recv::new(
            types::Fd(pair.socks[side].as_raw_fd()),
            buf.as_mut_ptr(),
            buf.len() as u32,
        )
        .build()
        .user_data(((id as u64) << 2) | [OP_RECV_CLIENT, OP_RECV_SERVER][side])
    };
    loop {
        {
            let mut sq = ring.submission();
            for e in queue.drain(..) {
                // SAFETY: every buffer and descriptor an entry names lives
                // in `pairs` (or is the listener) until its completion
                // arrives: a pair is freed only when nothing of it is
                // pending. The ring has room: at most three entries are
                // queued per completion handled, far below its size.
                unsafe { sq.push(&e) }.map_err(|_| io::Error::other("submission queue full"))?;
            }
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        done.clear();
        done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for &(data, res) in &done {
            let (id, op) = ((data >> 2) as usize, data & 3);
            if op == OP_ACCEPT {
                queue.push(accept.clone());
                if res < 0 {
                    continue;
                }
                // SAFETY: a successful accept returns a new descriptor,
                // owned from here on.
                let client = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(res) };
                let client = TcpStream::from(client);
                let Ok(server) = TcpStream::connect(to) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let id = pairs.iter().position(Option::is_none).unwrap_or_else(|| {
                    pairs.push(None);
                    pairs.len() - 1
                });
                let mut pair = Pair {
                    socks: [client.into(), server.into()],
                    bufs: [vec![0u8; BUF].into(), vec![0u8; BUF].into()],
                    pending: 2,
                    closing: false,
                };
                queue.push(recv(&mut pair, id, 0));
                queue.push(recv(&mut pair, id, 1));
                pairs[id] = Some(pair);
                continue;
            }
            let Some(pair) = pairs.get_mut(id).and_then(Option::as_mut) else {
                continue;
            };
            if op != OP_SEND {
                pair.pending -= 1;
            }
            let side = op as usize;
            if op == OP_SEND || res <= 0 || pair.closing {
                // A failed send (its linked receive then ends cancelled),
                // an end of stream, an error: wake the other direction's
                // receive with a shutdown, and free the pair once nothing
                // of it is left in the ring.
                if !pair.closing {
                    pair.closing = true;
                    for s in &pair.socks {
                        // SAFETY: shutdown on a descriptor the pair owns.
                        unsafe { libc::shutdown(s.as_raw_fd(), libc::SHUT_RDWR) };
                    }
                }
                if pair.pending == 0 {
                    pairs[id] = None;
                }
                continue;
            }
            let peer = pair.socks[1 - side].as_raw_fd();
            let send = opcode::Send::new(types::Fd(peer), pair.bufs[side].as_ptr(), res as u32)
                .flags(libc::MSG_WAITALL)
                .build()
                .flags(squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS)
                .user_data(((id as u64) << 2) | OP_SEND);
            queue.push(send);
            queue.push(recv(pair, id, side));
            pair.pending += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream},
        time::Duration,
    };

    /// An echo server on loopback, a relay in front of it, and bytes sent
    /// through it both ways and back, over two connections in turn.
    fn relays(start: fn(&str, &str) -> std::io::Result<()>) {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let echo_addr = echo.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for s in echo.incoming().take(2) {
                let mut s = s.unwrap();
                std::thread::spawn(move || {
                    let mut b = [0u8; 4096];
                    while let Ok(n @ 1..) = s.read(&mut b) {
                        s.write_all(&b[..n]).unwrap();
                    }
                });
            }
        });
        // A free port for the relay: bind, read it, release it.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let l = listen.clone();
        std::thread::spawn(move || start(&l, &echo_addr));
        let connect = || {
            for _ in 0..200 {
                if let Ok(s) = TcpStream::connect(&listen) {
                    return s;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("the relay does not listen");
        };
        for conn in 0..2 {
            let mut c = connect();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            for i in 0..50u32 {
                let msg = format!("message {i} on connection {conn}");
                c.write_all(msg.as_bytes()).unwrap();
                let mut back = vec![0u8; msg.len()];
                c.read_exact(&mut back).unwrap();
                assert_eq!(back, msg.as_bytes());
            }
            // A large message crosses in pieces.
            let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            let mut w = c.try_clone().unwrap();
            let sent = big.clone();
            let writer = std::thread::spawn(move || w.write_all(&sent).unwrap());
            let mut back = vec![0u8; big.len()];
            c.read_exact(&mut back).unwrap();
            writer.join().unwrap();
            assert!(back == big, "the large message came back changed");
            // Closing the client ends the pair: the relay sees EOF.
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn tokio_relay_moves_bytes_both_ways() {
        relays(super::tokio_relay);
    }

    #[test]
    fn uring_relay_moves_bytes_both_ways() {
        relays(super::uring_relay);
    }
}

//! A TCP exchange between two sockets of one process, for the eBPF tests.
//!
//! `tcp-peer BYTES` listens on 127.0.0.1, connects to itself, prints the two
//! connected sockets' addresses as one line
//! `client <local> <remote> server <local> <remote>`, waits for a line on
//! stdin (so the test can look at the kernel's maps while both sockets are
//! alive), then sends BYTES of a known pattern from client to server, echoes
//! them back, and prints `received <n> <fnv1a64 of the bytes the server got> <same for the echo>`.
//!
//! Reads retry on EAGAIN: a socket in a SOCKHASH can report it even in
//! blocking mode.

use std::{
    io::{self, BufRead, ErrorKind, Read, Write},
    net::{TcpListener, TcpStream},
    thread,
};

use sidetrack_tests::{Fnv64, pattern};

fn read_all(stream: &mut TcpStream, n: usize) -> io::Result<Fnv64> {
    let mut hash = Fnv64::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let want = left.min(buf.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("{left} bytes missing"),
                ));
            }
            Ok(got) => {
                hash.update(&buf[..got]);
                left -= got;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                thread::yield_now()
            }
            Err(e) => return Err(e),
        }
    }
    Ok(hash)
}

fn main() -> io::Result<()> {
    let bytes: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("usage: tcp-peer BYTES");
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    println!(
        "client {} {} server {} {}",
        client.local_addr()?,
        client.peer_addr()?,
        server.local_addr()?,
        server.peer_addr()?
    );
    io::stdout().flush()?;
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;

    // Server: read everything, then echo it back in the same chunks as written.
    let echo = thread::spawn(move || -> io::Result<Fnv64> {
        let got = read_all(&mut server, bytes)?;
        let data = pattern(bytes);
        for chunk in data.chunks(16 * 1024) {
            server.write_all(chunk)?;
        }
        Ok(got)
    });
    let data = pattern(bytes);
    for chunk in data.chunks(16 * 1024) {
        client.write_all(chunk)?;
    }
    let echoed = read_all(&mut client, bytes)?;
    let got = echo.join().expect("echo thread")?;
    println!(
        "received {bytes} {:016x} {:016x}",
        got.finish(),
        echoed.finish()
    );
    Ok(())
}

//! The demo's applications, small HTTP/1.1 servers on std threads:
//!
//! * `world WORD`: answers every request with `<WORD> (<its own address>)`.
//!   `world-v1` says "world", the staged `world-v2` "earth". `GET /bytes/N`
//!   answers N bytes of [`pattern`] instead (large bodies for the tests).
//! * `hello WORLD_ADDR`: on each request calls `http://world/` at
//!   `WORLD_ADDR` (a service address the node intercepts) and answers
//!   `Hello (<its own address>) <what world said>!!`. Like any application
//!   behind Linkerd, it copies the `l5d-ctx-*` headers of the request it
//!   serves onto the request it makes: that is how a per-request dtab
//!   override reaches the next hop.
//!
//! * `json-world WORD`: answers JSON, `{"greeting": WORD, "path": ...,
//!   "served_at": <nanoseconds>}`: the demo's shadowing part runs a live
//!   version, a second instance of it and a candidate of these, whose
//!   answers differ in the timestamp always (noise) and, for the
//!   candidate, in the greeting.
//!
//! They run as `cargo xtask app hello|world|json-world LISTEN ARG` (the
//! demo starts its own binary that way) and as the tests' `demo-app` binary.
//!
//! For `cargo xtask bench`:
//!
//! * `bench-server LISTEN`: the benchmark's upstream, as cheap as a server
//!   can be so that the proxies' costs show: `GET /bytes/N` answers N bytes
//!   from a buffer made once, anything else a 13-byte body, each response
//!   in one write, over keep-alive connections (a thread each, on a small
//!   stack: the many-connections phase holds thousands). A request with a
//!   `Content-Length` has its body read and dropped first (uploads); `/close`
//!   is answered with `Connection: close` and the connection closed.
//! * `loadgen ...`: the load generator (`bench/loadgen.rs`).
//! * `relay LISTEN TO`: a bare epoll byte pump, the floor of a userspace
//!   hop; `tokio-relay` and `uring-relay` are the same pump on tokio and on
//!   io_uring (`bench/floors.rs`).
//!
//! For `cargo xtask soak`: `soak-backend` and `soak-load` (`soak/`).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    thread,
};

/// Runs an app from `[hello|world, LISTEN, ARG]`; returns only on error.
pub fn run(args: &[String]) -> std::io::Result<()> {
    match args {
        [app, listen, arg] if app == "hello" => serve_forever(listen, arg, hello_serve),
        [app, listen, arg] if app == "world" => serve_forever(listen, arg, world_serve),
        [app, listen, arg] if app == "json-world" => serve_forever(listen, arg, json_world_serve),
        [app, listen] if app == "bench-server" => {
            let listener = TcpListener::bind(listen)?;
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                // A thread may fail to start at the pid limit: the
                // connection is then dropped, which the client counts.
                let _ = thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || bench_serve(stream, ""));
            }
            Ok(())
        }
        [app, listen, to] if app == "relay" => relay(listen, to),
        [app, listen, to] if app == "tokio-relay" => crate::bench::floors::tokio_relay(listen, to),
        [app, listen, to] if app == "uring-relay" => crate::bench::floors::uring_relay(listen, to),
        [app, rest @ ..] if app == "soak-backend" => crate::soak::backend_main(rest),
        [app, rest @ ..] if app == "soak-load" => {
            crate::soak::load_main(rest).map_err(|e| std::io::Error::other(format!("{e:#}")))
        }
        [app, rest @ ..] if app == "loadgen" => {
            crate::bench::loadgen::main(rest).map_err(|e| std::io::Error::other(format!("{e:#}")))
        }
        _ => Err(std::io::Error::other(
            "usage: app hello LISTEN WORLD_ADDR | app world|json-world LISTEN WORD | app bench-server LISTEN \
             | app relay|tokio-relay|uring-relay LISTEN TO | app loadgen ARGS \
             | app soak-backend LISTEN ROLE NAME | app soak-load ROLE ENV",
        )),
    }
}

/// The bench's floor for an epoll-based userspace hop: one thread, one
/// epoll set (level-triggered), and for each message one `epoll_wait`, one
/// `read` and one `write`, the system calls Sidetrack makes, with nothing
/// in between: no HTTP, no routing, no metrics. Accepts on `listen` and
/// connects to `to` for each connection; a short write waits with poll(2).
fn relay(listen: &str, to: &str) -> std::io::Result<()> {
    use std::{io, os::fd::AsRawFd};
    let cvt = |rc: libc::c_int| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    let listener = TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    // SAFETY: plain system calls on descriptors this function owns.
    let ep = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    let watch = |fd: i32| {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd as u64,
        };
        // SAFETY: `ev` is a valid event for a live descriptor.
        cvt(unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) }).map(drop)
    };
    watch(listener.as_raw_fd())?;
    // Indexed by descriptor: the stream and its peer's descriptor.
    let mut conns: Vec<Option<(TcpStream, i32)>> = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `events` has room for 64 entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), 64, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in &events[..n as usize] {
            let fd = ev.u64 as i32;
            if fd == listener.as_raw_fd() {
                while let Ok((client, _)) = listener.accept() {
                    let Ok(server) = TcpStream::connect(to) else {
                        continue;
                    };
                    for s in [&client, &server] {
                        s.set_nodelay(true)?;
                        s.set_nonblocking(true)?;
                    }
                    let (c, s) = (client.as_raw_fd(), server.as_raw_fd());
                    let top = c.max(s) as usize;
                    if conns.len() <= top {
                        conns.resize_with(top + 1, || None);
                    }
                    watch(c)?;
                    watch(s)?;
                    conns[c as usize] = Some((client, s));
                    conns[s as usize] = Some((server, c));
                }
                continue;
            }
            let Some(Some((from, peer))) = conns.get(fd as usize) else {
                continue;
            };
            let peer = *peer;
            let got = (&*from).read(&mut buf);
            let ok = match got {
                Ok(0) => false,
                Ok(k) => match &conns[peer as usize] {
                    Some((to, _)) => write_fully(to, &buf[..k]).is_ok(),
                    None => false,
                },
                Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            };
            if !ok {
                // Dropping both closes them, which also takes them out of
                // the epoll set.
                conns[fd as usize] = None;
                conns[peer as usize] = None;
            }
        }
    }
}

/// Writes all of `data` to a non-blocking stream, waiting with poll(2)
/// when its buffer is full.
fn write_fully(mut to: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    while !data.is_empty() {
        match to.write(data) {
            Ok(k) => data = &data[k..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut p = libc::pollfd {
                    fd: to.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 1000) };
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn serve_forever(
    listen: &str,
    arg: &str,
    serve: fn(TcpStream, &str) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let arg = arg.to_owned();
        thread::spawn(move || serve(stream, &arg));
    }
    Ok(())
}

/// A deterministic payload of `n` bytes that no small shift repeats, so
/// that a lost, doubled or reordered chunk changes it (xorshift32).
pub fn pattern(n: usize) -> Vec<u8> {
    let mut bytes = vec![0; n];
    Pattern::default().fill(&mut bytes);
    bytes
}

/// [`pattern`] as a stream, for payloads too large to hold: each
/// [`Pattern::fill`] goes on where the last one stopped.
pub struct Pattern(u32);

impl Default for Pattern {
    fn default() -> Self {
        Pattern(0x9e37_79b9)
    }
}

impl Pattern {
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut x = self.0;
        for b in buf {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        self.0 = x;
    }
}

/// One request head: its target and its `l5d-ctx-*` lines.
struct Head {
    target: String,
    context: String,
}

/// Reads one request head, or `None` at the end of the connection. The
/// demo's requests have no body.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut context = String::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            return Ok(Some(Head { target, context }));
        }
        if header.to_ascii_lowercase().starts_with("l5d-ctx-") {
            context.push_str(&header);
        }
    }
}

fn respond(out: &mut impl Write, body: &str) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn world_serve(stream: TcpStream, word: &str) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let me = stream.local_addr()?.ip();
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(head) = read_head(&mut reader)? {
        match head
            .target
            .strip_prefix("/bytes/")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => {
                write!(out, "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n")?;
                out.write_all(&pattern(n))?;
            }
            None => respond(&mut out, &format!("{word} ({me})"))?,
        }
    }
    Ok(())
}

fn json_world_serve(stream: TcpStream, word: &str) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(head) = read_head(&mut reader)? {
        let served_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let body = serde_json::json!({
            "greeting": word,
            "path": head.target,
            "served_at": served_at as u64,
        })
        .to_string();
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
    }
    Ok(())
}

fn hello_serve(stream: TcpStream, world: &str) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let me = stream.local_addr()?.ip();
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(head) = read_head(&mut reader)? {
        let body = match call_world(world, &head.context) {
            Ok(said) => format!("Hello ({me}) {said}!!"),
            Err(e) => format!("Hello ({me}), but world did not answer: {e}"),
        };
        respond(&mut out, &body)?;
    }
    Ok(())
}

/// `GET /` to world with the context headers; returns the response body.
fn call_world(addr: &str, context: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: world\r\nConnection: close\r\n{context}\r\n"
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        let err = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("l5d-err:"))
            .unwrap_or(head);
        return Err(std::io::Error::other(format!("status {status}: {err}")));
    }
    Ok(body.to_owned())
}

/// The largest `/bytes/N` body the bench server sends from its buffer in
/// one piece; bigger bodies repeat it.
const BENCH_CHUNK: usize = 1 << 20;

fn bench_serve(mut stream: TcpStream, _: &str) -> std::io::Result<()> {
    static CHUNK: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let chunk = CHUNK.get_or_init(|| pattern(BENCH_CHUNK));
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    let mut out = Vec::with_capacity(256);
    loop {
        // Serve every complete head in the buffer, then read more.
        while let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = end + 4;
            let head = &buf[..end];
            let target = head.split(|&b| b == b' ').nth(1).unwrap_or(b"/");
            let close = target == b"/close";
            let n = std::str::from_utf8(target)
                .ok()
                .and_then(|t| t.strip_prefix("/bytes/"))
                .and_then(|n| n.parse::<usize>().ok());
            out.clear();
            match n {
                Some(n) => {
                    write!(out, "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n")?;
                    let first = n.min(BENCH_CHUNK);
                    if first <= 64 * 1024 {
                        out.extend_from_slice(&chunk[..first]);
                        stream.write_all(&out)?;
                    } else {
                        stream.write_all(&out)?;
                        stream.write_all(&chunk[..first])?;
                    }
                    let mut left = n - first;
                    while left > 0 {
                        let k = left.min(BENCH_CHUNK);
                        stream.write_all(&chunk[..k])?;
                        left -= k;
                    }
                }
                None if close => {
                    out.extend_from_slice(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nConnection: close\r\n\r\nhello, bench\n",
                    );
                    stream.write_all(&out)?;
                    return Ok(());
                }
                None => {
                    let body = if head.starts_with(b"POST") {
                        content_length(head)
                    } else {
                        0
                    };
                    // The body: first what came with the head, then reads.
                    let here = body.min((filled - end) as u64) as usize;
                    let mut left = body - here as u64;
                    buf.copy_within(end + here..filled, end);
                    filled -= here;
                    while left > 0 {
                        let room = &mut buf[end..];
                        let want = room.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                        let n = stream.read(&mut room[..want])?;
                        if n == 0 {
                            return Ok(());
                        }
                        left -= n as u64;
                    }
                    out.extend_from_slice(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nhello, bench\n",
                    );
                    stream.write_all(&out)?;
                }
            }
            buf.copy_within(end..filled, 0);
            filled -= end;
        }
        if filled == buf.len() {
            return Err(std::io::Error::other("request head too large"));
        }
        let n = stream.read(&mut buf[filled..])?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
    }
}

/// A request head's Content-Length (0 when it has none or it is not a
/// number).
fn content_length(head: &[u8]) -> u64 {
    head.split(|&b| b == b'\n')
        .find_map(|line| {
            let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
            name.eq_ignore_ascii_case(b"content-length")
                .then(|| std::str::from_utf8(&value[1..]).ok()?.trim().parse().ok())?
        })
        .unwrap_or(0)
}

//! A TCP echo server and client for the netns test bed's tests.
//!
//! * `netns-echo serve IP`: listens on IP (any port), prints `listening <addr>`,
//!   then `peer <addr>` for each connection it accepts, and echoes every
//!   connection until the client closes it, then prints `closed <peer>
//!   <bytes read> <fnv1a64 of them>`. Runs until killed.
//! * `netns-echo send ADDR BYTES`: connects, sends BYTES of the test pattern,
//!   closes its sending side, reads the echo to the end and prints
//!   `echoed <n> <fnv1a64 of what came back> from <local addr>`.
//! * `netns-echo send-close ADDR BYTES`: connects, sends BYTES of the test
//!   pattern, closes at once (reading nothing) and prints `sent <n> from
//!   <local addr>`.
//! * `netns-echo sink IP`: listens on IP (any port), prints `listening
//!   <addr>`, accepts one connection and prints `peer <addr>`, then reads
//!   nothing until a line comes on its stdin; then reads to the end and
//!   prints `closed <peer> <bytes read> <fnv1a64 of them>`.
//! * `netns-echo flood ADDR BYTES`: connects and writes BYTES of the test
//!   pattern as fast as the connection takes them, printing `sent <n>` every
//!   50 ms; at the end closes its sending side and prints `done <n>`. A
//!   write blocked for a minute fails it.
//! * `netns-echo serve-first IP`: listens on IP (any port), prints
//!   `listening <addr>`; on each connection writes the line `220 <its own
//!   address> ready` before reading anything (a server-first protocol, as
//!   SMTP or MySQL), then echoes.
//! * `netns-echo banner ADDR`: connects, sends nothing until it has read
//!   the server's first line, then sends `QUIT` and reads the echo; prints
//!   `banner <line> then <echo>`.
//! * `netns-echo abandon-node`: makes a test bed node with one pod running a
//!   server, prints `ready <pod netns> <host veth> <pod cgroup> <node ip>`,
//!   then sleeps (up to 10 minutes) so that the test can kill it and find
//!   its leftovers.
//! * `netns-echo hold-node`: the same, with the test bed's signal handler
//!   installed first, so SIGINT or SIGTERM tears the node down.
//!
//! Reads retry on EAGAIN: a socket in a SOCKHASH can report it even in
//! blocking mode.

use std::{
    io::{self, ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::Stdio,
    thread,
    time::Duration,
};

use sidetrack_tests::{Fnv64, Pattern, pattern};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends back everything read until the peer closes its side, then closes
/// ours; says how much it read and its hash, however the connection ended
/// (the echo back may fail, and the connection be reset, when the client
/// closed at once: what was read still counts).
fn echo(mut stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut read, mut hash, mut echoing) = (0, Fnv64::new(), true);
    let end = loop {
        match stream.read(&mut buf) {
            Ok(0) => break stream.shutdown(Shutdown::Write),
            Ok(n) => {
                read += n;
                hash.update(&buf[..n]);
                echoing = echoing && stream.write_all(&buf[..n]).is_ok();
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::yield_now(),
            Err(e) => break Err(e),
        }
    };
    if let Err(e) = &end {
        eprintln!("connection from {peer}: {e}");
    }
    println!("closed {peer} {read} {:016x}", hash.finish());
    io::stdout().flush()?;
    end
}

fn serve(ip: &str) -> io::Result<()> {
    let listener = TcpListener::bind((ip, 0))?;
    println!("listening {}", listener.local_addr()?);
    io::stdout().flush()?;
    loop {
        let (stream, peer) = listener.accept()?;
        println!("peer {peer}");
        io::stdout().flush()?;
        thread::spawn(move || echo(stream, peer));
    }
}

fn serve_first(ip: &str) -> io::Result<()> {
    let listener = TcpListener::bind((ip, 0))?;
    let me = listener.local_addr()?;
    println!("listening {me}");
    io::stdout().flush()?;
    loop {
        let (mut stream, peer) = listener.accept()?;
        println!("peer {peer}");
        io::stdout().flush()?;
        thread::spawn(move || -> io::Result<()> {
            stream.write_all(format!("220 {me} ready\r\n").as_bytes())?;
            echo(stream, peer)
        });
    }
}

fn banner(addr: SocketAddr) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut reader = io::BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    io::BufRead::read_line(&mut reader, &mut line)?;
    stream.write_all(b"QUIT\r\n")?;
    let mut echo = String::new();
    io::BufRead::read_line(&mut reader, &mut echo)?;
    println!("banner {} then {}", line.trim_end(), echo.trim_end());
    Ok(())
}

fn send(addr: SocketAddr, bytes: usize) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let local = stream.local_addr()?;
    let mut writer = stream.try_clone()?;
    let sender = thread::spawn(move || -> io::Result<()> {
        writer.write_all(&pattern(bytes))?;
        writer.shutdown(Shutdown::Write)
    });
    let mut hash = Fnv64::new();
    let mut n = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(got) => {
                hash.update(&buf[..got]);
                n += got;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::yield_now(),
            Err(e) => return Err(e),
        }
    }
    sender.join().expect("sender thread")?;
    println!("echoed {n} {:016x} from {local}", hash.finish());
    Ok(())
}

/// Connects, sends BYTES of the test pattern and closes at once, reading
/// nothing.
fn send_close(addr: SocketAddr, bytes: usize) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let local = stream.local_addr()?;
    stream.write_all(&pattern(bytes))?;
    drop(stream);
    println!("sent {bytes} from {local}");
    Ok(())
}

/// Accepts one connection and leaves its bytes unread until told (a line
/// on stdin), then reads them all.
fn sink(ip: &str) -> io::Result<()> {
    let listener = TcpListener::bind((ip, 0))?;
    println!("listening {}", listener.local_addr()?);
    io::stdout().flush()?;
    let (mut stream, peer) = listener.accept()?;
    println!("peer {peer}");
    io::stdout().flush()?;
    io::stdin().read_line(&mut String::new())?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; 256 * 1024];
    let (mut read, mut hash) = (0, Fnv64::new());
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                read += n;
                hash.update(&buf[..n]);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::yield_now(),
            Err(e) => return Err(e),
        }
    }
    println!("closed {peer} {read} {:016x}", hash.finish());
    io::stdout().flush()
}

/// Writes `bytes` of the pattern as fast as the connection takes them,
/// saying how far it got every 50 ms.
fn flood(addr: SocketAddr, bytes: usize) -> io::Result<()> {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let sent = Arc::new(AtomicUsize::new(0));
    let writer = {
        let sent = sent.clone();
        thread::spawn(move || -> io::Result<()> {
            let (mut pattern, mut chunk) = (Pattern::default(), vec![0u8; 64 * 1024]);
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                pattern.fill(&mut chunk[..n]);
                stream.write_all(&chunk[..n])?;
                sent.fetch_add(n, Ordering::Relaxed);
                left -= n;
            }
            stream.shutdown(Shutdown::Write)
        })
    };
    while !writer.is_finished() {
        println!("sent {}", sent.load(Ordering::Relaxed));
        io::stdout().flush()?;
        thread::sleep(Duration::from_millis(50));
    }
    writer.join().expect("writer thread")?;
    println!("done {}", sent.load(Ordering::Relaxed));
    io::stdout().flush()
}

fn node_then_sleep() -> anyhow::Result<()> {
    let mut node = xtask::testbed::Node::new("abandoned")?;
    let pod = node.add_pod("left")?;
    let me = std::env::current_exe()?;
    pod.command(me)
        .args(["serve", &pod.ip().to_string()])
        .stdout(Stdio::null())
        .spawn()?;
    println!(
        "ready {} {} {} {}",
        pod.netns_name(),
        pod.host_veth(),
        pod.cgroup_path().display(),
        node.ip()
    );
    io::stdout().flush()?;
    thread::sleep(Duration::from_secs(600));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args[..] {
        ["serve", ip] => serve(ip)?,
        ["serve-first", ip] => serve_first(ip)?,
        ["banner", addr] => banner(addr.parse()?)?,
        ["send", addr, bytes] => send(addr.parse()?, bytes.parse()?)?,
        ["send-close", addr, bytes] => send_close(addr.parse()?, bytes.parse()?)?,
        ["sink", ip] => sink(ip)?,
        ["flood", addr, bytes] => flood(addr.parse()?, bytes.parse()?)?,
        ["abandon-node"] => node_then_sleep()?,
        ["hold-node"] => {
            xtask::testbed::teardown_on_signal()?;
            node_then_sleep()?
        }
        _ => {
            anyhow::bail!(
                "usage: netns-echo serve IP | serve-first IP | banner ADDR | send ADDR BYTES | send-close ADDR BYTES | sink IP | flood ADDR BYTES | abandon-node | hold-node"
            )
        }
    }
    Ok(())
}

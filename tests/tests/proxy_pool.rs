//! Pooled backend connections that the backend closed while they sat idle
//! must not turn requests into 502s, also when the proxy meets hundreds of
//! such closes at once: the runtime takes events in batches (tokio: 1,024
//! a turn), and a hang-up queued behind a batch of client requests is not
//! yet known to it when those requests check connections out of the pool.
//! The test stops the proxy, queues every client's request and then every
//! backend close, and lets it go on: the first batch is all requests.

use std::{
    io::{self, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
};

use sidetrack_tests::{TempDir, backend::read_request, client::Client, proxy::Proxy};

/// Client connections, each with a request in flight at once: more than
/// one batch of the runtime's events.
const CLIENTS: usize = 1_100;
/// Times the backend closes every idle connection and the clients fire.
const ROUNDS: usize = 3;

/// A keep-alive backend (a thread per connection) that can close every
/// connection it holds, as a backend does with idle ones.
struct ClosingBackend {
    addr: SocketAddr,
    open: Arc<Mutex<Vec<TcpStream>>>,
    requests: Arc<AtomicU64>,
}

impl ClosingBackend {
    fn start() -> ClosingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicU64::new(0));
        let (open2, requests2) = (open.clone(), requests.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                open2.lock().unwrap().push(conn.try_clone().unwrap());
                let requests = requests2.clone();
                thread::spawn(move || serve(conn, &requests));
            }
        });
        ClosingBackend {
            addr,
            open,
            requests,
        }
    }

    /// Closes every connection (all idle: no request is in flight).
    fn close_all(&self) -> usize {
        let mut open = self.open.lock().unwrap();
        for conn in open.iter() {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
        let n = open.len();
        open.clear();
        n
    }
}

/// Answers each request with its body's length, until the connection ends.
fn serve(conn: TcpStream, requests: &AtomicU64) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    while let Some(req) = read_request(&mut reader, None)? {
        requests.fetch_add(1, Ordering::Relaxed);
        let answer = format!("got {}", req.body.len());
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        )?;
    }
    Ok(())
}

/// Every client sends its request before any response is read, so that
/// the proxy finds them ready at once, and after them `then` runs (with
/// the proxy `pid` stopped meanwhile when given); returns the statuses.
fn fire(clients: &mut [Client], request: &[u8], pid: Option<u32>, then: impl FnOnce()) -> Vec<u16> {
    let signal = |sig| {
        if let Some(pid) = pid {
            // SAFETY: kill(2) on the proxy this test started.
            assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
        }
    };
    signal(libc::SIGSTOP);
    for c in clients.iter_mut() {
        c.send(request).unwrap();
    }
    then();
    signal(libc::SIGCONT);
    clients
        .iter_mut()
        .map(|c| c.read_response(false).map_or(0, |r| r.status))
        .collect()
}

fn non_200(statuses: &[u16]) -> Vec<u16> {
    statuses.iter().copied().filter(|s| *s != 200).collect()
}

/// Raises this process's limit on open files (the proxy it starts inherits
/// it): the test holds two descriptors per client and per backend
/// connection, and the proxy two per client. Root may raise the hard
/// limit too.
fn raise_fd_limit() {
    let want = 16 * CLIENTS as u64;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_max = lim.rlim_max.max(want);
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads the rlimit struct it is given.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(rc, 0, "{}", io::Error::last_os_error());
}

#[test]
fn requests_meeting_pooled_connections_the_backend_closed_all_succeed() {
    raise_fd_limit();
    let backend = ClosingBackend::start();
    let dir = TempDir::new("pool-closed");
    dir.write("web", &format!("127.0.0.1 {}\n", backend.addr.port()));
    let proxy = Proxy::with_fs_namer(
        &dir,
        "pool:\n  max_idle_per_backend: 5000\nlimits:\n  max_connections: 5000\n",
        &[],
    );
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| Client::connect(proxy.addr)).collect();
    let post = b"POST /orders HTTP/1.1\r\nHost: web\r\nContent-Length: 64\r\n\r\n\
                 0123456789012345678901234567890123456789012345678901234567890123";
    let get = b"GET /orders HTTP/1.1\r\nHost: web\r\n\r\n";
    // The pool fills with a connection per client.
    let statuses = fire(&mut clients, post, None, || {});
    assert_eq!(non_200(&statuses), Vec::<u16>::new());
    let mut closed = 0;
    for round in 0..ROUNDS {
        // With the proxy stopped, every client's request is queued, and
        // then the backend closes every idle connection.
        let request: &[u8] = if round % 2 == 0 { post } else { get };
        let pid = Some(proxy.child.id());
        let statuses = fire(&mut clients, request, pid, || closed += backend.close_all());
        assert_eq!(
            non_200(&statuses),
            Vec::<u16>::new(),
            "round {round}: every request succeeds on a new connection"
        );
    }
    assert!(
        closed >= CLIENTS,
        "the backend closed {closed} connections over the rounds"
    );
    let served = backend.requests.load(Ordering::Relaxed);
    assert_eq!(
        served,
        ((ROUNDS + 1) * CLIENTS) as u64,
        "each request reached the backend exactly once"
    );
    drop(proxy);
}

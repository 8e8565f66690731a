use std::{
    io::{Read, Write},
    net::SocketAddr,
    sync::atomic::AtomicUsize,
    time::Duration,
};

use super::{
    net::{TcpListener, TcpStream},
    *,
};

fn std_listener() -> (std::net::TcpListener, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

fn listener() -> (TcpListener, SocketAddr) {
    let (l, addr) = std_listener();
    (TcpListener::from_std(l).unwrap(), addr)
}

/// A connection accepted on this runtime, its blocking peer, and `first`
/// sent by the peer already.
async fn accepted(first: &[u8]) -> (std::net::TcpStream, TcpStream) {
    let (l, addr) = listener();
    let mut peer = std::net::TcpStream::connect(addr).unwrap();
    let (s, _) = l.accept().await.unwrap();
    peer.write_all(first).unwrap();
    (peer, s)
}

/// Echo tasks on one runtime: an accept loop spawns one per connection,
/// and the main future drives three clients by turns, so that every wake
/// is a same-thread wake through the reactor.
#[test]
fn tasks_echo_over_loopback() {
    run(async {
        let (l, addr) = listener();
        spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let n = s.read(&mut buf).await.unwrap();
                        if n == 0 {
                            break;
                        }
                        s.write_all(&buf[..n]).await.unwrap();
                    }
                });
            }
        });
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        for round in 0..200u32 {
            for (i, c) in clients.iter().enumerate() {
                let msg = format!("round {round} client {i}");
                c.write_all(msg.as_bytes()).await.unwrap();
                let mut got = Vec::new();
                while got.len() < msg.len() {
                    c.read_buf(&mut got).await.unwrap();
                }
                assert_eq!(got, msg.as_bytes());
            }
        }
    });
}

/// A write bigger than the socket buffers waits for room, and the peer
/// gets every byte; a closed peer reads as 0.
#[test]
fn a_large_write_waits_for_room_and_the_end_reads_as_zero() {
    run(async {
        let (l, addr) = listener();
        let peer = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let mut got = vec![0u8; 8 << 20];
            s.read_exact(&mut got).unwrap();
            got
        });
        let (s, _) = l.accept().await.unwrap();
        let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
        s.write_all(&data).await.unwrap();
        assert!(peer.join().unwrap() == data, "bytes differ");
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).await.unwrap(), 0);
    });
}

/// A task waiting on a channel is woken from another thread (through the
/// eventfd), and so is the main future.
#[test]
fn wakes_from_other_threads_reach_the_loop() {
    run(async {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<u32>();
        spawn(async move {
            let v = rx.await.unwrap();
            done_tx.send(v + 1).unwrap();
        });
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(41).unwrap();
        });
        assert_eq!(done_rx.await.unwrap(), 42);

        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(7).unwrap();
        });
        assert_eq!(rx.await.unwrap(), 7);
    });
}

struct Flag(Arc<AtomicUsize>);

impl Drop for Flag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Tasks still pending when `block_on` returns are dropped with the
/// runtime, on its thread, and their sockets close.
#[test]
fn pending_tasks_are_dropped_with_the_runtime() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let (l, addr) = std_listener();
    let rt = Runtime::new().unwrap();
    let flag = Flag(dropped.clone());
    rt.block_on(async move {
        let s = TcpStream::connect(addr).await.unwrap();
        spawn(async move {
            let _flag = flag;
            let mut buf = [0u8; 1];
            // Never answered.
            let _ = s.read(&mut buf).await;
        });
        // Let it start waiting.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        spawn(async move {
            let _ = tx.send(());
        });
        rx.await.unwrap();
    });
    assert_eq!(dropped.load(Ordering::SeqCst), 0, "still pending");
    drop(rt);
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "dropped with the runtime"
    );
    // The connection closed: the accepted end reads the end.
    let (mut accepted, _) = l.accept().unwrap();
    accepted
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(accepted.read(&mut [0u8; 1]).unwrap(), 0);
}

/// A socket dropped on another thread gives its registration back at the
/// runtime's next turn, and the slot is used again.
#[test]
fn sockets_dropped_elsewhere_release_their_slot() {
    let rt = Runtime::new().unwrap();
    let (l, addr) = std_listener();
    let slots = |rt: &Runtime| {
        let slots = rt.local.reactor.slots.borrow();
        slots.iter().filter(|s| s.io.is_some()).count()
    };
    let stream = rt.block_on(TcpStream::connect(addr)).unwrap();
    let _accepted = l.accept().unwrap();
    assert_eq!(slots(&rt), 1);
    std::thread::spawn(move || drop(stream)).join().unwrap();
    assert_eq!(slots(&rt), 1, "not yet: released by the loop");
    // The next connect registers a second slot, and its wait turns the
    // loop, which releases the first.
    let second = rt.block_on(TcpStream::connect(addr)).unwrap();
    let _accepted2 = l.accept().unwrap();
    assert_eq!(slots(&rt), 1, "the first was released");
    // The third takes the first's slot again.
    let third = rt.block_on(TcpStream::connect(addr)).unwrap();
    let _accepted3 = l.accept().unwrap();
    assert_eq!(slots(&rt), 2);
    assert_eq!(rt.local.reactor.slots.borrow().len(), 2, "a slot reused");
    drop((second, third));
}

/// Refused connects fail with the kernel's error.
#[test]
fn a_refused_connect_is_an_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = run(TcpStream::connect(closed)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

/// `try_read` answers from the cached readiness: nothing is read before
/// the reactor has seen the bytes arrive, and after a `WouldBlock` the
/// socket waits for a new edge.
#[test]
fn try_read_follows_the_cached_readiness() {
    run(async {
        let (mut peer, s) = accepted(b"hello").await;
        let mut buf = [0u8; 16];
        // Registered just now and not yet polled: no readiness known.
        assert_eq!(
            s.try_read(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        s.readable().await.unwrap();
        assert_eq!(s.try_read(&mut buf).unwrap(), 5);
        assert_eq!(
            s.try_read(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        peer.write_all(b"again").unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 5);
        assert_eq!(&buf[..5], b"again");
    });
}

/// Waiting on a socket from a runtime other than its own is refused.
#[test]
fn a_socket_is_waited_on_only_by_its_own_runtime() {
    let (l, addr) = std_listener();
    let stream = run(TcpStream::connect(addr)).unwrap();
    let _accepted = l.accept().unwrap();
    let other = std::thread::spawn(move || {
        run(async move {
            let mut buf = [0u8; 1];
            let _ = stream.read(&mut buf).await;
        })
    });
    assert!(other.join().is_err(), "the other runtime's wait panicked");
}

/// A read that returns less than it asked for keeps the readiness (only
/// an EAGAIN clears it): bytes that arrive after it are read at once, with
/// no edge from the reactor (a short read does not prove a socket in the
/// SOCKHASH empty; see `net`).
#[test]
fn a_short_read_keeps_the_readiness() {
    run(async {
        let (mut peer, s) = accepted(b"hello").await;
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).await.unwrap(), 5);
        // More bytes, and the loop has not turned since.
        peer.write_all(b"world").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(s.try_read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"world");
        // Now the kernel said EAGAIN: the readiness is gone.
        assert_eq!(
            s.try_read(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
    });
}

/// A task that panics is dropped (its sockets close), and the loop and
/// the other tasks go on.
#[test]
fn a_panicking_task_is_dropped_and_the_others_go_on() {
    run(async {
        let (peer, s) = accepted(b"x").await;
        spawn(async move {
            s.readable().await.unwrap();
            panic!("a bug in one connection");
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        spawn(async move {
            let (mut peer, s) = accepted(b"ping").await;
            let mut buf = [0u8; 4];
            assert_eq!(s.read(&mut buf).await.unwrap(), 4);
            s.write_all(b"pong").await.unwrap();
            let mut back = [0u8; 4];
            peer.read_exact(&mut back).unwrap();
            tx.send(u32::from(back == *b"pong")).unwrap();
        });
        assert_eq!(rx.await.unwrap(), 1, "the other task finished");
        // The panicked task's socket was closed when it was dropped (with
        // the byte it never read: a reset).
        let mut peer = peer;
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        match peer.read(&mut [0u8; 1]) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("the socket is still open: {other:?}"),
        }
    });
}

/// A runtime dropped while another runs on the thread leaves that one
/// current: its sockets still register with it.
#[test]
fn dropping_a_runtime_inside_another_leaves_the_outer_current() {
    run(async {
        drop(Runtime::new().unwrap());
        let (l, addr) = listener();
        let _peer = std::net::TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().await.unwrap();
        assert!(s.io.on_owner(), "registered with the outer runtime");
    });
}

/// Pending once, having woken itself: lets the loop go round.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// Tasks spawned several at a time between two turns (an accept that
/// takes a backlog) are forgotten once done: the list the runtime keeps
/// for its drop stays near the tasks alive, not the tasks ever spawned.
#[test]
fn tasks_spawned_in_bursts_are_forgotten_when_done() {
    run(async {
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..4000 {
            for _ in 0..5 {
                let done = done.clone();
                spawn(async move {
                    done.fetch_add(1, Ordering::Relaxed);
                });
            }
            yield_now().await;
        }
        while done.load(Ordering::Relaxed) < 20_000 {
            yield_now().await;
        }
        let kept = with_current(|l| l.unwrap().reactor.tasks.borrow().len());
        assert!(kept <= 4 * SWEEP_MIN, "{kept} finished tasks still listed");
    });
}

/// A `block_on` inside a running runtime panics and leaves the running
/// one current (the nested runtime, dropped while unwinding, is not).
#[test]
fn a_nested_block_on_panics_and_leaves_the_outer_current() {
    let outer = Runtime::new().unwrap();
    let outer_local: *const Local = &*outer.local;
    outer.block_on(async {
        let nested = std::panic::catch_unwind(|| {
            Runtime::new().unwrap().block_on(async {});
        });
        assert!(nested.is_err(), "the nested block_on panicked");
        assert_eq!(CURRENT.with(Cell::get), outer_local);
        // And the outer runtime still serves.
        let (l, addr) = listener();
        let _peer = std::net::TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().await.unwrap();
        assert!(s.io.on_owner());
    });
}

/// A task woken from another thread after its runtime was dropped is let
/// go: the runtime's shared half (its eventfd among it) is freed, not held
/// by a queue nobody reads.
#[test]
fn a_task_woken_after_its_runtime_is_gone_is_let_go() {
    let waker = Arc::new(Mutex::new(None::<Waker>));
    let rt = Runtime::new().unwrap();
    let remote = Arc::downgrade(&rt.local.remote);
    let slot = waker.clone();
    rt.block_on(async move {
        spawn(std::future::poll_fn(move |cx| {
            *slot.lock().unwrap() = Some(cx.waker().clone());
            Poll::<()>::Pending
        }));
        yield_now().await;
    });
    let w = waker.lock().unwrap().take().expect("the task ran");
    drop(rt);
    std::thread::spawn(move || w.wake()).join().unwrap();
    assert!(
        remote.upgrade().is_none(),
        "the dropped runtime is still held"
    );
}

/// A future that panics, and panics again while it is dropped, is let go
/// and the loop goes on.
#[test]
fn a_panic_while_dropping_a_task_is_contained() {
    /// Panics when polled and when dropped.
    struct Faulty;
    impl Future for Faulty {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            panic!("a bug in a poll");
        }
    }
    impl Drop for Faulty {
        fn drop(&mut self) {
            panic!("a bug in a drop");
        }
    }
    run(async {
        spawn(Faulty);
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        spawn(async move {
            tx.send(7).unwrap();
        });
        assert_eq!(rx.await.unwrap(), 7);
    });
}

/// Waits until the loop has looked at its events again: a wake from
/// another thread, 20 ms on, which the loop takes from epoll with them.
async fn next_turn() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        let _ = tx.send(());
    });
    rx.await.unwrap();
    t.join().unwrap();
}

/// `quiet` answers from the reactor's events alone: true once the loop
/// has looked at its events since a read found the socket empty and none
/// was for it; false before that look (bytes may have come since the
/// last one), and false when an event has come since (bytes or an end).
#[test]
fn quiet_follows_the_events_since_a_read_found_the_socket_empty() {
    run(async {
        let (mut peer, s) = accepted(b"hello").await;
        let mut buf = [0u8; 16];
        assert!(!s.quiet(), "never read empty yet");
        assert_eq!(s.read(&mut buf).await.unwrap(), 5);
        // Bytes that came after the loop's last look, unseen by it.
        peer.write_all(b"more").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!s.quiet(), "read empty, but the loop has not looked since");
        next_turn().await;
        assert!(!s.quiet(), "bytes came");
        assert_eq!(s.read(&mut buf).await.unwrap(), 4);
        next_turn().await;
        assert!(s.quiet(), "read empty, and the loop looked since");
        // Last bytes and the end together: reading the bytes leaves the
        // end, which makes no event of its own.
        peer.write_all(b"bye").unwrap();
        drop(peer);
        next_turn().await;
        assert_eq!(s.read(&mut buf).await.unwrap(), 3);
        next_turn().await;
        assert!(!s.quiet(), "the end came with the bytes");
        assert_eq!(s.read(&mut buf).await.unwrap(), 0);
    });
}

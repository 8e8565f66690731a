//! Heap allocations per proxied keep-alive request, counted on the proxy's
//! own worker thread with a counting global allocator. The proxy runs in
//! this process (the library's `proxy::serve`), the client and the backend
//! on plain threads that are not counted.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use sidetrack::{
    config::{IdentifierKind, Settings},
    dtab::{Dtab, Namers},
    observe::metrics::Metrics,
    proxy::{self, ProxyConfig, Shared, budget::MemoryBudget},
    route::{Identifier, Router, RouterLimits},
};
use sidetrack_tests::{backend::Backend, client::Client};

struct Counting;

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTED.try_with(Cell::get).unwrap_or(false) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTED.try_with(Cell::get).unwrap_or(false) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn a_keep_alive_request_allocates_nothing_on_the_proxy() {
    let backend = Backend::start("web");
    let metrics = Arc::new(Metrics::new(100));
    let dtab = Dtab::parse(&format!(
        "/svc/web => /$/inet/{}/{}",
        backend.addr.ip(),
        backend.addr.port()
    ))
    .unwrap();
    let router = Arc::new(Router::new(
        dtab,
        Namers::default(),
        RouterLimits::of(&Settings::default()),
        metrics.clone(),
        Default::default(),
    ));
    let shared = Arc::new(Shared {
        cfg: ProxyConfig::from_settings(&Settings::default()),
        router,
        metrics,
        identifier: Identifier::new(IdentifierKind::HeaderToken, "/svc"),
        orig_dst: None,
        budget: MemoryBudget::new(usize::MAX, 0),
        diff: Arc::new(sidetrack::diff::Engine::new(Default::default())),
        k8s: None,
        observers: Vec::new(),
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(proxy::Stop::No);
    // A worker as the binary runs it: a thread with its own event loop.
    let server = std::thread::spawn(move || {
        COUNTED.with(|c| c.set(true));
        proxy::run_worker(
            listener,
            shared,
            stop_rx,
            std::time::Duration::from_secs(1),
            true,
        )
        .unwrap()
    });

    let mut c = Client::connect(addr);
    let request = b"GET /a HTTP/1.1\r\nHost: web\r\nl5d-dtab: /svc/other => /svc/web\r\n\r\n";
    // Warm-up: buffers reach their size, the route is cached, the backend
    // connection is pooled.
    for _ in 0..200 {
        c.send(request).unwrap();
        assert_eq!(c.read_response(false).unwrap().status, 200);
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    const N: u64 = 2000;
    for _ in 0..N {
        c.send(request).unwrap();
        assert_eq!(c.read_response(false).unwrap().status, 200);
    }
    let per_request = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / N as f64;
    eprintln!("heap allocations per proxied keep-alive request: {per_request:.3}");
    stop.send(proxy::Stop::Drain).unwrap();
    drop(c);
    assert!(server.join().unwrap(), "the worker drained");
    assert!(per_request < 0.01, "{per_request} allocations per request");
}

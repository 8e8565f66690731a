//! The http module's promise: once a connection's `RequestHead`,
//! `ResponseHead` and output buffer are warm, handling a request head
//! (parse, framing, rewrite) and its response head allocates nothing.
//!
//! A counting global allocator counts only on the thread that asked, so the
//! test harness's own allocations on other threads do not interfere.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

use sidetrack::http::{
    self, BodyLength, ChunkedScanner, Limits, Parsed, RequestHead, RequestKind, ResponseHead,
};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    // try_with: the allocator may run while thread-locals are torn down.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    COUNT.with(|c| c.get())
}

const REQUEST: &[u8] = b"POST /api/v1/orders?customer=42 HTTP/1.1\r\n\
Host: orders.default.svc.cluster.local\r\n\
User-Agent: curl/8.5.0\r\n\
Accept: application/json\r\n\
Content-Type: application/json\r\n\
Transfer-Encoding: chunked\r\n\
Connection: keep-alive\r\n\
l5d-dtab: /svc/orders=>/#/io.l5d.fs/orders-v2\r\n\
l5d-ctx-trace: abc\r\n\
Via: 1.1 edge\r\n\
\r\n\
5\r\nhello\r\n0\r\n\r\n";

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: application/json\r\n\
Content-Length: 2\r\n\
Keep-Alive: timeout=5\r\n\
\r\n\
{}";

/// What the proxy does with one exchange's heads; returns the bytes written.
fn one_exchange(
    req: &mut RequestHead,
    resp: &mut ResponseHead,
    out: &mut Vec<u8>,
    limits: &Limits,
) -> usize {
    out.clear();
    let Ok(Parsed::Complete { head_len }) = req.parse(REQUEST, limits) else {
        panic!("request head did not parse");
    };
    let framing = http::request_body(req, REQUEST).unwrap();
    assert_eq!(framing.length, BodyLength::Chunked);
    let close = http::wants_close(req.minor_version(), req.get_all(REQUEST, "connection"));
    assert!(!close);
    assert_eq!(http::via_hops(req, REQUEST), 1);
    assert_eq!(
        req.authority(REQUEST),
        Some(&b"orders.default.svc.cluster.local"[..])
    );
    let kind = RequestKind::of(req, REQUEST);
    http::write_request(
        out,
        req,
        REQUEST,
        &framing.length,
        kind.upgrade,
        |name| name.eq_ignore_ascii_case(b"l5d-dtab") || name.eq_ignore_ascii_case(b"l5d-ctx-dtab"),
        &[
            (b"l5d-ctx-dtab", b"/svc/orders=>/#/io.l5d.fs/orders-v2"),
            (b"l5d-dst-service", b"/svc/orders.default.svc.cluster.local"),
            (b"Via", b"1.1 edge, 1.1 sidetrack"),
        ],
    );
    let mut scanner = ChunkedScanner::new();
    let body = scanner.scan(&REQUEST[head_len..]).unwrap();
    assert!(scanner.is_done());
    assert_eq!(head_len + body, REQUEST.len());

    let Ok(Parsed::Complete { .. }) = resp.parse(RESPONSE, limits) else {
        panic!("response head did not parse");
    };
    let rframing = http::response_body(kind, resp, RESPONSE).unwrap();
    assert_eq!(rframing.length, BodyLength::Length(2));
    http::write_response(out, resp, RESPONSE, &rframing.length, false, false, &[]);
    out.len()
}

#[test]
fn warm_heads_allocate_nothing() {
    let limits = Limits::default();
    let mut req = RequestHead::with_capacity(limits.max_headers);
    let mut resp = ResponseHead::with_capacity(limits.max_headers);
    let mut out = Vec::with_capacity(4096);
    // Warm-up: the first exchange may size buffers (it does not need to).
    let written = one_exchange(&mut req, &mut resp, &mut out, &limits);
    assert!(written > 300);
    let n = allocations(|| {
        for _ in 0..1000 {
            one_exchange(&mut req, &mut resp, &mut out, &limits);
        }
    });
    println!("allocations in 1000 warm request+response exchanges: {n}");
    assert_eq!(n, 0);
}

#[test]
fn the_counter_counts() {
    let n = allocations(|| {
        std::hint::black_box(vec![1u8; 16]);
    });
    assert_eq!(n, 1);
}

#[test]
fn error_responses_into_a_warm_buffer_allocate_nothing() {
    let mut out = Vec::with_capacity(4096);
    let n = allocations(|| {
        for _ in 0..100 {
            out.clear();
            http::write_error(&mut out, 400, "bad dtab: /svc=>", true);
        }
    });
    assert_eq!(n, 0);
}

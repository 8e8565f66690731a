//! Parse + rewrite of a typical request head (about 400 bytes), the per
//! request work the http module does on the hot path; plus chunked scanning.
//!
//! `cargo bench -p sidetrack --bench http`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sidetrack::http::{
    self, ChunkedScanner, Limits, Parsed, RequestHead, RequestKind, ResponseHead,
};

const REQUEST: &[u8] = b"GET /api/v1/orders/12345?expand=items&currency=EUR HTTP/1.1\r\n\
Host: orders.default.svc.cluster.local\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) orders-client/2.3\r\n\
Accept: application/json\r\n\
Accept-Encoding: gzip, deflate\r\n\
Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc\r\n\
Connection: keep-alive\r\n\
l5d-dtab: /svc/orders=>/#/io.l5d.fs/orders-v2\r\n\
l5d-ctx-trace: AAECAwQFBgcICQoLDA0ODw==\r\n\
X-Request-Id: 0b8f3c1e-7f1a-4b9e-9d43-2c5e8a1f6d77\r\n\
\r\n";

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: application/json\r\n\
Content-Length: 1234\r\n\
Date: Sun, 22 Nov 2026 03:40:48 GMT\r\n\
Cache-Control: no-store\r\n\
\r\n";

fn drop_dtab(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"l5d-dtab") || name.eq_ignore_ascii_case(b"l5d-ctx-dtab")
}

fn request_head(c: &mut Criterion) {
    let limits = Limits::default();
    let mut head = RequestHead::with_capacity(limits.max_headers);
    let mut out = Vec::with_capacity(4096);
    let mut group = c.benchmark_group("http_request_head");
    group.throughput(Throughput::Bytes(REQUEST.len() as u64));
    group.bench_function("parse", |b| {
        b.iter(|| head.parse(black_box(REQUEST), &limits).unwrap())
    });
    group.bench_function("parse_frame_rewrite", |b| {
        b.iter(|| {
            let buf = black_box(REQUEST);
            let Ok(Parsed::Complete { .. }) = head.parse(buf, &limits) else {
                unreachable!()
            };
            let framing = http::request_body(&head, buf).unwrap();
            let hops = http::via_hops(&head, buf);
            let close = http::wants_close(head.minor_version(), head.get_all(buf, "connection"));
            out.clear();
            http::write_request(
                &mut out,
                &head,
                buf,
                &framing.length,
                false,
                drop_dtab,
                &[
                    (b"l5d-ctx-dtab", b"/svc/orders=>/#/io.l5d.fs/orders-v2"),
                    (b"l5d-dst-service", b"/svc/orders.default.svc.cluster.local"),
                    (b"Via", b"1.1 sidetrack"),
                ],
            );
            black_box((hops, close, out.len()))
        })
    });
    group.finish();
}

fn response_head(c: &mut Criterion) {
    let limits = Limits::default();
    let mut head = ResponseHead::with_capacity(limits.max_headers);
    let mut out = Vec::with_capacity(4096);
    c.bench_function("http_response_head/parse_frame_rewrite", |b| {
        b.iter(|| {
            let buf = black_box(RESPONSE);
            head.parse(buf, &limits).unwrap();
            let framing = http::response_body(RequestKind::default(), &head, buf).unwrap();
            out.clear();
            http::write_response(&mut out, &head, buf, &framing.length, false, false, &[]);
            black_box(out.len())
        })
    });
}

fn chunked(c: &mut Criterion) {
    // 64 chunks of 1 KiB: framing bytes are scanned, data is skipped in bulk.
    let mut body = Vec::new();
    for _ in 0..64 {
        body.extend_from_slice(b"400\r\n");
        body.extend(std::iter::repeat_n(b'x', 1024));
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut group = c.benchmark_group("http_chunked");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("scan_64x1KiB", |b| {
        b.iter(|| {
            let mut s = ChunkedScanner::new();
            let n = s.scan(black_box(&body)).unwrap();
            assert!(s.is_done());
            n
        })
    });
    group.finish();
}

criterion_group!(benches, request_head, response_head, chunked);
criterion_main!(benches);

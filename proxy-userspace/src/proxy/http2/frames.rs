//! A client connection's frames watched as they pass through its I/O,
//! for what hyper and h2 do not bound: a client may send PING, SETTINGS
//! and empty frames as fast as it likes, and h2 answers or takes each
//! (it only stops reading a client that does not read its answers).
//! [`Scan`] finds the 9-byte frame headers in a byte stream without
//! buffering it (a few integer operations a frame); [`Guard`] counts the
//! frames a flood is made of, per second, and says when a client sends
//! one too many. Pure: no I/O, the clock is the caller's.

use std::time::{Duration, Instant};

/// The HTTP/2 client connection preface's length (RFC 9113 §3.4).
pub const PREFACE_LEN: usize = 24;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const CONTINUATION: u8 = 0x9;
/// END_STREAM on DATA and HEADERS; ACK on SETTINGS and PING.
const END_STREAM_OR_ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// A frame header (RFC 9113 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Header {
    fn parse(h: &[u8; 9]) -> Header {
        Header {
            len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        }
    }
}

/// Where a byte stream of frames is: inside a payload (or the preface),
/// or inside a header.
#[derive(Debug)]
pub struct Scan {
    /// Bytes to pass before the next header: the rest of a payload.
    skip: u32,
    /// A header split between two reads or writes.
    head: [u8; 9],
    filled: u8,
}

impl Scan {
    /// A stream that starts with a frame (the proxy's side).
    pub fn new() -> Scan {
        Scan {
            skip: 0,
            head: [0; 9],
            filled: 0,
        }
    }

    /// A client's stream, which starts with the preface.
    pub fn after_preface() -> Scan {
        Scan {
            skip: PREFACE_LEN as u32,
            ..Scan::new()
        }
    }

    /// Whether the bytes so far end with a whole frame.
    pub fn at_boundary(&self) -> bool {
        self.skip == 0 && self.filled == 0
    }

    /// Takes the next bytes of the stream, telling `each` every frame
    /// header they complete; stops early (and returns it) when `each`
    /// returns something.
    pub fn feed<T>(
        &mut self,
        mut bytes: &[u8],
        mut each: impl FnMut(Header) -> Option<T>,
    ) -> Option<T> {
        loop {
            let pass = (self.skip as usize).min(bytes.len());
            bytes = &bytes[pass..];
            self.skip -= pass as u32;
            if bytes.is_empty() {
                return None;
            }
            let header = if self.filled == 0 && bytes.len() >= 9 {
                let (h, rest) = bytes.split_at(9);
                bytes = rest;
                Header::parse(h.try_into().expect("nine bytes"))
            } else {
                let at = self.filled as usize;
                let n = (9 - at).min(bytes.len());
                self.head[at..at + n].copy_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                self.filled += n as u8;
                if self.filled < 9 {
                    return None;
                }
                self.filled = 0;
                Header::parse(&self.head)
            };
            self.skip = header.len;
            if let Some(t) = each(header) {
                return Some(t);
            }
        }
    }
}

/// The frames a flood is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flood {
    /// PING without ACK: each asks for an answer.
    Ping,
    /// SETTINGS without ACK: each is applied and acknowledged.
    Settings,
    /// DATA without END_STREAM, HEADERS or CONTINUATION without
    /// END_HEADERS, and no payload: work that moves nothing
    /// (CVE-2019-9518).
    Empty,
}

impl Flood {
    /// The `frame` label of `sidetrack_http2_floods_total`.
    pub fn label(self) -> &'static str {
        match self {
            Flood::Ping => "ping",
            Flood::Settings => "settings",
            Flood::Empty => "empty",
        }
    }

    /// Which kind of flood `h` belongs to, if any.
    fn of(h: &Header) -> Option<Flood> {
        match h.kind {
            PING if h.flags & END_STREAM_OR_ACK == 0 => Some(Flood::Ping),
            SETTINGS if h.flags & END_STREAM_OR_ACK == 0 => Some(Flood::Settings),
            DATA if h.len == 0 && h.flags & END_STREAM_OR_ACK == 0 => Some(Flood::Empty),
            HEADERS | CONTINUATION if h.len == 0 && h.flags & END_HEADERS == 0 => {
                Some(Flood::Empty)
            }
            _ => None,
        }
    }
}

/// Frames of each flood kind a client may send a second (0: no limit).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub pings: u32,
    pub settings: u32,
    pub empty: u32,
}

/// Counts a client's flood frames, a window per kind. A window holds
/// its limit's worth of frames; the one past it is a flood when the
/// window began less than a second before, else it starts a new window.
/// So the clock is read once per `limit` frames, and a client sending
/// faster than the limit is caught within two windows.
#[derive(Debug)]
pub struct Guard {
    limits: [u32; 3],
    counts: [u32; 3],
    since: [Instant; 3],
    /// The highest stream a client opened (for GOAWAY's last stream).
    last_stream: u32,
}

const WINDOW: Duration = Duration::from_secs(1);

impl Guard {
    pub fn new(limits: Limits, start: Instant) -> Guard {
        Guard {
            limits: [limits.pings, limits.settings, limits.empty],
            counts: [0; 3],
            since: [start; 3],
            last_stream: 0,
        }
    }

    /// One frame header from the client; the flood it is one too many
    /// of, if it is. `now` is asked only at a window's end.
    pub fn frame(&mut self, h: Header, now: impl FnOnce() -> Instant) -> Option<Flood> {
        if h.kind == HEADERS && h.stream % 2 == 1 {
            self.last_stream = self.last_stream.max(h.stream);
        }
        let flood = Flood::of(&h)?;
        let i = flood as usize;
        let limit = self.limits[i];
        if limit == 0 {
            return None;
        }
        self.counts[i] += 1;
        if self.counts[i] <= limit {
            return None;
        }
        let now = now();
        if now.saturating_duration_since(self.since[i]) < WINDOW {
            return Some(flood);
        }
        self.since[i] = now;
        self.counts[i] = 1;
        None
    }

    /// The highest stream id the client opened.
    pub fn last_stream(&self) -> u32 {
        self.last_stream
    }
}

/// A GOAWAY frame (RFC 9113 §6.8) with no debug data.
pub fn goaway(last_stream: u32, code: u32) -> [u8; 17] {
    let mut f = [0u8; 17];
    f[2] = 8;
    f[3] = 0x7;
    f[9..13].copy_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    f[13..17].copy_from_slice(&code.to_be_bytes());
    f
}

/// ENHANCE_YOUR_CALM (RFC 9113 §7).
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn headers_in(scan: &mut Scan, bytes: &[u8]) -> Vec<Header> {
        let mut seen = Vec::new();
        let none: Option<()> = scan.feed(bytes, |h| {
            seen.push(h);
            None
        });
        assert!(none.is_none());
        seen
    }

    fn stream() -> (Vec<u8>, Vec<Header>) {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let frames = [
            (SETTINGS, 0, 0, vec![0, 3, 0, 0, 0, 100]),
            (HEADERS, 0x4, 1, vec![0x82; 20]),
            (DATA, 0, 1, vec![7; 40_000]),
            (PING, 0, 0, vec![1; 8]),
            (DATA, 1, 1, vec![]),
            (CONTINUATION, 0, 3, vec![]),
        ];
        let mut want = Vec::new();
        for (kind, flags, stream, payload) in frames {
            bytes.extend(frame(kind, flags, stream, &payload));
            want.push(Header {
                len: payload.len() as u32,
                kind,
                flags,
                stream,
            });
        }
        (bytes, want)
    }

    #[test]
    fn headers_are_found_however_the_stream_is_cut() {
        let (bytes, want) = stream();
        let mut scan = Scan::after_preface();
        assert_eq!(headers_in(&mut scan, &bytes), want);
        assert!(scan.at_boundary());
        for piece in [1, 2, 5, 9, 10, 17, 4096] {
            let mut scan = Scan::after_preface();
            let mut seen = Vec::new();
            for chunk in bytes.chunks(piece) {
                seen.extend(headers_in(&mut scan, chunk));
            }
            assert_eq!(seen, want, "in pieces of {piece}");
            assert!(scan.at_boundary());
        }
        // Mid-payload and mid-header are not boundaries.
        let mut scan = Scan::after_preface();
        headers_in(&mut scan, &bytes[..PREFACE_LEN + 9 + 3]);
        assert!(!scan.at_boundary());
        let mut scan = Scan::after_preface();
        headers_in(&mut scan, &bytes[..PREFACE_LEN + 9 + 6 + 4]);
        assert!(!scan.at_boundary());
    }

    #[test]
    fn feeding_stops_where_told() {
        let (bytes, _) = stream();
        let mut scan = Scan::after_preface();
        let ping = scan.feed(&bytes, |h| (h.kind == PING).then_some(h.stream));
        assert_eq!(ping, Some(0));
    }

    fn ping() -> Header {
        Header {
            len: 8,
            kind: PING,
            flags: 0,
            stream: 0,
        }
    }

    #[test]
    fn a_flood_is_one_frame_past_the_limit_within_a_second() {
        let t0 = Instant::now();
        let limits = Limits {
            pings: 10,
            settings: 2,
            empty: 5,
        };
        let mut guard = Guard::new(limits, t0);
        let at = |ms| t0 + Duration::from_millis(ms);
        for i in 0..10 {
            assert_eq!(guard.frame(ping(), || at(i * 10)), None, "ping {i}");
        }
        assert_eq!(guard.frame(ping(), || at(500)), Some(Flood::Ping));
        // Slower than the limit: never a flood.
        let mut guard = Guard::new(limits, t0);
        for i in 0..100 {
            assert_eq!(guard.frame(ping(), || at(i * 101)), None, "ping {i}");
        }
        // Acknowledgements and other frames are not counted.
        let mut guard = Guard::new(limits, t0);
        let ack = Header { flags: 1, ..ping() };
        let data = Header {
            len: 100,
            kind: DATA,
            flags: 0,
            stream: 1,
        };
        let end = Header {
            len: 0,
            flags: 1,
            ..data
        };
        for _ in 0..1000 {
            for h in [ack, data, end] {
                assert_eq!(guard.frame(h, || t0), None);
            }
        }
        // Each kind has its own window.
        let settings = Header {
            len: 6,
            kind: SETTINGS,
            flags: 0,
            stream: 0,
        };
        let empty = Header { len: 0, ..data };
        let mut guard = Guard::new(limits, t0);
        assert_eq!(guard.frame(settings, || t0), None);
        assert_eq!(guard.frame(settings, || t0), None);
        for _ in 0..5 {
            assert_eq!(guard.frame(empty, || t0), None);
        }
        assert_eq!(guard.frame(settings, || t0), Some(Flood::Settings));
        assert_eq!(guard.frame(empty, || t0), Some(Flood::Empty));
        let continuation = Header {
            kind: CONTINUATION,
            ..empty
        };
        assert_eq!(guard.frame(continuation, || t0), Some(Flood::Empty));
        // 0: no limit.
        let mut guard = Guard::new(Limits { pings: 0, ..limits }, t0);
        for _ in 0..10_000 {
            assert_eq!(guard.frame(ping(), || t0), None);
        }
    }

    #[test]
    fn the_clock_is_read_once_a_window() {
        let t0 = Instant::now();
        let limits = Limits {
            pings: 100,
            settings: 1,
            empty: 1,
        };
        let mut guard = Guard::new(limits, t0);
        let mut reads = 0;
        let mut t = t0;
        for _ in 0..1000 {
            t += Duration::from_millis(11);
            let flood = guard.frame(ping(), || {
                reads += 1;
                t
            });
            assert_eq!(flood, None);
        }
        assert_eq!(reads, 9);
    }

    #[test]
    fn the_last_stream_is_the_highest_the_client_opened() {
        let mut guard = Guard::new(
            Limits {
                pings: 1,
                settings: 1,
                empty: 1,
            },
            Instant::now(),
        );
        for stream in [1, 7, 3, 8] {
            let h = Header {
                len: 10,
                kind: HEADERS,
                flags: 0x4,
                stream,
            };
            guard.frame(h, Instant::now);
        }
        assert_eq!(guard.last_stream(), 7);
    }

    #[test]
    fn flood_labels_are_the_metrics() {
        let labels = [Flood::Ping, Flood::Settings, Flood::Empty].map(Flood::label);
        assert_eq!(labels, crate::observe::metrics::HTTP2_FLOOD_FRAMES);
    }

    #[test]
    fn goaway_is_a_whole_frame() {
        let f = goaway(7, ENHANCE_YOUR_CALM);
        let mut scan = Scan::new();
        let seen = headers_in(&mut scan, &f);
        assert_eq!(
            seen,
            [Header {
                len: 8,
                kind: 0x7,
                flags: 0,
                stream: 0
            }]
        );
        assert!(scan.at_boundary());
        assert_eq!(&f[9..], &[0, 0, 0, 7, 0, 0, 0, 0xb]);
    }
}

//! Trace context: W3C `traceparent` / `tracestate` pass through untouched
//! (they are ordinary headers to the proxy); a request without a
//! `traceparent` may get one started here (`trace.start`), and the proxy's
//! own time (identify, route, connect) can be told to the backend in the
//! `l5d-timing` header, in the `Server-Timing` syntax.
//!
//! Pure: the header values are written into caller-owned buffers.

pub use crate::config::{Timing, TraceSettings};

/// The header the proxy's own timing goes to the backend in, and that a
/// client sends (with any value) to ask for it.
pub const TIMING_HEADER: &str = "l5d-timing";

/// `traceparent`'s name.
pub const TRACEPARENT: &str = "traceparent";

/// A started `traceparent` is this long: `00-` 32 hex `-` 16 hex `-01`.
pub const TRACEPARENT_LEN: usize = 55;

/// A new `traceparent` (version 00, sampled) from 24 random bytes: a
/// 16-byte trace id and an 8-byte parent id, neither all zeros (which W3C
/// Trace Context forbids).
pub fn start_traceparent(random: [u8; 24], out: &mut [u8; TRACEPARENT_LEN]) {
    let mut random = random;
    if random[..16].iter().all(|b| *b == 0) {
        random[15] = 1;
    }
    if random[16..].iter().all(|b| *b == 0) {
        random[23] = 1;
    }
    out[..3].copy_from_slice(b"00-");
    hex(&random[..16], &mut out[3..35]);
    out[35] = b'-';
    hex(&random[16..], &mut out[36..52]);
    out[52..].copy_from_slice(b"-01");
}

fn hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// Whether `value` is a well-formed version-00 `traceparent` (a malformed
/// one is passed on all the same; this only decides whether the access
/// log trusts it as an id).
pub fn is_traceparent(value: &[u8]) -> bool {
    let hex_at = |r: std::ops::Range<usize>| {
        value[r]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    value.len() == TRACEPARENT_LEN
        && value[2] == b'-'
        && value[35] == b'-'
        && value[52] == b'-'
        && hex_at(0..2)
        && hex_at(3..35)
        && hex_at(36..52)
        && hex_at(53..55)
}

/// The proxy's spans as an `l5d-timing` value in the `Server-Timing`
/// syntax, durations in milliseconds with microsecond precision:
/// `identify;dur=0.004, route;dur=0.011, connect;dur=0.052`. Spans not
/// reached are left out. Appends to `out`.
pub fn write_timing(out: &mut Vec<u8>, spans: &[(&str, Option<std::time::Duration>)]) {
    use std::io::Write as _;
    let mut first = true;
    for (name, d) in spans {
        let Some(d) = d else { continue };
        let micros = d.as_micros();
        if !first {
            out.extend_from_slice(b", ");
        }
        first = false;
        let _ = write!(out, "{name};dur={}.{:03}", micros / 1000, micros % 1000);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_started_traceparent_is_well_formed() {
        let mut out = [0u8; TRACEPARENT_LEN];
        let mut random = [0u8; 24];
        for (i, b) in random.iter_mut().enumerate() {
            *b = (i * 17) as u8;
        }
        start_traceparent(random, &mut out);
        assert_eq!(
            &out[..],
            b"00-00112233445566778899aabbccddeeff-1021324354657687-01"
        );
        assert!(is_traceparent(&out));
    }

    #[test]
    fn all_zero_ids_are_never_started() {
        let mut out = [0u8; TRACEPARENT_LEN];
        start_traceparent([0; 24], &mut out);
        assert_eq!(
            &out[..],
            b"00-00000000000000000000000000000001-0000000000000001-01"
        );
        assert!(is_traceparent(&out));
    }

    #[test]
    fn malformed_traceparents_are_told_apart() {
        assert!(!is_traceparent(b""));
        assert!(!is_traceparent(
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0"
        ));
        assert!(!is_traceparent(
            b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"
        ));
        assert!(is_traceparent(
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ));
    }

    #[test]
    fn timing_lists_the_spans_reached_in_server_timing_syntax() {
        let mut out = b"x".to_vec();
        out.clear();
        write_timing(
            &mut out,
            &[
                ("identify", Some(Duration::from_micros(4))),
                ("route", Some(Duration::from_micros(1_011))),
                ("connect", None),
            ],
        );
        assert_eq!(out, b"identify;dur=0.004, route;dur=1.011");
    }
}

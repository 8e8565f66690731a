//! The chunked decoder ([`ChunkedScanner`]) on arbitrary bytes, checked
//! three ways beyond "no panic":
//! - **Splits.** The body fed whole, cut into pieces at fuzzer-chosen
//!   points, and fed the way the proxy splices large chunks (chunk data
//!   taken past the scanner with `skip_data`, framing a few bytes at a
//!   time) must give the same outcome: the same error, or the same bytes
//!   consumed, the same end, the same decoded data.
//! - **A reference.** An independent decoder written from RFC 9112 §7.1
//!   (whole input, line by line, no state machine), with the proxy's limits
//!   on the size line and the trailers, must agree on complete / needs more
//!   / invalid, the length of the body and its data.
//! - **Round trip.** The input's bytes, encoded as chunks (sizes, case,
//!   leading zeros, extensions and trailers chosen by the input), decode
//!   back to themselves, consume exactly the encoding, and leave the next
//!   message alone; a size line made longer than the limit is refused.
//!
//! Input: the first two bytes are a plan (how to cut, how to encode), the
//! rest is the body.
//!
//! `cargo xtask fuzz --only chunked` (docs/fuzz.md).

#![no_main]

use libfuzzer_sys::fuzz_target;

use sidetrack_fuzz::http::{
    ChunkedScanner, HeadError,
    framing::{MAX_CHUNK_LINE, MAX_TRAILERS},
};

/// What a decoder made of a body.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    /// `Ok(bytes of the body)` or the error.
    result: Result<usize, HeadError>,
    done: bool,
    data: Vec<u8>,
}

/// Feeds `pieces` in order as the connection loop does: a piece the body
/// ends inside is not fed further (the rest is the next message).
fn feed<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Decoded {
    let mut s = ChunkedScanner::new();
    let mut data = Vec::new();
    let mut used = 0;
    for piece in pieces {
        match s.decode(piece, |d| data.extend_from_slice(d)) {
            Ok(n) => {
                assert!(n <= piece.len());
                used += n;
                if n < piece.len() {
                    assert!(s.is_done(), "stopped early without the end");
                    break;
                }
            }
            Err(e) => return sticky(s, e, data),
        }
    }
    finish(s, used, data)
}

/// Feeds `input` the way the proxy moves a large chunk: the chunk data the
/// scanner says is coming (up to `splice` bytes at a time) is moved past it
/// with `skip_data`, the framing bytes go through `decode` `step` at a time.
fn feed_spliced(input: &[u8], step: usize, splice: usize) -> Decoded {
    let mut s = ChunkedScanner::new();
    let mut data = Vec::new();
    let mut i = 0;
    while i < input.len() && !s.is_done() {
        let remaining = s.data_remaining();
        if remaining > 0 {
            let n = (remaining.min(splice as u64) as usize).min(input.len() - i);
            data.extend_from_slice(&input[i..i + n]);
            s.skip_data(n as u64);
            i += n;
            continue;
        }
        let end = (i + step).min(input.len());
        match s.decode(&input[i..end], |d| data.extend_from_slice(d)) {
            Ok(n) => i += n,
            Err(e) => return sticky(s, e, data),
        }
    }
    finish(s, i, data)
}

/// An error is final: the scanner repeats it.
fn sticky(mut s: ChunkedScanner, e: HeadError, data: Vec<u8>) -> Decoded {
    assert!(matches!(e, HeadError::BadChunk(_)), "{e:?}");
    assert_eq!(
        s.decode(b"0\r\n\r\n", |_| panic!("data after an error")),
        Err(e)
    );
    assert!(!s.is_done());
    Decoded {
        result: Err(e),
        done: false,
        data,
    }
}

/// After the end nothing more is taken.
fn finish(mut s: ChunkedScanner, used: usize, data: Vec<u8>) -> Decoded {
    let done = s.is_done();
    if done {
        assert_eq!(s.data_remaining(), 0);
        assert_eq!(
            s.decode(b"1\r\nx\r\n", |_| panic!("data after the end")),
            Ok(0)
        );
    }
    Decoded {
        result: Ok(used),
        done,
        data,
    }
}

/// The reference's verdict on a whole input.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// A complete body of this many bytes.
    Complete(usize),
    /// Valid so far; more bytes are needed.
    NeedsMore,
    /// No continuation makes it a valid body (within the limits).
    Invalid,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Bytes allowed in a chunk extension or a trailer value: HTAB, SP,
/// VCHAR, obs-text.
fn is_text(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

/// The end of a line that starts at `at`: `Ok(index after CRLF)`, or the
/// verdict when the input ends or something else follows the CR.
fn crlf(input: &[u8], at: usize) -> Result<usize, Verdict> {
    match input.get(at..at + 2) {
        Some(b"\r\n") => Ok(at + 2),
        Some(_) => Err(Verdict::Invalid),
        None if input[at..].iter().zip(b"\r\n").all(|(a, b)| a == b) => Err(Verdict::NeedsMore),
        None => Err(Verdict::Invalid),
    }
}

/// RFC 9112 §7.1 read directly off the whole input:
///
/// ```text
/// chunked-body = *chunk last-chunk trailer-section CRLF
/// chunk        = chunk-size [ BWS chunk-ext ] CRLF chunk-data CRLF
/// last-chunk   = 1*("0") [ BWS chunk-ext ] CRLF
/// ```
///
/// with the proxy's rules where the RFC leaves room: an extension is `;`
/// and then any text (the proxy forwards it unread), white space after the
/// size only before `;`, no obs-fold in trailers, a size line of at most
/// [`MAX_CHUNK_LINE`] bytes with its CR and at most [`MAX_TRAILERS`] bytes
/// from the last chunk's line to the end.
fn reference(input: &[u8], data: &mut Vec<u8>) -> Verdict {
    let mut at = 0;
    loop {
        // The size line.
        let line = &input[at..];
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let mut end = digits;
        if end < line.len() && line[end] != b'\r' {
            let ws = line[end..]
                .iter()
                .take_while(|&&b| b == b' ' || b == b'\t')
                .count();
            end += ws;
            if line.get(end) == Some(&b';') {
                end += 1 + line[end + 1..].iter().take_while(|&&b| is_text(b)).count();
            } else if end < line.len() {
                // Neither an extension nor the line end (CR right after
                // white space included) may follow.
                return Verdict::Invalid;
            }
        }
        // The bytes the line holds, its CR included, are bounded.
        let counted = end + usize::from(end < line.len());
        if digits == 0 && !line.is_empty() || counted > MAX_CHUNK_LINE as usize {
            return Verdict::Invalid;
        }
        let Some(size) = line[..digits].iter().try_fold(0u64, |n, &d| {
            let d = (d as char).to_digit(16).expect("a hex digit");
            n.checked_mul(16)?.checked_add(u64::from(d))
        }) else {
            return Verdict::Invalid;
        };
        if end == line.len() {
            return Verdict::NeedsMore;
        }
        at = match crlf(input, at + end) {
            Ok(next) => next,
            Err(v) => return v,
        };
        if size == 0 {
            return trailers(input, at);
        }
        // The chunk's data and its CRLF.
        let available = input.len() - at;
        if (available as u64) < size {
            data.extend_from_slice(&input[at..]);
            return Verdict::NeedsMore;
        }
        let size = size as usize;
        data.extend_from_slice(&input[at..at + size]);
        at = match crlf(input, at + size) {
            Ok(next) => next,
            Err(v) => return v,
        };
    }
}

/// The trailer section and the final CRLF, from `start`.
fn trailers(input: &[u8], start: usize) -> Verdict {
    let verdict = trailer_lines(input, start);
    let seen = match verdict {
        Verdict::Complete(end) => end - start,
        Verdict::NeedsMore => input.len() - start,
        Verdict::Invalid => return Verdict::Invalid,
    };
    if seen > MAX_TRAILERS as usize {
        Verdict::Invalid
    } else {
        verdict
    }
}

fn trailer_lines(input: &[u8], mut at: usize) -> Verdict {
    loop {
        let line = &input[at..];
        match line.first() {
            None => return Verdict::NeedsMore,
            Some(b'\r') => {
                return match crlf(input, at) {
                    Ok(end) => Verdict::Complete(end),
                    Err(v) => v,
                };
            }
            Some(_) => {}
        }
        let name = line.iter().take_while(|&&b| is_tchar(b)).count();
        if name == line.len() {
            return Verdict::NeedsMore;
        }
        if name == 0 || line[name] != b':' {
            return Verdict::Invalid;
        }
        let value = line[name + 1..].iter().take_while(|&&b| is_text(b)).count();
        at = match crlf(input, at + name + 1 + value) {
            Ok(next) => next,
            Err(v) => return v,
        };
    }
}

/// `data` as a chunked body: chunk sizes, hex case, leading zeros,
/// extensions and a trailer as `plan` says.
fn encode(data: &[u8], plan: u8, out: &mut Vec<u8>) {
    let longest = 1 + usize::from(plan & 0x0f) * 37;
    let mut rest = data;
    let mut i = 0usize;
    while !rest.is_empty() {
        // Sizes vary from chunk to chunk, never 0 (that would end the body).
        let n = (1 + (i * 7 + usize::from(plan)) % longest).min(rest.len());
        let size = if plan & 0x10 != 0 {
            format!("{n:X}")
        } else {
            format!("{n:x}")
        };
        if plan & 0x20 != 0 {
            out.extend_from_slice(b"00");
        }
        out.extend_from_slice(size.as_bytes());
        if plan & 0x40 != 0 && i % 2 == 0 {
            out.extend_from_slice(b" \t;name=\"va;lue\";x");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
        i += 1;
    }
    out.extend_from_slice(b"0\r\n");
    if plan & 0x80 != 0 {
        out.extend_from_slice(b"Expires: never\r\nX-Sum:\t1 2\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Cut points in `0..=len` from the plan and the input length (no RNG: the
/// fuzzer must be able to replay an input).
fn cuts(len: usize, plan: u8) -> Vec<usize> {
    let mut cuts: Vec<usize> = (1..=usize::from(plan % 7))
        .map(|k| (k * 2654435761usize ^ usize::from(plan) * 40503) % (len + 1))
        .collect();
    cuts.sort_unstable();
    cuts
}

fn pieces<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for &c in cuts {
        out.push(&input[from..c]);
        from = c;
    }
    out.push(&input[from..]);
    out
}

fuzz_target!(|input: &[u8]| {
    let [cut_plan, enc_plan, body @ ..] = input else {
        return;
    };

    // Splits.
    let whole = feed([body]);
    let split = feed(pieces(body, &cuts(body.len(), *cut_plan)));
    assert_eq!(whole, split, "fed whole and in pieces");
    let step = 1 + usize::from(*cut_plan >> 4);
    let spliced = feed_spliced(body, step, 1 + usize::from(*enc_plan));
    assert_eq!(whole, spliced, "fed whole and spliced");
    let bytewise = feed(body.chunks(1));
    assert_eq!(whole, bytewise, "fed whole and a byte at a time");

    // The reference.
    let mut data = Vec::new();
    let verdict = reference(body, &mut data);
    match (&whole.result, whole.done, &verdict) {
        (Ok(n), true, Verdict::Complete(m)) => assert_eq!(n, m),
        (Ok(n), false, Verdict::NeedsMore) => assert_eq!(*n, body.len()),
        (Err(_), _, Verdict::Invalid) => {}
        _ => panic!("scanner {whole:?}, reference {verdict:?}"),
    }
    if verdict != Verdict::Invalid {
        assert_eq!(
            whole.data, data,
            "decoded data differs from the reference's"
        );
    }

    // Round trip of the input's bytes, followed by the next message.
    let mut encoded = Vec::new();
    encode(body, *enc_plan, &mut encoded);
    let len = encoded.len();
    encoded.extend_from_slice(b"GET / HTTP/1.1\r\n");
    for decoded in [
        feed([&encoded[..]]),
        feed(pieces(&encoded, &cuts(encoded.len(), *cut_plan))),
        feed_spliced(&encoded, step, 1 + usize::from(*cut_plan)),
    ] {
        assert_eq!(decoded.result, Ok(len), "the encoding's length");
        assert!(decoded.done);
        assert_eq!(decoded.data, body, "the encoded data");
    }
    let mut data = Vec::new();
    assert_eq!(reference(&encoded, &mut data), Verdict::Complete(len));
    assert_eq!(data, body);

    // The size line limit, with leading zeros: `pad` zeros, a digit, CR.
    let pad = usize::from(*enc_plan) * 17;
    let mut long = vec![b'0'; pad];
    long.extend_from_slice(b"1\r\nx\r\n0\r\n\r\n");
    let fits = pad + 2 <= MAX_CHUNK_LINE as usize;
    let decoded = feed([&long[..]]);
    assert_eq!(
        decoded.result.is_ok(),
        fits,
        "a size line of {} bytes",
        pad + 2
    );
    assert_eq!(decoded.done, fits);
});

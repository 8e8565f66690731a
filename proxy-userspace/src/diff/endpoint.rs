//! Endpoint names: which requests are counted together.
//!
//! Differences are counted per endpoint, so an endpoint must gather the
//! requests that exercise the same code: `GET /users/42` and
//! `GET /users/43` are one endpoint, `GET /users/42/orders` another.
//! Ids in a path are recognised by their shape; paths whose parameters are
//! words (`/users/alice`) need the endpoint header instead, or each name
//! becomes an endpoint until `max_endpoints` sends the rest to `other`.

/// The longest endpoint name; a longer one is cut (at a char boundary).
pub const MAX_ENDPOINT_LEN: usize = 256;

/// What an id-like path segment becomes.
const ID: &str = "{id}";

/// The endpoint of a request: `NAME METHOD TEMPLATE`, e.g.
/// `/svc/world GET /users/{id}/orders`, where the template is the path
/// without its query, and with each segment that is a number, a UUID, a
/// long hex string (16 or more hex digits) or another long token mixing
/// letters and digits (20 or more characters of `[A-Za-z0-9_-]`) replaced
/// by `{id}`. An absolute-form target (`http://host/path`) loses its
/// scheme and authority first.
///
/// With `header_value` (the request's value of the endpoint header) the
/// endpoint is `NAME VALUE` instead. Bytes that are not printable ASCII
/// become `?`; the name is at most [`MAX_ENDPOINT_LEN`] bytes.
pub fn endpoint(name: &str, method: &[u8], path: &[u8], header_value: Option<&[u8]>) -> String {
    let mut out = String::with_capacity(64);
    push_printable(&mut out, name.as_bytes());
    out.push(' ');
    match header_value {
        Some(v) => push_printable(&mut out, v.trim_ascii()),
        None => {
            for b in method.iter().take(16) {
                out.push(if b.is_ascii_graphic() {
                    b.to_ascii_uppercase() as char
                } else {
                    '?'
                });
            }
            out.push(' ');
            push_template(&mut out, path);
        }
    }
    truncate(&mut out, MAX_ENDPOINT_LEN);
    out
}

/// Cuts `s` to at most `max` bytes, at a char boundary.
pub(super) fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

fn push_printable(out: &mut String, bytes: &[u8]) {
    for &b in bytes.iter().take(MAX_ENDPOINT_LEN) {
        out.push(if b == b' ' || b.is_ascii_graphic() {
            b as char
        } else {
            '?'
        });
    }
}

fn push_template(out: &mut String, target: &[u8]) {
    let mut path = target;
    // An absolute-form target: drop `scheme://authority`.
    if let Some(i) = path.windows(3).position(|w| w == b"://")
        && path[..i].iter().all(|b| b.is_ascii_alphabetic())
    {
        let rest = &path[i + 3..];
        path = rest
            .iter()
            .position(|&b| b == b'/')
            .map_or(&b"/"[..], |j| &rest[j..]);
    }
    let end = path
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(path.len());
    let path = &path[..end];
    if path.is_empty() {
        out.push('/');
        return;
    }
    for (i, segment) in path.split(|&b| b == b'/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if out.len() > MAX_ENDPOINT_LEN {
            break;
        }
        if is_id(segment) {
            out.push_str(ID);
        } else {
            push_printable(out, segment);
        }
    }
}

/// Whether a path segment looks like an id rather than a word.
fn is_id(s: &[u8]) -> bool {
    if s.is_empty() {
        return false;
    }
    let digits = s.iter().all(u8::is_ascii_digit);
    let uuid = s.len() == 36
        && s.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    let hex = s.len() >= 16 && s.iter().all(u8::is_ascii_hexdigit);
    let token = s.len() >= 20
        && s.iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
        && s.iter().any(u8::is_ascii_digit)
        && s.iter().any(u8::is_ascii_alphabetic);
    digits || uuid || hex || token
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(method: &str, path: &str) -> String {
        endpoint("/svc/world", method.as_bytes(), path.as_bytes(), None)
    }

    #[test]
    fn ids_in_paths_collapse_and_queries_go() {
        for (path, want) in [
            ("/users/42", "/users/{id}"),
            ("/users/42/orders/7?expand=1", "/users/{id}/orders/{id}"),
            ("/items/123e4567-e89b-12d3-a456-426614174000", "/items/{id}"),
            ("/blobs/0123456789abcdef0123", "/blobs/{id}"),
            ("/s/01HZX3K9QW8V7T6R5P4N3M2B1A", "/s/{id}"),
            ("/users/alice", "/users/alice"),
            ("/v1/users", "/v1/users"),
            ("/deadbeef", "/deadbeef"),
            (
                "/a-rather-long-word-with-dashes",
                "/a-rather-long-word-with-dashes",
            ),
            ("/", "/"),
            ("", "/"),
            ("/users/", "/users/"),
            ("/x#frag", "/x"),
            ("http://world:8080/users/9?x", "/users/{id}"),
            ("http://world", "/"),
            ("*", "*"),
        ] {
            assert_eq!(ep("get", path), format!("/svc/world GET {want}"), "{path}");
        }
    }

    #[test]
    fn the_header_names_the_endpoint_when_given() {
        assert_eq!(
            endpoint("/svc/rpc", b"POST", b"/rpc", Some(b" GetUser ")),
            "/svc/rpc GetUser"
        );
    }

    #[test]
    fn names_are_printable_and_bounded() {
        let e = endpoint("/svc/x", b"G\x00T", b"/a\xff\n/b", None);
        assert_eq!(e, "/svc/x G?T /a??/b");
        let long = format!("/{}", "w/".repeat(1000));
        assert!(ep("GET", &long).len() <= MAX_ENDPOINT_LEN);
        let header = vec![b'\xe9'; 1000];
        assert!(endpoint("/svc/x", b"GET", b"/", Some(&header)).len() <= MAX_ENDPOINT_LEN);
    }
}

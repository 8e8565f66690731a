//! One request to a running proxy's admin server, for the subcommands that
//! ask it (`stage --proxy`, `diff`): plain HTTP/1.1 over a blocking socket,
//! one exchange per connection, a timeout on every read and write.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

/// The admin server's largest answer read (a full diff report is a few
/// MiB at most under the default bounds).
const MAX_ANSWER: u64 = 256 << 20;

/// `host:port` from `host:port`, `http://host:port` or `http://host:port/`.
pub fn authority(addr: &str) -> &str {
    addr.strip_prefix("http://")
        .unwrap_or(addr)
        .trim_end_matches('/')
}

/// Sends `METHOD path` (with a JSON `body`, if any) to `authority` and
/// returns the body of a 200 answer; any other status is an error that
/// carries the answer's text.
pub fn request(
    authority: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<Vec<u8>, String> {
    let mut conn = TcpStream::connect(authority).map_err(|e| format!("{authority}: {e}"))?;
    let timeout = Some(Duration::from_secs(10));
    conn.set_read_timeout(timeout).map_err(|e| e.to_string())?;
    conn.set_write_timeout(timeout).map_err(|e| e.to_string())?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    } else if method != "GET" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    head.push_str(body.unwrap_or(""));
    conn.write_all(head.as_bytes())
        .map_err(|e| format!("{authority}: {e}"))?;
    let mut answer = Vec::new();
    conn.take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(|e| format!("{authority}: {e}"))?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = parsed.parse(&answer) else {
        return Err(format!("{authority}: not an HTTP response"));
    };
    if parsed.code != Some(200) {
        return Err(format!(
            "{authority}{path}: {} {}",
            parsed.code.unwrap_or(0),
            String::from_utf8_lossy(&answer[len..]).trim()
        ));
    }
    Ok(answer.split_off(len))
}

#[cfg(test)]
mod tests {
    use super::authority;

    #[test]
    fn authorities_come_with_or_without_a_scheme() {
        assert_eq!(authority("127.0.0.1:9990"), "127.0.0.1:9990");
        assert_eq!(authority("http://127.0.0.1:9990/"), "127.0.0.1:9990");
    }
}

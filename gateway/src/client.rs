//! A minimal blocking HTTP/1.1 client for the operator commands (`payu status`), so the binary
//! needs no HTTP client library. Plain `http://host:port/path` only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The longest answer read, in bytes.
const RESPONSE_BYTES_MAX: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(5);

/// GETs `url` with a bearer token; returns the body of a 2xx answer, or an error naming the
/// status and body.
pub fn get(url: &str, token: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("only http:// URLs are supported: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(index) => (&rest[..index], &rest[index..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(authority)
        .map_err(|error| anyhow::anyhow!("connecting to {authority}: {error}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.take(RESPONSE_BYTES_MAX).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP answer from {authority}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("malformed status line from {authority}"))?;
    let chunked = head.lines().any(|line| {
        line.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = match chunked {
        true => dechunk(body),
        false => body.to_string(),
    };
    match (200..300).contains(&status) {
        true => Ok(body),
        false => Err(anyhow::anyhow!("{url} answered {status}: {body}")),
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

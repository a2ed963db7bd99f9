//! A raw HTTP/1.1 client over `tokio::net::TcpStream`, for what ordinary
//! clients cannot do: stop halfway through a head or a body, cut a body
//! short, hold a keep-alive connection idle, read what actix writes itself.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any read here waits before the test fails (a hang).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// One response as read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics (naming the response) when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not a JSON body ({e}): {} {:?} {:?}",
                self.status,
                self.headers,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A connection to `base` (`http://host:port`).
pub async fn connect(base: &str) -> TcpStream {
    let addr = base.trim_start_matches("http://");
    TcpStream::connect(addr).await.expect("connect")
}

pub async fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.expect("write");
}

/// Reads one response: `None` when the server closed (or reset) the
/// connection before sending one. Fails the test after [`PATIENCE`].
pub async fn response(stream: &mut TcpStream) -> Option<RawResponse> {
    tokio::time::timeout(PATIENCE, read_response(stream))
        .await
        .unwrap_or_else(|_| panic!("no answer within {PATIENCE:?}"))
}

/// Like [`response`], but `None` also when nothing came within `wait`.
pub async fn response_within(stream: &mut TcpStream, wait: Duration) -> Option<RawResponse> {
    tokio::time::timeout(wait, read_response(stream))
        .await
        .ok()
        .flatten()
}

async fn read_response(stream: &mut TcpStream) -> Option<RawResponse> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) if buf.is_empty() => return None,
            Ok(0) | Err(_) => panic!("connection ended inside a response head: {buf:?}"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().expect("content-length"));
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => panic!("connection ended inside a response body"),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(length);
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

/// Waits until the server closes the connection (EOF or reset), reading
/// and discarding whatever comes first. Fails the test after [`PATIENCE`].
pub async fn closed(stream: &mut TcpStream) {
    let waited = tokio::time::timeout(PATIENCE, async {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "connection still open after {PATIENCE:?}");
}

/// A GET request on a keep-alive connection.
pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gantry\r\n\r\n").into_bytes()
}

/// A request head with a `Content-Length` body of `length` bytes.
pub fn head(method: &str, path: &str, content_type: &str, length: usize) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: gantry\r\nContent-Type: {content_type}\r\n\
         Content-Length: {length}\r\n\r\n"
    )
    .into_bytes()
}

//! A small HTTP/1.1 server: a thread per connection, keep-alive, bodies by `Content-Length` or
//! chunked. The stand-in used tiny_http before; its connection pool could leave a new
//! connection queued behind idle kept-alive ones (a wake-up is lost when connections arrive
//! together), and a burst of sendMessage calls saw one wait 17 s, until the client gave up. A
//! thread per connection cannot starve.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

/// A connection with no request for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest request line or header line accepted.
const MAX_LINE: u64 = 16 * 1024;
/// The largest body accepted (a batch of thousands of messages fits).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// One request, body read.
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path and query, as sent.
    pub target: String,
    /// The body (empty when none).
    pub body: Vec<u8>,
}

/// What the handler answers.
pub enum Reply {
    /// A JSON response.
    Json {
        /// The HTTP status.
        status: u16,
        /// The body.
        body: serde_json::Value,
    },
    /// A body sent as JSON as it is, well-formed or not: for answers cut short.
    Text {
        /// The HTTP status.
        status: u16,
        /// The body.
        body: String,
    },
    /// Bytes written as they are, then the connection is closed: for answers that are not HTTP.
    Raw(&'static [u8]),
}

/// Answers one request; runs on the connection's thread.
pub type Handler = dyn Fn(Request) -> Reply + Send + Sync;

/// A running server. [`Server::stop`] (or dropping it) stops accepting connections; requests
/// being answered finish on their own threads.
pub struct Server {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Server {
    /// Listens on `listen` and answers each request with `handler`.
    pub fn start(listen: &str, handler: Arc<Handler>) -> io::Result<Server> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let stopping = Arc::clone(&stopping);
            thread::Builder::new()
                .name("standin-accept".into())
                .spawn(move || accept(&listener, &stopping, &handler))?
        };
        Ok(Server {
            addr,
            stopping,
            acceptor: Some(acceptor),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the server stops.
    pub fn join(&mut self) {
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }

    /// Stops accepting connections.
    pub fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // `accept` blocks: a connection of our own wakes it to see the flag.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        self.join();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.stop();
        }
    }
}

fn accept(listener: &TcpListener, stopping: &AtomicBool, handler: &Arc<Handler>) {
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else {
            // Out of file descriptors, or the client gave up already: let things settle.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let handler = Arc::clone(handler);
        let spawned = thread::Builder::new()
            .name("standin-connection".into())
            .spawn(move || {
                let _ = serve(stream, &*handler);
            });
        if spawned.is_err() {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Answers the requests of one connection until the client closes it or asks to.
fn serve(stream: TcpStream, handler: &Handler) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let Some(request_line) = read_line(&mut reader)? else {
            return Ok(());
        };
        if request_line.is_empty() {
            continue;
        }
        let mut parts = request_line.split_whitespace();
        let (Some(method), Some(target), Some(version)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return write_json(
                &mut writer,
                400,
                &bad_request("malformed request line").to_string(),
                false,
            );
        };
        let (method, target, version) = (method.to_owned(), target.to_owned(), version.to_owned());
        let mut length = 0usize;
        let mut chunked = false;
        let mut connection = String::new();
        loop {
            let Some(line) = read_line(&mut reader)? else {
                return Ok(());
            };
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                return write_json(
                    &mut writer,
                    400,
                    &bad_request("malformed header").to_string(),
                    false,
                );
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => match value.parse() {
                    Ok(n) if n <= MAX_BODY => length = n,
                    _ => {
                        return write_json(
                            &mut writer,
                            400,
                            &bad_request("bad length").to_string(),
                            false,
                        );
                    }
                },
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => connection = value.to_ascii_lowercase(),
                "expect" if value.eq_ignore_ascii_case("100-continue") => {
                    writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
                }
                _ => {}
            }
        }
        let body = if chunked {
            read_chunked(&mut reader)?
        } else {
            let mut body = vec![0; length];
            reader.read_exact(&mut body)?;
            body
        };
        let keep_alive = if version == "HTTP/1.0" {
            connection == "keep-alive"
        } else {
            connection != "close"
        };
        match handler(Request {
            method,
            target,
            body,
        }) {
            Reply::Json { status, body } => {
                write_json(&mut writer, status, &body.to_string(), keep_alive)?
            }
            Reply::Text { status, body } => write_json(&mut writer, status, &body, keep_alive)?,
            Reply::Raw(bytes) => {
                writer.write_all(bytes)?;
                return writer.flush();
            }
        }
        if !keep_alive {
            return Ok(());
        }
    }
}

fn bad_request(why: &str) -> serde_json::Value {
    serde_json::json!({"ok": false, "error_code": 400, "description": format!("Bad Request: {why}")})
}

/// A line without its CRLF; None at the end of the stream.
fn read_line(reader: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    if reader.take(MAX_LINE).read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a line is too long or cut short",
        ));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a header is not UTF-8"))
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or_else(|| invalid("chunked body cut short"))?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while read_line(reader)?.is_some_and(|l| !l.is_empty()) {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(invalid("body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        read_line(reader)?;
    }
}

fn write_json(writer: &mut TcpStream, status: u16, body: &str, keep_alive: bool) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        reason(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    let mut response = head.into_bytes();
    response.extend_from_slice(body.as_bytes());
    writer.write_all(&response)?;
    writer.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined_and_lines_lose_their_crlf() {
        let mut input: &[u8] = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n";
        assert_eq!(read_chunked(&mut input).unwrap(), b"hello, world");
        let mut lines: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(
            read_line(&mut lines).unwrap().as_deref(),
            Some("GET / HTTP/1.1")
        );
        assert_eq!(read_line(&mut lines).unwrap().as_deref(), Some(""));
        assert_eq!(read_line(&mut lines).unwrap(), None);
        let mut cut: &[u8] = b"no end of line";
        assert!(read_line(&mut cut).is_err());
    }
}

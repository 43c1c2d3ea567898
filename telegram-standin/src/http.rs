//! The HTTP/1.1 server: hyper, on a tokio runtime shared by every stand-in of the process.
//!
//! Handlers block (a long poll waits on a condvar, latency and delay faults sleep), so each
//! request is handled on tokio's blocking pool, a thread of its own: a held poll cannot keep
//! another request waiting. (The stand-in used tiny_http once; its connection pool left a new
//! connection queued behind idle kept-alive ones, and a burst of sendMessage calls saw one wait
//! 17 s.)

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// A connection with no request for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest body accepted (a batch of thousands of messages fits).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Requests handled at once, at most: each blocks a thread while it waits (tokio's default,
/// 512, is below what a load test with many users can hold).
const MAX_HANDLERS: usize = 4096;

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

/// Answers one request; runs on a thread of its own.
pub type Handler = dyn Fn(Request) -> Reply + Send + Sync;

/// The runtime every stand-in of the process serves on. It lives as long as the process, so a
/// stopped stand-in's connections still finish the requests they are answering, as they did
/// with a thread per connection.
fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(MAX_HANDLERS)
            .thread_name("standin-http")
            .enable_all()
            .build()
            .expect("cannot start the stand-in's tokio runtime")
    })
}

/// A running server. [`Server::stop`] (or dropping it) stops accepting connections; requests
/// being answered finish.
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    /// Disconnected once the listener is closed (in a mutex only to make the server `Sync`).
    stopped: Option<Mutex<mpsc::Receiver<()>>>,
}

impl Server {
    /// Listens on `listen` and answers each request with `handler`.
    pub fn start(listen: &str, handler: Arc<Handler>) -> io::Result<Server> {
        // Bound here, not in the runtime, so that a busy port is the caller's error at once.
        let listener = std::net::TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = runtime();
        let listener = {
            let _context = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let (stop, stopping) = oneshot::channel();
        let (done, stopped) = mpsc::channel();
        runtime.spawn(async move {
            accept(listener, handler, stopping).await;
            drop(done);
        });
        Ok(Server {
            addr,
            stop: Some(stop),
            stopped: Some(Mutex::new(stopped)),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the server stops.
    pub fn join(&mut self) {
        if let Some(stopped) = self.stopped.take() {
            // Nothing is ever sent: this returns when the accepting task drops its sender.
            let stopped = stopped.into_inner().unwrap_or_else(|p| p.into_inner());
            let _ = stopped.recv();
        }
    }

    /// Stops accepting connections; returns once the port is closed.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.join();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept(listener: TcpListener, handler: Arc<Handler>, mut stopping: oneshot::Receiver<()>) {
    loop {
        let accepted = tokio::select! {
            _ = &mut stopping => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, Arc::clone(&handler)));
            }
            // Out of file descriptors, or the client gave up already: let things settle.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Answers the requests of one connection until the client closes it or asks to.
async fn serve(stream: TcpStream, handler: Arc<Handler>) {
    let _ = stream.set_nodelay(true);
    let raw = Arc::new(Mutex::new(None));
    let socket = Socket {
        stream,
        raw: Arc::clone(&raw),
    };
    let service =
        service_fn(move |request| answer(request, Arc::clone(&handler), Arc::clone(&raw)));
    // The header timeout also runs while a kept-alive connection waits for its next request.
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT)
        .serve_connection(TokioIo::new(socket), service)
        .await;
}

/// The error that ends a connection without an answer: a handler that panicked.
type Abort = Box<dyn std::error::Error + Send + Sync>;

async fn answer(
    request: hyper::Request<Incoming>,
    handler: Arc<Handler>,
    raw: Arc<Mutex<Option<&'static [u8]>>>,
) -> Result<Response<Full<Bytes>>, Abort> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(body) => body.to_bytes().to_vec(),
        Err(e) => {
            let why =
                json!({"ok": false, "error_code": 400, "description": format!("Bad Request: {e}")});
            let mut response = json_response(400, why.to_string());
            // What is left of the body is unread: the connection cannot carry another request.
            response
                .headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            return Ok(response);
        }
    };
    let request = Request {
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        body,
    };
    let reply = tokio::task::spawn_blocking(move || handler(request)).await?;
    Ok(match reply {
        Reply::Json { status, body } => json_response(status, body.to_string()),
        Reply::Text { status, body } => json_response(status, body),
        Reply::Raw(bytes) => {
            // The socket writes these instead of this response, then ends the connection.
            *raw.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
            Response::new(Full::default())
        }
    })
}

/// A JSON response.
fn json_response(status: u16, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A connection's socket. Once a handler answered [`Reply::Raw`], it writes those bytes in
/// place of what hyper writes, then fails, so hyper closes the connection: the client gets
/// bytes that are not HTTP, which no HTTP library lets a server send.
struct Socket {
    stream: TcpStream,
    /// What is left to write of a [`Reply::Raw`].
    raw: Arc<Mutex<Option<&'static [u8]>>>,
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let mut raw = this.raw.lock().unwrap_or_else(|p| p.into_inner());
        let Some(left) = raw.as_mut() else {
            drop(raw);
            return Pin::new(&mut this.stream).poll_write(cx, buf);
        };
        while !left.is_empty() {
            let written = ready!(Pin::new(&mut this.stream).poll_write(cx, left))?;
            *left = &left[written..];
        }
        ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "answered with bytes that are not HTTP",
        )))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

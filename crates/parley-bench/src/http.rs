//! The HTTP client: one HTTP/1.1 keep-alive connection per task, no pool, no TLS, bodies
//! read whole.
//!
//! Written on a bare `TcpStream` rather than with hyper's client because the load generator
//! shares two cores with the server and every engine, so its CPU per request is taken from
//! what it measures. hyper's `client::conn` runs each connection as a second task fed through
//! a channel (a cross-task wake-up and a request/header map built per request); here a
//! request is one `write` of bytes laid out in a reused buffer and the answer is parsed in
//! place by `httparse` (hyper's own parser), in the task that sent it — what wrk does. It
//! speaks only what the scenarios need: no pipelining, no `Expect`, no upgrades.

use anyhow::{bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use http::header::HeaderValue;
use http::{Method, StatusCode, Uri};
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most header lines of an answer (the server sends about ten).
const MAX_HEADERS: usize = 64;
/// Longest head of an answer; a longer one is a broken server, not a large answer.
const MAX_HEAD: usize = 64 * 1024;
/// Read-buffer growth step.
const READ_CHUNK: usize = 16 * 1024;

/// The server under test, resolved once.
#[derive(Debug)]
pub struct Target {
    /// As given, without a trailing slash.
    pub url: String,
    addr: SocketAddr,
    /// The `Host` header's value.
    host: String,
    /// Path prefix of the API ("" at the root).
    prefix: String,
}

impl Target {
    pub async fn resolve(url: &str) -> Result<Arc<Self>> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("--url {url:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("--url {url:?}: only http:// is supported (plain HTTP/1.1)");
        }
        let authority = uri.authority().context("--url has no host")?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        Ok(Arc::new(Self {
            url: url.trim_end_matches('/').to_owned(),
            addr,
            host: authority.as_str().to_owned(),
            prefix: uri.path().trim_end_matches('/').to_owned(),
        }))
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// TCP connect failed.
    Connect,
    /// The connection broke while sending or reading, or the answer was not HTTP/1.1.
    Io,
    /// No whole answer within the timeout.
    Timeout,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Io => "io",
            Failure::Timeout => "timeout",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no answer from the server ({})", self.as_str())
    }
}

impl std::error::Error for Failure {}

/// One connection, reopened when it breaks, times out or the server closes it (the
/// reopening counts in the latency of the request that needed it).
pub struct Conn {
    target: Arc<Target>,
    stream: Option<TcpStream>,
    timeout: Duration,
    /// The request being sent, laid out again in place for each request.
    request: Vec<u8>,
    /// What the server sent that is not consumed yet.
    received: BytesMut,
}

impl Conn {
    pub fn new(target: Arc<Target>, timeout: Duration) -> Self {
        Self {
            target,
            stream: None,
            timeout,
            request: Vec::with_capacity(1024),
            received: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// Opens the connection now (before a measured window) rather than on first use.
    pub async fn open(&mut self) -> Result<(), Failure> {
        let stream = tokio::time::timeout(self.timeout, connect(self.target.addr))
            .await
            .map_err(|_| Failure::Timeout)??;
        self.stream = Some(stream);
        self.received.clear();
        Ok(())
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(
        &mut self,
        method: &Method,
        path: &str,
        auth: Option<&HeaderValue>,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), Failure> {
        self.lay_out(method, path, auth, body.as_deref());
        match tokio::time::timeout(self.timeout, self.exchange()).await {
            Ok(Ok((status, answer, keep_alive))) => {
                if !keep_alive {
                    self.stream = None;
                }
                Ok((status, answer))
            }
            Ok(Err(failure)) => {
                self.stream = None;
                Err(failure)
            }
            Err(_) => {
                self.stream = None;
                Err(Failure::Timeout)
            }
        }
    }

    fn lay_out(
        &mut self,
        method: &Method,
        path: &str,
        auth: Option<&HeaderValue>,
        body: Option<&[u8]>,
    ) {
        let r = &mut self.request;
        r.clear();
        r.extend_from_slice(method.as_str().as_bytes());
        r.push(b' ');
        r.extend_from_slice(self.target.prefix.as_bytes());
        r.extend_from_slice(path.as_bytes());
        r.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        r.extend_from_slice(self.target.host.as_bytes());
        if let Some(auth) = auth {
            r.extend_from_slice(b"\r\nauthorization: ");
            r.extend_from_slice(auth.as_bytes());
        }
        if body.is_some() {
            r.extend_from_slice(b"\r\ncontent-type: application/json");
        }
        // A POST or PUT without a body still says so, as hyper's client did.
        if body.is_some() || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
            let length = body.map_or(0, <[u8]>::len);
            // Into the reused buffer: no allocation per request.
            let _ = write!(r, "\r\ncontent-length: {length}");
        }
        r.extend_from_slice(b"\r\n\r\n");
        if let Some(body) = body {
            r.extend_from_slice(body);
        }
    }

    /// Writes the laid-out request and reads one answer: status, body, and whether the
    /// connection may carry the next request.
    async fn exchange(&mut self) -> Result<(StatusCode, Bytes, bool), Failure> {
        if self.stream.is_none() {
            self.stream = Some(connect(self.target.addr).await?);
            self.received.clear();
        }
        let stream = self.stream.as_mut().expect("connected above");
        stream
            .write_all(&self.request)
            .await
            .map_err(|_| Failure::Io)?;
        let head = loop {
            if let Some(head) = parse_head(&self.received)? {
                break head;
            }
            if self.received.len() > MAX_HEAD {
                return Err(Failure::Io);
            }
            fill(stream, &mut self.received).await?;
        };
        self.received.advance(head.length);
        let body = match head.framing {
            Framing::Empty => Bytes::new(),
            Framing::Length(n) => {
                while self.received.len() < n {
                    fill(stream, &mut self.received).await?;
                }
                self.received.split_to(n).freeze()
            }
            Framing::Chunked => read_chunked(stream, &mut self.received).await?,
            Framing::UntilClose => {
                while stream
                    .read_buf(&mut self.received)
                    .await
                    .map_err(|_| Failure::Io)?
                    > 0
                {}
                return Ok((head.status, self.received.split().freeze(), false));
            }
        };
        Ok((head.status, body, head.keep_alive))
    }

    /// A JSON exchange for setup steps: fails unless the status is `expect`.
    pub async fn json(
        &mut self,
        method: Method,
        path: &str,
        auth: Option<&HeaderValue>,
        body: Option<serde_json::Value>,
        expect: StatusCode,
    ) -> Result<serde_json::Value> {
        let body = body.map(|b| Bytes::from(serde_json::to_vec(&b).expect("JSON serialises")));
        let (status, answer) = self.send(&method, path, auth, body).await?;
        if status != expect {
            bail!(
                "{method} {path}: expected {expect}, got {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        if answer.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&answer)
            .with_context(|| format!("{method} {path}: answer is not JSON"))
    }
}

/// What an answer's head says.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: StatusCode,
    /// Bytes of the head, blank line included.
    length: usize,
    framing: Framing,
    keep_alive: bool,
}

/// How an answer's body is delimited (RFC 9112 §6.3).
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

/// The head at the start of `received`, or `None` if it is not all there yet.
fn parse_head(received: &[u8]) -> Result<Option<Head>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(received) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Failure::Io),
    };
    let code = response.code.ok_or(Failure::Io)?;
    let status = StatusCode::from_u16(code).map_err(|_| Failure::Io)?;
    // The client sends no `Expect` and asks for no upgrade: an interim answer is a broken
    // exchange, not something to wait past.
    if status.is_informational() {
        return Err(Failure::Io);
    }
    let mut keep_alive = response.version == Some(1);
    let mut framing = None;
    let mut chunked = false;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or(Failure::Io)?;
            if framing.is_some_and(|f| f != Framing::Length(n)) {
                return Err(Failure::Io);
            }
            framing = Some(Framing::Length(n));
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = header
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if header.name.eq_ignore_ascii_case("connection") {
            let close = header
                .value
                .split(|b| *b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
            keep_alive &= !close;
        }
    }
    let framing = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else {
        framing.unwrap_or(Framing::UntilClose)
    };
    Ok(Some(Head {
        status,
        length,
        framing,
        keep_alive,
    }))
}

/// Reads a chunked body (its trailers dropped) from `received` and then the stream.
async fn read_chunked(stream: &mut TcpStream, received: &mut BytesMut) -> Result<Bytes, Failure> {
    let mut body = BytesMut::new();
    loop {
        let (skip, size) = loop {
            match httparse::parse_chunk_size(received) {
                Ok(httparse::Status::Complete((skip, size))) => break (skip, size),
                Ok(httparse::Status::Partial) => fill(stream, received).await?,
                Err(_) => return Err(Failure::Io),
            }
        };
        received.advance(skip);
        let size = usize::try_from(size).map_err(|_| Failure::Io)?;
        if size == 0 {
            // Trailers, if any, end with an empty line like the head does.
            loop {
                if received.starts_with(b"\r\n") {
                    received.advance(2);
                    break;
                }
                if let Some(end) = find(received, b"\r\n\r\n") {
                    received.advance(end + 4);
                    break;
                }
                fill(stream, received).await?;
            }
            return Ok(body.freeze());
        }
        while received.len() < size + 2 {
            fill(stream, received).await?;
        }
        body.extend_from_slice(&received[..size]);
        if &received[size..size + 2] != b"\r\n" {
            return Err(Failure::Io);
        }
        received.advance(size + 2);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads more of the answer; the server closing mid-answer is a broken exchange.
async fn fill(stream: &mut TcpStream, received: &mut BytesMut) -> Result<(), Failure> {
    received.reserve(READ_CHUNK);
    match stream.read_buf(received).await {
        Ok(0) | Err(_) => Err(Failure::Io),
        Ok(_) => Ok(()),
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, Failure> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|_| Failure::Connect)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// `Authorization` value for a bearer token.
pub fn bearer(token: &str) -> Result<HeaderValue> {
    Ok(HeaderValue::from_str(&format!("Bearer {token}"))?)
}

/// `Authorization` value for HTTP Basic.
pub fn basic(email: &str, password: &str) -> Result<HeaderValue> {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{email}:{password}"));
    Ok(HeaderValue::from_str(&format!("Basic {encoded}"))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// What the canned server does with the next request.
    enum Answer {
        /// Writes these bytes and reads the next request on the same connection.
        Send(&'static [u8]),
        /// Writes these bytes and closes the connection.
        SendAndClose(&'static [u8]),
        /// Never answers.
        Silent,
    }

    /// A request as the server parsed it.
    #[derive(Debug)]
    struct Seen {
        connection: usize,
        head: String,
        body: Vec<u8>,
    }

    /// A server on a real socket that gives each request the next canned answer and reports
    /// what it read, with the number of the connection it came on.
    async fn canned(answers: Vec<Answer>) -> (Arc<Target>, mpsc::UnboundedReceiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/v1", listener.local_addr().unwrap());
        let (tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut answers = answers.into_iter();
            let mut connection = 0;
            while let Ok((mut socket, _)) = listener.accept().await {
                connection += 1;
                let mut buf = Vec::new();
                while let Some((head, body)) = read_request(&mut socket, &mut buf).await {
                    tx.send(Seen {
                        connection,
                        head,
                        body,
                    })
                    .unwrap();
                    match answers.next() {
                        Some(Answer::Send(bytes)) => socket.write_all(bytes).await.unwrap(),
                        Some(Answer::SendAndClose(bytes)) => {
                            socket.write_all(bytes).await.unwrap();
                            break;
                        }
                        Some(Answer::Silent) => std::future::pending::<()>().await,
                        None => return,
                    }
                }
            }
        });
        (Target::resolve(&url).await.unwrap(), seen)
    }

    /// One request's head (as text) and body, or `None` once the client closed.
    async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut request = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = request.parse(buf) {
                let length: usize = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |h| {
                        std::str::from_utf8(h.value).unwrap().parse().unwrap()
                    });
                if buf.len() >= n + length {
                    let head = String::from_utf8(buf[..n].to_vec()).unwrap();
                    let body = buf[n..n + length].to_vec();
                    buf.drain(..n + length);
                    return Some((head, body));
                }
            }
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn get(conn: &mut Conn) -> Result<(StatusCode, Bytes), Failure> {
        conn.send(&Method::GET, "/health", None, None).await
    }

    /// The connections the next `n` requests came on.
    async fn connections_of(seen: &mut mpsc::UnboundedReceiver<Seen>, n: usize) -> Vec<usize> {
        let mut connections = Vec::new();
        for _ in 0..n {
            connections.push(seen.recv().await.unwrap().connection);
        }
        connections
    }

    const OK: &[u8] = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 19\r\n\r\n{\"messageNumber\":7}";

    #[tokio::test]
    async fn requests_are_laid_out_and_answers_read_on_one_connection() {
        let (target, mut seen) = canned(vec![Answer::Send(OK), Answer::Send(OK)]).await;
        let mut conn = Conn::new(target, Duration::from_secs(5));
        let auth = bearer("t0ken").unwrap();
        for _ in 0..2 {
            let body = Bytes::from_static(b"{\"body\":\"hi\"}");
            let (status, answer) = conn
                .send(
                    &Method::POST,
                    "/applications/a/chats/1/messages",
                    Some(&auth),
                    Some(body),
                )
                .await
                .unwrap();
            assert_eq!(status, StatusCode::CREATED);
            assert_eq!(&answer[..], b"{\"messageNumber\":7}");
        }
        for _ in 0..2 {
            let request = seen.recv().await.unwrap();
            assert_eq!(request.connection, 1, "keep-alive: one connection for both");
            let head = request.head.to_ascii_lowercase();
            assert!(head.starts_with("post /api/v1/applications/a/chats/1/messages http/1.1\r\n"));
            assert!(head.contains("\r\nauthorization: bearer t0ken\r\n"));
            assert!(head.contains("\r\ncontent-type: application/json\r\n"));
            assert!(head.contains("\r\ncontent-length: 13\r\n"));
            assert!(head.contains("\r\nhost: 127.0.0.1:"));
            assert_eq!(request.body, b"{\"body\":\"hi\"}");
        }
    }

    #[tokio::test]
    async fn a_post_without_a_body_says_its_length_is_zero() {
        let (target, mut seen) = canned(vec![Answer::Send(OK)]).await;
        let mut conn = Conn::new(target, Duration::from_secs(5));
        conn.send(&Method::POST, "/applications/a/chats", None, None)
            .await
            .unwrap();
        let head = seen.recv().await.unwrap().head.to_ascii_lowercase();
        assert!(head.contains("\r\ncontent-length: 0\r\n"), "{head}");
        assert!(!head.contains("authorization"), "{head}");
    }

    #[tokio::test]
    async fn chunked_bodies_and_empty_answers_are_read_whole() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
        let empty = b"HTTP/1.1 204 No Content\r\n\r\n";
        let (target, mut seen) = canned(vec![
            Answer::Send(chunked),
            Answer::Send(empty),
            Answer::Send(OK),
        ])
        .await;
        let mut conn = Conn::new(target, Duration::from_secs(5));
        let (status, body) = get(&mut conn).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello world"[..]));
        let (status, body) = conn
            .send(&Method::DELETE, "/users/me", None, None)
            .await
            .unwrap();
        assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
        // The trailer and the empty answer were consumed exactly: the next answer reads clean.
        let (status, _) = get(&mut conn).await.unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(connections_of(&mut seen, 3).await, [1, 1, 1]);
    }

    #[tokio::test]
    async fn a_closing_server_costs_a_reconnect_not_an_error() {
        let close = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
        let until_close = b"HTTP/1.1 200 OK\r\n\r\nall of it";
        let (target, mut seen) = canned(vec![
            Answer::SendAndClose(close),
            Answer::SendAndClose(until_close),
            Answer::Send(OK),
        ])
        .await;
        let mut conn = Conn::new(target, Duration::from_secs(5));
        let (_, body) = get(&mut conn).await.unwrap();
        assert_eq!(&body[..], b"ok");
        let (_, body) = get(&mut conn).await.unwrap();
        assert_eq!(
            &body[..],
            b"all of it",
            "no length: the body runs to the close"
        );
        let (status, _) = get(&mut conn).await.unwrap();
        assert_eq!(status, StatusCode::CREATED);
        let connections = connections_of(&mut seen, 3).await;
        assert_eq!(connections, [1, 2, 3]);
    }

    #[tokio::test]
    async fn broken_and_missing_answers_are_failures_and_the_next_request_reconnects() {
        let cut = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort";
        let garbage = b"SMTP ready\r\n\r\n";
        let (target, mut seen) = canned(vec![
            Answer::SendAndClose(cut),
            Answer::Send(garbage),
            Answer::Silent,
        ])
        .await;
        let mut conn = Conn::new(target.clone(), Duration::from_secs(5));
        let cut = get(&mut conn).await;
        assert_eq!(cut.unwrap_err(), Failure::Io, "closed mid-body");
        let garbage = get(&mut conn).await;
        assert_eq!(garbage.unwrap_err(), Failure::Io, "not HTTP");
        let mut conn = Conn::new(target, Duration::from_millis(200));
        let silent = get(&mut conn).await;
        assert_eq!(silent.unwrap_err(), Failure::Timeout);
        let connections = connections_of(&mut seen, 3).await;
        assert_eq!(
            connections,
            [1, 2, 3],
            "each failure dropped its connection"
        );
    }
}

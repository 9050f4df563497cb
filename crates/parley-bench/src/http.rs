//! The HTTP client: one hyper HTTP/1.1 connection per task (`client::conn::http1`), no pool,
//! no TLS, bodies read whole. The load generator shares the machine with the server, so the
//! client is the cheapest one hyper offers.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// The server under test, resolved once.
#[derive(Debug)]
pub struct Target {
    /// As given, without a trailing slash.
    pub url: String,
    addr: SocketAddr,
    host: HeaderValue,
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
            host: HeaderValue::from_str(authority.as_str())?,
            prefix: uri.path().trim_end_matches('/').to_owned(),
        }))
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// TCP connect or the HTTP handshake failed.
    Connect,
    /// The connection broke while sending or reading.
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

/// One connection, reopened when it breaks or times out (the reopening counts in the
/// latency of the request that needed it).
pub struct Conn {
    target: Arc<Target>,
    sender: Option<SendRequest<Full<Bytes>>>,
    timeout: Duration,
}

impl Conn {
    pub fn new(target: Arc<Target>, timeout: Duration) -> Self {
        Self {
            target,
            sender: None,
            timeout,
        }
    }

    /// Opens the connection now (before a measured window) rather than on first use.
    pub async fn open(&mut self) -> Result<(), Failure> {
        let sender = tokio::time::timeout(self.timeout, connect(self.target.addr))
            .await
            .map_err(|_| Failure::Timeout)??;
        self.sender = Some(sender);
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
        let uri = if self.target.prefix.is_empty() {
            Uri::try_from(path)
        } else {
            Uri::try_from(format!("{}{path}", self.target.prefix))
        }
        .expect("scenarios build valid paths");
        let mut request = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(HOST, self.target.host.clone());
        if let Some(auth) = auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        if body.is_some() {
            request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .expect("valid request parts");
        match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(failure)) => {
                self.sender = None;
                Err(failure)
            }
            Err(_) => {
                self.sender = None;
                Err(Failure::Timeout)
            }
        }
    }

    async fn exchange(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), Failure> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Some(connect(self.target.addr).await?);
        }
        let sender = self.sender.as_mut().expect("connected above");
        sender.ready().await.map_err(|_| Failure::Io)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|_| Failure::Io)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|_| Failure::Io)?
            .to_bytes();
        Ok((status, body))
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

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, Failure> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|_| Failure::Connect)?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| Failure::Connect)?;
    tokio::spawn(async move {
        // Ends when the connection closes; a broken one shows up in the next send.
        let _ = connection.await;
    });
    Ok(sender)
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

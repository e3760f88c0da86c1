//! Plain `http://` checks on hyper's low-level HTTP/1.1 client, over a TCP connection this
//! module opens itself, instead of going through reqwest.
//!
//! Why: a check is one request on a fresh connection, and at hundreds of checks a second
//! reqwest's machinery (connector stack, pool bookkeeping with pooling off, a spawned task per
//! connection, keep-alive and nodelay socket options, the peer and local address lookups for
//! connection info) cost about 5x monit's user CPU per check (issue #7). Here the request
//! and its connection are polled in the probe's own task, and the only system calls are the
//! ones a request needs: socket, connect, write, read, close (and the epoll registration).
//!
//! Same semantics as the reqwest path (which still serves `https://` and URLs with
//! credentials): a fresh connection per check, no proxy, no redirects, the same default
//! headers (`user-agent`, `accept: */*`, `host` from the URL unless overridden), names are
//! resolved at every check and tried like hyper-util does (the next address starts
//! [`NEXT_ADDRESS_AFTER`] after the previous one, or at once when it fails).

use std::future::{Future, poll_fn};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::Connection;
use hyper::header::{ACCEPT, HOST, HeaderMap, HeaderValue, USER_AGENT};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Like hyper-util's happy-eyeballs delay: a name with several addresses does not wait on an
/// address that neither answers nor refuses longer than this before trying the next.
const NEXT_ADDRESS_AFTER: Duration = Duration::from_millis(300);

/// Where a plain-HTTP probe connects, and what it asks for: parsed once.
#[derive(Debug)]
pub struct Target {
    /// An IP literal is connected to directly; a name is resolved at each check.
    ip: Option<IpAddr>,
    name: String,
    port: u16,
    /// Origin form: path and query.
    path: Uri,
    /// The `host` header the URL implies (`name[:port]`, the port only when not 80).
    authority: HeaderValue,
}

impl Target {
    /// `None` when the URL is not for this path: not `http://`, or it carries credentials
    /// (reqwest turns those into basic auth: that path keeps them).
    pub fn from_url(url: &reqwest::Url) -> Option<Target> {
        if url.scheme() != "http" || !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        let host = url.host_str()?;
        let name = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let ip = name.parse::<IpAddr>().ok();
        let port = url.port_or_known_default()?;
        let authority = match url.port() {
            Some(p) => HeaderValue::from_str(&format!("{host}:{p}")),
            None => HeaderValue::from_str(host),
        }
        .ok()?;
        let path = match url.query() {
            Some(q) => Uri::try_from(format!("{}?{q}", url.path())),
            None => Uri::try_from(url.path()),
        }
        .ok()?;
        Some(Target {
            ip,
            name,
            port,
            path,
            authority,
        })
    }

    /// The headers every check sends, `extra` (the probe's own, in order) first; the default
    /// ones only where `extra` did not set them, as reqwest does.
    pub fn headers(&self, mut extra: HeaderMap) -> HeaderMap {
        if !extra.contains_key(HOST) {
            extra.insert(HOST, self.authority.clone());
        }
        if !extra.contains_key(USER_AGENT) {
            extra.insert(
                USER_AGENT,
                HeaderValue::from_static(super::http::USER_AGENT),
            );
        }
        if !extra.contains_key(ACCEPT) {
            extra.insert(ACCEPT, HeaderValue::from_static("*/*"));
        }
        extra
    }

    pub fn request(&self, method: &Method, headers: HeaderMap) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.method_mut() = method.clone();
        *req.uri_mut() = self.path.clone();
        *req.headers_mut() = headers;
        req
    }

    /// A fresh TCP connection to the target.
    pub async fn connect(&self) -> io::Result<TcpStream> {
        if let Some(ip) = self.ip {
            return TcpStream::connect(SocketAddr::new(ip, self.port)).await;
        }
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((self.name.as_str(), self.port))
            .await?
            .collect();
        if let [only] = addresses[..] {
            return TcpStream::connect(only).await;
        }
        connect_first(addresses).await
    }
}

/// Tries the addresses in order, starting the next one when the previous failed or has not
/// answered within [`NEXT_ADDRESS_AFTER`]; the first connection made wins. The error is the
/// last address's.
async fn connect_first(addresses: Vec<SocketAddr>) -> io::Result<TcpStream> {
    let mut pending = addresses.into_iter();
    let mut attempts = tokio::task::JoinSet::new();
    let mut last_error = None;
    loop {
        if let Some(address) = pending.next() {
            attempts.spawn(TcpStream::connect(address));
        } else if attempts.is_empty() {
            return Err(last_error.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "the name has no address")
            }));
        }
        let more = pending.len() > 0;
        tokio::select! {
            Some(joined) = attempts.join_next() => match joined {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(e)) => last_error = Some(e),
                Err(e) => last_error = Some(io::Error::other(e)),
            },
            _ = tokio::time::sleep(NEXT_ADDRESS_AFTER), if more => {}
        }
    }
}

/// One request on its own connection. The connection is driven only while the caller awaits
/// the response or the body (through [`Exchange::drive`]): no task is spawned for it, and
/// dropping the exchange closes it.
pub struct Exchange {
    /// `None` once it ended: dropping it then lets a waiting request or body see the end.
    conn: Option<Connection<TokioIo<TcpStream>, Empty<Bytes>>>,
}

impl Exchange {
    /// Sends `req` on `stream` and waits for the response head.
    pub async fn send(
        stream: TcpStream,
        req: Request<Empty<Bytes>>,
    ) -> Result<(Response<Incoming>, Exchange), hyper::Error> {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let mut exchange = Exchange { conn: Some(conn) };
        let response = exchange.drive(sender.send_request(req)).await?;
        Ok((response, exchange))
    }

    /// The next piece of the body, `None` at its end.
    pub async fn chunk(&mut self, body: &mut Incoming) -> Result<Option<Bytes>, hyper::Error> {
        loop {
            match self.drive(body.frame()).await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                    // Trailers: nothing a check looks at.
                }
            }
        }
    }

    /// Polls `f`, and the connection behind it, until `f` is ready.
    async fn drive<F: Future>(&mut self, f: F) -> F::Output {
        let mut f = pin!(f);
        poll_fn(|cx| {
            if let Poll::Ready(out) = f.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            if let Some(conn) = self.conn.as_mut()
                && Pin::new(conn).poll(cx).is_ready()
            {
                // The connection ended; its error, if any, is also the request's or the
                // body's. Dropping it closes their channels, so `f` ends too.
                self.conn = None;
                return f.as_mut().poll(cx);
            }
            Poll::Pending
        })
        .await
    }
}

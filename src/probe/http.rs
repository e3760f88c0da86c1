//! `kind = "http"`: one request on a fresh connection; status, latency, and a bounded body.
//!
//! - A fresh connection per check: a pooled keep-alive connection would keep answering from a
//!   server whose listener stopped accepting, hiding exactly the failure we look for.
//! - No redirects are followed: a 3xx is an answer (in the default 200-399 range).
//! - No proxy from the environment: the probe tests the target, not `HTTP_PROXY`.
//! - At most `max_body` bytes are read, and only when a body check needs them; the probe's
//!   hard timeout stops a server trickling one byte a second.
//! - Plain `http://` goes through [`super::http1`] (hyper's own HTTP/1.1 client on a
//!   connection we open: a fraction of reqwest's CPU per check); `https://`, and URLs with
//!   credentials in them, through reqwest. Reqwest clients are built only when a probe needs one.

use std::time::Instant;

use base64::Engine as _;
use hyper::body::{Bytes, Incoming};
use reqwest::header::{AUTHORIZATION, HOST, HeaderMap, HeaderName, HeaderValue};

use super::http1::{self, Exchange};
use super::tcp::contains;
use super::{Outcome, Phase, human, root_cause, snippet};
use crate::config::HttpCheck;

/// The two clients probes share (checking certificates, and not): built on first use, cheap to
/// clone. One client per probe would cost memory per probe for nothing.
#[derive(Debug, Default)]
pub struct HttpClients {
    verifying: Option<reqwest::Client>,
    insecure: Option<reqwest::Client>,
}

impl HttpClients {
    fn get(&mut self, insecure: bool) -> reqwest::Client {
        let slot = if insecure {
            &mut self.insecure
        } else {
            &mut self.verifying
        };
        slot.get_or_insert_with(|| build_client(insecure)).clone()
    }
}

/// Installs the ring crypto provider for rustls, once per process. reqwest is built without a
/// provider (see Cargo.toml); without this, building a client would panic.
impl HttpClients {
    /// Installs the ring crypto provider for rustls, once per process.
    pub fn install_crypto_provider() {
        install_crypto_provider()
    }
}

pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider is already installed, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Every HTTP client of the watchdog starts here: the TLS provider installed (without it
/// reqwest panics) and no proxy from the environment (we talk to the target, not HTTP_PROXY).
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder().no_proxy()
}

fn build_client(insecure: bool) -> reqwest::Client {
    client_builder()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .tls_danger_accept_invalid_certs(insecure)
        .user_agent(USER_AGENT)
        .build()
        // Building fails only on a broken TLS backend: there is nothing to run without it.
        .unwrap_or_else(|e| {
            eprintln!("watchdog: cannot build the HTTP client: {e}");
            std::process::exit(70)
        })
}

pub(crate) const USER_AGENT: &str = concat!("uptime-watchdog/", env!("CARGO_PKG_VERSION"));

#[derive(Debug)]
pub struct HttpProbe {
    check: HttpCheck,
    transport: Transport,
    method: reqwest::Method,
    /// Parsed once: parsing (IDNA included) at every check was measurable at 10,000 probes.
    url: Result<reqwest::Url, String>,
}

// Once per probe, and the probe is boxed already (`Probe::Http`).
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Transport {
    /// `http://`: hyper on our own connection. The headers (all but basic auth, whose secret
    /// is read at each check) are built once.
    Plain {
        target: http1::Target,
        headers: Result<HeaderMap, String>,
    },
    /// `https://` (and URLs with credentials): reqwest.
    Reqwest(reqwest::Client),
}

/// A response whose body may still be read. It lives in the check's future: boxing the large
/// variant would cost an allocation per check for nothing.
#[allow(clippy::large_enum_variant)]
enum Body {
    Plain(Exchange, Incoming),
    Reqwest(reqwest::Response),
}

impl Body {
    /// The next piece of the body, `None` at its end; an error as its root cause.
    async fn chunk(&mut self) -> Result<Option<Bytes>, String> {
        match self {
            Body::Plain(exchange, body) => exchange.chunk(body).await.map_err(|e| root_cause(&e)),
            Body::Reqwest(r) => r.chunk().await.map_err(|e| root_cause(&e)),
        }
    }
}

impl HttpProbe {
    pub fn new(check: HttpCheck, clients: &mut HttpClients) -> Self {
        // Checked by config; GET is a safe fallback should it ever not be.
        let method =
            reqwest::Method::from_bytes(check.method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let url =
            reqwest::Url::parse(&check.url).map_err(|e| format!("bad url {}: {e}", check.url));
        let target = url.as_ref().ok().and_then(http1::Target::from_url);
        let transport = match target {
            Some(target) => {
                let headers = plain_headers(&check).map(|extra| target.headers(extra));
                Transport::Plain { target, headers }
            }
            None => Transport::Reqwest(clients.get(check.insecure_tls)),
        };
        HttpProbe {
            check,
            transport,
            method,
            url,
        }
    }

    fn request(&self, client: &reqwest::Client) -> Result<reqwest::RequestBuilder, String> {
        let url = self.url.clone()?;
        let mut req = client.request(self.method.clone(), url);
        for (k, v) in &self.check.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                req = req.header(k, v);
            }
        }
        if let Some(host) = &self.check.host {
            let value = HeaderValue::from_str(host)
                .map_err(|_| format!("host `{host}` is not a valid header value"))?;
            req = req.header(HOST, value);
        }
        if let Some((user, password)) = &self.check.basic_auth {
            let password = password
                .resolve()
                .map_err(|e| format!("basic auth password: {e}"))?;
            req = req.basic_auth(user, Some(password.expose()));
        }
        Ok(req)
    }

    /// Sends the request; the status and the body still to read, or the failed outcome.
    async fn send(&self, phase: &Phase, started: Instant) -> Result<(u16, Body), Outcome> {
        let fail = |reason: String| Outcome::fail(started.elapsed(), reason);
        match &self.transport {
            Transport::Plain { target, headers } => {
                let mut headers = headers.clone().map_err(fail)?;
                if let Some((user, password)) = &self.check.basic_auth {
                    let password = password
                        .resolve()
                        .map_err(|e| fail(format!("basic auth password: {e}")))?;
                    headers.append(AUTHORIZATION, basic_auth(user, password.expose()));
                }
                let req = target.request(&self.method, headers);
                let stream = target
                    .connect()
                    .await
                    .map_err(|e| fail(format!("connect failed: {}", root_cause(&e))))?;
                phase.set("waiting for the response");
                let (response, exchange) = Exchange::send(stream, req)
                    .await
                    .map_err(|e| fail(format!("bad response: {}", root_cause(&e))))?;
                let status = response.status().as_u16();
                Ok((status, Body::Plain(exchange, response.into_body())))
            }
            Transport::Reqwest(client) => {
                let req = self.request(client).map_err(fail)?;
                phase.set("waiting for the response");
                let response = req
                    .send()
                    .await
                    .map_err(|e| fail(describe_send_error(&e)))?;
                Ok((response.status().as_u16(), Body::Reqwest(response)))
            }
        }
    }

    pub async fn check(&self, phase: &Phase, started: Instant) -> Outcome {
        let (status, mut response) = match self.send(phase, started).await {
            Ok(sent) => sent,
            Err(outcome) => return outcome,
        };
        let headers_latency = started.elapsed();
        if !self.check.expect_status.contains(status) {
            return Outcome::fail(
                headers_latency,
                format!("HTTP {status} in {}", human(headers_latency)),
            );
        }

        let wants_body = self.check.body_contains.is_some() || self.check.body_matches.is_some();
        let mut body = Vec::new();
        let mut truncated = false;
        if wants_body {
            phase.set("reading the body");
            let limit = self.check.max_body;
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        let room = limit - body.len();
                        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                        if chunk.len() > room || body.len() == limit {
                            // Enough: dropping the response closes the connection.
                            truncated = chunk.len() > room;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(cause) => {
                        return Outcome::fail(
                            started.elapsed(),
                            format!(
                                "HTTP {status}, then the body failed after {} bytes: {cause}",
                                body.len(),
                            ),
                        );
                    }
                }
            }
        }
        let latency = started.elapsed();
        let within = if truncated {
            format!(" (in the first {})", size(self.check.max_body))
        } else {
            String::new()
        };
        if let Some(needle) = &self.check.body_contains
            && !contains(&body, needle.as_bytes())
        {
            return Outcome::fail(
                latency,
                format!(
                    "HTTP {status} in {}, but the body lacks \"{}\"{within}",
                    human(latency),
                    snippet(needle.as_bytes(), 60)
                ),
            );
        }
        if let Some(re) = &self.check.body_matches
            && !re.is_match(&String::from_utf8_lossy(&body))
        {
            return Outcome::fail(
                latency,
                format!(
                    "HTTP {status} in {}, but the body does not match /{}/{within}",
                    human(latency),
                    re.as_str()
                ),
            );
        }
        if let Some(max) = self.check.max_latency
            && latency > max
        {
            return Outcome::fail(
                latency,
                format!(
                    "HTTP {status} in {}, slower than max_latency {}",
                    human(latency),
                    human(max)
                ),
            );
        }
        Outcome::ok(latency, healthy_reason(status, latency))
    }
}

/// "HTTP 200 in 3 ms", as `human` words it, written in one allocation: this is the reason of
/// every healthy check.
fn healthy_reason(status: u16, latency: std::time::Duration) -> String {
    use std::fmt::Write as _;
    let mut reason = String::with_capacity(24);
    let ms = latency.as_millis();
    if ms < 1000 {
        // `human` rounds to the nearest millisecond.
        let rounded = (latency.as_micros() + 500) / 1000;
        let _ = write!(reason, "HTTP {status} in {rounded} ms");
    } else {
        let _ = write!(reason, "HTTP {status} in {}", human(latency));
    }
    reason
}

/// The probe's own headers for the plain path, as the reqwest path adds them: `headers` in
/// order (invalid ones were rejected by the config check), then `host`.
fn plain_headers(check: &HttpCheck) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (k, v) in &check.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    if let Some(host) = &check.host {
        let value = HeaderValue::from_str(host)
            .map_err(|_| format!("host `{host}` is not a valid header value"))?;
        headers.append(HOST, value);
    }
    Ok(headers)
}

/// `Basic base64(user:password)`, marked sensitive, as reqwest builds it.
fn basic_auth(user: &str, password: &str) -> HeaderValue {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

fn describe_send_error(e: &reqwest::Error) -> String {
    let cause = root_cause(e);
    if e.is_connect() {
        format!("connect failed: {cause}")
    } else if e.is_timeout() {
        format!("timed out: {cause}")
    } else {
        // Garbage instead of HTTP, a reset mid-headers, a TLS failure...
        format!("bad response: {cause}")
    }
}

fn size(bytes: usize) -> String {
    if bytes.is_multiple_of(1024 * 1024) {
        format!("{} MiB", bytes / (1024 * 1024))
    } else if bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn healthy_reason_words_latency_like_human() {
        for micros in [
            0, 499, 500, 2_400, 999_499, 999_500, 999_999, 1_000_000, 1_500_000,
        ] {
            let d = Duration::from_micros(micros);
            assert_eq!(
                healthy_reason(200, d),
                format!("HTTP 200 in {}", human(d)),
                "{micros} us"
            );
        }
    }
}

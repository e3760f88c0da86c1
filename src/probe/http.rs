//! `kind = "http"`: one request on a fresh connection; status, latency, and a bounded body.
//!
//! - A fresh connection per check: a pooled keep-alive connection would keep answering from a
//!   server whose listener stopped accepting, hiding exactly the failure we look for.
//! - No redirects are followed: a 3xx is an answer (in the default 200-399 range).
//! - No proxy from the environment: the probe tests the target, not `HTTP_PROXY`.
//! - At most `max_body` bytes are read, and only when a body check needs them; the probe's
//!   hard timeout stops a server trickling one byte a second.

use std::time::Instant;

use reqwest::header::{HOST, HeaderName, HeaderValue};

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
        .user_agent(concat!("uptime-watchdog/", env!("CARGO_PKG_VERSION")))
        .build()
        // Building fails only on a broken TLS backend: there is nothing to run without it.
        .unwrap_or_else(|e| {
            eprintln!("watchdog: cannot build the HTTP client: {e}");
            std::process::exit(70)
        })
}

#[derive(Debug)]
pub struct HttpProbe {
    check: HttpCheck,
    client: reqwest::Client,
    method: reqwest::Method,
    /// Parsed once: parsing (IDNA included) at every check was measurable at 10,000 probes.
    url: Result<reqwest::Url, String>,
}

impl HttpProbe {
    pub fn new(check: HttpCheck, clients: &mut HttpClients) -> Self {
        let client = clients.get(check.insecure_tls);
        // Checked by config; GET is a safe fallback should it ever not be.
        let method =
            reqwest::Method::from_bytes(check.method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let url =
            reqwest::Url::parse(&check.url).map_err(|e| format!("bad url {}: {e}", check.url));
        HttpProbe {
            check,
            client,
            method,
            url,
        }
    }

    fn request(&self) -> Result<reqwest::RequestBuilder, String> {
        let url = self.url.clone()?;
        let mut req = self.client.request(self.method.clone(), url);
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

    pub async fn check(&self, phase: &Phase, started: Instant) -> Outcome {
        let req = match self.request() {
            Ok(r) => r,
            Err(e) => return Outcome::fail(started.elapsed(), e),
        };
        phase.set("waiting for the response");
        let mut response = match req.send().await {
            Ok(r) => r,
            Err(e) => return Outcome::fail(started.elapsed(), describe_send_error(&e)),
        };
        let status = response.status().as_u16();
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
                    Err(e) => {
                        return Outcome::fail(
                            started.elapsed(),
                            format!(
                                "HTTP {status}, then the body failed after {} bytes: {}",
                                body.len(),
                                root_cause(&e)
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
        Outcome::ok(latency, format!("HTTP {status} in {}", human(latency)))
    }
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

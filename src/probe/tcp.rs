//! `kind = "tcp"`: connect, optionally send a line and expect a banner.
//!
//! A bare connect proves only that the kernel completed a handshake: a listener whose
//! application stopped calling accept() still completes a few (its backlog). `expect` proves
//! the application itself answered.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Outcome, Phase, human, root_cause, snippet};
use crate::config::TcpCheck;

/// Banners are short; reading more would only let a chatty peer cost us memory.
const MAX_BANNER: usize = 4096;

#[derive(Debug)]
pub struct TcpProbe {
    check: TcpCheck,
}

impl TcpProbe {
    pub fn new(check: TcpCheck) -> Self {
        TcpProbe { check }
    }

    pub async fn check(&self, phase: &Phase, started: Instant) -> Outcome {
        phase.set("connecting");
        let mut stream = match TcpStream::connect(&self.check.address).await {
            Ok(s) => s,
            Err(e) => {
                return Outcome::fail(
                    started.elapsed(),
                    format!(
                        "connect to {} failed: {}",
                        self.check.address,
                        root_cause(&e)
                    ),
                );
            }
        };
        if let Some(send) = &self.check.send {
            phase.set("sending");
            if let Err(e) = stream.write_all(send.as_bytes()).await {
                return Outcome::fail(
                    started.elapsed(),
                    format!("send failed: {}", root_cause(&e)),
                );
            }
        }
        let Some(expect) = &self.check.expect else {
            return Outcome::ok(
                started.elapsed(),
                format!("connected in {}", human(started.elapsed())),
            );
        };
        phase.set("waiting for the banner");
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        loop {
            if contains(&buf, expect.as_bytes()) {
                let line = buf.split(|b| *b == b'\n').next().unwrap_or(&buf);
                return Outcome::ok(
                    started.elapsed(),
                    format!(
                        "banner \"{}\" in {}",
                        snippet(line.trim_ascii(), 60),
                        human(started.elapsed())
                    ),
                );
            }
            if buf.len() >= MAX_BANNER {
                return Outcome::fail(
                    started.elapsed(),
                    format!(
                        "no \"{expect}\" in the first {MAX_BANNER} bytes: \"{}\"",
                        snippet(&buf, 60)
                    ),
                );
            }
            match stream.read(&mut chunk).await {
                Ok(0) => {
                    let got = if buf.is_empty() {
                        "nothing".to_string()
                    } else {
                        format!("\"{}\"", snippet(&buf, 60))
                    };
                    return Outcome::fail(
                        started.elapsed(),
                        format!("connection closed before \"{expect}\" (got {got})"),
                    );
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n.min(MAX_BANNER - buf.len().min(MAX_BANNER))])
                }
                Err(e) => {
                    return Outcome::fail(
                        started.elapsed(),
                        format!("read failed: {}", root_cause(&e)),
                    );
                }
            }
        }
    }
}

pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

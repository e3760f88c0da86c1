//! `kind = "webhook"`: the incident as JSON, POSTed when it fires, when the watchdog gives up,
//! and when it resolves; or, with `format = "slack"`, a `{"text": ...}` body for chat webhooks.
//!
//! [`Page`] is what every pager kind is handed (the JSON body is its public form). [`deliver`]
//! is one attempt with a timeout; [`send`] is this kind's entry for `super::pager`, the queue
//! task every pager kind shares.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::pager::{Failure, render};
use crate::clock::Timestamp;
use crate::config::{WebhookAction, WebhookFormat};
use crate::rules::{IncidentView, PageEvent};

/// The JSON body. Field names are a public contract: documented in README.md.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Page {
    /// `firing`, `giving_up` or `resolved`.
    pub event: PageEvent,
    pub summary: String,
    pub probe: String,
    pub host: String,
    pub state: String,
    pub reason: String,
    pub incident: u64,
    /// RFC 3339, UTC.
    pub since: String,
    pub down_seconds: u64,
    pub actions_taken: Vec<String>,
    pub sent_by: String,
    /// The how-manyth reminder of an open incident this is (`remind_every`); absent (0) on the
    /// page that opened it, so the documented body is unchanged.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reminder: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Page {
    pub fn new(
        event: PageEvent,
        summary: &str,
        incident: &IncidentView,
        host: &str,
        now: Timestamp,
    ) -> Page {
        let down = now.saturating_since(incident.since);
        let since_wall = SystemTime::now()
            .checked_sub(down)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Page {
            event,
            summary: summary.to_string(),
            probe: incident.probe.clone(),
            host: host.to_string(),
            state: incident.state.to_string(),
            reason: incident.reason.clone(),
            incident: incident.id,
            since: humantime::format_rfc3339_seconds(since_wall).to_string(),
            down_seconds: down.as_secs(),
            actions_taken: incident.actions_taken.clone(),
            sent_by: concat!("uptime-watchdog ", env!("CARGO_PKG_VERSION")).to_string(),
            reminder: 0,
        }
    }
}

/// One delivery attempt. A 2xx is success; anything else says why.
pub async fn deliver(
    client: &reqwest::Client,
    spec: &WebhookAction,
    page: &Page,
) -> Result<(), String> {
    let mut req = client.post(&spec.url).timeout(spec.timeout).json(page);
    if let Some(token) = &spec.token {
        let token = token.resolve()?;
        req = req.bearer_auth(token.expose());
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
        Err(e) => Err(crate::probe::root_cause(&e)),
    }
}

/// This kind's delivery for the pager queue: JSON, one page per body; or Slack's text, where
/// several pages (a digest) make one message.
pub async fn send(
    client: &reqwest::Client,
    spec: &WebhookAction,
    pages: &[Page],
) -> Result<(), Failure> {
    match spec.format {
        WebhookFormat::Json => {
            for page in pages {
                deliver(client, spec, page).await.map_err(Failure::Retry)?;
            }
            Ok(())
        }
        WebhookFormat::Slack => {
            let (title, body) = render(pages);
            let text = format!("*{title}*\n{body}");
            let mut req = client
                .post(&spec.url)
                .timeout(spec.timeout)
                .json(&serde_json::json!({ "text": text }));
            if let Some(token) = &spec.token {
                let token = token.resolve().map_err(Failure::Retry)?;
                req = req.bearer_auth(token.expose());
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(Failure::Retry(format!("HTTP {}", r.status().as_u16()))),
                Err(e) => Err(Failure::Retry(crate::probe::root_cause(&e))),
            }
        }
    }
}

/// Backoff between attempts: 1 s, 2 s, 4 s ... capped at 5 min.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(9)).min(Duration::from_secs(300))
}

//! `kind = "webhook"`: the incident as JSON, POSTed when it fires, when the watchdog gives up,
//! and when it resolves.
//!
//! [`deliver`] is one attempt with a timeout. [`Pager`] is the daemon's queue per webhook: a
//! task that delivers pages in order, retrying with backoff, so a slow or dead receiver never
//! delays a probe. (Pages still queued when the daemon stops are logged; a durable outbox that
//! survives restarts is a later piece of work.)

use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::clock::Timestamp;
use crate::config::WebhookAction;
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

/// Backoff between attempts: 1 s, 2 s, 4 s ... capped at 5 min.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(9)).min(Duration::from_secs(300))
}

/// The daemon's queue for one webhook. Pages carry the outbox id they were stored under; the
/// delivery task reports each id back on `delivered` once the receiver acknowledged it, so the
/// outbox can forget it.
#[derive(Debug, Clone)]
pub struct Pager {
    tx: mpsc::UnboundedSender<(u64, Page)>,
}

impl Pager {
    /// Starts the delivery task. It ends when every `Pager` clone is dropped and the queue is
    /// empty, or when `stop` fires (what it could not deliver stays in the outbox for the next
    /// start).
    pub fn spawn(
        name: String,
        spec: WebhookAction,
        client: reqwest::Client,
        mut stop: tokio::sync::watch::Receiver<bool>,
        delivered: mpsc::UnboundedSender<u64>,
    ) -> (Pager, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Page)>();
        let task = tokio::spawn(async move {
            while let Some((id, page)) = rx.recv().await {
                let mut attempt = 0u32;
                loop {
                    match deliver(&client, &spec, &page).await {
                        Ok(()) => {
                            tracing::info!(action = %name, probe = %page.probe, event = ?page.event, attempts = attempt + 1, "page delivered");
                            let _ = delivered.send(id);
                            break;
                        }
                        Err(e) => {
                            let wait = backoff(attempt);
                            tracing::warn!(action = %name, probe = %page.probe, event = ?page.event, error = %e, retry_in = ?wait, "page delivery failed");
                            attempt += 1;
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {}
                                _ = stop.wait_for(|s| *s) => {
                                    let mut left = 1;
                                    while rx.try_recv().is_ok() { left += 1; }
                                    tracing::warn!(action = %name, pages = left, "stopping with undelivered pages; they stay in the outbox");
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        });
        (Pager { tx }, task)
    }

    pub fn send(&self, id: u64, page: Page) {
        // The task only ends after every sender is gone, so this cannot fail while we hold one.
        let _ = self.tx.send((id, page));
    }
}

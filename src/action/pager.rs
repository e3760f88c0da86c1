//! The pager queue every pager kind shares, and what the kinds have in common.
//!
//! Each kind is one module of the same shape, `send(client, spec, pages)`, where a page's
//! `event` says firing, giving up or resolved (like gatus's one folder per provider):
//! [`super::webhook`] (JSON or Slack), [`super::alertmanager`], [`super::pagerduty`],
//! [`super::email`]. [`deliver`] picks the kind; [`Failure`] says whether to try again.
//!
//! [`Pager`] is the daemon's task per pager action. It takes pages from the durable outbox (each
//! with its outbox id) and delivers them in order, retrying with backoff, so a slow or dead
//! receiver delays nothing but its own queue. On top of that it keeps the firing pages it
//! delivered whose incident is still open:
//! - **reminders** (`remind_every`): the page again, marked `reminder: N`, until it resolves;
//! - **refresh** (Alertmanager): the same alert re-posted every `refresh_every`, because
//!   Alertmanager resolves alerts that are not refreshed within its `resolve_timeout`;
//! - **digest** (`digest_window`): pages arriving within the window after a first one are sent
//!   as one page listing them all. Every outbox id of a digest is acknowledged when the digest
//!   is delivered (and none before), so a crash mid-digest re-sends all of them.
//!
//! Reminders and refreshes are not in the outbox (they are derived, not owed): the daemon keeps
//! the list of open pages in its state and hands it back with [`Pager::remember`] at start.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::webhook::{Page, backoff};
use crate::config::ActionSpec;
use crate::rules::PageEvent;

/// Why a delivery failed, and so what to do with the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Transient (no connection, a timeout, 429, 5xx, an SMTP 4xx): retry with backoff.
    Retry(String),
    /// The receiver refused this page for good (a 4xx that is not 429, an SMTP 5xx): retrying
    /// would fail the same way forever, so it is logged as an error and dropped.
    Reject(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Retry(e) | Failure::Reject(e) => f.write_str(e),
        }
    }
}

/// Classifies an HTTP answer the way PagerDuty and Alertmanager document theirs.
pub fn http_status(status: reqwest::StatusCode, body: &str) -> Result<(), Failure> {
    let code = status.as_u16();
    let detail = crate::probe::snippet(body.as_bytes(), 200);
    if status.is_success() {
        Ok(())
    } else if code == 429 || code == 408 || status.is_server_error() {
        Err(Failure::Retry(format!("HTTP {code} {detail}")))
    } else {
        Err(Failure::Reject(format!("HTTP {code} {detail}")))
    }
}

/// One attempt at delivering `pages` (one page, or a digest) through the pager `spec`.
pub async fn deliver(
    client: &reqwest::Client,
    spec: &ActionSpec,
    pages: &[Page],
) -> Result<(), Failure> {
    match spec {
        ActionSpec::Webhook(w) => super::webhook::send(client, w, pages).await,
        ActionSpec::Alertmanager(a) => super::alertmanager::send(client, a, pages).await,
        ActionSpec::PagerDuty(p) => super::pagerduty::send(client, p, pages).await,
        ActionSpec::Email(e) => super::email::send(e, pages).await,
        // Every other kind is a remedy (the config checker never names one as a pager).
        _ => Err(Failure::Reject(format!(
            "a {} action is a remedy, not a pager",
            spec.kind()
        ))),
    }
}

/// A title and a plain-text body for the kinds a human reads (email, Slack): one page, or a
/// digest listing several.
pub fn render(pages: &[Page]) -> (String, String) {
    let line = |p: &Page| {
        let what = match (p.event, p.reminder) {
            (PageEvent::Resolved, _) => "RESOLVED".to_string(),
            (PageEvent::GivingUp, _) => "GIVING UP".to_string(),
            (PageEvent::Firing, 0) => "FIRING".to_string(),
            (PageEvent::Firing, n) => format!("REMINDER {n}"),
        };
        format!("[{what}] {} on {}: {}", p.probe, p.host, p.summary)
    };
    let details = |p: &Page| {
        let mut out = format!(
            "probe: {}\nhost: {}\nstate: {}\nreason: {}\nincident: {}\nsince: {} (down {} s)\n",
            p.probe, p.host, p.state, p.reason, p.incident, p.since, p.down_seconds
        );
        if !p.actions_taken.is_empty() {
            out.push_str(&format!("actions taken: {}\n", p.actions_taken.join(", ")));
        }
        out
    };
    match pages {
        [one] => (line(one), format!("{}\n{}", one.summary, details(one))),
        many => {
            let host = many.first().map_or("", |p| p.host.as_str());
            let title = format!("[DIGEST] {} pages from {host}", many.len());
            let mut body = String::new();
            for p in many {
                body.push_str(&format!("- {}\n", line(p)));
            }
            body.push('\n');
            for p in many {
                body.push_str(&format!("{}\n{}\n", line(p), details(p)));
            }
            (title, body)
        }
    }
}

/// A pager task's report on one outbox id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub id: u64,
    /// `true`: the receiver took it; `false`: it refused it for good and it was dropped.
    pub delivered: bool,
}

enum Msg {
    Page(u64, Page),
    /// A firing page delivered before (by an earlier run) whose incident is still open.
    Open(Page),
}

/// What a pager repeats while an incident is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// A reminder a human sees.
    Remind(Duration),
    /// The identical alert again, so the receiver keeps it firing.
    Refresh(Duration),
}

impl Repeat {
    fn of(spec: &ActionSpec) -> Option<Repeat> {
        match spec {
            ActionSpec::Alertmanager(a) => Some(Repeat::Refresh(a.refresh_every)),
            _ => spec.paging().remind_every.map(Repeat::Remind),
        }
    }

    fn every(self) -> Duration {
        match self {
            Repeat::Remind(d) | Repeat::Refresh(d) => d,
        }
    }
}

/// A delivered firing page whose incident is still open.
struct OpenPage {
    page: Page,
    first_sent: Instant,
    due: Instant,
    reminders: u32,
}

/// The daemon's queue for one pager action.
#[derive(Debug, Clone)]
pub struct Pager {
    tx: mpsc::UnboundedSender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Page(id, p) => write!(f, "Page({id}, {})", p.probe),
            Msg::Open(p) => write!(f, "Open({})", p.probe),
        }
    }
}

impl Pager {
    /// Starts the delivery task. It ends when every `Pager` clone is dropped and the queue is
    /// empty, or when `stop` fires (what it could not deliver stays in the outbox for the next
    /// start). Each outbox id is reported on `acks` once delivered or refused.
    pub fn spawn(
        name: String,
        spec: ActionSpec,
        client: reqwest::Client,
        stop: watch::Receiver<bool>,
        acks: mpsc::UnboundedSender<Ack>,
    ) -> (Pager, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel::<Msg>();
        let task = Queue {
            name,
            repeat: Repeat::of(&spec),
            digest: spec.paging().digest_window,
            spec,
            client,
            stop,
            acks,
            open: BTreeMap::new(),
        };
        (Pager { tx }, tokio::spawn(task.run(rx)))
    }

    pub fn send(&self, id: u64, page: Page) {
        // The task only ends after every sender is gone, so this cannot fail while we hold one.
        let _ = self.tx.send(Msg::Page(id, page));
    }

    /// Reminders (or refreshes) resume for this page, delivered by an earlier run.
    pub fn remember(&self, page: Page) {
        let _ = self.tx.send(Msg::Open(page));
    }
}

struct Queue {
    name: String,
    spec: ActionSpec,
    client: reqwest::Client,
    stop: watch::Receiver<bool>,
    acks: mpsc::UnboundedSender<Ack>,
    repeat: Option<Repeat>,
    digest: Option<Duration>,
    /// By (probe, incident).
    open: BTreeMap<(String, u64), OpenPage>,
}

impl Queue {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut stop = self.stop.clone();
        loop {
            let next_due = self.open.values().map(|o| o.due).min();
            let first = tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => m,
                    None => return,
                },
                _ = sleep_until_some(next_due) => {
                    self.repeat_due().await;
                    continue;
                }
                _ = stopped(&mut stop) => return,
            };
            let mut batch = Vec::new();
            self.take(first, &mut batch);
            if batch.is_empty() {
                continue;
            }
            if let Some(window) = self.digest {
                // Whatever else arrives within the window joins this page.
                let deadline = Instant::now() + window;
                loop {
                    tokio::select! {
                        msg = rx.recv() => match msg {
                            Some(m) => self.take(m, &mut batch),
                            None => break,
                        },
                        _ = tokio::time::sleep_until(deadline) => break,
                        _ = stopped(&mut stop) => return,
                    }
                }
            }
            if !self.deliver_with_retries(&batch, &mut rx).await {
                return;
            }
        }
    }

    fn take(&mut self, msg: Msg, batch: &mut Vec<(u64, Page)>) {
        match msg {
            Msg::Page(id, page) => batch.push((id, page)),
            Msg::Open(page) => {
                if let Some(repeat) = self.repeat {
                    let now = Instant::now();
                    self.open.insert(
                        (page.probe.clone(), page.incident),
                        OpenPage {
                            page,
                            first_sent: now,
                            due: now + repeat.every(),
                            reminders: 0,
                        },
                    );
                }
            }
        }
    }

    /// Delivers `batch` as one page (or a digest) until it is taken or refused; `false` when
    /// `stop` fired first.
    async fn deliver_with_retries(
        &mut self,
        batch: &[(u64, Page)],
        rx: &mut mpsc::UnboundedReceiver<Msg>,
    ) -> bool {
        let pages: Vec<Page> = batch.iter().map(|(_, p)| p.clone()).collect();
        let probes: Vec<&str> = pages.iter().map(|p| p.probe.as_str()).collect();
        let probes = probes.join(",");
        let events: Vec<String> = pages.iter().map(|p| format!("{:?}", p.event)).collect();
        let events = events.join(",");
        let mut attempt = 0u32;
        let started = Instant::now();
        loop {
            let result = deliver(&self.client, &self.spec, &pages).await;
            match result {
                Ok(()) => {
                    tracing::info!(action = %self.name, kind = self.spec.kind(), probe = %probes, event = %events, pages = pages.len(), attempts = attempt + 1, took_ms = started.elapsed().as_millis() as u64, "page delivered");
                    for (id, _) in batch {
                        let _ = self.acks.send(Ack {
                            id: *id,
                            delivered: true,
                        });
                    }
                    for page in pages {
                        self.delivered(page);
                    }
                    return true;
                }
                Err(Failure::Reject(e)) => {
                    tracing::error!(action = %self.name, kind = self.spec.kind(), probe = %probes, event = %events, error = %e, "page refused by the receiver: dropped from the outbox, not retried");
                    for (id, _) in batch {
                        let _ = self.acks.send(Ack {
                            id: *id,
                            delivered: false,
                        });
                    }
                    return true;
                }
                Err(Failure::Retry(e)) => {
                    let wait = backoff(attempt);
                    tracing::warn!(action = %self.name, kind = self.spec.kind(), probe = %probes, event = %events, error = %e, retry_in = ?wait, "page delivery failed");
                    attempt += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stopped(&mut self.stop) => {
                            let mut left = batch.len();
                            while rx.try_recv().is_ok() { left += 1; }
                            tracing::warn!(action = %self.name, pages = left, "stopping with undelivered pages; they stay in the outbox");
                            return false;
                        }
                    }
                }
            }
        }
    }

    /// Keeps track of open incidents after a delivery.
    fn delivered(&mut self, page: Page) {
        let key = (page.probe.clone(), page.incident);
        match (page.event, self.repeat) {
            (PageEvent::Resolved, _) => {
                self.open.remove(&key);
            }
            (PageEvent::Firing | PageEvent::GivingUp, Some(repeat)) => {
                let now = Instant::now();
                let (first_sent, reminders) = self
                    .open
                    .get(&key)
                    .map_or((now, 0), |o| (o.first_sent, o.reminders));
                self.open.insert(
                    key,
                    OpenPage {
                        page,
                        first_sent,
                        due: now + repeat.every(),
                        reminders,
                    },
                );
            }
            (_, None) => {}
        }
    }

    /// Sends the reminders (or refreshes) that are due: one attempt, no retry queue (the next
    /// one is due an interval later anyway). Refreshes go as one request (Alertmanager takes a
    /// list); with a digest window, so do reminders (those due within the window join, so a
    /// storm reminds as one digest too); otherwise each reminder is its own page.
    async fn repeat_due(&mut self) {
        let Some(repeat) = self.repeat else { return };
        let now = Instant::now();
        let horizon = match repeat {
            Repeat::Remind(_) => now + self.digest.unwrap_or_default(),
            Repeat::Refresh(_) => now,
        };
        let mut pages = Vec::new();
        for open in self.open.values_mut().filter(|o| o.due <= horizon) {
            open.due = now + repeat.every();
            let mut page = open.page.clone();
            if let Repeat::Remind(_) = repeat {
                open.reminders += 1;
                page.reminder = open.reminders;
                // From the incident's start (kept in the page), so it is right after a restart.
                let down = humantime::parse_rfc3339(&page.since)
                    .ok()
                    .and_then(|since| std::time::SystemTime::now().duration_since(since).ok())
                    .map_or(
                        page.down_seconds + open.first_sent.elapsed().as_secs(),
                        |d| d.as_secs(),
                    );
                page.down_seconds = down;
                page.summary = format!(
                    "still {} after {}: {}",
                    page.state,
                    humantime::format_duration(Duration::from_secs(down)),
                    open.page.summary
                );
            }
            pages.push(page);
        }
        let (what, together) = match repeat {
            Repeat::Remind(_) => ("reminder", self.digest.is_some()),
            Repeat::Refresh(_) => ("refresh", true),
        };
        let batches: Vec<Vec<Page>> = if together {
            vec![pages]
        } else {
            pages.into_iter().map(|p| vec![p]).collect()
        };
        for batch in batches.into_iter().filter(|b| !b.is_empty()) {
            let probes: Vec<&str> = batch.iter().map(|p| p.probe.as_str()).collect();
            let probes = probes.join(",");
            match deliver(&self.client, &self.spec, &batch).await {
                Ok(()) => {
                    tracing::info!(action = %self.name, kind = self.spec.kind(), probe = %probes, pages = batch.len(), repeat = what, "page repeated")
                }
                Err(e) => {
                    tracing::warn!(action = %self.name, kind = self.spec.kind(), probe = %probes, pages = batch.len(), repeat = what, error = %e, "page repeat failed; next at the next interval")
                }
            }
        }
    }
}

/// Updates the list of open pages (kept in the saved state) after `page` was delivered: a
/// firing or giving-up page opens (or replaces) its incident's entry, a resolved one closes it.
pub fn track_open(open: &mut Vec<crate::state::PendingPage>, page: crate::state::PendingPage) {
    let same = |o: &crate::state::PendingPage| {
        o.action == page.action
            && o.page.probe == page.page.probe
            && o.page.incident == page.page.incident
    };
    open.retain(|o| !same(o));
    if page.page.event != PageEvent::Resolved {
        open.push(page);
    }
}

/// Resolves when `stop` is set (or its sender is gone), holding no borrow of its value.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(probe: &str, event: PageEvent) -> Page {
        serde_json::from_value(serde_json::json!({
            "event": event, "summary": format!("{probe} is down: HTTP 503"), "probe": probe,
            "host": "web-1", "state": "down", "reason": "HTTP 503", "incident": 3,
            "since": "2026-01-01T00:00:00Z", "down_seconds": 5, "actions_taken": [], "sent_by": "t"
        }))
        .unwrap()
    }

    #[test]
    fn one_page_and_a_digest_render_for_humans() {
        let (title, body) = render(&[page("apache", PageEvent::Firing)]);
        assert_eq!(title, "[FIRING] apache on web-1: apache is down: HTTP 503");
        assert!(body.contains("incident: 3"), "{body}");
        let (title, body) = render(&[
            page("a", PageEvent::Firing),
            page("b", PageEvent::Firing),
            page("c", PageEvent::Resolved),
        ]);
        assert_eq!(title, "[DIGEST] 3 pages from web-1");
        assert!(body.starts_with("- [FIRING] a on web-1"), "{body}");
        assert!(body.contains("- [RESOLVED] c on web-1"), "{body}");
    }

    #[test]
    fn http_answers_are_retried_or_refused() {
        use reqwest::StatusCode as S;
        assert_eq!(http_status(S::ACCEPTED, ""), Ok(()));
        assert!(matches!(
            http_status(S::TOO_MANY_REQUESTS, ""),
            Err(Failure::Retry(_))
        ));
        assert!(matches!(
            http_status(S::BAD_GATEWAY, ""),
            Err(Failure::Retry(_))
        ));
        assert!(
            matches!(http_status(S::BAD_REQUEST, "bad key"), Err(Failure::Reject(e)) if e.contains("bad key"))
        );
    }

    #[test]
    fn open_pages_open_on_firing_and_close_on_resolve() {
        let pending = |action: &str, probe: &str, event| crate::state::PendingPage {
            id: 0,
            action: action.into(),
            page: page(probe, event),
            attempts: 0,
        };
        let mut open = Vec::new();
        track_open(&mut open, pending("chat", "a", PageEvent::Firing));
        track_open(&mut open, pending("mail", "a", PageEvent::Firing));
        track_open(&mut open, pending("chat", "a", PageEvent::GivingUp));
        assert_eq!(open.len(), 2, "giving up replaces firing: {open:?}");
        assert_eq!(open[1].page.event, PageEvent::GivingUp);
        track_open(&mut open, pending("chat", "a", PageEvent::Resolved));
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].action, "mail");
    }

    #[test]
    fn a_reminder_keeps_the_json_contract_and_adds_its_number() {
        let mut p = page("a", PageEvent::Firing);
        assert!(serde_json::to_value(&p).unwrap().get("reminder").is_none());
        p.reminder = 2;
        assert_eq!(serde_json::to_value(&p).unwrap()["reminder"], 2);
    }
}

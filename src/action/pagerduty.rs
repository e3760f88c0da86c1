//! `kind = "pagerduty"`: the Events API v2 (`trigger` when an incident fires or the watchdog
//! gives up, `resolve` when it closes).
//!
//! The `dedup_key` is `host:probe:incident`. The engine pages a pager at most once per
//! incident and resolves exactly that incident, so the incident is what a PagerDuty alert
//! stands for: a giving-up page updates the same alert, the resolve closes it, and the next
//! incident of the probe opens a new alert instead of re-opening (or being merged into) the
//! last one. A rule name would not do: the page does not carry it, several rules of one probe
//! may name the same pager, and successive incidents would share one key.
//!
//! PagerDuty answers 202; 429 (rate limit) and 5xx are retried with backoff by the pager
//! queue; other 4xx (a bad routing key, a malformed event) are refused for good.

use serde_json::{Value, json};

use super::pager::{Failure, http_status};
use super::webhook::Page;
use crate::config::PagerDutyAction;
use crate::rules::PageEvent;

pub fn dedup_key(page: &Page) -> String {
    format!("{}:{}:{}", page.host, page.probe, page.incident)
}

/// The event for one page.
pub fn event(spec: &PagerDutyAction, routing_key: &str, page: &Page) -> Value {
    if page.event == PageEvent::Resolved {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key(page),
        });
    }
    // PagerDuty refuses a summary over 1024 characters.
    let summary: String = page.summary.chars().take(1024).collect();
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key(page),
        "client": "uptime-watchdog",
        "payload": {
            "summary": summary,
            "source": page.host,
            "severity": spec.severity,
            "component": page.probe,
            "class": if page.event == PageEvent::GivingUp { "giving_up" } else { "down" },
            "custom_details": {
                "reason": page.reason,
                "state": page.state,
                "incident": page.incident,
                "since": page.since,
                "down_seconds": page.down_seconds,
                "actions_taken": page.actions_taken,
                "reminder": page.reminder,
            },
        },
    })
}

/// One event per page, in order.
pub async fn send(
    client: &reqwest::Client,
    spec: &PagerDutyAction,
    pages: &[Page],
) -> Result<(), Failure> {
    // A missing key may appear (a secrets file written later): retry rather than drop.
    let key = spec.routing_key.resolve().map_err(Failure::Retry)?;
    for page in pages {
        let response = client
            .post(&spec.url)
            .timeout(spec.timeout)
            .json(&event(spec, key.expose(), page))
            .send()
            .await
            .map_err(|e| Failure::Retry(crate::probe::root_cause(&e)))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        http_status(status, &body)?;
    }
    Ok(())
}

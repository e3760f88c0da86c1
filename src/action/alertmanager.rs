//! `kind = "alertmanager"`: pages as alerts POSTed to Alertmanager's v2 API
//! (`POST {url}/api/v2/alerts`, a JSON list).
//!
//! An alert is identified by its labels (`alertname`, `probe`, `host`, `severity`), so the
//! firing, giving-up and resolved pages of one incident update one alert. Alertmanager sets
//! `endsAt = now + resolve_timeout` on alerts posted without one and resolves them when that
//! passes, so the pager queue re-posts a firing alert every `refresh_every` (see
//! `super::pager`); a resolved page posts `endsAt = now`. Routing, grouping, silences and
//! repeat notifications are Alertmanager's job.

use std::time::SystemTime;

use serde_json::{Value, json};

use super::pager::{Failure, http_status};
use super::webhook::Page;
use crate::config::AlertmanagerAction;
use crate::rules::PageEvent;

/// The `alertname` label of every alert this watchdog posts.
pub const ALERTNAME: &str = "WatchdogProbeDown";

/// The alert for one page, at wall-clock `now`.
pub fn alert(spec: &AlertmanagerAction, page: &Page, now: SystemTime) -> Value {
    let mut annotations = json!({
        "summary": page.summary,
        "reason": page.reason,
        "incident": page.incident.to_string(),
    });
    if let Some(runbook) = &spec.runbook {
        annotations["runbook"] = json!(runbook);
    }
    if !page.actions_taken.is_empty() {
        annotations["actions_taken"] = json!(page.actions_taken.join(", "));
    }
    let generator = spec
        .generator_url
        .clone()
        .unwrap_or_else(|| format!("uptime-watchdog://{}/{}", page.host, page.probe));
    let mut alert = json!({
        "labels": {
            "alertname": ALERTNAME,
            "probe": page.probe,
            "host": page.host,
            "severity": spec.severity,
        },
        "annotations": annotations,
        "startsAt": page.since,
        "generatorURL": generator,
    });
    if page.event == PageEvent::Resolved {
        alert["endsAt"] = json!(humantime::format_rfc3339_seconds(now).to_string());
    }
    alert
}

/// Posts the pages' alerts in one request.
pub async fn send(
    client: &reqwest::Client,
    spec: &AlertmanagerAction,
    pages: &[Page],
) -> Result<(), Failure> {
    let now = SystemTime::now();
    let alerts: Vec<Value> = pages.iter().map(|p| alert(spec, p, now)).collect();
    let url = format!("{}/api/v2/alerts", spec.url.trim_end_matches('/'));
    let response = client
        .post(&url)
        .timeout(spec.timeout)
        .json(&alerts)
        .send()
        .await
        .map_err(|e| Failure::Retry(crate::probe::root_cause(&e)))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    http_status(status, &body)
}

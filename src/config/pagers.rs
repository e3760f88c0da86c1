//! Typed config of the pager kinds: `webhook` (JSON or Slack), `alertmanager`, `pagerduty` and
//! `email`, and the paging options they share (reminders, digests).
//!
//! Plain data, checked by `super::check::pagers`; `crate::action::pager` builds the delivery
//! tasks from it. Kept apart from `super` so each new kind is one struct here, one check
//! function and one sender module.

use std::path::PathBuf;
use std::time::Duration;

use super::SecretRef;

/// What every pager may do besides delivering pages one by one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paging {
    /// Page again while an incident stays open (a reminder names how long it has been down).
    pub remind_every: Option<Duration>,
    /// Pages queued within this window are combined into one digest page instead of a storm.
    pub digest_window: Option<Duration>,
}

/// How a webhook renders its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WebhookFormat {
    /// The documented JSON contract (`crate::action::webhook::Page`).
    #[default]
    Json,
    /// `{"text": "..."}`: Slack incoming webhooks, Mattermost, Rocket.Chat, Google Chat.
    Slack,
}

/// `kind = "alertmanager"`: alerts POSTed to Alertmanager's v2 API, re-posted while firing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertmanagerAction {
    /// Base URL, e.g. `http://127.0.0.1:9093`; alerts go to `{url}/api/v2/alerts`.
    pub url: String,
    /// Alertmanager resolves an alert that is not refreshed within its `resolve_timeout`
    /// (default 5m): a firing alert is re-posted this often.
    pub refresh_every: Duration,
    pub severity: String,
    pub runbook: Option<String>,
    /// The alert's `generatorURL`; default `uptime-watchdog://HOST/PROBE`.
    pub generator_url: Option<String>,
    /// Per attempt.
    pub timeout: Duration,
}

impl AlertmanagerAction {
    pub const DEFAULT_REFRESH: Duration = Duration::from_secs(60);
}

/// `kind = "pagerduty"`: Events API v2, trigger and resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagerDutyAction {
    pub url: String,
    pub routing_key: SecretRef,
    /// `critical`, `error`, `warning` or `info`.
    pub severity: String,
    pub timeout: Duration,
}

impl PagerDutyAction {
    pub const DEFAULT_URL: &str = "https://events.pagerduty.com/v2/enqueue";
    pub const SEVERITIES: [&str; 4] = ["critical", "error", "warning", "info"];
}

/// How an SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// STARTTLS, required (the connection fails rather than sending in clear). Port 587.
    Starttls,
    /// TLS from the first byte (SMTPS). Port 465.
    Tls,
    /// None at all: a relay on localhost. Port 25.
    None,
}

impl SmtpTls {
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        }
    }
}

/// `kind = "email"`: a mail per page over SMTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAction {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub user: Option<String>,
    pub password: Option<SecretRef>,
    /// Trust only this CA (PEM) for the server's certificate, e.g. an internal CA.
    pub ca_file: Option<PathBuf>,
    pub from: String,
    pub to: Vec<String>,
    /// Of the whole SMTP exchange of one page.
    pub timeout: Duration,
    pub paging: Paging,
}

impl EmailAction {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
}

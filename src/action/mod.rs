//! Actions: the effects the rule engine asks for.
//!
//! - `command`: run an argv (never a shell) with the incident in its environment;
//! - `signal`: signal the process in a pidfile, escalate to SIGKILL, start it again;
//! - `webhook`: POST the incident as JSON (or Slack's text), again when it resolves;
//! - `alertmanager`, `pagerduty`, `email`: the same pages through those receivers.
//! - `haproxy`: drain, maint, ready a server over HAProxy's runtime API; `restart_drained`
//!   (drain, restart, undrain as one remedy) and `drain_flag` (for `/health`).
//! - `systemd`: restart (start, stop, reload, kill) a unit over D-Bus and wait for the job.
//! - `docker`: restart, stop, kill or start containers through the Docker Engine API.
//!
//! Remedies ([`run_remedy`]) run in their own tasks and report back; pages go through
//! [`pager::Pager`]s, queues with retries, reminders and digests that never block probing.

pub mod alertmanager;
pub mod command;
pub mod docker;
pub mod email;
pub mod haproxy;
pub mod pager;
pub mod pagerduty;
pub mod signal;
pub mod systemd;
pub mod webhook;

use crate::clock::Timestamp;
use crate::config::ActionSpec;
use crate::rules::IncidentView;

/// Where a remedy runs and what it is about, for env vars and logs.
#[derive(Debug, Clone)]
pub struct Context {
    pub action: String,
    pub host: String,
    pub incident: IncidentView,
    pub now: Timestamp,
}

impl Context {
    /// `WATCHDOG_*` variables: what a script needs to know about the incident.
    pub fn env(&self) -> Vec<(String, String)> {
        let i = &self.incident;
        vec![
            ("WATCHDOG_PROBE".into(), i.probe.clone()),
            ("WATCHDOG_STATE".into(), i.state.to_string()),
            ("WATCHDOG_REASON".into(), i.reason.clone()),
            ("WATCHDOG_INCIDENT".into(), i.id.to_string()),
            ("WATCHDOG_ACTION".into(), self.action.clone()),
            ("WATCHDOG_HOST".into(), self.host.clone()),
            (
                "WATCHDOG_DOWN_SECONDS".into(),
                self.now.saturating_since(i.since).as_secs().to_string(),
            ),
            ("WATCHDOG_REMEDIES".into(), i.remedies.to_string()),
        ]
    }
}

/// Runs a remedy to its end (each kind has its own timeouts) and says how it went, e.g.
/// "sent SIGTERM to pid 812, exited after 40 ms; start: exit 0".
pub async fn run_remedy(spec: &ActionSpec, ctx: &Context) -> Result<String, String> {
    match spec {
        ActionSpec::Command(c) => command::run_steps(&c.steps, &ctx.env(), c.timeout).await,
        ActionSpec::Signal(s) => signal::run(s, &ctx.env()).await,
        ActionSpec::Webhook(_)
        | ActionSpec::Alertmanager(_)
        | ActionSpec::PagerDuty(_)
        | ActionSpec::Email(_) => Err(format!("a {} action is a pager, not a remedy", spec.kind())),
        ActionSpec::Haproxy(h) => haproxy::run(h).await,
        ActionSpec::RestartDrained(r) => haproxy::restart_drained(r, ctx).await,
        ActionSpec::DrainFlag(f) => haproxy::flag(f).await,
        ActionSpec::Systemd(s) => systemd::run(s).await,
        ActionSpec::Docker(d) => docker::run(d).await,
    }
}

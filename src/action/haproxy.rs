//! Draining: taking a server out of its load balancer's rotation before acting on it, and
//! putting it back.
//!
//! - `haproxy`: `set server BACKEND/SERVER state drain|maint|ready` over the runtime API, read
//!   back with `show servers state`;
//! - `restart_drained`: drain, wait for the server's connections to end (bounded), restart
//!   (a `command` or `signal` action), wait until healthy, undrain: one remedy, so a planned
//!   restart shows users no errors;
//! - `drain_flag`: a file whose presence makes the watchdog's `/health` answer 503, for load
//!   balancers that poll a URL (ALB, Envoy, nginx).
//!
//! Safety, because a drain is capacity taken away (incident 2021-02: an aborted deploy left
//! pools half drained for hours):
//! - a drain that would take out the last ready server of its backend is refused;
//! - this watchdog holds at most `max_drains` servers drained at once (a per-host cap);
//! - drains are serialized within the process, so two drains cannot both see "another server
//!   is ready" and together empty a backend;
//! - a refusal, or a `restart_drained` that had to leave its server drained, fails with an
//!   error that says so ("refused to drain ...", "left web/app1 drained: ..."); a failed
//!   remedy is an incident of its own in the rule engine, paged to the probe's pagers.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Context;
use crate::config::{ActionSpec, DrainFlagAction, HaproxyAction, RestartDrainedAction};
use crate::haproxy::{self, AdminState, StatRow};
use crate::probe::human;

/// Servers this watchdog drained (or put in maintenance) and has not readied since, keyed
/// `socket|backend/server`, with when. Per process, hence per host: the cap counts these.
static HELD: Mutex<BTreeMap<String, Instant>> = Mutex::new(BTreeMap::new());

/// One drain decision at a time (read the backend, decide, set): see the module doc.
static DECIDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How often waits poll HAProxy.
const POLL: Duration = Duration::from_millis(100);

/// Servers this watchdog holds drained, and for how long: for logs and the status report.
pub fn held() -> Vec<(String, Duration)> {
    HELD.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, t)| {
            let name = k.rsplit_once('|').map_or(k.as_str(), |(_, n)| n);
            (name.to_string(), t.elapsed())
        })
        .collect()
}

fn key(a: &HaproxyAction) -> String {
    format!("{}|{}", a.socket, a.server_name())
}

/// `kind = "haproxy"`.
pub async fn run(a: &HaproxyAction) -> Result<String, String> {
    match a.operation {
        AdminState::Ready => ready(a).await,
        op => drain(a, op).await,
    }
}

fn find<'r>(rows: &'r [StatRow], a: &HaproxyAction) -> Result<&'r StatRow, String> {
    rows.iter()
        .find(|r| r.backend == a.backend && r.server == a.server)
        .ok_or_else(|| {
            let peers: Vec<&str> = rows
                .iter()
                .filter(|r| r.backend == a.backend)
                .map(|r| r.server.as_str())
                .collect();
            if peers.is_empty() {
                format!("HAProxy at {} has no backend \"{}\"", a.socket, a.backend)
            } else {
                format!(
                    "HAProxy at {} has no server {} (servers of {}: {})",
                    a.socket,
                    a.server_name(),
                    a.backend,
                    peers.join(", ")
                )
            }
        })
}

/// Drain (or maint) with the safety checks.
async fn drain(a: &HaproxyAction, op: AdminState) -> Result<String, String> {
    let verb = op.word();
    let name = a.server_name();
    let _one_at_a_time = DECIDING.lock().await;
    let rows = haproxy::show_stat(&a.socket, a.timeout).await?;
    let me = find(&rows, a)?;
    let current = haproxy::server_state(&a.socket, &a.backend, &a.server, a.timeout).await?;
    if op.holds_in(&current) {
        hold(a);
        return Ok(format!("{name} is already in {verb} ({})", me.status));
    }
    let others_ready: Vec<&str> = rows
        .iter()
        .filter(|r| r.backend == a.backend && r.server != a.server && r.ready())
        .map(|r| r.server.as_str())
        .collect();
    if others_ready.is_empty() && me.ready() {
        return Err(format!(
            "refused to {verb} {name}: it is the last ready server of backend {}",
            a.backend
        ));
    }
    if others_ready.is_empty() {
        return Err(format!(
            "refused to {verb} {name}: no server of backend {} is ready ({name} is {})",
            a.backend, me.status
        ));
    }
    let held_now: Vec<String> = held()
        .into_iter()
        .filter(|(n, _)| *n != name)
        .map(|(n, d)| format!("{n} for {}", human(d)))
        .collect();
    if held_now.len() >= a.max_drains as usize {
        return Err(format!(
            "refused to {verb} {name}: this watchdog already holds {} drained ({}), max_drains = {}",
            held_now.len(),
            held_now.join(", "),
            a.max_drains
        ));
    }
    let was = me.status.clone();
    haproxy::set_state(&a.socket, &a.backend, &a.server, op, a.timeout).await?;
    hold(a);
    tracing::warn!(server = %name, state = verb, was = %was, "haproxy server taken out of rotation");
    Ok(format!(
        "{name} set to {verb} (was {was}; still ready in {}: {})",
        a.backend,
        others_ready.join(", ")
    ))
}

fn hold(a: &HaproxyAction) {
    HELD.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key(a))
        .or_insert_with(Instant::now);
}

async fn ready(a: &HaproxyAction) -> Result<String, String> {
    let name = a.server_name();
    let before = haproxy::server_state(&a.socket, &a.backend, &a.server, a.timeout).await?;
    haproxy::set_state(
        &a.socket,
        &a.backend,
        &a.server,
        AdminState::Ready,
        a.timeout,
    )
    .await?;
    let held_for = HELD
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&key(a))
        .map(|t| format!(", drained by this watchdog for {}", human(t.elapsed())))
        .unwrap_or_default();
    let was = if before.maint() {
        "maint"
    } else if before.drained() {
        "drain"
    } else {
        "ready already"
    };
    tracing::info!(server = %name, was, "haproxy server back in rotation");
    Ok(format!("{name} set to ready (was {was}{held_for})"))
}

/// `kind = "restart_drained"`.
pub async fn restart_drained(r: &RestartDrainedAction, ctx: &Context) -> Result<String, String> {
    let a = &r.drain;
    let name = a.server_name();
    let mut report = Vec::new();

    let drained = drain(a, AdminState::Drain).await?;
    report.push(drained);

    // Connections end as their requests finish; new ones go elsewhere.
    let started = Instant::now();
    let mut open = u64::MAX;
    while started.elapsed() < r.drain_timeout {
        let rows = haproxy::show_stat(&a.socket, a.timeout).await?;
        open = find(&rows, a)?.sessions;
        if open == 0 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    report.push(if open == 0 {
        format!("connections done after {}", human(started.elapsed()))
    } else {
        format!(
            "{open} connections still open after {}: restarting anyway",
            human(r.drain_timeout)
        )
    });

    let restarted = match r.restart.as_ref() {
        ActionSpec::Command(c) => super::command::run_steps(&c.steps, &ctx.env(), c.timeout).await,
        ActionSpec::Signal(s) => super::signal::run(s, &ctx.env()).await,
        other => Err(format!("{} cannot restart", other.kind())),
    };
    match restarted {
        Ok(s) => report.push(format!("{}: {s}", r.restart_name)),
        Err(e) => {
            return Err(format!(
                "left {name} drained: restart {} failed: {e} ({})",
                r.restart_name,
                report.join("; ")
            ));
        }
    }

    let started = Instant::now();
    let mut last = String::from("not checked yet");
    let client = crate::probe::client_builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let healthy = loop {
        if started.elapsed() >= r.healthy_timeout {
            break false;
        }
        match healthy(&client, r).await {
            Ok(()) => break true,
            Err(e) => last = e,
        }
        tokio::time::sleep(POLL).await;
    };
    if !healthy {
        return Err(format!(
            "left {name} drained: not healthy {} after the restart ({last}); {}",
            human(r.healthy_timeout),
            report.join("; ")
        ));
    }
    report.push(format!("healthy after {}", human(started.elapsed())));
    report.push(ready(a).await.map_err(|e| {
        format!(
            "left {name} drained: undrain failed: {e}; {}",
            report.join("; ")
        )
    })?);
    Ok(report.join("; "))
}

/// HAProxy's own check says the server is up (it shows DRAIN, not DOWN, while drained), and
/// the `healthy_url`, if any, answers 2xx.
async fn healthy(client: &reqwest::Client, r: &RestartDrainedAction) -> Result<(), String> {
    let a = &r.drain;
    let rows = haproxy::show_stat(&a.socket, a.timeout).await?;
    let me = find(&rows, a)?;
    if !(me.status == "DRAIN" || me.ready()) {
        return Err(format!("HAProxy says {}", me.status));
    }
    if let Some(url) = &r.healthy_url {
        match client.get(url).send().await {
            Ok(resp) if resp.status().is_success() => {}
            Ok(resp) => return Err(format!("{url} answered {}", resp.status().as_u16())),
            Err(e) => {
                return Err(format!("{url}: {}", crate::probe::root_cause(&e)));
            }
        }
    }
    Ok(())
}

/// `kind = "drain_flag"`.
pub async fn flag(f: &DrainFlagAction) -> Result<String, String> {
    let path = &f.file;
    match f.operation {
        AdminState::Ready => match tokio::fs::remove_file(path).await {
            Ok(()) => Ok(format!("removed {}: /health answers 200", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(format!("{} was not there: not drained", path.display()))
            }
            Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
        },
        _ => {
            let text = format!(
                "drained by uptime-watchdog at {}\n",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            );
            tokio::fs::write(path, text)
                .await
                .map(|()| format!("created {}: /health answers 503", path.display()))
                .map_err(|e| format!("cannot create {}: {e}", path.display()))
        }
    }
}

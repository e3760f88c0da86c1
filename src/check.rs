//! `watchdog check`: run the probes once, for cron and container health checks.
//!
//! The engine's state is loaded from and saved to `state_dir`, so `fail_after = 3` means three
//! runs, budgets span runs, and an incident paged by one run is resolved by a later one. Runs
//! are serialized by a lock on the state dir. Probes run concurrently; then the engine decides
//! (in config order, a pure step); then all effects run concurrently, each under its own
//! timeout; then the state is saved. Pages that could not be delivered are kept in the state
//! and retried first by the next run. Every pager kind works here; Alertmanager alerts still
//! open are re-posted at each run (Alertmanager resolves alerts it stops hearing about), while
//! reminders and digests need the daemon's pager queues.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;

use crate::action::pager::{self, Failure};
use crate::action::webhook::Page;
use crate::action::{self, Context};
use crate::clock;
use crate::config::{ActionSpec, Config};
use crate::events::Work;
use crate::health::State;
use crate::probe::{HttpClients, Probe};
use crate::rules::Effect;
use crate::state::{self, PendingPage};

/// One line of the report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Row {
    pub probe: String,
    pub kind: String,
    pub ok: bool,
    pub state: State,
    pub reason: String,
    pub latency_ms: u64,
    /// What this run did about it: "restart-apache: sent SIGTERM ...", "page oncall: delivered".
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    /// Pages still undelivered after this run (retried by the next).
    pub pending_pages: usize,
}

impl Report {
    /// 0 when every probe passed and is up; 1 when something failed or is down.
    pub fn exit_code(&self) -> i32 {
        if self.rows.iter().all(|r| r.ok && r.state == State::Up) {
            0
        } else {
            1
        }
    }

    /// A table like `monit summary`.
    pub fn table(&self) -> String {
        let w = self
            .rows
            .iter()
            .map(|r| r.probe.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut out = format!(
            "{:<w$}  {:<5} {:<8} {:<5} {}\n",
            "PROBE", "KIND", "STATE", "CHECK", "RESULT"
        );
        for r in &self.rows {
            let check = if r.ok { "ok" } else { "FAIL" };
            out.push_str(&format!(
                "{:<w$}  {:<5} {:<8} {:<5} {}\n",
                r.probe,
                r.kind,
                r.state.to_string(),
                check,
                r.reason
            ));
            for a in &r.actions {
                out.push_str(&format!("{:<w$}  -> {a}\n", ""));
            }
        }
        if self.pending_pages > 0 {
            out.push_str(&format!(
                "{} page(s) undelivered, kept for the next run\n",
                self.pending_pages
            ));
        }
        out
    }
}

/// What one effect did, for the report; `remedy` is set for remedies (to report their end).
struct Done {
    probe: usize,
    line: String,
    remedy: Option<(String, Result<&'static str, String>)>,
    /// (pager action, page) to keep in the outbox for the next run.
    undelivered: Option<(String, Page)>,
    /// (pager action, page) the receiver took: opens or closes an entry of the open pages.
    delivered: Option<(String, Page)>,
}

/// Runs the `selected` probes (all when empty) once.
pub async fn run(config: Config, selected: &[String], dry_run: bool) -> Result<Report, String> {
    for name in selected {
        if config.probe(name).is_none() {
            let known: Vec<&str> = config.probes.iter().map(|p| p.name.as_str()).collect();
            return Err(format!(
                "no probe named \"{name}\"; probes: {}",
                known.join(", ")
            ));
        }
    }
    let config = Arc::new(config);
    let dry_run = dry_run || config.watchdog.dry_run;
    let dir = config.watchdog.state_dir.clone();
    let _lock = state::lock(&dir, "check.lock", Duration::from_secs(10))?;
    let boot_id = clock::boot_id();
    let (mut saved, warnings) = state::load(&dir, state::CHECK_FILE, &boot_id);
    for w in warnings {
        tracing::warn!("{w}");
    }
    saved
        .engine
        .retain_probes(|name| config.probe(name).is_some());

    let client = crate::probe::client_builder()
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let mut pending = retry_pending(
        &config,
        &client,
        std::mem::take(&mut saved.pending_pages),
        dry_run,
        &mut saved.open_pages,
    )
    .await;
    saved.open_pages.retain(|o| {
        crate::rules::incident_of_probe(&o.page.probe, |p| config.probe(p).is_some())
            && config
                .actions
                .get(&o.action)
                .is_some_and(|a| a.role() == crate::rules::Role::Page)
    });
    // Alerts still firing are re-posted while the probes run, not before them: a slow
    // Alertmanager must not delay this run's checks.
    let refreshing = (!dry_run).then(|| {
        tokio::spawn(refresh_alertmanager(
            config.clone(),
            client.clone(),
            saved.open_pages.clone(),
        ))
    });

    // 1. Probes, concurrently.
    let indices: Vec<usize> = config
        .probes
        .iter()
        .enumerate()
        .filter(|(_, p)| selected.is_empty() || selected.contains(&p.name))
        .map(|(i, _)| i)
        .collect();
    let mut clients = HttpClients::default();
    let mut checks = JoinSet::new();
    for &i in &indices {
        let spec = &config.probes[i];
        let probe = Probe::build(&spec.check, &mut clients);
        if let Some(baseline) = saved.baselines.get(&spec.name) {
            probe.restore(baseline);
        }
        let timeout = spec.timeout;
        checks.spawn(async move {
            let outcome = probe.run(timeout).await;
            (i, outcome, probe.snapshot())
        });
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = checks.join_next().await {
        let (i, outcome, snapshot) = joined.map_err(|e| format!("a probe task failed: {e}"))?;
        if let Some(snapshot) = snapshot {
            saved
                .baselines
                .insert(config.probes[i].name.clone(), snapshot);
        }
        outcomes.push((i, outcome));
    }
    outcomes.sort_by_key(|(i, _)| *i);
    saved
        .baselines
        .retain(|name, _| config.probe(name).is_some());

    if let Some(refreshing) = refreshing {
        let _ = refreshing.await;
    }

    // 2. Decisions: the pure step, in config order.
    let now = clock::now();
    let mut rows = Vec::new();
    let mut effects = Vec::new();
    for (i, outcome) in &outcomes {
        let spec = &config.probes[*i];
        for effect in saved
            .engine
            .observe(&spec.rules, outcome.verdict(), &outcome.reason, now)
        {
            effects.push((*i, effect));
        }
        rows.push(Row {
            probe: spec.name.clone(),
            kind: spec.check.kind().to_string(),
            ok: outcome.ok,
            state: State::Starting,
            reason: outcome.reason.clone(),
            latency_ms: outcome.latency.as_millis() as u64,
            actions: Vec::new(),
        });
    }

    // 3. Effects, concurrently, each under its own timeout.
    let mut running = JoinSet::new();
    for (probe, effect) in effects {
        if let Some(fut) = effect_task(probe, effect, &config, &client, dry_run, now) {
            running.spawn(fut);
        }
    }
    let mut finished = Vec::new();
    while let Some(joined) = running.join_next().await {
        finished.push(joined.map_err(|e| format!("an action task failed: {e}"))?);
    }
    // A remedy that failed pages at once (its own incident): a second, last round.
    let now = clock::now();
    for done in &finished {
        let spec = &config.probes[done.probe];
        if let Some((action, outcome)) = &done.remedy {
            let outcome = outcome.as_ref().map(|s| *s).map_err(String::as_str);
            for effect in saved
                .engine
                .remedy_finished(&spec.rules, action, outcome, now)
            {
                if let Some(fut) = effect_task(done.probe, effect, &config, &client, dry_run, now) {
                    running.spawn(fut);
                }
            }
        }
    }
    while let Some(joined) = running.join_next().await {
        finished.push(joined.map_err(|e| format!("an action task failed: {e}"))?);
    }
    for done in finished {
        let spec = &config.probes[done.probe];
        if let Some(row) = rows.iter_mut().find(|r| r.probe == spec.name) {
            row.actions.push(done.line);
        }
        if let Some((action, page)) = done.delivered {
            pager::track_open(
                &mut saved.open_pages,
                PendingPage {
                    id: 0,
                    action,
                    page,
                    attempts: 0,
                },
            );
        }
        if let Some((action, page)) = done.undelivered {
            let id = saved.enqueue(action, page);
            if let Some(p) = saved.pending_pages.iter_mut().find(|p| p.id == id) {
                p.attempts = 1;
            }
        }
    }
    for row in &mut rows {
        if let Some(memory) = saved.engine.probe(&row.probe) {
            row.state = memory.health.state;
        }
    }

    pending.append(&mut saved.pending_pages);
    saved.pending_pages = pending;
    let pending_pages = saved.pending_pages.len();
    state::write_atomic(&dir, state::CHECK_FILE, &state::encode(&saved))?;
    Ok(Report {
        rows,
        pending_pages,
    })
}

/// Turns one effect into a task (or just a log line, returning `None`).
fn effect_task(
    probe: usize,
    effect: Effect,
    config: &Arc<Config>,
    client: &reqwest::Client,
    dry_run: bool,
    now: clock::Timestamp,
) -> Option<impl Future<Output = Done> + Send + 'static> {
    let host = config.watchdog.hostname.clone();
    enum Job {
        Remedy(String, ActionSpec, Context),
        Page(String, ActionSpec, Page),
    }
    let job = match crate::events::log_decision(effect)? {
        Work::Remedy {
            action, incident, ..
        } => {
            let spec = config.actions.get(&action)?.clone();
            Job::Remedy(
                action.clone(),
                spec,
                Context {
                    action,
                    host,
                    incident,
                    now,
                },
            )
        }
        Work::Page {
            pager,
            event,
            summary,
            incident,
        } => {
            let spec = config
                .actions
                .get(&pager)
                .filter(|a| a.role() == crate::rules::Role::Page)?;
            Job::Page(
                pager,
                spec.clone(),
                Page::new(event, &summary, &incident, &host, now),
            )
        }
    };
    let client = client.clone();
    Some(async move {
        match job {
            Job::Remedy(action, _, ctx) if dry_run => {
                tracing::warn!(probe = %ctx.incident.probe, action = %action, "dry run: would run remedy");
                Done {
                    probe,
                    line: format!("{action}: dry run, not run"),
                    remedy: Some((action, Ok("dry run"))),
                    undelivered: None,
                    delivered: None,
                }
            }
            Job::Remedy(action, spec, ctx) => {
                tracing::warn!(probe = %ctx.incident.probe, action = %action, reason = %ctx.incident.reason, "running remedy");
                let result = action::run_remedy(&spec, &ctx).await;
                let (line, outcome) = match result {
                    Ok(s) => (format!("{action}: {s}"), Ok("ok")),
                    Err(e) => (format!("{action}: FAILED: {e}"), Err(e)),
                };
                tracing::info!(probe = %ctx.incident.probe, action = %action, result = %line, "remedy done");
                Done {
                    probe,
                    line,
                    remedy: Some((action, outcome)),
                    undelivered: None,
                    delivered: None,
                }
            }
            Job::Page(pager, _, page) if dry_run => {
                tracing::warn!(probe = %page.probe, action = %pager, summary = %page.summary, "dry run: would page");
                Done {
                    probe,
                    line: format!("page {pager}: dry run, not sent"),
                    remedy: None,
                    undelivered: None,
                    delivered: None,
                }
            }
            Job::Page(pager, spec, page) => {
                match pager::deliver(&client, &spec, std::slice::from_ref(&page)).await {
                    Ok(()) => {
                        tracing::info!(probe = %page.probe, action = %pager, event = ?page.event, "page delivered");
                        Done {
                            probe,
                            line: format!("page {pager} ({:?}): delivered", page.event),
                            remedy: None,
                            undelivered: None,
                            delivered: Some((pager, page)),
                        }
                    }
                    Err(Failure::Reject(e)) => {
                        tracing::error!(probe = %page.probe, action = %pager, error = %e, "page refused by the receiver: dropped, not retried");
                        Done {
                            probe,
                            line: format!("page {pager}: refused ({e}), dropped"),
                            remedy: None,
                            undelivered: None,
                            delivered: None,
                        }
                    }
                    Err(Failure::Retry(e)) => {
                        tracing::warn!(probe = %page.probe, action = %pager, error = %e, "page delivery failed; kept for the next run");
                        Done {
                            probe,
                            line: format!("page {pager}: failed ({e}), kept for the next run"),
                            remedy: None,
                            undelivered: Some((pager, page)),
                            delivered: None,
                        }
                    }
                }
            }
        }
    })
}

/// Re-posts the Alertmanager alerts still open, one attempt each: without it Alertmanager
/// resolves them after its `resolve_timeout` when runs are further apart than that.
async fn refresh_alertmanager(
    config: Arc<Config>,
    client: reqwest::Client,
    open: Vec<PendingPage>,
) {
    let mut tasks = JoinSet::new();
    for o in open {
        let Some(spec @ ActionSpec::Alertmanager(_)) = config.actions.get(&o.action).cloned()
        else {
            continue;
        };
        let client = client.clone();
        tasks.spawn(async move {
            if let Err(e) = pager::deliver(&client, &spec, std::slice::from_ref(&o.page)).await {
                tracing::warn!(action = %o.action, probe = %o.page.probe, error = %e, "alert refresh failed");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Pages left undelivered by earlier runs, tried once more each, concurrently.
async fn retry_pending(
    config: &Config,
    client: &reqwest::Client,
    pending: Vec<PendingPage>,
    dry_run: bool,
    open: &mut Vec<PendingPage>,
) -> Vec<PendingPage> {
    if dry_run {
        return pending;
    }
    let mut tasks = JoinSet::new();
    for mut p in pending {
        let Some(spec) = config
            .actions
            .get(&p.action)
            .filter(|a| a.role() == crate::rules::Role::Page)
            .cloned()
        else {
            tracing::error!(action = %p.action, probe = %p.page.probe, "dropping a pending page: its pager action is no longer configured");
            continue;
        };
        let client = client.clone();
        tasks.spawn(async move {
            match pager::deliver(&client, &spec, std::slice::from_ref(&p.page)).await {
                Ok(()) => {
                    tracing::info!(action = %p.action, probe = %p.page.probe, attempts = p.attempts + 1, "pending page delivered");
                    Err(p)
                }
                Err(Failure::Reject(e)) => {
                    tracing::error!(action = %p.action, probe = %p.page.probe, error = %e, "pending page refused by the receiver: dropped, not retried");
                    Ok(None)
                }
                Err(Failure::Retry(e)) => {
                    p.attempts += 1;
                    tracing::warn!(action = %p.action, probe = %p.page.probe, attempts = p.attempts, error = %e, "pending page still undelivered");
                    Ok(Some(p))
                }
            }
        });
    }
    let (mut left, mut delivered) = (Vec::new(), Vec::new());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(Some(p))) => left.push(p),
            Ok(Err(p)) => delivered.push(p),
            _ => {}
        }
    }
    // Delivered pages open or close an incident's entry, in the order they were paged.
    delivered.sort_by_key(|p| p.id);
    for p in delivered {
        pager::track_open(open, p);
    }
    left
}

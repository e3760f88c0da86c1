//! `watchdog run`: the daemon.
//!
//! Shape (one process, one thread, many tasks):
//! - one **probe task** per probe: ticks on its own interval (at a stable offset on the
//!   `start_grid`, so probes spread out over their interval but those sharing a grid slot run
//!   in one wake-up of the process), or at once when the probe reports a kernel event (a process died); takes a
//!   slot among `max_in_flight`, runs the check under its hard timeout, and sends the outcome
//!   to the engine task;
//! - the **engine task** (this module's loop) owns the pure [`crate::rules::Engine`], the page
//!   outbox and the persisted state; it turns outcomes into effects and hands them off without
//!   waiting on any of them;
//! - each **remedy** runs in a task of its own and reports back when it ends; two requests for
//!   the same action never run at once (the second waits for the first and is then skipped);
//! - each pager action (webhook, alertmanager, pagerduty, email) has a **pager task** with a
//!   queue, retries, reminders and digests (`crate::action::pager`);
//! - state is written on the blocking pool, so a slow or full disk delays no probe.
//!
//! Durability: the engine (counters, incidents, budgets) and the outbox live in
//! `state_dir/daemon-state.json`. A page is handed to its pager only once the state that holds
//! it is on disk, and leaves the outbox when its receiver acknowledged it; so a page survives
//! a crash or a kill -9, and is re-sent at the next start.
//!
//! Reload (a message on the `reloads` channel; `main` sends one per SIGHUP): the new config is
//! checked first — if invalid, every error is logged and the old config keeps running; if
//! valid, it is applied as a diff: unchanged probes keep their task, schedule and counters;
//! changed ones restart their task (their incident goes on); removed ones stop and their open
//! pages are resolved; new ones start.
//!
//! Shutdown, reload requests and the config path are values passed in.

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};

use crate::action::pager::{Ack, Pager};
use crate::action::webhook::Page;
use crate::action::{self, Context};
use crate::clock;
use crate::config::{self, ActionSpec, Config};
use crate::events::Work;
use crate::health::State;
use crate::notify::Notifier;
use crate::probe::{HttpClients, Outcome, Probe};
use crate::state::{self, SavedState};
use crate::status::{Control, Metrics, ProbeLabels, ProbeStatus, StatusReport};

/// What the other tasks tell the engine task.
enum Event {
    Observed {
        probe: Arc<str>,
        generation: u64,
        outcome: Outcome,
    },
    RemedyDone {
        probe: String,
        action: String,
        result: Result<String, String>,
        took: Duration,
        /// It waited for another probe's run of the same action instead of running.
        joined: bool,
    },
    Saved {
        /// Pages with an id up to this one are on disk.
        pages_up_to: u64,
        result: Result<(), String>,
    },
}

/// Lateness of probe starts against their schedule, for the log line at exit and the
/// benchmark. Keeps the most recent samples only, so memory stays flat.
#[derive(Debug, Default)]
pub struct Lateness {
    samples: Vec<u32>,
    next: usize,
    pub count: u64,
}

impl Lateness {
    const KEEP: usize = 100_000;

    fn record(&mut self, late: Duration) {
        let micros = late.as_micros().min(u32::MAX as u128) as u32;
        if self.samples.len() < Self::KEEP {
            self.samples.push(micros);
        } else {
            self.samples[self.next] = micros;
            self.next = (self.next + 1) % Self::KEEP;
        }
        self.count += 1;
    }

    /// The `q` quantile (0..=1) of the kept samples.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        let i = ((sorted.len() - 1) as f64 * q).round() as usize;
        Duration::from_micros(sorted[i] as u64)
    }
}

/// Options the command line adds to the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub dry_run: bool,
    /// Where the config came from, to read it again on reload.
    pub config_path: Option<PathBuf>,
}

/// One running probe task.
struct ProbeTask {
    /// The spec's `Debug` rendering: two specs are the same probe iff these are equal.
    fingerprint: String,
    generation: u64,
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

struct PagerTask {
    fingerprint: String,
    pager: Pager,
}

/// Everything the engine task owns.
struct Daemon {
    config: Arc<Config>,
    options: RunOptions,
    state: SavedState,
    dirty: bool,
    saving: bool,
    /// Pages with ids up to this one are on disk, and may be handed to pagers.
    durable_up_to: u64,
    /// Pages with ids up to this one have been handed to pagers.
    dispatched_up_to: u64,
    probes: BTreeMap<String, ProbeTask>,
    next_generation: u64,
    pagers: BTreeMap<String, PagerTask>,
    pager_handles: Vec<JoinHandle<()>>,
    page_client: reqwest::Client,
    delivered_tx: mpsc::UnboundedSender<Ack>,
    pagers_stop: watch::Sender<bool>,
    remedy_locks: BTreeMap<String, Arc<tokio::sync::Mutex<()>>>,
    remedy_tasks: JoinSet<()>,
    events_tx: mpsc::Sender<Event>,
    in_flight: Arc<Semaphore>,
    lateness: Arc<Mutex<Lateness>>,
    /// The origin of the start grid every probe's schedule is laid on ([`first_tick`]).
    epoch: Instant,
    clients: HttpClients,
    notifier: Notifier,
    last_observation: Instant,
    last_status: String,
    metrics: Arc<Metrics>,
    /// The last result of each probe, and the last action taken for it, for `/status`.
    last_checks: BTreeMap<String, (Outcome, Instant)>,
    last_actions: BTreeMap<String, String>,
    /// When each remedy action last ended, to join requests that come just after.
    remedy_ended: BTreeMap<String, Instant>,
}

/// Runs until `shutdown` completes; each message on `reloads` re-reads the config. Fails only
/// at start (another daemon holds the state dir). Returns the scheduler's lateness figures.
pub async fn run(
    config: Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
    mut reloads: mpsc::Receiver<()>,
) -> Result<Lateness, String> {
    let state_dir = config.watchdog.state_dir.clone();
    let _lock = state::lock(&state_dir, "daemon.lock", Duration::ZERO)?;
    let (mut saved, warnings) = state::load(&state_dir, state::DAEMON_FILE, &clock::boot_id());
    for w in warnings {
        tracing::warn!("{w}");
    }
    saved
        .engine
        .retain_probes(|name| config.probe(name).is_some());

    let (events_tx, mut events_rx) = mpsc::channel::<Event>(1024);
    let (delivered_tx, mut delivered_rx) = mpsc::unbounded_channel::<Ack>();
    let durable_up_to = saved.next_page_id;
    // Fails without any CA certificate on the system (a bare container image): say so, rather
    // than letting reqwest's default client panic.
    let page_client = crate::probe::client_builder()
        .build()
        .map_err(|e| format!("cannot build the HTTP client for pages: {e}"))?;
    let mut daemon = Daemon {
        in_flight: Arc::new(Semaphore::new(config.watchdog.max_in_flight)),
        config: Arc::new(config),
        options,
        state: saved,
        dirty: false,
        saving: false,
        durable_up_to,
        dispatched_up_to: 0,
        probes: BTreeMap::new(),
        next_generation: 0,
        pagers: BTreeMap::new(),
        pager_handles: Vec::new(),
        page_client,
        delivered_tx,
        pagers_stop: watch::channel(false).0,
        remedy_locks: BTreeMap::new(),
        remedy_tasks: JoinSet::new(),
        events_tx,
        lateness: Arc::new(Mutex::new(Lateness::default())),
        epoch: Instant::now(),
        clients: HttpClients::default(),
        notifier: Notifier::from_env(),
        last_observation: Instant::now(),
        last_status: String::new(),
        metrics: Arc::new(Metrics::default()),
        last_checks: BTreeMap::new(),
        last_actions: BTreeMap::new(),
        remedy_ended: BTreeMap::new(),
    };
    let config = daemon.config.clone();
    daemon.apply(config);
    let (control_tx, mut control_rx) = mpsc::channel::<Control>(16);
    let (api_stop, _) = watch::channel(false);
    let mut api_tasks = Vec::new();
    let api = &daemon.config.watchdog;
    match crate::status::serve_unix(
        api.api_socket.clone(),
        control_tx.clone(),
        daemon.metrics.clone(),
        api_stop.subscribe(),
    )
    .await
    {
        Ok(task) => api_tasks.push(task),
        Err(e) => tracing::error!(error = %e, "status API unavailable"),
    }
    if let Some(address) = api.api_listen {
        let token = match api.api_token.as_ref().map(|t| t.resolve()) {
            Some(Err(e)) => {
                tracing::error!(error = %e, "api_token cannot be read: the TCP API stays off");
                None
            }
            other => Some(other.and_then(Result::ok)),
        };
        if let Some(token) = token {
            match crate::status::serve_tcp(
                address,
                token,
                control_tx.clone(),
                daemon.metrics.clone(),
                api_stop.subscribe(),
            )
            .await
            {
                Ok(task) => api_tasks.push(task),
                Err(e) => tracing::error!(error = %e, "status API on TCP unavailable"),
            }
        }
    }
    drop(control_tx);
    // Pages left in the outbox by an earlier run are on disk already: send them now.
    daemon.dispatch_pages();
    tracing::info!(
        probes = daemon.config.probes.len(),
        actions = daemon.config.actions.len(),
        dry_run = daemon.dry_run(),
        pending_pages = daemon.state.pending_pages.len(),
        "watchdog running"
    );
    let status = daemon.status_line();
    daemon.notifier.ready(&status);
    daemon.last_status = status;

    // Keep-alives for systemd's WatchdogSec=, at half its period; housekeeping every second.
    let keepalive = Notifier::watchdog_interval().map(|d| d / 2);
    let mut housekeeping = tokio::time::interval(
        keepalive
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1)),
    );
    housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = reloads.recv() => daemon.reload(),
            Some(event) = events_rx.recv() => daemon.handle(event),
            Some(ack) = delivered_rx.recv() => daemon.delivered(ack),
            Some(control) = control_rx.recv() => daemon.control(control),
            Some(_) = daemon.remedy_tasks.join_next(), if !daemon.remedy_tasks.is_empty() => {}
            _ = housekeeping.tick() => daemon.housekeeping(),
        }
    }

    tracing::info!("stopping");
    daemon.notifier.stopping();
    let _ = api_stop.send(true);
    for task in api_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    let _ = std::fs::remove_file(&daemon.config.watchdog.api_socket);
    for task in std::mem::take(&mut daemon.probes).into_values() {
        let _ = task.stop.send(true);
        let _ = task.handle.await;
    }
    // Remedies in progress get a moment to finish: killing a restart halfway leaves the
    // service stopped.
    if !daemon.remedy_tasks.is_empty() {
        tracing::info!(
            running = daemon.remedy_tasks.len(),
            "waiting up to 10 s for running remedies"
        );
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                tokio::select! {
                    joined = daemon.remedy_tasks.join_next() => if joined.is_none() { break },
                    Some(event) = events_rx.recv() => daemon.handle(event),
                }
            }
        })
        .await;
    }
    // A drain must never be left behind silently (incident 2021-02): say which servers stay
    // out of rotation. (The `haproxy` pool probe sees them too, at the next start.)
    for (server, held_for) in action::haproxy::held() {
        tracing::warn!(server = %server, drained_for = %crate::probe::human(held_for), "stopping while this watchdog holds a server drained: it stays out of rotation until readied");
    }
    // Give pagers a moment to deliver what they hold, taking note of what they did.
    let _ = daemon.pagers_stop.send(true);
    daemon.pagers.clear();
    let deadline = Instant::now() + Duration::from_secs(5);
    for handle in std::mem::take(&mut daemon.pager_handles) {
        let _ = tokio::time::timeout_at(deadline, handle).await;
    }
    while let Ok(ack) = delivered_rx.try_recv() {
        daemon.delivered(ack);
    }
    let bytes = state::encode(&daemon.state);
    let dir = daemon.config.watchdog.state_dir.clone();
    match tokio::task::spawn_blocking(move || state::write_atomic(&dir, state::DAEMON_FILE, &bytes))
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "could not save state at exit"),
        Err(e) => tracing::error!(error = %e, "could not save state at exit"),
    }
    if !daemon.state.pending_pages.is_empty() {
        tracing::warn!(
            pages = daemon.state.pending_pages.len(),
            "undelivered pages kept in the outbox for the next start"
        );
    }
    let lateness = std::mem::take(&mut *daemon.lateness.lock().unwrap_or_else(|e| e.into_inner()));
    tracing::info!(
        checks = lateness.count,
        p50_ms = lateness.quantile(0.5).as_secs_f64() * 1000.0,
        p99_ms = lateness.quantile(0.99).as_secs_f64() * 1000.0,
        max_ms = lateness.quantile(1.0).as_secs_f64() * 1000.0,
        "scheduler lateness"
    );
    Ok(lateness)
}

impl Daemon {
    fn dry_run(&self) -> bool {
        self.options.dry_run || self.config.watchdog.dry_run
    }

    fn handle(&mut self, event: Event) {
        let now = clock::now();
        match event {
            Event::Observed {
                probe,
                generation,
                outcome,
            } => {
                // A probe replaced by a reload may still have a result in flight: not ours.
                if self
                    .probes
                    .get(&*probe)
                    .is_none_or(|t| t.generation != generation)
                {
                    return;
                }
                self.last_observation = Instant::now();
                let config = self.config.clone();
                let Some(spec) = config.probe(&probe) else {
                    return;
                };
                tracing::debug!(probe = %spec.name, ok = outcome.ok, reason = %outcome.reason, "checked");
                let effects =
                    self.state
                        .engine
                        .observe(&spec.rules, outcome.verdict(), &outcome.reason, now);
                let labels = ProbeLabels {
                    probe: spec.name.clone(),
                };
                self.metrics
                    .probe_duration
                    .get_or_create(&labels)
                    .observe(outcome.latency.as_secs_f64());
                if !outcome.ok {
                    self.metrics.probe_failures.get_or_create(&labels).inc();
                }
                let up = self
                    .state
                    .engine
                    .probe(&spec.name)
                    .is_some_and(|m| m.health.state == State::Up);
                self.metrics
                    .probe_up
                    .get_or_create(&labels)
                    .set(i64::from(up));
                // Counters of healthy probes change at every check; persisting those would
                // write the file every second for nothing. Failures and decisions are kept.
                if !effects.is_empty() || !outcome.ok {
                    self.dirty = true;
                }
                for effect in effects {
                    if let Some(work) = crate::events::log_decision(effect) {
                        self.carry_out(work, now);
                    }
                }
                // In place when known (every check but the first): no key to clone.
                match self.last_checks.get_mut(&spec.name) {
                    Some(last) => *last = (outcome, Instant::now()),
                    None => {
                        self.last_checks
                            .insert(spec.name.clone(), (outcome, Instant::now()));
                    }
                }
            }
            Event::RemedyDone {
                probe,
                action,
                result,
                took,
                joined,
            } => {
                self.remedy_ended.insert(action.clone(), Instant::now());
                match &result {
                    Ok(s) => {
                        tracing::info!(probe = %probe, action = %action, result = %s, took = ?took, "remedy done");
                    }
                    Err(e) => {
                        tracing::error!(probe = %probe, action = %action, error = %e, took = ?took, "remedy failed");
                    }
                }
                if let Some(spec) = self.config.probe(&probe).cloned() {
                    let result = match &result {
                        Ok(_) if joined => Ok(crate::rules::JOINED),
                        Ok(_) => Ok("ok"),
                        Err(e) => Err(e.as_str()),
                    };
                    let effects =
                        self.state
                            .engine
                            .remedy_finished(&spec.rules, &action, result, now);
                    self.dirty = true;
                    for effect in effects {
                        if let Some(work) = crate::events::log_decision(effect) {
                            self.carry_out(work, now);
                        }
                    }
                }
            }
            Event::Saved {
                pages_up_to,
                result,
            } => {
                self.saving = false;
                if let Err(e) = result {
                    // A full or broken disk must not hold pages back: send them anyway.
                    tracing::error!(error = %e, "could not save state");
                }
                self.durable_up_to = self.durable_up_to.max(pages_up_to);
                self.dispatch_pages();
                if self.dirty {
                    self.save();
                }
            }
        }
    }

    fn carry_out(&mut self, work: Work, now: clock::Timestamp) {
        let dry_run = self.dry_run();
        let host = self.config.watchdog.hostname.clone();
        match work {
            Work::Page {
                pager,
                event,
                summary,
                incident,
            } => {
                if dry_run {
                    tracing::warn!(probe = %incident.probe, action = %pager, event = ?event, summary = %summary, "dry run: would page");
                    return;
                }
                tracing::info!(probe = %incident.probe, action = %pager, event = ?event, summary = %summary, "paging");
                let page = Page::new(event, &summary, &incident, &host, now);
                self.state.enqueue(pager, page);
                // It is sent once it is on disk.
                self.dirty = true;
                self.save();
            }
            Work::Remedy {
                action,
                trigger,
                incident,
            } => {
                let Some(spec) = self.config.actions.get(&action).cloned() else {
                    return;
                };
                let ctx = Context {
                    action: action.clone(),
                    host,
                    incident,
                    now,
                };
                let events = self.events_tx.clone();
                let lock = self.remedy_locks.entry(action.clone()).or_default().clone();
                // Two probes of one service ask for the same restart (the http probe saw it
                // hang, the process probe saw the restart kill it): one restart is enough. A
                // request while it runs waits for it; one just after it ended waits out the
                // probe's restart_grace. Neither counts against the budget.
                let grace = self
                    .config
                    .probe(&ctx.incident.probe)
                    .map(|p| p.rules.policy.restart_grace);
                let running = lock.try_lock().is_err();
                let ended_recently = self
                    .remedy_ended
                    .get(&action)
                    .zip(grace)
                    .is_some_and(|(t, g)| t.elapsed() < g);
                if running || ended_recently {
                    self.state.engine.refund(&action);
                    tracing::info!(probe = %ctx.incident.probe, action = %action, running, "remedy joined: it is running or just ran for another probe; not run again");
                    if !running {
                        if let Some(spec) = self.config.probe(&ctx.incident.probe) {
                            self.state.engine.remedy_finished(
                                &spec.rules,
                                &action,
                                Ok(crate::rules::JOINED),
                                now,
                            );
                        }
                        return;
                    }
                } else {
                    tracing::warn!(probe = %ctx.incident.probe, action = %action, kind = spec.kind(), trigger = %trigger, reason = %ctx.incident.reason, dry_run, "running remedy");
                }
                // The budget now counts this run: keep that even if we crash during it.
                self.dirty = true;
                self.save();
                self.remedy_tasks.spawn(async move {
                    let started = Instant::now();
                    let mut joined = false;
                    let result =
                        if dry_run {
                            Ok("dry run: not run".to_string())
                        } else {
                            match lock.try_lock() {
                                Ok(_guard) => action::run_remedy(&spec, &ctx).await,
                                Err(_) => {
                                    // Another probe is running this very action: wait for it, and
                                    // count its result as ours rather than restarting twice.
                                    let _ = lock.lock().await;
                                    joined = true;
                                    Ok("already being run for another probe; not run again"
                                        .to_string())
                                }
                            }
                        };
                    let probe = ctx.incident.probe.clone();
                    let _ = events
                        .send(Event::RemedyDone {
                            probe,
                            action,
                            result,
                            took: started.elapsed(),
                            joined,
                        })
                        .await;
                });
            }
        }
    }

    /// Writes the state on the blocking pool, unless a write is already under way (then the
    /// next one follows it).
    fn save(&mut self) {
        if self.saving || !self.dirty {
            return;
        }
        self.saving = true;
        self.dirty = false;
        let bytes = state::encode(&self.state);
        let pages_up_to = self.state.next_page_id;
        let dir = self.config.watchdog.state_dir.clone();
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let result = tokio::task::spawn_blocking(move || {
                state::write_atomic(&dir, state::DAEMON_FILE, &bytes)
            })
            .await
            .unwrap_or_else(|e| Err(format!("state writer failed: {e}")));
            let _ = events
                .send(Event::Saved {
                    pages_up_to,
                    result,
                })
                .await;
        });
    }

    /// Hands durable, not yet dispatched pages to their pagers.
    fn dispatch_pages(&mut self) {
        for pending in &self.state.pending_pages {
            if pending.id <= self.dispatched_up_to || pending.id > self.durable_up_to {
                continue;
            }
            match self.pagers.get(&pending.action) {
                Some(p) => p.pager.send(pending.id, pending.page.clone()),
                None => {
                    tracing::error!(action = %pending.action, probe = %pending.page.probe, "a page in the outbox names a webhook that is no longer configured")
                }
            }
        }
        self.dispatched_up_to = self.dispatched_up_to.max(self.durable_up_to);
    }

    fn delivered(&mut self, ack: Ack) {
        let Some(p) = self.state.pending_pages.iter().find(|p| p.id == ack.id) else {
            return;
        };
        let kind = self
            .config
            .actions
            .get(&p.action)
            .map_or("pager", |a| a.kind());
        let outcome = if ack.delivered {
            "delivered"
        } else {
            "refused"
        };
        let line = format!("page {} ({:?}): {outcome}", p.action, p.page.event);
        self.last_actions.insert(p.page.probe.clone(), line);
        self.metrics.action(kind, outcome);
        if ack.delivered {
            crate::action::pager::track_open(&mut self.state.open_pages, p.clone());
        }
        self.state.pending_pages.retain(|p| p.id != ack.id);
        self.dirty = true;
    }

    fn control(&mut self, control: Control) {
        let now = clock::now();
        let known = |config: &Config, probe: &str| {
            config.probe(probe).map(|_| ()).ok_or_else(|| {
                let names: Vec<&str> = config.probes.iter().map(|p| p.name.as_str()).collect();
                format!("no probe named \"{probe}\"; probes: {}", names.join(", "))
            })
        };
        match control {
            Control::Status(reply) => {
                let _ = reply.send(self.report(now));
            }
            Control::Pause {
                probe,
                duration,
                reply,
            } => {
                let result = known(&self.config, &probe).map(|()| {
                    self.state.engine.pause(&probe, duration.map(|d| now + d));
                    self.dirty = true;
                    let until = duration.map_or("until resumed".to_string(), |d| format!("for {}", humantime::format_duration(d)));
                    tracing::warn!(probe = %probe, until = %until, "paused: results ignored, no actions");
                    format!("{probe} paused {until}")
                });
                let _ = reply.send(result);
            }
            Control::Resume { probe, reply } => {
                let result = known(&self.config, &probe).and_then(|()| {
                    if self.state.engine.resume(&probe, now) {
                        self.dirty = true;
                        tracing::info!(probe = %probe, "resumed");
                        Ok(format!("{probe} resumed"))
                    } else {
                        Err(format!("{probe} is not paused"))
                    }
                });
                let _ = reply.send(result);
            }
            Control::DrainFlags(reply) => {
                let files = self
                    .config
                    .actions
                    .values()
                    .filter_map(|a| match a {
                        ActionSpec::DrainFlag(f) => Some(f.file.clone()),
                        _ => None,
                    })
                    .collect();
                let _ = reply.send(files);
            }
            Control::Reload(reply) => {
                let before = self.config.clone();
                self.reload();
                let result = if Arc::ptr_eq(&before, &self.config) {
                    Err("reload refused: the new config is invalid (see the daemon's log, or run `watchdog validate`)".to_string())
                } else {
                    Ok("reloaded".to_string())
                };
                let _ = reply.send(result);
            }
        }
    }

    fn report(&self, now: clock::Timestamp) -> StatusReport {
        let probes = self
            .config
            .probes
            .iter()
            .map(|spec| {
                let memory = self.state.engine.probe(&spec.name);
                let last = self.last_checks.get(&spec.name);
                ProbeStatus {
                    name: spec.name.clone(),
                    kind: spec.check.kind().to_string(),
                    state: memory.map_or("starting".to_string(), |m| m.health.state.to_string()),
                    state_for_seconds: memory
                        .map_or(0, |m| now.saturating_since(m.health.since).as_secs()),
                    paused: self
                        .state
                        .engine
                        .paused_until(&spec.name, now)
                        .map(|until| until.map(|t| t.saturating_since(now).as_secs())),
                    last_ok: last.map(|(o, _)| o.ok),
                    last_reason: last.map(|(o, _)| o.reason.clone()),
                    last_latency_ms: last.map(|(o, _)| o.latency.as_millis() as u64),
                    last_checked_seconds_ago: last.map(|(_, at)| at.elapsed().as_secs()),
                    consecutive_failures: memory.map_or(0, |m| m.health.consecutive_failures),
                    consecutive_successes: memory.map_or(0, |m| m.health.consecutive_successes),
                    open_incident: memory.and_then(|m| m.incident_id()),
                    last_action: self.last_actions.get(&spec.name).cloned(),
                }
            })
            .collect();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            host: self.config.watchdog.hostname.clone(),
            pid: std::process::id(),
            dry_run: self.dry_run(),
            pending_pages: self.state.pending_pages.len(),
            probes,
        }
    }

    fn housekeeping(&mut self) {
        self.metrics
            .pages_pending
            .set(self.state.pending_pages.len() as i64);
        if self.dirty {
            self.save();
        }
        // Alive only while checks keep completing: a wedged scheduler stops the keep-alives
        // and systemd restarts us. (No probes: the loop turning is progress enough.)
        let longest = self
            .config
            .probes
            .iter()
            .map(|p| p.interval)
            .max()
            .unwrap_or_default();
        let stalled_after = (longest * 3).max(Duration::from_secs(30));
        if self.config.probes.is_empty() || self.last_observation.elapsed() < stalled_after {
            self.notifier.watchdog();
        } else {
            tracing::error!(silent_for = ?self.last_observation.elapsed(), "no check completed lately: withholding the systemd keep-alive");
        }
        let status = self.status_line();
        if status != self.last_status {
            self.notifier.status(&status);
            self.last_status = status;
        }
    }

    /// "12 probes, all up"; "12 probes, 10 up, 1 down: apache, 1 starting". Honest from the
    /// first moment: before their first check, probes are "starting", not "up".
    fn status_line(&self) -> String {
        let now = clock::now();
        let (mut up, mut starting, mut paused, mut down) = (0, 0, 0, Vec::new());
        for p in &self.config.probes {
            if self.state.engine.is_paused(&p.name, now) {
                paused += 1;
                continue;
            }
            match self.state.engine.probe(&p.name).map(|m| m.health.state) {
                Some(State::Up) => up += 1,
                Some(State::Down) => down.push(p.name.as_str()),
                Some(State::Starting) | None => starting += 1,
            }
        }
        let n = self.config.probes.len();
        if up == n {
            return format!("{n} probes, all up");
        }
        let mut parts = Vec::new();
        if up > 0 {
            parts.push(format!("{up} up"));
        }
        if !down.is_empty() {
            parts.push(format!("{} down: {}", down.len(), down.join(", ")));
        }
        if starting > 0 {
            parts.push(format!("{starting} starting"));
        }
        if paused > 0 {
            parts.push(format!("{paused} paused"));
        }
        format!("{n} probes, {}", parts.join(", "))
    }

    fn reload(&mut self) {
        let Some(path) = self.options.config_path.clone() else {
            tracing::warn!("reload requested, but the config was not read from a file");
            return;
        };
        self.notifier.reloading();
        match config::load(&path) {
            Err(diags) => {
                for d in diags.errors() {
                    tracing::error!("{d}");
                }
                tracing::error!(config = %path.display(), "reload refused: the new config is invalid; the old one keeps running");
            }
            Ok((new, warnings)) => {
                for w in warnings.warnings() {
                    tracing::warn!("config: {w}");
                }
                if new.watchdog.state_dir != self.config.watchdog.state_dir {
                    tracing::warn!("state_dir changed: it takes effect at the next start");
                }
                self.apply(Arc::new(new));
            }
        }
        let status = self.status_line();
        self.notifier.ready(&status);
        self.last_status = status;
    }

    /// Makes the running tasks match `new`, touching only what changed.
    fn apply(&mut self, new: Arc<Config>) {
        let now = clock::now();
        let old = std::mem::replace(&mut self.config, new.clone());
        let (mut started, mut changed, mut removed, mut kept) = (0, 0, 0, 0);

        // Pagers first: pages of removed probes are resolved through them.
        for (name, spec) in &new.actions {
            if spec.role() == crate::rules::Role::Page {
                let fingerprint = format!("{spec:?}");
                if self
                    .pagers
                    .get(name)
                    .is_some_and(|p| p.fingerprint == fingerprint)
                {
                    continue;
                }
                let (pager, handle) = Pager::spawn(
                    name.clone(),
                    spec.clone(),
                    self.page_client.clone(),
                    self.pagers_stop.subscribe(),
                    self.delivered_tx.clone(),
                );
                // Reminders and refreshes of incidents still open go on.
                for open in self.state.open_pages.iter().filter(|o| &o.action == name) {
                    pager.remember(open.page.clone());
                }
                self.pagers
                    .insert(name.clone(), PagerTask { fingerprint, pager });
                self.pager_handles.push(handle);
            }
        }

        let gone: Vec<String> = self
            .probes
            .keys()
            .filter(|n| new.probe(n).is_none())
            .cloned()
            .collect();
        for name in gone {
            if let Some(task) = self.probes.remove(&name) {
                let _ = task.stop.send(true);
                removed += 1;
            }
            if let Some(spec) = old.probe(&name) {
                for effect in self.state.engine.retire(&spec.rules, now) {
                    if let Some(work) = crate::events::log_decision(effect) {
                        self.carry_out(work, now);
                    }
                }
            }
        }
        self.pagers.retain(|name, _| {
            new.actions
                .get(name)
                .is_some_and(|a| a.role() == crate::rules::Role::Page)
        });
        self.state.open_pages.retain(|o| {
            crate::rules::incident_of_probe(&o.page.probe, |p| new.probe(p).is_some())
                && new
                    .actions
                    .get(&o.action)
                    .is_some_and(|a| a.role() == crate::rules::Role::Page)
        });

        for spec in &new.probes {
            let fingerprint = format!("{spec:?}");
            match self.probes.get(&spec.name) {
                Some(task) if task.fingerprint == fingerprint => {
                    kept += 1;
                    continue;
                }
                Some(_) => {
                    changed += 1;
                    if old.probe(&spec.name).map(|o| &o.rules) != Some(&spec.rules) {
                        self.state.engine.rules_changed(&spec.name);
                    }
                }
                None => started += 1,
            }
            if let Some(old_task) = self.probes.remove(&spec.name) {
                let _ = old_task.stop.send(true);
            }
            self.next_generation += 1;
            let (stop, stop_rx) = watch::channel(false);
            let probe = Arc::new(Probe::build(&spec.check, &mut self.clients));
            let handle = tokio::spawn(probe_loop(
                Arc::from(spec.name.as_str()),
                self.next_generation,
                (
                    first_tick(
                        (self.epoch, self.config.watchdog.start_grid),
                        Instant::now(),
                        &spec.name,
                        spec.interval,
                    ),
                    spec.interval,
                    spec.timeout,
                ),
                probe,
                self.in_flight.clone(),
                self.events_tx.clone(),
                stop_rx,
                self.lateness.clone(),
            ));
            self.probes.insert(
                spec.name.clone(),
                ProbeTask {
                    fingerprint,
                    generation: self.next_generation,
                    stop,
                    handle,
                },
            );
        }
        if !Arc::ptr_eq(&old, &new) {
            tracing::info!(
                started,
                changed,
                removed,
                unchanged = kept,
                "config reloaded"
            );
        }
        self.dirty = true;
    }
}

#[allow(clippy::too_many_arguments)]
async fn probe_loop(
    name: Arc<str>,
    generation: u64,
    (start, interval, timeout): (Instant, Duration, Duration),
    probe: Arc<Probe>,
    in_flight: Arc<Semaphore>,
    events: mpsc::Sender<Event>,
    mut stop: watch::Receiver<bool>,
    lateness: Arc<Mutex<Lateness>>,
) {
    let mut ticks = tokio::time::interval_at(start, interval);
    // A stalled runtime must not cause a burst of catch-up checks; a late tick must not move
    // the probe off its grid either (Delay would: the next tick would be `interval` after
    // the late one).
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        let scheduled = tokio::select! {
            t = ticks.tick() => t,
            // The kernel told the probe something (a process exited): check now, off-schedule.
            _ = probe.next_event() => Instant::now(),
            _ = stop.wait_for(|s| *s) => return,
        };
        let permit = tokio::select! {
            p = in_flight.acquire() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.wait_for(|s| *s) => return,
        };
        if let Ok(mut l) = lateness.lock() {
            l.record(Instant::now().saturating_duration_since(scheduled));
        }
        // Boxed: the check's state exists only while a check runs (at most max_in_flight at
        // once), instead of inside every idle probe task.
        let outcome = tokio::select! {
            o = Box::pin(probe.run(timeout)) => o,
            _ = stop.wait_for(|s| *s) => return,
        };
        drop(permit);
        let event = Event::Observed {
            probe: name.clone(),
            generation,
            outcome,
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

/// A stable start offset in [0, interval): probes spread over their interval instead of all
/// firing together, and the same config starts the same way each time. With a `grid`, the
/// offset is a whole number of grid steps: the probes that share a slot run in one wake-up
/// of the process (at 200 checks a second, a 250 ms grid halves the CPU a check costs: the
/// kernel's work for the wake-ups, not the checks, was most of it; issue #7).
fn start_offset(name: &str, interval: Duration, grid: Duration) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    if grid.is_zero() {
        let fraction = (h.finish() % 10_000) as f64 / 10_000.0;
        return interval.mul_f64(fraction);
    }
    let slots = (interval.as_nanos() / grid.as_nanos()).max(1);
    let slot = u128::from(h.finish()) % slots;
    Duration::from_nanos(u64::try_from(grid.as_nanos() * slot).unwrap_or(u64::MAX))
}

/// The first tick of a probe started at `now`: its offset in the schedule laid from `epoch`
/// (the daemon's start), in the first period that has not passed, so that probes started at
/// different moments (by a reload) still share the grid. A tick that passed less than
/// [`JUST_PASSED`] ago still counts: probes in the first slot check at once at start.
fn first_tick(
    (epoch, grid): (Instant, Duration),
    now: Instant,
    name: &str,
    interval: Duration,
) -> Instant {
    let mut tick = epoch + start_offset(name, interval, grid);
    if tick + JUST_PASSED < now {
        let periods = (now - tick - JUST_PASSED)
            .as_nanos()
            .div_ceil(interval.as_nanos().max(1));
        tick += interval * u32::try_from(periods).unwrap_or(u32::MAX);
    }
    tick
}

/// See [`first_tick`].
const JUST_PASSED: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [&str; 6] = ["a", "apache", "ssh", "x-1234", "db", "queue"];

    #[test]
    fn start_offsets_are_within_the_interval_stable_and_on_the_grid() {
        let i = Duration::from_secs(10);
        let grid = Duration::from_millis(250);
        for name in NAMES {
            let o = start_offset(name, i, grid);
            assert!(o < i, "{name}: {o:?}");
            assert_eq!(o, start_offset(name, i, grid));
            assert_eq!(o.as_nanos() % grid.as_nanos(), 0, "{name}: {o:?}");
            assert!(start_offset(name, i, Duration::ZERO) < i);
        }
        // Spread over the slots, not all in one (6 names, 40 slots).
        let distinct: std::collections::BTreeSet<_> =
            NAMES.iter().map(|n| start_offset(n, i, grid)).collect();
        assert!(distinct.len() > 1, "{distinct:?}");
        // An interval shorter than the grid has one slot: the grid's origin.
        for name in NAMES {
            assert_eq!(
                start_offset(name, Duration::from_millis(100), grid),
                Duration::ZERO
            );
        }
    }

    #[test]
    fn probes_started_later_keep_the_grid() {
        let epoch = Instant::now();
        let (interval, grid) = (Duration::from_secs(1), Duration::from_millis(250));
        for name in NAMES {
            let offset = start_offset(name, interval, grid);
            // At the daemon's start: the probe's own slot in the first period.
            assert_eq!(
                first_tick((epoch, grid), epoch, name, interval),
                epoch + offset
            );
            // Started 3.3 s later (a reload): the first of its slots that has not passed,
            // whole periods after the start's.
            let now = epoch + Duration::from_millis(3300);
            let tick = first_tick((epoch, grid), now, name, interval);
            assert!(tick + JUST_PASSED >= now && tick < now + interval, "{name}");
            assert_eq!((tick - epoch - offset).as_nanos() % interval.as_nanos(), 0);
        }
        // A slot that passed a moment ago is still taken: no wait of a whole interval.
        let now = epoch + Duration::from_millis(3);
        assert_eq!(
            first_tick((epoch, grid), now, "a", Duration::from_millis(100)),
            epoch
        );
    }

    #[test]
    fn lateness_quantiles() {
        let mut l = Lateness::default();
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.quantile(0.0), Duration::from_millis(1));
        assert_eq!(l.quantile(0.99), Duration::from_millis(99));
        assert_eq!(l.quantile(1.0), Duration::from_millis(100));
    }
}

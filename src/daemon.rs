//! `watchdog run`: the daemon.
//!
//! Shape (one process, one thread, many tasks):
//! - one **probe task** per probe: ticks on its own interval (with a start jitter so probes
//!   spread out), takes a slot among `max_in_flight`, runs the check under its hard timeout,
//!   and sends the outcome to the engine;
//! - one **engine task** owns the pure [`Engine`] and the clock readings it is fed; it turns
//!   outcomes into effects and hands them off without waiting on any of them;
//! - each **remedy** runs in a task of its own and reports back when it ends; two requests for
//!   the same action never run at once (the second waits for the first and is then skipped);
//! - each webhook has a **pager task** with a queue and retries.
//!
//! So a hung target holds one probe task, a slow restart holds one remedy task, and a dead
//! pager holds one queue: nothing else waits. Shutdown is a future passed in.

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::action::webhook::{Page, Pager};
use crate::action::{self, Context};
use crate::clock;
use crate::config::{ActionSpec, Config, ProbeSpec};
use crate::events::Work;
use crate::probe::{HttpClients, Outcome, Probe};
use crate::rules::{Effect, Engine};

/// What probe and remedy tasks tell the engine task.
enum Event {
    Observed {
        probe: usize,
        outcome: Outcome,
    },
    RemedyDone {
        probe: usize,
        action: String,
        result: Result<String, String>,
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
}

/// Runs until `shutdown` completes. Returns the scheduler's lateness figures.
pub async fn run(
    config: Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Lateness {
    let config = Arc::new(config);
    let dry_run = options.dry_run || config.watchdog.dry_run;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (events_tx, mut events_rx) = mpsc::channel::<Event>(1024);
    let lateness = Arc::new(Mutex::new(Lateness::default()));

    let mut clients = HttpClients::default();
    let probes: Vec<Arc<Probe>> = config
        .probes
        .iter()
        .map(|p| Arc::new(Probe::build(&p.check, &mut clients)))
        .collect();

    // Pagers: one queue per webhook action.
    let page_client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_default();
    let mut pagers = BTreeMap::new();
    let mut pager_tasks = Vec::new();
    for (name, spec) in &config.actions {
        if let ActionSpec::Webhook(w) = spec {
            let (pager, task) = Pager::spawn(
                name.clone(),
                w.clone(),
                page_client.clone(),
                stop_rx.clone(),
            );
            pagers.insert(name.clone(), pager);
            pager_tasks.push(task);
        }
    }

    let in_flight = Arc::new(Semaphore::new(config.watchdog.max_in_flight));
    let mut probe_tasks = Vec::new();
    for (index, spec) in config.probes.iter().enumerate() {
        probe_tasks.push(tokio::spawn(probe_loop(
            index,
            spec.clone(),
            probes[index].clone(),
            in_flight.clone(),
            events_tx.clone(),
            stop_rx.clone(),
            lateness.clone(),
        )));
    }
    tracing::info!(
        probes = config.probes.len(),
        actions = config.actions.len(),
        dry_run,
        "watchdog running"
    );

    let mut engine = Engine::default();
    let remedy_locks: BTreeMap<String, Arc<tokio::sync::Mutex<()>>> = config
        .actions
        .keys()
        .map(|k| (k.clone(), Arc::new(tokio::sync::Mutex::new(()))))
        .collect();
    let mut remedy_tasks = tokio::task::JoinSet::new();

    tokio::pin!(shutdown);
    loop {
        let event = tokio::select! {
            _ = &mut shutdown => break,
            event = events_rx.recv() => match event {
                Some(e) => e,
                None => break,
            },
            // Reap finished remedy tasks so the set does not grow.
            Some(_) = remedy_tasks.join_next(), if !remedy_tasks.is_empty() => continue,
        };
        let now = clock::now();
        match event {
            Event::Observed { probe, outcome } => {
                let spec = &config.probes[probe];
                tracing::debug!(probe = %spec.name, ok = outcome.ok, reason = %outcome.reason, "checked");
                let effects = engine.observe(&spec.rules, outcome.verdict(), &outcome.reason, now);
                for effect in effects {
                    carry_out(
                        effect,
                        probe,
                        &config,
                        dry_run,
                        &pagers,
                        &remedy_locks,
                        &events_tx,
                        &mut remedy_tasks,
                        now,
                    );
                }
            }
            Event::RemedyDone {
                probe,
                action,
                result,
            } => {
                let spec = &config.probes[probe];
                let outcome = match &result {
                    Ok(s) => {
                        tracing::info!(probe = %spec.name, action = %action, result = %s, "remedy done");
                        "ok"
                    }
                    Err(e) => {
                        tracing::error!(probe = %spec.name, action = %action, error = %e, "remedy failed");
                        "failed"
                    }
                };
                engine.remedy_finished(&spec.rules, &action, outcome, now);
            }
        }
    }

    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    for task in probe_tasks {
        let _ = task.await;
    }
    // Remedies in progress get a moment to finish: killing a restart halfway leaves the
    // service stopped.
    if !remedy_tasks.is_empty() {
        tracing::info!(
            running = remedy_tasks.len(),
            "waiting up to 10 s for running remedies"
        );
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while remedy_tasks.join_next().await.is_some() {}
        })
        .await;
    }
    drop(pagers);
    for task in pager_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let lateness = std::mem::take(&mut *lateness.lock().unwrap_or_else(|e| e.into_inner()));
    tracing::info!(
        checks = lateness.count,
        p50_ms = lateness.quantile(0.5).as_secs_f64() * 1000.0,
        p99_ms = lateness.quantile(0.99).as_secs_f64() * 1000.0,
        max_ms = lateness.quantile(1.0).as_secs_f64() * 1000.0,
        "scheduler lateness"
    );
    lateness
}

#[allow(clippy::too_many_arguments)]
fn carry_out(
    effect: Effect,
    probe: usize,
    config: &Arc<Config>,
    dry_run: bool,
    pagers: &BTreeMap<String, Pager>,
    remedy_locks: &BTreeMap<String, Arc<tokio::sync::Mutex<()>>>,
    events: &mpsc::Sender<Event>,
    remedy_tasks: &mut tokio::task::JoinSet<()>,
    now: clock::Timestamp,
) {
    let host = &config.watchdog.hostname;
    let Some(effect) = crate::events::log_decision(effect) else {
        return;
    };
    match effect {
        Work::Page {
            pager,
            event,
            summary,
            incident,
        } => {
            let page = Page::new(event, &summary, &incident, host, now);
            if dry_run {
                tracing::warn!(probe = %incident.probe, action = %pager, event = ?event, summary = %summary, "dry run: would page");
                return;
            }
            tracing::info!(probe = %incident.probe, action = %pager, event = ?event, summary = %summary, "paging");
            if let Some(p) = pagers.get(&pager) {
                p.send(page);
            }
        }
        Work::Remedy {
            action,
            trigger,
            incident,
        } => {
            let Some(spec) = config.actions.get(&action).cloned() else {
                return;
            };
            let ctx = Context {
                action: action.clone(),
                host: host.clone(),
                incident,
                now,
            };
            let events = events.clone();
            let lock = remedy_locks.get(&action).cloned();
            tracing::warn!(probe = %ctx.incident.probe, action = %action, kind = spec.kind(), trigger = %trigger, reason = %ctx.incident.reason, dry_run, "running remedy");
            remedy_tasks.spawn(async move {
                let result =
                    if dry_run {
                        Ok("dry run: not run".to_string())
                    } else {
                        match lock {
                            Some(lock) => match lock.try_lock() {
                                Ok(_guard) => action::run_remedy(&spec, &ctx).await,
                                Err(_) => {
                                    // Another probe is running this very action: wait for it, and
                                    // count its result as ours rather than restarting twice.
                                    let _ = lock.lock().await;
                                    Ok("already being run for another probe; not run again"
                                        .to_string())
                                }
                            },
                            None => action::run_remedy(&spec, &ctx).await,
                        }
                    };
                let _ = events
                    .send(Event::RemedyDone {
                        probe,
                        action,
                        result,
                    })
                    .await;
            });
        }
    }
}

async fn probe_loop(
    index: usize,
    spec: ProbeSpec,
    probe: Arc<Probe>,
    in_flight: Arc<Semaphore>,
    events: mpsc::Sender<Event>,
    mut stop: watch::Receiver<bool>,
    lateness: Arc<Mutex<Lateness>>,
) {
    let start = Instant::now() + jitter(&spec.name, spec.interval);
    let mut ticks = tokio::time::interval_at(start, spec.interval);
    // A check that overran its slot (it cannot: timeout < interval) or a stalled runtime must not
    // cause a burst of catch-up checks.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
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
        let outcome = tokio::select! {
            o = probe.run(spec.timeout) => o,
            _ = stop.wait_for(|s| *s) => return,
        };
        drop(permit);
        if events
            .send(Event::Observed {
                probe: index,
                outcome,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A stable start offset in [0, interval): probes spread over their interval instead of all
/// firing together, and the same config starts the same way each time.
fn jitter(name: &str, interval: Duration) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    let fraction = (h.finish() % 10_000) as f64 / 10_000.0;
    interval.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_within_the_interval_and_stable() {
        let i = Duration::from_secs(10);
        for name in ["a", "apache", "ssh", "x-1234"] {
            let j = jitter(name, i);
            assert!(j < i);
            assert_eq!(j, jitter(name, i));
        }
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

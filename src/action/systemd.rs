//! `kind = "systemd"`: restart, start, stop, reload or kill a unit through systemd's D-Bus API,
//! and wait for the job to end.
//!
//! Why not `systemctl restart` in a command action: over D-Bus we see the job's own result
//! (`done`, `failed`, `timeout`, `dependency`...) from its JobRemoved signal, read the unit's
//! state before and after (ActiveState/SubState, MainPID, NRestarts, Result) as typed values,
//! and can tell *why* a start failed, in particular systemd's start limit (`start-limit-hit`),
//! which no restart can get past until its interval ends: we say so and do not ask again while
//! it holds. The service runs in its own unit and sandbox, not as our child.
//!
//! The connection is made for each run (remedies are rare; nothing stays open between them)
//! on our tokio runtime (zbus's `tokio` feature, no runtime of its own). Every bus call has a
//! timeout, and the job wait has the action's `timeout`; a job still running then is left to
//! systemd (its own TimeoutStartSec= applies) and reported as an error naming the unit.
//!
//! When the bus itself is unreachable (no dbus-daemon: a minimal container, a broken bus),
//! `systemctl` is the fallback: as root it talks to systemd's private socket
//! (/run/systemd/private) without the bus, and it waits for the job too. Its result says so.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use zbus::proxy::CacheProperties;
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy, UnitProxy};

use crate::config::{SystemdAction, SystemdBus, SystemdOperation};
use crate::probe::human;

/// Bound on connecting and on each bus call other than the job wait.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the operation and says how it went, e.g. "restart of apache2.service: done in 1.2 s;
/// active/running, MainPID 812 -> 955, NRestarts 0 -> 0".
pub async fn run(spec: &SystemdAction) -> Result<String, String> {
    let what = format!("{} of {}", spec.operation.name(), spec.unit);
    let conn = match bounded(connect(spec.bus)).await {
        Ok(conn) => conn,
        Err(e) => {
            let bus = bus_name(spec.bus);
            tracing::warn!(unit = %spec.unit, error = %e, "the {bus} bus is unreachable: using systemctl");
            let why = format!("the {bus} bus is unreachable ({e})");
            return match fallback::run(spec).await {
                Ok(text) => Ok(format!("{what}: {text} (over systemctl: {why})")),
                Err(text) => Err(format!("{what}: {text} (over systemctl: {why})")),
            };
        }
    };
    match over_dbus(&conn, spec).await {
        Ok(text) => Ok(format!("{what}: {text}")),
        Err(text) => Err(format!("{what}: {text}")),
    }
}

async fn connect(bus: SystemdBus) -> zbus::Result<zbus::Connection> {
    match bus {
        SystemdBus::System => zbus::Connection::system().await,
        SystemdBus::User => zbus::Connection::session().await,
    }
}

fn bus_name(bus: SystemdBus) -> &'static str {
    match bus {
        SystemdBus::System => "system",
        SystemdBus::User => "user",
    }
}

/// A bus call with [`CALL_TIMEOUT`], its error as text.
async fn bounded<T>(call: impl Future<Output = zbus::Result<T>>) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(bus_error(e)),
        Err(_) => Err(format!("no answer within {}", human(CALL_TIMEOUT))),
    }
}

/// D-Bus errors as systemd worded them ("Unit x.service not found."), without zbus's wrapping.
fn bus_error(e: zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, Some(text), _) => format!("{text} ({})", name.as_str()),
        other => other.to_string(),
    }
}

async fn over_dbus(conn: &zbus::Connection, spec: &SystemdAction) -> Result<String, String> {
    let manager = bounded(ManagerProxy::new(conn)).await?;
    // LoadUnit, not GetUnit: a unit that is not loaded (stopped, garbage-collected) is loaded.
    let path = bounded(manager.load_unit(spec.unit.clone())).await?;
    let unit = bounded(
        UnitProxy::builder(conn)
            .path(path.clone())
            // Read afresh each time: a cached value could predate the job.
            .cache_properties(CacheProperties::No)
            .build(),
    )
    .await?;
    let service = if spec.unit.ends_with(".service") {
        Some(
            bounded(
                ServiceProxy::builder(conn)
                    .path(path)
                    .cache_properties(CacheProperties::No)
                    .build(),
            )
            .await?,
        )
    } else {
        None
    };
    let before = UnitState::read(&unit, service.as_ref()).await?;
    if before.load_state != "loaded" {
        // not-found, bad-setting, error, masked: systemd would refuse the job anyway.
        return Err(format!(
            "the unit cannot be acted on: LoadState={}",
            before.load_state
        ));
    }
    let starts = matches!(
        spec.operation,
        SystemdOperation::Restart | SystemdOperation::Start
    );
    if starts && let Some(refusal) = start_limit::holds(spec, &before) {
        return Err(refusal);
    }

    let started = Instant::now();
    if spec.operation == SystemdOperation::Kill {
        bounded(manager.kill_unit(spec.unit.clone(), "all".into(), spec.signal as i32)).await?;
        let after = UnitState::read(&unit, service.as_ref()).await?;
        return Ok(format!(
            "sent {} to all its processes; {}",
            spec.signal,
            before.change_to(&after)
        ));
    }

    // Listen before asking, so the job's JobRemoved cannot slip by; Subscribe makes systemd
    // send it to us whoever else listens (the job's creator gets it anyway, but only once the
    // call returned and systemd tracked us).
    let mut removed = bounded(manager.receive_job_removed()).await?;
    bounded(manager.subscribe()).await?;
    let mode = "replace".to_string();
    let unit_name = spec.unit.clone();
    let job = match spec.operation {
        SystemdOperation::Restart => bounded(manager.restart_unit(unit_name, mode)).await?,
        SystemdOperation::Start => bounded(manager.start_unit(unit_name, mode)).await?,
        SystemdOperation::Stop => bounded(manager.stop_unit(unit_name, mode)).await?,
        SystemdOperation::Reload => bounded(manager.reload_unit(unit_name, mode)).await?,
        SystemdOperation::Kill => unreachable!("handled above"),
    };
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let result = loop {
        match tokio::time::timeout_at(deadline, removed.next()).await {
            Ok(Some(signal)) => {
                let Ok(args) = signal.args() else { continue };
                if args.job == job {
                    break args.result;
                }
            }
            Ok(None) => return Err("the bus connection closed while waiting for the job".into()),
            Err(_) => {
                let now = UnitState::read(&unit, service.as_ref())
                    .await
                    .map(|s| s.describe())
                    .unwrap_or_else(|e| format!("state unknown: {e}"));
                return Err(format!(
                    "job {} still running after {} ({now}); left to systemd",
                    job.as_str(),
                    human(spec.timeout)
                ));
            }
        }
    };
    let took = human(started.elapsed());
    let after = UnitState::read(&unit, service.as_ref()).await?;
    if starts && start_limit::refused(&before, &after, Some(&result)) {
        start_limit::remember(spec, &after);
        return Err(format!(
            "job {result} after {took}: {}; {}",
            after.start_limit_text(),
            before.change_to(&after)
        ));
    }
    let summary = format!("{result} in {took}; {}", before.change_to(&after));
    if result == "done" {
        Ok(summary)
    } else {
        Err(format!("job {summary}"))
    }
}

/// What we read of a unit, before and after.
#[derive(Debug, Clone, Default, PartialEq)]
struct UnitState {
    load_state: String,
    active_state: String,
    sub_state: String,
    /// Services only (and only where the source gives them).
    result: Option<String>,
    main_pid: Option<u32>,
    n_restarts: Option<u32>,
    /// CLOCK_MONOTONIC µs of the last entry into an inactive state (failed included).
    inactive_since_us: Option<u64>,
    start_limit_interval_us: Option<u64>,
    start_limit_burst: Option<u32>,
    /// InvocationID, in hex: it changes at every start systemd actually makes.
    invocation: Option<String>,
}

impl UnitState {
    async fn read(
        unit: &UnitProxy<'_>,
        service: Option<&ServiceProxy<'_>>,
    ) -> Result<UnitState, String> {
        let mut s = UnitState {
            load_state: bounded(unit.load_state()).await?,
            active_state: bounded(unit.active_state()).await?,
            sub_state: bounded(unit.sub_state()).await?,
            inactive_since_us: Some(bounded(unit.inactive_enter_timestamp_monotonic()).await?),
            start_limit_interval_us: Some(bounded(unit.start_limit_interval_u_sec()).await?),
            start_limit_burst: Some(bounded(unit.start_limit_burst()).await?),
            invocation: Some(
                bounded(unit.invocation_id())
                    .await?
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
            ),
            ..UnitState::default()
        };
        if let Some(service) = service {
            s.result = Some(bounded(service.result()).await?);
            s.main_pid = Some(bounded(service.main_pid()).await?);
            s.n_restarts = Some(bounded(service.n_restarts()).await?);
        }
        Ok(s)
    }

    /// From `systemctl show -p ...` output (KEY=value lines).
    fn from_show(text: &str) -> UnitState {
        let props: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |k: &str| props.get(k).map(|v| v.to_string());
        UnitState {
            load_state: get("LoadState").unwrap_or_default(),
            active_state: get("ActiveState").unwrap_or_default(),
            sub_state: get("SubState").unwrap_or_default(),
            result: get("Result").filter(|r| !r.is_empty()),
            main_pid: get("MainPID").and_then(|p| p.parse().ok()),
            n_restarts: get("NRestarts").and_then(|n| n.parse().ok()),
            inactive_since_us: get("InactiveEnterTimestampMonotonic").and_then(|t| t.parse().ok()),
            // `show` prints these as "10s": the pre-check is a D-Bus nicety only.
            start_limit_interval_us: None,
            start_limit_burst: get("StartLimitBurst").and_then(|n| n.parse().ok()),
            invocation: get("InvocationID"),
        }
    }

    fn start_limit_hit(&self) -> bool {
        self.active_state == "failed" && self.result.as_deref() == Some("start-limit-hit")
    }

    fn start_limit_text(&self) -> String {
        let burst = self
            .start_limit_burst
            .map_or("too many".to_string(), |b| format!("more than {b}"));
        let within = self
            .start_limit_interval_us
            .map(|us| format!(" within {}", human(Duration::from_micros(us))))
            .unwrap_or_default();
        format!(
            "refused by systemd's start limit ({burst} starts{within}, StartLimitBurst=/StartLimitIntervalSec=); \
             not retrying until it expires or `systemctl reset-failed` clears it"
        )
    }

    /// The end (CLOCK_MONOTONIC µs) of the start limit's interval, if the unit is failed by
    /// it: a start before then would be refused again. The limit's window began at or before
    /// the failure, so it ends by failure + interval.
    fn start_limit_until(&self) -> Option<u64> {
        if !self.start_limit_hit() {
            return None;
        }
        Some(
            self.inactive_since_us?
                .saturating_add(self.start_limit_interval_us?),
        )
    }

    /// Why no start is asked for until `until`.
    fn not_tried_text(&self, until: u64, now: u64) -> String {
        format!(
            "not tried: the unit is failed because systemd's start limit was hit \
             (more than {} starts within {}, StartLimitBurst=/StartLimitIntervalSec=); \
             starts are refused for up to {} more, or until `systemctl reset-failed` clears it",
            self.start_limit_burst.unwrap_or_default(),
            self.start_limit_interval_us
                .map_or("its interval".into(), |us| human(Duration::from_micros(us))),
            human(Duration::from_micros(until.saturating_sub(now)))
        )
    }

    /// "active/running (result: exit-code)".
    fn describe(&self) -> String {
        let mut text = format!("{}/{}", self.active_state, self.sub_state);
        if let Some(r) = self.result.as_deref().filter(|r| *r != "success") {
            text.push_str(&format!(" ({r})"));
        }
        if let Some(pid) = self.main_pid {
            text.push_str(&format!(", MainPID {pid}"));
        }
        text
    }

    /// "active/running, MainPID 812 -> 955, NRestarts 0 -> 0".
    fn change_to(&self, after: &UnitState) -> String {
        let mut text = format!("{}/{}", after.active_state, after.sub_state);
        if (&self.active_state, &self.sub_state) != (&after.active_state, &after.sub_state) {
            text.push_str(&format!(" (was {}/{})", self.active_state, self.sub_state));
        }
        if let Some(r) = after.result.as_deref().filter(|r| *r != "success") {
            text.push_str(&format!(", result {r}"));
        }
        if let (Some(a), Some(b)) = (self.main_pid, after.main_pid) {
            text.push_str(&format!(", MainPID {a} -> {b}"));
        }
        if let (Some(a), Some(b)) = (self.n_restarts, after.n_restarts) {
            text.push_str(&format!(", NRestarts {a} -> {b}"));
        }
        text
    }
}

/// systemd's start limit (StartLimitBurst= starts within StartLimitIntervalSec=): recognised
/// when it refuses our start, and remembered so that we do not ask again while it holds.
///
/// systemd 252 sets the unit's Result to `start-limit-hit` only when the unit was not failed
/// already; a service that keeps failing stays at its first Result (`exit-code`), and nothing
/// on the bus says the limit holds. What does show is that the start job failed although
/// systemd started nothing: the InvocationID, new at every real start, did not change. We
/// remember such a refusal (per bus and unit, in this process) until the limit's interval has
/// passed, or until the unit changes (someone ran `reset-failed` or started it).
mod start_limit {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::{UnitState, bus_name, monotonic_us};
    use crate::config::SystemdAction;

    /// (bus, unit) -> (refused until, CLOCK_MONOTONIC µs; the InvocationID then). A process
    /// global rather than state handed in: it is a memo of systemd's answer, read and written
    /// only here, and losing it (a restart of the watchdog) costs one refused start.
    static REFUSED: Mutex<BTreeMap<(&'static str, String), Refusal>> = Mutex::new(BTreeMap::new());

    /// Refused until (CLOCK_MONOTONIC µs), and the unit's InvocationID then.
    type Refusal = (u64, Option<String>);

    /// Did systemd refuse this start for the start limit?
    pub(super) fn refused(before: &UnitState, after: &UnitState, job: Option<&str>) -> bool {
        after.start_limit_hit()
            || (job.is_none_or(|r| r == "failed")
                && after.active_state == "failed"
                && after.invocation.is_some()
                && after.invocation == before.invocation)
    }

    pub(super) fn remember(spec: &SystemdAction, after: &UnitState) {
        let Some(interval) = after.start_limit_interval_us else {
            return;
        };
        let until = monotonic_us().saturating_add(interval);
        if let Ok(mut refused) = REFUSED.lock() {
            refused.insert(
                (bus_name(spec.bus), spec.unit.clone()),
                (until, after.invocation.clone()),
            );
        }
    }

    /// `Some(why)` when a start now would be refused again: none is asked for.
    pub(super) fn holds(spec: &SystemdAction, before: &UnitState) -> Option<String> {
        let now = monotonic_us();
        if let Some(until) = before.start_limit_until() {
            return (now < until).then(|| before.not_tried_text(until, now));
        }
        let mut refused = REFUSED.lock().ok()?;
        let key = (bus_name(spec.bus), spec.unit.clone());
        let (until, invocation) = refused.get(&key)?.clone();
        if now < until && before.active_state == "failed" && before.invocation == invocation {
            Some(before.not_tried_text(until, now))
        } else {
            refused.remove(&key);
            None
        }
    }
}

/// CLOCK_MONOTONIC in µs, the clock of systemd's `*TimestampMonotonic` properties.
fn monotonic_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

/// `systemctl`, when the bus is unreachable.
mod fallback {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use super::{CALL_TIMEOUT, UnitState, start_limit};
    use crate::config::{SystemdAction, SystemdBus, SystemdOperation};
    use crate::probe::{human, snippet};

    const SHOWN: &str = "LoadState,ActiveState,SubState,Result,MainPID,NRestarts,InactiveEnterTimestampMonotonic,StartLimitBurst,InvocationID";

    pub async fn run(spec: &SystemdAction) -> Result<String, String> {
        let before = show(spec).await?;
        let started = Instant::now();
        let signal = format!("--signal={}", spec.signal);
        let args: Vec<&str> = match spec.operation {
            SystemdOperation::Kill => vec!["kill", "--kill-whom=all", &signal, &spec.unit],
            op => vec![op.name(), &spec.unit],
        };
        // systemctl waits for the job (no --no-block); our timeout bounds that wait.
        let outcome = systemctl(spec, &args, spec.timeout).await;
        let took = human(started.elapsed());
        let after = show(spec).await?;
        let starts = matches!(
            spec.operation,
            SystemdOperation::Restart | SystemdOperation::Start
        );
        if starts && start_limit::refused(&before, &after, None) && outcome.is_err() {
            return Err(format!(
                "{}; {}",
                after.start_limit_text(),
                before.change_to(&after)
            ));
        }
        match outcome {
            Ok(_) => Ok(format!("done in {took}; {}", before.change_to(&after))),
            Err(e) => Err(format!("{e}; {}", before.change_to(&after))),
        }
    }

    async fn show(spec: &SystemdAction) -> Result<UnitState, String> {
        let out = systemctl(spec, &["show", &spec.unit, "-p", SHOWN], CALL_TIMEOUT).await?;
        Ok(UnitState::from_show(&out))
    }

    /// Runs `systemctl [--user] ARGS`; its stdout, or why it failed.
    async fn systemctl(
        spec: &SystemdAction,
        args: &[&str],
        timeout: Duration,
    ) -> Result<String, String> {
        let mut cmd = tokio::process::Command::new("systemctl");
        if spec.bus == SystemdBus::User {
            cmd.arg("--user");
        }
        cmd.arg("--no-pager")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let shown = format!("systemctl {}", args.join(" "));
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run systemctl: {e}"))?;
        let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(format!("{shown}: {e}")),
            Err(_) => {
                return Err(format!(
                    "`{shown}` still waiting for the job after {}; left to systemd",
                    human(timeout)
                ));
            }
        };
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "`{shown}` failed ({}): {}",
                out.status,
                snippet(out.stderr.trim_ascii(), 300)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed_by_start_limit(since_us: u64) -> UnitState {
        UnitState {
            load_state: "loaded".into(),
            active_state: "failed".into(),
            sub_state: "failed".into(),
            result: Some("start-limit-hit".into()),
            main_pid: Some(0),
            n_restarts: Some(0),
            inactive_since_us: Some(since_us),
            start_limit_interval_us: Some(60_000_000),
            start_limit_burst: Some(2),
            invocation: None,
        }
    }

    fn spec(unit: &str) -> SystemdAction {
        SystemdAction {
            unit: unit.into(),
            operation: SystemdOperation::Restart,
            signal: nix::sys::signal::Signal::SIGTERM,
            bus: SystemdBus::System,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_start_limit_within_its_interval_is_not_hammered() {
        let s = failed_by_start_limit(monotonic_us() - 1_000_000);
        let refusal = start_limit::holds(&spec("a.service"), &s).expect("refused");
        assert!(refusal.contains("start limit"), "{refusal}");
        assert!(
            refusal.contains("more than 2 starts within 60 s"),
            "{refusal}"
        );
    }

    #[test]
    fn a_start_limit_whose_interval_passed_is_tried_again() {
        let long_ago = monotonic_us().saturating_sub(61_000_000);
        let s = failed_by_start_limit(long_ago);
        assert_eq!(start_limit::holds(&spec("b.service"), &s), None);
    }

    #[test]
    fn other_failures_are_tried() {
        let mut s = failed_by_start_limit(monotonic_us());
        s.result = Some("exit-code".into());
        assert_eq!(start_limit::holds(&spec("c.service"), &s), None);
    }

    /// systemd 252: a failed unit refused by the limit keeps Result=exit-code; the unchanged
    /// InvocationID gives it away, and the refusal is remembered until the unit changes.
    #[test]
    fn a_failed_start_that_started_nothing_is_the_start_limit() {
        let mut before = failed_by_start_limit(monotonic_us());
        before.result = Some("exit-code".into());
        before.invocation = Some("aa".into());
        let after = before.clone();
        assert!(start_limit::refused(&before, &after, Some("failed")));
        assert!(!start_limit::refused(&before, &after, Some("done")));
        let mut started = after.clone();
        started.invocation = Some("bb".into());
        assert!(!start_limit::refused(&before, &started, Some("failed")));

        let spec = spec("d.service");
        start_limit::remember(&spec, &after);
        assert!(start_limit::holds(&spec, &before).is_some());
        // reset-failed (inactive now) or a start by someone else: tried again.
        let mut reset = before.clone();
        reset.active_state = "inactive".into();
        assert_eq!(start_limit::holds(&spec, &reset), None);
        assert_eq!(start_limit::holds(&spec, &before), None, "forgotten");
    }

    #[test]
    fn systemctl_show_output_is_read() {
        let s = UnitState::from_show(
            "LoadState=loaded\nActiveState=active\nSubState=running\nResult=success\nMainPID=955\nNRestarts=3\n",
        );
        assert_eq!((s.main_pid, s.n_restarts), (Some(955), Some(3)));
        let before = UnitState {
            main_pid: Some(812),
            n_restarts: Some(3),
            ..s.clone()
        };
        assert_eq!(
            before.change_to(&s),
            "active/running, MainPID 812 -> 955, NRestarts 3 -> 3"
        );
    }
}

//! Probes: the checks that do I/O. Each is built once from a [`CheckSpec`] and then run again
//! and again; a run is a value in (the timeout), an [`Outcome`] out — never an error, never a
//! panic: whatever the target does, the outcome says it in one human line.
//!
//! - `http`: a request on a fresh connection, status, latency and a bounded read of the body;
//! - `tcp`: a connect, optionally a banner exchange;
//! - `syn_backlog`: a listener's accept queue, half-open connections, listen overflows;
//! - `process`: a process alive and within limits, its death seen at once through a pidfd;
//! - `memory`: pressure (PSI), available memory, swap, OOM kills;
//! - `haproxy`: pool capacity, the servers of a backend up and in rotation.
//! - `docker`: a container's state and Docker's own health verdict, over the Engine API.
//!
//! The hard timeout is applied here, around the whole check, so no target can hold a probe
//! task (and its slot among the in-flight checks) longer than `timeout`.

pub mod backlog;
pub mod docker;
pub mod haproxy;
mod http;
mod http1;
pub mod memory;
pub mod process;
mod tcp;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::CheckSpec;

pub use http::{HttpClients, client_builder};

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    /// A failure the kernel vouches for (the process exited): down at once, no `fail_after`.
    pub certain: bool,
    pub latency: Duration,
    /// "HTTP 504 in 12 ms", "connect timeout after 2s", "body lacks 'BusyWorkers'".
    pub reason: String,
}

impl Outcome {
    pub fn ok(latency: Duration, reason: impl Into<String>) -> Self {
        Outcome {
            ok: true,
            certain: false,
            latency,
            reason: reason.into(),
        }
    }

    pub fn fail(latency: Duration, reason: impl Into<String>) -> Self {
        Outcome {
            ok: false,
            certain: false,
            latency,
            reason: reason.into(),
        }
    }

    /// A failure that needs no confirmation: see [`Outcome::certain`].
    pub fn dead(latency: Duration, reason: impl Into<String>) -> Self {
        Outcome {
            ok: false,
            certain: true,
            latency,
            reason: reason.into(),
        }
    }

    pub fn verdict(&self) -> crate::health::Verdict {
        use crate::health::Verdict;
        match (self.ok, self.certain) {
            (true, _) => Verdict::Ok,
            (false, true) => Verdict::Dead,
            (false, false) => Verdict::Fail,
        }
    }
}

/// A runnable probe.
#[derive(Debug)]
pub enum Probe {
    Http(Box<http::HttpProbe>),
    Tcp(tcp::TcpProbe),
    SynBacklog(backlog::BacklogProbe),
    Process(process::ProcessProbe),
    Memory(memory::MemoryProbe),
    Haproxy(haproxy::HaproxyProbe),
    Docker(docker::DockerProbe),
}

impl Probe {
    pub fn build(spec: &CheckSpec, clients: &mut HttpClients) -> Probe {
        match spec {
            CheckSpec::Http(c) => Probe::Http(Box::new(http::HttpProbe::new(c.clone(), clients))),
            CheckSpec::Tcp(c) => Probe::Tcp(tcp::TcpProbe::new(c.clone())),
            CheckSpec::SynBacklog(c) => Probe::SynBacklog(backlog::BacklogProbe::new(c.clone())),
            CheckSpec::Process(c) => Probe::Process(process::ProcessProbe::new(c.clone())),
            CheckSpec::Memory(c) => Probe::Memory(memory::MemoryProbe::new(c.clone())),
            CheckSpec::Haproxy(c) => Probe::Haproxy(haproxy::HaproxyProbe::new(c.clone())),
            CheckSpec::Docker(c) => Probe::Docker(docker::DockerProbe::new(c.clone())),
        }
    }

    /// Completes when the kernel says something happened that should be checked now, ahead of
    /// the schedule: a watched process exited, a PSI trigger fired. Probes without events
    /// never complete it. Cancel-safe: the daemon selects on it against the next tick. It
    /// completes once per happening (a probe re-arms in its next check), never in a loop.
    pub async fn next_event(&self) {
        match self {
            Probe::Http(_) | Probe::Tcp(_) | Probe::Haproxy(_) | Probe::Docker(_) => {
                std::future::pending::<()>().await
            }
            Probe::SynBacklog(p) => p.next_event().await,
            Probe::Process(p) => p.next_event().await,
            Probe::Memory(p) => p.next_event().await,
        }
    }

    /// What a probe remembers between checks (counters for rates, the OOM kill count), for
    /// `watchdog check` to keep in its state file between runs.
    pub fn snapshot(&self) -> Option<serde_json::Value> {
        match self {
            Probe::Http(_) | Probe::Tcp(_) | Probe::Haproxy(_) | Probe::Docker(_) => None,
            Probe::SynBacklog(p) => p.snapshot(),
            Probe::Process(p) => p.snapshot(),
            Probe::Memory(p) => p.snapshot(),
        }
    }

    /// Restores what [`Probe::snapshot`] returned in an earlier run.
    pub fn restore(&self, snapshot: &serde_json::Value) {
        match self {
            Probe::Http(_) | Probe::Tcp(_) | Probe::Haproxy(_) | Probe::Docker(_) => {}
            Probe::SynBacklog(p) => p.restore(snapshot),
            Probe::Process(p) => p.restore(snapshot),
            Probe::Memory(p) => p.restore(snapshot),
        }
    }

    /// Runs the check once, within `timeout`.
    pub async fn run(&self, timeout: Duration) -> Outcome {
        let started = Instant::now();
        // The check records what it is waiting for, so a timeout can say "waiting for the
        // banner" rather than just "timeout".
        let phase = Phase::default();
        let result = {
            let check = async {
                match self {
                    Probe::Http(p) => p.check(&phase, started).await,
                    Probe::Tcp(p) => p.check(&phase, started).await,
                    Probe::SynBacklog(p) => p.check(&phase, started).await,
                    Probe::Process(p) => p.check(&phase, started).await,
                    Probe::Memory(p) => p.check(&phase, started).await,
                    Probe::Haproxy(p) => p.check(&phase, started).await,
                    Probe::Docker(p) => p.check(&phase, started).await,
                }
            };
            tokio::time::timeout(timeout, check).await
        };
        match result {
            Ok(outcome) => outcome,
            Err(_) => Outcome::fail(
                started.elapsed(),
                format!("timeout after {} ({})", human(timeout), phase.get()),
            ),
        }
    }
}

/// What a check is waiting for, readable after the check was cancelled by its timeout.
/// (A `Mutex`, not a `Cell`: the check future must be `Send`.)
#[derive(Debug)]
pub struct Phase(Mutex<&'static str>);

impl Default for Phase {
    fn default() -> Self {
        Phase(Mutex::new("connecting"))
    }
}

impl Phase {
    pub fn set(&self, what: &'static str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = what;
    }

    pub fn get(&self) -> &'static str {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `12 ms`, `1.5 s`: short and stable for reasons and logs.
pub fn human(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1000.0 {
        format!("{} ms", ms.round() as u64)
    } else if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

/// The innermost cause of an error: "Connection refused (os error 111)" rather than reqwest's
/// "error sending request for url (...)".
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Text for reasons: at most `max` chars, control characters escaped.
pub(crate) fn snippet(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text
        .chars()
        .take(max)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_micros(2400)), "2 ms");
        assert_eq!(human(Duration::from_secs(2)), "2 s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5 s");
    }

    #[test]
    fn snippets_escape_and_truncate() {
        assert_eq!(snippet(b"ab\x00\ncd", 10), "ab\\0\\ncd");
        assert_eq!(snippet(b"abcdef", 3), "abc…");
    }
}

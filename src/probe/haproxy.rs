//! `kind = "haproxy"`: pool capacity. Reads `show stat` and counts, in one backend, the
//! servers that are up *and* in rotation (not drained, not in maintenance); fails below
//! `min_ready` or `min_ready_ratio`, naming each missing server and since when.
//!
//! Why (incident 2021-02): an aborted deploy left load-balancer pools half drained. Nothing
//! failed — traffic was low — so nothing alerted until peak hours, hours later. Per-request
//! checks cannot see lost capacity; counting ready servers can, at the first check.

use std::time::{Duration, Instant};

use super::{Outcome, Phase};
use crate::config::HaproxyCheck;
use crate::haproxy::{self, StatRow};

#[derive(Debug)]
pub struct HaproxyProbe {
    check: HaproxyCheck,
}

impl HaproxyProbe {
    pub fn new(check: HaproxyCheck) -> Self {
        HaproxyProbe { check }
    }

    pub async fn check(&self, phase: &Phase, started: Instant) -> Outcome {
        phase.set("waiting for HAProxy's `show stat`");
        // The probe's own timeout (applied around this) is the bound; this one only keeps
        // the error message about HAProxy rather than generic.
        let rows = match haproxy::show_stat(&self.check.socket, Duration::from_secs(3600)).await {
            Ok(rows) => rows,
            Err(e) => return Outcome::fail(started.elapsed(), e),
        };
        judge(&self.check, &rows, started.elapsed())
    }
}

/// The verdict on one backend, from `show stat` rows (pure, for tests).
pub fn judge(check: &HaproxyCheck, rows: &[StatRow], latency: Duration) -> Outcome {
    let servers: Vec<&StatRow> = rows.iter().filter(|r| r.backend == check.backend).collect();
    if servers.is_empty() {
        let mut backends: Vec<&str> = rows.iter().map(|r| r.backend.as_str()).collect();
        backends.dedup();
        return Outcome::fail(
            latency,
            format!(
                "HAProxy has no backend \"{}\" with servers (backends: {})",
                check.backend,
                if backends.is_empty() {
                    "none".to_string()
                } else {
                    backends.join(", ")
                }
            ),
        );
    }
    let ready = servers.iter().filter(|r| r.ready()).count();
    let required = check.required(servers.len());
    let missing: Vec<String> = servers
        .iter()
        .filter(|r| !r.ready())
        .map(|r| match r.lastchg {
            Some(s) => format!(
                "{} {} for {}",
                r.server,
                r.status,
                humantime::format_duration(Duration::from_secs(s))
            ),
            None => format!("{} {}", r.server, r.status),
        })
        .collect();
    let summary = format!(
        "{}: {ready} of {} servers ready",
        check.backend,
        servers.len()
    );
    if ready < required {
        Outcome::fail(
            latency,
            format!(
                "{summary}, {required} required; not ready: {}",
                missing.join(", ")
            ),
        )
    } else if missing.is_empty() {
        Outcome::ok(latency, summary)
    } else {
        // Within limits, but say who is out: a drain left behind is visible in `status`.
        Outcome::ok(latency, format!("{summary}; out: {}", missing.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haproxy::{Admin, parse_stat};

    fn check(min_ready: Option<u32>, ratio: Option<f64>) -> HaproxyCheck {
        HaproxyCheck {
            socket: Admin::Tcp("127.0.0.1:1".into()),
            backend: "web".into(),
            min_ready,
            min_ready_ratio: ratio,
        }
    }

    #[test]
    fn counts_ready_servers_in_real_output() {
        // app1 DRAIN, app2 UP, app3 DOWN, app4 MAINT: one ready.
        let rows = parse_stat(include_str!("../../tests/data/haproxy/show-stat.csv")).unwrap();
        let o = judge(&check(Some(2), None), &rows, Duration::ZERO);
        assert!(!o.ok);
        assert_eq!(
            o.reason,
            "web: 1 of 4 servers ready, 2 required; not ready: app1 DRAIN for 0s, app3 DOWN for 36s, app4 MAINT for 37s"
        );
        let o = judge(&check(Some(1), None), &rows, Duration::ZERO);
        assert!(o.ok, "{}", o.reason);
        assert!(o.reason.contains("out: app1 DRAIN"), "{}", o.reason);
        // 0.25 of 4 is 1 server: met; 0.3 needs 2.
        assert!(judge(&check(None, Some(0.25)), &rows, Duration::ZERO).ok);
        assert!(!judge(&check(None, Some(0.3)), &rows, Duration::ZERO).ok);
        let o = judge(
            &HaproxyCheck {
                backend: "api".into(),
                ..check(Some(1), None)
            },
            &rows,
            Duration::ZERO,
        );
        assert!(!o.ok);
        assert!(o.reason.contains("no backend \"api\""), "{}", o.reason);
    }

    #[test]
    fn required_is_the_stricter_limit() {
        assert_eq!(check(Some(3), None).required(4), 3);
        assert_eq!(check(None, Some(0.75)).required(4), 3);
        assert_eq!(check(None, Some(0.75)).required(5), 4);
        assert_eq!(check(Some(2), Some(0.75)).required(4), 3);
        assert_eq!(check(Some(4), Some(0.5)).required(4), 4);
        assert_eq!(check(None, Some(1.0)).required(3), 3);
    }
}

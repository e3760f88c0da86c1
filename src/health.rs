//! Health hysteresis for one probe: turns a stream of ok/fail observations into a state
//! (`starting`, `up`, `down`) that does not flap with every lost packet.
//!
//! Pure: no I/O, no clock; `now` is passed in. The rule engine (`crate::rules`) owns one
//! [`Health`] per probe and acts on the [`Change`]s it reports.
//!
//! - `fail_after` consecutive failures, or `window` (N failures among the last M observations,
//!   to catch flapping), take a probe down;
//! - `recover_after` consecutive successes bring it back up;
//! - failures during `startup_grace` (after the watchdog starts) and during a *hold* (while a
//!   remedy runs and for `restart_grace` after it) are not counted: the service is starting.
//!   Successes always count, so a fast restart is seen as a fast recovery.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

/// How many observations make a verdict. Built from checked config; every field is ≥ 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthPolicy {
    pub fail_after: u32,
    pub recover_after: u32,
    /// Down when `failures` of the last `of` counted observations failed.
    pub window: Option<Window>,
    pub startup_grace: Duration,
    pub restart_grace: Duration,
}

impl Default for HealthPolicy {
    /// The documented defaults: 3 failures down, 2 successes up, no window, no grace at start,
    /// 10 s of grace after a restart.
    fn default() -> Self {
        HealthPolicy {
            fail_after: 3,
            recover_after: 2,
            window: None,
            startup_grace: Duration::ZERO,
            restart_grace: Duration::from_secs(10),
        }
    }
}

/// `failures of of`, e.g. 3 of 5. `of` is at most [`Window::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub failures: u32,
    pub of: u32,
}

impl Window {
    /// The history is kept in a `u64` bitmap.
    pub const MAX: u32 = 64;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No verdict yet since the watchdog started.
    Starting,
    Up,
    Down,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Starting => "starting",
            State::Up => "up",
            State::Down => "down",
        })
    }
}

/// What one check said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Fail,
    /// A failure that needs no confirmation (the process is gone: the kernel said so), so the
    /// probe goes down at once instead of after `fail_after` checks.
    Dead,
}

/// What one observation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Flip {
        from: State,
        to: State,
    },
    /// Still down after a remedy's grace ran out and `fail_after` more failures: the remedy did
    /// not help. The rule engine may act again.
    StillDown,
}

/// Whether failures are being ignored because a remedy is running or just ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hold {
    None,
    /// A remedy is running; its end starts the grace period.
    WhileRunning,
    Until(Timestamp),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub state: State,
    /// When `state` was entered.
    pub since: Timestamp,
    /// When the watchdog started watching (startup grace is measured from here).
    pub watching_since: Timestamp,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    /// Counted observations, newest in bit 0, 1 = failure.
    history: u64,
    history_len: u32,
    pub hold: Hold,
    /// Set after a remedy: reaching `fail_after` again reports [`Change::StillDown`].
    rearmed: bool,
}

impl Health {
    pub fn new(now: Timestamp) -> Self {
        Health {
            state: State::Starting,
            since: now,
            watching_since: now,
            consecutive_failures: 0,
            consecutive_successes: 0,
            history: 0,
            history_len: 0,
            hold: Hold::None,
            rearmed: false,
        }
    }

    pub fn is_held(&self, now: Timestamp) -> bool {
        match self.hold {
            Hold::None => false,
            Hold::WhileRunning => true,
            Hold::Until(t) => now < t,
        }
    }

    /// Feeds one observation and reports what changed.
    pub fn observe(&mut self, policy: &HealthPolicy, verdict: Verdict, now: Timestamp) -> Change {
        let ok = verdict == Verdict::Ok;
        if let Hold::Until(t) = self.hold
            && now >= t
        {
            self.hold = Hold::None;
        }
        if ok {
            self.consecutive_failures = 0;
            self.consecutive_successes = self.consecutive_successes.saturating_add(1);
            self.push_history(false);
            return match self.state {
                // The first success is enough to call a fresh start up; `recover_after`
                // guards against declaring a *recovery* too early.
                State::Starting => self.flip(State::Up, now),
                State::Down if self.consecutive_successes >= policy.recover_after => {
                    self.hold = Hold::None;
                    self.rearmed = false;
                    self.flip(State::Up, now)
                }
                _ => Change::None,
            };
        }

        let in_startup_grace = now.saturating_since(self.watching_since) < policy.startup_grace;
        if self.is_held(now) || in_startup_grace {
            // Not counted: neither a failure streak nor the window sees it.
            self.consecutive_successes = 0;
            return Change::None;
        }
        self.consecutive_successes = 0;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.push_history(true);
        let tripped = verdict == Verdict::Dead
            || self.consecutive_failures >= policy.fail_after
            || policy
                .window
                .is_some_and(|w| self.window_failures(w.of) >= w.failures);
        match self.state {
            State::Starting | State::Up if tripped => self.flip(State::Down, now),
            State::Down if self.rearmed && self.consecutive_failures >= policy.fail_after => {
                self.rearmed = false;
                Change::StillDown
            }
            _ => Change::None,
        }
    }

    /// A remedy started: ignore failures until [`Health::remedy_finished`] plus the grace.
    pub fn remedy_started(&mut self) {
        self.hold = Hold::WhileRunning;
        self.consecutive_failures = 0;
        self.rearmed = true;
    }

    pub fn remedy_finished(&mut self, policy: &HealthPolicy, now: Timestamp) {
        if self.hold == Hold::WhileRunning {
            self.hold = Hold::Until(now + policy.restart_grace);
        }
    }

    fn flip(&mut self, to: State, now: Timestamp) -> Change {
        let from = self.state;
        self.state = to;
        self.since = now;
        if to == State::Down {
            self.consecutive_successes = 0;
        }
        Change::Flip { from, to }
    }

    fn push_history(&mut self, failed: bool) {
        self.history = (self.history << 1) | u64::from(failed);
        self.history_len = (self.history_len + 1).min(Window::MAX);
    }

    fn window_failures(&self, of: u32) -> u32 {
        let n = of.min(self.history_len).min(Window::MAX);
        let mask = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
        (self.history & mask).count_ones()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HealthPolicy {
        HealthPolicy {
            fail_after: 3,
            recover_after: 2,
            window: None,
            startup_grace: Duration::ZERO,
            restart_grace: Duration::from_secs(10),
        }
    }

    /// Runs a script of observations, one per second, and returns the state after each.
    fn run(policy: &HealthPolicy, script: &str) -> String {
        let mut h = Health::new(Timestamp::secs(0));
        script
            .chars()
            .enumerate()
            .map(|(i, c)| {
                let change = h.observe(
                    policy,
                    if c == '+' {
                        Verdict::Ok
                    } else if c == 'x' {
                        Verdict::Dead
                    } else {
                        Verdict::Fail
                    },
                    Timestamp::secs(i as u64 + 1),
                );
                match (change, h.state) {
                    (Change::StillDown, _) => '!',
                    (_, State::Starting) => 's',
                    (_, State::Up) => 'U',
                    (_, State::Down) => 'D',
                }
            })
            .collect()
    }

    #[test]
    fn hysteresis_table() {
        // (observations: + ok, - fail) -> state after each observation
        let table = [
            ("+", "U"),
            ("-", "s"),
            ("--", "ss"),
            ("---", "ssD"),
            ("+---", "UUUD"),
            ("+--+--", "UUUUUU"),
            ("+---+", "UUUDD"),
            ("+---++", "UUUDDU"),
            ("+---+-++", "UUUDDDDU"),
            ("----------", "ssDDDDDDDD"),
            // x: the process is gone, no need to confirm
            ("+x", "UD"),
            ("x", "D"),
            ("+x++", "UDDU"),
        ];
        for (script, want) in table {
            assert_eq!(run(&policy(), script), want, "script {script}");
        }
    }

    #[test]
    fn window_catches_flapping_that_never_fails_three_times_in_a_row() {
        let mut p = policy();
        p.window = Some(Window { failures: 3, of: 5 });
        assert_eq!(run(&p, "+-+-+-"), "UUUUUD");
        assert_eq!(run(&p, "+-++-++-"), "UUUUUUUU", "2 of any 5: stays up");
    }

    #[test]
    fn startup_grace_ignores_early_failures() {
        let mut p = policy();
        p.startup_grace = Duration::from_secs(4);
        // seconds 1..=3 are inside the grace; failures from second 4 on count.
        assert_eq!(run(&p, "------"), "sssssD");
    }

    #[test]
    fn hold_ignores_failures_then_reports_still_down() {
        let p = policy();
        let mut h = Health::new(Timestamp::secs(0));
        for t in 1..=3 {
            h.observe(&p, Verdict::Fail, Timestamp::secs(t));
        }
        assert_eq!(h.state, State::Down);
        h.remedy_started();
        assert_eq!(
            h.observe(&p, Verdict::Fail, Timestamp::secs(4)),
            Change::None
        );
        h.remedy_finished(&p, Timestamp::secs(5));
        assert_eq!(h.hold, Hold::Until(Timestamp::secs(15)));
        for t in 6..15 {
            assert_eq!(
                h.observe(&p, Verdict::Fail, Timestamp::secs(t)),
                Change::None,
                "t={t}"
            );
        }
        assert_eq!(
            h.observe(&p, Verdict::Fail, Timestamp::secs(15)),
            Change::None
        );
        assert_eq!(
            h.observe(&p, Verdict::Fail, Timestamp::secs(16)),
            Change::None
        );
        assert_eq!(
            h.observe(&p, Verdict::Fail, Timestamp::secs(17)),
            Change::StillDown
        );
        assert_eq!(
            h.observe(&p, Verdict::Fail, Timestamp::secs(18)),
            Change::None,
            "once only"
        );
    }

    #[test]
    fn successes_during_hold_recover() {
        let p = policy();
        let mut h = Health::new(Timestamp::secs(0));
        for t in 1..=3 {
            h.observe(&p, Verdict::Fail, Timestamp::secs(t));
        }
        h.remedy_started();
        h.remedy_finished(&p, Timestamp::secs(4));
        assert_eq!(h.observe(&p, Verdict::Ok, Timestamp::secs(5)), Change::None);
        assert_eq!(
            h.observe(&p, Verdict::Ok, Timestamp::secs(6)),
            Change::Flip {
                from: State::Down,
                to: State::Up
            }
        );
        assert_eq!(h.hold, Hold::None);
    }
}

//! The rule engine: the pure core that decides what to do about a probe's health.
//!
//! It is a function of (remembered state, observation, `now`) and returns [`Effect`]s — values
//! the effect layer (`crate::daemon`, `crate::check`) carries out. No I/O, no clock, no tasks,
//! so every escalation path is tested here with tables.
//!
//! Vocabulary:
//! - an **incident** opens when a probe goes down and closes when it is up again; pages are
//!   sent at most once per incident per pager and resolved when it closes;
//! - a **remedy** (restart, start, any `command` or `signal` action) holds the probe's failure
//!   count while it runs and for `restart_grace` after it; if the probe is still failing
//!   `fail_after` times after that, the `down` rules fire again;
//! - a **budget** (`3 per 15m`) caps how often a remedy may run; past it the engine stops
//!   remedying and pages "giving up" once, instead of restarting in a storm;
//! - a **ladder** (`escalate = [...]`) takes its next step each time its rule fires (restart,
//!   restart, drain, page), each step once per incident; when it runs out, "giving up" once;
//! - a **backoff** spaces the remedies of a rule out (10 s, 20 s, 40 s ... after the previous
//!   run) and **resets** once the probe has stayed healthy for a while between incidents, so a
//!   service that flaps gets slower restarts but one good week wipes the slate;
//! - **dependencies** (`depends_on`): while a probe this one depends on is down, its rules are
//!   held back (no restart of the app for the database's outage, no second page); they fire
//!   if it is still down once the dependency is up again;
//! - a remedy that **fails** is an incident of its own (`apache/restart-apache`): its pages
//!   go out at once and resolve when the action works again or the probe recovers.
//!
//! Budgets are counted per action name, across probes: two probes that both restart apache
//! share one restart history, because what they restart is one thing. Backoff streaks are per
//! probe and action: they measure how that probe's incidents go.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::health::{Change, Health, HealthPolicy, State, Verdict};

/// When a rule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// On entering `down`, and again each time a remedy did not help.
    Down,
    /// Once per incident, when it has lasted this long.
    DownFor(Duration),
    /// When an incident closes.
    Up,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Down => f.write_str("down"),
            Trigger::DownFor(d) => write!(f, "down for {}", humantime::format_duration(*d)),
            Trigger::Up => f.write_str("up"),
        }
    }
}

/// What an action is for, which decides how the engine treats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Changes the world (restart, start, a script): held, re-armed, budgeted.
    Remedy,
    /// Tells a human: once per incident, resolved at the end.
    Page,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRef {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub max: u32,
    pub per: Duration,
}

impl Budget {
    /// Applied to every rule with a remedy that sets no budget of its own.
    pub const DEFAULT: Budget = Budget {
        max: 3,
        per: Duration::from_secs(15 * 60),
    };
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} per {}",
            self.max,
            humantime::format_duration(self.per)
        )
    }
}

/// Exponential spacing of a rule's remedies: none before the first run of a streak, then
/// `first`, `2 × first`, ... up to `max` after the previous run. A streak ends when the probe
/// stayed up for `reset_after` between two incidents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Backoff {
    pub const DEFAULT_MAX: Duration = Duration::from_secs(5 * 60);
    pub const DEFAULT_RESET_AFTER: Duration = Duration::from_secs(10 * 60);

    /// How long after the previous run the next may start, given the runs of the streak so far.
    pub fn delay(&self, runs_so_far: u32) -> Duration {
        match runs_so_far {
            0 => Duration::ZERO,
            n => self
                .first
                .saturating_mul(1u32 << (n - 1).min(20))
                .min(self.max),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub trigger: Trigger,
    /// `do = [a, b]` is one step, run in full each time the rule fires; `escalate = [a, a,
    /// [b, c]]` is a ladder of steps.
    pub steps: Vec<Vec<ActionRef>>,
    /// Each firing takes the next step, once per incident (a ladder); else always step 0.
    pub escalate: bool,
    pub budget: Option<Budget>,
    pub backoff: Option<Backoff>,
}

impl Rule {
    /// `do = [...]`: one step, every time.
    pub fn each_time(trigger: Trigger, actions: Vec<ActionRef>, budget: Option<Budget>) -> Rule {
        Rule {
            trigger,
            steps: vec![actions],
            escalate: false,
            budget,
            backoff: None,
        }
    }

    /// Every action the rule may run, in every step.
    pub fn actions(&self) -> impl Iterator<Item = &ActionRef> {
        self.steps.iter().flatten()
    }
}

/// Everything the engine needs to know about one probe, built from checked config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRules {
    pub probe: String,
    pub policy: HealthPolicy,
    pub rules: Vec<Rule>,
    /// Probes this one depends on: while one of them is down, this one's rules wait.
    pub depends_on: Vec<String>,
}

impl ProbeRules {
    /// Every pager named by any rule of this probe: who hears "giving up".
    fn pagers(&self) -> BTreeSet<&str> {
        self.rules
            .iter()
            .flat_map(Rule::actions)
            .filter(|a| a.role == Role::Page)
            .map(|a| a.name.as_str())
            .collect()
    }
}

/// What kind of page this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PageEvent {
    Firing,
    GivingUp,
    Resolved,
}

/// A copy of an incident as effects carry it (to env vars, page bodies, logs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentView {
    pub id: u64,
    pub probe: String,
    pub state: State,
    pub reason: String,
    pub since: Timestamp,
    pub actions_taken: Vec<String>,
    pub remedies: u32,
}

/// Something the effect layer must do, or log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    StateChanged {
        probe: String,
        from: State,
        to: State,
        reason: String,
    },
    /// A remedy to run or a page to send: the effects that need carrying out.
    Work(Work),
    /// A remedy was wanted but its budget is spent (logged once per incident).
    BudgetSpent {
        probe: String,
        action: String,
        budget: Budget,
    },
    /// A page was due ("giving up") but no rule of the probe names a pager: the effect layer
    /// logs it as an error so it is at least in the journal.
    NoPager { probe: String, summary: String },
    /// A due rule waits (logged once per wait): for a dependency, or for its backoff.
    Held {
        probe: String,
        actions: Vec<String>,
        because: String,
    },
}

/// The effects that need carrying out (the rest are only logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// Run a remedy; report its end with [`Engine::remedy_finished`].
    Remedy {
        action: String,
        trigger: Trigger,
        incident: IncidentView,
    },
    Page {
        pager: String,
        event: PageEvent,
        /// One human line: "apache is down: HTTP 504 in 3 ms".
        summary: String,
        incident: IncidentView,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Incident {
    id: u64,
    opened: Timestamp,
    reason: String,
    /// `Down` rules that fired in the current episode (cleared when a remedy did not help).
    fired_this_episode: BTreeSet<usize>,
    /// `DownFor` rules that fired in this incident.
    fired_once: BTreeSet<usize>,
    paged: BTreeSet<String>,
    actions_taken: Vec<String>,
    remedies: u32,
    gave_up: bool,
    pending_remedies: u32,
    /// Ladder rules: index of the step the next firing takes.
    #[serde(default)]
    next_step: BTreeMap<usize, usize>,
    /// Rules that were due but wait, and for what.
    #[serde(default)]
    held: BTreeMap<usize, Wait>,
}

/// Why a due rule waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Wait {
    /// This probe depends on one in trouble: "db is down".
    Dependency(String),
    /// Its backoff allows the next run at this time.
    Backoff(Timestamp),
}

/// A probe's run of remedies of one action, for backoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Streak {
    runs: u32,
    last: Timestamp,
}

/// A remedy that failed: an incident of its own until the action works again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ActionFailure {
    id: u64,
    since: Timestamp,
    error: String,
    paged: BTreeSet<String>,
}

/// What the engine remembers about one probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeMemory {
    pub health: Health,
    incident: Option<Incident>,
    /// When the last incident closed: how long the probe has been healthy since.
    #[serde(default)]
    last_closed: Option<Timestamp>,
    /// Per remedy action, for backoff.
    #[serde(default)]
    streaks: BTreeMap<String, Streak>,
    /// Per remedy action that failed and has not worked since.
    #[serde(default)]
    failed_actions: BTreeMap<String, ActionFailure>,
}

impl Incident {
    fn open(id: u64, reason: &str, now: Timestamp) -> Incident {
        Incident {
            id,
            opened: now,
            reason: reason.to_string(),
            fired_this_episode: BTreeSet::new(),
            fired_once: BTreeSet::new(),
            paged: BTreeSet::new(),
            actions_taken: Vec::new(),
            remedies: 0,
            gave_up: false,
            pending_remedies: 0,
            next_step: BTreeMap::new(),
            held: BTreeMap::new(),
        }
    }
}

impl ActionFailure {
    /// Failed actions page as a probe of their own, `apache/restart-apache`, so that their
    /// pages (and a pager's dedup keys and labels) never merge with the probe's own incident.
    fn view(&self, spec: &ProbeRules, action: &str, health: &Health) -> IncidentView {
        IncidentView {
            id: self.id,
            probe: format!("{}/{action}", spec.probe),
            state: health.state,
            reason: self.error.clone(),
            since: self.since,
            actions_taken: vec![action.to_string()],
            remedies: 1,
        }
    }
}

/// The `Ok` label of a remedy run that did not happen because another probe's run of the same
/// action covered it.
pub const JOINED: &str = "joined";

/// Whether an incident's probe field (`apache`, or `apache/restart-apache` for a failed
/// action's incident) belongs to a configured probe, as told by `is_probe`.
pub fn incident_of_probe(incident_probe: &str, is_probe: impl Fn(&str) -> bool) -> bool {
    is_probe(incident_probe)
        || incident_probe
            .rsplit_once('/')
            .is_some_and(|(probe, _)| is_probe(probe))
}

impl ProbeMemory {
    fn new(now: Timestamp) -> ProbeMemory {
        ProbeMemory {
            health: Health::new(now),
            incident: None,
            last_closed: None,
            streaks: BTreeMap::new(),
            failed_actions: BTreeMap::new(),
        }
    }

    pub fn incident_id(&self) -> Option<u64> {
        self.incident.as_ref().map(|i| i.id)
    }
}

/// The engine's whole state; serializable so `watchdog check` can keep it between cron runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Engine {
    probes: BTreeMap<String, ProbeMemory>,
    /// Probes an operator paused (maintenance): their results are ignored until the pause
    /// ends, at the given time or by `resume`. `None`: until resumed.
    #[serde(default)]
    paused: BTreeMap<String, Option<Timestamp>>,
    /// When each remedy action ran, for budgets. Pruned to the longest budget window on use.
    runs: BTreeMap<String, Vec<Timestamp>>,
    next_incident: u64,
}

impl Engine {
    pub fn probe(&self, name: &str) -> Option<&ProbeMemory> {
        self.probes.get(name)
    }

    /// Forgets probes that are no longer configured.
    pub fn retain_probes(&mut self, keep: impl Fn(&str) -> bool) {
        self.probes.retain(|name, _| keep(name));
        self.paused.retain(|name, _| keep(name));
    }

    /// Feeds one probe result. `reason` is the probe's human line ("HTTP 504 in 3 ms").
    pub fn observe(
        &mut self,
        spec: &ProbeRules,
        verdict: Verdict,
        reason: &str,
        now: Timestamp,
    ) -> Vec<Effect> {
        if self.is_paused(&spec.probe, now) {
            return Vec::new();
        }
        if self.paused.remove(&spec.probe).is_some() {
            // The pause ran out by itself: start afresh, as after `resume`.
            self.restart_health(&spec.probe, now);
        }
        // A dependency in trouble holds every rule of this probe back.
        let blocked_by = spec
            .depends_on
            .iter()
            .filter(|d| !self.is_paused(d, now))
            .find_map(|d| {
                dependency_trouble(self.probes.get(d.as_str())).map(|t| format!("{d} {t}"))
            });
        let mut effects = Vec::new();
        let next_incident = &mut self.next_incident;
        let memory = self
            .probes
            .entry(spec.probe.clone())
            .or_insert_with(|| ProbeMemory::new(now));
        let change = memory.health.observe(&spec.policy, verdict, now);

        let mut fire_down_rules = false;
        match change {
            Change::Flip { from, to } => {
                effects.push(Effect::StateChanged {
                    probe: spec.probe.clone(),
                    from,
                    to,
                    reason: reason.to_string(),
                });
                match to {
                    State::Down => {
                        match memory.incident.as_mut() {
                            // Still the same outage (e.g. down again after a pause ended): its
                            // pages stay open, to be resolved once, and its rules fire again.
                            Some(open) => {
                                open.reason = reason.to_string();
                                open.fired_this_episode.clear();
                            }
                            None => {
                                *next_incident += 1;
                                memory.incident = Some(Incident::open(*next_incident, reason, now));
                                end_streaks_after_sustained_health(spec, memory, now);
                            }
                        }
                        fire_down_rules = true;
                    }
                    State::Up => {
                        if let Some(incident) = memory.incident.take() {
                            close_incident(
                                spec,
                                &memory.health,
                                &incident,
                                reason,
                                now,
                                &mut effects,
                            );
                            memory.last_closed = Some(now);
                        }
                    }
                    State::Starting => {}
                }
            }
            Change::StillDown => {
                if let Some(incident) = memory.incident.as_mut() {
                    incident.fired_this_episode.clear();
                    incident.reason = reason.to_string();
                }
                fire_down_rules = true;
            }
            Change::None => {}
        }

        // A failed action's incident ends when the probe is up (at its recovery, or at the next
        // good check if the action failed while it was up, e.g. an `up` rule's undrain).
        if memory.health.state == State::Up && !memory.failed_actions.is_empty() {
            resolve_action_failures(spec, memory, None, "the probe is up", &mut effects);
        }
        if memory.health.state == State::Down
            && let Some(incident) = memory.incident.as_mut()
        {
            let open_for = now.saturating_since(incident.opened);
            for (index, rule) in spec.rules.iter().enumerate() {
                let held = incident.held.contains_key(&index);
                let due = match rule.trigger {
                    Trigger::Down => {
                        held || (fire_down_rules && !incident.fired_this_episode.contains(&index))
                    }
                    Trigger::DownFor(d) => {
                        held || (open_for >= d && !incident.fired_once.contains(&index))
                    }
                    Trigger::Up => false,
                };
                if !due {
                    continue;
                }
                match rule.trigger {
                    Trigger::DownFor(_) => incident.fired_once.insert(index),
                    _ => incident.fired_this_episode.insert(index),
                };
                let position = if rule.escalate {
                    incident.next_step.get(&index).copied().unwrap_or(0)
                } else {
                    0
                };
                let Some(step) = rule.steps.get(position) else {
                    // The ladder ran out and the probe is still down: a human's turn, once.
                    if !incident.gave_up {
                        incident.gave_up = true;
                        let summary = format!(
                            "giving up on {}: its escalation ended after {} without recovery: {}",
                            spec.probe,
                            plural(rule.steps.len(), "step"),
                            reason
                        );
                        page_all(
                            spec,
                            &memory.health,
                            incident,
                            PageEvent::GivingUp,
                            &summary,
                            &mut effects,
                        );
                    }
                    continue;
                };
                let wait = match (&blocked_by, rule.backoff) {
                    (Some(trouble), _) => Some(Wait::Dependency(trouble.clone())),
                    (None, Some(backoff)) => step
                        .iter()
                        .filter(|a| a.role == Role::Remedy)
                        .filter_map(|a| memory.streaks.get(&a.name))
                        .map(|s| s.last + backoff.delay(s.runs))
                        .max()
                        .filter(|ready| now < *ready)
                        .map(Wait::Backoff),
                    (None, None) => None,
                };
                if let Some(wait) = wait {
                    if let Wait::Backoff(_) = wait {
                        // Backoff spaces out remedies, never a human being told.
                        let pages: Vec<ActionRef> = step
                            .iter()
                            .filter(|a| a.role == Role::Page)
                            .cloned()
                            .collect();
                        fire(
                            spec,
                            rule,
                            &pages,
                            &mut memory.health,
                            incident,
                            &mut self.runs,
                            &mut memory.streaks,
                            reason,
                            now,
                            &mut effects,
                        );
                    }
                    if incident.held.get(&index) != Some(&wait) {
                        let because = match &wait {
                            Wait::Dependency(trouble) => {
                                format!("{trouble}, and {} depends on it", spec.probe)
                            }
                            Wait::Backoff(ready) => format!(
                                "backoff: next run in {}",
                                humantime::format_duration(Duration::from_secs(
                                    ready.saturating_since(now).as_secs()
                                ))
                            ),
                        };
                        effects.push(Effect::Held {
                            probe: spec.probe.clone(),
                            actions: step.iter().map(|a| a.name.clone()).collect(),
                            because,
                        });
                        incident.held.insert(index, wait);
                    }
                    continue;
                }
                incident.held.remove(&index);
                if rule.escalate {
                    incident.next_step.insert(index, position + 1);
                }
                fire(
                    spec,
                    rule,
                    step,
                    &mut memory.health,
                    incident,
                    &mut self.runs,
                    &mut memory.streaks,
                    reason,
                    now,
                    &mut effects,
                );
            }
        }
        effects
    }

    /// Pauses a probe (a maintenance window): no state changes, no actions, no pages until
    /// `until` (or until resumed). A running incident stays open.
    pub fn pause(&mut self, probe: &str, until: Option<Timestamp>) {
        self.paused.insert(probe.to_string(), until);
    }

    /// Ends a pause. The probe's counters start afresh: what it saw before the maintenance is
    /// not evidence about the service after it. Returns whether it was paused.
    pub fn resume(&mut self, probe: &str, now: Timestamp) -> bool {
        let was = self.paused.remove(probe).is_some();
        if was {
            self.restart_health(probe, now);
        }
        was
    }

    /// `Some(until)` while paused (`until` `None`: until resumed).
    pub fn paused_until(&self, probe: &str, now: Timestamp) -> Option<Option<Timestamp>> {
        self.paused
            .get(probe)
            .copied()
            .filter(|until| until.is_none_or(|t| now < t))
    }

    pub fn is_paused(&self, probe: &str, now: Timestamp) -> bool {
        self.paused_until(probe, now).is_some()
    }

    fn restart_health(&mut self, probe: &str, now: Timestamp) {
        if let Some(memory) = self.probes.get_mut(probe) {
            memory.health = Health::new(now);
        }
    }

    /// The probe left the config: forget it, resolving the pages of its open incident so
    /// nobody is left holding an alert for a probe that no longer exists.
    pub fn retire(&mut self, spec: &ProbeRules, now: Timestamp) -> Vec<Effect> {
        let Some(mut memory) = self.probes.remove(&spec.probe) else {
            return Vec::new();
        };
        let mut effects = Vec::new();
        // The incidents of its failed actions end with it too.
        resolve_action_failures(
            spec,
            &mut memory,
            None,
            "the probe was removed from the config",
            &mut effects,
        );
        let Some(incident) = memory.incident else {
            return effects;
        };
        let view = view(spec, &memory.health, &incident, &incident.reason);
        let lasted = Duration::from_secs(now.saturating_since(incident.opened).as_secs());
        let summary = format!(
            "{} was removed from the config while down (for {})",
            spec.probe,
            humantime::format_duration(lasted)
        );
        effects.extend(incident.paged.iter().map(|pager| {
            Effect::Work(Work::Page {
                pager: pager.clone(),
                event: PageEvent::Resolved,
                summary: summary.clone(),
                incident: view.clone(),
            })
        }));
        effects
    }

    /// The probe's rules changed (a reload): ladder positions and held rules are kept by rule
    /// index, which no longer means the same rule, so they start over.
    pub fn rules_changed(&mut self, probe: &str) {
        if let Some(incident) = self.probes.get_mut(probe).and_then(|m| m.incident.as_mut()) {
            incident.next_step.clear();
            incident.held.clear();
        }
    }

    /// A requested run of `action` did not happen (another probe's run of it covered it): it
    /// does not count against the budget.
    pub fn refund(&mut self, action: &str) {
        if let Some(history) = self.runs.get_mut(action) {
            history.pop();
        }
    }

    /// A remedy ended: start the probe's `restart_grace`. `result` is `Ok(label)` (e.g. "ok",
    /// "joined") or `Err(error)`. A failure is an incident of its own, paged at once to the
    /// probe's pagers; the next success of that action (or the probe's recovery) resolves it.
    pub fn remedy_finished(
        &mut self,
        spec: &ProbeRules,
        action: &str,
        result: Result<&str, &str>,
        now: Timestamp,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        let Some(memory) = self.probes.get_mut(&spec.probe) else {
            return effects;
        };
        match result {
            // Another probe's run covered this one: it says nothing new about the action.
            Ok(JOINED) => {}
            Ok(_) => resolve_action_failures(
                spec,
                memory,
                Some(action),
                "the action worked again",
                &mut effects,
            ),
            Err(error) if !memory.failed_actions.contains_key(action) => {
                self.next_incident += 1;
                let failure = ActionFailure {
                    id: self.next_incident,
                    since: now,
                    error: error.to_string(),
                    paged: spec.pagers().into_iter().map(String::from).collect(),
                };
                let summary = format!("{action} failed for {}: {error}", spec.probe);
                if failure.paged.is_empty() {
                    effects.push(Effect::NoPager {
                        probe: spec.probe.clone(),
                        summary: summary.clone(),
                    });
                }
                let view = failure.view(spec, action, &memory.health);
                for pager in &failure.paged {
                    effects.push(Effect::Work(Work::Page {
                        pager: pager.clone(),
                        event: PageEvent::Firing,
                        summary: summary.clone(),
                        incident: view.clone(),
                    }));
                }
                memory.failed_actions.insert(action.to_string(), failure);
            }
            Err(_) => {}
        }
        let Some(incident) = memory.incident.as_mut() else {
            return effects;
        };
        let label = result.unwrap_or("failed");
        if let Some(taken) = incident
            .actions_taken
            .iter_mut()
            .rev()
            .find(|t| t.as_str() == action)
        {
            *taken = format!("{action} ({label})");
        }
        incident.pending_remedies = incident.pending_remedies.saturating_sub(1);
        if incident.pending_remedies == 0 {
            memory.health.remedy_finished(&spec.policy, now);
        }
        effects
    }
}

/// The probe is up again: run the `up` rules and resolve every page of the incident.
fn close_incident(
    spec: &ProbeRules,
    health: &Health,
    incident: &Incident,
    reason: &str,
    now: Timestamp,
    effects: &mut Vec<Effect>,
) {
    let view = view(spec, health, incident, reason);
    let summary = resolved_summary(spec, incident, now);
    let mut resolved = BTreeSet::new();
    let up_actions = spec
        .rules
        .iter()
        .filter(|r| r.trigger == Trigger::Up)
        .flat_map(Rule::actions);
    for action in up_actions {
        effects.push(match action.role {
            Role::Remedy => Effect::Work(Work::Remedy {
                action: action.name.clone(),
                trigger: Trigger::Up,
                incident: view.clone(),
            }),
            Role::Page => {
                resolved.insert(action.name.as_str());
                Effect::Work(Work::Page {
                    pager: action.name.clone(),
                    event: PageEvent::Resolved,
                    summary: summary.clone(),
                    incident: view.clone(),
                })
            }
        });
    }
    for pager in incident
        .paged
        .iter()
        .filter(|p| !resolved.contains(p.as_str()))
    {
        effects.push(Effect::Work(Work::Page {
            pager: pager.clone(),
            event: PageEvent::Resolved,
            summary: summary.clone(),
            incident: view.clone(),
        }));
    }
}

/// Why a dependency holds its dependents back, if it does: it is down, or its last check
/// failed (both fail together, and the app's probe may trip first), or it was never checked.
fn dependency_trouble(memory: Option<&ProbeMemory>) -> Option<&'static str> {
    let Some(health) = memory.map(|m| &m.health) else {
        return Some("is not checked yet");
    };
    if health.state == State::Down {
        Some("is down")
    } else if health.consecutive_failures > 0 {
        Some("is failing")
    } else if health.state == State::Starting && health.consecutive_successes == 0 {
        Some("is not checked yet")
    } else {
        None
    }
}

/// Runs one step of a rule: remedies within their budget, pages once per incident.
#[allow(clippy::too_many_arguments)]
fn fire(
    spec: &ProbeRules,
    rule: &Rule,
    step: &[ActionRef],
    health: &mut Health,
    incident: &mut Incident,
    runs: &mut BTreeMap<String, Vec<Timestamp>>,
    streaks: &mut BTreeMap<String, Streak>,
    reason: &str,
    now: Timestamp,
    effects: &mut Vec<Effect>,
) {
    for action in step {
        match action.role {
            Role::Remedy => {
                if let Some(budget) = rule.budget {
                    let history = runs.entry(action.name.clone()).or_default();
                    history.retain(|t| now.saturating_since(*t) < budget.per);
                    if history.len() >= budget.max as usize {
                        if !incident.gave_up {
                            incident.gave_up = true;
                            effects.push(Effect::BudgetSpent {
                                probe: spec.probe.clone(),
                                action: action.name.clone(),
                                budget,
                            });
                            let summary = format!(
                                "giving up on {} after {} of {} in {}: {}",
                                spec.probe,
                                plural(history.len(), "run"),
                                action.name,
                                humantime::format_duration(budget.per),
                                reason
                            );
                            page_all(
                                spec,
                                health,
                                incident,
                                PageEvent::GivingUp,
                                &summary,
                                effects,
                            );
                        }
                        continue;
                    }
                    history.push(now);
                } else {
                    runs.entry(action.name.clone()).or_default().push(now);
                }
                let streak = streaks
                    .entry(action.name.clone())
                    .or_insert(Streak { runs: 0, last: now });
                streak.runs += 1;
                streak.last = now;
                incident.actions_taken.push(action.name.clone());
                incident.remedies += 1;
                incident.pending_remedies += 1;
                health.remedy_started();
                effects.push(Effect::Work(Work::Remedy {
                    action: action.name.clone(),
                    trigger: rule.trigger,
                    incident: view(spec, health, incident, reason),
                }));
            }
            Role::Page => {
                if incident.paged.insert(action.name.clone()) {
                    incident.actions_taken.push(format!("page {}", action.name));
                    effects.push(Effect::Work(Work::Page {
                        pager: action.name.clone(),
                        event: PageEvent::Firing,
                        summary: firing_summary(spec, incident, now, reason),
                        incident: view(spec, health, incident, reason),
                    }));
                }
            }
        }
    }
    // Keep the unbudgeted histories from growing forever: an hour is plenty for any log.
    for history in runs.values_mut() {
        if history.len() > 1024 {
            history.drain(..history.len() - 1024);
        }
    }
}

/// A new incident after the probe stayed up for a rule's `reset_after`: that rule's remedies
/// start a fresh streak (no backoff before the first run).
fn end_streaks_after_sustained_health(spec: &ProbeRules, memory: &mut ProbeMemory, now: Timestamp) {
    let healthy_for = memory
        .last_closed
        .map(|closed| now.saturating_since(closed));
    for rule in &spec.rules {
        let Some(backoff) = rule.backoff else {
            continue;
        };
        if healthy_for.is_none_or(|h| h >= backoff.reset_after) {
            for action in rule.actions() {
                memory.streaks.remove(&action.name);
            }
        }
    }
}

/// Closes the incidents of failed actions — of `only` that action, or all — with `why`.
fn resolve_action_failures(
    spec: &ProbeRules,
    memory: &mut ProbeMemory,
    only: Option<&str>,
    why: &str,
    effects: &mut Vec<Effect>,
) {
    let names: Vec<String> = memory
        .failed_actions
        .keys()
        .filter(|a| only.is_none_or(|o| o == a.as_str()))
        .cloned()
        .collect();
    for action in names {
        let Some(failure) = memory.failed_actions.remove(&action) else {
            continue;
        };
        let summary = format!("{action} for {}: resolved, {why}", spec.probe);
        let view = failure.view(spec, &action, &memory.health);
        for pager in &failure.paged {
            effects.push(Effect::Work(Work::Page {
                pager: pager.clone(),
                event: PageEvent::Resolved,
                summary: summary.clone(),
                incident: view.clone(),
            }));
        }
    }
}

fn page_all(
    spec: &ProbeRules,
    health: &Health,
    incident: &mut Incident,
    event: PageEvent,
    summary: &str,
    effects: &mut Vec<Effect>,
) {
    let pagers = spec.pagers();
    if pagers.is_empty() {
        effects.push(Effect::NoPager {
            probe: spec.probe.clone(),
            summary: summary.to_string(),
        });
    }
    for pager in pagers {
        incident.paged.insert(pager.to_string());
        incident.actions_taken.push(format!("page {pager}"));
        effects.push(Effect::Work(Work::Page {
            pager: pager.to_string(),
            event,
            summary: summary.to_string(),
            incident: view(spec, health, incident, &incident.reason),
        }));
    }
}

fn view(spec: &ProbeRules, health: &Health, incident: &Incident, reason: &str) -> IncidentView {
    IncidentView {
        id: incident.id,
        probe: spec.probe.clone(),
        state: health.state,
        reason: reason.to_string(),
        since: incident.opened,
        actions_taken: incident.actions_taken.clone(),
        remedies: incident.remedies,
    }
}

fn firing_summary(spec: &ProbeRules, incident: &Incident, now: Timestamp, reason: &str) -> String {
    let open_for = now.saturating_since(incident.opened);
    let mut s = format!("{} is down: {}", spec.probe, reason);
    if open_for >= Duration::from_secs(1) {
        s.push_str(&format!(
            " (for {}",
            humantime::format_duration(Duration::from_secs(open_for.as_secs()))
        ));
        if incident.remedies > 0 {
            s.push_str(&format!(
                ", {} tried",
                plural(incident.remedies as usize, "remedy")
            ));
        }
        s.push(')');
    }
    s
}

fn resolved_summary(spec: &ProbeRules, incident: &Incident, now: Timestamp) -> String {
    let lasted = Duration::from_secs(now.saturating_since(incident.opened).as_secs());
    format!(
        "{} is up again after {}",
        spec.probe,
        humantime::format_duration(lasted)
    )
}

/// "1 run", "3 runs"; "1 remedy", "2 remedies".
fn plural(n: usize, word: &str) -> String {
    match (n, word.strip_suffix('y')) {
        (1, _) => format!("1 {word}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        _ => format!("{n} {word}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remedy(name: &str) -> ActionRef {
        ActionRef {
            name: name.into(),
            role: Role::Remedy,
        }
    }

    fn pager(name: &str) -> ActionRef {
        ActionRef {
            name: name.into(),
            role: Role::Page,
        }
    }

    /// apache: down -> restart (budget 3 per 15m); down for 60s -> page oncall.
    fn apache() -> ProbeRules {
        ProbeRules {
            probe: "apache".into(),
            policy: HealthPolicy {
                fail_after: 3,
                recover_after: 2,
                window: None,
                startup_grace: Duration::ZERO,
                restart_grace: Duration::from_secs(10),
            },
            depends_on: Vec::new(),
            rules: vec![
                Rule::each_time(
                    Trigger::Down,
                    vec![remedy("restart")],
                    Some(Budget {
                        max: 3,
                        per: Duration::from_secs(900),
                    }),
                ),
                Rule::each_time(
                    Trigger::DownFor(Duration::from_secs(60)),
                    vec![pager("oncall")],
                    None,
                ),
            ],
        }
    }

    /// apache with one rule: down -> page oncall.
    fn pages_when_down() -> ProbeRules {
        ProbeRules {
            rules: vec![Rule::each_time(Trigger::Down, vec![pager("oncall")], None)],
            ..apache()
        }
    }

    /// Feeds one observation per second following `script` (+ ok, - fail), finishing each
    /// remedy one second after it starts, and lists what the engine asked for as "t:effect".
    fn simulate(engine: &mut Engine, spec: &ProbeRules, script: &str, start: u64) -> Vec<String> {
        simulate_many(engine, &[(spec, script)], start)
    }

    /// [`simulate`] for several probes side by side (their lines say "t:probe effect").
    fn simulate_many(
        engine: &mut Engine,
        probes: &[(&ProbeRules, &str)],
        start: u64,
    ) -> Vec<String> {
        let mut log = Vec::new();
        let mut finishing: Vec<(u64, usize, String)> = Vec::new();
        let len = probes.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
        for i in 0..len {
            let t = start + i as u64;
            for (_, p, action) in finishing.iter().filter(|(at, _, _)| *at == t) {
                engine.remedy_finished(probes[*p].0, action, Ok("ok"), Timestamp::secs(t));
            }
            finishing.retain(|(at, _, _)| *at != t);
            for (p, (spec, script)) in probes.iter().enumerate() {
                let Some(c) = script.chars().nth(i) else {
                    continue;
                };
                let verdict = if c == '+' { Verdict::Ok } else { Verdict::Fail };
                let at = if probes.len() > 1 {
                    format!("{t}:{} ", spec.probe)
                } else {
                    format!("{t}:")
                };
                for effect in engine.observe(spec, verdict, "HTTP 504", Timestamp::secs(t)) {
                    if let Effect::Work(Work::Remedy { action, .. }) = &effect {
                        finishing.push((t + 1, p, action.clone()));
                    }
                    log.push(format!("{at}{}", describe(&effect)));
                }
            }
        }
        log
    }

    fn describe(effect: &Effect) -> String {
        match effect {
            Effect::StateChanged { to, .. } => to.to_string(),
            Effect::Work(Work::Remedy { action, .. }) => format!("run {action}"),
            Effect::Work(Work::Page { pager, event, .. }) => format!("page {pager} {event:?}"),
            Effect::BudgetSpent { action, .. } => format!("budget spent {action}"),
            Effect::NoPager { .. } => "no pager".into(),
            Effect::Held { because, .. } => format!("held ({because})"),
        }
    }

    #[test]
    fn a_restart_that_works_runs_once_and_pages_nobody() {
        let mut e = Engine::default();
        let log = simulate(&mut e, &apache(), "+---++", 0);
        assert_eq!(log, ["0:up", "3:down", "3:run restart", "5:up"]);
        assert_eq!(e.probe("apache").unwrap().incident_id(), None);
    }

    #[test]
    fn a_service_that_never_recovers_gets_the_budget_then_one_giving_up_page() {
        let mut e = Engine::default();
        let script = format!("+{}", "-".repeat(100));
        let log = simulate(&mut e, &apache(), &script, 0);
        // 3 failures (t=1..3) -> down, restart; it ends at t=4, grace to t=14, then three more
        // failures (t=14..16) -> restart again; likewise at t=29; at t=42 the budget is spent.
        // The human has then been paged ("giving up"), so the 60 s page does not page again.
        assert_eq!(
            log,
            [
                "0:up",
                "3:down",
                "3:run restart",
                "16:run restart",
                "29:run restart",
                "42:budget spent restart",
                "42:page oncall GivingUp",
            ]
            .map(String::from)
            .to_vec(),
        );
    }

    #[test]
    fn pages_resolve_when_the_incident_closes() {
        let mut e = Engine::default();
        let script = format!("+{}++", "-".repeat(70));
        let log = simulate(&mut e, &apache(), &script, 0);
        let tail: Vec<&str> = log.iter().rev().take(3).map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "72:page oncall Resolved",
                "72:up",
                "42:page oncall GivingUp"
            ]
        );
    }

    #[test]
    fn down_for_fires_once_when_the_incident_is_that_old() {
        let mut e = Engine::default();
        let spec = ProbeRules {
            rules: vec![apache().rules[1].clone()],
            ..apache()
        };
        let log = simulate(&mut e, &spec, &format!("+{}", "-".repeat(80)), 0);
        // down at t=3; 60 s later, once.
        assert_eq!(log, ["0:up", "3:down", "63:page oncall Firing"]);
    }

    #[test]
    fn a_new_incident_pages_again() {
        let mut e = Engine::default();
        let spec = pages_when_down();
        let log = simulate(&mut e, &spec, "+---++---++", 0);
        assert_eq!(
            log,
            [
                "0:up",
                "3:down",
                "3:page oncall Firing",
                "5:up",
                "5:page oncall Resolved",
                "8:down",
                "8:page oncall Firing",
                "10:up",
                "10:page oncall Resolved"
            ]
            .map(String::from)
            .to_vec()
        );
    }

    #[test]
    fn budgets_are_per_action_across_probes() {
        let mut e = Engine::default();
        let a = apache();
        let b = ProbeRules {
            probe: "apache-status".into(),
            ..apache()
        };
        // Each probe's incident restarts once or twice; together they spend the budget of 3.
        let mut runs = 0;
        for (spec, start) in [(&a, 0), (&b, 100), (&a, 200), (&b, 300)] {
            let log = simulate(&mut e, spec, "+---++", start);
            runs += log.iter().filter(|l| l.contains("run restart")).count();
        }
        assert_eq!(runs, 3, "the fourth restart within 15m is refused");
    }

    #[test]
    fn a_refunded_run_does_not_count_against_the_budget() {
        let mut e = Engine::default();
        let a = apache();
        // Three incidents, each restarting once, each refunded (another probe's run covered
        // it): the budget of 3 is never spent, so the fourth incident restarts too.
        for start in [0, 100, 200, 300] {
            let log = simulate(&mut e, &a, "+---++", start);
            assert!(log.iter().any(|l| l.contains("run restart")), "{log:?}");
            e.refund("restart");
        }
    }

    #[test]
    fn no_pager_is_reported_not_swallowed() {
        let mut e = Engine::default();
        let spec = ProbeRules {
            rules: vec![Rule::each_time(
                Trigger::Down,
                vec![remedy("restart")],
                Some(Budget {
                    max: 1,
                    per: Duration::from_secs(900),
                }),
            )],
            ..apache()
        };
        let log = simulate(&mut e, &spec, &format!("+{}", "-".repeat(30)), 0);
        assert!(log.contains(&"16:no pager".to_string()), "{log:?}");
    }

    #[test]
    fn up_rules_run_on_recovery_only() {
        let mut e = Engine::default();
        let spec = ProbeRules {
            rules: vec![Rule::each_time(Trigger::Up, vec![remedy("notify")], None)],
            ..apache()
        };
        assert_eq!(simulate(&mut e, &spec, "++", 0), ["0:up"]);
        assert_eq!(
            simulate(&mut e, &spec, "---++", 10),
            ["12:down", "14:up", "14:run notify"]
        );
    }

    #[test]
    fn retiring_a_probe_resolves_its_pages() {
        let mut e = Engine::default();
        let spec = pages_when_down();
        simulate(&mut e, &spec, "+---", 0);
        let effects = e.retire(&spec, Timestamp::secs(10));
        assert!(
            matches!(&effects[..], [Effect::Work(Work::Page { pager, event: PageEvent::Resolved, summary, .. })]
                if pager == "oncall" && summary == "apache was removed from the config while down (for 7s)"),
            "{effects:?}"
        );
        assert!(e.probe("apache").is_none());
        assert!(e.retire(&spec, Timestamp::secs(11)).is_empty());
    }

    #[test]
    fn a_paused_probe_neither_changes_state_nor_acts_and_starts_afresh_after() {
        let mut e = Engine::default();
        let spec = apache();
        simulate(&mut e, &spec, "+", 0);
        e.pause("apache", Some(Timestamp::secs(20)));
        assert!(e.is_paused("apache", Timestamp::secs(5)));
        assert_eq!(simulate(&mut e, &spec, "-----", 1), Vec::<String>::new());
        // Expired at 20: counting starts again from "starting".
        assert_eq!(
            simulate(&mut e, &spec, "---", 20),
            ["22:down", "22:run restart"]
        );
        e.pause("apache", None);
        assert!(e.resume("apache", Timestamp::secs(40)));
        assert!(!e.resume("apache", Timestamp::secs(41)));
        assert_eq!(e.probe("apache").unwrap().health.state, State::Starting);
    }

    #[test]
    fn state_survives_serialization() {
        let mut e = Engine::default();
        simulate(&mut e, &apache(), "+--", 0);
        let json = serde_json::to_string(&e).unwrap();
        let mut back: Engine = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
        // The third failure, in "another cron run", completes fail_after = 3.
        assert_eq!(
            simulate(&mut back, &apache(), "-", 3),
            ["3:down", "3:run restart"]
        );
    }

    /// apache with a ladder: restart, restart, then drain and page together.
    fn ladder() -> ProbeRules {
        ProbeRules {
            rules: vec![Rule {
                trigger: Trigger::Down,
                steps: vec![
                    vec![remedy("restart")],
                    vec![remedy("restart")],
                    vec![remedy("drain"), pager("oncall")],
                ],
                escalate: true,
                budget: Some(Budget::DEFAULT),
                backoff: None,
            }],
            ..apache()
        }
    }

    #[test]
    fn a_ladder_takes_one_step_per_firing_then_gives_up_once() {
        let mut e = Engine::default();
        let log = simulate(&mut e, &ladder(), &format!("+{}", "-".repeat(80)), 0);
        assert_eq!(
            log,
            [
                "0:up",
                "3:down",
                "3:run restart",
                "16:run restart",
                "29:run drain",
                "29:page oncall Firing",
                "42:page oncall GivingUp",
            ]
            .map(String::from)
            .to_vec()
        );
    }

    #[test]
    fn a_new_incident_climbs_the_ladder_from_the_bottom() {
        let mut e = Engine::default();
        let spec = ladder();
        simulate(&mut e, &spec, &format!("+{}++", "-".repeat(20)), 0);
        let log = simulate(&mut e, &spec, "---", 100);
        assert_eq!(log, ["102:down", "102:run restart"]);
    }

    fn with_backoff(reset_after: u64) -> ProbeRules {
        ProbeRules {
            rules: vec![Rule {
                backoff: Some(Backoff {
                    first: Duration::from_secs(30),
                    max: Duration::from_secs(50),
                    reset_after: Duration::from_secs(reset_after),
                }),
                ..Rule::each_time(
                    Trigger::Down,
                    vec![remedy("restart")],
                    Some(Budget {
                        max: 10,
                        per: Duration::from_secs(3600),
                    }),
                )
            }],
            ..apache()
        }
    }

    #[test]
    fn backoff_doubles_the_wait_between_restarts_up_to_its_max() {
        let mut e = Engine::default();
        let log = simulate(
            &mut e,
            &with_backoff(100),
            &format!("+{}", "-".repeat(150)),
            0,
        );
        // Restart at 3; still down at 16: the second waits 30 s after the first (t=33); the
        // third would wait 60 s, capped at 50 s after the second (t=83).
        assert_eq!(
            log,
            [
                "0:up",
                "3:down",
                "3:run restart",
                "16:held (backoff: next run in 17s)",
                "33:run restart",
                "46:held (backoff: next run in 37s)",
                "83:run restart",
                "96:held (backoff: next run in 37s)",
                "133:run restart",
                "146:held (backoff: next run in 37s)",
            ]
            .map(String::from)
            .to_vec()
        );
    }

    #[test]
    fn backoff_resets_only_after_the_probe_stayed_up_long_enough() {
        // Up for 3 s between incidents (< 100 s): the new incident's restart waits.
        let mut e = Engine::default();
        let spec = with_backoff(100);
        simulate(&mut e, &spec, "+---++", 0);
        let log = simulate(&mut e, &spec, "---", 8);
        assert_eq!(
            log,
            ["10:down", "10:held (backoff: next run in 23s)"],
            "a flapping service is not restarted at once"
        );
        // Up for 200 s (>= 100 s): a fresh streak, restarted at once.
        let mut e = Engine::default();
        simulate(&mut e, &spec, "+---++", 0);
        assert_eq!(
            simulate(&mut e, &spec, "---", 205),
            ["207:down", "207:run restart"]
        );
    }

    #[test]
    fn a_held_back_restart_is_dropped_if_the_service_recovers_meanwhile() {
        let mut e = Engine::default();
        let log = simulate(
            &mut e,
            &with_backoff(100),
            &format!("+{}++++", "-".repeat(20)),
            0,
        );
        assert_eq!(
            log,
            [
                "0:up",
                "3:down",
                "3:run restart",
                "16:held (backoff: next run in 17s)",
                "22:up",
            ]
        );
    }

    /// db pages when down; app depends on db and does `app_actions` when down.
    fn db_and_app(app_actions: Vec<ActionRef>) -> (ProbeRules, ProbeRules) {
        let db = ProbeRules {
            probe: "db".into(),
            ..pages_when_down()
        };
        let app = ProbeRules {
            probe: "app".into(),
            depends_on: vec!["db".into()],
            rules: vec![Rule::each_time(
                Trigger::Down,
                app_actions,
                Some(Budget::DEFAULT),
            )],
            ..apache()
        };
        (db, app)
    }

    #[test]
    fn while_a_dependency_is_down_the_dependent_waits_then_acts_if_still_down() {
        let (db, app) = db_and_app(vec![remedy("restart-app"), pager("oncall")]);
        let mut e = Engine::default();
        // db fails from t=1, app from t=2; db recovers at t=10..11, app never does.
        let log = simulate_many(
            &mut e,
            &[(&db, "+---------++++"), (&app, "++------------")],
            0,
        );
        assert_eq!(
            log,
            [
                "0:db up",
                "0:app up",
                "3:db down",
                "3:db page oncall Firing",
                "4:app down",
                "4:app held (db is down, and app depends on it)",
                "11:db up",
                "11:db page oncall Resolved",
                "11:app run restart-app",
                "11:app page oncall Firing",
            ]
            .map(String::from)
            .to_vec()
        );
    }

    #[test]
    fn a_failed_remedy_is_an_incident_of_its_own() {
        let mut e = Engine::default();
        let spec = apache();
        let log = simulate(&mut e, &spec, "+---", 0);
        assert_eq!(log, ["0:up", "3:down", "3:run restart"]);
        let effects = e.remedy_finished(&spec, "restart", Err("exit status 1"), Timestamp::secs(4));
        assert!(
            matches!(&effects[..], [Effect::Work(Work::Page { pager, event: PageEvent::Firing, summary, incident })]
                if pager == "oncall" && summary == "restart failed for apache: exit status 1"
                    && incident.probe == "apache/restart" && incident.id == 2),
            "{effects:?}"
        );
        // A second failure of the same action does not page again.
        assert!(
            e.remedy_finished(&spec, "restart", Err("exit status 1"), Timestamp::secs(20))
                .is_empty()
        );
        // The action working again resolves it.
        let effects = e.remedy_finished(&spec, "restart", Ok("ok"), Timestamp::secs(40));
        assert!(
            matches!(&effects[..], [Effect::Work(Work::Page { event: PageEvent::Resolved, incident, .. })]
                if incident.probe == "apache/restart"),
            "{effects:?}"
        );
    }

    #[test]
    fn a_failed_remedy_resolves_when_the_probe_recovers() {
        let mut e = Engine::default();
        let spec = apache();
        simulate(&mut e, &spec, "+---", 0);
        assert_eq!(
            e.remedy_finished(&spec, "restart", Err("timeout"), Timestamp::secs(4))
                .len(),
            1
        );
        let log = simulate(&mut e, &spec, "++", 5);
        assert_eq!(log, ["6:up", "6:page oncall Resolved"]);
    }

    #[test]
    fn retiring_a_probe_resolves_its_failed_actions_too() {
        let mut e = Engine::default();
        let spec = apache();
        simulate(&mut e, &spec, "+---", 0);
        e.remedy_finished(&spec, "restart", Err("timeout"), Timestamp::secs(4));
        let resolved: Vec<String> = e
            .retire(&spec, Timestamp::secs(5))
            .into_iter()
            .filter_map(|effect| match effect {
                Effect::Work(Work::Page {
                    event: PageEvent::Resolved,
                    incident,
                    ..
                }) => Some(incident.probe),
                _ => None,
            })
            .collect();
        assert_eq!(resolved, ["apache/restart"]);
    }

    #[test]
    fn state_written_before_ladders_and_backoff_still_loads() {
        let mut e = Engine::default();
        simulate(&mut e, &apache(), "+---", 0);
        let mut json = serde_json::to_value(&e).unwrap();
        let memory = &mut json["probes"]["apache"];
        for key in ["last_closed", "streaks", "failed_actions"] {
            memory.as_object_mut().unwrap().remove(key);
        }
        let incident = memory["incident"].as_object_mut().unwrap();
        incident.remove("next_step");
        incident.remove("held");
        let back: Engine = serde_json::from_value(json).unwrap();
        assert_eq!(back.probe("apache").unwrap().incident_id(), Some(1));
    }

    #[test]
    fn a_dependency_that_is_failing_but_not_yet_down_holds_too() {
        // Both fail from t=1; the app trips after 2 failures, the database after 3.
        let (db, mut app) = db_and_app(vec![remedy("restart-app")]);
        app.policy.fail_after = 2;
        let mut e = Engine::default();
        let log = simulate_many(&mut e, &[(&db, "+---"), (&app, "+---")], 0);
        assert_eq!(
            log,
            [
                "0:db up",
                "0:app up",
                "2:app down",
                "2:app held (db is failing, and app depends on it)",
                "3:db down",
                "3:db page oncall Firing",
                "3:app held (db is down, and app depends on it)",
            ]
        );
    }

    #[test]
    fn a_failed_actions_incident_belongs_to_its_probe() {
        let configured = |p: &str| p == "apache";
        assert!(incident_of_probe("apache", configured));
        assert!(incident_of_probe("apache/restart-apache", configured));
        assert!(!incident_of_probe("nginx/restart-nginx", configured));
        assert!(!incident_of_probe("nginx", configured));
    }

    #[test]
    fn an_action_failing_while_the_probe_is_up_resolves_at_the_next_good_check() {
        let mut e = Engine::default();
        let spec = apache();
        simulate(&mut e, &spec, "+---++", 0);
        // An `up` rule's action (or a slow restart) fails after the recovery.
        let fired = e.remedy_finished(
            &spec,
            "restart",
            Err("left web/app1 drained"),
            Timestamp::secs(6),
        );
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert_eq!(simulate(&mut e, &spec, "+", 7), ["7:page oncall Resolved"]);
    }

    #[test]
    fn down_again_after_a_pause_is_the_same_incident() {
        let mut e = Engine::default();
        let spec = pages_when_down();
        simulate(&mut e, &spec, "+---", 0);
        let id = e.probe("apache").unwrap().incident_id();
        e.pause("apache", None);
        assert!(e.resume("apache", Timestamp::secs(10)));
        let log = simulate(&mut e, &spec, "---++", 11);
        // Down again: no second firing page (oncall was paged in this incident), one resolve.
        assert_eq!(log, ["13:down", "15:up", "15:page oncall Resolved"]);
        assert!(id.is_some());
    }

    #[test]
    fn a_paused_dependency_holds_nobody() {
        let (db, app) = db_and_app(vec![remedy("restart-app")]);
        let mut e = Engine::default();
        e.pause("db", None);
        let log = simulate_many(&mut e, &[(&db, "----"), (&app, "+---")], 0);
        assert_eq!(log, ["0:app up", "3:app down", "3:app run restart-app"]);
    }
}

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
//!   remedying and pages "giving up" once, instead of restarting in a storm.
//!
//! Budgets are counted per action name, across probes: two probes that both restart apache
//! share one restart history, because what they restart is one thing.

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub trigger: Trigger,
    pub actions: Vec<ActionRef>,
    pub budget: Option<Budget>,
}

/// Everything the engine needs to know about one probe, built from checked config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRules {
    pub probe: String,
    pub policy: HealthPolicy,
    pub rules: Vec<Rule>,
}

impl ProbeRules {
    /// Every pager named by any rule of this probe: who hears "giving up".
    fn pagers(&self) -> BTreeSet<&str> {
        self.rules
            .iter()
            .flat_map(|r| &r.actions)
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
    /// Remedies that paged because only a human can go on (see [`Engine::needs_human`]).
    #[serde(default)]
    needs_human: BTreeSet<String>,
}

/// What the engine remembers about one probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeMemory {
    pub health: Health,
    incident: Option<Incident>,
}

impl ProbeMemory {
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
        let mut effects = Vec::new();
        let next_incident = &mut self.next_incident;
        let memory = self
            .probes
            .entry(spec.probe.clone())
            .or_insert_with(|| ProbeMemory {
                health: Health::new(now),
                incident: None,
            });
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
                        *next_incident += 1;
                        memory.incident = Some(Incident {
                            id: *next_incident,
                            opened: now,
                            reason: reason.to_string(),
                            fired_this_episode: BTreeSet::new(),
                            fired_once: BTreeSet::new(),
                            paged: BTreeSet::new(),
                            actions_taken: Vec::new(),
                            remedies: 0,
                            gave_up: false,
                            pending_remedies: 0,
                            needs_human: BTreeSet::new(),
                        });
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

        if memory.health.state == State::Down
            && let Some(incident) = memory.incident.as_mut()
        {
            let open_for = now.saturating_since(incident.opened);
            for (index, rule) in spec.rules.iter().enumerate() {
                let due = match rule.trigger {
                    Trigger::Down => {
                        fire_down_rules && !incident.fired_this_episode.contains(&index)
                    }
                    Trigger::DownFor(d) => open_for >= d && !incident.fired_once.contains(&index),
                    Trigger::Up => false,
                };
                if !due {
                    continue;
                }
                match rule.trigger {
                    Trigger::DownFor(_) => incident.fired_once.insert(index),
                    _ => incident.fired_this_episode.insert(index),
                };
                fire(
                    spec,
                    rule,
                    &mut memory.health,
                    incident,
                    &mut self.runs,
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
        let Some(memory) = self.probes.remove(&spec.probe) else {
            return Vec::new();
        };
        let Some(incident) = memory.incident else {
            return Vec::new();
        };
        let view = view(spec, &memory.health, &incident, &incident.reason);
        let lasted = Duration::from_secs(now.saturating_since(incident.opened).as_secs());
        let summary = format!(
            "{} was removed from the config while down (for {})",
            spec.probe,
            humantime::format_duration(lasted)
        );
        incident
            .paged
            .iter()
            .map(|pager| {
                Effect::Work(Work::Page {
                    pager: pager.clone(),
                    event: PageEvent::Resolved,
                    summary: summary.clone(),
                    incident: view.clone(),
                })
            })
            .collect()
    }

    /// A requested run of `action` did not happen (another probe's run of it covered it): it
    /// does not count against the budget.
    pub fn refund(&mut self, action: &str) {
        if let Some(history) = self.runs.get_mut(action) {
            history.pop();
        }
    }

    /// A remedy could not do its job in a way only a human can settle: it refused (a drain
    /// that would empty a pool) or left things half done (a server left drained). Pages every
    /// pager of the probe as "giving up", once per action per incident. If the incident is
    /// closed already (an `up` rule's undrain failed), pages anyway: nothing else would tell
    /// anyone that a server stayed out of rotation.
    pub fn needs_human(
        &mut self,
        spec: &ProbeRules,
        incident: &IncidentView,
        action: &str,
        why: &str,
    ) -> Vec<Effect> {
        let summary = format!("{}: {action} needs a human: {why}", spec.probe);
        let mut effects = Vec::new();
        if let Some(memory) = self.probes.get_mut(&spec.probe)
            && let Some(open) = memory.incident.as_mut()
            && open.id == incident.id
        {
            if open.needs_human.insert(action.to_string()) {
                open.actions_taken.push(format!("{action} (needs a human)"));
                page_all(
                    spec,
                    &memory.health,
                    open,
                    PageEvent::GivingUp,
                    &summary,
                    &mut effects,
                );
            }
            return effects;
        }
        let pagers = spec.pagers();
        if pagers.is_empty() {
            effects.push(Effect::NoPager {
                probe: spec.probe.clone(),
                summary: summary.clone(),
            });
        }
        for pager in pagers {
            effects.push(Effect::Work(Work::Page {
                pager: pager.to_string(),
                event: PageEvent::GivingUp,
                summary: summary.clone(),
                incident: incident.clone(),
            }));
        }
        effects
    }

    /// A remedy ended (however it ended): start the probe's `restart_grace`.
    pub fn remedy_finished(
        &mut self,
        spec: &ProbeRules,
        action: &str,
        outcome: &str,
        now: Timestamp,
    ) {
        let Some(memory) = self.probes.get_mut(&spec.probe) else {
            return;
        };
        let Some(incident) = memory.incident.as_mut() else {
            return;
        };
        if let Some(taken) = incident
            .actions_taken
            .iter_mut()
            .rev()
            .find(|t| t.as_str() == action)
        {
            *taken = format!("{action} ({outcome})");
        }
        incident.pending_remedies = incident.pending_remedies.saturating_sub(1);
        if incident.pending_remedies == 0 {
            memory.health.remedy_finished(&spec.policy, now);
        }
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
        .flat_map(|r| &r.actions);
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

#[allow(clippy::too_many_arguments)]
fn fire(
    spec: &ProbeRules,
    rule: &Rule,
    health: &mut Health,
    incident: &mut Incident,
    runs: &mut BTreeMap<String, Vec<Timestamp>>,
    reason: &str,
    now: Timestamp,
    effects: &mut Vec<Effect>,
) {
    for action in &rule.actions {
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
            rules: vec![
                Rule {
                    trigger: Trigger::Down,
                    actions: vec![remedy("restart")],
                    budget: Some(Budget {
                        max: 3,
                        per: Duration::from_secs(900),
                    }),
                },
                Rule {
                    trigger: Trigger::DownFor(Duration::from_secs(60)),
                    actions: vec![pager("oncall")],
                    budget: None,
                },
            ],
        }
    }

    /// apache with one rule: down -> page oncall.
    fn pages_when_down() -> ProbeRules {
        ProbeRules {
            rules: vec![Rule {
                trigger: Trigger::Down,
                actions: vec![pager("oncall")],
                budget: None,
            }],
            ..apache()
        }
    }

    /// Feeds one observation per second following `script` (+ ok, - fail), finishing each
    /// remedy one second after it starts, and lists what the engine asked for as "t:effect".
    fn simulate(engine: &mut Engine, spec: &ProbeRules, script: &str, start: u64) -> Vec<String> {
        let mut log = Vec::new();
        let mut finishing: Vec<(u64, String)> = Vec::new();
        for (i, c) in script.chars().enumerate() {
            let t = start + i as u64;
            for (_, action) in finishing.iter().filter(|(at, _)| *at == t) {
                engine.remedy_finished(spec, action, "ok", Timestamp::secs(t));
            }
            finishing.retain(|(at, _)| *at != t);
            let verdict = if c == '+' { Verdict::Ok } else { Verdict::Fail };
            for effect in engine.observe(spec, verdict, "HTTP 504", Timestamp::secs(t)) {
                match effect {
                    Effect::StateChanged { to, .. } => log.push(format!("{t}:{to}")),
                    Effect::Work(Work::Remedy { action, .. }) => {
                        finishing.push((t + 1, action.clone()));
                        log.push(format!("{t}:run {action}"));
                    }
                    Effect::Work(Work::Page { pager, event, .. }) => {
                        log.push(format!("{t}:page {pager} {event:?}"))
                    }
                    Effect::BudgetSpent { action, .. } => {
                        log.push(format!("{t}:budget spent {action}"))
                    }
                    Effect::NoPager { .. } => log.push(format!("{t}:no pager")),
                }
            }
        }
        log
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
            rules: vec![Rule {
                trigger: Trigger::Down,
                actions: vec![remedy("restart")],
                budget: Some(Budget {
                    max: 1,
                    per: Duration::from_secs(900),
                }),
            }],
            ..apache()
        };
        let log = simulate(&mut e, &spec, &format!("+{}", "-".repeat(30)), 0);
        assert!(log.contains(&"16:no pager".to_string()), "{log:?}");
    }

    #[test]
    fn up_rules_run_on_recovery_only() {
        let mut e = Engine::default();
        let spec = ProbeRules {
            rules: vec![Rule {
                trigger: Trigger::Up,
                actions: vec![remedy("notify")],
                budget: None,
            }],
            ..apache()
        };
        assert_eq!(simulate(&mut e, &spec, "++", 0), ["0:up"]);
        assert_eq!(
            simulate(&mut e, &spec, "---++", 10),
            ["12:down", "14:up", "14:run notify"]
        );
    }

    #[test]
    fn a_remedy_that_needs_a_human_pages_once_per_incident_even_after_it_closed() {
        let mut e = Engine::default();
        // down -> drain; down for 60s -> page oncall (so "oncall" is the probe's pager).
        let spec = ProbeRules {
            rules: vec![
                Rule {
                    trigger: Trigger::Down,
                    actions: vec![remedy("drain-app1")],
                    budget: None,
                },
                apache().rules[1].clone(),
            ],
            ..apache()
        };
        simulate(&mut e, &spec, "+---", 0);
        let view = |e: &Engine| IncidentView {
            id: e.probe("apache").unwrap().incident_id().unwrap(),
            probe: "apache".into(),
            state: State::Down,
            reason: "HTTP 504".into(),
            since: Timestamp::secs(3),
            actions_taken: Vec::new(),
            remedies: 1,
        };
        let open = view(&e);
        let why = "refused to drain web/app1: it is the last ready server of backend web";
        let pages: Vec<(String, PageEvent, String)> = e
            .needs_human(&spec, &open, "drain-app1", why)
            .into_iter()
            .filter_map(|effect| match effect {
                Effect::Work(Work::Page {
                    pager,
                    event,
                    summary,
                    ..
                }) => Some((pager, event, summary)),
                _ => None,
            })
            .collect();
        assert_eq!(
            pages,
            [(
                "oncall".to_string(),
                PageEvent::GivingUp,
                format!("apache: drain-app1 needs a human: {why}")
            )]
        );
        // The same refusal again in this incident: no second page; the page resolves at the end.
        assert!(e.needs_human(&spec, &open, "drain-app1", why).is_empty());
        let log = simulate(&mut e, &spec, "++", 10);
        assert!(
            log.contains(&"11:page oncall Resolved".to_string()),
            "{log:?}"
        );
        // The incident is closed (an `up` rule's undrain failed): paged all the same.
        let after = e.needs_human(&spec, &open, "undrain-app1", "left web/app1 drained");
        assert_eq!(after.len(), 1, "{after:?}");
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
}

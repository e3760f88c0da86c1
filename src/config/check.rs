//! Semantic checks: raw items in, the typed [`Config`] out, every problem reported.
//!
//! Each `check_*` function looks at one kind of item and pushes what is wrong into the shared
//! [`Diagnostics`]; none stops at the first problem. A config is usable only when no error was
//! pushed; warnings (unused actions, probes no rule acts on, files writable by others) travel
//! apart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::diagnostic::{Diagnostics, Source};
use super::load::closest;
use super::raw::{self, Count, Text};
use super::{
    ActionSpec, BacklogCheck, CheckSpec, CommandAction, Config, HttpCheck, Limit, MemoryCheck,
    ProbeSpec, ProcessCheck, ProcessSelect, SecretRef, SignalAction, StatusRanges, TcpCheck,
    WatchdogSettings, WebhookAction,
};
use crate::health::{HealthPolicy, Window};
use crate::rules::{ActionRef, Backoff, Budget, ProbeRules, Rule, Trigger};

mod pagers;

/// `kind = "systemd"` actions.
mod systemd;

/// The docker probe and action: their checks live apart, in `check/docker.rs`.
mod docker;

/// One deserialized item and the byte offset of its table.
pub struct Item<T> {
    pub value: T,
    pub at: usize,
}

/// One config file, split into items.
pub struct Document {
    pub source: Source,
    pub watchdog: Option<(raw::Watchdog, usize)>,
    pub defaults: Option<(raw::Timing, usize)>,
    pub probes: Vec<Item<raw::Probe>>,
    pub rules: Vec<Item<raw::Rule>>,
    pub actions: Vec<(Spanned<String>, Item<raw::Action>)>,
}

/// Where diagnostics go while one item is checked.
pub(super) struct Ctx<'a> {
    pub(super) source: &'a Source,
    pub(super) subject: Option<String>,
    pub(super) diags: &'a mut Diagnostics,
}

impl Ctx<'_> {
    pub(super) fn error(&mut self, at: usize, message: impl Into<String>) {
        self.diags
            .error(self.source, at, self.subject.as_deref(), message);
    }

    fn warn(&mut self, at: usize, message: impl Into<String>) {
        self.diags
            .warn(self.source, at, self.subject.as_deref(), message);
    }

    /// A duration such as `5s`, `1500ms`, `1m30s`; `None` if absent or bad (bad is reported).
    fn duration(&mut self, key: &str, text: &Option<Text>) -> Option<Duration> {
        let text = text.as_ref()?;
        match humantime::parse_duration(text.get_ref().trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    text.span().start,
                    format!(
                        "`{key}`: `{}` is not a duration ({e}); write e.g. \"500ms\", \"5s\", \"1m30s\"",
                        text.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// A duration that must not be zero.
    pub(super) fn positive_duration(&mut self, key: &str, text: &Option<Text>) -> Option<Duration> {
        let d = self.duration(key, text)?;
        if d.is_zero() {
            self.error(
                text.as_ref().map_or(0, |t| t.span().start),
                format!("`{key}` must be greater than zero"),
            );
            return None;
        }
        Some(d)
    }

    /// A count ≥ 1 that fits in a u32.
    fn count(&mut self, key: &str, value: &Option<Count>) -> Option<u32> {
        let value = value.as_ref()?;
        match u32::try_from(*value.get_ref()) {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                self.error(
                    value.span().start,
                    format!("`{key}` must be at least 1 (got {})", value.get_ref()),
                );
                None
            }
        }
    }

    /// Reports keys set on an item whose kind does not use them.
    pub(super) fn not_for_kind(&mut self, kind: &str, keys: &[(&str, Option<usize>)]) {
        for (key, at) in keys {
            if let Some(at) = at {
                self.error(*at, format!("`{key}` does not apply to kind \"{kind}\""));
            }
        }
    }
}

pub(super) fn at<T>(v: &Option<Spanned<T>>) -> Option<usize> {
    v.as_ref().map(|s| s.span().start)
}

/// Probe timing after `[defaults]` and the probe's own overrides.
#[derive(Clone)]
struct Timing {
    interval: Duration,
    timeout: Duration,
    policy: HealthPolicy,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            policy: HealthPolicy::default(),
        }
    }
}

fn apply_timing(ctx: &mut Ctx<'_>, base: &Timing, t: &raw::Timing) -> Timing {
    let mut out = base.clone();
    if let Some(d) = ctx.positive_duration("interval", &t.interval) {
        out.interval = d;
    }
    if let Some(d) = ctx.positive_duration("timeout", &t.timeout) {
        out.timeout = d;
    }
    if let Some(n) = ctx.count("fail_after", &t.fail_after) {
        out.policy.fail_after = n;
    }
    if let Some(n) = ctx.count("recover_after", &t.recover_after) {
        out.policy.recover_after = n;
    }
    if let Some(w) = &t.window {
        match parse_window(w.get_ref()) {
            Ok(window) => out.policy.window = Some(window),
            Err(e) => ctx.error(w.span().start, format!("`window`: {e}")),
        }
    }
    if let Some(d) = ctx.duration("startup_grace", &t.startup_grace) {
        out.policy.startup_grace = d;
    }
    if let Some(d) = ctx.duration("restart_grace", &t.restart_grace) {
        out.policy.restart_grace = d;
    }
    out
}

/// `"3 of 5"`.
fn parse_window(text: &str) -> Result<Window, String> {
    let bad = || {
        format!(
            "`{text}` is not a window; write e.g. \"3 of 5\" (3 failures among the last 5 checks)"
        )
    };
    let (n, m) = text.split_once(" of ").ok_or_else(bad)?;
    let failures: u32 = n.trim().parse().map_err(|_| bad())?;
    let of: u32 = m.trim().parse().map_err(|_| bad())?;
    if failures == 0 || failures > of || of > Window::MAX {
        return Err(format!(
            "`{text}`: need 1 <= failures <= checks <= {}",
            Window::MAX
        ));
    }
    Ok(Window { failures, of })
}

/// `"down"`, `"down for 60s"`, `"up"`.
fn parse_trigger(text: &str) -> Result<Trigger, String> {
    let t = text.trim();
    if t == "down" {
        return Ok(Trigger::Down);
    }
    if t == "up" {
        return Ok(Trigger::Up);
    }
    if let Some(d) = t.strip_prefix("down for ") {
        return humantime::parse_duration(d.trim())
            .map(Trigger::DownFor)
            .map_err(|e| format!("`{d}` is not a duration: {e}"));
    }
    Err(format!(
        "`{t}` is not a rule condition; write \"down\", \"down for 60s\" or \"up\""
    ))
}

/// `"3 per 15m"`.
fn parse_budget(text: &str) -> Result<Budget, String> {
    let bad = || format!("`{text}` is not a budget; write e.g. \"3 per 15m\"");
    let (n, d) = text.split_once(" per ").ok_or_else(bad)?;
    let max: u32 = n.trim().parse().map_err(|_| bad())?;
    let per = humantime::parse_duration(d.trim()).map_err(|_| bad())?;
    if max == 0 || per.is_zero() {
        return Err(format!(
            "`{text}`: both the count and the period must be greater than zero"
        ));
    }
    Ok(Budget { max, per })
}

pub fn check(documents: &[Document], diags: &mut Diagnostics) -> Option<Config> {
    let main = documents.first()?;

    let watchdog = check_watchdog(main, diags);
    let defaults = match &main.defaults {
        Some((d, _)) => {
            let mut ctx = Ctx {
                source: &main.source,
                subject: Some("[defaults]".into()),
                diags,
            };
            apply_timing(&mut ctx, &Timing::default(), d)
        }
        None => Timing::default(),
    };

    let mut actions = check_actions(documents, diags);
    super::haproxy::link_restart_drained(documents, &mut actions, diags);
    let mut probes = check_probes(documents, &defaults, diags);
    check_rules(documents, &mut probes, &actions, diags);
    check_dependencies(documents, &mut probes, diags);

    // Probes no rule acts on, and actions no rule uses: legal, but probably a mistake.
    let mut used_actions = BTreeSet::new();
    for (spec, (source, at)) in &probes {
        if spec.rules.rules.is_empty() {
            diags.warn(
                source,
                *at,
                Some(&format!("probe \"{}\"", spec.name)),
                "no rule acts on this probe: its failures will only be logged",
            );
        }
        for rule in &spec.rules.rules {
            used_actions.extend(rule.actions().map(|a| a.name.clone()));
        }
    }
    for (name, (_, source, at)) in &actions {
        if !used_actions.contains(name) {
            diags.warn(
                source,
                *at,
                Some(&format!("action \"{name}\"")),
                "no rule uses this action",
            );
        }
    }

    Some(Config::new(
        documents.iter().map(|d| d.source.path.clone()).collect(),
        watchdog,
        probes.into_iter().map(|(p, _)| p).collect(),
        actions.into_iter().map(|(n, (a, _, _))| (n, a)).collect(),
    ))
}

fn check_watchdog(main: &Document, diags: &mut Diagnostics) -> WatchdogSettings {
    let mut settings = WatchdogSettings {
        state_dir: PathBuf::from(WatchdogSettings::DEFAULT_STATE_DIR),
        dry_run: false,
        max_in_flight: WatchdogSettings::DEFAULT_MAX_IN_FLIGHT,
        start_grid: WatchdogSettings::DEFAULT_START_GRID,
        hostname: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into()),
        api_socket: PathBuf::from(WatchdogSettings::DEFAULT_STATE_DIR).join("watchdog.sock"),
        api_listen: None,
        api_token: None,
    };
    let Some((w, _)) = &main.watchdog else {
        return settings;
    };
    let base = main
        .source
        .path
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let mut ctx = Ctx {
        source: &main.source,
        subject: Some("[watchdog]".into()),
        diags,
    };
    if let Some(dir) = &w.state_dir {
        // Relative to the config file, so a checkout's config works from any cwd.
        settings.state_dir = base.join(dir.get_ref());
    }
    settings.api_socket = match &w.api_socket {
        Some(path) => base.join(path.get_ref()),
        None => settings.state_dir.join("watchdog.sock"),
    };
    if settings.api_socket.as_os_str().len() > 100 {
        ctx.warn(
            w.api_socket.as_ref().map_or(0, |t| t.span().start),
            format!(
                "the API socket path {} is longer than a unix socket allows (~107 bytes); set `api_socket`",
                settings.api_socket.display()
            ),
        );
    }
    if let Some(listen) = &w.api_listen {
        match listen.get_ref().parse::<std::net::SocketAddr>() {
            Ok(addr) => {
                if !addr.ip().is_loopback() && w.api_token.is_none() {
                    ctx.warn(
                        listen.span().start,
                        format!(
                            "the API on {addr} is reachable from the network without `api_token`"
                        ),
                    );
                }
                settings.api_listen = Some(addr);
            }
            Err(_) => ctx.error(
                listen.span().start,
                format!(
                    "`api_listen` `{}` is not an address:port (e.g. \"127.0.0.1:9810\")",
                    listen.get_ref()
                ),
            ),
        }
    }
    if let Some(token) = &w.api_token {
        match SecretRef::parse(token.get_ref()) {
            Ok(secret) => settings.api_token = Some(secret),
            Err(e) => ctx.error(token.span().start, format!("`api_token`: {e}")),
        }
    }
    settings.dry_run = w.dry_run.unwrap_or(false);
    if let Some(n) = ctx.count("max_in_flight", &w.max_in_flight) {
        settings.max_in_flight = n as usize;
    }
    if let Some(grid) = ctx.duration("start_grid", &w.start_grid) {
        settings.start_grid = grid;
    }
    if let Some(h) = &w.hostname {
        if h.get_ref().trim().is_empty() {
            ctx.error(h.span().start, "`hostname` must not be empty");
        } else {
            settings.hostname = h.get_ref().clone();
        }
    }
    settings
}

/// A checked item, with the file and offset to report later warnings at (borrowed: a config
/// with 10,000 probes must not copy its text 10,000 times).
type Checked<'a, T> = (T, (&'a Source, usize));

fn check_probes<'a>(
    documents: &'a [Document],
    defaults: &Timing,
    diags: &mut Diagnostics,
) -> Vec<Checked<'a, ProbeSpec>> {
    let mut out: Vec<Checked<'a, ProbeSpec>> = Vec::new();
    let mut seen: BTreeMap<String, (PathBuf, usize)> = BTreeMap::new();
    for doc in documents {
        for item in &doc.probes {
            let p = &item.value;
            let name = p.name.get_ref().clone();
            let mut ctx = Ctx {
                source: &doc.source,
                subject: Some(format!("probe \"{name}\"")),
                diags,
            };
            if name.trim().is_empty() {
                ctx.error(p.name.span().start, "`name` must not be empty");
            }
            if let Some((file, line)) = seen.get(&name) {
                ctx.error(
                    p.name.span().start,
                    format!(
                        "duplicate probe name: already defined at {}:{line}",
                        file.display()
                    ),
                );
            } else {
                let (line, _) = doc.source.line_col(p.name.span().start);
                seen.insert(name.clone(), (doc.source.path.clone(), line));
            }
            if let Some(spec) = check_probe(&mut ctx, p, defaults) {
                out.push((spec, (&doc.source, item.at)));
            }
        }
    }
    out
}

fn check_probe(ctx: &mut Ctx<'_>, p: &raw::Probe, defaults: &Timing) -> Option<ProbeSpec> {
    let overrides = raw::Timing {
        interval: p.interval.clone(),
        timeout: p.timeout.clone(),
        fail_after: p.fail_after.clone(),
        recover_after: p.recover_after.clone(),
        window: p.window.clone(),
        startup_grace: p.startup_grace.clone(),
        restart_grace: p.restart_grace.clone(),
    };
    let timing = apply_timing(ctx, defaults, &overrides);
    if timing.timeout >= timing.interval {
        let at = at(&p.timeout)
            .or(at(&p.interval))
            .unwrap_or(p.name.span().start);
        ctx.error(
            at,
            format!(
                "timeout ({}) must be shorter than interval ({}): checks would overlap",
                humantime::format_duration(timing.timeout),
                humantime::format_duration(timing.interval)
            ),
        );
    }

    // Which keys belong to which kind: a key set for another kind is an error, not ignored.
    let kind_keys = [
        ("http", "url", at(&p.url)),
        ("http", "method", at(&p.method)),
        ("http", "expect_status", at(&p.expect_status)),
        ("http", "max_latency", at(&p.max_latency)),
        ("http", "body_contains", at(&p.body_contains)),
        ("http", "body_matches", at(&p.body_matches)),
        ("http", "headers", at(&p.headers)),
        ("http", "host", at(&p.host)),
        ("http", "basic_auth_user", at(&p.basic_auth_user)),
        ("http", "basic_auth_password", at(&p.basic_auth_password)),
        ("http", "insecure_tls", at(&p.insecure_tls)),
        ("http", "max_body", at(&p.max_body)),
        ("tcp", "address", at(&p.address)),
        ("tcp", "send", at(&p.send)),
        ("tcp", "expect", at(&p.expect)),
        ("syn_backlog", "port", at(&p.port)),
        ("syn_backlog", "bind", at(&p.bind)),
        ("syn_backlog", "netns", at(&p.netns)),
        ("syn_backlog", "max_accept_queue", at(&p.max_accept_queue)),
        ("syn_backlog", "max_syn_recv", at(&p.max_syn_recv)),
        (
            "syn_backlog",
            "max_overflows_per_s",
            at(&p.max_overflows_per_s),
        ),
        ("process", "pidfile", at(&p.pidfile)),
        ("process", "exe", at(&p.exe)),
        ("process", "process_name", at(&p.process_name)),
        ("process", "cmdline", at(&p.cmdline)),
        ("process", "unit", at(&p.unit)),
        ("process", "min_children", at(&p.min_children)),
        ("process", "max_children", at(&p.max_children)),
        ("process", "max_rss", at(&p.max_rss)),
        ("process", "max_cpu", at(&p.max_cpu)),
        ("process", "max_fds", at(&p.max_fds)),
        ("process", "min_uptime", at(&p.min_uptime)),
        ("memory", "cgroup", at(&p.cgroup)),
        ("memory", "max_psi_some_avg10", at(&p.max_psi_some_avg10)),
        ("memory", "max_psi_full_avg10", at(&p.max_psi_full_avg10)),
        ("memory", "min_available", at(&p.min_available)),
        ("memory", "max_swap_used", at(&p.max_swap_used)),
        ("memory", "oom_kills", at(&p.oom_kills)),
        ("memory", "psi_trigger", at(&p.psi_trigger)),
        ("haproxy|docker", "socket", at(&p.socket)),
        ("haproxy", "backend", at(&p.backend)),
        ("haproxy", "min_ready", at(&p.min_ready)),
        ("haproxy", "min_ready_ratio", at(&p.min_ready_ratio)),
        ("docker", "container", at(&p.container)),
    ];

    let kind = p.kind.get_ref().as_str();
    if !CheckSpec::KINDS.contains(&kind) {
        let hint = closest(kind, &CheckSpec::KINDS)
            .map(|s| format!(" (did you mean \"{s}\"?)"))
            .unwrap_or_default();
        ctx.error(
            p.kind.span().start,
            format!(
                "unknown probe kind \"{kind}\"{hint}; known kinds: {}",
                CheckSpec::KINDS.join(", ")
            ),
        );
        return None;
    }
    // An owner "a|b": a key two kinds share.
    for (owner, key, at) in kind_keys {
        if let Some(at) = at
            && !owner.split('|').any(|o| o == kind)
        {
            let owner = owner.replace('|', "` or `");
            ctx.error(
                at,
                format!("`{key}` does not apply to kind \"{kind}\" (it is a `{owner}` key)"),
            );
        }
    }
    let check = match kind {
        "http" => CheckSpec::Http(check_http(ctx, p, &timing)?),
        "tcp" => CheckSpec::Tcp(check_tcp(ctx, p)?),
        "syn_backlog" => CheckSpec::SynBacklog(check_backlog(ctx, p)?),
        "process" => CheckSpec::Process(check_process(ctx, p)?),
        "haproxy" => CheckSpec::Haproxy(super::haproxy::check_probe(ctx, p)?),
        "docker" => CheckSpec::Docker(docker::check_probe(ctx, p)?),
        _ => CheckSpec::Memory(check_memory(ctx, p)?),
    };
    let name = p.name.get_ref().clone();
    Some(ProbeSpec {
        name: name.clone(),
        interval: timing.interval,
        timeout: timing.timeout,
        check,
        rules: ProbeRules {
            probe: name,
            policy: timing.policy,
            rules: Vec::new(),
            // Filled in by `check_dependencies` once every probe is known.
            depends_on: Vec::new(),
        },
    })
}

fn check_http(ctx: &mut Ctx<'_>, p: &raw::Probe, timing: &Timing) -> Option<HttpCheck> {
    let Some(url) = &p.url else {
        ctx.error(p.kind.span().start, "an http probe needs `url`");
        return None;
    };
    let mut ok = true;
    match reqwest::Url::parse(url.get_ref()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        Ok(u) => {
            ctx.error(
                url.span().start,
                format!(
                    "`url` must be http:// or https:// with a host, not `{}`",
                    u.scheme()
                ),
            );
            ok = false;
        }
        Err(e) => {
            ctx.error(
                url.span().start,
                format!("`url` `{}` is not a URL: {e}", url.get_ref()),
            );
            ok = false;
        }
    }
    let method = match &p.method {
        Some(m) => {
            let upper = m.get_ref().to_ascii_uppercase();
            if reqwest::Method::from_bytes(upper.as_bytes()).is_err() || upper.is_empty() {
                ctx.error(
                    m.span().start,
                    format!("`method` `{}` is not an HTTP method", m.get_ref()),
                );
                ok = false;
            }
            upper
        }
        None => "GET".into(),
    };
    let expect_status = match &p.expect_status {
        None => StatusRanges::default_ok(),
        Some(s) => {
            let parsed = match s.get_ref() {
                raw::StatusSpec::One(n) => StatusRanges::parse(&n.to_string()),
                raw::StatusSpec::Ranges(text) => StatusRanges::parse(text),
            };
            match parsed {
                Ok(r) => r,
                Err(e) => {
                    ctx.error(s.span().start, format!("`expect_status`: {e}"));
                    ok = false;
                    StatusRanges::default_ok()
                }
            }
        }
    };
    let max_latency = ctx.positive_duration("max_latency", &p.max_latency);
    if let Some(l) = max_latency
        && l > timing.timeout
    {
        ctx.warn(
            at(&p.max_latency).unwrap_or(0),
            format!(
                "max_latency ({}) is longer than timeout ({}): the timeout fires first",
                humantime::format_duration(l),
                humantime::format_duration(timing.timeout)
            ),
        );
    }
    let body_matches = match &p.body_matches {
        Some(r) => match regex::Regex::new(r.get_ref()) {
            Ok(re) => Some(re),
            Err(e) => {
                ctx.error(
                    r.span().start,
                    format!("`body_matches` is not a valid regex: {e}"),
                );
                ok = false;
                None
            }
        },
        None => None,
    };
    if let Some(c) = &p.body_contains
        && c.get_ref().is_empty()
    {
        ctx.error(c.span().start, "`body_contains` must not be empty");
        ok = false;
    }
    let basic_auth = match (&p.basic_auth_user, &p.basic_auth_password) {
        (Some(user), Some(password)) => match SecretRef::parse(password.get_ref()) {
            Ok(secret) => {
                warn_unresolvable(ctx, password.span().start, &secret);
                Some((user.get_ref().clone(), secret))
            }
            Err(e) => {
                ctx.error(password.span().start, format!("`basic_auth_password`: {e}"));
                ok = false;
                None
            }
        },
        (None, None) => None,
        (Some(u), None) => {
            ctx.error(
                u.span().start,
                "`basic_auth_user` needs `basic_auth_password`",
            );
            ok = false;
            None
        }
        (None, Some(pw)) => {
            ctx.error(
                pw.span().start,
                "`basic_auth_password` needs `basic_auth_user`",
            );
            ok = false;
            None
        }
    };
    let max_body = match &p.max_body {
        Some(text) => match parse_size(text.get_ref()) {
            Ok(n) if n > 0 => n,
            _ => {
                ctx.error(
                    text.span().start,
                    format!(
                        "`max_body` `{}` is not a size; write e.g. \"64KiB\", \"1MiB\"",
                        text.get_ref()
                    ),
                );
                ok = false;
                HttpCheck::DEFAULT_MAX_BODY
            }
        },
        None => HttpCheck::DEFAULT_MAX_BODY,
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(h) = &p.headers {
        for (k, v) in h.get_ref() {
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(v).is_err()
            {
                ctx.error(
                    h.span().start,
                    format!("`headers`: `{k}: {v}` is not a valid HTTP header"),
                );
                ok = false;
            } else if k.eq_ignore_ascii_case("host") {
                ctx.error(
                    h.span().start,
                    "set the Host header with `host = \"...\"`, not in `headers`",
                );
                ok = false;
            } else {
                headers.push((k.clone(), v.clone()));
            }
        }
    }
    ok.then(|| HttpCheck {
        method,
        url: url.get_ref().clone(),
        expect_status,
        max_latency,
        body_contains: p.body_contains.as_ref().map(|c| c.get_ref().clone()),
        body_matches,
        headers,
        host: p.host.as_ref().map(|h| h.get_ref().clone()),
        basic_auth,
        insecure_tls: p.insecure_tls.as_ref().is_some_and(|b| *b.get_ref()),
        max_body,
    })
}

/// `65536`, `64KiB`, `64KB`, `1MiB`, `1M`, `2GiB` (all binary multiples).
fn parse_size(text: &str) -> Result<usize, ()> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().map_err(|_| ())?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => return Err(()),
    };
    n.checked_mul(mult).ok_or(())
}

fn check_tcp(ctx: &mut Ctx<'_>, p: &raw::Probe) -> Option<TcpCheck> {
    let Some(address) = &p.address else {
        ctx.error(
            p.kind.span().start,
            "a tcp probe needs `address` (host:port)",
        );
        return None;
    };
    let a = address.get_ref();
    let port_ok = a
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        ctx.error(
            address.span().start,
            format!("`address` `{a}` is not host:port (e.g. \"127.0.0.1:22\", \"[::1]:22\")"),
        );
        return None;
    }
    if let Some(e) = &p.expect
        && e.get_ref().is_empty()
    {
        ctx.error(e.span().start, "`expect` must not be empty");
        return None;
    }
    Some(TcpCheck {
        address: a.clone(),
        send: p.send.as_ref().map(|s| s.get_ref().clone()),
        expect: p.expect.as_ref().map(|s| s.get_ref().clone()),
    })
}

fn check_backlog(ctx: &mut Ctx<'_>, p: &raw::Probe) -> Option<BacklogCheck> {
    let Some(port) = &p.port else {
        ctx.error(
            p.kind.span().start,
            "a syn_backlog probe needs `port` (the listening port)",
        );
        return None;
    };
    let Some(port_number) = u16::try_from(*port.get_ref()).ok().filter(|n| *n > 0) else {
        ctx.error(
            port.span().start,
            format!("`port` {} is not a TCP port (1-65535)", port.get_ref()),
        );
        return None;
    };
    let mut ok = true;
    let bind = match &p.bind {
        Some(b) => match b.get_ref().parse::<std::net::IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                ctx.error(
                    b.span().start,
                    format!("`bind` `{}` is not an IP address", b.get_ref()),
                );
                ok = false;
                None
            }
        },
        None => None,
    };
    let netns = p.netns.as_ref().map(|n| PathBuf::from(n.get_ref()));
    if let (Some(path), Some(text)) = (&netns, &p.netns)
        && !path.exists()
    {
        ctx.warn(
            text.span().start,
            format!("`netns` {} does not exist on this machine", path.display()),
        );
    }
    let max_accept_queue = match &p.max_accept_queue {
        None => Limit::Percent(90.0),
        Some(a) => {
            let parsed = match a.get_ref() {
                raw::Amount::Count(n) => u64::try_from(*n)
                    .map(Limit::Absolute)
                    .map_err(|_| format!("{n} is negative")),
                raw::Amount::Text(t) => Limit::parse(t, |s| s.parse().ok()),
            };
            match parsed {
                Ok(l) => l,
                Err(e) => {
                    ctx.error(
                        a.span().start,
                        format!("`max_accept_queue`: {e}; write e.g. \"80%\" or 100"),
                    );
                    ok = false;
                    Limit::Percent(90.0)
                }
            }
        }
    };
    let max_syn_recv = ctx.count("max_syn_recv", &p.max_syn_recv);
    let max_overflows_per_s = p.max_overflows_per_s.as_ref().and_then(|r| {
        if *r.get_ref() >= 0.0 && r.get_ref().is_finite() {
            Some(*r.get_ref())
        } else {
            ctx.error(r.span().start, "`max_overflows_per_s` must be a number ≥ 0");
            ok = false;
            None
        }
    });
    ok.then_some(BacklogCheck {
        port: port_number,
        bind,
        netns,
        max_accept_queue,
        max_syn_recv,
        max_overflows_per_s,
    })
}

fn check_process(ctx: &mut Ctx<'_>, p: &raw::Probe) -> Option<ProcessCheck> {
    let selectors: Vec<(&str, &Text)> = [
        ("pidfile", &p.pidfile),
        ("exe", &p.exe),
        ("process_name", &p.process_name),
        ("cmdline", &p.cmdline),
        ("unit", &p.unit),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    .collect();
    let select = match selectors.as_slice() {
        [] => {
            ctx.error(
                p.kind.span().start,
                "a process probe needs one of `pidfile`, `exe`, `process_name`, `cmdline`, `unit`",
            );
            return None;
        }
        [(key, value)] => {
            let v = value.get_ref();
            match *key {
                "pidfile" | "exe" if !v.starts_with('/') => {
                    ctx.error(
                        value.span().start,
                        format!("`{key}` must be an absolute path"),
                    );
                    return None;
                }
                "pidfile" => ProcessSelect::Pidfile(PathBuf::from(v)),
                "exe" => ProcessSelect::Exe(PathBuf::from(v)),
                "process_name" if v.is_empty() || v.len() > 15 => {
                    ctx.error(value.span().start, "`process_name` is the kernel's comm: 1 to 15 characters (use `cmdline` for longer)");
                    return None;
                }
                "process_name" => ProcessSelect::Name(v.clone()),
                "cmdline" => match regex::Regex::new(v) {
                    Ok(re) => ProcessSelect::Cmdline(re),
                    Err(e) => {
                        ctx.error(
                            value.span().start,
                            format!("`cmdline` is not a valid regex: {e}"),
                        );
                        return None;
                    }
                },
                _ => ProcessSelect::Unit(v.clone()),
            }
        }
        [_, (key, value), ..] => {
            ctx.error(
                value.span().start,
                format!("`{key}`: give only one way to find the process"),
            );
            return None;
        }
    };
    let mut ok = true;
    let max_rss = match &p.max_rss {
        Some(t) => match parse_size(t.get_ref()) {
            Ok(n) if n > 0 => Some(n as u64),
            _ => {
                ctx.error(
                    t.span().start,
                    format!(
                        "`max_rss` `{}` is not a size; write e.g. \"500MiB\"",
                        t.get_ref()
                    ),
                );
                ok = false;
                None
            }
        },
        None => None,
    };
    let max_cpu_percent = match &p.max_cpu {
        Some(t) => match t
            .get_ref()
            .trim()
            .strip_suffix('%')
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            Some(v) if v > 0.0 => Some(v),
            _ => {
                ctx.error(t.span().start, format!("`max_cpu` `{}` is not a percentage of one core; write e.g. \"90%\" or \"250%\"", t.get_ref()));
                ok = false;
                None
            }
        },
        None => None,
    };
    let min_children = p
        .min_children
        .as_ref()
        .and_then(|c| u32::try_from(*c.get_ref()).ok());
    let max_children = ctx.count("max_children", &p.max_children);
    if let (Some(lo), Some(hi)) = (min_children, max_children)
        && lo > hi
    {
        ctx.error(
            at(&p.min_children).unwrap_or(0),
            format!("`min_children` ({lo}) is above `max_children` ({hi})"),
        );
        ok = false;
    }
    let max_fds = ctx.count("max_fds", &p.max_fds);
    let min_uptime = ctx.duration("min_uptime", &p.min_uptime);
    ok.then_some(ProcessCheck {
        select,
        min_children,
        max_children,
        max_rss,
        max_cpu_percent,
        max_fds,
        min_uptime,
    })
}

fn check_memory(ctx: &mut Ctx<'_>, p: &raw::Probe) -> Option<MemoryCheck> {
    let mut ok = true;
    let mut percent = |key: &str, v: &Option<Spanned<f64>>| -> Option<f64> {
        let v = v.as_ref()?;
        if (0.0..=100.0).contains(v.get_ref()) {
            Some(*v.get_ref())
        } else {
            ctx.error(v.span().start, format!("`{key}` is a percentage: 0 to 100"));
            ok = false;
            None
        }
    };
    let max_psi_some_avg10 = percent("max_psi_some_avg10", &p.max_psi_some_avg10);
    let max_psi_full_avg10 = percent("max_psi_full_avg10", &p.max_psi_full_avg10).or(Some(60.0));
    let mut limit = |key: &str, t: &Option<Text>| -> Option<Limit> {
        let t = t.as_ref()?;
        match Limit::parse(t.get_ref(), |s| parse_size(s).ok().map(|n| n as u64)) {
            Ok(l) => Some(l),
            Err(e) => {
                ctx.error(
                    t.span().start,
                    format!("`{key}`: {e}; write e.g. \"10%\" or \"512MiB\""),
                );
                ok = false;
                None
            }
        }
    };
    let min_available = limit("min_available", &p.min_available).or(Some(Limit::Percent(10.0)));
    let max_swap_used = limit("max_swap_used", &p.max_swap_used);
    let cgroup = p.cgroup.as_ref().map(|c| PathBuf::from(c.get_ref()));
    if let (Some(path), Some(text)) = (&cgroup, &p.cgroup)
        && !path.is_dir()
    {
        ctx.warn(
            text.span().start,
            format!(
                "`cgroup` {} is not a directory on this machine",
                path.display()
            ),
        );
    }
    let psi_trigger = p.psi_trigger.as_ref().and_then(|t| {
        let parts: Vec<&str> = t.get_ref().split_whitespace().collect();
        // The kernel's rules: a window of 500 ms to 10 s, a stall within it.
        let valid = match parts.as_slice() {
            [kind, stall, window] if matches!(*kind, "some" | "full") => {
                match (stall.parse::<u64>(), window.parse::<u64>()) {
                    (Ok(stall), Ok(window)) => (500_000..=10_000_000).contains(&window) && stall > 0 && stall <= window,
                    _ => false,
                }
            }
            _ => false,
        };
        if valid {
            Some(t.get_ref().clone())
        } else {
            ctx.error(t.span().start, "`psi_trigger` is \"some|full STALL_US WINDOW_US\" with a window of 500000 to 10000000 µs and a stall within it, e.g. \"some 150000 2000000\" (without CAP_SYS_RESOURCE, windows must be multiples of 2 s)");
            ok = false;
            None
        }
    });
    ok.then_some(MemoryCheck {
        cgroup,
        max_psi_some_avg10,
        max_psi_full_avg10,
        min_available,
        max_swap_used,
        oom_kills: p.oom_kills.as_ref().is_none_or(|b| *b.get_ref()),
        psi_trigger,
    })
}

fn warn_unresolvable(ctx: &mut Ctx<'_>, at: usize, secret: &SecretRef) {
    if let Err(e) = secret.resolve() {
        ctx.warn(
            at,
            format!("{e} here; it must be by the time the watchdog uses it"),
        );
    }
}

pub(super) type CheckedActions<'a> = BTreeMap<String, (ActionSpec, &'a Source, usize)>;

fn check_actions<'a>(documents: &'a [Document], diags: &mut Diagnostics) -> CheckedActions<'a> {
    let mut out = CheckedActions::new();
    let mut seen: BTreeMap<String, (PathBuf, usize)> = BTreeMap::new();
    for doc in documents {
        for (name, item) in &doc.actions {
            let mut ctx = Ctx {
                source: &doc.source,
                subject: Some(format!("action \"{}\"", name.get_ref())),
                diags,
            };
            if let Some((file, line)) = seen.get(name.get_ref()) {
                ctx.error(
                    name.span().start,
                    format!(
                        "duplicate action name: already defined at {}:{line}",
                        file.display()
                    ),
                );
                continue;
            }
            let (line, _) = doc.source.line_col(name.span().start);
            seen.insert(name.get_ref().clone(), (doc.source.path.clone(), line));
            if let Some(spec) = check_action(&mut ctx, &item.value) {
                out.insert(name.get_ref().clone(), (spec, &doc.source, item.at));
            }
        }
    }
    out
}

fn check_argv(ctx: &mut Ctx<'_>, key: &str, argv: &Spanned<Vec<Text>>) -> Option<Vec<String>> {
    let Some(program) = argv.get_ref().first() else {
        ctx.error(
            argv.span().start,
            format!("`{key}` must name a program: [\"/path/to/program\", \"arg\", ...]"),
        );
        return None;
    };
    let p = program.get_ref();
    if p.is_empty() {
        ctx.error(
            program.span().start,
            format!("`{key}`: the program name is empty"),
        );
        return None;
    }
    if p.starts_with('/') && !std::path::Path::new(p).exists() {
        ctx.warn(
            program.span().start,
            format!("`{key}`: {p} does not exist on this machine"),
        );
    } else if !p.contains('/') && !p.contains(' ') && which(p).is_none() {
        ctx.warn(
            program.span().start,
            format!("`{key}`: `{p}` is not in PATH on this machine"),
        );
    }
    if p.contains(' ') && argv.get_ref().len() == 1 {
        ctx.warn(
            program.span().start,
            format!("`{key}`: commands run without a shell; split `{p}` into [\"program\", \"arg\", ...]"),
        );
    }
    Some(argv.get_ref().iter().map(|a| a.get_ref().clone()).collect())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| PathBuf::from(dir).join(program))
        .find(|p| p.is_file())
}

fn check_action(ctx: &mut Ctx<'_>, a: &raw::Action) -> Option<ActionSpec> {
    let command_keys = [("command", at(&a.command)), ("stop", at(&a.stop))];
    let signal_keys = [
        ("pidfile", at(&a.pidfile)),
        ("signal", at(&a.signal)),
        ("kill_after", at(&a.kill_after)),
        ("start", at(&a.start)),
    ];
    let webhook_keys = [("url", at(&a.url)), ("token", at(&a.token))];
    let systemd_keys = systemd::keys(a);
    let group_key = [("process_group", at(&a.process_group))];
    let docker_keys = docker::action_keys(a);
    let kind = a.kind.get_ref().as_str();
    if matches!(
        kind,
        "command" | "signal" | "webhook" | "alertmanager" | "pagerduty" | "email"
    ) {
        // `server` is also the email kind's (checked there).
        let haproxy_keys = super::haproxy::action_keys(a);
        let foreign: Vec<_> = haproxy_keys
            .iter()
            .filter(|(key, _)| kind != "email" || *key != "server")
            .copied()
            .collect();
        ctx.not_for_kind(kind, &foreign);
        ctx.not_for_kind(kind, &[("file", at(&a.file))]);
    }
    let not_haproxy = |ctx: &mut Ctx<'_>, kind: &str| {
        ctx.not_for_kind(kind, &command_keys);
        ctx.not_for_kind(kind, &signal_keys);
        ctx.not_for_kind(kind, &webhook_keys);
        ctx.not_for_kind(kind, &systemd_keys);
        ctx.not_for_kind(kind, &group_key);
        ctx.not_for_kind(kind, &docker_keys[..2]);
        pagers::reject_foreign_keys(ctx, kind, a);
    };
    match kind {
        "haproxy" => {
            not_haproxy(ctx, kind);
            super::haproxy::check_action(ctx, a).map(ActionSpec::Haproxy)
        }
        "restart_drained" => {
            not_haproxy(ctx, kind);
            super::haproxy::check_restart_drained(ctx, a).map(ActionSpec::RestartDrained)
        }
        "drain_flag" => {
            not_haproxy(ctx, kind);
            super::haproxy::check_flag_action(ctx, a).map(ActionSpec::DrainFlag)
        }
        "command" => {
            // `start` is shared with the signal kind; here it pairs with `stop`, monit-style.
            ctx.not_for_kind(kind, &signal_keys[..3]);
            ctx.not_for_kind(kind, &webhook_keys);
            pagers::reject_foreign_keys(ctx, kind, a);
            ctx.not_for_kind(kind, &systemd_keys);
            ctx.not_for_kind(kind, &group_key);
            ctx.not_for_kind(kind, &docker_keys[..2]);
            let timeout = ctx
                .positive_duration("timeout", &a.timeout)
                .unwrap_or(CommandAction::DEFAULT_TIMEOUT);
            let steps = match (&a.command, &a.stop, &a.start) {
                (Some(argv), None, None) => vec![check_argv(ctx, "command", argv)?],
                (None, stop, Some(start)) => {
                    let mut steps = Vec::new();
                    if let Some(stop) = stop {
                        steps.push(check_argv(ctx, "stop", stop)?);
                    }
                    steps.push(check_argv(ctx, "start", start)?);
                    steps
                }
                (Some(argv), _, _) => {
                    ctx.error(
                        argv.span().start,
                        "give either `command`, or `stop` and `start` (monit-style), not both",
                    );
                    return None;
                }
                (None, Some(stop), None) => {
                    ctx.error(stop.span().start, "`stop` needs a `start` to follow it");
                    return None;
                }
                (None, None, None) => {
                    ctx.error(
                        a.kind.span().start,
                        "a command action needs `command = [\"/path/to/program\", \"arg\", ...]`, or `stop` and `start`",
                    );
                    return None;
                }
            };
            Some(ActionSpec::Command(CommandAction { steps, timeout }))
        }
        "signal" => {
            ctx.not_for_kind(kind, &command_keys);
            ctx.not_for_kind(kind, &webhook_keys);
            pagers::reject_foreign_keys(ctx, kind, a);
            ctx.not_for_kind(kind, &systemd_keys);
            ctx.not_for_kind(kind, &docker_keys[..2]);
            let Some(pidfile) = &a.pidfile else {
                ctx.error(a.kind.span().start, "a signal action needs `pidfile`");
                return None;
            };
            if !pidfile.get_ref().starts_with('/') {
                ctx.error(pidfile.span().start, "`pidfile` must be an absolute path");
            }
            let signal = match &a.signal {
                None => Some(nix::sys::signal::Signal::SIGTERM),
                Some(s) => {
                    let name = s.get_ref().trim().to_ascii_uppercase();
                    let full = if name.starts_with("SIG") {
                        name
                    } else {
                        format!("SIG{name}")
                    };
                    match full.parse::<nix::sys::signal::Signal>() {
                        Ok(sig) => Some(sig),
                        Err(_) => {
                            ctx.error(s.span().start, format!("`signal` `{}` is not a signal name (e.g. \"TERM\", \"INT\", \"HUP\")", s.get_ref()));
                            None
                        }
                    }
                }
            };
            let kill_after = ctx
                .duration("kill_after", &a.kill_after)
                .unwrap_or(SignalAction::DEFAULT_KILL_AFTER);
            let timeout = ctx
                .positive_duration("timeout", &a.timeout)
                .unwrap_or(CommandAction::DEFAULT_TIMEOUT);
            let start = match &a.start {
                Some(argv) => Some(check_argv(ctx, "start", argv)?),
                None => None,
            };
            if !pidfile.get_ref().starts_with('/') {
                return None;
            }
            Some(ActionSpec::Signal(SignalAction {
                pidfile: PathBuf::from(pidfile.get_ref()),
                signal: signal?,
                kill_after,
                start,
                timeout,
                process_group: a.process_group.as_ref().is_some_and(|g| *g.get_ref()),
            }))
        }
        "webhook" => {
            ctx.not_for_kind(kind, &command_keys);
            ctx.not_for_kind(kind, &signal_keys);
            let (format, paging) = pagers::webhook_extras(ctx, a);
            ctx.not_for_kind(kind, &systemd_keys);
            ctx.not_for_kind(kind, &group_key);
            ctx.not_for_kind(kind, &docker_keys[..2]);
            let timeout = ctx
                .positive_duration("timeout", &a.timeout)
                .unwrap_or(WebhookAction::DEFAULT_TIMEOUT);
            let Some(url) = &a.url else {
                ctx.error(a.kind.span().start, "a webhook action needs `url`");
                return None;
            };
            match reqwest::Url::parse(url.get_ref()) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => {
                    ctx.error(
                        url.span().start,
                        format!("`url` `{}` is not an http(s) URL", url.get_ref()),
                    );
                    return None;
                }
            }
            let token = match &a.token {
                Some(t) => match SecretRef::parse(t.get_ref()) {
                    Ok(secret) => {
                        warn_unresolvable(ctx, t.span().start, &secret);
                        Some(secret)
                    }
                    Err(e) => {
                        ctx.error(t.span().start, format!("`token`: {e}"));
                        return None;
                    }
                },
                None => None,
            };
            Some(ActionSpec::Webhook(WebhookAction {
                url: url.get_ref().clone(),
                token,
                timeout,
                format,
                paging,
            }))
        }
        "docker" => {
            ctx.not_for_kind(kind, &command_keys);
            // `signal` and `kill_after` mean here what they mean for a signal action.
            ctx.not_for_kind(kind, &[signal_keys[0], signal_keys[3]]);
            ctx.not_for_kind(kind, &webhook_keys);
            ctx.not_for_kind(kind, &systemd_keys);
            ctx.not_for_kind(kind, &group_key);
            // `socket` and `operation` are shared with the haproxy kinds.
            let haproxy_keys = super::haproxy::action_keys(a);
            ctx.not_for_kind(kind, &haproxy_keys[1..2]);
            ctx.not_for_kind(kind, &haproxy_keys[3..]);
            ctx.not_for_kind(kind, &[("file", at(&a.file))]);
            pagers::reject_foreign_keys(ctx, kind, a);
            docker::check_action(ctx, a).map(ActionSpec::Docker)
        }
        "systemd" => {
            ctx.not_for_kind(kind, &command_keys);
            ctx.not_for_kind(kind, &webhook_keys);
            ctx.not_for_kind(kind, &group_key);
            // `signal` is shared: the signal of operation = "kill"; `operation` too (haproxy's).
            ctx.not_for_kind(kind, &[signal_keys[0], signal_keys[2], signal_keys[3]]);
            let haproxy_keys = super::haproxy::action_keys(a);
            ctx.not_for_kind(kind, &haproxy_keys[..2]);
            ctx.not_for_kind(kind, &haproxy_keys[3..]);
            ctx.not_for_kind(kind, &[("file", at(&a.file))]);
            ctx.not_for_kind(kind, &docker_keys[..2]);
            pagers::reject_foreign_keys(ctx, kind, a);
            systemd::check(ctx, a).map(ActionSpec::Systemd)
        }
        "alertmanager" | "pagerduty" | "email" => {
            ctx.not_for_kind(kind, &command_keys);
            ctx.not_for_kind(kind, &signal_keys);
            if kind != "email" && a.token.is_some() {
                ctx.not_for_kind(kind, &webhook_keys[1..]);
            }
            ctx.not_for_kind(kind, &systemd_keys);
            ctx.not_for_kind(kind, &group_key);
            ctx.not_for_kind(kind, &docker_keys[..2]);
            pagers::check(ctx, kind, a)
        }
        other => {
            let known = [
                "command",
                "signal",
                "webhook",
                "haproxy",
                "restart_drained",
                "drain_flag",
                "alertmanager",
                "pagerduty",
                "email",
                "systemd",
                "docker",
            ];
            let hint = closest(other, &known)
                .map(|s| format!(" (did you mean \"{s}\"?)"))
                .unwrap_or_default();
            ctx.error(
                a.kind.span().start,
                format!(
                    "unknown action kind \"{other}\"{hint}; known kinds: {}",
                    known.join(", ")
                ),
            );
            None
        }
    }
}

/// One step of a rule as written: where it is, and its action names with their positions.
type WrittenStep<'a> = (usize, Vec<(&'a str, usize)>);

/// `backoff`, `backoff_max`, `backoff_reset` of a rule.
fn check_backoff(ctx: &mut Ctx<'_>, r: &raw::Rule) -> Option<Backoff> {
    let first = ctx.positive_duration("backoff", &r.backoff);
    let max = ctx.positive_duration("backoff_max", &r.backoff_max);
    let reset_after = ctx.positive_duration("backoff_reset", &r.backoff_reset);
    if r.backoff.is_none() {
        for (key, at) in [
            ("backoff_max", at(&r.backoff_max)),
            ("backoff_reset", at(&r.backoff_reset)),
        ] {
            if let Some(at) = at {
                ctx.error(at, format!("`{key}` needs `backoff` (the first delay)"));
            }
        }
        return None;
    }
    let first = first?;
    let max = max.unwrap_or(Backoff::DEFAULT_MAX.max(first));
    if max < first {
        ctx.error(
            at(&r.backoff_max).unwrap_or(0),
            format!(
                "`backoff_max` ({}) is shorter than `backoff` ({})",
                humantime::format_duration(max),
                humantime::format_duration(first)
            ),
        );
        return None;
    }
    Some(Backoff {
        first,
        max,
        reset_after: reset_after.unwrap_or(Backoff::DEFAULT_RESET_AFTER),
    })
}

/// `depends_on` of each probe: known probes, not itself, no cycles.
fn check_dependencies(
    documents: &[Document],
    probes: &mut [Checked<'_, ProbeSpec>],
    diags: &mut Diagnostics,
) {
    let index: BTreeMap<String, usize> = probes
        .iter()
        .enumerate()
        .map(|(i, (p, _))| (p.name.clone(), i))
        .collect();
    let names: Vec<&str> = index.keys().map(String::as_str).collect();
    let mut edges: Vec<(usize, Vec<(usize, usize)>)> = Vec::new();
    for doc in documents {
        for item in &doc.probes {
            let p = &item.value;
            let Some(deps) = &p.depends_on else {
                continue;
            };
            let Some(&from) = index.get(p.name.get_ref()) else {
                continue;
            };
            let mut ctx = Ctx {
                source: &doc.source,
                subject: Some(format!("probe \"{}\"", p.name.get_ref())),
                diags,
            };
            let mut targets = Vec::new();
            for dep in deps.get_ref() {
                let name = dep.get_ref();
                match index.get(name) {
                    Some(&to) if to == from => {
                        ctx.error(dep.span().start, "a probe cannot depend on itself")
                    }
                    Some(&to) => targets.push((to, dep.span().start)),
                    None => {
                        let hint = closest(name, &names)
                            .map(|s| format!(" (did you mean \"{s}\"?)"))
                            .unwrap_or_default();
                        ctx.error(
                            dep.span().start,
                            format!("`depends_on`: no probe is named \"{name}\"{hint}"),
                        );
                    }
                }
            }
            edges.push((from, targets));
        }
    }
    // A cycle would hold every probe in it back forever once all are down.
    let graph: BTreeMap<usize, Vec<usize>> = edges
        .iter()
        .map(|(from, to)| (*from, to.iter().map(|(t, _)| *t).collect()))
        .collect();
    for (from, targets) in &edges {
        for &(to, at) in targets {
            if let Some(path) = path_between(&graph, to, *from) {
                let (source, _) = probes[*from].1;
                let cycle: Vec<&str> = std::iter::once(*from)
                    .chain(path)
                    .map(|i| probes[i].0.name.as_str())
                    .collect();
                diags.error(
                    source,
                    at,
                    Some(&format!("probe \"{}\"", probes[*from].0.name)),
                    format!("`depends_on` makes a cycle: {}", cycle.join(" -> ")),
                );
            }
        }
    }
    for (from, targets) in edges {
        probes[from].0.rules.depends_on = targets
            .into_iter()
            .map(|(to, _)| probes[to].0.name.clone())
            .collect();
    }
}

/// The probes on a path `from` ..= `to` along `graph`, if there is one.
fn path_between(graph: &BTreeMap<usize, Vec<usize>>, from: usize, to: usize) -> Option<Vec<usize>> {
    let mut stack = vec![vec![from]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = *path.last()?;
        if last == to {
            return Some(path);
        }
        if !seen.insert(last) {
            continue;
        }
        for &next in graph.get(&last).into_iter().flatten() {
            let mut longer = path.clone();
            longer.push(next);
            stack.push(longer);
        }
    }
    None
}

fn check_rules(
    documents: &[Document],
    probes: &mut [Checked<'_, ProbeSpec>],
    actions: &CheckedActions<'_>,
    diags: &mut Diagnostics,
) {
    let probe_names: Vec<String> = probes.iter().map(|(p, _)| p.name.clone()).collect();
    let probe_index_by_name: BTreeMap<&str, usize> = probe_names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    // Declared names, valid or not: an action with its own errors is not also "unknown".
    let declared: Vec<&str> = documents
        .iter()
        .flat_map(|d| d.actions.iter().map(|(n, _)| n.get_ref().as_str()))
        .collect();
    // (probe, trigger text, actions) -> line of the first rule, to spot rules that add nothing.
    let mut seen: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for doc in documents {
        for item in &doc.rules {
            let r = &item.value;
            let probe_name = r.probe.get_ref();
            let mut ctx = Ctx {
                source: &doc.source,
                subject: Some(format!("rule for probe \"{probe_name}\"")),
                diags,
            };
            let mut ok = true;

            let probe_index = probe_index_by_name.get(probe_name.as_str()).copied();
            if probe_index.is_none() {
                let candidates: Vec<&str> = probe_names.iter().map(String::as_str).collect();
                let hint = closest(probe_name, &candidates)
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_default();
                ctx.error(
                    r.probe.span().start,
                    format!("no probe is named \"{probe_name}\"{hint}: this rule can never fire"),
                );
                ok = false;
            }
            let trigger = match parse_trigger(r.when.get_ref()) {
                Ok(t) => Some(t),
                Err(e) => {
                    ctx.error(r.when.span().start, format!("`when`: {e}"));
                    None
                }
            };
            // `do`: one step; `escalate`: a ladder. Each step's names resolved to actions.
            let (escalate, written): (bool, Vec<WrittenStep<'_>>) = match (&r.actions, &r.escalate)
            {
                (Some(actions), None) => (
                    false,
                    vec![(
                        actions.span().start,
                        actions
                            .get_ref()
                            .iter()
                            .map(|n| (n.get_ref().as_str(), n.span().start))
                            .collect(),
                    )],
                ),
                (None, Some(ladder)) => (
                    true,
                    ladder
                        .get_ref()
                        .iter()
                        .map(|step| {
                            let at = step.span().start;
                            let names = match step.get_ref() {
                                raw::Step::One(n) => vec![(n.as_str(), at)],
                                raw::Step::Together(ns) => {
                                    ns.iter().map(|n| (n.as_str(), at)).collect()
                                }
                            };
                            (at, names)
                        })
                        .collect(),
                ),
                (Some(actions), Some(_)) => {
                    ctx.error(
                            actions.span().start,
                            "set `do` (every action each time the rule fires) or `escalate` (the next step each time), not both",
                        );
                    ok = false;
                    (false, Vec::new())
                }
                (None, None) => {
                    ctx.error(
                            r.when.span().start,
                            "this rule does nothing: add `do = [\"action\"]` (or `escalate = [...]`, one step per firing)",
                        );
                    ok = false;
                    (false, Vec::new())
                }
            };
            if let Some(ladder) = &r.escalate
                && ladder.get_ref().is_empty()
            {
                ctx.error(
                    ladder.span().start,
                    "`escalate` is empty: name at least one step",
                );
                ok = false;
            }
            if let Some(actions) = &r.actions
                && actions.get_ref().is_empty()
            {
                ctx.error(
                    actions.span().start,
                    "`do` is empty: name at least one action",
                );
                ok = false;
            }
            let mut steps = Vec::new();
            for (step_at, names) in &written {
                if escalate && names.is_empty() {
                    ctx.error(*step_at, "an empty step: name at least one action");
                    ok = false;
                }
                let mut step = Vec::new();
                for &(name, at) in names {
                    match actions.get(name) {
                        Some((spec, _, _)) => step.push(ActionRef {
                            name: name.to_string(),
                            role: spec.role(),
                        }),
                        None if declared.contains(&name) => ok = false,
                        None => {
                            let hint = closest(name, &declared)
                                .map(|s| format!(" (did you mean \"{s}\"?)"))
                                .unwrap_or_default();
                            ctx.error(at, format!("unknown action \"{name}\"{hint}"));
                            ok = false;
                        }
                    }
                }
                steps.push(step);
            }
            if escalate
                && let Some(t) = trigger
                && t != Trigger::Down
            {
                ctx.error(
                    r.when.span().start,
                    format!("`escalate` needs `when = \"down\"`: `when = \"{t}\"` fires once per incident, so only the first step would ever run"),
                );
                ok = false;
            }
            if escalate && ok {
                // Nothing but a remedy that did not help fires a `down` rule again.
                for (i, step) in steps.iter().enumerate() {
                    if i + 1 < steps.len()
                        && step.iter().all(|a| a.role == crate::rules::Role::Page)
                    {
                        ctx.warn(
                            written[i].0,
                            format!("step {} only pages, so the ladder stops there: a `down` rule fires again only after a remedy did not help", i + 1),
                        );
                    }
                }
            }
            let budget = match &r.budget {
                Some(b) => match parse_budget(b.get_ref()) {
                    Ok(budget) => Some(budget),
                    Err(e) => {
                        ctx.error(b.span().start, format!("`budget`: {e}"));
                        ok = false;
                        None
                    }
                },
                None => None,
            };
            let backoff = check_backoff(&mut ctx, r);
            let (Some(trigger), Some(probe_index), true) = (trigger, probe_index, ok) else {
                continue;
            };
            let has_remedy = steps
                .iter()
                .flatten()
                .any(|a| a.role == crate::rules::Role::Remedy);
            if budget.is_some() && !has_remedy {
                ctx.warn(
                    at(&r.budget).unwrap_or(item.at),
                    "`budget` limits remedies, but this rule only pages",
                );
            }
            if backoff.is_some() && !has_remedy {
                ctx.warn(
                    at(&r.backoff).unwrap_or(item.at),
                    "`backoff` spaces out remedies, but this rule only pages",
                );
            }
            // No restart storms, ever: a remedy always has a budget, the default if unset.
            let budget = budget.or(has_remedy.then_some(Budget::DEFAULT));
            let key = (
                probe_name.clone(),
                trigger.to_string(),
                format!("{escalate}{steps:?}"),
            );
            let (line, _) = doc.source.line_col(item.at);
            if let Some(first) = seen.get(&key) {
                ctx.warn(
                    r.when.span().start,
                    format!(
                        "this rule repeats the rule on line {first} and can never add anything"
                    ),
                );
                continue;
            }
            seen.insert(key, line);
            probes[probe_index].0.rules.rules.push(Rule {
                trigger,
                steps,
                escalate,
                budget,
                backoff,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_grammars() {
        assert_eq!(parse_window("3 of 5"), Ok(Window { failures: 3, of: 5 }));
        assert!(parse_window("6 of 5").is_err());
        assert!(parse_window("0 of 5").is_err());
        assert!(parse_window("3 of 65").is_err());
        assert_eq!(parse_trigger("down"), Ok(Trigger::Down));
        assert_eq!(
            parse_trigger("down for 60s"),
            Ok(Trigger::DownFor(Duration::from_secs(60)))
        );
        assert_eq!(parse_trigger("up"), Ok(Trigger::Up));
        assert!(parse_trigger("sideways").is_err());
        assert_eq!(
            parse_budget("3 per 15m"),
            Ok(Budget {
                max: 3,
                per: Duration::from_secs(900)
            })
        );
        assert!(parse_budget("0 per 15m").is_err());
        assert!(parse_budget("three per week").is_err());
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("lots").is_err());
    }
}

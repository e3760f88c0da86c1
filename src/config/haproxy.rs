//! The HAProxy kinds' config: the `haproxy` pool-capacity probe, the `haproxy` drain action,
//! `restart_drained` (drain, restart, undrain as one remedy) and `drain_flag` (a file, and the
//! watchdog's `/health`, for load balancers that poll a URL). Types and their checks live here
//! so `check.rs` only routes the kinds to them.

use std::path::PathBuf;
use std::time::Duration;

use super::check::{CheckedActions, Ctx, Document, at};
use super::raw;
use super::{ActionSpec, Diagnostics};
use crate::haproxy::{Admin, AdminState};

/// `kind = "haproxy"` probe: enough servers of a backend are up and in rotation.
#[derive(Debug, Clone)]
pub struct HaproxyCheck {
    pub socket: Admin,
    pub backend: String,
    pub min_ready: Option<u32>,
    /// 0.0 ..= 1.0 of the backend's servers.
    pub min_ready_ratio: Option<f64>,
}

impl HaproxyCheck {
    /// Servers that must be ready out of `total`: the stricter of the two limits.
    pub fn required(&self, total: usize) -> usize {
        let by_count = self.min_ready.unwrap_or(0) as usize;
        let by_ratio = self
            .min_ready_ratio
            .map_or(0, |r| (r * total as f64 - 1e-9).ceil().max(0.0) as usize);
        by_count.max(by_ratio)
    }
}

/// `kind = "haproxy"` action: `set server BACKEND/SERVER state drain|maint|ready`, read back.
#[derive(Debug, Clone)]
pub struct HaproxyAction {
    pub socket: Admin,
    pub backend: String,
    pub server: String,
    pub operation: AdminState,
    /// Per runtime-API command.
    pub timeout: Duration,
    /// This watchdog holds at most this many servers drained (or in maintenance) at once,
    /// across all its haproxy actions; a drain past it is refused and paged.
    pub max_drains: u32,
}

impl HaproxyAction {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const DEFAULT_MAX_DRAINS: u32 = 1;

    pub fn server_name(&self) -> String {
        format!("{}/{}", self.backend, self.server)
    }
}

/// `kind = "restart_drained"`: drain, wait for connections to end, restart, wait until
/// healthy, undrain. One remedy, so a planned restart shows users no errors.
#[derive(Debug, Clone)]
pub struct RestartDrainedAction {
    pub drain_name: String,
    /// The named `haproxy` action (its `operation` is not used: this drains, then readies).
    pub drain: HaproxyAction,
    pub restart_name: String,
    /// A `command` or `signal` action.
    pub restart: Box<ActionSpec>,
    /// How long to wait for the server's connections to end before restarting anyway.
    pub drain_timeout: Duration,
    /// How long to wait for the restarted server to be healthy before giving up (and leaving
    /// it drained, with a page).
    pub healthy_timeout: Duration,
    /// Also required to answer 2xx before undraining (HAProxy's own check must say UP too).
    pub healthy_url: Option<String>,
}

impl RestartDrainedAction {
    pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);
}

/// `kind = "drain_flag"`: create (drain) or remove (ready) a file; the watchdog's `/health`
/// answers 503 while any configured flag file exists.
#[derive(Debug, Clone)]
pub struct DrainFlagAction {
    pub file: PathBuf,
    /// `Drain` creates the file, `Ready` removes it.
    pub operation: AdminState,
}

pub fn check_probe(ctx: &mut Ctx<'_>, p: &raw::Probe) -> Option<HaproxyCheck> {
    let socket = socket(ctx, &p.socket, &p.kind)?;
    let Some(backend) = &p.backend else {
        ctx.error(
            p.kind.span().start,
            "a haproxy probe needs `backend` (the backend's name in HAProxy)",
        );
        return None;
    };
    let mut ok = true;
    let min_ready = match &p.min_ready {
        Some(n) => match u32::try_from(*n.get_ref()) {
            Ok(v) if v >= 1 => Some(v),
            _ => {
                ctx.error(
                    n.span().start,
                    format!("`min_ready` must be at least 1 (got {})", n.get_ref()),
                );
                ok = false;
                None
            }
        },
        None => None,
    };
    let min_ready_ratio = match &p.min_ready_ratio {
        Some(r) if *r.get_ref() > 0.0 && *r.get_ref() <= 1.0 => Some(*r.get_ref()),
        Some(r) => {
            ctx.error(
                r.span().start,
                format!(
                    "`min_ready_ratio` is a share of the backend's servers: above 0, at most 1 (got {})",
                    r.get_ref()
                ),
            );
            ok = false;
            None
        }
        None => None,
    };
    if ok && min_ready.is_none() && min_ready_ratio.is_none() {
        ctx.error(
            p.kind.span().start,
            "a haproxy probe needs `min_ready` (a count) or `min_ready_ratio` (e.g. 0.75), or both",
        );
        return None;
    }
    ok.then(|| HaproxyCheck {
        socket,
        backend: backend.get_ref().clone(),
        min_ready,
        min_ready_ratio,
    })
}

fn socket(ctx: &mut Ctx<'_>, socket: &Option<raw::Text>, kind: &raw::Text) -> Option<Admin> {
    let Some(text) = socket else {
        ctx.error(
            kind.span().start,
            format!(
                "kind \"{}\" needs `socket`: HAProxy's admin socket, a path or host:port",
                kind.get_ref()
            ),
        );
        return None;
    };
    match Admin::parse(text.get_ref()) {
        Ok(a) => Some(a),
        Err(e) => {
            ctx.error(text.span().start, format!("`socket`: {e}"));
            None
        }
    }
}

fn operation(ctx: &mut Ctx<'_>, op: &Option<raw::Text>, kind: &raw::Text) -> Option<AdminState> {
    let Some(op) = op else {
        ctx.error(
            kind.span().start,
            format!(
                "kind \"{}\" needs `operation`: \"drain\", \"maint\" or \"ready\"",
                kind.get_ref()
            ),
        );
        return None;
    };
    match op.get_ref().as_str() {
        "drain" => Some(AdminState::Drain),
        "maint" => Some(AdminState::Maint),
        "ready" | "undrain" => Some(AdminState::Ready),
        other => {
            let hint = super::load::closest(other, &["drain", "maint", "ready"])
                .map(|s| format!(" (did you mean \"{s}\"?)"))
                .unwrap_or_default();
            ctx.error(
                op.span().start,
                format!(
                    "`operation` \"{other}\"{hint} is not one of \"drain\", \"maint\", \"ready\""
                ),
            );
            None
        }
    }
}

/// Keys of the HAProxy action kinds, for rejecting them on other kinds.
pub fn action_keys(a: &raw::Action) -> [(&'static str, Option<usize>); 9] {
    [
        ("socket", at(&a.socket)),
        ("server", at(&a.server)),
        ("operation", at(&a.operation)),
        ("max_drains", at(&a.max_drains)),
        ("drain", at(&a.drain)),
        ("restart", at(&a.restart)),
        ("drain_timeout", at(&a.drain_timeout)),
        ("healthy_timeout", at(&a.healthy_timeout)),
        ("healthy_url", at(&a.healthy_url)),
    ]
}

/// Rejects the HAProxy keys that `kind` does not use (`keep` lists the ones it does).
fn reject_others(ctx: &mut Ctx<'_>, a: &raw::Action, kind: &str, keep: &[&str]) {
    let mut keys: Vec<(&str, Option<usize>)> = action_keys(a)
        .into_iter()
        .filter(|(k, _)| !keep.contains(k))
        .collect();
    if kind != "drain_flag" {
        keys.push(("file", at(&a.file)));
    }
    ctx.not_for_kind(kind, &keys);
}

/// `kind = "haproxy"` actions.
pub fn check_action(ctx: &mut Ctx<'_>, a: &raw::Action) -> Option<HaproxyAction> {
    reject_others(
        ctx,
        a,
        "haproxy",
        &["socket", "server", "operation", "max_drains"],
    );
    let socket = socket(ctx, &a.socket, &a.kind);
    let operation = operation(ctx, &a.operation, &a.kind);
    let timeout = ctx
        .positive_duration("timeout", &a.timeout)
        .unwrap_or(HaproxyAction::DEFAULT_TIMEOUT);
    let server = match &a.server {
        None => {
            ctx.error(
                a.kind.span().start,
                "a haproxy action needs `server = \"BACKEND/SERVER\"` (e.g. \"web/app1\")",
            );
            None
        }
        Some(s) => match s.get_ref().split_once('/') {
            Some((b, srv)) if !b.is_empty() && !srv.is_empty() && !srv.contains('/') => {
                Some((b.to_string(), srv.to_string()))
            }
            _ => {
                ctx.error(
                    s.span().start,
                    format!(
                        "`server` `{}` is not BACKEND/SERVER (e.g. \"web/app1\")",
                        s.get_ref()
                    ),
                );
                None
            }
        },
    };
    let max_drains = match &a.max_drains {
        None => Some(HaproxyAction::DEFAULT_MAX_DRAINS),
        Some(n) => match u32::try_from(*n.get_ref()) {
            Ok(v) if v >= 1 => Some(v),
            _ => {
                ctx.error(
                    n.span().start,
                    format!("`max_drains` must be at least 1 (got {})", n.get_ref()),
                );
                None
            }
        },
    };
    let ((backend, server), socket, operation, max_drains) =
        (server?, socket?, operation?, max_drains?);
    Some(HaproxyAction {
        socket,
        backend,
        server,
        operation,
        timeout,
        max_drains,
    })
}

/// `kind = "drain_flag"` actions.
pub fn check_flag_action(ctx: &mut Ctx<'_>, a: &raw::Action) -> Option<DrainFlagAction> {
    reject_others(ctx, a, "drain_flag", &["operation"]);
    if let Some(t) = &a.timeout {
        ctx.error(
            t.span().start,
            "`timeout` does not apply to kind \"drain_flag\"",
        );
    }
    let operation = match operation(ctx, &a.operation, &a.kind)? {
        AdminState::Maint => {
            ctx.error(
                at(&a.operation).unwrap_or(0),
                "a drain_flag's `operation` is \"drain\" (create the file) or \"ready\" (remove it)",
            );
            return None;
        }
        op => op,
    };
    let Some(file) = &a.file else {
        ctx.error(
            a.kind.span().start,
            "a drain_flag action needs `file` (an absolute path)",
        );
        return None;
    };
    if !file.get_ref().starts_with('/') {
        ctx.error(file.span().start, "`file` must be an absolute path");
        return None;
    }
    Some(DrainFlagAction {
        file: PathBuf::from(file.get_ref()),
        operation,
    })
}

/// `kind = "restart_drained"`: checked in two steps. Here, its own keys, with the drain and
/// restart actions left empty; [`link_restart_drained`] resolves the names once every action is
/// checked.
pub fn check_restart_drained(ctx: &mut Ctx<'_>, a: &raw::Action) -> Option<RestartDrainedAction> {
    reject_others(
        ctx,
        a,
        "restart_drained",
        &[
            "drain",
            "restart",
            "drain_timeout",
            "healthy_timeout",
            "healthy_url",
        ],
    );
    if let Some(t) = &a.timeout {
        ctx.error(
            t.span().start,
            "`timeout` does not apply to kind \"restart_drained\": set `drain_timeout`, `healthy_timeout`, and the timeouts of the drain and restart actions",
        );
    }
    let mut ok = true;
    for (key, value) in [("drain", &a.drain), ("restart", &a.restart)] {
        if value.is_none() {
            ctx.error(
                a.kind.span().start,
                format!("a restart_drained action needs `{key}` (the name of an action)"),
            );
            ok = false;
        }
    }
    let drain_timeout = ctx
        .positive_duration("drain_timeout", &a.drain_timeout)
        .unwrap_or(RestartDrainedAction::DEFAULT_DRAIN_TIMEOUT);
    let healthy_timeout = ctx
        .positive_duration("healthy_timeout", &a.healthy_timeout)
        .unwrap_or(RestartDrainedAction::DEFAULT_HEALTHY_TIMEOUT);
    let healthy_url = match &a.healthy_url {
        Some(u) => match reqwest::Url::parse(u.get_ref()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Some(u.get_ref().clone()),
            _ => {
                ctx.error(
                    u.span().start,
                    format!("`healthy_url` `{}` is not an http(s) URL", u.get_ref()),
                );
                ok = false;
                None
            }
        },
        None => None,
    };
    ok.then(|| RestartDrainedAction {
        drain_name: a
            .drain
            .as_ref()
            .map(|d| d.get_ref().clone())
            .unwrap_or_default(),
        drain: HaproxyAction {
            socket: Admin::Tcp(String::new()),
            backend: String::new(),
            server: String::new(),
            operation: AdminState::Drain,
            timeout: HaproxyAction::DEFAULT_TIMEOUT,
            max_drains: HaproxyAction::DEFAULT_MAX_DRAINS,
        },
        restart_name: a
            .restart
            .as_ref()
            .map(|d| d.get_ref().clone())
            .unwrap_or_default(),
        restart: Box::new(ActionSpec::Command(super::CommandAction {
            steps: Vec::new(),
            timeout: Duration::ZERO,
        })),
        drain_timeout,
        healthy_timeout,
        healthy_url,
    })
}

/// Resolves each restart_drained's `drain` (a haproxy action) and `restart` (a command or
/// signal action), reporting unknown names and wrong kinds where the name is written. An
/// action that cannot be resolved is removed, so no rule can run it half-configured.
pub fn link_restart_drained(
    documents: &[Document],
    actions: &mut CheckedActions<'_>,
    diags: &mut Diagnostics,
) {
    let declared: Vec<&str> = documents
        .iter()
        .flat_map(|d| d.actions.iter().map(|(n, _)| n.get_ref().as_str()))
        .collect();
    for doc in documents {
        for (name, item) in &doc.actions {
            let a = &item.value;
            if a.kind.get_ref() != "restart_drained" {
                continue;
            }
            let mut ctx = Ctx {
                source: &doc.source,
                subject: Some(format!("action \"{}\"", name.get_ref())),
                diags,
            };
            let lookup = |ctx: &mut Ctx<'_>, key: &str, text: &Option<raw::Text>| {
                let text = text.as_ref()?;
                let wanted = text.get_ref();
                match actions.get(wanted) {
                    Some((spec, _, _)) => Some(spec.clone()),
                    // Declared but invalid: its own errors are reported already.
                    None if declared.contains(&wanted.as_str()) => None,
                    None => {
                        let hint = super::load::closest(wanted, &declared)
                            .map(|s| format!(" (did you mean \"{s}\"?)"))
                            .unwrap_or_default();
                        ctx.error(
                            text.span().start,
                            format!("`{key}`: unknown action \"{wanted}\"{hint}"),
                        );
                        None
                    }
                }
            };
            let drain = match lookup(&mut ctx, "drain", &a.drain) {
                Some(ActionSpec::Haproxy(h)) => Some(h),
                Some(other) => {
                    ctx.error(
                        at(&a.drain).unwrap_or(0),
                        format!(
                            "`drain` must name a haproxy action, not a {} action",
                            other.kind()
                        ),
                    );
                    None
                }
                None => None,
            };
            let restart = match lookup(&mut ctx, "restart", &a.restart) {
                Some(spec @ (ActionSpec::Command(_) | ActionSpec::Signal(_))) => Some(spec),
                Some(other) => {
                    ctx.error(
                        at(&a.restart).unwrap_or(0),
                        format!(
                            "`restart` must name a command or signal action, not a {} action",
                            other.kind()
                        ),
                    );
                    None
                }
                None => None,
            };
            match (drain, restart, actions.get_mut(name.get_ref())) {
                (Some(drain), Some(restart), Some((ActionSpec::RestartDrained(r), _, _))) => {
                    r.drain = drain;
                    *r.restart = restart;
                }
                _ => {
                    actions.remove(name.get_ref());
                }
            }
        }
    }
}

//! Checks of `kind = "systemd"` actions: a unit name systemd accepts over D-Bus (which, unlike
//! `systemctl`, adds no `.service` for us), one of the operations, a signal only where it
//! means something, and which bus.

use super::{Ctx, at};
use crate::config::raw;
use crate::config::{SystemdAction, SystemdBus, SystemdOperation};

/// Unit types, as their name suffixes.
const UNIT_SUFFIXES: [&str; 11] = [
    "service",
    "socket",
    "target",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
];

/// The keys only a systemd action takes, for `not_for_kind` of the other kinds. (`operation`
/// is shared with the haproxy kinds, which reject it on every other kind.)
pub(super) fn keys(a: &raw::Action) -> [(&'static str, Option<usize>); 2] {
    [("unit", at(&a.unit)), ("bus", at(&a.bus))]
}

pub(super) fn check(ctx: &mut Ctx<'_>, a: &raw::Action) -> Option<SystemdAction> {
    let timeout = ctx
        .positive_duration("timeout", &a.timeout)
        .unwrap_or(SystemdAction::DEFAULT_TIMEOUT);
    let operation = match &a.operation {
        None => Some(SystemdOperation::Restart),
        Some(op) => {
            let parsed = SystemdOperation::parse(op.get_ref().trim());
            if parsed.is_none() {
                let hint = crate::config::load::closest(op.get_ref(), &SystemdOperation::NAMES)
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_default();
                ctx.error(
                    op.span().start,
                    format!(
                        "unknown `operation` \"{}\"{hint}; one of: {}",
                        op.get_ref(),
                        SystemdOperation::NAMES.join(", ")
                    ),
                );
            }
            parsed
        }
    };
    let signal = match (&a.signal, operation) {
        (None, _) => Some(nix::sys::signal::Signal::SIGTERM),
        (Some(s), Some(SystemdOperation::Kill)) => {
            let name = s.get_ref().trim().to_ascii_uppercase();
            let full = if name.starts_with("SIG") {
                name
            } else {
                format!("SIG{name}")
            };
            let parsed = full.parse::<nix::sys::signal::Signal>().ok();
            if parsed.is_none() {
                ctx.error(
                    s.span().start,
                    format!(
                        "`signal` `{}` is not a signal name (e.g. \"TERM\", \"KILL\", \"HUP\")",
                        s.get_ref()
                    ),
                );
            }
            parsed
        }
        (Some(s), _) => {
            ctx.error(
                s.span().start,
                "`signal` applies only to operation = \"kill\" (restart, stop... use the unit's own KillSignal=)",
            );
            None
        }
    };
    let bus = match &a.bus {
        None => Some(SystemdBus::System),
        Some(b) => match b.get_ref().trim() {
            "system" => Some(SystemdBus::System),
            "user" => Some(SystemdBus::User),
            other => {
                let hint = crate::config::load::closest(other, &["system", "user"])
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_default();
                ctx.error(
                    b.span().start,
                    format!("`bus` \"{other}\" is neither \"system\" nor \"user\"{hint}"),
                );
                None
            }
        },
    };
    let Some(unit) = &a.unit else {
        ctx.error(
            a.kind.span().start,
            "a systemd action needs `unit`, e.g. unit = \"apache2.service\"",
        );
        return None;
    };
    let unit_ok = check_unit_name(ctx, unit);
    Some(SystemdAction {
        unit: unit_ok?,
        operation: operation?,
        signal: signal?,
        bus: bus?,
        timeout,
    })
}

/// systemd's rules for unit names (unit_name_is_valid): at most 255 bytes, a known type
/// suffix, and only ASCII letters, digits and `:-_.\@`.
fn check_unit_name(ctx: &mut Ctx<'_>, unit: &raw::Text) -> Option<String> {
    let name = unit.get_ref();
    let at = unit.span().start;
    let bad_char = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":-_.\\@".contains(*c)));
    if name.is_empty() || name.len() > 255 {
        ctx.error(at, "`unit` must be a unit name of 1 to 255 characters");
        return None;
    }
    if let Some(c) = bad_char {
        ctx.error(
            at,
            format!("`unit` \"{name}\": {c:?} is not allowed in a unit name"),
        );
        return None;
    }
    let suffix = name.rsplit_once('.').map(|(_, s)| s);
    if !suffix.is_some_and(|s| UNIT_SUFFIXES.contains(&s)) {
        ctx.error(
            at,
            format!(
                "`unit` \"{name}\" has no unit type suffix (did you mean \"{name}.service\"?); \
                 D-Bus, unlike systemctl, does not add one"
            ),
        );
        return None;
    }
    Some(name.clone())
}

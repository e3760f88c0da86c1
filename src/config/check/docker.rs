//! Checks of the `docker` probe and action: container references, labels, operations and the
//! socket, every problem reported like the other kinds'.
//!
//! Container names and ids end up in the Engine API's URL paths (`/containers/NAME/restart`),
//! so they are held to Docker's own grammar here: a typo is a config error with its position,
//! not a 404 in the middle of an incident, and no name can smuggle a `?` or a `/` into a URL.

use std::path::PathBuf;

use super::{Ctx, at, raw};
use crate::config::{
    DEFAULT_DOCKER_SOCKET, DockerAction, DockerCheck, DockerOperation, DockerTarget,
};

/// The keys only a docker action has, for the other kinds to reject.
pub(super) fn action_keys(a: &raw::Action) -> [(&'static str, Option<usize>); 4] {
    [
        ("container", at(&a.container)),
        ("label", at(&a.label)),
        ("operation", at(&a.operation)),
        ("socket", at(&a.socket)),
    ]
}

/// Docker's grammar for names (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), which ids (hex) also satisfy.
/// A leading `/` (how the API prints names) is accepted.
fn container_ref_problem(name: &str) -> Option<String> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let mut chars = bare.chars();
    match chars.next() {
        None => Some("`container` is empty".into()),
        Some(c) if !c.is_ascii_alphanumeric() => Some(format!(
            "`container` `{name}` is not a container name or id (it must start with a letter or digit)"
        )),
        _ if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) => {
            Some(format!(
                "`container` `{name}` is not a container name or id (letters, digits, `_`, `.`, `-`)"
            ))
        }
        _ => None,
    }
}

/// `key=value` or `key`, as `docker ps --filter label=...` takes them.
fn label_problem(label: &str) -> Option<String> {
    let key = label.split_once('=').map_or(label, |(k, _)| k);
    if key.trim().is_empty() || key.chars().any(char::is_whitespace) {
        Some(format!(
            "`label` `{label}` is not a label filter; write \"key=value\" or \"key\" (e.g. \"com.example.role=web\")"
        ))
    } else {
        None
    }
}

fn socket(ctx: &mut Ctx<'_>, text: &Option<raw::Text>) -> Option<PathBuf> {
    let Some(t) = text else {
        return Some(PathBuf::from(DEFAULT_DOCKER_SOCKET));
    };
    // `unix:///var/run/docker.sock`, as DOCKER_HOST writes it, is the same path.
    let path = t.get_ref().strip_prefix("unix://").unwrap_or(t.get_ref());
    if !path.starts_with('/') {
        ctx.error(
            t.span().start,
            format!(
                "`socket` `{}` must be an absolute path to the Docker Engine's unix socket (e.g. \"/var/run/docker.sock\")",
                t.get_ref()
            ),
        );
        return None;
    }
    let path = PathBuf::from(path);
    if !path.exists() {
        ctx.warn(
            t.span().start,
            format!("`socket` {} does not exist on this machine", path.display()),
        );
    }
    Some(path)
}

pub(super) fn check_probe(ctx: &mut Ctx<'_>, p: &raw::Probe) -> Option<DockerCheck> {
    let socket = socket(ctx, &p.socket);
    let Some(container) = &p.container else {
        ctx.error(
            p.kind.span().start,
            "a docker probe needs `container` (a container name or id)",
        );
        return None;
    };
    if let Some(problem) = container_ref_problem(container.get_ref()) {
        ctx.error(container.span().start, problem);
        return None;
    }
    Some(DockerCheck {
        socket: socket?,
        container: container.get_ref().clone(),
    })
}

pub(super) fn check_action(ctx: &mut Ctx<'_>, a: &raw::Action) -> Option<DockerAction> {
    let mut ok = true;
    let socket = socket(ctx, &a.socket);
    let target = match (&a.container, &a.label) {
        (Some(c), None) => match container_ref_problem(c.get_ref()) {
            None => Some(DockerTarget::Container(c.get_ref().clone())),
            Some(problem) => {
                ctx.error(c.span().start, problem);
                None
            }
        },
        (None, Some(l)) => match label_problem(l.get_ref()) {
            None => Some(DockerTarget::Label(l.get_ref().clone())),
            Some(problem) => {
                ctx.error(l.span().start, problem);
                None
            }
        },
        (Some(_), Some(l)) => {
            ctx.error(
                l.span().start,
                "give either `container` or `label`, not both",
            );
            None
        }
        (None, None) => {
            ctx.error(
                a.kind.span().start,
                "a docker action needs `container` (a name or id) or `label` (\"key=value\": every matching container)",
            );
            None
        }
    };
    let operation = match &a.operation {
        None => {
            ctx.error(
                a.kind.span().start,
                format!(
                    "a docker action needs `operation`: one of {}",
                    DockerOperation::NAMES.join(", ")
                ),
            );
            None
        }
        Some(op) => match DockerOperation::parse(op.get_ref().trim()) {
            Some(o) => Some(o),
            None => {
                let hint = crate::config::load::closest(op.get_ref(), &DockerOperation::NAMES)
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_default();
                ctx.error(
                    op.span().start,
                    format!(
                        "`operation` \"{}\" is not one of {}{hint}",
                        op.get_ref(),
                        DockerOperation::NAMES.join(", ")
                    ),
                );
                None
            }
        },
    };
    let signal = match (&a.signal, operation) {
        (None, _) => None,
        (Some(s), Some(DockerOperation::Kill)) => {
            let name = s.get_ref().trim().to_ascii_uppercase();
            let full = if name.starts_with("SIG") {
                name
            } else {
                format!("SIG{name}")
            };
            if full.parse::<nix::sys::signal::Signal>().is_ok() {
                Some(full)
            } else {
                ctx.error(
                    s.span().start,
                    format!(
                        "`signal` `{}` is not a signal name (e.g. \"KILL\", \"TERM\", \"HUP\")",
                        s.get_ref()
                    ),
                );
                ok = false;
                None
            }
        }
        (Some(s), Some(_)) => {
            ctx.error(
                s.span().start,
                "`signal` applies to operation \"kill\"; restart and stop send the container's own stop signal (its STOPSIGNAL)",
            );
            ok = false;
            None
        }
        (Some(_), None) => None,
    };
    let kill_after = match (ctx.duration("kill_after", &a.kill_after), operation) {
        (Some(d), Some(DockerOperation::Restart | DockerOperation::Stop)) => Some(d),
        (Some(_), Some(op)) => {
            ctx.error(
                at(&a.kill_after).unwrap_or(0),
                format!(
                    "`kill_after` applies to operations \"restart\" and \"stop\", not \"{op}\""
                ),
            );
            ok = false;
            None
        }
        (d, _) => d,
    };
    if kill_after.is_some_and(|d| d.subsec_nanos() != 0) {
        ctx.error(
            at(&a.kill_after).unwrap_or(0),
            "`kill_after`: Docker counts it in whole seconds (e.g. \"10s\")",
        );
        ok = false;
    }
    let timeout = ctx
        .positive_duration("timeout", &a.timeout)
        .unwrap_or(DockerAction::DEFAULT_TIMEOUT);
    if let Some(k) = kill_after
        && k >= timeout
    {
        ctx.error(
            at(&a.timeout).or(at(&a.kill_after)).unwrap_or(0),
            format!(
                "`timeout` ({}) must be longer than `kill_after` ({}): the restart would be abandoned before Docker kills the container",
                humantime::format_duration(timeout),
                humantime::format_duration(k)
            ),
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    Some(DockerAction {
        socket: socket?,
        target: target?,
        operation: operation?,
        signal,
        kill_after,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_references() {
        for good in ["app", "/app", "web_1", "my-app.prod", "3f2a1b9c", "A1"] {
            assert_eq!(container_ref_problem(good), None, "{good}");
        }
        for bad in [
            "", "/", "-app", "app?x=1", "a/b", "app name", "_app", "ap%70",
        ] {
            assert!(container_ref_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn label_filters() {
        assert_eq!(label_problem("com.example.role=web"), None);
        assert_eq!(label_problem("com.example.watched"), None);
        assert_eq!(label_problem("k="), None);
        assert!(label_problem("=web").is_some());
        assert!(label_problem("").is_some());
        assert!(label_problem("a b=c").is_some());
    }
}

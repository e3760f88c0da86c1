//! Checks of the pager kinds (`alertmanager`, `pagerduty`, `email`, and the extras of
//! `webhook`): the keys each kind takes, their values, and the paging options (reminders,
//! digests) where they make sense. Like the rest of `check`, every problem is reported.

use std::path::PathBuf;
use std::time::Duration;

use super::{Ctx, at, warn_unresolvable};
use crate::config::raw::{self, Text};
use crate::config::{
    ActionSpec, AlertmanagerAction, EmailAction, PagerDutyAction, Paging, SecretRef, SmtpTls,
    WebhookAction, WebhookFormat,
};

/// Keys only pagers take, with the kinds that take each. A key set on a kind not listed is
/// an error (`does not apply to kind ...`).
fn pager_keys(a: &raw::Action) -> [(&'static str, &'static [&'static str], Option<usize>); 14] {
    const WEBHOOK: &[&str] = &["webhook"];
    const HUMAN: &[&str] = &["webhook", "email"];
    const AM_PD: &[&str] = &["alertmanager", "pagerduty"];
    const AM: &[&str] = &["alertmanager"];
    const PD: &[&str] = &["pagerduty"];
    const EMAIL: &[&str] = &["email"];
    // `server` is also HAProxy's (`"web/app1"`): one raw field; the haproxy kinds check it.
    [
        ("format", WEBHOOK, at(&a.format)),
        ("remind_every", HUMAN, at(&a.remind_every)),
        ("digest_window", HUMAN, at(&a.digest_window)),
        ("severity", AM_PD, at(&a.severity)),
        ("refresh_every", AM, at(&a.refresh_every)),
        ("runbook", AM, at(&a.runbook)),
        ("generator_url", AM, at(&a.generator_url)),
        ("routing_key", PD, at(&a.routing_key)),
        // `server` of other kinds: rejected with the haproxy keys (see `check_action`).
        ("tls", EMAIL, at(&a.tls)),
        ("user", EMAIL, at(&a.user)),
        ("password", EMAIL, at(&a.password)),
        ("ca_file", EMAIL, at(&a.ca_file)),
        ("from", EMAIL, at(&a.from)),
        ("to", EMAIL, at(&a.to)),
    ]
}

/// Reports the pager keys that `kind` does not take, with a word on why for the paging options
/// Alertmanager and PagerDuty do themselves.
pub(super) fn reject_foreign_keys(ctx: &mut Ctx<'_>, kind: &str, a: &raw::Action) {
    for (key, kinds, at) in pager_keys(a) {
        let Some(at) = at else { continue };
        if kinds.contains(&kind) {
            continue;
        }
        let why = match (key, kind) {
            ("remind_every", "alertmanager") => {
                ": Alertmanager repeats notifications itself (its route's `repeat_interval`)"
            }
            ("remind_every", "pagerduty") => {
                ": PagerDuty re-notifies through its escalation policy, and drops a re-trigger with the same dedup_key"
            }
            ("digest_window", "alertmanager") => {
                ": Alertmanager groups alerts itself (its route's `group_by` and `group_wait`)"
            }
            ("digest_window", "pagerduty") => {
                ": each incident needs its own dedup_key to be resolved; PagerDuty groups alerts itself"
            }
            _ => "",
        };
        ctx.error(
            at,
            format!("`{key}` does not apply to kind \"{kind}\"{why}"),
        );
    }
}

fn paging(ctx: &mut Ctx<'_>, a: &raw::Action) -> Paging {
    Paging {
        remind_every: ctx.positive_duration("remind_every", &a.remind_every),
        digest_window: ctx.positive_duration("digest_window", &a.digest_window),
    }
}

/// `format` and the paging options of a webhook, after the keys of the other pager kinds are
/// rejected. A JSON webhook takes no digest: its contract is one page per body.
pub(super) fn webhook_extras(ctx: &mut Ctx<'_>, a: &raw::Action) -> (WebhookFormat, Paging) {
    reject_foreign_keys(ctx, "webhook", a);
    let format = match a.format.as_ref().map(|f| (f, f.get_ref().as_str())) {
        None | Some((_, "json")) => WebhookFormat::Json,
        Some((_, "slack")) => WebhookFormat::Slack,
        Some((f, other)) => {
            ctx.error(
                f.span().start,
                format!("`format` \"{other}\" is not known; write \"json\" (the documented page) or \"slack\" ({{\"text\": ...}})"),
            );
            WebhookFormat::Json
        }
    };
    let paging = paging(ctx, a);
    if let (Some(_), WebhookFormat::Json) = (paging.digest_window, format) {
        ctx.error(
            at(&a.digest_window).unwrap_or(0),
            "`digest_window` needs `format = \"slack\"`: a JSON webhook's contract is one page per body",
        );
    }
    (format, paging)
}

fn http_url(ctx: &mut Ctx<'_>, url: Option<&Text>, default: Option<&str>) -> Option<String> {
    // Missing and required is reported by the caller, at the item.
    let Some(url) = url else {
        return default.map(str::to_string);
    };
    match reqwest::Url::parse(url.get_ref()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Some(url.get_ref().clone()),
        _ => {
            ctx.error(
                url.span().start,
                format!("`url` `{}` is not an http(s) URL", url.get_ref()),
            );
            None
        }
    }
}

fn secret(ctx: &mut Ctx<'_>, key: &str, text: Option<&Text>) -> Option<SecretRef> {
    let t = text?;
    match SecretRef::parse(t.get_ref()) {
        Ok(s) => {
            warn_unresolvable(ctx, t.span().start, &s);
            Some(s)
        }
        Err(e) => {
            ctx.error(t.span().start, format!("`{key}`: {e}"));
            None
        }
    }
}

fn nonempty(ctx: &mut Ctx<'_>, key: &str, text: Option<&Text>) -> Option<String> {
    let t = text?;
    if t.get_ref().trim().is_empty() {
        ctx.error(t.span().start, format!("`{key}` must not be empty"));
        return None;
    }
    Some(t.get_ref().clone())
}

/// `kind` is `alertmanager`, `pagerduty` or `email`; `a.kind`'s position stands for the item
/// when a required key is missing.
pub(super) fn check(ctx: &mut Ctx<'_>, kind: &str, a: &raw::Action) -> Option<ActionSpec> {
    reject_foreign_keys(ctx, kind, a);
    let item = a.kind.span().start;
    let article = if kind == "alertmanager" || kind == "email" {
        "an"
    } else {
        "a"
    };
    let missing = |ctx: &mut Ctx<'_>, key: &str, hint: &str| {
        ctx.error(item, format!("{article} {kind} action needs `{key}`{hint}"));
    };
    match kind {
        "alertmanager" => {
            let timeout = ctx
                .positive_duration("timeout", &a.timeout)
                .unwrap_or(WebhookAction::DEFAULT_TIMEOUT);
            let refresh_every = ctx
                .positive_duration("refresh_every", &a.refresh_every)
                .unwrap_or(AlertmanagerAction::DEFAULT_REFRESH);
            if refresh_every >= Duration::from_secs(300) {
                ctx.warn(
                    at(&a.refresh_every).unwrap_or(item),
                    "`refresh_every` should be well under Alertmanager's `resolve_timeout` (5m by default), or it resolves alerts that still fire",
                );
            }
            let generator_url = nonempty(ctx, "generator_url", a.generator_url.as_ref());
            if let (Some(g), Some(t)) = (&generator_url, &a.generator_url)
                && reqwest::Url::parse(g).is_err()
            {
                ctx.error(
                    t.span().start,
                    format!("`generator_url` `{g}` is not a URL"),
                );
            }
            if a.url.is_none() {
                missing(
                    ctx,
                    "url",
                    " (Alertmanager's base URL, e.g. \"http://127.0.0.1:9093\")",
                );
                return None;
            }
            let url = http_url(ctx, a.url.as_ref(), None)?;
            Some(ActionSpec::Alertmanager(AlertmanagerAction {
                url,
                refresh_every,
                severity: nonempty(ctx, "severity", a.severity.as_ref())
                    .unwrap_or_else(|| "critical".into()),
                runbook: nonempty(ctx, "runbook", a.runbook.as_ref()),
                generator_url,
                timeout,
            }))
        }
        "pagerduty" => {
            let timeout = ctx
                .positive_duration("timeout", &a.timeout)
                .unwrap_or(WebhookAction::DEFAULT_TIMEOUT);
            let severity = match &a.severity {
                None => "critical".to_string(),
                Some(s) if PagerDutyAction::SEVERITIES.contains(&s.get_ref().as_str()) => {
                    s.get_ref().clone()
                }
                Some(s) => {
                    ctx.error(
                        s.span().start,
                        format!(
                            "`severity` \"{}\" is not one PagerDuty accepts: {}",
                            s.get_ref(),
                            PagerDutyAction::SEVERITIES.join(", ")
                        ),
                    );
                    return None;
                }
            };
            let url = http_url(ctx, a.url.as_ref(), Some(PagerDutyAction::DEFAULT_URL));
            if a.routing_key.is_none() {
                missing(
                    ctx,
                    "routing_key",
                    " (the integration key, as `env:NAME` or `file:/path`)",
                );
                return None;
            }
            let routing_key = secret(ctx, "routing_key", a.routing_key.as_ref())?;
            Some(ActionSpec::PagerDuty(PagerDutyAction {
                url: url?,
                routing_key,
                severity,
                timeout,
            }))
        }
        "email" => {
            if a.url.is_some() || a.token.is_some() {
                let at = at(&a.url).or(at(&a.token)).unwrap_or(item);
                ctx.error(at, "`url` and `token` do not apply to kind \"email\"; give `server`, `user` and `password`");
            }
            let timeout = ctx
                .positive_duration("timeout", &a.timeout)
                .unwrap_or(EmailAction::DEFAULT_TIMEOUT);
            let paging = paging(ctx, a);
            let tls = match a.tls.as_ref().map(|t| (t, t.get_ref().as_str())) {
                None | Some((_, "starttls")) => SmtpTls::Starttls,
                Some((_, "tls")) => SmtpTls::Tls,
                Some((_, "none")) => SmtpTls::None,
                Some((t, other)) => {
                    ctx.error(t.span().start, format!("`tls` \"{other}\" is not known; write \"starttls\" (the default, port 587), \"tls\" (port 465) or \"none\" (port 25, a local relay)"));
                    SmtpTls::Starttls
                }
            };
            let server = match &a.server {
                None => {
                    missing(ctx, "server", " (\"host\" or \"host:port\")");
                    None
                }
                Some(s) => match parse_server(s.get_ref(), tls) {
                    Ok(hp) => Some(hp),
                    Err(e) => {
                        ctx.error(s.span().start, format!("`server`: {e}"));
                        None
                    }
                },
            };
            let user = nonempty(ctx, "user", a.user.as_ref());
            let password = secret(ctx, "password", a.password.as_ref());
            match (&a.user, &a.password) {
                (Some(u), None) => ctx.error(u.span().start, "`user` needs `password`"),
                (None, Some(p)) => ctx.error(p.span().start, "`password` needs `user`"),
                _ => {}
            }
            if let (Some(_), SmtpTls::None, Some(u)) = (&user, tls, &a.user) {
                ctx.warn(
                    u.span().start,
                    "the password goes over SMTP in clear text (`tls = \"none\"`)",
                );
            }
            let ca_file = a.ca_file.as_ref().map(|c| PathBuf::from(c.get_ref()));
            if let (Some(path), Some(t)) = (&ca_file, &a.ca_file) {
                if tls == SmtpTls::None {
                    ctx.error(
                        t.span().start,
                        "`ca_file` needs `tls = \"starttls\"` or \"tls\"",
                    );
                } else if !path.is_file() {
                    ctx.warn(
                        t.span().start,
                        format!("`ca_file` {} is not a file on this machine", path.display()),
                    );
                }
            }
            let from = check_address(ctx, "from", a.from.as_ref());
            if a.from.is_none() {
                missing(ctx, "from", "");
            }
            let to: Vec<String> = match &a.to {
                None => {
                    missing(ctx, "to", " ([\"oncall@example.com\", ...])");
                    vec![]
                }
                Some(list) if list.get_ref().is_empty() => {
                    ctx.error(
                        list.span().start,
                        "`to` is empty: name at least one address",
                    );
                    vec![]
                }
                Some(list) => list
                    .get_ref()
                    .iter()
                    .filter_map(|t| check_address(ctx, "to", Some(t)))
                    .collect(),
            };
            let ok_to =
                a.to.as_ref()
                    .is_some_and(|l| to.len() == l.get_ref().len() && !to.is_empty());
            let (host, port) = server?;
            if !ok_to || (a.user.is_some() != a.password.is_some()) {
                return None;
            }
            Some(ActionSpec::Email(EmailAction {
                host,
                port,
                tls,
                user,
                password,
                ca_file,
                from: from?,
                to,
                timeout,
                paging,
            }))
        }
        _ => None,
    }
}

fn check_address(ctx: &mut Ctx<'_>, key: &str, text: Option<&Text>) -> Option<String> {
    let t = text?;
    match t.get_ref().parse::<lettre::message::Mailbox>() {
        Ok(_) => Some(t.get_ref().clone()),
        Err(e) => {
            ctx.error(
                t.span().start,
                format!("`{key}`: `{}` is not a mail address ({e})", t.get_ref()),
            );
            None
        }
    }
}

/// `"host"` or `"host:port"` (the port defaults by `tls`).
fn parse_server(text: &str, tls: SmtpTls) -> Result<(String, u16), String> {
    let text = text.trim();
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (
            h,
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("`{p}` is not a port"))?,
        ),
        _ => (text, tls.default_port()),
    };
    if host.is_empty() || host.contains(['/', ' ']) {
        return Err(format!(
            "`{text}` is not a host name; write \"smtp.example.com\" or \"smtp.example.com:587\""
        ));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_with_and_without_port() {
        assert_eq!(
            parse_server("mail.example.com", SmtpTls::Starttls),
            Ok(("mail.example.com".into(), 587))
        );
        assert_eq!(
            parse_server("127.0.0.1:2525", SmtpTls::None),
            Ok(("127.0.0.1".into(), 2525))
        );
        assert!(parse_server("mail:0", SmtpTls::Tls).is_err());
        assert!(parse_server("smtp://mail", SmtpTls::Tls).is_err());
    }
}

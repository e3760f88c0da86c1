//! The config as written: serde types that mirror the TOML one to one.
//!
//! Every struct denies unknown fields. Values that need checking beyond their TOML type
//! (durations, counts, kinds, URLs) stay as `Spanned` text or numbers here, so that the checker
//! (`super::check`) can report *every* bad value with its position instead of serde stopping at
//! the first. Nothing here is used at run time: `super::check` builds the typed config.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub type Text = Spanned<String>;
pub type Count = Spanned<i64>;

/// `[watchdog]`: settings of the daemon itself. Only in the main file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Watchdog {
    pub state_dir: Option<Text>,
    pub dry_run: Option<bool>,
    /// Globs, relative to the main file's directory: `["conf.d/*.toml"]`.
    pub include: Option<Vec<Text>>,
    pub max_in_flight: Option<Count>,
    /// Probes start on a grid of this step (`"0s"`: anywhere in their interval).
    pub start_grid: Option<Text>,
    /// The name pages and env vars give this host; defaults to the kernel's hostname.
    pub hostname: Option<Text>,
    /// The status API's unix socket (default: `state_dir/watchdog.sock`).
    pub api_socket: Option<Text>,
    /// Also serve the API on TCP, e.g. "127.0.0.1:9810" (for Prometheus).
    pub api_listen: Option<Text>,
    /// Bearer token required on the TCP API (`env:`/`file:`).
    pub api_token: Option<Text>,
}

/// `[defaults]`: the probe settings every probe inherits unless it sets its own.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    pub interval: Option<Text>,
    pub timeout: Option<Text>,
    pub fail_after: Option<Count>,
    pub recover_after: Option<Count>,
    /// `"3 of 5"`: down when 3 of the last 5 checks failed.
    pub window: Option<Text>,
    pub startup_grace: Option<Text>,
    pub restart_grace: Option<Text>,
}

/// One `[[probe]]`. A flat struct rather than a serde-tagged enum: a tagged enum buffers its
/// content and loses the positions we report errors at. `super::check` turns it into the closed
/// enum [`super::CheckSpec`] and rejects fields that do not belong to the kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub name: Text,
    pub kind: Text,

    // Timing overrides (same meaning as in [defaults]).
    pub interval: Option<Text>,
    pub timeout: Option<Text>,
    pub fail_after: Option<Count>,
    pub recover_after: Option<Count>,
    pub window: Option<Text>,
    pub startup_grace: Option<Text>,
    pub restart_grace: Option<Text>,

    /// Probes whose outage holds this probe's rules back.
    pub depends_on: Option<Spanned<Vec<Text>>>,

    // http
    pub url: Option<Text>,
    pub method: Option<Text>,
    pub expect_status: Option<Spanned<StatusSpec>>,
    pub max_latency: Option<Text>,
    pub body_contains: Option<Text>,
    pub body_matches: Option<Text>,
    pub headers: Option<Spanned<BTreeMap<String, String>>>,
    pub host: Option<Text>,
    pub basic_auth_user: Option<Text>,
    pub basic_auth_password: Option<Text>,
    pub insecure_tls: Option<Spanned<bool>>,
    pub max_body: Option<Text>,

    // tcp
    pub address: Option<Text>,
    pub send: Option<Text>,
    pub expect: Option<Text>,

    // syn_backlog
    pub port: Option<Count>,
    pub bind: Option<Text>,
    pub netns: Option<Text>,
    pub max_accept_queue: Option<Spanned<Amount>>,
    pub max_syn_recv: Option<Count>,
    pub max_overflows_per_s: Option<Spanned<f64>>,

    // process
    pub pidfile: Option<Text>,
    pub exe: Option<Text>,
    pub process_name: Option<Text>,
    pub cmdline: Option<Text>,
    pub unit: Option<Text>,
    pub min_children: Option<Count>,
    pub max_children: Option<Count>,
    pub max_rss: Option<Text>,
    pub max_cpu: Option<Text>,
    pub max_fds: Option<Count>,
    pub min_uptime: Option<Text>,

    // memory
    pub cgroup: Option<Text>,
    pub max_psi_some_avg10: Option<Spanned<f64>>,
    pub max_psi_full_avg10: Option<Spanned<f64>>,
    pub min_available: Option<Text>,
    pub max_swap_used: Option<Text>,
    pub oom_kills: Option<Spanned<bool>>,
    pub psi_trigger: Option<Text>,

    // haproxy (`socket` is docker's too)
    pub socket: Option<Text>,
    pub backend: Option<Text>,
    pub min_ready: Option<Count>,
    pub min_ready_ratio: Option<Spanned<f64>>,

    // docker (and `socket`)
    pub container: Option<Text>,
}

/// A count or a percentage: `4` or `"80%"`.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum Amount {
    Count(i64),
    Text(String),
}

/// `expect_status = 200`, `"200-399"`, or `"200,204,300-399"`.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum StatusSpec {
    One(i64),
    Ranges(String),
}

/// One `[[rule]]`: `do` (every action each time) or `escalate` (the next step each time).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub probe: Text,
    pub when: Text,
    #[serde(rename = "do")]
    pub actions: Option<Spanned<Vec<Text>>>,
    pub escalate: Option<Spanned<Vec<Spanned<Step>>>>,
    pub budget: Option<Text>,
    /// First delay between remedies, doubling: `"10s"`.
    pub backoff: Option<Text>,
    pub backoff_max: Option<Text>,
    /// How long the probe must stay up between incidents for the delays to start over.
    pub backoff_reset: Option<Text>,
}

/// One step of a ladder: an action, or several run together.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum Step {
    One(String),
    Together(Vec<String>),
}

/// One `[action.NAME]`; like [`Probe`], flat and checked per kind later.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub kind: Text,
    pub timeout: Option<Text>,

    // command: `command`, or monit-style `stop` then `start`
    pub command: Option<Spanned<Vec<Text>>>,
    pub stop: Option<Spanned<Vec<Text>>>,

    // signal (and `start` for command)
    pub pidfile: Option<Text>,
    pub signal: Option<Text>,
    pub kill_after: Option<Text>,
    pub start: Option<Spanned<Vec<Text>>>,

    // webhook
    pub url: Option<Text>,
    pub token: Option<Text>,
    /// `"json"` (default) or `"slack"`.
    pub format: Option<Text>,

    // every pager (checked per kind in `super::check::pagers`)
    pub remind_every: Option<Text>,
    pub digest_window: Option<Text>,
    // alertmanager and pagerduty (`url` too)
    pub severity: Option<Text>,
    pub refresh_every: Option<Text>,
    pub runbook: Option<Text>,
    pub generator_url: Option<Text>,
    pub routing_key: Option<Text>,
    // email
    // `server` ("host:port") is shared with haproxy's ("web/app1"): below
    pub tls: Option<Text>,
    pub user: Option<Text>,
    pub password: Option<Text>,
    pub ca_file: Option<Text>,
    pub from: Option<Text>,
    pub to: Option<Spanned<Vec<Text>>>,

    // haproxy: `socket`, `server`, `operation`, `max_drains`
    pub socket: Option<Text>,
    pub server: Option<Text>,
    pub operation: Option<Text>,
    pub max_drains: Option<Count>,
    // restart_drained
    pub drain: Option<Text>,
    pub restart: Option<Text>,
    pub drain_timeout: Option<Text>,
    pub healthy_timeout: Option<Text>,
    pub healthy_url: Option<Text>,
    // drain_flag (and `operation`)
    pub file: Option<Text>,

    // signal: the whole process group, not just the pidfile's process
    pub process_group: Option<Spanned<bool>>,

    // systemd (and `signal` for operation = "kill"; `operation` is shared with haproxy's)
    pub unit: Option<Text>,
    pub bus: Option<Text>,

    // docker (and `socket`, `operation`; `signal` and `kill_after` as for the signal kind)
    pub container: Option<Text>,
    pub label: Option<Text>,
}

//! Configuration: TOML files in, a checked [`Config`] (or every problem with it) out.
//!
//! - `raw`: serde types mirroring the TOML as written, with positions;
//! - `load`: reads the main file and its includes, and deserializes item by item so one bad
//!   probe does not hide the problems of the next;
//! - `check`: semantic checks (durations, thresholds, references between rules, probes and
//!   actions) that build the typed config below;
//! - `diagnostic`: `file:line:col: probe "name": message`, errors and warnings apart;
//! - `secret`: `env:`/`file:` references, so tokens never sit in config files or logs.
//!
//! The typed config is plain data; runtime objects (HTTP clients, pagers) are built from it by
//! `crate::probe` and `crate::action`.

mod check;
pub mod diagnostic;
mod haproxy;
mod load;
pub mod pagers;
pub mod raw;
pub mod secret;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use diagnostic::{Diagnostic, Diagnostics, Severity};
pub use haproxy::{DrainFlagAction, HaproxyAction, HaproxyCheck, RestartDrainedAction};
pub use load::load;
pub use pagers::{
    AlertmanagerAction, EmailAction, PagerDutyAction, Paging, SmtpTls, WebhookFormat,
};
pub use secret::SecretRef;

use crate::rules::{ProbeRules, Role};

/// Exit code for a bad config (sysexits.h `EX_CONFIG`).
pub const EX_CONFIG: i32 = 78;

/// A checked configuration, ready to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The main file first, then the included files in the order they were read.
    pub files: Vec<PathBuf>,
    pub watchdog: WatchdogSettings,
    pub probes: Vec<ProbeSpec>,
    pub actions: BTreeMap<String, ActionSpec>,
    /// Probe name -> index in `probes`: the daemon looks a probe up at every check.
    by_name: std::collections::HashMap<String, usize>,
}

impl Config {
    pub fn new(
        files: Vec<PathBuf>,
        watchdog: WatchdogSettings,
        probes: Vec<ProbeSpec>,
        actions: BTreeMap<String, ActionSpec>,
    ) -> Config {
        let by_name = probes
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        Config {
            files,
            watchdog,
            probes,
            actions,
            by_name,
        }
    }

    pub fn probe(&self, name: &str) -> Option<&ProbeSpec> {
        self.by_name.get(name).map(|&i| &self.probes[i])
    }
}

#[derive(Debug, Clone)]
pub struct WatchdogSettings {
    pub state_dir: PathBuf,
    pub dry_run: bool,
    /// At most this many checks run at once, whatever the number of probes.
    pub max_in_flight: usize,
    /// Probes start on a grid of this step, so that those sharing a slot run in one wake-up
    /// of the process; zero: anywhere in their interval.
    pub start_grid: Duration,
    pub hostname: String,
    /// The status API's unix socket.
    pub api_socket: PathBuf,
    pub api_listen: Option<std::net::SocketAddr>,
    pub api_token: Option<SecretRef>,
}

impl WatchdogSettings {
    pub const DEFAULT_STATE_DIR: &str = "/var/lib/uptime-watchdog";
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
    pub const DEFAULT_START_GRID: Duration = Duration::from_millis(250);
}

/// One probe: what to check, how often, and what its rules do.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub name: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub check: CheckSpec,
    /// Health policy and rules, for the pure engine.
    pub rules: ProbeRules,
}

/// The probe kinds: a closed enum, so adding one makes the compiler list every place to update.
#[derive(Debug, Clone)]
pub enum CheckSpec {
    Http(HttpCheck),
    Tcp(TcpCheck),
    SynBacklog(BacklogCheck),
    Process(ProcessCheck),
    Memory(MemoryCheck),
    Haproxy(HaproxyCheck),
    Docker(DockerCheck),
}

impl CheckSpec {
    pub const KINDS: [&str; 7] = [
        "http",
        "tcp",
        "syn_backlog",
        "process",
        "memory",
        "haproxy",
        "docker",
    ];

    pub fn kind(&self) -> &'static str {
        match self {
            CheckSpec::Http(_) => "http",
            CheckSpec::Tcp(_) => "tcp",
            CheckSpec::SynBacklog(_) => "syn_backlog",
            CheckSpec::Process(_) => "process",
            CheckSpec::Memory(_) => "memory",
            CheckSpec::Haproxy(_) => "haproxy",
            CheckSpec::Docker(_) => "docker",
        }
    }
}

/// A limit given as a number or as a share of a maximum: `4` or `"80%"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    Absolute(u64),
    /// 0.0 ..= 100.0
    Percent(f64),
}

impl Limit {
    /// Parses `"80%"`, `"12.5%"`, or a size with `parse_bytes` semantics (`"500MiB"`, `"1024"`).
    pub fn parse(
        text: &str,
        parse_absolute: impl Fn(&str) -> Option<u64>,
    ) -> Result<Limit, String> {
        let t = text.trim();
        if let Some(p) = t.strip_suffix('%') {
            return match p.trim().parse::<f64>() {
                Ok(v) if (0.0..=100.0).contains(&v) => Ok(Limit::Percent(v)),
                _ => Err(format!("`{t}` is not a percentage between 0% and 100%")),
            };
        }
        parse_absolute(t)
            .map(Limit::Absolute)
            .ok_or_else(|| format!("`{t}` is neither a percentage nor an amount"))
    }

    /// The limit as an absolute value, given what 100% is.
    pub fn of(&self, total: u64) -> u64 {
        match self {
            Limit::Absolute(v) => *v,
            Limit::Percent(p) => (total as f64 * p / 100.0).round() as u64,
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Absolute(v) => write!(f, "{v}"),
            Limit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// `kind = "syn_backlog"`: a listening socket's accept queue, half-open connections, and the
/// host's (or network namespace's) listen-overflow counters.
#[derive(Debug, Clone)]
pub struct BacklogCheck {
    pub port: u16,
    /// Only listeners bound to this address (default: any address, IPv4 and IPv6).
    pub bind: Option<std::net::IpAddr>,
    /// Look inside this network namespace (e.g. `/run/netns/h1`, `/proc/PID/ns/net`).
    pub netns: Option<PathBuf>,
    /// Of the listener's backlog (its maximum accept queue). Default 90%.
    pub max_accept_queue: Limit,
    /// Half-open connections. Setting it turns the SYN_RECV count on, which walks the kernel's
    /// whole connection hash (about 1.6 ms of CPU here); unset, it is not counted.
    pub max_syn_recv: Option<u32>,
    /// ListenOverflows per second (TcpExt, namespace-wide).
    pub max_overflows_per_s: Option<f64>,
}

/// How a `process` probe finds its process.
#[derive(Debug, Clone)]
pub enum ProcessSelect {
    Pidfile(PathBuf),
    /// The oldest process whose /proc/PID/exe is this path.
    Exe(PathBuf),
    /// The oldest process whose comm (/proc/PID/comm, 15 chars) is this.
    Name(String),
    /// The oldest process whose command line (args joined by spaces) matches.
    Cmdline(regex::Regex),
    /// The oldest process in this systemd unit's cgroup (e.g. `apache2.service`).
    Unit(String),
}

/// `kind = "process"`: a process is alive (not a zombie) and within limits.
#[derive(Debug, Clone)]
pub struct ProcessCheck {
    pub select: ProcessSelect,
    pub min_children: Option<u32>,
    pub max_children: Option<u32>,
    /// Bytes.
    pub max_rss: Option<u64>,
    /// Percent of one core over the last interval.
    pub max_cpu_percent: Option<f64>,
    pub max_fds: Option<u32>,
    pub min_uptime: Option<Duration>,
}

/// `kind = "memory"`: pressure, available memory, swap and OOM kills, for the host or a cgroup.
#[derive(Debug, Clone)]
pub struct MemoryCheck {
    /// A cgroup directory (v1 memory controller or v2); default: the whole host.
    pub cgroup: Option<PathBuf>,
    /// Percent (PSI `some` avg10).
    pub max_psi_some_avg10: Option<f64>,
    /// Percent (PSI `full` avg10). Default 60, systemd-oomd's threshold.
    pub max_psi_full_avg10: Option<f64>,
    /// Of MemTotal (or the cgroup's limit). Default 10%, earlyoom's threshold.
    pub min_available: Option<Limit>,
    /// Of SwapTotal.
    pub max_swap_used: Option<Limit>,
    /// Any OOM kill since the previous check fails it (default true).
    pub oom_kills: bool,
    /// A PSI trigger (`"some 150000 2000000"`: 150 ms stalled in a 2 s window) that runs the
    /// check at once when the kernel fires it.
    pub psi_trigger: Option<String>,
}

#[derive(Debug, Clone)]
pub struct HttpCheck {
    pub method: String,
    pub url: String,
    pub expect_status: StatusRanges,
    pub max_latency: Option<Duration>,
    pub body_contains: Option<String>,
    pub body_matches: Option<regex::Regex>,
    pub headers: Vec<(String, String)>,
    /// Sent as the `Host` header: the vhost behind a proxy.
    pub host: Option<String>,
    pub basic_auth: Option<(String, SecretRef)>,
    pub insecure_tls: bool,
    /// At most this much of the body is read.
    pub max_body: usize,
}

impl HttpCheck {
    pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
}

/// Accepted HTTP statuses: a list of inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRanges(pub Vec<(u16, u16)>);

impl StatusRanges {
    pub fn default_ok() -> Self {
        StatusRanges(vec![(200, 399)])
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }

    /// Parses `"200-399"`, `"200,204,300-302"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (lo.trim(), hi.trim()),
                None => (part, part),
            };
            let parse = |s: &str| -> Result<u16, String> {
                s.parse::<u16>()
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| format!("`{s}` is not an HTTP status (100-599)"))
            };
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if lo > hi {
                return Err(format!("range `{part}` is empty ({lo} > {hi})"));
            }
            ranges.push((lo, hi));
        }
        Ok(StatusRanges(ranges))
    }
}

impl std::fmt::Display for StatusRanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct TcpCheck {
    /// `host:port`, resolved at each check.
    pub address: String,
    pub send: Option<String>,
    pub expect: Option<String>,
}

/// What an action does.
#[derive(Debug, Clone)]
pub enum ActionSpec {
    Command(CommandAction),
    Signal(SignalAction),
    Webhook(WebhookAction),
    Alertmanager(AlertmanagerAction),
    PagerDuty(PagerDutyAction),
    Email(EmailAction),
    Haproxy(HaproxyAction),
    RestartDrained(RestartDrainedAction),
    DrainFlag(DrainFlagAction),
    Systemd(SystemdAction),
    Docker(DockerAction),
}

impl ActionSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            ActionSpec::Command(_) => "command",
            ActionSpec::Signal(_) => "signal",
            ActionSpec::Webhook(_) => "webhook",
            ActionSpec::Alertmanager(_) => "alertmanager",
            ActionSpec::PagerDuty(_) => "pagerduty",
            ActionSpec::Email(_) => "email",
            ActionSpec::Haproxy(_) => "haproxy",
            ActionSpec::RestartDrained(_) => "restart_drained",
            ActionSpec::DrainFlag(_) => "drain_flag",
            ActionSpec::Systemd(_) => "systemd",
            ActionSpec::Docker(_) => "docker",
        }
    }

    pub fn role(&self) -> Role {
        match self {
            ActionSpec::Command(_) | ActionSpec::Signal(_) => Role::Remedy,
            ActionSpec::Haproxy(_)
            | ActionSpec::RestartDrained(_)
            | ActionSpec::DrainFlag(_)
            | ActionSpec::Systemd(_)
            | ActionSpec::Docker(_) => Role::Remedy,
            ActionSpec::Webhook(_)
            | ActionSpec::Alertmanager(_)
            | ActionSpec::PagerDuty(_)
            | ActionSpec::Email(_) => Role::Page,
        }
    }

    /// Reminders and digests of a pager (none for a remedy, nor for the kinds that group and
    /// repeat by themselves: Alertmanager, PagerDuty).
    pub fn paging(&self) -> Paging {
        match self {
            ActionSpec::Webhook(w) => w.paging.clone(),
            ActionSpec::Email(e) => e.paging.clone(),
            _ => Paging::default(),
        }
    }
}

/// Runs argvs (never through a shell) in order, with the incident in their environment:
/// `command`, or monit-style `stop` then `start`.
#[derive(Debug, Clone)]
pub struct CommandAction {
    pub steps: Vec<Vec<String>>,
    /// Per step.
    pub timeout: Duration,
}

impl CommandAction {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
}

/// Signals the process in a pidfile, escalates to SIGKILL, then optionally starts it again.
#[derive(Debug, Clone)]
pub struct SignalAction {
    pub pidfile: PathBuf,
    pub signal: nix::sys::signal::Signal,
    /// How long to wait for the process to exit before SIGKILL.
    pub kill_after: Duration,
    pub start: Option<Vec<String>>,
    /// Timeout of the start command.
    pub timeout: Duration,
    /// Signal every process of the pidfile process's group (a daemon and its workers), each
    /// through its own pidfd.
    pub process_group: bool,
}

impl SignalAction {
    pub const DEFAULT_KILL_AFTER: Duration = Duration::from_secs(5);
}

/// POSTs the incident as JSON; again when it resolves. Retried in the background.
#[derive(Debug, Clone)]
pub struct WebhookAction {
    pub url: String,
    pub token: Option<SecretRef>,
    /// Per attempt.
    pub timeout: Duration,
    pub format: WebhookFormat,
    pub paging: Paging,
}

impl WebhookAction {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
}

/// Asks systemd (over D-Bus) to restart, start, stop, reload or kill a unit, and waits for the
/// job to end.
#[derive(Debug, Clone)]
pub struct SystemdAction {
    pub unit: String,
    pub operation: SystemdOperation,
    /// For [`SystemdOperation::Kill`]: sent to every process of the unit.
    pub signal: nix::sys::signal::Signal,
    pub bus: SystemdBus,
    /// How long to wait for the job (its JobRemoved signal).
    pub timeout: Duration,
}

impl SystemdAction {
    /// systemd's own default start timeout (DefaultTimeoutStartSec) is 90 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemdOperation {
    Restart,
    Start,
    Stop,
    Reload,
    Kill,
}

impl SystemdOperation {
    pub const NAMES: [&str; 5] = ["restart", "start", "stop", "reload", "kill"];

    pub fn parse(name: &str) -> Option<SystemdOperation> {
        Some(match name {
            "restart" => SystemdOperation::Restart,
            "start" => SystemdOperation::Start,
            "stop" => SystemdOperation::Stop,
            "reload" => SystemdOperation::Reload,
            "kill" => SystemdOperation::Kill,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// Which systemd: the system manager, or the user's own (`systemctl --user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemdBus {
    System,
    User,
}

/// The Docker Engine API socket, unless a probe or action names another.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// `kind = "docker"` probe: a container's state and Docker's own health status (its
/// HEALTHCHECK), so rules can act on what Docker only reports.
#[derive(Debug, Clone)]
pub struct DockerCheck {
    pub socket: PathBuf,
    /// A name or an id (a unique prefix of one, as `docker` accepts).
    pub container: String,
}

/// Which containers a docker action acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerTarget {
    /// A name or an id.
    Container(String),
    /// `key=value` or `key`: every container with that label, running or not.
    Label(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerOperation {
    Restart,
    Stop,
    Kill,
    Start,
}

impl DockerOperation {
    pub const NAMES: [&str; 4] = ["restart", "stop", "kill", "start"];

    pub fn parse(name: &str) -> Option<DockerOperation> {
        match name {
            "restart" => Some(DockerOperation::Restart),
            "stop" => Some(DockerOperation::Stop),
            "kill" => Some(DockerOperation::Kill),
            "start" => Some(DockerOperation::Start),
            _ => None,
        }
    }
}

impl std::fmt::Display for DockerOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DockerOperation::Restart => "restart",
            DockerOperation::Stop => "stop",
            DockerOperation::Kill => "kill",
            DockerOperation::Start => "start",
        })
    }
}

/// `kind = "docker"` action: restart, stop, kill or start containers through the Engine API.
#[derive(Debug, Clone)]
pub struct DockerAction {
    pub socket: PathBuf,
    pub target: DockerTarget,
    pub operation: DockerOperation,
    /// `kill` only: the signal, as Docker names it (`SIGKILL`, the default, `SIGTERM`, ...).
    pub signal: Option<String>,
    /// `restart` and `stop`: Docker's `t`, how long the container gets after its stop signal
    /// before SIGKILL. Default: the container's own `StopTimeout` (Docker's default: 10 s).
    pub kill_after: Option<Duration>,
    /// The whole operation, on every matching container.
    pub timeout: Duration,
}

impl DockerAction {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
}

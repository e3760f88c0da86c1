//! The command line: `run`, `check`, `validate`. Exit codes are a contract, tested against the
//! real binary:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | `run`: stopped cleanly; `check`: every probe passed and is up; `validate`: config valid |
//! | 1 | `check`: a probe failed or is down (or the state dir is unusable); `status`, `pause`, `resume`, `reload`: the daemon refused or could not be reached |
//! | 2 | usage error (clap) |
//! | 78 | bad config (`EX_CONFIG`) |

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::logging::LogFormat;

pub const DEFAULT_CONFIG: &str = "/etc/uptime-watchdog/watchdog.toml";

/// How the client verbs find the daemon: its API socket, named directly or by the config.
#[derive(Debug, clap::Args)]
pub struct DaemonAddress {
    /// The config the daemon runs with (its `api_socket`, or `state_dir/watchdog.sock`).
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The daemon's API socket, instead of reading the config.
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Parser)]
#[command(
    name = "watchdog",
    version,
    about = "Probe services, restart what is broken, page when that does not help.",
    after_help = "Examples:\n  watchdog validate --config /etc/uptime-watchdog/watchdog.toml\n  watchdog check --config watchdog.toml --probe apache\n  watchdog run --config /etc/uptime-watchdog/watchdog.toml"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format: auto (journald under systemd, else text), text, or json.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    /// More detail in the logs (every check result). RUST_LOG overrides.
    #[arg(long, short, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: every probe on its schedule, rules acting on failures. SIGTERM or
    /// SIGINT stops it cleanly.
    #[command(
        after_help = "Example:\n  watchdog run --config /etc/uptime-watchdog/watchdog.toml --dry-run"
    )]
    Run {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Log what would be done; do nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run probes once (for cron and container health checks). Counters persist in state_dir,
    /// so fail_after = 3 means three runs. Exit 0: all up; 1: something failing or down;
    /// 78: bad config.
    #[command(
        after_help = "Examples:\n  watchdog check --config watchdog.toml\n  watchdog check --config watchdog.toml --probe apache --json\n  */1 * * * * root watchdog check -c /etc/uptime-watchdog/watchdog.toml"
    )]
    Check {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Only this probe (repeat for several). Default: all.
        #[arg(long = "probe", value_name = "NAME")]
        probes: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Check and decide, but run no action and send no page.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show every probe's state, last result and last action (from the running daemon).
    #[command(
        after_help = "Examples:\n  watchdog status\n  watchdog status --json | jq '.probes[] | select(.state == \"down\")'"
    )]
    Status {
        #[command(flatten)]
        daemon: DaemonAddress,
        /// Print the JSON the API returns.
        #[arg(long)]
        json: bool,
    },
    /// Pause a probe for a maintenance window: its results are ignored and no action runs
    /// until it is resumed or the time runs out. Kept across daemon restarts.
    #[command(after_help = "Example:\n  watchdog pause apache --for 30m")]
    Pause {
        #[command(flatten)]
        daemon: DaemonAddress,
        probe: String,
        /// How long (e.g. 30m, 2h); without it, until `watchdog resume`.
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
    },
    /// Resume a paused probe; its counters start afresh.
    #[command(after_help = "Example:\n  watchdog resume apache")]
    Resume {
        #[command(flatten)]
        daemon: DaemonAddress,
        probe: String,
    },
    /// Make the running daemon re-read its config (as SIGHUP does); refused if invalid.
    #[command(after_help = "Example:\n  watchdog reload")]
    Reload {
        #[command(flatten)]
        daemon: DaemonAddress,
    },
    /// Check a config and report every problem at once as file:line:col: probe "name": message.
    /// Exit 0: valid (warnings allowed); 78: errors.
    #[command(
        after_help = "Example:\n  watchdog validate --config /etc/uptime-watchdog/watchdog.toml"
    )]
    Validate {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

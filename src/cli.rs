//! The command line: `run`, `check`, `validate`. Exit codes are a contract, tested against the
//! real binary:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | `run`: stopped cleanly; `check`: every probe passed and is up; `validate`: config valid |
//! | 1 | `check`: a probe failed or is down (or the state dir is unusable) |
//! | 2 | usage error (clap) |
//! | 78 | bad config (`EX_CONFIG`) |

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::logging::LogFormat;

pub const DEFAULT_CONFIG: &str = "/etc/uptime-watchdog/watchdog.toml";

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

//! Logs: tracing events with stable fields (`probe`, `kind`, `state`, `action`, `reason`).
//!
//! - Under systemd (stderr is the journal stream named by `JOURNAL_STREAM`) events go to
//!   journald natively, fields included, so `journalctl PROBE=apache` filters.
//! - Otherwise a readable line per event on stderr, coloured only on a terminal; or JSON lines
//!   with `--log-format json`.
//!
//! The level comes from `--verbose`/`--quiet`, or `RUST_LOG` when set.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// journald under systemd, text otherwise.
    #[default]
    Auto,
    Text,
    Json,
}

pub fn init(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let registry = tracing_subscriber::registry().with(filter);
    if format == LogFormat::Auto
        && stderr_is_journal()
        && let Ok(journald) = tracing_journald::layer()
    {
        // No F_ prefix: fields appear as PROBE=, ACTION=, STATE= in the journal.
        let _ = registry.with(journald.with_field_prefix(None)).try_init();
        return;
    }
    let result = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_current_span(false),
            )
            .try_init(),
        _ => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_target(false),
            )
            .try_init(),
    };
    // Already initialized (tests calling twice): keep the first.
    let _ = result;
}

/// systemd sets `JOURNAL_STREAM=dev:inode` for the stream it connected stderr to; if stderr is
/// still that stream (not redirected), the journal is where our logs go anyway.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse::<u64>().is_ok_and(|d| d == meta.dev())
        && ino.parse::<u64>().is_ok_and(|i| i == meta.ino())
}

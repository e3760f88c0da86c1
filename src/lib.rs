//! uptime-watchdog: probes services, decides with a pure rule engine, and acts — restarts,
//! signals, pages — before a human has to.
//!
//! # Layout
//! - [`config`]: TOML in, a checked [`config::Config`] or every problem with it out.
//! - [`clock`]: the boot-time clock every timestamp is on.
//! - [`health`]: pure hysteresis, ok/fail observations to up/down.
//! - [`rules`]: the pure rule engine, observations to [`rules::Effect`]s (remedies, pages).
//! - [`probe`]: the checks that do I/O (`http`, `tcp`, `syn_backlog`, `process`, `memory`,
//!   `haproxy`, `docker`), each a value in, an [`probe::Outcome`] out.
//! - [`action`]: the effects: commands, signals, systemd units (D-Bus), Docker
//!   containers, HAProxy drains, and pages (webhook,
//!   Alertmanager, PagerDuty, email) through one queue per pager.
//! - [`docker`]: the Docker Engine API client the docker probe and action share.
//! - [`daemon`]: `watchdog run`, one task per probe, the engine in one task, actions spawned.
//! - [`events`]: notable events, logged from one place each.
//! - [`haproxy`]: HAProxy's runtime API (admin socket): `show stat`, `set server ... state`.
//! - [`check`]: `watchdog check`, the one-shot for cron and container health checks.
//! - [`state`]: what survives a restart: engine state and the page outbox, written atomically.
//! - [`notify`]: sd_notify to systemd (ready, reloading, status, keep-alives).
//! - [`status`]: the local API: JSON status, Prometheus metrics, pause/resume/reload.
//! - [`logging`]: tracing to stderr, JSON or journald.
//! - [`cli`]: the command line.

pub mod action;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod docker;
pub mod events;
pub mod haproxy;
pub mod health;
pub mod logging;
pub mod notify;
pub mod probe;
pub mod rules;
pub mod state;
pub mod status;

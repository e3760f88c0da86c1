//! The Docker Engine API, as the `docker` probe and action use it: a client on the engine's
//! unix socket, a container's state in one line, and readable errors.
//!
//! Through bollard (the field's Rust client), over the unix socket only: no TCP, no TLS, no
//! named pipes. The API version is negotiated with the engine at connect time: bollard speaks
//! 1.53 by default, which Docker 20.10 (API 1.41) refuses, and newer engines refuse versions
//! that are too old; every endpoint used here exists since API 1.24.
//!
//! Every call has a deadline twice over: bollard's per-request timeout, and the caller's own
//! (`tokio::time::timeout` around the whole check or action), so a wedged engine holds nothing.

use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error;
use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum};

use crate::probe::snippet;

/// Connects to the engine at `socket` and agrees on an API version. `timeout` bounds each
/// request bollard makes (it counts whole seconds: at least one).
pub async fn connect(socket: &Path, timeout: Duration) -> Result<Docker, String> {
    let seconds = timeout.as_secs().max(1);
    let path = socket.to_string_lossy();
    let docker = Docker::connect_with_unix(&path, seconds, bollard::API_DEFAULT_VERSION)
        .map_err(|e| describe(socket, &e))?;
    docker
        .negotiate_version()
        .await
        .map_err(|e| describe(socket, &e))
}

/// One line for an API error: `no container named "app"`, "cannot reach Docker at
/// /var/run/docker.sock: Permission denied (os error 13)".
pub fn describe(socket: &Path, e: &Error) -> String {
    match e {
        Error::DockerResponseServerError {
            status_code,
            message,
        } => match status_code {
            404 => match message.trim().strip_prefix("No such container: ") {
                Some(name) => format!("no container named \"{name}\""),
                None => message.trim().to_string(),
            },
            409 => format!("conflict: {}", message.trim()),
            _ => format!("Docker answered {status_code}: {}", message.trim()),
        },
        Error::SocketNotFoundError(path) => {
            format!(
                "cannot reach Docker: no socket at {path} (mount it: -v /var/run/docker.sock:/var/run/docker.sock)"
            )
        }
        Error::RequestTimeoutError => "Docker did not answer in time".into(),
        other => format!(
            "cannot reach Docker at {}: {}",
            socket.display(),
            crate::probe::root_cause(other)
        ),
    }
}

/// What a container is doing, from one inspect, for probes and action reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// The name without the API's leading `/`.
    pub name: String,
    /// The first 12 hex digits, as `docker ps` shows it.
    pub short_id: String,
    pub status: Status,
    /// Docker's verdict from the container's HEALTHCHECK; `None` without one.
    pub health: Option<Health>,
    pub exit_code: i64,
    pub oom_killed: bool,
    /// Restarts by Docker's own restart policy.
    pub restart_count: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Starting,
    Healthy,
    /// Failing checks in a row, and the last check's exit code and output.
    Unhealthy {
        failing_streak: i64,
        last: Option<String>,
    },
}

impl ContainerState {
    pub fn from_inspect(r: &ContainerInspectResponse) -> ContainerState {
        let state = r.state.clone().unwrap_or_default();
        let status = match state.status {
            Some(ContainerStateStatusEnum::CREATED) => Status::Created,
            Some(ContainerStateStatusEnum::RUNNING) => Status::Running,
            Some(ContainerStateStatusEnum::PAUSED) => Status::Paused,
            Some(ContainerStateStatusEnum::RESTARTING) => Status::Restarting,
            Some(ContainerStateStatusEnum::REMOVING) => Status::Removing,
            Some(ContainerStateStatusEnum::EXITED) => Status::Exited,
            Some(ContainerStateStatusEnum::DEAD) => Status::Dead,
            _ => Status::Unknown,
        };
        let health = state.health.and_then(|h| match h.status? {
            HealthStatusEnum::STARTING => Some(Health::Starting),
            HealthStatusEnum::HEALTHY => Some(Health::Healthy),
            HealthStatusEnum::UNHEALTHY => Some(Health::Unhealthy {
                failing_streak: h.failing_streak.unwrap_or(0),
                last: h.log.and_then(|log| log.last().cloned()).map(|last| {
                    // The last line: where a check's verdict usually is (`watchdog check`
                    // prints its table last; curl its error), after any warnings.
                    let output = last.output.unwrap_or_default();
                    let line = output.lines().rev().find(|l| !l.trim().is_empty());
                    format!(
                        "exit {}: {}",
                        last.exit_code.unwrap_or(-1),
                        snippet(line.unwrap_or("").trim().as_bytes(), 100)
                    )
                }),
            }),
            HealthStatusEnum::NONE | HealthStatusEnum::EMPTY => None,
        });
        ContainerState {
            name: r
                .name
                .as_deref()
                .unwrap_or("?")
                .trim_start_matches('/')
                .to_string(),
            short_id: r.id.as_deref().unwrap_or("").chars().take(12).collect(),
            status,
            health,
            exit_code: state.exit_code.unwrap_or(0),
            oom_killed: state.oom_killed.unwrap_or(false),
            restart_count: r.restart_count.unwrap_or(0),
        }
    }

    /// Running, and not declared unhealthy by Docker.
    pub fn is_well(&self) -> bool {
        self.status == Status::Running && !matches!(self.health, Some(Health::Unhealthy { .. }))
    }

    /// "running, healthy"; "running, unhealthy (3 failing checks in a row; last: exit 1: ...)";
    /// "exited with code 137 (OOM killed)"; "restarting (Docker's restart policy, 4 restarts)".
    pub fn describe(&self) -> String {
        let mut s = match self.status {
            Status::Running => "running".to_string(),
            Status::Paused => "paused".to_string(),
            Status::Created => "created, never started".to_string(),
            Status::Restarting => format!(
                "restarting (Docker's restart policy; last exit code {})",
                self.exit_code
            ),
            Status::Removing => "being removed".to_string(),
            Status::Exited => format!("exited with code {}", self.exit_code),
            Status::Dead => "dead (Docker could not stop or remove it)".to_string(),
            Status::Unknown => "in an unknown state".to_string(),
        };
        if self.oom_killed && self.status != Status::Running {
            s.push_str(" (OOM killed)");
        }
        match &self.health {
            Some(Health::Starting) => s.push_str(", health: starting"),
            Some(Health::Healthy) => s.push_str(", healthy"),
            Some(Health::Unhealthy {
                failing_streak,
                last,
            }) => {
                s.push_str(&format!(
                    ", unhealthy ({failing_streak} failing checks in a row"
                ));
                if let Some(last) = last {
                    s.push_str(&format!("; last: {last}"));
                }
                s.push(')');
            }
            None => {}
        }
        if self.restart_count > 0 {
            s.push_str(&format!(
                "; {} restarts by its restart policy",
                self.restart_count
            ));
        }
        s
    }
}

/// Inspects one container.
pub async fn inspect(
    docker: &Docker,
    socket: &Path,
    container: &str,
) -> Result<ContainerState, String> {
    docker
        .inspect_container(container, None)
        .await
        .map(|r| ContainerState::from_inspect(&r))
        .map_err(|e| describe(socket, &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerState as ApiState, HealthcheckResult};

    fn response(
        status: ContainerStateStatusEnum,
        health: Option<HealthStatusEnum>,
    ) -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some("3f2a1b9c0d1e2f3a4b5c".into()),
            name: Some("/app".into()),
            state: Some(ApiState {
                status: Some(status),
                exit_code: Some(137),
                oom_killed: Some(true),
                health: health.map(|status| bollard::models::Health {
                    status: Some(status),
                    failing_streak: Some(3),
                    log: Some(vec![HealthcheckResult {
                        exit_code: Some(1),
                        output: Some(
                            "1 warning: ...\napache  http  down  FAIL  HTTP 504 in 3 ms\n\n".into(),
                        ),
                        ..Default::default()
                    }]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn states_in_one_line() {
        let s = ContainerState::from_inspect(&response(
            ContainerStateStatusEnum::RUNNING,
            Some(HealthStatusEnum::UNHEALTHY),
        ));
        assert_eq!(s.name, "app");
        assert_eq!(s.short_id, "3f2a1b9c0d1e");
        assert!(!s.is_well());
        assert_eq!(
            s.describe(),
            "running, unhealthy (3 failing checks in a row; last: exit 1: apache  http  down  FAIL  HTTP 504 in 3 ms)"
        );
        let s = ContainerState::from_inspect(&response(
            ContainerStateStatusEnum::RUNNING,
            Some(HealthStatusEnum::STARTING),
        ));
        assert!(s.is_well());
        assert_eq!(s.describe(), "running, health: starting");
        let s = ContainerState::from_inspect(&response(ContainerStateStatusEnum::RUNNING, None));
        assert!(s.is_well());
        assert_eq!(s.describe(), "running");
        let s = ContainerState::from_inspect(&response(ContainerStateStatusEnum::EXITED, None));
        assert!(!s.is_well());
        assert_eq!(s.describe(), "exited with code 137 (OOM killed)");
        let s = ContainerState::from_inspect(&response(
            ContainerStateStatusEnum::PAUSED,
            Some(HealthStatusEnum::HEALTHY),
        ));
        assert!(!s.is_well());
    }

    #[test]
    fn errors_in_one_line() {
        let socket = Path::new("/var/run/docker.sock");
        let e = Error::DockerResponseServerError {
            status_code: 404,
            message: "No such container: app".into(),
        };
        assert_eq!(describe(socket, &e), "no container named \"app\"");
        let e = Error::SocketNotFoundError("/nope.sock".into());
        assert!(describe(socket, &e).contains("no socket at /nope.sock"));
    }
}

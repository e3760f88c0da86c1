//! `kind = "docker"`: restart, stop, kill or start containers through the Docker Engine API.
//!
//! Docker marks a container "unhealthy" and leaves it so (moby#28400): this is the remedy that
//! acts on it, with the thresholds, budgets and pages every remedy has, which autoheal-style
//! sidecars lack. A container is named directly, or by a label (every match, running or not,
//! acted on one after another: replicas restart in turn, never all at once).
//!
//! The report says what the container is doing afterwards ("restarted app (3f2a1b9c0d1e) in
//! 1.2 s: running, health: starting"), from an inspect once the API call returned.

use std::collections::HashMap;
use std::time::Instant;

use bollard::Docker;
use bollard::query_parameters::{
    KillContainerOptions, ListContainersOptions, RestartContainerOptions, StopContainerOptions,
};

use crate::config::{DockerAction, DockerOperation, DockerTarget};
use crate::docker::{connect, describe, inspect};
use crate::probe::human;

/// Runs the operation on every target within the action's `timeout`.
pub async fn run(spec: &DockerAction) -> Result<String, String> {
    match tokio::time::timeout(spec.timeout, run_untimed(spec)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "Docker did not finish the {} within {} (the timeout)",
            spec.operation,
            human(spec.timeout)
        )),
    }
}

async fn run_untimed(spec: &DockerAction) -> Result<String, String> {
    let docker = connect(&spec.socket, spec.timeout).await?;
    let targets = match &spec.target {
        DockerTarget::Container(name) => vec![name.clone()],
        DockerTarget::Label(label) => {
            let found = by_label(&docker, spec, label).await?;
            if found.is_empty() {
                return Err(format!("no container has the label {label}"));
            }
            found
        }
    };
    let mut done = Vec::new();
    let mut failed = false;
    for target in &targets {
        match operate(&docker, spec, target).await {
            Ok(line) => done.push(line),
            Err(e) => {
                failed = true;
                done.push(format!("{} {target} failed: {e}", spec.operation));
            }
        }
    }
    let report = done.join("; ");
    if failed { Err(report) } else { Ok(report) }
}

/// Ids of every container, running or not, with the label (`key=value` or `key`).
async fn by_label(
    docker: &Docker,
    spec: &DockerAction,
    label: &str,
) -> Result<Vec<String>, String> {
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_string(),
            vec![label.to_string()],
        )])),
        ..Default::default()
    };
    let list = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| describe(&spec.socket, &e))?;
    Ok(list.into_iter().filter_map(|c| c.id).collect())
}

async fn operate(docker: &Docker, spec: &DockerAction, target: &str) -> Result<String, String> {
    let started = Instant::now();
    let t = spec
        .kill_after
        .map(|d| d.as_secs().min(i32::MAX as u64) as i32);
    let result = match spec.operation {
        DockerOperation::Restart => {
            docker
                .restart_container(target, Some(RestartContainerOptions { t, signal: None }))
                .await
        }
        DockerOperation::Stop => {
            docker
                .stop_container(target, Some(StopContainerOptions { t, signal: None }))
                .await
        }
        DockerOperation::Kill => {
            let signal = spec.signal.clone().unwrap_or_else(|| "SIGKILL".into());
            match docker
                .kill_container(target, Some(KillContainerOptions { signal }))
                .await
            {
                // Killing a container that is not running is a conflict to Docker; for a
                // remedy it means the goal (not running) is met: say so, do not fail.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 409,
                    message,
                }) if message.contains("is not running") => Ok(()),
                other => other,
            }
        }
        DockerOperation::Start => docker.start_container(target, None).await,
    };
    result.map_err(|e| describe(&spec.socket, &e))?;
    let took = human(started.elapsed());
    let verb = match spec.operation {
        DockerOperation::Restart => "restarted",
        DockerOperation::Stop => "stopped",
        DockerOperation::Kill => "killed",
        DockerOperation::Start => "started",
    };
    match inspect(docker, &spec.socket, target).await {
        Ok(state) => Ok(format!(
            "{verb} {} ({}) in {took}: {}",
            state.name,
            state.short_id,
            state.describe()
        )),
        Err(e) => Ok(format!("{verb} {target} in {took} (state unknown: {e})")),
    }
}

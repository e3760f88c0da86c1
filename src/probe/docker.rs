//! `kind = "docker"`: a container is running and Docker does not call it unhealthy.
//!
//! Docker runs a container's HEALTHCHECK and records the verdict, but never acts on it
//! (moby#28400). This probe reads that verdict (and the container's state) over the Engine
//! API, so the watchdog's rules can act on it with thresholds, budgets and pages. "starting"
//! passes: Docker itself turns it into "unhealthy" after the HEALTHCHECK's own retries, and a
//! slow starter must not be restarted in a loop.
//!
//! The client is made at the first check (the version negotiation is a request) and kept; a
//! failed connection is retried at the next check.

use std::time::Instant;

use bollard::Docker;
use tokio::sync::OnceCell;

use super::{Outcome, Phase};
use crate::config::DockerCheck;
use crate::docker::{connect, inspect};

#[derive(Debug)]
pub struct DockerProbe {
    spec: DockerCheck,
    client: OnceCell<Docker>,
}

impl DockerProbe {
    pub fn new(spec: DockerCheck) -> DockerProbe {
        DockerProbe {
            spec,
            client: OnceCell::new(),
        }
    }

    pub async fn check(&self, phase: &Phase, started: Instant) -> Outcome {
        phase.set("connecting to Docker");
        // bollard's own per-request limit; the probe's hard timeout (in `Probe::run`) is the
        // one that counts and is usually shorter.
        let per_request = std::time::Duration::from_secs(5);
        let docker = match self
            .client
            .get_or_try_init(|| connect(&self.spec.socket, per_request))
            .await
        {
            Ok(d) => d,
            Err(e) => return Outcome::fail(started.elapsed(), e),
        };
        phase.set("waiting for Docker to inspect the container");
        match inspect(docker, &self.spec.socket, &self.spec.container).await {
            Ok(state) if state.is_well() => Outcome::ok(started.elapsed(), state.describe()),
            Ok(state) => Outcome::fail(started.elapsed(), state.describe()),
            Err(e) => Outcome::fail(started.elapsed(), e),
        }
    }
}

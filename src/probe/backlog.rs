//! Placeholder for the `backlog` probe; being written in its own branch.

use std::time::Instant;

use super::{Outcome, Phase};
use crate::config::BacklogCheck;

#[derive(Debug)]
pub struct BacklogProbe {
    check: BacklogCheck,
}

impl BacklogProbe {
    pub fn new(check: BacklogCheck) -> Self {
        BacklogProbe { check }
    }

    pub async fn check(&self, _phase: &Phase, started: Instant) -> Outcome {
        let _ = &self.check;
        Outcome::fail(started.elapsed(), "this probe kind is not built yet")
    }

    /// See [`super::Probe::next_event`].
    pub async fn next_event(&self) {
        std::future::pending::<()>().await
    }

    /// See [`super::Probe::snapshot`].
    pub fn snapshot(&self) -> Option<serde_json::Value> {
        None
    }

    /// See [`super::Probe::restore`].
    pub fn restore(&self, _snapshot: &serde_json::Value) {}
}

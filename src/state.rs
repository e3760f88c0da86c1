//! What `watchdog check` remembers between runs, in `state_dir/check-state.json`.
//!
//! Written atomically (temp file, fsync, rename) so a crash or a full disk leaves the previous
//! state, never half a file. A state file that cannot be parsed is moved aside with a warning
//! and the run starts fresh: a corrupt file must not stop the health check from running.
//! Timestamps are on the boot-time clock, so state from an earlier boot is discarded.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::action::webhook::Page;
use crate::rules::Engine;

const FILE: &str = "check-state.json";
const VERSION: u32 = 1;

/// A page that could not be delivered yet, with the webhook action to deliver it through.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingPage {
    pub action: String,
    pub page: Page,
    pub attempts: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CheckState {
    pub version: u32,
    pub boot_id: String,
    pub engine: Engine,
    #[serde(default)]
    pub pending_pages: Vec<PendingPage>,
    /// What probes remember between runs (counters for rates and OOM kills), by probe name.
    #[serde(default)]
    pub baselines: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Loads the state in `dir`. Never fails: problems are returned as warnings to log.
pub fn load(dir: &Path, boot_id: &str) -> (CheckState, Vec<String>) {
    let path = dir.join(FILE);
    let fresh = CheckState {
        version: VERSION,
        boot_id: boot_id.to_string(),
        ..Default::default()
    };
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (fresh, vec![]),
        Err(e) => {
            return (
                fresh,
                vec![format!(
                    "cannot read {}: {e}; starting with empty state",
                    path.display()
                )],
            );
        }
    };
    match serde_json::from_slice::<CheckState>(&text) {
        Ok(state) if state.version == VERSION && state.boot_id == boot_id => (state, vec![]),
        Ok(state) if state.version == VERSION => {
            // Counters from before a reboot are meaningless; undelivered pages are not.
            let mut s = fresh;
            s.pending_pages = state.pending_pages;
            (
                s,
                vec![format!(
                    "{} is from an earlier boot: health counters reset",
                    path.display()
                )],
            )
        }
        Ok(state) => (
            fresh,
            vec![format!(
                "{} has version {}, expected {VERSION}: starting with empty state",
                path.display(),
                state.version
            )],
        ),
        Err(e) => {
            let aside = set_aside(&path);
            (
                fresh,
                vec![format!(
                    "{} is corrupt ({e}); moved to {}; starting with empty state",
                    path.display(),
                    aside.display()
                )],
            )
        }
    }
}

fn set_aside(path: &Path) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let aside = path.with_extension(format!("json.corrupt-{stamp}"));
    let _ = std::fs::rename(path, &aside);
    aside
}

/// Saves atomically: write a temp file, fsync it, rename over the old one, fsync the directory.
pub fn save(dir: &Path, state: &CheckState) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create state dir {}: {e}", dir.display()))?;
    let path = dir.join(FILE);
    let tmp = dir.join(format!(".{FILE}.tmp"));
    let json = serde_json::to_vec_pretty(state).map_err(|e| format!("cannot encode state: {e}"))?;
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot save state to {}: {e}", path.display())
    })
}

/// An exclusive lock on the state dir for this run, so two overlapping cron runs do not both
/// act on the same failure. Waits up to `wait` for a previous run to finish.
pub fn lock(dir: &Path, wait: std::time::Duration) -> Result<nix::fcntl::Flock<File>, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create state dir {}: {e}", dir.display()))?;
    let path = dir.join("check.lock");
    let deadline = std::time::Instant::now() + wait;
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err((_, e)) => {
                return Err(format!(
                    "another `watchdog check` holds {} ({e})",
                    path.display()
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wd-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_and_corrupt_file_is_moved_aside() {
        let dir = tempdir("rt");
        let (state, warnings) = load(&dir, "boot-a");
        assert!(warnings.is_empty());
        save(&dir, &state).unwrap();
        let (again, warnings) = load(&dir, "boot-a");
        assert!(warnings.is_empty());
        assert_eq!(again.boot_id, "boot-a");

        std::fs::write(dir.join(FILE), b"{\"version\": 1, \"boot_").unwrap();
        let (_, warnings) = load(&dir, "boot-a");
        assert!(warnings[0].contains("corrupt"), "{warnings:?}");
        assert!(!dir.join(FILE).exists());
        let moved = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
        assert!(moved);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn state_from_another_boot_resets_counters() {
        let dir = tempdir("boot");
        let (state, _) = load(&dir, "boot-a");
        save(&dir, &state).unwrap();
        let (_, warnings) = load(&dir, "boot-b");
        assert!(warnings[0].contains("earlier boot"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

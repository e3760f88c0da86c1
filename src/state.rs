//! State that survives a restart, in `state_dir`:
//! - `daemon-state.json`: the engine (counters, open incidents, budgets) and the page outbox of
//!   `watchdog run`, guarded by `daemon.lock` so two daemons cannot share one state dir;
//! - `check-state.json`: the same for `watchdog check` runs from cron, guarded by `check.lock`.
//!
//! Written atomically (temp file, fsync, rename, fsync of the directory) so a crash or a full
//! disk leaves the previous state, never half a file. A state file that cannot be parsed is
//! moved aside with a warning and the run starts fresh: a corrupt file must not stop the
//! watchdog. Timestamps are on the boot-time clock, so the engine of an earlier boot is
//! discarded; undelivered pages are kept whatever the boot.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::action::webhook::Page;
use crate::rules::Engine;

pub const CHECK_FILE: &str = "check-state.json";
pub const DAEMON_FILE: &str = "daemon-state.json";
const VERSION: u32 = 1;

/// A page that could not be delivered yet, with the webhook action to deliver it through.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingPage {
    /// Unique within the state file; the daemon's pagers report deliveries by it.
    #[serde(default)]
    pub id: u64,
    pub action: String,
    pub page: Page,
    pub attempts: u32,
}

/// What `watchdog check` and `watchdog run` keep (each in its own file).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SavedState {
    pub version: u32,
    pub boot_id: String,
    pub engine: Engine,
    /// Pages not yet acknowledged by their receiver (the outbox).
    #[serde(default)]
    pub pending_pages: Vec<PendingPage>,
    #[serde(default)]
    pub next_page_id: u64,
    /// Firing pages delivered whose incident is still open, by pager: reminders and
    /// Alertmanager refreshes resume from here after a restart (`crate::action::pager`). Not
    /// carried across a reboot, like the incidents they belong to.
    #[serde(default)]
    pub open_pages: Vec<PendingPage>,
    /// What probes remember between runs (counters for rates and OOM kills), by probe name.
    #[serde(default)]
    pub baselines: std::collections::BTreeMap<String, serde_json::Value>,
}

impl SavedState {
    pub fn fresh(boot_id: &str) -> Self {
        SavedState {
            version: VERSION,
            boot_id: boot_id.to_string(),
            ..Default::default()
        }
    }

    /// Adds a page to the outbox and returns its id.
    pub fn enqueue(&mut self, action: String, page: Page) -> u64 {
        self.next_page_id += 1;
        let id = self.next_page_id;
        self.pending_pages.push(PendingPage {
            id,
            action,
            page,
            attempts: 0,
        });
        id
    }
}

/// Kept for the name `watchdog check` has always used.
pub type CheckState = SavedState;

/// Loads `file` in `dir`. Never fails: problems come back as warnings to log.
pub fn load(dir: &Path, file: &str, boot_id: &str) -> (SavedState, Vec<String>) {
    let path = dir.join(file);
    let fresh = SavedState::fresh(boot_id);
    match read_json::<SavedState>(&path) {
        Ok(None) => (fresh, vec![]),
        Ok(Some(state)) if state.version == VERSION && state.boot_id == boot_id => (state, vec![]),
        Ok(Some(state)) if state.version == VERSION => {
            // Counters from before a reboot are meaningless; undelivered pages are not.
            let mut s = fresh;
            s.pending_pages = state.pending_pages;
            s.next_page_id = state.next_page_id;
            (
                s,
                vec![format!(
                    "{} is from an earlier boot: health counters reset",
                    path.display()
                )],
            )
        }
        Ok(Some(state)) => (
            fresh,
            vec![format!(
                "{} has version {}, expected {VERSION}: starting with empty state",
                path.display(),
                state.version
            )],
        ),
        Err(e) => (fresh, vec![e]),
    }
}

/// `Ok(None)`: no file. A file that does not parse is moved aside and reported.
fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot read {}: {e}; starting with empty state",
                path.display()
            ));
        }
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        let aside = set_aside(path);
        format!(
            "{} is corrupt ({e}); moved to {}; starting with empty state",
            path.display(),
            aside.display()
        )
    })
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

/// Encodes the state; cheap enough for the engine task, the write is not (see [`write_atomic`]).
pub fn encode(state: &SavedState) -> Vec<u8> {
    // Serializing plain data to JSON cannot fail.
    serde_json::to_vec(state).unwrap_or_default()
}

/// Saves atomically: write a temp file, fsync it, rename over the old one, fsync the directory.
pub fn write_atomic(dir: &Path, file: &str, bytes: &[u8]) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create state dir {}: {e}", dir.display()))?;
    let path = dir.join(file);
    let tmp = dir.join(format!(".{file}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot save state to {}: {e}", path.display())
    })
}

/// An exclusive lock named `file` in `dir`, held as long as the returned value lives. Waits up
/// to `wait` for another holder to let go; the holder's pid is written in the file so the error
/// can name it.
pub fn lock(
    dir: &Path,
    file: &str,
    wait: std::time::Duration,
) -> Result<nix::fcntl::Flock<File>, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create state dir {}: {e}", dir.display()))?;
    let path = dir.join(file);
    let deadline = std::time::Instant::now() + wait;
    loop {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                let _ = lock.set_len(0);
                let _ = writeln!(&mut *lock, "{}", std::process::id());
                return Ok(lock);
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err((_, e)) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" by pid {holder}")
                };
                return Err(format!(
                    "{} is held{who} ({e}): another watchdog uses state_dir {}",
                    path.display(),
                    dir.display()
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
        let (state, warnings) = load(&dir, CHECK_FILE, "boot-a");
        assert!(warnings.is_empty());
        write_atomic(&dir, CHECK_FILE, &encode(&state)).unwrap();
        let (again, warnings) = load(&dir, CHECK_FILE, "boot-a");
        assert!(warnings.is_empty());
        assert_eq!(again.boot_id, "boot-a");

        std::fs::write(dir.join(CHECK_FILE), b"{\"version\": 1, \"boot_").unwrap();
        let (_, warnings) = load(&dir, CHECK_FILE, "boot-a");
        assert!(warnings[0].contains("corrupt"), "{warnings:?}");
        assert!(!dir.join(CHECK_FILE).exists());
        let moved = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
        assert!(moved);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn another_boot_resets_counters_but_keeps_pages() {
        let dir = tempdir("boot");
        let (mut state, _) = load(&dir, DAEMON_FILE, "boot-a");
        let page: Page = serde_json::from_value(serde_json::json!({
            "event": "firing", "summary": "s", "probe": "p", "host": "h", "state": "down",
            "reason": "r", "incident": 1, "since": "2026-01-01T00:00:00Z", "down_seconds": 0,
            "actions_taken": [], "sent_by": "t"
        }))
        .unwrap();
        assert_eq!(state.enqueue("oncall".into(), page), 1);
        write_atomic(&dir, DAEMON_FILE, &encode(&state)).unwrap();
        let (state, warnings) = load(&dir, DAEMON_FILE, "boot-b");
        assert!(warnings[0].contains("earlier boot"));
        assert_eq!(state.pending_pages.len(), 1);
        assert_eq!(state.next_page_id, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_lock_names_the_holder() {
        let dir = tempdir("lock");
        let _held = lock(&dir, "daemon.lock", std::time::Duration::ZERO).unwrap();
        let err = lock(&dir, "daemon.lock", std::time::Duration::ZERO).unwrap_err();
        assert!(
            err.contains(&format!("by pid {}", std::process::id())),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

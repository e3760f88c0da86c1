//! A private systemd as PID 1, to run our unit under the real service manager.
//!
//! [`SystemdNs::boot`] runs `boot.sh` (beside this file): systemd in private pid, mount, uts
//! and cgroup namespaces, with fresh /run, /tmp and /etc/systemd/system and every unit that
//! would touch the host masked. Everything else is shared with the host: the file system (so
//! a test's files live under the target dir, never under /tmp, which is private inside), the
//! network (probes reach 127.0.0.1 servers the test started) and the clock.
//!
//! Each namespace has a unique name, its own cgroup (/sys/fs/cgroup/unified/NAME) and its own
//! PIDs, so tests boot one each and run in parallel with each other and with the rest of the
//! suite. PIDs that `systemctl` reports are namespace PIDs: signal them through [`SystemdNs::exec`].
//!
//! Teardown, in `Drop`: `cgroup.kill` and SIGKILL to PID 1 and `unshare`, then the cgroup tree
//! is removed. If the test process itself dies, the namespace follows it: `unshare` gets
//! SIGKILL when the thread that started it ends (`setpriv --pdeathsig`), and takes PID 1 with
//! it (`unshare --kill-child`); empty cgroups left behind are removed at the next boot.
//! So a `SystemdNs` belongs to the thread that booted it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const CGROUP_ROOT: &str = "/sys/fs/cgroup/unified";
/// Names are `PREFIX<test process pid>-<n>-<tag>`: a stale one is one whose process is gone.
const PREFIX: &str = "uwsd-";
const BOOT_DEADLINE: Duration = Duration::from_secs(30);
/// Bound on any one command run inside; systemctl waits on jobs, and a hung one must not hang
/// the suite.
const COMMAND_TIMEOUT_SECS: &str = "30";

pub struct SystemdNs {
    pub name: String,
    /// `unshare`, our child; the namespace's PID 1 is its only child.
    unshare: Child,
    /// PID 1 of the namespace, as the host sees it.
    pub pid1: u32,
    cgroup: PathBuf,
    log: PathBuf,
}

impl SystemdNs {
    /// Boots systemd and waits until `systemctl is-system-running` says `running` (or
    /// `degraded`). `work` (on the host file system) receives the boot log and pidfile.
    pub fn boot(tag: &str, work: &Path) -> SystemdNs {
        for tool in [
            "/lib/systemd/systemd",
            "/usr/bin/nsenter",
            "/usr/bin/unshare",
        ] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: apt-get install systemd util-linux"
            );
        }
        remove_stale_namespaces();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("{PREFIX}{}-{n}-{tag}", std::process::id());
        std::fs::create_dir_all(work).unwrap();
        let log = work.join(format!("{name}.log"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/systemd_ns/boot.sh");
        let unshare = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "bash"])
            .arg(&script)
            .arg(&name)
            .arg(work.join(format!("{name}.pid")))
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("setpriv (util-linux) runs boot.sh");
        let mut ns = SystemdNs {
            cgroup: Path::new(CGROUP_ROOT).join(&name),
            name,
            unshare,
            pid1: 0,
            log,
        };
        let deadline = Instant::now() + BOOT_DEADLINE;
        // `bash boot.sh` execs unshare, so our child's PID is unshare's.
        let unshare_pid = ns.unshare.id();
        loop {
            // Before it execs unshare, boot.sh has short-lived children (mkdir) of its own.
            if let Some(pid) = children_of(unshare_pid).into_iter().find(|p| is_pid1(*p)) {
                ns.pid1 = pid;
                break;
            }
            ns.check_alive(deadline, "no PID 1 yet");
            std::thread::sleep(Duration::from_millis(20));
        }
        // PID 1 is bash until it execs systemd; systemctl answers once systemd is up.
        loop {
            let out = ns.exec(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                break;
            }
            ns.check_alive(deadline, &format!("is-system-running: {state:?}"));
            std::thread::sleep(Duration::from_millis(50));
        }
        ns
    }

    /// Panics (with the boot log) if the namespace died or the deadline passed.
    fn check_alive(&mut self, deadline: Instant, waiting_for: &str) {
        if let Ok(Some(status)) = self.unshare.try_wait() {
            panic!(
                "systemd namespace {} exited ({status}) while waiting: {waiting_for}\n{}",
                self.name,
                self.boot_log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "systemd namespace {} not up within {BOOT_DEADLINE:?}: {waiting_for}\n{}",
            self.name,
            self.boot_log()
        );
    }

    pub fn boot_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `argv` inside every namespace of PID 1, with a clean environment.
    pub fn exec(&self, argv: &[&str]) -> Output {
        Command::new("timeout")
            .args([COMMAND_TIMEOUT_SECS, "nsenter", "-t"])
            .arg(self.pid1.to_string())
            .args(["-m", "-p", "-u", "-C", "--"])
            .args(argv)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("SYSTEMD_COLORS", "0")
            .stdin(Stdio::null())
            .output()
            .expect("timeout and nsenter run")
    }

    /// Like [`Self::exec`], and panics with its output unless it succeeds.
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "{argv:?} in {} failed ({}): {}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    pub fn systemctl(&self, args: &[&str]) -> Output {
        let mut argv = vec!["systemctl", "--no-pager"];
        argv.extend_from_slice(args);
        self.exec(&argv)
    }

    pub fn systemctl_ok(&self, args: &[&str]) -> String {
        let mut argv = vec!["systemctl", "--no-pager"];
        argv.extend_from_slice(args);
        self.exec_ok(&argv)
    }

    /// Writes a unit into the namespace's /run/systemd/system and reloads systemd.
    pub fn install_unit(&self, name: &str, text: &str) {
        let path = Path::new("/proc")
            .join(self.pid1.to_string())
            .join("root/run/systemd/system")
            .join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        self.systemctl_ok(&["daemon-reload"]);
    }

    /// `systemctl show` of some properties of a unit.
    pub fn props(&self, unit: &str, names: &[&str]) -> BTreeMap<String, String> {
        let out = self.systemctl_ok(&["show", unit, "-p", &names.join(",")]);
        out.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub fn prop(&self, unit: &str, name: &str) -> String {
        self.props(unit, &[name]).remove(name).unwrap_or_default()
    }

    /// Journal entries (`journalctl -o json` with these arguments: `-u UNIT`, `FIELD=value`).
    pub fn journal(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut argv = vec!["journalctl", "--no-pager", "-o", "json"];
        argv.extend_from_slice(args);
        self.exec_ok(&argv)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for SystemdNs {
    fn drop(&mut self) {
        // Everything in the namespace, in one write; then PID 1 and unshare by PID, in case
        // the write failed.
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        // PID 1 first: unshare is still alive to reap it, so its PID cannot be reused yet.
        if self.pid1 != 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid1 as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        if let Err(e) = remove_cgroup_tree(&self.cgroup, Duration::from_secs(10)) {
            eprintln!("systemd namespace {}: {e}", self.name);
        }
    }
}

/// The PIDs whose parent is `pid` (procps `pgrep -P`; this kernel has no
/// /proc/PID/task/PID/children).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            // The parent is the second field after the `(comm)`, which may contain spaces.
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Whether `pid` is PID 1 of the namespace it lives in (its last `NSpid` is 1).
fn is_pid1(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
            Some(line.split_whitespace().count() > 2 && line.split_whitespace().last()? == "1")
        })
        .unwrap_or(false)
}

/// Removes a cgroup and its children, deepest first, once their processes are gone.
fn remove_cgroup_tree(dir: &Path, within: Duration) -> Result<(), String> {
    fn remove(dir: &Path) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                remove(&entry.path())?;
            }
        }
        match std::fs::remove_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
    let deadline = Instant::now() + within;
    loop {
        match remove(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // EBUSY while a dying process is still in it.
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "cannot remove {} within {within:?}: {e}",
                    dir.display()
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Namespaces of test processes that died without their `Drop` (SIGKILL, abort): their
/// processes are gone with `unshare` (pdeathsig), their cgroups may remain.
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir(CGROUP_ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(owner) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let _ = std::fs::write(entry.path().join("cgroup.kill"), "1");
        let _ = remove_cgroup_tree(&entry.path(), Duration::from_secs(2));
    }
}

//! `kind = "process"`: one process — found by pidfile, exe, comm, command line or systemd
//! unit — is alive, not a zombie, and within its limits (children, RSS, CPU, fds, uptime).
//!
//! Why: on 2009-09-04 Bitbucket's apache was "running" by every `ps` while its prefork workers
//! died one by one (`../shared/incidents/2009-09-04-apache-workers-died.txt`): the worker count
//! was the early signal, hence `min_children`. On 2015-09-02 the OOM killer took processes
//! out (`2015-09-02-oom-rabbitmq-syn-backlog.txt`): a death should be seen when it happens, not
//! a polling cycle later as monit does. So after every check that found the process alive we
//! hold a pidfd for it; the kernel makes it readable the moment the process exits (any
//! process, not only our children, and an unreaped zombie too), [`ProcessProbe::next_event`]
//! completes, the daemon checks at once, and the check reports [`Outcome::dead`].
//!
//! How: everything is read from /proc (stat for state, ppid, CPU ticks, start time and RSS;
//! cmdline, exe, fd) and, for `unit`, from the unit's cgroup (no D-Bus). A process is known by
//! its identity (pid, start time in ticks after boot), never by its pid alone: pids are reused.
//! Selection by exe, name, cmdline or unit takes the *oldest* match (the parent, not its
//! workers), and keeps it while it lives: a process started later can never be older, so the
//! expensive scan of /proc runs only when the process we watched is gone.
//!
//! Semantics worth knowing:
//! - no pidfile, no process, an exited or zombie process: [`Outcome::dead`] (no confirmation);
//! - a pidfile whose pid belongs to a process started more than 2 s after the pidfile was
//!   written (or whose comm changed under the same pid) is stale: a failure that says so;
//! - another identity than the one seen last is reported as "restarted behind our back" — a
//!   failure only when `min_uptime` is violated;
//! - CPU is per cent of one core over the interval since the previous check (no figure on the
//!   first check); children are direct children, counted from the kernel's
//!   `/proc/PID/task/*/children` when it has them, else by a scan of /proc for ppid — that scan
//!   runs only when `min_children` or `max_children` asks for it.

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use super::{Outcome, Phase, human, snippet};
use crate::config::{ProcessCheck, ProcessSelect};

/// A process started this long after its pidfile was written cannot be the one that wrote it.
/// (Start times have tick resolution; daemons write the pidfile right after forking.)
const STALE_GAP: Duration = Duration::from_secs(2);
/// Where systemd's cgroups are; a unit's directory is searched at most this deep below a
/// hierarchy's root (`system.slice/apache2.service` is depth 2; nested slices add a few).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CGROUP_DEPTH: usize = 6;
/// A host with a huge cgroup tree must not turn one check into a long walk.
const CGROUP_MAX_DIRS: usize = 20_000;

/// A process, unambiguously: its pid and when it started (clock ticks after boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    pid: i32,
    start: u64,
}

/// The fields of /proc/PID/stat the probe uses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stat {
    comm: String,
    state: char,
    ppid: i32,
    /// utime + stime, clock ticks.
    cpu_ticks: u64,
    /// Clock ticks after boot.
    start: u64,
    rss_pages: u64,
}

/// What the probe remembers between checks (and `watchdog check` keeps in its state file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Seen {
    id: Identity,
    comm: String,
    cpu_ticks: u64,
    /// CLOCK_BOOTTIME of the check, nanoseconds: comparable across processes on this boot.
    at_ns: u64,
    /// The boot the above belongs to (a snapshot from before a reboot is ignored).
    #[serde(default)]
    boot_id: String,
}

/// The pidfd held for the process seen alive last; `Open` until `next_event` first polls it
/// (registering needs a runtime with I/O, which only the daemon's `next_event` guarantees).
#[derive(Debug, Default)]
enum Watch {
    #[default]
    Idle,
    Open(Identity, OwnedFd),
    Registered(Identity, Arc<AsyncFd<OwnedFd>>),
}

impl Watch {
    fn identity(&self) -> Option<Identity> {
        match self {
            Watch::Idle => None,
            Watch::Open(id, _) | Watch::Registered(id, _) => Some(*id),
        }
    }
}

#[derive(Debug)]
pub struct ProcessProbe {
    check: ProcessCheck,
    seen: Mutex<Option<Seen>>,
    watch: Mutex<Watch>,
    /// Wakes a `next_event` that found nothing to watch once a check arms a pidfd.
    armed: Notify,
    /// The unit's cgroup directory, found once (the search walks the cgroup tree).
    unit_cgroup: Mutex<Option<PathBuf>>,
}

/// How a check ends before the limits are looked at.
enum Found {
    Alive(Identity, Stat, Option<String>),
    /// Failures with their final reasons; `certain` = the kernel says it is gone.
    Gone {
        certain: bool,
        reason: String,
    },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ProcessProbe {
    pub fn new(check: ProcessCheck) -> Self {
        ProcessProbe {
            check,
            seen: Mutex::new(None),
            watch: Mutex::new(Watch::Idle),
            armed: Notify::new(),
            unit_cgroup: Mutex::new(None),
        }
    }

    pub async fn check(&self, phase: &Phase, started: Instant) -> Outcome {
        // Every read below is of /proc or /sys: fast and in memory, fine inline.
        phase.set("reading /proc");
        if !Path::new("/proc/self/stat").exists() {
            self.disarm();
            return Outcome::fail(
                started.elapsed(),
                "unsupported on this host: /proc is not mounted",
            );
        }
        let previous = lock(&self.seen).clone();
        let (id, stat, note) = match self.find(previous.as_ref(), phase) {
            Found::Alive(id, stat, note) => (id, stat, note),
            Found::Gone { certain, reason } => {
                self.disarm();
                return if certain {
                    Outcome::dead(started.elapsed(), reason)
                } else {
                    Outcome::fail(started.elapsed(), reason)
                };
            }
        };
        if matches!(stat.state, 'Z' | 'X' | 'x') {
            // Exited; the parent has not reaped it. Its pidfd is readable for good: drop it, or
            // next_event would fire in a loop.
            self.disarm();
            return Outcome::dead(
                started.elapsed(),
                format!(
                    "pid {} ({}) is a zombie: exited, not reaped by its parent {}",
                    id.pid, stat.comm, stat.ppid
                ),
            );
        }
        phase.set("reading the process's /proc files");
        let now_ns = boottime_ns();
        let figures = self.measure(id, &stat, previous.as_ref(), now_ns);
        *lock(&self.seen) = Some(Seen {
            id,
            comm: stat.comm.clone(),
            cpu_ticks: stat.cpu_ticks,
            at_ns: now_ns,
            boot_id: String::new(),
        });
        phase.set("opening a pidfd");
        self.arm(id);

        let problems = self.limits(&figures);
        let mut reason = String::new();
        if let Some(note) = note {
            reason.push_str(&note);
            reason.push_str("; ");
        }
        if problems.is_empty() {
            reason.push_str(&figures.summary(id.pid));
            Outcome::ok(started.elapsed(), reason)
        } else {
            reason.push_str(&problems.join(", "));
            reason.push_str(" (");
            reason.push_str(&figures.summary(id.pid));
            reason.push(')');
            Outcome::fail(started.elapsed(), reason)
        }
    }

    /// See [`super::Probe::next_event`]: completes when the watched process exits. Cancel-safe
    /// (dropping it changes nothing but an idempotent registration) and once per exit: the
    /// pidfd that fired is dropped, and only a check that finds a live process arms another.
    pub async fn next_event(&self) {
        loop {
            // Created before looking, so an arm between the look and the await is not missed.
            let armed = self.armed.notified();
            let fd = {
                let mut watch = lock(&self.watch);
                match std::mem::take(&mut *watch) {
                    Watch::Idle => None,
                    Watch::Registered(id, fd) => {
                        *watch = Watch::Registered(id, fd.clone());
                        Some(fd)
                    }
                    Watch::Open(id, fd) => match register(fd) {
                        Ok(fd) => {
                            let fd = Arc::new(fd);
                            *watch = Watch::Registered(id, fd.clone());
                            Some(fd)
                        }
                        Err(e) => {
                            // No reactor for it: the schedule still finds the death, later.
                            tracing::debug!(pid = id.pid, "cannot poll a pidfd: {e}");
                            None
                        }
                    },
                }
            };
            let Some(fd) = fd else {
                armed.await;
                continue;
            };
            // Readable = exited. An error from the reactor is treated the same: a check now is
            // the safe answer, and it re-arms (or not) from what it finds.
            let _ = fd.readable().await;
            let mut watch = lock(&self.watch);
            if let Watch::Registered(_, current) = &*watch
                && Arc::ptr_eq(current, &fd)
            {
                *watch = Watch::Idle;
            }
            return;
        }
    }

    /// See [`super::Probe::snapshot`].
    pub fn snapshot(&self) -> Option<serde_json::Value> {
        let mut seen = lock(&self.seen).clone()?;
        seen.boot_id = crate::clock::boot_id();
        serde_json::to_value(seen).ok()
    }

    /// See [`super::Probe::restore`].
    pub fn restore(&self, snapshot: &serde_json::Value) {
        let Ok(seen) = serde_json::from_value::<Seen>(snapshot.clone()) else {
            return;
        };
        // Start times and the boot clock restart with a reboot: such a snapshot means nothing.
        if seen.boot_id.is_empty() || seen.boot_id != crate::clock::boot_id() {
            return;
        }
        *lock(&self.seen) = Some(seen);
    }

    /// Finds the selected process, and says why not when it cannot.
    fn find(&self, previous: Option<&Seen>, phase: &Phase) -> Found {
        let me = std::process::id() as i32;
        let gone = |certain: bool, reason: String| Found::Gone { certain, reason };
        // The process seen last, if it still lives and still fits the selector: nothing started
        // after it can be older, so it is still the oldest match and no scan is needed.
        let kept = || {
            let prev = previous?;
            let stat = read_stat(prev.id.pid)?;
            (stat.start == prev.id.start).then_some((prev.id, stat))
        };
        let exited = |what: &str| match previous {
            Some(prev) => format!("pid {} ({}) exited; {what}", prev.id.pid, prev.comm),
            None => what.to_string(),
        };
        let (id, stat) = match &self.check.select {
            ProcessSelect::Pidfile(path) => {
                let pid = match read_pidfile(path) {
                    Ok(Some(pid)) => pid,
                    Ok(None) => {
                        return gone(true, exited(&format!("no pidfile {}", path.display())));
                    }
                    Err(e) => return gone(false, e),
                };
                let Some(stat) = read_stat(pid) else {
                    return gone(
                        true,
                        match previous {
                            Some(p) if p.id.pid == pid => {
                                format!("pid {pid} ({}) exited", p.comm)
                            }
                            _ => exited(&format!(
                                "no process for pidfile {} (pid {pid})",
                                path.display()
                            )),
                        },
                    );
                };
                let id = Identity {
                    pid,
                    start: stat.start,
                };
                if let Some(why) = stale_pidfile(path, &stat, previous, id) {
                    return gone(false, why);
                }
                (id, stat)
            }
            ProcessSelect::Exe(exe) => match kept().filter(|(id, _)| exe_is(id.pid, exe)) {
                Some(found) => found,
                None => {
                    phase.set("scanning /proc");
                    match oldest(all_pids(), me, |pid| exe_is(pid, exe), |_| true) {
                        Some(found) => found,
                        None => {
                            return gone(
                                true,
                                exited(&format!("no process runs {}", exe.display())),
                            );
                        }
                    }
                }
            },
            ProcessSelect::Name(name) => match kept().filter(|(_, s)| s.comm == *name) {
                Some(found) => found,
                None => {
                    phase.set("scanning /proc");
                    match oldest(all_pids(), me, |_| true, |s| s.comm == *name) {
                        Some(found) => found,
                        None => return gone(true, exited(&format!("no process named {name}"))),
                    }
                }
            },
            ProcessSelect::Cmdline(re) => {
                let mut buf = Vec::with_capacity(256);
                let mut matches = |pid: i32| cmdline_matches(pid, re, &mut buf);
                match kept().filter(|(id, _)| matches(id.pid)) {
                    Some(found) => found,
                    None => {
                        phase.set("scanning /proc");
                        match oldest(all_pids(), me, &mut matches, |_| true) {
                            Some(found) => found,
                            None => {
                                return gone(
                                    true,
                                    exited(&format!("no process's command line matches /{re}/")),
                                );
                            }
                        }
                    }
                }
            }
            ProcessSelect::Unit(unit) => {
                phase.set("reading the unit's cgroup");
                let procs = match self.unit_procs(unit) {
                    Ok(procs) => procs,
                    Err(e) => return gone(false, e),
                };
                match kept().filter(|(id, _)| procs.contains(&id.pid)) {
                    Some(found) => found,
                    None => match oldest(procs.into_iter(), me, |_| true, |_| true) {
                        Some(found) => found,
                        None => {
                            return gone(true, exited(&format!("no process in unit {unit}")));
                        }
                    },
                }
            }
        };
        let note = previous
            .filter(|p| p.id != id)
            .map(|p| format!("restarted behind our back (pid {} → {})", p.id.pid, id.pid));
        Found::Alive(id, stat, note)
    }

    /// The pids in the unit's cgroup (and the cgroups below it), finding the cgroup once.
    fn unit_procs(&self, unit: &str) -> Result<Vec<i32>, String> {
        let mut cached = lock(&self.unit_cgroup);
        if let Some(dir) = cached.as_ref()
            && let Some(procs) = cgroup_procs(dir)
        {
            return Ok(procs);
        }
        *cached = None;
        let dir = find_unit_cgroup(Path::new(CGROUP_ROOT), unit)?;
        let procs = cgroup_procs(&dir).unwrap_or_default();
        *cached = Some(dir);
        Ok(procs)
    }

    fn measure(&self, id: Identity, stat: &Stat, previous: Option<&Seen>, now_ns: u64) -> Figures {
        let ticks = clock_ticks();
        let start_ns = stat.start.saturating_mul(1_000_000_000) / ticks;
        let uptime = Duration::from_nanos(now_ns.saturating_sub(start_ns));
        let cpu_percent = previous.filter(|p| p.id == id).and_then(|p| {
            let elapsed = now_ns.checked_sub(p.at_ns).filter(|ns| *ns > 0)? as f64 / 1e9;
            let used = stat.cpu_ticks.checked_sub(p.cpu_ticks)? as f64 / ticks as f64;
            Some(used / elapsed * 100.0)
        });
        let wants_children = self.check.min_children.is_some() || self.check.max_children.is_some();
        Figures {
            uptime,
            children: count_children(id.pid, wants_children),
            rss: stat.rss_pages.saturating_mul(page_size()),
            cpu_percent,
            fds: count_fds(id.pid),
        }
    }

    fn limits(&self, f: &Figures) -> Vec<String> {
        let c = &self.check;
        let mut problems = Vec::new();
        match f.children {
            Some(n) => {
                if let Some(min) = c.min_children
                    && n < u64::from(min)
                {
                    problems.push(format!("{n} children < min {min}"));
                }
                if let Some(max) = c.max_children
                    && n > u64::from(max)
                {
                    problems.push(format!("{n} children > max {max}"));
                }
            }
            None if c.min_children.is_some() || c.max_children.is_some() => {
                problems.push("children cannot be counted".to_string());
            }
            None => {}
        }
        if let Some(max) = c.max_rss
            && f.rss > max
        {
            problems.push(format!("rss {} > max {}", bytes(f.rss), bytes(max)));
        }
        if let (Some(max), Some(cpu)) = (c.max_cpu_percent, f.cpu_percent)
            && cpu > max
        {
            problems.push(format!("cpu {cpu:.1}% > max {max}%"));
        }
        if let (Some(max), Some(fds)) = (c.max_fds, f.fds)
            && fds > u64::from(max)
        {
            problems.push(format!("{fds} fds > max {max}"));
        }
        if let Some(min) = c.min_uptime
            && f.uptime < min
        {
            problems.push(format!(
                "up {} < min_uptime {} (restarting in a loop?)",
                uptime(f.uptime),
                uptime(min)
            ));
        }
        problems
    }

    /// Holds a pidfd for `id` (kept if already held), so `next_event` sees its exit.
    fn arm(&self, id: Identity) {
        let mut watch = lock(&self.watch);
        if watch.identity() == Some(id) {
            return;
        }
        *watch = Watch::Idle;
        let Some(pid) = rustix::process::Pid::from_raw(id.pid) else {
            return;
        };
        // ENOSYS (kernel < 5.3) or EPERM: no events, the schedule still checks.
        let Ok(fd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else {
            return;
        };
        // The pid may have been reused between our read of stat and the open: the pidfd is ours
        // only if the process under that pid still has our start time.
        if read_stat(id.pid).is_some_and(|s| s.start == id.start) {
            *watch = Watch::Open(id, fd);
            drop(watch);
            self.armed.notify_waiters();
        }
    }

    fn disarm(&self) {
        *lock(&self.watch) = Watch::Idle;
    }
}

/// The deprecated constructor, because its replacement is `unsafe` (denied here). Sound: the
/// AsyncFd owns the OwnedFd, so the fd cannot be closed (and its number reused) while it is
/// registered, and AsyncFd deregisters it before dropping the OwnedFd — the I/O-safety hole
/// tokio#8587 is about (a borrowed fd closed behind the reactor's back) cannot happen.
#[expect(
    deprecated,
    reason = "AsyncFd owns the OwnedFd and deregisters before closing it: sound, and no unsafe"
)]
fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)
}

/// What a check measured.
#[derive(Debug)]
struct Figures {
    uptime: Duration,
    children: Option<u64>,
    rss: u64,
    cpu_percent: Option<f64>,
    fds: Option<u64>,
}

impl Figures {
    /// "pid 812 up 3h2m, 8 children, rss 120 MiB, cpu 3.1%, 45 fds"
    fn summary(&self, pid: i32) -> String {
        let mut s = format!("pid {pid} up {}", uptime(self.uptime));
        if let Some(n) = self.children {
            s.push_str(&format!(", {n} children"));
        }
        s.push_str(&format!(", rss {}", bytes(self.rss)));
        if let Some(cpu) = self.cpu_percent {
            s.push_str(&format!(", cpu {cpu:.1}%"));
        }
        if let Some(n) = self.fds {
            s.push_str(&format!(", {n} fds"));
        }
        s
    }
}

/// Why a pidfile is stale, if it is: its pid belongs to a process that started well after the
/// pidfile was written, or to another program than the one we saw under that pid.
fn stale_pidfile(
    path: &Path,
    stat: &Stat,
    previous: Option<&Seen>,
    id: Identity,
) -> Option<String> {
    let started_after = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|written| {
            let age = Duration::from_nanos(
                boottime_ns()
                    .saturating_sub(stat.start.saturating_mul(1_000_000_000) / clock_ticks()),
            );
            let started = SystemTime::now().checked_sub(age)?;
            started.duration_since(written).ok()
        })
        .filter(|gap| *gap > STALE_GAP);
    if let Some(gap) = started_after {
        return Some(format!(
            "stale pidfile: pid {} is now {}, started after the pidfile was written ({} later; {})",
            id.pid,
            stat.comm,
            human(gap),
            path.display()
        ));
    }
    let prev = previous?;
    (prev.id.pid == id.pid && prev.id.start != id.start && prev.comm != stat.comm).then(|| {
        format!(
            "stale pidfile: pid {} is now {}, was {} ({})",
            id.pid,
            stat.comm,
            prev.comm,
            path.display()
        )
    })
}

/// `Ok(None)`: no pidfile. `Err`: one that does not hold a pid.
fn read_pidfile(path: &Path) -> Result<Option<i32>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read pidfile {}: {e}", path.display())),
    };
    parse_pid(&text).map(Some).ok_or_else(|| {
        format!(
            "pidfile {} does not hold a pid: \"{}\"",
            path.display(),
            snippet(&text, 40)
        )
    })
}

fn parse_pid(text: &[u8]) -> Option<i32> {
    std::str::from_utf8(text)
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
}

/// Parses /proc/PID/stat. The comm may hold spaces and parentheses: it runs from the first
/// '(' to the *last* ')'.
fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let mut f = text.get(close + 1..)?.split_ascii_whitespace();
    // Fields numbered as in proc(5): 3 state, 4 ppid, 14 utime, 15 stime, 22 starttime, 24 rss.
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let mut f = f.skip(9);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    let mut f = f.skip(6);
    let start = f.next()?.parse().ok()?;
    let rss: i64 = f.nth(1)?.parse().ok()?;
    Some(Stat {
        comm,
        state,
        ppid,
        cpu_ticks: utime.saturating_add(stime),
        start,
        rss_pages: rss.max(0) as u64,
    })
}

fn read_stat(pid: i32) -> Option<Stat> {
    let mut buf = [0u8; 1024];
    let n = read_small(&format!("/proc/{pid}/stat"), &mut buf)?;
    parse_stat(std::str::from_utf8(&buf[..n]).ok()?)
}

/// Reads a small file into `buf` (one read: /proc generates stat in one go).
fn read_small(path: &str, buf: &mut [u8]) -> Option<usize> {
    std::fs::File::open(path).ok()?.read(buf).ok()
}

/// The numeric entries of /proc.
fn all_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
}

/// The oldest process among `pids` (not `me`) that passes `pre` (on its pid: the cheap test
/// first, so most of /proc costs one read) and `post` (on its stat), by start time then pid.
fn oldest(
    pids: impl Iterator<Item = i32>,
    me: i32,
    mut pre: impl FnMut(i32) -> bool,
    mut post: impl FnMut(&Stat) -> bool,
) -> Option<(Identity, Stat)> {
    let mut best: Option<(Identity, Stat)> = None;
    for pid in pids.filter(|p| *p != me) {
        if !pre(pid) {
            continue;
        }
        let Some(stat) = read_stat(pid) else { continue };
        let older = best
            .as_ref()
            .is_none_or(|(b, _)| (stat.start, pid) < (b.start, b.pid));
        if older && post(&stat) {
            best = Some((
                Identity {
                    pid,
                    start: stat.start,
                },
                stat,
            ));
        }
    }
    best
}

/// /proc/PID/exe is `path` — also after an upgrade replaced the binary (" (deleted)").
fn exe_is(pid: i32, path: &Path) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
        exe == path
            || exe
                .to_str()
                .and_then(|s| s.strip_suffix(" (deleted)"))
                .is_some_and(|s| Path::new(s) == path)
    })
}

/// The command line, arguments joined by spaces, matches; kernel threads (empty) never do.
fn cmdline_matches(pid: i32, re: &regex::Regex, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    let Ok(file) = std::fs::File::open(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // Long command lines (a JVM's classpath) are cut: the program and its first arguments are
    // what people match.
    if file.take(64 * 1024).read_to_end(buf).is_err() || buf.is_empty() {
        return false;
    }
    let line = join_args(buf);
    re.is_match(&line)
}

fn join_args(raw: &mut [u8]) -> std::borrow::Cow<'_, str> {
    let end = raw.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let raw = &mut raw[..end];
    for b in raw.iter_mut() {
        if *b == 0 {
            *b = b' ';
        }
    }
    String::from_utf8_lossy(raw)
}

/// Direct children: from the kernel's per-thread lists when it keeps them (CONFIG_PROC_CHILDREN),
/// else — only if `scan` — by a walk of /proc for ppid. `None`: not counted.
fn count_children(pid: i32, scan: bool) -> Option<u64> {
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        let mut total = 0;
        let mut listed = false;
        let mut buf = Vec::new();
        for task in tasks.flatten() {
            buf.clear();
            let Ok(mut f) = std::fs::File::open(task.path().join("children")) else {
                continue;
            };
            if f.read_to_end(&mut buf).is_ok() {
                listed = true;
                total += buf
                    .split(|b| b.is_ascii_whitespace())
                    .filter(|w| !w.is_empty())
                    .count() as u64;
            }
        }
        if listed {
            return Some(total);
        }
    }
    scan.then(|| scan_children(pid))
}

/// Direct children by a walk of /proc: one stat read per process on the host.
fn scan_children(pid: i32) -> u64 {
    all_pids()
        .filter(|p| read_stat(*p).is_some_and(|s| s.ppid == pid))
        .count() as u64
}

/// Open fds; `None` when /proc/PID/fd cannot be read (another user's process, not root).
fn count_fds(pid: i32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64)
}

/// The pids listed in a cgroup directory and its descendants; `None` if it is gone.
fn cgroup_procs(dir: &Path) -> Option<Vec<i32>> {
    let mut pids = Vec::new();
    let mut queue = VecDeque::from([(dir.to_path_buf(), 0usize)]);
    let mut first = true;
    while let Some((d, depth)) = queue.pop_front() {
        match std::fs::read_to_string(d.join("cgroup.procs")) {
            Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok())),
            Err(_) if first => return None,
            Err(_) => continue,
        }
        first = false;
        if depth < CGROUP_DEPTH {
            queue.extend(subdirs(&d).map(|s| (s, depth + 1)));
        }
    }
    Some(pids)
}

fn subdirs(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_type().ok()?.is_dir().then(|| e.path())
        })
}

/// The directory named `unit` in a cgroup hierarchy under `root`: cgroup v2 first (`root`
/// itself, or `root/unified` on a hybrid host), then systemd's v1 hierarchy, then any other.
/// Breadth-first, at most [`CGROUP_DEPTH`] deep and [`CGROUP_MAX_DIRS`] directories.
fn find_unit_cgroup(root: &Path, unit: &str) -> Result<PathBuf, String> {
    let mut roots = Vec::new();
    if root.join("cgroup.procs").exists() {
        roots.push(root.to_path_buf());
    } else {
        for name in ["unified", "systemd"] {
            if root.join(name).join("cgroup.procs").exists() {
                roots.push(root.join(name));
            }
        }
        let mut others: Vec<PathBuf> = subdirs(root)
            .filter(|d| !roots.contains(d) && d.join("cgroup.procs").exists())
            .collect();
        others.sort();
        roots.extend(others);
    }
    if roots.is_empty() {
        return Err(format!(
            "unsupported on this host: no cgroup hierarchy under {}",
            root.display()
        ));
    }
    let mut visited = 0;
    let mut empty = None;
    for r in &roots {
        let mut queue = VecDeque::from([(r.clone(), 0usize)]);
        while let Some((dir, depth)) = queue.pop_front() {
            visited += 1;
            if visited > CGROUP_MAX_DIRS {
                return Err(format!(
                    "no cgroup for unit {unit} in the first {CGROUP_MAX_DIRS} cgroups under {}",
                    root.display()
                ));
            }
            for sub in subdirs(&dir) {
                if sub.file_name().is_some_and(|n| n == unit) {
                    // systemd keeps an empty v2 cgroup on some hybrid hosts: prefer a populated one.
                    if cgroup_procs(&sub).is_some_and(|p| !p.is_empty()) {
                        return Ok(sub);
                    }
                    empty.get_or_insert(sub);
                } else if depth + 1 < CGROUP_DEPTH {
                    queue.push_back((sub, depth + 1));
                }
            }
        }
    }
    empty.ok_or_else(|| {
        format!(
            "no cgroup for unit {unit} under {} (not running, or not a systemd unit)",
            root.display()
        )
    })
}

fn boottime_ns() -> u64 {
    crate::clock::now().since_epoch().as_nanos() as u64
}

fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|t| *t > 0)
            .map_or(100, |t| t as u64)
    })
}

fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .filter(|t| *t > 0)
            .map_or(4096, |t| t as u64)
    })
}

/// "3h2m", "4s", "2d3h": two units at most.
fn uptime(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{mins}m")
    } else if mins > 0 {
        format!("{mins}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// "120 MiB", "2.1 GiB", "512 KiB".
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 10.0 {
        format!("{} {}", v.round() as u64, UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_of_a_comm_with_spaces_and_parens() {
        // Linux 6.x, 52 fields; comm "(sd-pam) x)".
        let text = "812 ((sd-pam) x)) S 1 812 812 0 -1 4194560 2951 0 12 0 150 37 0 0 20 0 1 0 \
                    4242 12345678 30720 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 \
                    0 0 0 0 0 0 0 0 0 0 0\n";
        let s = parse_stat(text).expect("parses");
        assert_eq!(s.comm, "(sd-pam) x)");
        assert_eq!((s.state, s.ppid), ('S', 1));
        assert_eq!(s.cpu_ticks, 187);
        assert_eq!(s.start, 4242);
        assert_eq!(s.rss_pages, 30720);
    }

    #[test]
    fn stat_of_an_old_kernel_and_a_zombie() {
        // 2.6.32 has 44 fields; a zombie reports rss 0.
        let text = "77 (apache2) Z 76 76 76 0 -1 4228 0 0 0 0 3 1 0 0 20 0 1 0 999 0 0 \
                    18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let s = parse_stat(text).expect("parses");
        assert_eq!((s.comm.as_str(), s.state, s.ppid), ("apache2", 'Z', 76));
        assert_eq!((s.cpu_ticks, s.start, s.rss_pages), (4, 999, 0));
    }

    #[test]
    fn truncated_stat_is_rejected() {
        assert_eq!(parse_stat("812 (x) S 1 2 3"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn own_stat_is_alive_and_in_the_past() {
        let s = read_stat(std::process::id() as i32).expect("own stat");
        assert!(matches!(s.state, 'R' | 'S'), "{}", s.state);
        let start_ns = s.start * 1_000_000_000 / clock_ticks();
        assert!(start_ns <= boottime_ns());
    }

    #[test]
    fn children_by_kernel_list_and_by_scan_agree() {
        let mut kids: Vec<_> = (0..3)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .unwrap()
            })
            .collect();
        let me = std::process::id() as i32;
        // Other tests in this binary spawn children too: compare both counts at one moment,
        // retried until no spawn or exit falls between the two reads.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (listed, scanned) = loop {
            let (a, b, c) = (
                count_children(me, false),
                scan_children(me),
                count_children(me, false),
            );
            if a == c || Instant::now() > deadline {
                break (a, b);
            }
        };
        for k in &mut kids {
            let _ = k.kill();
            let _ = k.wait();
        }
        assert!(scanned >= 3, "{scanned}");
        // A kernel without CONFIG_PROC_CHILDREN has no list to compare with.
        if let Some(listed) = listed {
            assert_eq!(listed, scanned);
        }
    }

    #[test]
    fn pidfile_contents() {
        assert_eq!(parse_pid(b"1234\n"), Some(1234));
        assert_eq!(parse_pid(b" 77 "), Some(77));
        assert_eq!(parse_pid(b"0"), None);
        assert_eq!(parse_pid(b"-5"), None);
        assert_eq!(parse_pid(b"apache"), None);
    }

    #[test]
    fn args_are_joined_by_spaces() {
        let mut raw = b"/usr/sbin/apache2\0-k\0start\0".to_vec();
        assert_eq!(join_args(&mut raw), "/usr/sbin/apache2 -k start");
        let mut raw = b"nginx: master process /usr/sbin/nginx".to_vec();
        assert_eq!(join_args(&mut raw), "nginx: master process /usr/sbin/nginx");
    }

    #[test]
    fn human_figures() {
        assert_eq!(uptime(Duration::from_secs(3 * 3600 + 125)), "3h2m");
        assert_eq!(uptime(Duration::from_secs(4)), "4s");
        assert_eq!(uptime(Duration::from_secs(2 * 86_400 + 3 * 3600)), "2d3h");
        assert_eq!(bytes(120 << 20), "120 MiB");
        assert_eq!(bytes((21 << 30) / 10), "2.1 GiB");
        assert_eq!(bytes(512), "512 B");
    }

    #[test]
    fn summary_reads_like_the_docs() {
        let f = Figures {
            uptime: Duration::from_secs(3 * 3600 + 120),
            children: Some(8),
            rss: 120 << 20,
            cpu_percent: Some(3.06),
            fds: Some(45),
        };
        assert_eq!(
            f.summary(812),
            "pid 812 up 3h2m, 8 children, rss 120 MiB, cpu 3.1%, 45 fds"
        );
    }

    #[test]
    fn unit_cgroup_in_v2_v1_and_hybrid_layouts() {
        let base = std::env::temp_dir().join(format!("wd-cg-{}", std::process::id()));
        let mk = |p: &str, procs: &str| {
            let d = base.join(p);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cgroup.procs"), procs).unwrap();
        };
        // Hybrid: an empty v2 copy, the populated one in systemd's v1 hierarchy.
        mk("hybrid/unified", "");
        mk("hybrid/unified/system.slice", "");
        mk("hybrid/unified/system.slice/apache2.service", "");
        mk("hybrid/systemd", "1\n");
        mk("hybrid/systemd/system.slice", "");
        mk("hybrid/systemd/system.slice/apache2.service", "812\n813\n");
        mk("hybrid/systemd/system.slice/apache2.service/sub", "900\n");
        // Pure v2.
        mk("v2", "1\n");
        mk("v2/system.slice/nginx.service", "77\n");
        let found = find_unit_cgroup(&base.join("hybrid"), "apache2.service").unwrap();
        assert!(
            found.ends_with("systemd/system.slice/apache2.service"),
            "{found:?}"
        );
        assert_eq!(cgroup_procs(&found), Some(vec![812, 813, 900]));
        let found = find_unit_cgroup(&base.join("v2"), "nginx.service").unwrap();
        assert!(
            found.ends_with("v2/system.slice/nginx.service"),
            "{found:?}"
        );
        let e = find_unit_cgroup(&base.join("v2"), "nope.service").unwrap_err();
        assert!(e.starts_with("no cgroup for unit nope.service"), "{e}");
        std::fs::create_dir_all(base.join("none")).unwrap();
        let e = find_unit_cgroup(&base.join("none"), "x.service").unwrap_err();
        assert!(e.starts_with("unsupported on this host:"), "{e}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}

//! `kind = "memory"`: memory pressure (PSI), available memory, swap and OOM kills, for the
//! whole host or one cgroup.
//!
//! Why: in the 2015-09-02 outage (`../shared/incidents/2015-09-02-oom-rabbitmq-syn-backlog.txt`)
//! the OOM killer took out Redis and RabbitMQ while every application node "looked fine": the
//! only sign was in the kernel. Only systemd-oomd watches memory pressure, and it only kills;
//! we want to page (and remedy) before that, and to say so when a kill did happen.
//!
//! How, on each check (plain reads of /proc, /sys and /dev/kmsg: fast, so done inline):
//! - PSI `some`/`full` avg10 (avg60 in the reason) from /proc/pressure/memory or the cgroup's
//!   `memory.pressure`, against `max_psi_some_avg10` / `max_psi_full_avg10` (systemd-oomd's 60%);
//! - MemAvailable from /proc/meminfo against `min_available` (earlyoom's 10%); for a cgroup,
//!   its limit minus its working set (usage less inactive page cache), never more than the
//!   host has left;
//! - swap used against `max_swap_used` (no swap configured: nothing to check);
//! - OOM kills: the delta of the kernel's `oom_kill` counter (/proc/vmstat, v2 `memory.events`,
//!   v1 `memory.oom_control`) since the previous check. A kill is a fact, not a reading that
//!   could be noise, so it fails with [`Outcome::dead`] (down at once) for exactly one check;
//!   the victim's name comes from the kernel log (/dev/kmsg, read without blocking), when
//!   readable. The first check only takes the baseline; [`MemoryProbe::snapshot`] carries it
//!   (and the last kernel-log sequence number seen) across one-shot `watchdog check` runs.
//!
//! With `psi_trigger`, the kernel itself wakes the daemon (POLLPRI on the pressure file) when
//! the stall threshold is crossed within the window, instead of waiting for the next tick.
//!
//! A metric the host cannot give (no PSI, a cgroup without the memory controller) is skipped
//! and named in the reason as "unsupported on this host"; only when nothing configured can be
//! measured does the check fail, with that reason — never a crash, never a fake alarm.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::{Outcome, Phase};
use crate::config::{Limit, MemoryCheck};

const HOST_PRESSURE: &str = "/proc/pressure/memory";
const MEMINFO: &str = "/proc/meminfo";
const VMSTAT: &str = "/proc/vmstat";
const KMSG: &str = "/dev/kmsg";

/// A busy kernel log could hold many records since the last check; read at most this many per
/// check so a log storm cannot turn a memory check into a long loop.
const MAX_KMSG_RECORDS: usize = 65_536;
/// Victims named in a reason; more are counted, not listed.
const MAX_VICTIMS: usize = 3;

#[derive(Debug)]
pub struct MemoryProbe {
    check: MemoryCheck,
    remembered: Mutex<Remembered>,
    /// Set up on the first [`MemoryProbe::next_event`] (it needs the runtime's reactor, and the
    /// one-shot `watchdog check` never waits for events): `Err` says why we poll instead.
    trigger: OnceLock<Result<AsyncFd<OwnedFd>, String>>,
    /// The trigger's file reported an error or hang-up (its cgroup was removed): stop waiting
    /// on it rather than wake up in a loop.
    trigger_broken: AtomicBool,
}

/// What a check needs from the previous one.
#[derive(Debug, Default)]
struct Remembered {
    /// The `oom_kill` counter at the previous check; `None` until the baseline is taken.
    oom_kills: Option<u64>,
    kmsg: Kmsg,
    /// The last kernel-log record seen (restored from a snapshot, or read).
    kmsg_seq: Option<u64>,
    /// The cgroup's path as the kernel log names it (`/system.slice/redis.service`), found once.
    memcg: Option<Option<String>>,
}

#[derive(Debug, Default)]
enum Kmsg {
    #[default]
    NotOpened,
    Open(File),
    /// Not readable here (no CAP_SYSLOG, no /dev/kmsg): kills are counted, not named.
    Unavailable,
}

impl MemoryProbe {
    pub fn new(check: MemoryCheck) -> Self {
        MemoryProbe {
            check,
            remembered: Mutex::new(Remembered::default()),
            trigger: OnceLock::new(),
            trigger_broken: AtomicBool::new(false),
        }
    }

    pub async fn check(&self, phase: &Phase, started: Instant) -> Outcome {
        // Everything below is a read of /proc, /sys or a non-blocking /dev/kmsg: no awaits.
        let findings = self.measure(phase);
        findings.outcome(started)
    }

    fn measure(&self, phase: &Phase) -> Findings {
        let mut f = Findings::default();
        let c = &self.check;
        let cgroup = match &c.cgroup {
            Some(dir) if !dir.is_dir() => {
                f.fail(format!(
                    "cgroup {} does not exist (is the service running?)",
                    dir.display()
                ));
                return f;
            }
            Some(dir) => Some(Cgroup::detect(dir)),
            None => None,
        };
        let psi_configured = c.max_psi_some_avg10.is_some() || c.max_psi_full_avg10.is_some();
        let mut meminfo = None;
        if c.min_available.is_some() || c.max_swap_used.is_some() {
            phase.set("reading /proc/meminfo");
            meminfo = Some(std::fs::read_to_string(MEMINFO).map(|t| MemInfo::parse(&t)));
        }
        if c.oom_kills {
            phase.set("reading the OOM kill counter");
            self.oom_kills(cgroup.as_ref(), &mut f);
        }
        if psi_configured {
            phase.set("reading memory pressure");
            self.pressure(cgroup.as_ref(), &mut f);
        }
        if let (Some(min), Some(meminfo)) = (&c.min_available, &meminfo) {
            phase.set("reading available memory");
            available(cgroup.as_ref(), meminfo, min, &mut f);
        }
        if let (Some(max), Some(meminfo)) = (&c.max_swap_used, &meminfo) {
            phase.set("reading swap use");
            swap(cgroup.as_ref(), meminfo, max, &mut f);
        }
        if !f.fails.is_empty() {
            phase.set("listing the largest processes");
            f.top = top_rss(cgroup.as_ref().map(|c| c.dir.as_path()), 3);
        }
        f
    }

    fn pressure(&self, cgroup: Option<&Cgroup>, f: &mut Findings) {
        let path = match cgroup {
            Some(cg) => cg.dir.join("memory.pressure"),
            None => PathBuf::from(HOST_PRESSURE),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if is_unsupported(&e) => {
                let why = match cgroup {
                    Some(cg) if cg.version == Some(1) => "cgroup v1 has no PSI",
                    Some(_) => "no PSI for this cgroup",
                    None => "kernel without PSI, or booted with psi=0",
                };
                f.unsupported(format!("PSI: no {} ({why})", path.display()));
                return;
            }
            Err(e) => {
                f.fail(format!("PSI: reading {}: {e}", path.display()));
                return;
            }
        };
        let Some(psi) = Psi::parse(&text) else {
            f.fail(format!(
                "PSI: cannot parse {}: {:?}",
                path.display(),
                super::snippet(text.as_bytes(), 80)
            ));
            return;
        };
        let mut fails = Vec::new();
        if let Some(max) = self.check.max_psi_some_avg10
            && psi.some.avg10 > max
        {
            fails.push(format!(
                "PSI some avg10 {:.2}% > {max}% (avg60 {:.2}%)",
                psi.some.avg10, psi.some.avg60
            ));
        }
        match (self.check.max_psi_full_avg10, &psi.full) {
            (Some(max), Some(full)) if full.avg10 > max => fails.push(format!(
                "PSI full avg10 {:.2}% > {max}% (avg60 {:.2}%)",
                full.avg10, full.avg60
            )),
            (Some(_), None) if self.check.max_psi_some_avg10.is_none() => {
                f.unsupported(format!("PSI: no `full` line in {}", path.display()));
                return;
            }
            _ => {}
        }
        if fails.is_empty() {
            f.ok(psi.summary());
        } else {
            f.fails.extend(fails);
        }
    }

    fn oom_kills(&self, cgroup: Option<&Cgroup>, f: &mut Findings) {
        let (path, key) = match cgroup {
            None => (PathBuf::from(VMSTAT), "oom_kill"),
            Some(cg) if cg.version == Some(1) => (cg.dir.join("memory.oom_control"), "oom_kill"),
            Some(cg) => (cg.dir.join("memory.events"), "oom_kill"),
        };
        let count = match std::fs::read_to_string(&path) {
            Ok(t) => match counter(&t, key) {
                Some(n) => n,
                None => {
                    f.unsupported(format!(
                        "OOM kills: no `{key}` in {} (kernel older than 4.13/4.19)",
                        path.display()
                    ));
                    return;
                }
            },
            Err(e) if is_unsupported(&e) => {
                f.unsupported(format!(
                    "OOM kills: no {} (no memory controller)",
                    path.display()
                ));
                return;
            }
            Err(e) => {
                f.fail(format!("OOM kills: reading {}: {e}", path.display()));
                return;
            }
        };
        let mut r = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        // Read the log at every check, not only after a kill: the position stays current, so a
        // kill's records are few and near, and a log storm between kills is never our backlog.
        let victims = r.read_kmsg(cgroup);
        let previous = r.oom_kills.replace(count);
        let Some(previous) = previous else {
            f.ok(format!("OOM kills: baseline {count}"));
            return;
        };
        // A smaller counter: the cgroup was recreated (a service restart); all its kills are new.
        let new = if count >= previous {
            count - previous
        } else {
            count
        };
        if new == 0 {
            f.ok("no OOM kill");
            return;
        }
        let mut text = format!(
            "{new} OOM kill{} since the previous check",
            if new == 1 { "" } else { "s" }
        );
        match victims {
            Some(v) if !v.is_empty() => {
                let named: Vec<String> = v
                    .iter()
                    .rev()
                    .take(MAX_VICTIMS)
                    .map(|v| format!("{} (pid {})", v.comm, v.pid))
                    .collect();
                text.push_str(": killed ");
                text.push_str(&named.join(", "));
                if v.len() > MAX_VICTIMS {
                    text.push_str(&format!(" and {} more", v.len() - MAX_VICTIMS));
                }
            }
            Some(_) => text.push_str(" (no victim in the kernel log)"),
            None => text.push_str(" (kernel log not readable: victim unknown)"),
        }
        f.fails.push(text);
        f.dead = true;
    }

    /// See [`super::Probe::next_event`]: completes when the PSI trigger fires.
    pub async fn next_event(&self) {
        let Some(trigger) = &self.check.psi_trigger else {
            return std::future::pending().await;
        };
        let fd = self.trigger.get_or_init(|| {
            let path = self.pressure_path();
            arm_trigger(&path, trigger).inspect_err(|e| {
                // Once: the OnceLock runs this at most once per probe.
                tracing::warn!(
                    kind = "memory",
                    "psi_trigger \"{trigger}\" on {} not set up ({e}); checking on the schedule only",
                    path.display()
                );
            })
        });
        let Ok(fd) = fd else {
            return std::future::pending().await;
        };
        if self.trigger_broken.load(Ordering::Relaxed) {
            return std::future::pending().await;
        }
        // `ready` is cancel-safe: dropped, it leaves the readiness where it was, so a firing
        // that races the tick is seen by the next call.
        match fd.ready(Interest::PRIORITY).await {
            Ok(mut guard) => {
                let ready = guard.ready();
                // The registration is edge-triggered; clearing what we saw means the next call
                // waits for the next firing (at most one per window) instead of returning at once.
                guard.clear_ready();
                if ready.is_read_closed() || ready.is_error() {
                    // Error/hang-up readiness is never cleared: waiting again would spin.
                    self.trigger_broken.store(true, Ordering::Relaxed);
                    tracing::warn!(
                        kind = "memory",
                        "the PSI trigger's file reported an error (cgroup removed?); checking on the schedule only"
                    );
                }
            }
            Err(e) => {
                self.trigger_broken.store(true, Ordering::Relaxed);
                tracing::warn!(
                    kind = "memory",
                    "waiting on the PSI trigger failed: {e}; checking on the schedule only"
                );
                std::future::pending::<()>().await
            }
        }
    }

    /// Whether the PSI trigger is armed: `None` before the first [`MemoryProbe::next_event`]
    /// (or without `psi_trigger`), else `Ok` or why not. For `watchdog` diagnostics and tests.
    pub fn trigger_status(&self) -> Option<Result<(), String>> {
        let armed = self.trigger.get()?;
        Some(match armed {
            Ok(_) if self.trigger_broken.load(Ordering::Relaxed) => {
                Err("the trigger's file reported an error".into())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e.clone()),
        })
    }

    fn pressure_path(&self) -> PathBuf {
        match &self.check.cgroup {
            Some(dir) => dir.join("memory.pressure"),
            None => PathBuf::from(HOST_PRESSURE),
        }
    }

    /// See [`super::Probe::snapshot`]: the OOM kill baseline and the kernel-log position.
    pub fn snapshot(&self) -> Option<serde_json::Value> {
        let r = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        let count = r.oom_kills?;
        Some(serde_json::json!({ "oom_kill": count, "kmsg_seq": r.kmsg_seq }))
    }

    /// See [`super::Probe::restore`].
    pub fn restore(&self, snapshot: &serde_json::Value) {
        let mut r = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = snapshot.get("oom_kill").and_then(|v| v.as_u64()) {
            r.oom_kills = Some(n);
        }
        if let Some(seq) = snapshot.get("kmsg_seq").and_then(|v| v.as_u64()) {
            r.kmsg_seq = Some(seq);
        }
    }
}

/// Opens the pressure file, writes the trigger and registers it for POLLPRI.
fn arm_trigger(path: &Path, trigger: &str) -> Result<AsyncFd<OwnedFd>, String> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    // The kernel replaces the last byte written with a NUL: send one, or lose the last digit.
    let mut text = trigger.trim().as_bytes().to_vec();
    text.push(0);
    file.write_all(&text).map_err(|e| {
        format!("the kernel refused it: {e} (windows are 500 ms to 10 s; unprivileged, multiples of 2 s)")
    })?;
    register_priority(OwnedFd::from(file)).map_err(|e| format!("registering with epoll: {e}"))
}

#[expect(
    deprecated,
    reason = "`AsyncFd::register_with_interest`, the replacement, is `unsafe` (we deny unsafe). \
              This use is sound: the AsyncFd owns the OwnedFd, so nothing else can close the fd \
              while it is registered, and AsyncFd deregisters before the fd is dropped."
)]
fn register_priority(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::with_interest(fd, Interest::PRIORITY)
}

impl Remembered {
    /// New OOM victims in the kernel log since the last call, oldest first, limited to the
    /// cgroup when there is one; `None` when the log is not readable here.
    fn read_kmsg(&mut self, cgroup: Option<&Cgroup>) -> Option<Vec<Victim>> {
        // Opened without a position to resume from (no snapshot): what is in the log now is
        // history, read only to learn the last sequence number (so a snapshot can resume
        // exactly there), never reported.
        let mut history = false;
        if matches!(self.kmsg, Kmsg::NotOpened) {
            history = self.kmsg_seq.is_none();
            self.kmsg = match open_kmsg() {
                Ok(f) => Kmsg::Open(f),
                Err(e) => {
                    tracing::debug!(
                        kind = "memory",
                        "{KMSG} not readable ({e}): OOM victims will not be named"
                    );
                    Kmsg::Unavailable
                }
            };
        }
        if let Some(cg) = cgroup
            && self.memcg.is_none()
        {
            self.memcg = Some(memcg_path(&cg.dir));
        }
        let Kmsg::Open(file) = &mut self.kmsg else {
            return None;
        };
        let mut victims = Vec::new();
        let mut buf = [0u8; 8192];
        // The whole buffer once (it is bounded), then at most MAX_KMSG_RECORDS per check.
        let max = if history {
            usize::MAX
        } else {
            MAX_KMSG_RECORDS
        };
        for _ in 0..max {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let Some((seq, message)) = kmsg_record(&buf[..n]) else {
                        continue;
                    };
                    // After a restore the file was opened at the oldest record: skip what the
                    // previous run already saw.
                    if self.kmsg_seq.is_some_and(|last| seq <= last) {
                        continue;
                    }
                    self.kmsg_seq = Some(seq);
                    if let Some(v) = Victim::parse(message) {
                        victims.push(v);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // EPIPE: records were overwritten before we read them; the next read goes on.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => continue,
                Err(_) => break,
            }
        }
        if history {
            victims.clear();
        }
        Some(merge_victims(
            victims,
            self.memcg.as_ref().and_then(|m| m.as_deref()),
            cgroup.is_some(),
        ))
    }
}

/// Opened at the oldest record the kernel still holds.
fn open_kmsg() -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(KMSG)
}

/// `PRIORITY,SEQ,USEC,FLAGS;MESSAGE\n KEY=VALUE...`: the sequence number and first line.
fn kmsg_record(record: &[u8]) -> Option<(u64, &str)> {
    let text = std::str::from_utf8(record).ok().or_else(|| {
        // Messages may hold escaped bytes only, but be lenient: keep the valid prefix.
        std::str::from_utf8(&record[..std::str::from_utf8(record).err()?.valid_up_to()]).ok()
    })?;
    let (prefix, rest) = text.split_once(';')?;
    let seq = prefix.split(',').nth(1)?.parse().ok()?;
    Some((seq, rest.lines().next().unwrap_or("")))
}

/// One OOM victim from the kernel log.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Victim {
    pid: u32,
    comm: String,
    /// The victim's cgroup (`task_memcg=`), on kernels that log it (4.19+).
    memcg: Option<String>,
}

impl Victim {
    /// `oom-kill:constraint=...,task_memcg=/x,task=redis-server,pid=123,uid=0` (4.19+), or
    /// `[Memory cgroup] Out of memory: Killed process 123 (redis-server) total-vm:...`.
    fn parse(line: &str) -> Option<Victim> {
        if let Some(fields) = line.strip_prefix("oom-kill:") {
            let mut v = Victim {
                pid: 0,
                comm: String::new(),
                memcg: None,
            };
            for kv in fields.split(',') {
                match kv.split_once('=') {
                    Some(("task_memcg", m)) => v.memcg = Some(m.to_string()),
                    Some(("task", c)) => v.comm = c.to_string(),
                    Some(("pid", p)) => v.pid = p.parse().ok()?,
                    _ => {}
                }
            }
            return (v.pid != 0).then_some(v);
        }
        let after = &line[line.find("Killed process ")? + "Killed process ".len()..];
        let (pid, rest) = after.split_once(' ')?;
        let comm = rest.strip_prefix('(')?;
        let comm = &comm[..comm.rfind(')')?];
        Some(Victim {
            pid: pid.parse().ok()?,
            comm: comm.to_string(),
            memcg: None,
        })
    }
}

/// One entry per pid (a kill logs both lines), limited to the cgroup `memcg` (as the log names
/// it) when the probe watches one. A victim the log does not place is kept only for the host.
fn merge_victims(all: Vec<Victim>, memcg: Option<&str>, scoped: bool) -> Vec<Victim> {
    let mut out: Vec<Victim> = Vec::new();
    for v in all {
        match out.iter_mut().find(|o| o.pid == v.pid) {
            Some(o) => {
                if o.memcg.is_none() {
                    o.memcg = v.memcg;
                }
            }
            None => out.push(v),
        }
    }
    if scoped {
        out.retain(|v| match (memcg, v.memcg.as_deref()) {
            (Some(ours), Some(theirs)) => {
                let ours = ours.trim_end_matches('/');
                theirs == ours || theirs.starts_with(&format!("{ours}/")) || ours.is_empty()
            }
            // We could not place our cgroup in its hierarchy: keep what the log places.
            (None, Some(_)) => true,
            (_, None) => false,
        });
    }
    out
}

/// The cgroup's path inside its hierarchy (what the kernel log prints), from mountinfo.
fn memcg_path(dir: &Path) -> Option<String> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        let (root, mount) = (*fields.get(3)?, Path::new(fields.get(4)?));
        if let Ok(rel) = dir.strip_prefix(mount) {
            let depth = mount.components().count();
            if best.as_ref().is_none_or(|(d, _)| depth > *d) {
                let joined = Path::new(root).join(rel);
                best = Some((depth, joined.display().to_string()));
            }
        }
    }
    best.map(|(_, p)| p)
}

/// A cgroup directory and which memory interface it has.
struct Cgroup {
    dir: PathBuf,
    /// 1: v1 memory controller; 2: v2 with the memory controller; None: neither (a v2 group
    /// without the memory controller enabled, or a v1 directory of another controller).
    version: Option<u8>,
}

impl Cgroup {
    fn detect(dir: &Path) -> Cgroup {
        let version = if dir.join("memory.usage_in_bytes").exists() {
            Some(1)
        } else if dir.join("memory.current").exists() {
            Some(2)
        } else {
            None
        };
        Cgroup {
            dir: dir.to_path_buf(),
            version,
        }
    }

    fn no_controller(&self, what: &str) -> String {
        format!(
            "{what}: no memory controller in {} (no memory.current or memory.usage_in_bytes)",
            self.dir.display()
        )
    }
}

fn available(
    cgroup: Option<&Cgroup>,
    meminfo: &io::Result<MemInfo>,
    min: &Limit,
    f: &mut Findings,
) {
    let host = match meminfo {
        Ok(m) => m,
        Err(e) => {
            f.fail(format!("available memory: reading {MEMINFO}: {e}"));
            return;
        }
    };
    let (Some(mem_total), Some(mem_available)) = (host.mem_total, host.mem_available) else {
        f.unsupported(format!(
            "available memory: no MemAvailable in {MEMINFO} (kernel older than 3.14)"
        ));
        return;
    };
    let (avail, total, of) = match cgroup {
        None => (mem_available, mem_total, "MemTotal"),
        Some(cg) => {
            let read = |name: &str| std::fs::read_to_string(cg.dir.join(name));
            let (usage, limit, stat_key) = match cg.version {
                Some(1) => (
                    read("memory.usage_in_bytes"),
                    read("memory.limit_in_bytes"),
                    "total_inactive_file",
                ),
                Some(_) => (read("memory.current"), read("memory.max"), "inactive_file"),
                None => {
                    f.unsupported(cg.no_controller("available memory"));
                    return;
                }
            };
            let (Ok(usage), Ok(limit)) = (usage, limit) else {
                f.unsupported(format!(
                    "available memory: the memory usage files of {} are not readable",
                    cg.dir.display()
                ));
                return;
            };
            let usage: u64 = usage.trim().parse().unwrap_or(0);
            // "max" (v2) or a huge page-rounded number (v1) means no limit: the host's memory
            // is the cgroup's limit.
            let limit = limit.trim().parse::<u64>().unwrap_or(u64::MAX);
            // Inactive page cache is reclaimed before anyone is OOM-killed: not "used".
            let inactive = read("memory.stat")
                .ok()
                .and_then(|t| counter(&t, stat_key))
                .unwrap_or(0);
            let working_set = usage.saturating_sub(inactive);
            if limit >= mem_total {
                (mem_available, mem_total, "MemTotal, no cgroup limit")
            } else {
                let avail = limit.saturating_sub(working_set).min(mem_available);
                (avail, limit, "cgroup limit")
            }
        }
    };
    let floor = min.of(total);
    let pct = percent(avail, total);
    if avail < floor {
        f.fails.push(format!(
            "available {} < min {} ({pct:.1}% of {} {of})",
            bytes(avail),
            show_limit(min, total),
            bytes(total)
        ));
    } else {
        f.ok(format!(
            "available {} ({pct:.1}% of {}), min {}",
            bytes(avail),
            bytes(total),
            show_limit(min, total)
        ));
    }
}

fn swap(cgroup: Option<&Cgroup>, meminfo: &io::Result<MemInfo>, max: &Limit, f: &mut Findings) {
    let host = match meminfo {
        Ok(m) => m,
        Err(e) => {
            f.fail(format!("swap: reading {MEMINFO}: {e}"));
            return;
        }
    };
    let (Some(swap_total), Some(swap_free)) = (host.swap_total, host.swap_free) else {
        f.unsupported(format!("swap: no SwapTotal in {MEMINFO}"));
        return;
    };
    if swap_total == 0 {
        f.ok("no swap");
        return;
    }
    let (used, total) = match cgroup {
        None => (swap_total.saturating_sub(swap_free), swap_total),
        Some(cg) => {
            let read = |name: &str| -> Option<u64> {
                std::fs::read_to_string(cg.dir.join(name))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            };
            let used = match cg.version {
                Some(1) => read("memory.memsw.usage_in_bytes")
                    .zip(read("memory.usage_in_bytes"))
                    .map(|(memsw, mem)| memsw.saturating_sub(mem)),
                Some(_) => read("memory.swap.current"),
                None => {
                    f.unsupported(cg.no_controller("swap"));
                    return;
                }
            };
            let Some(used) = used else {
                f.unsupported(format!(
                    "swap: no swap accounting in {} (swapaccount=0?)",
                    cg.dir.display()
                ));
                return;
            };
            let cap = if cg.version == Some(2) {
                read("memory.swap.max").unwrap_or(u64::MAX)
            } else {
                u64::MAX
            };
            (used, cap.min(swap_total))
        }
    };
    let ceiling = max.of(total);
    let pct = percent(used, total);
    if used > ceiling {
        f.fails.push(format!(
            "swap used {} > max {} ({pct:.1}% of {})",
            bytes(used),
            show_limit(max, total),
            bytes(total)
        ));
    } else {
        f.ok(format!(
            "swap used {} ({pct:.1}% of {})",
            bytes(used),
            bytes(total)
        ));
    }
}

/// What one check found, metric by metric.
#[derive(Debug, Default)]
struct Findings {
    fails: Vec<String>,
    oks: Vec<String>,
    unsupported: Vec<String>,
    /// An OOM kill: certain, no confirmation needed.
    dead: bool,
    top: Vec<(String, u64)>,
}

impl Findings {
    fn fail(&mut self, text: impl Into<String>) {
        self.fails.push(text.into());
    }

    fn ok(&mut self, text: impl Into<String>) {
        self.oks.push(text.into());
    }

    fn unsupported(&mut self, text: impl Into<String>) {
        self.unsupported.push(text.into());
    }

    fn outcome(self, started: Instant) -> Outcome {
        let latency = started.elapsed();
        if self.fails.is_empty() && self.oks.is_empty() {
            if self.unsupported.is_empty() {
                return Outcome::fail(latency, "no memory metric configured");
            }
            return Outcome::fail(
                latency,
                format!("unsupported on this host: {}", self.unsupported.join("; ")),
            );
        }
        let mut parts = self.fails.clone();
        parts.extend(self.oks);
        if !self.unsupported.is_empty() {
            parts.push(format!(
                "skipped, unsupported on this host: {}",
                self.unsupported.join("; ")
            ));
        }
        if !self.top.is_empty() {
            let top: Vec<String> = self
                .top
                .iter()
                .map(|(comm, rss)| format!("{comm} {}", bytes(*rss)))
                .collect();
            parts.push(format!("top: {}", top.join(", ")));
        }
        let reason = parts.join("; ");
        match (self.fails.is_empty(), self.dead) {
            (true, _) => Outcome::ok(latency, reason),
            (false, true) => Outcome::dead(latency, reason),
            (false, false) => Outcome::fail(latency, reason),
        }
    }
}

/// One line of a PSI file.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PsiLine {
    avg10: f64,
    avg60: f64,
    avg300: f64,
    /// Microseconds stalled; absent on the first PSI kernels' formats.
    total: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Psi {
    some: PsiLine,
    /// Absent for some resources and kernels (CPU before 5.13); memory always had it, but a
    /// file without it is still read.
    full: Option<PsiLine>,
}

impl Psi {
    fn parse(text: &str) -> Option<Psi> {
        let mut some = None;
        let mut full = None;
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let slot = match words.next() {
                Some("some") => &mut some,
                Some("full") => &mut full,
                _ => continue,
            };
            let (mut avg10, mut avg60, mut avg300, mut total) = (None, None, None, None);
            for kv in words {
                match kv.split_once('=') {
                    Some(("avg10", v)) => avg10 = v.parse().ok(),
                    Some(("avg60", v)) => avg60 = v.parse().ok(),
                    Some(("avg300", v)) => avg300 = v.parse().ok(),
                    Some(("total", v)) => total = v.parse().ok(),
                    _ => {}
                }
            }
            *slot = Some(PsiLine {
                avg10: avg10?,
                avg60: avg60?,
                avg300: avg300?,
                total,
            });
        }
        Some(Psi { some: some?, full })
    }

    fn summary(&self) -> String {
        match &self.full {
            Some(full) => format!(
                "PSI some {:.2}% full {:.2}% (avg10; avg60 {:.2}%/{:.2}%)",
                self.some.avg10, full.avg10, self.some.avg60, full.avg60
            ),
            None => format!(
                "PSI some {:.2}% (avg10; avg60 {:.2}%)",
                self.some.avg10, self.some.avg60
            ),
        }
    }
}

/// The few /proc/meminfo fields we use, in bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct MemInfo {
    mem_total: Option<u64>,
    mem_available: Option<u64>,
    swap_total: Option<u64>,
    swap_free: Option<u64>,
}

impl MemInfo {
    fn parse(text: &str) -> MemInfo {
        let mut m = MemInfo::default();
        for line in text.lines() {
            let Some((key, rest)) = line.split_once(':') else {
                continue;
            };
            let slot = match key {
                "MemTotal" => &mut m.mem_total,
                "MemAvailable" => &mut m.mem_available,
                "SwapTotal" => &mut m.swap_total,
                "SwapFree" => &mut m.swap_free,
                _ => continue,
            };
            let mut words = rest.split_whitespace();
            let n: Option<u64> = words.next().and_then(|n| n.parse().ok());
            let unit = match words.next() {
                Some("kB") => 1024,
                _ => 1,
            };
            *slot = n.map(|n| n * unit);
        }
        m
    }
}

/// `key N` lines (vmstat, memory.events, memory.oom_control, memory.stat).
fn counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The `n` largest resident sets, in the cgroup or on the host: who to blame.
fn top_rss(cgroup: Option<&Path>, n: usize) -> Vec<(String, u64)> {
    let pids: Vec<u32> = match cgroup {
        Some(dir) => std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect(),
        None => match std::fs::read_dir("/proc") {
            Ok(entries) => entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect(),
            Err(_) => Vec::new(),
        },
    };
    let page = procfs::page_size();
    let mut all: Vec<(String, u64)> = pids
        .into_iter()
        .filter_map(|pid| {
            let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
            let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            Some((comm.trim().to_string(), pages * page))
        })
        .filter(|(_, rss)| *rss > 0)
        .collect();
    all.sort_by_key(|e| std::cmp::Reverse(e.1));
    all.truncate(n);
    all
}

/// A missing file or a kernel that has the file but not the feature (PSI with psi=0).
fn is_unsupported(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || e.raw_os_error() == Some(nix::errno::Errno::EOPNOTSUPP as i32)
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn show_limit(l: &Limit, total: u64) -> String {
    match l {
        Limit::Absolute(v) => bytes(*v),
        Limit::Percent(p) => format!("{p}% = {}", bytes(l.of(total))),
    }
}

/// `512 B`, `800 MiB`, `3.1 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_current_kernel_format() {
        let p = Psi::parse(
            "some avg10=12.50 avg60=3.25 avg300=0.80 total=123456\nfull avg10=61.00 avg60=1.00 avg300=0.00 total=99\n",
        )
        .unwrap();
        assert_eq!(p.some.avg10, 12.5);
        assert_eq!(p.some.avg60, 3.25);
        assert_eq!(p.some.total, Some(123456));
        assert_eq!(p.full.unwrap().avg10, 61.0);
        assert_eq!(
            p.summary(),
            "PSI some 12.50% full 61.00% (avg10; avg60 3.25%/1.00%)"
        );
    }

    #[test]
    fn psi_without_full_or_total() {
        // The CPU file before 5.13 (no `full`), and the first PSI patches (no `total=`).
        let p = Psi::parse("some avg10=0.00 avg60=0.10 avg300=0.20\n").unwrap();
        assert_eq!(p.full, None);
        assert_eq!(p.some.total, None);
        assert_eq!(p.some.avg300, 0.2);
        // Unknown fields and lines are ignored, a missing average is not guessed.
        let p = Psi::parse("some avg10=1.00 avg60=2.00 avg300=3.00 total=4 new=5\nother x\n");
        assert_eq!(p.unwrap().some.avg10, 1.0);
        assert_eq!(Psi::parse("some avg10=1.00 total=4\n"), None);
        assert_eq!(Psi::parse(""), None);
    }

    #[test]
    fn psi_of_this_host_parses() {
        match std::fs::read_to_string(HOST_PRESSURE) {
            Ok(text) => {
                let p = Psi::parse(&text).expect(&text);
                assert!((0.0..=100.0).contains(&p.some.avg10));
                assert!(p.full.is_some(), "memory PSI always has `full`: {text}");
            }
            Err(e) => assert!(is_unsupported(&e), "{e}"),
        }
    }

    #[test]
    fn meminfo_in_bytes() {
        let m = MemInfo::parse(
            "MemTotal:       24683656 kB\nMemFree:         7739916 kB\nMemAvailable:   23659236 kB\nSwapTotal:             0 kB\nSwapFree:              0 kB\nHugePages_Total:       0\n",
        );
        assert_eq!(m.mem_total, Some(24683656 * 1024));
        assert_eq!(m.mem_available, Some(23659236 * 1024));
        assert_eq!(m.swap_total, Some(0));
        // Before 3.14 there was no MemAvailable.
        assert_eq!(MemInfo::parse("MemTotal: 100 kB\n").mem_available, None);
        let host = MemInfo::parse(&std::fs::read_to_string(MEMINFO).unwrap());
        assert!(host.mem_available.unwrap() <= host.mem_total.unwrap());
    }

    #[test]
    fn counters() {
        let vmstat = "oom_kill_other 9\noom_kill 3\npgfault 10\n";
        assert_eq!(counter(vmstat, "oom_kill"), Some(3));
        assert_eq!(
            counter("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", "oom_kill"),
            Some(2)
        );
        // v2 memory.events and a v1 oom_control from before 4.19 (no oom_kill line).
        assert_eq!(
            counter(
                "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n",
                "oom_kill"
            ),
            Some(1)
        );
        assert_eq!(
            counter("oom_kill_disable 0\nunder_oom 0\n", "oom_kill"),
            None
        );
        assert!(counter(&std::fs::read_to_string(VMSTAT).unwrap(), "oom_kill").is_some());
    }

    #[test]
    fn kmsg_records_and_victims() {
        let (seq, msg) = kmsg_record(b"6,418,2728122766,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/a/exp1,task_memcg=/a/exp1,task=python3,pid=9136,uid=0\n").unwrap();
        assert_eq!(seq, 418);
        assert_eq!(
            Victim::parse(msg),
            Some(Victim {
                pid: 9136,
                comm: "python3".into(),
                memcg: Some("/a/exp1".into())
            })
        );
        let (_, msg) = kmsg_record(b"3,419,2728122796,-;Memory cgroup out of memory: Killed process 9136 (python3) total-vm:426168kB, anon-rss:204288kB\n SUBSYSTEM=x\n").unwrap();
        assert_eq!(Victim::parse(msg).unwrap().comm, "python3");
        // Host-wide OOM on a 4.x kernel; a comm with spaces and parentheses.
        let old = "Out of memory: Killed process 77 (Web (Content)) total-vm:1kB";
        assert_eq!(Victim::parse(old).unwrap().comm, "Web (Content)");
        assert_eq!(
            Victim::parse("python3 invoked oom-killer: gfp_mask=0xcc0"),
            None
        );
        assert_eq!(kmsg_record(b"garbage"), None);
    }

    #[test]
    fn victims_are_merged_and_scoped() {
        let v = |pid, memcg: Option<&str>| Victim {
            pid,
            comm: format!("p{pid}"),
            memcg: memcg.map(String::from),
        };
        let all = vec![
            v(1, Some("/svc/redis")),
            v(1, None),
            v(2, Some("/svc/redis/child")),
            v(3, Some("/svc/redis2")),
            v(4, None),
        ];
        let scoped = merge_victims(all.clone(), Some("/svc/redis"), true);
        assert_eq!(scoped.iter().map(|v| v.pid).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(merge_victims(all, None, false).len(), 4);
    }

    #[test]
    fn reasons() {
        let t = Instant::now();
        let mut f = Findings::default();
        f.unsupported("PSI: no /x/memory.pressure (cgroup v1 has no PSI)");
        let o = f.outcome(t);
        assert!(!o.ok);
        assert_eq!(
            o.reason,
            "unsupported on this host: PSI: no /x/memory.pressure (cgroup v1 has no PSI)"
        );

        let mut f = Findings::default();
        f.ok("no swap");
        f.unsupported("OOM kills: no memory.events");
        let o = f.outcome(t);
        assert!(o.ok);
        assert_eq!(
            o.reason,
            "no swap; skipped, unsupported on this host: OOM kills: no memory.events"
        );

        let mut f = Findings::default();
        f.ok("no swap");
        f.fails.push("1 OOM kill since the previous check".into());
        f.dead = true;
        f.top = vec![("java".into(), 3 << 30)];
        let o = f.outcome(t);
        assert_eq!(o.verdict(), crate::health::Verdict::Dead);
        assert_eq!(
            o.reason,
            "1 OOM kill since the previous check; no swap; top: java 3.0 GiB"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(800 << 20), "800 MiB");
        assert_eq!(bytes(3 << 30 | 100 << 20), "3.1 GiB");
        assert_eq!(show_limit(&Limit::Percent(10.0), 10 << 30), "10% = 1.0 GiB");
    }

    #[test]
    fn cgroup_paths_from_mountinfo() {
        // Our own memory cgroup, as the kernel log would name it.
        let Ok(me) = std::fs::read_to_string("/proc/self/cgroup") else {
            return;
        };
        let path = me.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        });
        if let Some(path) = path {
            let dir = PathBuf::from(format!("/sys/fs/cgroup/memory{path}"));
            if dir.is_dir() {
                assert_eq!(memcg_path(&dir).as_deref(), Some(path.as_str()));
            }
        }
    }
}

//! `kind = "signal"`: stop the process in a pidfile — TERM (or the configured signal), wait
//! `kill_after`, KILL — then run the optional `start` program.
//!
//! The process is addressed through a pidfd: once opened, it names that process and no other,
//! so a pid reused between our checks is never signalled. Before opening it we also refuse a
//! pid whose process started *after* the pidfile was written: that pidfile is stale and the pid
//! now belongs to an unrelated program.
//!
//! Identity is (pid, start time), read right after the pidfile: if the process at that pid
//! has another start time once the pidfd is open, the pid was reused in between, and nothing is
//! signalled. With `process_group = true` every member of the process's group is signalled,
//! each through its own pidfd opened the same careful way (see `group`).

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use rustix::process::{Pid, PidfdFlags, pidfd_open, pidfd_send_signal};

use super::command;

/// `process_group = true`: the daemon and its workers, member by member.
mod group;
use crate::config::SignalAction;
use crate::probe::human;

/// How long to wait for a SIGKILLed process to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

pub async fn run(spec: &SignalAction, env: &[(String, String)]) -> Result<String, String> {
    let stopped = stop(spec).await?;
    match &spec.start {
        None => Ok(stopped),
        Some(argv) => match command::run(argv, env, spec.timeout).await {
            Ok(out) => Ok(format!("{stopped}; start: {out}")),
            Err(e) => Err(format!("{stopped}; start failed: {e}")),
        },
    }
}

/// Stops the process; `Ok` also when there was nothing to stop (a crash left no process).
async fn stop(spec: &SignalAction) -> Result<String, String> {
    let pidfile = &spec.pidfile;
    let pid = match read_pidfile(pidfile) {
        Ok(Some(pid)) => pid,
        Ok(None) => return Ok(format!("no pidfile {}: nothing to stop", pidfile.display())),
        Err(e) => return Err(e),
    };
    // The identity of the process we mean: its start time, read now. Read after the pidfile and
    // checked again once the pidfd is open (`open_identified`).
    let Some(start_ticks) = start_ticks(pid) else {
        return Ok(format!(
            "pid {pid} from {} is not running",
            pidfile.display()
        ));
    };
    if let Some(stale) = started_after_pidfile(pid, pidfile) {
        return Ok(format!(
            "pidfile {} is stale ({stale}): not signalling pid {pid}",
            pidfile.display()
        ));
    }
    let Some(raw) = Pid::from_raw(pid) else {
        return Err(format!("pidfile {} holds pid {pid}", pidfile.display()));
    };
    let pidfd = match open_identified(raw, start_ticks)? {
        Target::Open(fd) => fd,
        Target::Gone(why) => return Ok(format!("{why} (pidfile {})", pidfile.display())),
    };
    if spec.process_group {
        return group::stop(spec, pid, pidfd).await;
    }
    // Opened on a zombie (dead, not yet reaped by its parent), the pidfd is already "exited":
    // say so rather than claim our signal stopped it.
    if is_zombie(pid) {
        return Ok(format!(
            "pid {pid} had already exited (a zombie, not yet reaped)"
        ));
    }
    let signal = rustix::process::Signal::from_named_raw(spec.signal as i32)
        .ok_or_else(|| format!("{} cannot be sent", spec.signal))?;
    let started = Instant::now();
    match pidfd_send_signal(&pidfd, signal) {
        Ok(()) => {}
        Err(rustix::io::Errno::SRCH) => {
            return Ok(format!("pid {pid} exited before {}", spec.signal));
        }
        Err(e) => return Err(format!("cannot send {} to pid {pid}: {e}", spec.signal)),
    }
    let (pidfd, exited) = wait_exit(pidfd, spec.kill_after).await?;
    if exited {
        return Ok(format!(
            "sent {} to pid {pid}, exited after {}",
            spec.signal,
            human(started.elapsed())
        ));
    }
    match pidfd_send_signal(&pidfd, rustix::process::Signal::KILL) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(e) => return Err(format!("cannot SIGKILL pid {pid}: {e}")),
    }
    let (_, exited) = wait_exit(pidfd, KILL_WAIT).await?;
    if exited {
        Ok(format!(
            "sent {} to pid {pid}, still running after {}, SIGKILL; gone after {}",
            spec.signal,
            human(spec.kill_after),
            human(started.elapsed())
        ))
    } else {
        Err(format!(
            "pid {pid} survived SIGKILL for {} (stuck in the kernel?)",
            human(KILL_WAIT)
        ))
    }
}

/// Waits until the pidfd is readable (the process exited) or `timeout` passes. poll(2) runs on
/// the blocking pool: registering a pidfd with tokio's reactor needs `unsafe` in tokio 1.54.
async fn wait_exit(pidfd: OwnedFd, timeout: Duration) -> Result<(OwnedFd, bool), String> {
    let joined = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = rustix::event::Timespec::try_from(left).unwrap_or(rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            });
            let mut fds = [rustix::event::PollFd::new(
                &pidfd,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(n) if n > 0 => return (pidfd, true),
                Ok(_) => return (pidfd, false),
                Err(rustix::io::Errno::INTR) if !left.is_zero() => continue,
                Err(_) => return (pidfd, false),
            }
        }
    })
    .await;
    joined.map_err(|e| format!("waiting for the process failed: {e}"))
}

/// What [`open_identified`] found at a pid.
enum Target {
    /// A pidfd on the very process we meant.
    Open(OwnedFd),
    /// It is gone, or the pid now names another process: why, for the result.
    Gone(String),
}

/// Opens a pidfd on `pid` if it still names the process that started at `start_ticks`.
///
/// The pidfd names whatever process held the pid when it was opened. If that is still our
/// process afterwards (same start time in /proc), it held the pid all along and the pidfd is
/// its; signals through it can then never reach a later process with the same pid.
fn open_identified(pid: Pid, start_ticks: u64) -> Result<Target, String> {
    let n = pid.as_raw_nonzero().get();
    let pidfd = match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => {
            return Ok(Target::Gone(format!("pid {n} is not running")));
        }
        Err(e) => return Err(format!("cannot open pid {n}: {e}")),
    };
    match self::start_ticks(n) {
        Some(t) if t == start_ticks => Ok(Target::Open(pidfd)),
        Some(t) => Ok(Target::Gone(format!(
            "pid {n} was reused: its process started at tick {t}, not {start_ticks}; not signalled"
        ))),
        None => Ok(Target::Gone(format!("pid {n} exited"))),
    }
}

/// Start time of a process in clock ticks after boot (/proc/PID/stat field 22): with the pid,
/// the identity of a process, since a pid is reused only after its process is gone.
fn start_ticks(pid: i32) -> Option<u64> {
    stat_field(pid, 19)
}

/// The process group of `pid` (/proc/PID/stat field 5).
fn process_group_of(pid: i32) -> Option<i32> {
    stat_field(pid, 2)
}

/// Field `n` of /proc/PID/stat counted from the state (field 3), after the command name, which
/// may contain spaces and parentheses.
fn stat_field<T: std::str::FromStr>(pid: i32, n: usize) -> Option<T> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(n)?
        .parse()
        .ok()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rfind(')')
                .map(|i| stat[i + 1..].trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// `Ok(None)`: no pidfile. `Err`: a pidfile that does not hold a pid.
fn read_pidfile(path: &Path) -> Result<Option<i32>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read pidfile {}: {e}", path.display())),
    };
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 1 => Ok(Some(pid)),
        _ => Err(format!(
            "pidfile {} does not hold a pid: {:?}",
            path.display(),
            crate::probe::snippet(text.as_bytes(), 40)
        )),
    }
}

/// If `pid`'s process started more than 2 s after the pidfile was last written, the pidfile
/// cannot be its own: returns why. `None` when it may be, or when we cannot tell.
fn started_after_pidfile(pid: i32, pidfile: &Path) -> Option<String> {
    let written = std::fs::metadata(pidfile).ok()?.modified().ok()?;
    let started = process_start_time(pid)?;
    let gap = started.duration_since(written).ok()?;
    (gap > Duration::from_secs(2)).then(|| {
        format!(
            "pid {pid} started {} after the pidfile was written",
            human(gap)
        )
    })
}

/// Wall-clock start time of a process, from /proc/PID/stat (ticks after boot) and /proc/stat's
/// btime. Accurate to a tick (10 ms), plenty to tell "written before" from "started after".
fn process_start_time(pid: i32) -> Option<SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    let start_ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()??
        .max(1) as u64;
    let since_boot = Duration::from_millis(start_ticks * 1000 / ticks);
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(btime) + since_boot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_a_start_time_in_the_past() {
        let t = process_start_time(std::process::id() as i32).expect("start time");
        assert!(t <= SystemTime::now());
    }

    /// A real child: opened when its identity matches, refused when the start time read
    /// before opening is another process's (what a pid reused in between looks like), and
    /// "not running" once it is reaped.
    #[test]
    fn a_pid_is_opened_only_with_its_own_start_time() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let n = child.id() as i32;
        let pid = Pid::from_raw(n).unwrap();
        let start = start_ticks(n).expect("start time");
        assert!(matches!(open_identified(pid, start), Ok(Target::Open(_))));
        match open_identified(pid, start - 1) {
            Ok(Target::Gone(why)) => assert!(why.contains("was reused"), "{why}"),
            _ => panic!("a changed start time was not refused"),
        }
        child.kill().unwrap();
        child.wait().unwrap();
        match open_identified(pid, start) {
            // Or, on a busy machine, already another process's: refused either way.
            Ok(Target::Gone(why)) => assert!(
                why.contains("not running") || why.contains("was reused"),
                "{why}"
            ),
            _ => panic!("a reaped pid was opened"),
        }
    }

    #[test]
    fn pidfile_contents() {
        let dir = std::env::temp_dir().join(format!("wd-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.pid");
        assert_eq!(read_pidfile(&p), Ok(None));
        std::fs::write(&p, "1234\n").unwrap();
        assert_eq!(read_pidfile(&p), Ok(Some(1234)));
        std::fs::write(&p, "garbage").unwrap();
        assert!(
            read_pidfile(&p)
                .unwrap_err()
                .contains("does not hold a pid")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

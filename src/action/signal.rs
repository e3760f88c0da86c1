//! `kind = "signal"`: stop the process in a pidfile — TERM (or the configured signal), wait
//! `kill_after`, KILL — then run the optional `start` program.
//!
//! The process is addressed through a pidfd: once opened, it names that process and no other,
//! so a pid reused between our checks is never signalled. Before opening it we also refuse a
//! pid whose process started *after* the pidfile was written: that pidfile is stale and the pid
//! now belongs to an unrelated program.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use rustix::process::{Pid, PidfdFlags, pidfd_open, pidfd_send_signal};

use super::command;
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
    if let Some(stale) = started_after_pidfile(pid, pidfile) {
        return Ok(format!(
            "pidfile {} is stale ({stale}): not signalling pid {pid}",
            pidfile.display()
        ));
    }
    let Some(raw) = Pid::from_raw(pid) else {
        return Err(format!("pidfile {} holds pid {pid}", pidfile.display()));
    };
    let pidfd = match pidfd_open(raw, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => {
            return Ok(format!(
                "pid {pid} from {} is not running",
                pidfile.display()
            ));
        }
        Err(e) => return Err(format!("cannot open pid {pid}: {e}")),
    };
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

//! `process_group = true`: stop a daemon *and* its workers, the whole process group it leads.
//!
//! kill(-pgid) would be one call, but it addresses the group by number, and the number is only
//! safe while we know who holds it. Instead each member is found in /proc (same group), opened
//! as a pidfd and identified by its start time like the leader (`open_identified`), and
//! signalled through that pidfd: a pid reused meanwhile is never signalled. Members forked
//! while we do this are picked up by a second look before waiting, and again before SIGKILL.
//!
//! Only a group the pidfile's process leads (pgid = its pid) is signalled: a process that is
//! not a leader shares someone else's group (its shell's, perhaps ours), which is not its to
//! stop.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, pidfd_send_signal};

use super::{KILL_WAIT, Target, open_identified, process_group_of, start_ticks};
use crate::config::SignalAction;
use crate::probe::human;

/// One member of the group, open as a pidfd.
struct Member {
    pid: i32,
    pidfd: OwnedFd,
}

/// Signals the group that `leader` (already opened and identified as `leader_fd`) leads, waits
/// `kill_after`, SIGKILLs the rest.
pub(super) async fn stop(
    spec: &SignalAction,
    leader: i32,
    leader_fd: OwnedFd,
) -> Result<String, String> {
    let pgid = process_group_of(leader).ok_or_else(|| format!("pid {leader} exited"))?;
    if pgid != leader {
        return Err(format!(
            "pid {leader} does not lead a process group (it is in group {pgid}): \
             not signalling a group it does not lead"
        ));
    }
    if pgid == rustix::process::getpgrp().as_raw_nonzero().get() {
        return Err(format!("process group {pgid} is the watchdog's own"));
    }
    let signal = Signal::from_named_raw(spec.signal as i32)
        .ok_or_else(|| format!("{} cannot be sent", spec.signal))?;
    let started = Instant::now();
    let mut members = vec![Member {
        pid: leader,
        pidfd: leader_fd,
    }];
    join_new_members(&mut members, pgid);
    send(&members, signal, spec.signal)?;
    // Forked while we looked: a second look, and those get the signal too.
    let forked = join_new_members(&mut members, pgid);
    send(&members[members.len() - forked..], signal, spec.signal)?;
    let count = members.len();

    let mut alive = wait_exits(members, spec.kill_after).await?;
    if alive.is_empty() {
        return Ok(format!(
            "sent {} to process group {pgid} ({count} processes), all exited after {}",
            spec.signal,
            human(started.elapsed())
        ));
    }
    let stubborn: Vec<String> = alive.iter().map(|m| m.pid.to_string()).collect();
    join_new_members(&mut alive, pgid);
    send(&alive, Signal::KILL, nix::sys::signal::Signal::SIGKILL)?;
    let survivors = wait_exits(alive, KILL_WAIT).await?;
    if survivors.is_empty() {
        Ok(format!(
            "sent {} to process group {pgid} ({count} processes); {} still running after {} \
             (pid {}), SIGKILL; all gone after {}",
            spec.signal,
            stubborn.len(),
            human(spec.kill_after),
            stubborn.join(", "),
            human(started.elapsed())
        ))
    } else {
        let pids: Vec<String> = survivors.iter().map(|m| m.pid.to_string()).collect();
        Err(format!(
            "process group {pgid}: pid {} survived SIGKILL for {} (stuck in the kernel?)",
            pids.join(", "),
            human(KILL_WAIT)
        ))
    }
}

/// Adds the group's members not yet in `members`, each opened and identified; returns how many
/// were added (they are at the end).
fn join_new_members(members: &mut Vec<Member>, pgid: i32) -> usize {
    let before = members.len();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        if members.iter().any(|m| m.pid == pid) || process_group_of(pid) != Some(pgid) {
            continue;
        }
        let (Some(start), Some(raw)) = (start_ticks(pid), Pid::from_raw(pid)) else {
            continue;
        };
        // Identified by its start time, and still in the group once open.
        if let Ok(Target::Open(pidfd)) = open_identified(raw, start)
            && process_group_of(pid) == Some(pgid)
        {
            members.push(Member { pid, pidfd });
        }
    }
    members.len() - before
}

fn send(members: &[Member], signal: Signal, name: nix::sys::signal::Signal) -> Result<(), String> {
    for m in members {
        match pidfd_send_signal(&m.pidfd, signal) {
            // Already gone: nothing to do.
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(e) => return Err(format!("cannot send {name} to pid {}: {e}", m.pid)),
        }
    }
    Ok(())
}

/// Waits until every member exited (its pidfd is readable) or `timeout` passes; returns those
/// still running. poll(2) on the blocking pool, like the single-process wait.
async fn wait_exits(members: Vec<Member>, timeout: Duration) -> Result<Vec<Member>, String> {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + timeout;
        let mut alive = members;
        while !alive.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = rustix::event::Timespec::try_from(left).unwrap_or(rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            });
            let mut fds: Vec<rustix::event::PollFd<'_>> = alive
                .iter()
                .map(|m| rustix::event::PollFd::new(&m.pidfd, rustix::event::PollFlags::IN))
                .collect();
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(0) => break,
                Ok(_) => {
                    let exited: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
                    drop(fds);
                    let mut flags = exited.into_iter();
                    alive.retain(|_| !flags.next().unwrap_or(false));
                }
                Err(rustix::io::Errno::INTR) if !left.is_zero() => continue,
                Err(_) => break,
            }
            if left.is_zero() {
                break;
            }
        }
        alive
    })
    .await
    .map_err(|e| format!("waiting for the process group failed: {e}"))
}

//! The `signal` action against real processes, through the library's own entry point: TERM,
//! wait, KILL escalation (measured), a whole process group signalled member by member, and the
//! refusals that keep the wrong process safe. (The daemon's use of it is in tests/daemon.rs.)

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{TempDir, wait_until};
use uptime_watchdog::action::signal;
use uptime_watchdog::config::SignalAction;

fn action(pidfile: &Path, kill_after: Duration, process_group: bool) -> SignalAction {
    SignalAction {
        pidfile: pidfile.to_path_buf(),
        signal: nix::sys::signal::Signal::SIGTERM,
        kill_after,
        start: None,
        timeout: Duration::from_secs(5),
        process_group,
    }
}

/// Runs `script` under `sh` (in a new session and process group when `own_group`); it must
/// write `$$` to the pidfile. Returns the child and, once written, the pid.
fn spawn(script: &str, pidfile: &Path, own_group: bool) -> (Child, i32) {
    let mut cmd = if own_group {
        let mut c = Command::new("setsid");
        c.arg("sh");
        c
    } else {
        Command::new("sh")
    };
    let child = cmd
        .arg("-c")
        .arg(script)
        .env("PIDFILE", pidfile)
        .spawn()
        .expect("sh runs");
    let mut pid = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            pid = std::fs::read_to_string(pidfile)
                .ok()
                .and_then(|t| t.trim().parse().ok());
            pid.is_some()
        }),
        "{script} wrote no pidfile"
    );
    (child, pid.unwrap())
}

/// The pids whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s[s.rfind(')')? + 2..]
                        .split_whitespace()
                        .nth(2)?
                        .parse::<i32>()
                        .ok()
                })
                == Some(pgid)
        })
        .collect()
}

/// Alive and not a zombie.
fn running(pid: i32) -> bool {
    common::FakeApache::alive(pid)
}

fn kill9(pids: &[i32]) {
    for &pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[tokio::test]
async fn term_is_escalated_to_kill_after_kill_after() {
    let dir = TempDir::new("signal-escalate");
    let pidfile = dir.path().join("stubborn.pid");
    // Ignores SIGTERM (an ignored signal stays ignored across exec).
    let (mut child, pid) = spawn(
        "trap '' TERM; echo $$ > \"$PIDFILE\"; exec sleep 1000",
        &pidfile,
        false,
    );
    let kill_after = Duration::from_millis(300);
    let t0 = Instant::now();
    let result = signal::run(&action(&pidfile, kill_after, false), &[]).await;
    let took = t0.elapsed();
    let text = result.unwrap();
    assert!(
        text.starts_with(&format!(
            "sent SIGTERM to pid {pid}, still running after 300 ms, SIGKILL; gone after "
        )),
        "{text}"
    );
    assert!(!running(pid));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&child.wait().unwrap()),
        Some(9)
    );
    assert!(took >= kill_after, "{took:?}");
    assert!(took < kill_after + Duration::from_secs(3), "{took:?}");
    eprintln!(
        "measured: TERM ignored -> KILL -> gone in {:.1} ms with kill_after = 300 ms ({:.1} ms over)",
        took.as_secs_f64() * 1000.0,
        (took - kill_after).as_secs_f64() * 1000.0
    );

    // A process that honours TERM is not escalated.
    let pidfile = dir.path().join("polite.pid");
    let (mut child, pid) = spawn("echo $$ > \"$PIDFILE\"; exec sleep 1000", &pidfile, false);
    let t0 = Instant::now();
    let text = signal::run(&action(&pidfile, kill_after, false), &[])
        .await
        .unwrap();
    let took = t0.elapsed();
    assert!(
        text.starts_with(&format!("sent SIGTERM to pid {pid}, exited after ")),
        "{text}"
    );
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&child.wait().unwrap()),
        Some(15)
    );
    eprintln!(
        "measured: TERM honoured -> gone in {:.1} ms",
        took.as_secs_f64() * 1000.0
    );
}

#[tokio::test]
async fn a_process_group_is_stopped_member_by_member() {
    let dir = TempDir::new("signal-group");
    let pidfile = dir.path().join("leader.pid");
    // A leader with two workers, one of which ignores SIGTERM.
    let (mut child, leader) = spawn(
        "(trap '' TERM; exec sleep 1000) & sleep 1000 & echo $$ > \"$PIDFILE\"; wait",
        &pidfile,
        true,
    );
    assert!(
        wait_until(Duration::from_secs(5), || group_members(leader).len() == 3),
        "{:?}",
        group_members(leader)
    );
    let members = group_members(leader);
    let t0 = Instant::now();
    let text = signal::run(&action(&pidfile, Duration::from_millis(300), true), &[])
        .await
        .unwrap();
    let took = t0.elapsed();
    assert!(
        text.starts_with(&format!(
            "sent SIGTERM to process group {leader} (3 processes); 1 still running after 300 ms"
        )),
        "{text}"
    );
    assert!(text.contains("SIGKILL; all gone after"), "{text}");
    child.wait().unwrap();
    // The workers were reparented to init, which reaps them in its own time.
    assert!(
        wait_until(Duration::from_secs(5), || members
            .iter()
            .all(|&p| !running(p))),
        "still running: {:?}",
        members.iter().filter(|&&p| running(p)).collect::<Vec<_>>()
    );
    eprintln!(
        "measured: a group of 3, one ignoring TERM, gone in {:.1} ms (kill_after 300 ms): {text}",
        took.as_secs_f64() * 1000.0
    );
}

#[tokio::test]
async fn without_process_group_the_workers_live_on() {
    let dir = TempDir::new("signal-nogroup");
    let pidfile = dir.path().join("leader.pid");
    let (mut child, leader) = spawn(
        "sleep 1000 & sleep 1000 & echo $$ > \"$PIDFILE\"; wait",
        &pidfile,
        true,
    );
    assert!(wait_until(Duration::from_secs(5), || group_members(leader)
        .len()
        == 3));
    let text = signal::run(&action(&pidfile, Duration::from_secs(2), false), &[])
        .await
        .unwrap();
    assert!(
        text.starts_with(&format!("sent SIGTERM to pid {leader}, exited")),
        "{text}"
    );
    child.wait().unwrap();
    let workers = group_members(leader);
    assert_eq!(workers.len(), 2, "the two workers outlive their leader");
    kill9(&workers);
}

#[tokio::test]
async fn a_group_the_process_does_not_lead_is_not_signalled() {
    let dir = TempDir::new("signal-notleader");
    let pidfile = dir.path().join("member.pid");
    // In the test's own process group, which it does not lead.
    let (mut child, pid) = spawn("echo $$ > \"$PIDFILE\"; exec sleep 1000", &pidfile, false);
    let err = signal::run(&action(&pidfile, Duration::from_secs(1), true), &[])
        .await
        .unwrap_err();
    assert!(
        err.contains(&format!("pid {pid} does not lead a process group")),
        "{err}"
    );
    assert!(running(pid), "signalled anyway");
    child.kill().unwrap();
    child.wait().unwrap();
}

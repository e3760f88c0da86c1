//! The `process` probe against real processes: a kill -9 seen through the pidfd the moment it
//! happens, a stale pidfile, a zombie, a prefork parent losing its workers, the oldest match
//! and a restart behind our back, CPU over the interval, a systemd-style unit cgroup — and a
//! pidfile probe through the real `watchdog check --json` binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TempDir, wait_until, watchdog_bin};
use uptime_watchdog::config::{ProcessCheck, ProcessSelect};
use uptime_watchdog::probe::process::ProcessProbe;
use uptime_watchdog::probe::{Outcome, Phase};

/// Processes killed by PID (and reaped when ours) when the test ends, passed or not.
#[derive(Default)]
struct Procs {
    children: Vec<Child>,
    others: Vec<i32>,
}

impl Procs {
    fn spawn(&mut self, argv: &[&str]) -> i32 {
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        self.children.push(child);
        pid
    }

    /// kill -9 and reap one of ours.
    fn kill(&mut self, pid: i32) {
        if let Some(i) = self.children.iter().position(|c| c.id() as i32 == pid) {
            let mut c = self.children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for pid in &self.others {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spec(select: ProcessSelect) -> ProcessCheck {
    ProcessCheck {
        select,
        min_children: None,
        max_children: None,
        max_rss: None,
        max_cpu_percent: None,
        max_fds: None,
        min_uptime: None,
    }
}

async fn check(probe: &ProcessProbe) -> Outcome {
    probe.check(&Phase::default(), Instant::now()).await
}

/// Field 3 (state) and 4 (ppid) of /proc/PID/stat.
fn state_ppid(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = s[s.rfind(')')? + 1..].split_whitespace();
    Some((f.next()?.chars().next()?, f.next()?.parse().ok()?))
}

fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| state_ppid(*p).is_some_and(|(_, pp)| pp == pid))
        .collect()
}

/// Waits until `pid` has exec'd (its command line holds `marker`): a freshly forked child
/// shows our own command line for a moment.
fn wait_exec(pid: i32, marker: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        }),
        "pid {pid} did not exec"
    );
}

fn start_ticks(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    s[s.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap()
}

/// Checks until `ok` holds for the outcome or `within` passes; returns the last outcome.
async fn check_until(
    probe: &ProcessProbe,
    within: Duration,
    ok: impl Fn(&Outcome) -> bool,
) -> Outcome {
    let deadline = Instant::now() + within;
    loop {
        let o = check(probe).await;
        if ok(&o) || Instant::now() > deadline {
            return o;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_is_seen_through_the_pidfd_at_once() {
    let dir = TempDir::new("proc-kill");
    let mut procs = Procs::default();
    let pid = procs.spawn(&["sleep", "60"]);
    wait_exec(pid, "sleep");
    let pidfile = dir.write("svc.pid", &format!("{pid}\n"));
    let probe = Arc::new(ProcessProbe::new(spec(ProcessSelect::Pidfile(pidfile))));

    let first = check(&probe).await;
    assert!(first.ok, "{first:?}");
    assert!(
        first.reason.starts_with(&format!("pid {pid} up ")),
        "{first:?}"
    );
    assert!(first.reason.contains("rss "), "{first:?}");

    let waiter = tokio::spawn({
        let probe = probe.clone();
        async move {
            probe.next_event().await;
            Instant::now()
        }
    });
    // Not before the death: the event means "exited", nothing else.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiter.is_finished(),
        "next_event completed while the process lived"
    );

    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("no event within 5 s of kill -9")
        .unwrap();
    let latency = seen.duration_since(killed);
    println!("death seen after {:.1} ms", latency.as_secs_f64() * 1000.0);
    assert!(latency < Duration::from_secs(1), "{latency:?}");

    // Unreaped, it is a zombie: dead as well; reaped, it is gone.
    let zombie = check(&probe).await;
    assert!(!zombie.ok && zombie.certain, "{zombie:?}");
    procs.kill(pid);
    let gone = check(&probe).await;
    assert!(!gone.ok && gone.certain, "{gone:?}");
    assert_eq!(gone.reason, format!("pid {pid} (sleep) exited"), "{gone:?}");

    // Once per death: nothing is watched any more, so no further event.
    let again = tokio::time::timeout(Duration::from_millis(300), probe.next_event()).await;
    assert!(
        again.is_err(),
        "next_event fired again with nothing alive to watch"
    );
}

#[tokio::test]
async fn stale_pidfile_pointing_at_a_later_process_fails() {
    let dir = TempDir::new("proc-stale");
    let mut procs = Procs::default();
    let pid = procs.spawn(&["sleep", "60"]);
    wait_exec(pid, "sleep");
    let pidfile = dir.write("svc.pid", &format!("{pid}\n"));
    let probe = ProcessProbe::new(spec(ProcessSelect::Pidfile(pidfile.clone())));
    let fresh = check(&probe).await;
    assert!(
        fresh.ok,
        "a pidfile written after its process started is fine: {fresh:?}"
    );

    // The pidfile was last written 60 s ago, long before this `sleep` started: the daemon that
    // wrote it died and its pid went to an unrelated program.
    let past = nix::sys::time::TimeSpec::from_duration(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            - Duration::from_secs(60),
    );
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &pidfile,
        &past,
        &past,
        nix::sys::stat::UtimensatFlags::FollowSymlink,
    )
    .unwrap();
    let stale = check(&ProcessProbe::new(spec(ProcessSelect::Pidfile(pidfile)))).await;
    assert!(!stale.ok && !stale.certain, "{stale:?}");
    assert!(
        stale.reason.starts_with(&format!(
            "stale pidfile: pid {pid} is now sleep, started after the pidfile was written"
        )),
        "{stale:?}"
    );
}

#[tokio::test]
async fn zombie_is_dead() {
    let dir = TempDir::new("proc-zombie");
    let mut procs = Procs::default();
    // Exits at once; not waited for, so it stays a zombie until the guard reaps it.
    let pid = procs.spawn(&["true"]);
    assert!(
        wait_until(Duration::from_secs(10), || state_ppid(pid)
            .is_some_and(|(s, _)| s == 'Z')),
        "pid {pid} never became a zombie"
    );
    let pidfile = dir.write("z.pid", &format!("{pid}\n"));
    let probe = ProcessProbe::new(spec(ProcessSelect::Pidfile(pidfile)));
    let o = check(&probe).await;
    assert!(!o.ok && o.certain, "{o:?}");
    assert!(o.reason.contains("zombie"), "{o:?}");
    // A zombie's pidfd is readable for good: the probe must not hold one (or events would loop).
    let event = tokio::time::timeout(Duration::from_millis(300), probe.next_event()).await;
    assert!(event.is_err(), "next_event fired for a zombie");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefork_parent_losing_workers_trips_min_children() {
    let mut procs = Procs::default();
    let marker = format!("wd-prefork-{}", std::process::id());
    let parent = procs.spawn(&["sh", "-c", "sleep 30 & sleep 30 & sleep 30 & wait", &marker]);
    assert!(
        wait_until(Duration::from_secs(10), || children_of(parent).len() == 3),
        "the workers did not start"
    );
    let workers = children_of(parent);
    procs.others.extend(&workers);
    let mut c = spec(ProcessSelect::Cmdline(
        regex::Regex::new(&format!("^sh -c .* {marker}$")).unwrap(),
    ));
    c.min_children = Some(2);
    c.max_children = Some(3);
    let probe = ProcessProbe::new(c);

    let o = check(&probe).await;
    assert!(o.ok, "{o:?}");
    assert!(o.reason.starts_with(&format!("pid {parent} up ")), "{o:?}");
    assert!(o.reason.contains(", 3 children,"), "{o:?}");

    let kill = |pid: i32| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap()
    };
    kill(workers[0]);
    let o = check_until(&probe, Duration::from_secs(10), |o| {
        o.reason.contains(", 2 children,")
    })
    .await;
    assert!(o.ok, "2 workers meet min_children = 2: {o:?}");

    kill(workers[1]);
    let o = check_until(&probe, Duration::from_secs(10), |o| !o.ok).await;
    assert!(!o.ok && !o.certain, "{o:?}");
    assert!(o.reason.starts_with("1 children < min 2 ("), "{o:?}");
}

#[tokio::test]
async fn oldest_match_is_chosen_and_a_replacement_is_a_restart() {
    let mut procs = Procs::default();
    // A unique command line: GNU sleep takes fractions, so the pid is the marker.
    let arg = format!("61.{}", std::process::id());
    let argv = ["sleep", &arg];
    let first = procs.spawn(&argv);
    // A later start time (10 ms ticks) than the first, so "oldest" is well defined.
    let t0 = Instant::now();
    while Instant::now() < t0 + Duration::from_millis(30) {
        std::thread::yield_now();
    }
    let second = procs.spawn(&argv);
    wait_exec(first, &arg);
    wait_exec(second, &arg);
    assert!(start_ticks(second) > start_ticks(first));
    let probe = ProcessProbe::new(spec(ProcessSelect::Cmdline(
        regex::Regex::new(&format!("^sleep {}$", regex::escape(&arg))).unwrap(),
    )));
    let o = check(&probe).await;
    assert!(o.ok, "{o:?}");
    assert!(o.reason.starts_with(&format!("pid {first} up ")), "{o:?}");

    procs.kill(first);
    let o = check(&probe).await;
    assert!(
        o.ok,
        "a replacement is not a failure without min_uptime: {o:?}"
    );
    assert!(
        o.reason.starts_with(&format!(
            "restarted behind our back (pid {first} → {second}); pid {second} up "
        )),
        "{o:?}"
    );
}

#[tokio::test]
async fn cpu_is_measured_over_the_interval() {
    let mut procs = Procs::default();
    let marker = format!("wd-spin-{}", std::process::id());
    let pid = procs.spawn(&["sh", "-c", "while :; do :; done", &marker]);
    wait_exec(pid, &marker);
    let mut c = spec(ProcessSelect::Cmdline(
        regex::Regex::new(&format!("{marker}$")).unwrap(),
    ));
    c.max_cpu_percent = Some(5.0);
    let probe = ProcessProbe::new(c);
    let first = check(&probe).await;
    assert!(
        first.ok,
        "no CPU figure on the first check, so no failure: {first:?}"
    );
    assert!(!first.reason.contains("cpu"), "{first:?}");
    // A spinning shell uses a whole core when it runs; on a busy machine give it time.
    let o = check_until(&probe, Duration::from_secs(10), |o| !o.ok).await;
    assert!(!o.ok, "{o:?}");
    assert!(o.reason.contains("% > max 5%"), "{o:?}");
}

/// A cgroup directory named like a systemd unit, in whichever hierarchy this host has.
struct Cgroup(PathBuf);

impl Cgroup {
    fn create(name: &str) -> Cgroup {
        let root = Path::new("/sys/fs/cgroup");
        let base = [
            root.to_path_buf(),
            root.join("unified"),
            root.join("systemd"),
        ]
        .into_iter()
        .find(|d| d.join("cgroup.procs").exists())
        .expect("no cgroup v2 or systemd hierarchy under /sys/fs/cgroup");
        let dir = base.join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Cgroup(dir)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty once its processes are reaped (the Procs guard drops first).
        let _ = wait_until(Duration::from_secs(5), || {
            std::fs::remove_dir(&self.0).is_ok()
        });
    }
}

#[tokio::test]
async fn unit_selects_the_oldest_process_in_its_cgroup() {
    let name = format!("wd-test-{}.service", std::process::id());
    let cgroup = Cgroup::create(&name);
    let mut procs = Procs::default();
    let main = procs.spawn(&["sleep", "60"]);
    std::fs::write(cgroup.0.join("cgroup.procs"), main.to_string()).unwrap();
    let probe = ProcessProbe::new(spec(ProcessSelect::Unit(name.clone())));
    let o = check(&probe).await;
    assert!(o.ok, "{o:?}");
    assert!(o.reason.starts_with(&format!("pid {main} up ")), "{o:?}");

    procs.kill(main);
    let o = check(&probe).await;
    assert!(!o.ok && o.certain, "{o:?}");
    assert!(
        o.reason.contains(&format!("no process in unit {name}")),
        "{o:?}"
    );

    let missing = check(&ProcessProbe::new(spec(ProcessSelect::Unit(
        "wd-no-such.service".into(),
    ))))
    .await;
    assert!(!missing.ok && !missing.certain, "{missing:?}");
    assert!(
        missing
            .reason
            .starts_with("no cgroup for unit wd-no-such.service"),
        "{missing:?}"
    );
    drop(procs);
}

#[test]
fn pidfile_probe_through_the_binary() {
    let dir = TempDir::new("proc-bin");
    let mut procs = Procs::default();
    let pid = procs.spawn(&["sleep", "60"]);
    wait_exec(pid, "sleep");
    let pidfile = dir.write("svc.pid", &format!("{pid}\n"));
    let cfg = dir.write(
        "watchdog.toml",
        &format!(
            r#"[watchdog]
state_dir = "state"

[defaults]
interval = "1m"
timeout = "2s"

[[probe]]
name = "svc"
kind = "process"
pidfile = "{pidfile}"
max_rss = "1024MiB"  # "1GiB" is rejected by config::check::parse_size (no G units)
max_fds = 1000

[[probe]]
name = "young"
kind = "process"
pidfile = "{pidfile}"
min_uptime = "1h"

[[probe]]
name = "gone"
kind = "process"
pidfile = "{missing}"
"#,
            pidfile = pidfile.display(),
            missing = dir.path().join("missing.pid").display()
        ),
    );
    let out = Command::new(watchdog_bin())
        .args(["check", "--json", "--dry-run", "-c", cfg.to_str().unwrap()])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}{}", String::from_utf8_lossy(&out.stderr)));
    let row = |name: &str| {
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["probe"] == name)
            .unwrap_or_else(|| panic!("no row {name}: {report}"))
            .clone()
    };
    let svc = row("svc");
    assert_eq!(svc["ok"], true, "{svc}");
    let reason = svc["reason"].as_str().unwrap();
    assert!(reason.starts_with(&format!("pid {pid} up ")), "{reason}");
    assert!(reason.contains(" fds"), "{reason}");
    let young = row("young");
    assert_eq!(young["ok"], false, "{young}");
    assert!(
        young["reason"]
            .as_str()
            .unwrap()
            .contains("< min_uptime 1h0m"),
        "{young}"
    );
    let gone = row("gone");
    assert_eq!(gone["ok"], false, "{gone}");
    assert!(
        gone["reason"].as_str().unwrap().starts_with("no pidfile "),
        "{gone}"
    );
}

//! `watchdog run` against the real fake apache: each fault of the 2009 outage and its cousins
//! is detected, fixed by exactly one restart, paged and resolved through a real HTTP receiver;
//! a hung neighbour does not delay anyone; a service that never recovers gets its budget of
//! restarts and one "giving up" page.

mod common;

use std::time::{Duration, Instant};

use common::{FakeApache, Receiver, TempDir, Watchdog, wait_until};

/// A config for one fake apache, restarted by a signal action, paged to `hook`.
fn config(
    dir: &TempDir,
    apache: &FakeApache,
    start_mode: &str,
    hook: &str,
    budget: &str,
) -> std::path::PathBuf {
    let start = apache.start_toml(start_mode);
    dir.write(
        "watchdog.toml",
        &format!(
            r#"[watchdog]
state_dir = "state"

[defaults]
interval = "500ms"
timeout = "400ms"
fail_after = 2
recover_after = 1
restart_grace = "1s"

[[probe]]
name = "apache"
kind = "http"
url = "{url}"
body_contains = "BusyWorkers"

[[rule]]
probe = "apache"
when = "down"
do = ["restart-apache", "page"]
budget = "{budget}"

[action.restart-apache]
kind = "signal"
pidfile = "{pidfile}"
kill_after = "1s"
start = [{start}]

[action.page]
kind = "webhook"
url = "{hook}"
"#,
            url = apache.url("/server-status?auto"),
            pidfile = apache.pidfile.display(),
        ),
    )
}

fn wait_up(wd: &Watchdog) {
    assert!(
        wait_until(Duration::from_secs(10), || wd
            .messages("state changed")
            .iter()
            .any(|e| e["fields"]["state"] == "up")),
        "never up:\n{}",
        wd.log_text()
    );
}

/// Inject `mode`; the watchdog must restart apache once, page once, and resolve the page.
fn one_restart_fixes(mode: &str) {
    let dir = TempDir::new(&mode.replace(':', "-"));
    let apache = FakeApache::start(dir.path(), "healthy");
    let hook = Receiver::start(false);
    let cfg = config(&dir, &apache, "healthy", &hook.url(), "3 per 10m");
    let wd = Watchdog::run(&cfg, dir.path());
    wait_up(&wd);
    let old_pid = apache.pid().expect("pid");

    let injected = Instant::now();
    if mode == "crash" {
        // The process dies while answering: the control request itself may fail.
        let _ = common::http(
            &format!("127.0.0.1:{}", apache.control),
            "POST",
            "/mode/crash",
            "",
            Duration::from_secs(1),
        );
    } else {
        apache.set_mode(mode);
    }
    assert!(
        wait_until(Duration::from_secs(15), || wd.has("remedy done")
            || wd.has("remedy failed")),
        "{mode}: no remedy:\n{}",
        wd.log_text()
    );
    assert!(
        wd.has("remedy done"),
        "{mode}: remedy failed:\n{}",
        wd.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(10), || apache
            .pid()
            .is_some_and(|p| p != old_pid)
            && apache.serves()),
        "{mode}: apache does not answer again:\n{}",
        wd.log_text()
    );
    let recovered = injected.elapsed();
    assert!(
        !FakeApache::alive(old_pid),
        "{mode}: the old process {old_pid} still runs"
    );
    assert!(
        wait_until(Duration::from_secs(10), || hook.count("resolved") == 1),
        "{mode}: no resolve page: {:?}\n{}",
        hook.events(),
        wd.log_text()
    );
    assert_eq!(
        wd.remedies("restart-apache"),
        1,
        "{mode}: exactly one restart per incident:\n{}",
        wd.log_text()
    );
    assert_eq!(
        hook.events(),
        vec![
            ("firing".to_string(), "apache".to_string()),
            ("resolved".to_string(), "apache".to_string())
        ],
        "{mode}"
    );
    let page = hook.pages.lock().unwrap()[0].clone();
    assert!(
        page["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{page}"
    );
    assert_eq!(page["host"].as_str().map(str::is_empty), Some(false));
    eprintln!(
        "{mode}: serving again {:.1} s after the fault",
        recovered.as_secs_f64()
    );
    assert_eq!(wd.stop(), Some(0), "clean exit on SIGTERM");
}

#[test]
fn fault_504_is_fixed_by_one_restart() {
    one_restart_fixes("status:504");
}

#[test]
fn fault_hang_is_fixed_by_one_restart() {
    one_restart_fixes("hang");
}

#[test]
fn fault_crash_is_fixed_by_one_restart() {
    one_restart_fixes("crash");
}

#[test]
fn fault_stop_accepting_is_fixed_by_one_restart() {
    one_restart_fixes("stop-accepting");
}

#[test]
fn fault_dying_workers_is_fixed_by_one_restart() {
    one_restart_fixes("workers-dying");
}

#[test]
fn a_service_that_never_recovers_gets_its_budget_then_one_giving_up_page() {
    let dir = TempDir::new("budget");
    let apache = FakeApache::start(dir.path(), "status:503");
    let hook = Receiver::start(false);
    // Every restart brings it back broken.
    let cfg = config(&dir, &apache, "status:503", &hook.url(), "2 per 10m");
    let wd = Watchdog::run(&cfg, dir.path());
    assert!(
        wait_until(Duration::from_secs(30), || hook.count("giving_up") >= 1),
        "no giving-up page: {:?}\n{}",
        hook.events(),
        wd.log_text()
    );
    assert_eq!(wd.remedies("restart-apache"), 2, "{}", wd.log_text());
    let giving_up = hook
        .pages
        .lock()
        .unwrap()
        .iter()
        .find(|p| p["event"] == "giving_up")
        .cloned()
        .unwrap();
    let summary = giving_up["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("giving up on apache after 2 runs of restart-apache in 10m"),
        "{summary}"
    );

    // Two more down-cycles' worth of time (grace 1 s + 2 failures at 500 ms, twice): nothing more.
    let restarts_then = wd.remedies("restart-apache");
    assert!(!wait_until(Duration::from_secs(5), || wd
        .remedies("restart-apache")
        > restarts_then
        || hook.count("giving_up") > 1));
    assert_eq!(hook.count("giving_up"), 1);
    assert_eq!(
        hook.count("firing"),
        1,
        "one firing page per incident: {:?}",
        hook.events()
    );
}

/// Probe A: a hanging server, a remedy that takes 30 s, and a pager that never answers.
/// Probe B: healthy, then 504s. B's remedy must run on time all the same.
#[test]
fn a_hung_target_a_slow_remedy_and_a_dead_pager_do_not_delay_another_probe() {
    let dir = TempDir::new("isolation");
    let hung = FakeApache::start(&dir.path().join("a"), "hang");
    let b = FakeApache::start(&dir.path().join("b"), "healthy");
    let dead_pager = Receiver::start(true);
    let marker = dir.path().join("b-restarted");
    let cfg = dir.write(
        "watchdog.toml",
        &format!(
            r#"[watchdog]
state_dir = "state"

[[probe]]
name = "a-hangs"
kind = "http"
url = "{a}"
interval = "3s"
timeout = "2s"
fail_after = 1

[[probe]]
name = "b-504"
kind = "http"
url = "{b}"
interval = "1s"
timeout = "500ms"
fail_after = 2

[[rule]]
probe = "a-hangs"
when = "down"
do = ["slow-remedy", "dead-pager"]

[[rule]]
probe = "b-504"
when = "down"
do = ["mark-b"]

[action.slow-remedy]
kind = "command"
command = ["/bin/sleep", "30"]
timeout = "40s"

[action.dead-pager]
kind = "webhook"
url = "{pager}"
timeout = "20s"

[action.mark-b]
kind = "command"
command = ["/usr/bin/touch", "{marker}"]
"#,
            a = hung.url("/"),
            b = b.url("/"),
            pager = dead_pager.url(),
            marker = marker.display(),
        ),
    );
    let wd = Watchdog::run(&cfg, dir.path());
    // A is down, its remedy is sleeping and its page is stuck in a connection that never answers.
    assert!(
        wait_until(Duration::from_secs(15), || wd.remedies("slow-remedy") == 1
            && wd.has("paging")),
        "{}",
        wd.log_text()
    );
    b.set_mode("status:504");
    let injected = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || marker.exists()),
        "B's remedy never ran:\n{}",
        wd.log_text()
    );
    let took = injected.elapsed();
    // Two failures 1 s apart, plus up to one interval until the first: 3 s; 1.5 s of slack.
    assert!(
        took < Duration::from_millis(4500),
        "B's remedy ran {took:?} after the fault"
    );
    assert!(
        !wd.has("remedy done")
            || wd
                .messages("remedy done")
                .iter()
                .all(|e| e["fields"]["action"] != "slow-remedy"),
        "the slow remedy is still running"
    );
    eprintln!(
        "B remedied {:.2} s after its fault while A hung",
        took.as_secs_f64()
    );
}

/// A process probe sees a kill -9 through its pidfd: the daemon restarts the service at once,
/// not after `fail_after` intervals (here 3 × 5 s).
#[test]
fn a_killed_process_is_restarted_at_once_through_the_pidfd_event() {
    let dir = TempDir::new("pidfd");
    let apache = FakeApache::start(dir.path(), "healthy");
    let start = apache.start_toml("healthy");
    let cfg = dir.write(
        "watchdog.toml",
        &format!(
            r#"[watchdog]
state_dir = "state"

[[probe]]
name = "apache-proc"
kind = "process"
pidfile = "{pidfile}"
interval = "5s"
timeout = "1s"
fail_after = 3
restart_grace = "1s"

[[rule]]
probe = "apache-proc"
when = "down"
do = ["restart"]

[action.restart]
kind = "signal"
pidfile = "{pidfile}"
kill_after = "1s"
start = [{start}]
"#,
            pidfile = apache.pidfile.display()
        ),
    );
    let wd = Watchdog::run(&cfg, dir.path());
    assert!(
        wait_until(Duration::from_secs(10), || wd
            .messages("state changed")
            .iter()
            .any(|e| e["fields"]["state"] == "up")),
        "{}",
        wd.log_text()
    );
    let old = apache.pid().unwrap();
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(4), || wd.remedies("restart") == 1),
        "{}",
        wd.log_text()
    );
    let detected = killed.elapsed();
    assert!(
        wait_until(Duration::from_secs(5), || apache
            .pid()
            .is_some_and(|p| p != old)
            && apache.serves()),
        "{}",
        wd.log_text()
    );
    let serving = killed.elapsed();
    let down = &wd
        .messages("state changed")
        .into_iter()
        .find(|e| e["fields"]["state"] == "down")
        .unwrap()["fields"];
    assert!(
        down["reason"].as_str().unwrap().contains("exited")
            || down["reason"].as_str().unwrap().contains("zombie"),
        "{down}"
    );
    // Without the event, three failed checks 5 s apart would take 10 s or more.
    assert!(
        detected < Duration::from_secs(2),
        "restart began {detected:?} after the kill"
    );
    eprintln!(
        "kill -9 -> restart began after {:.0} ms, serving after {:.0} ms",
        detected.as_secs_f64() * 1000.0,
        serving.as_secs_f64() * 1000.0
    );
}

/// An http probe and a process probe on one service share its restart. The http probe sees the
/// hang and restarts it; the restart's SIGTERM makes the process probe see a death and ask for
/// the same restart: it joins the first one instead of restarting (or killing) the new process.
#[test]
fn two_probes_of_one_service_share_one_restart() {
    let dir = TempDir::new("shared");
    let apache = FakeApache::start(dir.path(), "healthy");
    let start = apache.start_toml("healthy");
    let cfg = dir.write(
        "watchdog.toml",
        &format!(
            r#"[watchdog]
state_dir = "state"

[defaults]
interval = "500ms"
timeout = "400ms"
fail_after = 2
recover_after = 1
restart_grace = "2s"

[[probe]]
name = "http"
kind = "http"
url = "{url}"

[[probe]]
name = "proc"
kind = "process"
pidfile = "{pidfile}"

[[rule]]
probe = "http"
when = "down"
do = ["restart"]

[[rule]]
probe = "proc"
when = "down"
do = ["restart"]

[action.restart]
kind = "signal"
pidfile = "{pidfile}"
kill_after = "1s"
start = [{start}]
"#,
            url = apache.url("/"),
            pidfile = apache.pidfile.display()
        ),
    );
    let wd = Watchdog::run(&cfg, dir.path());
    assert!(
        wait_until(Duration::from_secs(10), || wd
            .messages("state changed")
            .iter()
            .filter(|e| e["fields"]["state"] == "up")
            .count()
            == 2),
        "{}",
        wd.log_text()
    );
    let old = apache.pid().unwrap();
    apache.set_mode("hang");
    assert!(
        wait_until(Duration::from_secs(10), || apache
            .pid()
            .is_some_and(|p| p != old)
            && apache.serves()),
        "{}",
        wd.log_text()
    );
    let new = apache.pid().unwrap();
    // Longer than restart_grace plus two checks: a second restart would have happened by now.
    assert!(
        !wait_until(Duration::from_secs(4), || wd.remedies("restart") > 1),
        "{}",
        wd.log_text()
    );
    assert_eq!(wd.remedies("restart"), 1, "{}", wd.log_text());
    assert_eq!(
        apache.pid(),
        Some(new),
        "the new process was left alone:\n{}",
        wd.log_text()
    );
    assert!(FakeApache::alive(new));
    let joined = wd
        .messages("remedy joined: it is running or just ran for another probe; not run again")
        .len();
    eprintln!("requests joined to the running restart: {joined}");
}

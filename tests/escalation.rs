//! Escalation and dependencies in `watchdog run`, against real fake apaches, real commands and
//! a real HTTP receiver: a ladder climbs one step per failed remedy and gives up once; a
//! backoff spaces restarts out; a dependency's outage holds the dependent's rules back; a
//! remedy that fails is paged as an incident of its own. (The rule engine's tables cover every
//! path in `src/rules.rs`; these prove the daemon carries them out.)

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{FakeApache, Receiver, TempDir, Watchdog, wait_until};

const TIMING: &str = r#"[watchdog]
state_dir = "state"

[defaults]
interval = "500ms"
timeout = "400ms"
fail_after = 2
recover_after = 1
restart_grace = "1s"
"#;

/// A `signal` action that restarts `apache` in `mode`.
fn restart_action(name: &str, apache: &FakeApache, mode: &str) -> String {
    format!(
        r#"
[action.{name}]
kind = "signal"
pidfile = "{pidfile}"
kill_after = "1s"
start = [{start}]
"#,
        pidfile = apache.pidfile.display(),
        start = apache.start_toml(mode),
    )
}

/// A `command` action running `argv`.
fn command_action(name: &str, argv: &[&str]) -> String {
    format!("\n[action.{name}]\nkind = \"command\"\ncommand = {argv:?}\n")
}

fn probe(name: &str, apache: &FakeApache, extra: &str) -> String {
    format!(
        "\n[[probe]]\nname = \"{name}\"\nkind = \"http\"\nurl = \"{}\"\n{extra}\n",
        apache.url("/")
    )
}

fn pager(hook: &Receiver) -> String {
    format!(
        "\n[action.page]\nkind = \"webhook\"\nurl = \"{}\"\n",
        hook.url()
    )
}

fn write(dir: &TempDir, parts: &[&str]) -> PathBuf {
    dir.write("watchdog.toml", &parts.concat())
}

#[test]
fn a_ladder_restarts_twice_then_drains_and_pages_then_gives_up_once() {
    let dir = TempDir::new("ladder");
    let apache = FakeApache::start(dir.path(), "status:503");
    let hook = Receiver::start(false);
    let flag = dir.path().join("drained");
    let cfg = write(
        &dir,
        &[
            TIMING,
            &probe("apache", &apache, ""),
            r#"
[[rule]]
probe = "apache"
when = "down"
escalate = ["restart", "restart", ["drain", "page"]]
"#,
            // Every restart brings it back broken.
            &restart_action("restart", &apache, "status:503"),
            &command_action("drain", &["/usr/bin/touch", &flag.display().to_string()]),
            &pager(&hook),
        ],
    );
    let wd = Watchdog::run(&cfg, dir.path());
    assert!(
        wait_until(Duration::from_secs(30), || hook.count("giving_up") == 1),
        "no giving-up page: {:?}\n{}",
        hook.events(),
        wd.log_text()
    );
    assert_eq!(wd.remedies("restart"), 2, "{}", wd.log_text());
    assert_eq!(wd.remedies("drain"), 1, "{}", wd.log_text());
    assert!(flag.exists(), "the drain command did not run");
    assert_eq!(
        hook.events(),
        [
            ("firing".to_string(), "apache".to_string()),
            ("giving_up".to_string(), "apache".to_string())
        ]
    );
    let giving_up = hook.pages.lock().unwrap()[1]["summary"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        giving_up.starts_with("giving up on apache: its escalation ended after 3 steps"),
        "{giving_up}"
    );
    // The ladder is spent: nothing more happens while the incident lasts.
    assert!(!wait_until(Duration::from_secs(4), || wd
        .remedies("restart")
        + wd.remedies("drain")
        > 3
        || hook.events().len() > 2));
}

#[test]
fn backoff_spaces_restarts_out_doubling() {
    let dir = TempDir::new("backoff");
    let apache = FakeApache::start(dir.path(), "status:503");
    let cfg = write(
        &dir,
        &[
            TIMING,
            &probe("apache", &apache, ""),
            r#"
[[rule]]
probe = "apache"
when = "down"
do = ["restart"]
budget = "10 per 1h"
backoff = "3s"
"#,
            &restart_action("restart", &apache, "status:503"),
        ],
    );
    let wd = Watchdog::run(&cfg, dir.path());
    // When each restart began, as the test saw it (the log is polled every 20 ms).
    let mut began: Vec<Instant> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while began.len() < 3 && Instant::now() < deadline {
        if wd.remedies("restart") > began.len() {
            began.push(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(began.len(), 3, "{}", wd.log_text());
    let gaps: Vec<f64> = began
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    eprintln!("gaps between restarts: {gaps:.2?} s (backoff 3 s, doubling)");
    // Without backoff a restart follows every ~2 s (1 s grace + 2 failures at 500 ms).
    assert!(gaps[0] >= 2.9, "{gaps:?}");
    assert!(gaps[1] >= 5.9, "{gaps:?}");
    assert!(wd.has("rule held back"), "{}", wd.log_text());
}

#[test]
fn while_the_database_is_down_the_app_is_not_restarted_and_only_the_database_pages() {
    let db_dir = TempDir::new("deps-db");
    let app_dir = TempDir::new("deps-app");
    let db = FakeApache::start(db_dir.path(), "status:503");
    let app = FakeApache::start(app_dir.path(), "status:503");
    let hook = Receiver::start(false);
    let cfg = write(
        &app_dir,
        &[
            TIMING,
            &probe("db", &db, ""),
            &probe("app", &app, "depends_on = [\"db\"]"),
            r#"
[[rule]]
probe = "db"
when = "down"
do = ["page"]

[[rule]]
probe = "app"
when = "down"
do = ["restart-app", "page"]
"#,
            &restart_action("restart-app", &app, "healthy"),
            &pager(&hook),
        ],
    );
    let wd = Watchdog::run(&cfg, app_dir.path());
    assert!(
        wait_until(Duration::from_secs(10), || wd.has("rule held back")),
        "{}",
        wd.log_text()
    );
    // Both are down for 3 s more: the app is neither restarted nor paged.
    assert!(!wait_until(Duration::from_secs(3), || wd
        .remedies("restart-app")
        > 0));
    assert_eq!(hook.events(), [("firing".to_string(), "db".to_string())]);

    // The database comes back; the app is still broken, so now it is its turn.
    db.set_mode("healthy");
    assert!(
        wait_until(Duration::from_secs(10), || wd.remedies("restart-app") == 1
            && app.serves()),
        "{}",
        wd.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(10), || hook.count("resolved") == 2),
        "{:?}",
        hook.events()
    );
    let events = hook.events();
    assert!(
        events.contains(&("firing".into(), "app".into())),
        "{events:?}"
    );
    assert_eq!(wd.remedies("restart-app"), 1);
}

#[test]
fn a_failed_restart_is_paged_as_its_own_incident_and_resolved_on_recovery() {
    let dir = TempDir::new("failed-action");
    let apache = FakeApache::start(dir.path(), "status:503");
    let hook = Receiver::start(false);
    let missing = Path::new("/nonexistent/apachectl");
    let cfg = write(
        &dir,
        &[
            TIMING,
            &probe("apache", &apache, ""),
            r#"
[[rule]]
probe = "apache"
when = "down"
do = ["restart"]
budget = "1 per 1h"

[[rule]]
probe = "apache"
when = "down for 1h"
do = ["page"]
"#,
            &command_action("restart", &[&missing.display().to_string(), "restart"]),
            &pager(&hook),
        ],
    );
    let wd = Watchdog::run(&cfg, dir.path());
    assert!(
        wait_until(Duration::from_secs(10), || hook.count("firing") == 1),
        "{:?}\n{}",
        hook.events(),
        wd.log_text()
    );
    let page = hook.pages.lock().unwrap()[0].clone();
    assert_eq!(page["probe"], "apache/restart", "{page}");
    let summary = page["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("restart failed for apache: ") && summary.contains("apachectl"),
        "{summary}"
    );
    let failed = wd.messages("remedy failed");
    assert!(
        failed[0]["fields"]["took"].is_string(),
        "the failure is logged with its duration: {}",
        failed[0]
    );

    apache.set_mode("healthy");
    assert!(
        wait_until(Duration::from_secs(10), || hook.count("resolved") == 1),
        "{:?}\n{}",
        hook.events(),
        wd.log_text()
    );
    assert_eq!(
        hook.pages.lock().unwrap()[1]["probe"],
        "apache/restart",
        "the action's incident resolves with the probe's recovery"
    );
}

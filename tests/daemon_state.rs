//! What `watchdog run` keeps across a kill -9 and a reload: pages are never lost nor repeated,
//! budgets and incidents are not forgotten, a reload applies a diff (and refuses a bad config),
//! and two daemons cannot share a state dir.

mod common;

use std::time::Duration;

use common::{FakeApache, Receiver, TempDir, Watchdog, free_port, wait_until, watchdog_bin};

fn probe_config(apache: &FakeApache, hook_port: u16, budget: &str, start_mode: &str) -> String {
    let start = apache.start_toml(start_mode);
    format!(
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
url = "http://127.0.0.1:{hook_port}/hook"
timeout = "1s"
"#,
        url = apache.url("/"),
        pidfile = apache.pidfile.display(),
    )
}

/// The pager is down while an incident fires; the watchdog is killed -9 before it could deliver;
/// after a restart the receiver, now up, gets the firing page and then the resolve: once each,
/// in order.
#[test]
fn pages_survive_kill_9_and_arrive_once_in_order() {
    let dir = TempDir::new("outbox");
    let apache = FakeApache::start(dir.path(), "healthy");
    let hook_port = free_port();
    // The restart does not help until we say so: the service stays down across the kill.
    let cfg = dir.write(
        "watchdog.toml",
        &probe_config(&apache, hook_port, "1 per 10m", "status:503"),
    );
    let wd = Watchdog::run(&cfg, dir.path());
    assert!(
        wait_until(Duration::from_secs(10), || wd.has("state changed")),
        "{}",
        wd.log_text()
    );
    apache.set_mode("status:503");
    assert!(
        wait_until(Duration::from_secs(10), || wd.has("page delivery failed")),
        "{}",
        wd.log_text()
    );
    wd.kill9();

    let hook = Receiver::start_on(hook_port, false);
    let wd = Watchdog::run_logging_to(&cfg, &dir.path().join("second.log"));
    assert!(
        wait_until(Duration::from_secs(10), || hook.count("firing") == 1),
        "{:?}\n{}",
        hook.events(),
        wd.log_text()
    );
    // The incident and the spent budget came back with the state: no second restart.
    assert_eq!(wd.remedies("restart-apache"), 0, "{}", wd.log_text());
    apache.set_mode("healthy");
    assert!(
        wait_until(Duration::from_secs(10), || hook.count("resolved") == 1),
        "{:?}\n{}",
        hook.events(),
        wd.log_text()
    );
    let events: Vec<String> = hook.events().into_iter().map(|(e, _)| e).collect();
    assert_eq!(events, ["firing", "resolved"]);
    assert_eq!(wd.stop(), Some(0));
}

#[test]
fn reload_applies_a_diff_and_refuses_a_bad_config() {
    let dir = TempDir::new("reload");
    let a = FakeApache::start(&dir.path().join("a"), "status:503");
    let b = FakeApache::start(&dir.path().join("b"), "healthy");
    let c = FakeApache::start(&dir.path().join("c"), "status:500");
    let probe = |name: &str, apache: &FakeApache| {
        format!(
            "[[probe]]\nname = \"{name}\"\nkind = \"http\"\nurl = \"{}\"\ninterval = \"300ms\"\ntimeout = \"200ms\"\nfail_after = 1\n\n",
            apache.url("/")
        )
    };
    let header = "[watchdog]\nstate_dir = \"state\"\n\n";
    let cfg = dir.write(
        "watchdog.toml",
        &format!("{header}{}{}", probe("a", &a), probe("b", &b)),
    );
    let wd = Watchdog::run(&cfg, dir.path());
    let downs = |wd: &Watchdog, name: &str| {
        wd.messages("state changed")
            .iter()
            .filter(|e| e["fields"]["probe"] == name && e["fields"]["state"] == "down")
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || downs(&wd, "a") == 1),
        "{}",
        wd.log_text()
    );

    // a unchanged, b removed, c added.
    std::fs::write(
        &cfg,
        format!("{header}{}{}", probe("a", &a), probe("c", &c)),
    )
    .unwrap();
    wd.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || wd.has("config reloaded")),
        "{}",
        wd.log_text()
    );
    let reloaded = &wd.messages("config reloaded")[0]["fields"];
    assert_eq!(
        (
            reloaded["started"].as_u64(),
            reloaded["removed"].as_u64(),
            reloaded["unchanged"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{reloaded}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || downs(&wd, "c") == 1),
        "{}",
        wd.log_text()
    );
    // a kept its state: still down, never "down again" after the reload (two of its checks).
    assert!(
        !wait_until(Duration::from_millis(700), || downs(&wd, "a") > 1),
        "{}",
        wd.log_text()
    );

    // A bad config is refused with its errors, and the daemon goes on with the old one.
    std::fs::write(
        &cfg,
        format!("{header}[[probe]]\nname = \"x\"\nkind = \"htp\"\n"),
    )
    .unwrap();
    wd.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || wd.has(
            "reload refused: the new config is invalid; the old one keeps running"
        )),
        "{}",
        wd.log_text()
    );
    assert!(
        wd.log_text().contains("unknown probe kind \\\"htp\\\""),
        "{}",
        wd.log_text()
    );
    c.set_mode("healthy");
    assert!(
        wait_until(Duration::from_secs(10), || wd
            .messages("state changed")
            .iter()
            .any(
                |e| e["fields"]["probe"] == "c" && e["fields"]["state"] == "up"
            )),
        "c is still watched after the refused reload:\n{}",
        wd.log_text()
    );
    assert_eq!(wd.stop(), Some(0));
}

#[test]
fn two_daemons_cannot_share_a_state_dir() {
    let dir = TempDir::new("lock");
    let cfg = dir.write("watchdog.toml", "[watchdog]\nstate_dir = \"state\"\n");
    let first = Watchdog::run(&cfg, dir.path());
    let out = std::process::Command::new(watchdog_bin())
        .args(["run", "-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("held by pid {}", first.pid())),
        "{err}"
    );
    assert_eq!(first.stop(), Some(0));
}

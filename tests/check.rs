//! `watchdog check`, the cron one-shot, against real servers: counters persist across runs so
//! fail_after = 3 means the third run acts; exit codes as documented; bad input from the
//! target (garbage, a 1 GiB body, a trickle) ends in a clear failure, never a panic.

mod common;

use std::time::{Duration, Instant};

use common::{FakeApache, TempDir, watchdog};

fn check_config(dir: &TempDir, url: &str, marker: &std::path::Path) -> std::path::PathBuf {
    dir.write(
        "watchdog.toml",
        &format!(
            r#"[watchdog]
state_dir = "state"

[defaults]
interval = "1m"
timeout = "2s"
fail_after = 3
recover_after = 1
restart_grace = "0s"

[[probe]]
name = "apache"
kind = "http"
url = "{url}"
body_contains = "BusyWorkers"

[[rule]]
probe = "apache"
when = "down"
do = ["mark"]

[action.mark]
kind = "command"
command = ["/usr/bin/touch", "{marker}"]
"#,
            marker = marker.display()
        ),
    )
}

#[test]
fn three_cron_runs_act_on_the_third_only() {
    let dir = TempDir::new("check3");
    let apache = FakeApache::start(dir.path(), "status:500");
    let marker = dir.path().join("acted");
    let cfg = check_config(&dir, &apache.url("/server-status?auto"), &marker);
    let cfg = cfg.to_str().unwrap();

    for run in 1..=2 {
        let (code, out, err) = watchdog(&["check", "-c", cfg]);
        assert_eq!(code, 1, "run {run}: failing -> exit 1\n{out}{err}");
        assert!(out.contains("HTTP 500"), "{out}");
        assert!(!marker.exists(), "acted on run {run}");
    }
    let (code, out, err) = watchdog(&["check", "-c", cfg]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(marker.exists(), "third run must act:\n{out}{err}");
    assert!(out.contains("mark: exit 0"), "{out}");
    assert!(out.contains("down"), "{out}");

    // Healthy again: one success (recover_after = 1) -> up, exit 0, and JSON on request.
    apache.set_mode("healthy");
    let (code, out, err) = watchdog(&["check", "-c", cfg, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["rows"][0]["probe"], "apache");
    assert_eq!(report["rows"][0]["state"], "up");
    assert_eq!(report["rows"][0]["ok"], true);
}

#[test]
fn dry_run_decides_but_does_nothing() {
    let dir = TempDir::new("checkdry");
    let apache = FakeApache::start(dir.path(), "status:503");
    let marker = dir.path().join("acted");
    let cfg = check_config(&dir, &apache.url("/"), &marker);
    for _ in 0..3 {
        let (code, _, _) = watchdog(&["check", "-c", cfg.to_str().unwrap(), "--dry-run"]);
        assert_eq!(code, 1);
    }
    assert!(!marker.exists());
}

#[test]
fn exit_codes_for_bad_config_and_unknown_probe() {
    let dir = TempDir::new("checkbad");
    let bad = dir.write("bad.toml", "[[probe]]\nname = \"x\"\nkind = \"http\"\n");
    let (code, _, err) = watchdog(&["check", "-c", bad.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("needs `url`"), "{err}");

    let marker = dir.path().join("m");
    let cfg = check_config(&dir, "http://127.0.0.1:9/", &marker);
    let (code, _, err) = watchdog(&["check", "-c", cfg.to_str().unwrap(), "--probe", "nginx"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no probe named \"nginx\"; probes: apache"),
        "{err}"
    );
}

/// (mode, what the reason must say)
#[test]
fn bad_input_from_the_target_is_a_clear_failure_never_a_panic() {
    let dir = TempDir::new("badinput");
    let apache = FakeApache::start(dir.path(), "healthy");
    let marker = dir.path().join("m");
    let cfg = check_config(&dir, &apache.url("/server-status?auto"), &marker);
    let cases = [
        ("garbage", "bad response"),
        ("huge-body", "lacks \"BusyWorkers\" (in the first 64 KiB)"),
        ("trickle", "timeout after 2 s (reading the body)"),
        ("hang", "timeout after 2 s (waiting for the response)"),
        ("refuse", "connect failed"),
    ];
    for (mode, want) in cases {
        apache.set_mode(mode);
        let started = Instant::now();
        let (code, out, err) =
            watchdog(&["check", "-c", cfg.to_str().unwrap(), "--dry-run", "--json"]);
        let took = started.elapsed();
        assert_eq!(code, 1, "{mode}: {out}{err}");
        assert!(!err.contains("panicked"), "{mode}: {err}");
        let report: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{mode}: {e}: {out}"));
        let reason = report["rows"][0]["reason"].as_str().unwrap().to_string();
        assert!(
            reason.contains(want),
            "{mode}: reason {reason:?} lacks {want:?}"
        );
        assert!(took < Duration::from_secs(5), "{mode}: took {took:?}");
    }
    apache.set_mode("healthy");
    // A 1 GiB body was offered: the watchdog read 64 KiB of it. Its peak RSS proves it.
    let rusage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    let peak_kib = rusage.max_rss();
    assert!(
        peak_kib < 64 * 1024,
        "a child of this test peaked at {peak_kib} KiB"
    );
}

/// Monit-style stop/start programs: run in order, without a shell, with the incident in env.
#[test]
fn stop_then_start_programs_get_the_incident_in_their_environment() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("stopstart");
    let apache = FakeApache::start(dir.path(), "status:502");
    let log = dir.path().join("programs.log");
    let script = dir.write(
        "record.sh",
        &format!("#!/bin/sh\necho \"$1 $WATCHDOG_PROBE $WATCHDOG_STATE incident=$WATCHDOG_INCIDENT action=$WATCHDOG_ACTION reason=$WATCHDOG_REASON\" >> {}\n", log.display()),
    );
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = dir.write(
        "watchdog.toml",
        &format!(
            r#"[watchdog]
state_dir = "state"

[[probe]]
name = "apache"
kind = "http"
url = "{url}"
fail_after = 1

[[rule]]
probe = "apache"
when = "down"
do = ["restart"]

[action.restart]
kind = "command"
stop = ["{script}", "stop"]
start = ["{script}", "start"]
"#,
            url = apache.url("/"),
            script = script.display()
        ),
    );
    let (code, out, err) = watchdog(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let lines = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}\n{out}");
    assert!(
        lines[0].starts_with("stop apache down incident=1 action=restart reason=HTTP 502 in "),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("start apache down incident=1 action=restart reason=HTTP 502 in "),
        "{lines:?}"
    );
    assert!(
        out.contains("restart: record.sh: exit 0; record.sh: exit 0"),
        "{out}"
    );
}

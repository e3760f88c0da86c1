//! The shipped unit, systemd/uptime-watchdog.service, under a real systemd (booted as PID 1 in
//! namespaces of its own by [`systemd_ns::SystemdNs`]): `Type=notify` start, the failure
//! before READY, `WatchdogSec=` restarts, `systemctl reload`, and logs in journald.
//!
//! And the `systemd` action against that systemd's own bus: the daemon (in the shipped unit's
//! sandbox) restarting a failing fake apache unit over D-Bus, the start limit reported and not
//! hammered, a job outliving its timeout, `kill`, the user bus (root's `user@0.service`), and
//! the systemctl fallback with dbus stopped. Short-lived checks run `watchdog check` inside the
//! namespace (`nsenter`), where the bus sockets are the namespace's.
//!
//! Each test installs a copy of the shipped unit changed only where a test must differ
//! (see [`test_unit`]): the binary and config paths, shorter timers, and the state dir.
//! Measured figures are printed (`cargo test --test systemd -- --nocapture`).

mod common;
mod systemd_ns;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{TempDir, wait_until};
use systemd_ns::SystemdNs;

const SHIPPED_UNIT: &str = include_str!("../systemd/uptime-watchdog.service");
const UNIT: &str = "uptime-watchdog.service";

/// The shipped unit, adapted to a test. Each change must match a line of the shipped unit, so
/// a change there that the tests no longer follow fails here rather than passing silently.
/// - binary and config: the test build and the test's config;
/// - `WatchdogSec=3`, `RestartSec=500ms`: restarts within a test's patience;
/// - `StateDirectory=` becomes `ReadWritePaths=` of the test dir: the namespace shares the
///   host's /var/lib, and a test must not create /var/lib/uptime-watchdog there;
/// - no `EnvironmentFile=`: the host's /etc/uptime-watchdog is none of a test's business.
///
/// All the sandboxing stays: it works inside the namespace.
fn test_unit(bin: &Path, config: &Path, dir: &Path) -> String {
    let bin = bin.to_str().unwrap();
    let shipped_config = "/etc/uptime-watchdog/watchdog.toml";
    assert!(
        SHIPPED_UNIT.contains("/usr/local/bin/watchdog") && SHIPPED_UNIT.contains(shipped_config)
    );
    let mut text = SHIPPED_UNIT
        .replace("/usr/local/bin/watchdog", bin)
        .replace(shipped_config, &config.display().to_string());
    let changes: [(&str, Option<String>); 5] = [
        ("WatchdogSec=", Some("WatchdogSec=3".into())),
        ("RestartSec=", Some("RestartSec=500ms".into())),
        (
            "StateDirectory=",
            Some(format!("ReadWritePaths={}", dir.display())),
        ),
        ("StateDirectoryMode=", None),
        ("EnvironmentFile=", None),
    ];
    for (prefix, replacement) in changes {
        let mut found = false;
        text = text
            .lines()
            .filter_map(|line| {
                if !line.starts_with(prefix) {
                    return Some(line.to_string());
                }
                found = true;
                replacement.clone()
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(found, "the shipped unit has no {prefix} line any more");
    }
    text + "\n"
}

/// A probe against `port`: a tcp connect every 500 ms, down after one failure.
fn tcp_probe(name: &str, port: u16) -> String {
    format!(
        "[[probe]]\nname = \"{name}\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{port}\"\n\
         interval = \"500ms\"\ntimeout = \"300ms\"\nfail_after = 1\n\n"
    )
}

/// A private systemd with our unit installed (not started), its config and state in `dir`.
/// Fields drop in order: the namespace first, then the files it used.
struct Fixture {
    ns: SystemdNs,
    config: PathBuf,
    state_dir: PathBuf,
    dir: HostDir,
}

/// A directory for a test's binary, config and state that the unit can see: not under /tmp or
/// /var/tmp, which the namespace (a fresh /tmp) and the unit (`PrivateTmp=`) both replace, so
/// a checkout under /tmp would be invisible to the service. Removed when dropped.
struct HostDir(PathBuf);

impl HostDir {
    fn new(tag: &str) -> HostDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = PathBuf::from("/var/lib/uptime-watchdog-tests")
            .join(format!("{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        HostDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // The parent goes too once the last test is done with it.
        let _ = std::fs::remove_dir(self.0.parent().unwrap());
    }
}

impl Fixture {
    fn new(tag: &str, probes: &str) -> Fixture {
        let dir = HostDir::new(&format!("systemd-{tag}"));
        // A copy of the test build where the unit can reach it.
        let bin = dir.path().join("watchdog");
        std::fs::copy(env!("CARGO_BIN_EXE_watchdog"), &bin).unwrap();
        let state_dir = dir.path().join("state");
        let fixture_config = dir.path().join("watchdog.toml");
        let ns = SystemdNs::boot(tag, dir.path());
        let f = Fixture {
            ns,
            config: fixture_config,
            state_dir,
            dir,
        };
        f.write_config(probes);
        f.ns.install_unit(UNIT, &test_unit(&bin, &f.config, f.dir.path()));
        f
    }

    fn write_config(&self, probes: &str) {
        let text = format!(
            "[watchdog]\nstate_dir = \"{}\"\n\n{probes}",
            self.state_dir.display()
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// `systemctl start`, which returns once the unit is active; how long it took.
    fn start(&self) -> Duration {
        let t0 = Instant::now();
        self.ns.systemctl_ok(&["start", UNIT]);
        t0.elapsed()
    }

    fn prop(&self, name: &str) -> String {
        self.ns.prop(UNIT, name)
    }

    fn prop_of(&self, unit: &str, name: &str) -> String {
        self.ns.prop(unit, name)
    }

    /// The daemon's journal entries with this MESSAGE.
    fn logged(&self, message: &str) -> Vec<serde_json::Value> {
        self.ns
            .journal(&["-u", UNIT])
            .into_iter()
            .filter(|e| e["MESSAGE"] == message)
            .collect()
    }

    /// What to show when an assertion fails: the unit's state and its journal.
    fn diagnose(&self) -> String {
        let status = self.ns.systemctl(&["status", UNIT]);
        let journal = self.ns.exec(&["journalctl", "--no-pager", "-u", UNIT]);
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&journal.stdout)
        )
    }
}

/// A port that refuses connections for as long as the socket lives: bound, never listening
/// (the kernel answers RST), and held so that no other test can take it meanwhile.
fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

#[test]
fn the_shipped_unit_passes_systemd_analyze_verify() {
    let dir = TempDir::new("systemd-verify");
    let config = dir.write("watchdog.toml", "[watchdog]\n");
    // Only the binary path must exist for `verify`; the rest is the shipped unit, hardening
    // and all.
    let unit = SHIPPED_UNIT.replace("/usr/local/bin/watchdog", env!("CARGO_BIN_EXE_watchdog"));
    let unit = unit.replace(
        "/etc/uptime-watchdog/watchdog.toml",
        &config.display().to_string(),
    );
    let path = dir.write(UNIT, &unit);
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {text}");
    assert!(
        !text.contains(UNIT),
        "systemd-analyze verify complains about the unit:\n{text}"
    );
}

#[test]
fn the_unit_is_active_only_once_the_daemon_said_ready() {
    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let f = Fixture::new("ready", &tcp_probe("web", up.local_addr().unwrap().port()));
    let took = f.start();
    let p = f.ns.props(
        UNIT,
        &[
            "Type",
            "ActiveState",
            "SubState",
            "StatusText",
            "ExecMainStartTimestampMonotonic",
            "ActiveEnterTimestampMonotonic",
        ],
    );
    assert_eq!(p["Type"], "notify");
    assert_eq!(
        (p["ActiveState"].as_str(), p["SubState"].as_str()),
        ("active", "running"),
        "{}",
        f.diagnose()
    );
    // STATUS= travels in the READY=1 datagram: set by the time `start` returned, it shows that
    // systemd waited for READY=1 (with Type=exec it would still be empty). The probe has not
    // been checked yet, or just has.
    let status = p["StatusText"].as_str();
    assert!(
        matches!(status, "1 probes, 1 starting" | "1 probes, all up"),
        "{status}\n{}",
        f.diagnose()
    );
    let main_started: u64 = p["ExecMainStartTimestampMonotonic"].parse().unwrap();
    let active: u64 = p["ActiveEnterTimestampMonotonic"].parse().unwrap();
    assert!(active >= main_started);
    assert_eq!(f.logged("watchdog running").len(), 1, "{}", f.diagnose());
    eprintln!(
        "measured: `systemctl start` {:.0} ms (validate + start + READY); exec to READY {:.1} ms",
        took.as_secs_f64() * 1000.0,
        (active - main_started) as f64 / 1000.0
    );
}

#[test]
fn the_unit_fails_while_another_daemon_holds_the_state_dir_and_recovers_after() {
    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let f = Fixture::new("locked", &tcp_probe("web", up.local_addr().unwrap().port()));
    // Another daemon: we hold its lock the way it would.
    let lock = uptime_watchdog::state::lock(&f.state_dir, "daemon.lock", Duration::ZERO).unwrap();

    let out = f.ns.systemctl(&["start", UNIT]);
    assert!(
        !out.status.success(),
        "start succeeded although the state dir is locked\n{}",
        f.diagnose()
    );
    // It exited before READY=1: never active, and it said why.
    assert_ne!(f.prop("ActiveState"), "active", "{}", f.diagnose());
    assert!(
        f.ns.journal(&["-u", UNIT]).iter().any(|e| e["MESSAGE"]
            .as_str()
            .is_some_and(|m| m.contains("another watchdog uses state_dir"))),
        "{}",
        f.diagnose()
    );

    // Restart=always: once the other daemon is gone, it comes up on its own.
    drop(lock);
    let t0 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(15), || f.prop("ActiveState")
            == "active"),
        "not active after the lock was released\n{}",
        f.diagnose()
    );
    let restarts: u32 = f.prop("NRestarts").parse().unwrap();
    assert!(restarts >= 1);
    eprintln!(
        "measured: active {:.0} ms after the lock was released, after {restarts} restarts",
        t0.elapsed().as_secs_f64() * 1000.0
    );
}

#[test]
fn a_stopped_daemon_is_killed_and_restarted_by_the_systemd_watchdog() {
    let up = TcpListener::bind("127.0.0.1:0").unwrap();
    let f = Fixture::new("wdog", &tcp_probe("web", up.local_addr().unwrap().port()));
    f.start();
    assert_eq!(f.prop("WatchdogUSec"), "3s");
    let pid = f.prop("MainPID");
    // Keep-alives arrive: systemd's record of the last one moves on.
    let first = f.prop("WatchdogTimestampMonotonic");
    assert!(
        wait_until(Duration::from_secs(5), || f
            .prop("WatchdogTimestampMonotonic")
            != first),
        "no WATCHDOG=1 within 5 s\n{}",
        f.diagnose()
    );

    f.ns.exec_ok(&["kill", "-STOP", &pid]);
    let stopped = Instant::now();
    let restarted = wait_until(Duration::from_secs(20), || {
        let p = f.ns.props(UNIT, &["MainPID", "NRestarts", "ActiveState"]);
        p["NRestarts"] == "1" && p["MainPID"] != pid && p["ActiveState"] == "active"
    });
    let took = stopped.elapsed();
    assert!(restarted, "not restarted within 20 s\n{}", f.diagnose());
    // After at most WatchdogSec (3 s) since the last keep-alive (sent every second), plus
    // RestartSec (0.5 s) and the start: between 2 and 3.5 s and a little; 8 s is a bound for
    // a loaded machine.
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "restarted after {took:?}"
    );
    let timeouts =
        f.ns.journal(&["-u", UNIT])
            .into_iter()
            .filter(|e| {
                e["MESSAGE"]
                    .as_str()
                    .is_some_and(|m| m.contains("Watchdog timeout"))
            })
            .count();
    assert_eq!(timeouts, 1, "{}", f.diagnose());
    eprintln!(
        "measured: SIGSTOP -> new MainPID active after {:.0} ms (WatchdogSec=3, RestartSec=500ms)",
        took.as_secs_f64() * 1000.0
    );
}

#[test]
fn systemctl_reload_applies_a_new_config_and_refuses_a_broken_one() {
    let (web, db) = (
        TcpListener::bind("127.0.0.1:0").unwrap(),
        TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    let web_probe = tcp_probe("web", web.local_addr().unwrap().port());
    let f = Fixture::new("reload", &web_probe);
    f.start();
    let pid = f.prop("MainPID");
    assert!(
        wait_until(Duration::from_secs(10), || f.prop("StatusText")
            == "1 probes, all up"),
        "{}",
        f.diagnose()
    );

    let db_probe = tcp_probe("db", db.local_addr().unwrap().port());
    f.write_config(&format!("{web_probe}{db_probe}"));
    let t0 = Instant::now();
    f.ns.systemctl_ok(&["reload", UNIT]);
    let reload_returned = t0.elapsed();
    assert!(
        wait_until(Duration::from_secs(10), || f.prop("StatusText")
            == "2 probes, all up"),
        "{}",
        f.diagnose()
    );
    let applied = t0.elapsed();
    // A diff, in the same process: db started, web kept.
    let reloaded = f.logged("config reloaded");
    assert_eq!(reloaded.len(), 1, "{}", f.diagnose());
    assert_eq!(reloaded[0]["STARTED"], "1");
    assert_eq!(reloaded[0]["UNCHANGED"], "1");
    let p = f.ns.props(UNIT, &["MainPID", "NRestarts", "ActiveState"]);
    assert_eq!(
        (
            p["MainPID"].as_str(),
            p["NRestarts"].as_str(),
            p["ActiveState"].as_str()
        ),
        (pid.as_str(), "0", "active")
    );

    // A broken config: ExecReload= validates first, so `systemctl reload` fails, and the
    // daemon keeps its two probes, never signalled.
    f.write_config(&format!(
        "{web_probe}{db_probe}[[probe]]\nname = \"x\"\nkind = \"htp\"\n"
    ));
    let out = f.ns.systemctl(&["reload", UNIT]);
    assert!(!out.status.success(), "reload of a broken config succeeded");
    assert_eq!(f.prop("ActiveState"), "active");
    assert_eq!(f.prop("MainPID"), pid);
    assert_eq!(f.prop("StatusText"), "2 probes, all up");
    assert_eq!(f.logged("SIGHUP: reloading the config").len(), 1);
    eprintln!(
        "measured: `systemctl reload` returned after {:.0} ms, StatusText showed 2 probes after {:.0} ms",
        reload_returned.as_secs_f64() * 1000.0,
        applied.as_secs_f64() * 1000.0
    );
}

#[test]
fn logs_land_in_journald_with_structured_fields() {
    let (_held, port) = refusing_port();
    let f = Fixture::new("journal", &tcp_probe("apache", port));
    f.start();
    let t0 = Instant::now();
    let mut entry = None;
    let found = wait_until(Duration::from_secs(10), || {
        entry =
            f.ns.journal(&["-u", UNIT, "PROBE=apache"])
                .into_iter()
                .find(|e| e["MESSAGE"] == "state changed" && e["STATE"] == "down");
        entry.is_some()
    });
    assert!(
        found,
        "no \"state changed\" entry for apache\n{}",
        f.diagnose()
    );
    let entry = entry.unwrap();
    assert_eq!(entry["PROBE"], "apache");
    assert_eq!(entry["FROM"], "starting");
    let reason = entry["REASON"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("127.0.0.1:{port}")) && reason.contains("refused"),
        "REASON={reason}"
    );
    // Logged as a warning, by our process, attributed to our unit.
    assert_eq!(entry["PRIORITY"], "4");
    assert_eq!(entry["SYSLOG_IDENTIFIER"], "watchdog");
    assert_eq!(entry["_SYSTEMD_UNIT"], UNIT);
    assert_eq!(entry["_PID"], f.prop("MainPID"));
    // And STATUS= followed.
    assert!(
        wait_until(Duration::from_secs(5), || f.prop("StatusText")
            == "1 probes, 1 down: apache"),
        "{}",
        f.diagnose()
    );
    eprintln!(
        "measured: \"state changed\" in the journal {:.0} ms after start",
        t0.elapsed().as_secs_f64() * 1000.0
    );
}

// --- The `systemd` action: restarts over D-Bus -------------------------------------------------

/// The fake apache as a unit of the namespace's systemd, from a copy of the example binary in
/// the fixture's directory (see [`HostDir`]).
fn install_fake_apache(f: &Fixture, unit: &str, port: u16, control: u16) {
    let bin = f.dir.path().join("fake_apache");
    if !bin.exists() {
        std::fs::copy(common::fake_apache_bin(), &bin).unwrap();
    }
    let text = format!(
        "[Service]\nExecStart={} --listen 127.0.0.1:{port} --control 127.0.0.1:{control} --workers 3\n",
        bin.display()
    );
    f.ns.install_unit(unit, &text);
}

/// Does the fake apache on `port` answer 200 right now?
fn serves(port: u16) -> bool {
    common::http(
        &format!("127.0.0.1:{port}"),
        "GET",
        "/server-status?auto",
        "",
        Duration::from_millis(500),
    )
    .is_ok_and(|(status, body)| status == 200 && body.contains("BusyWorkers"))
}

/// A probe that always fails (a refused port, held by the caller), a rule that runs `action` on
/// every failure (no grace, a roomy budget), and the action's TOML.
fn failing_probe_running(port: u16, action: &str, action_toml: &str) -> String {
    format!(
        "{}restart_grace = \"0s\"\n\n[[rule]]\nprobe = \"svc\"\nwhen = \"down\"\ndo = [\"{action}\"]\n\
         budget = \"20 per 1m\"\n\n[action.{action}]\n{action_toml}\n",
        tcp_probe("svc", port)
    )
}

/// `watchdog check --json` run inside the namespace (so it reaches that systemd's bus): the
/// lines of what it did about probe `svc`, and how long the run took.
fn check_actions_inside(f: &Fixture) -> (Vec<String>, Duration) {
    check_actions_inside_with(f, &[])
}

/// The same, with environment variables (`NAME=value`) for the check.
fn check_actions_inside_with(f: &Fixture, env: &[&str]) -> (Vec<String>, Duration) {
    let bin = f.dir.path().join("watchdog");
    let t0 = Instant::now();
    let mut argv = vec!["env"];
    argv.extend_from_slice(env);
    argv.extend_from_slice(&[
        bin.to_str().unwrap(),
        "check",
        "--json",
        "-c",
        f.config.to_str().unwrap(),
    ]);
    let out = f.ns.exec(&argv);
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "check --json: {e}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let row = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["probe"] == "svc")
        .expect("a row for svc")
        .clone();
    let actions = row["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    (actions, took)
}

/// How many times systemd refused a start of `unit` for its start limit.
fn start_limit_refusals(f: &Fixture, unit: &str) -> usize {
    f.ns.journal(&["-u", unit])
        .iter()
        .filter(|e| {
            e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.contains("Start request repeated too quickly"))
        })
        .count()
}

#[test]
fn the_daemon_restarts_a_failing_unit_over_dbus() {
    let (port, control) = (common::free_port(), common::free_port());
    let probe = format!(
        "[[probe]]\nname = \"apache\"\nkind = \"http\"\nurl = \"http://127.0.0.1:{port}/\"\n\
         interval = \"500ms\"\ntimeout = \"400ms\"\nfail_after = 2\n\n\
         [[rule]]\nprobe = \"apache\"\nwhen = \"down\"\ndo = [\"restart-apache\"]\n\n\
         [action.restart-apache]\nkind = \"systemd\"\nunit = \"fake-apache.service\"\n\
         operation = \"restart\"\ntimeout = \"30s\"\n"
    );
    let f = Fixture::new("dbus-restart", &probe);
    install_fake_apache(&f, "fake-apache.service", port, control);
    f.ns.systemctl_ok(&["start", "fake-apache.service"]);
    assert!(
        wait_until(Duration::from_secs(10), || serves(port)),
        "the fake apache unit does not serve"
    );
    let before = f.ns.props(
        "fake-apache.service",
        &["MainPID", "NRestarts", "InvocationID"],
    );
    f.start();

    // 2009 again: the service answers, but with 504s.
    let (status, body) = common::http(
        &format!("127.0.0.1:{control}"),
        "POST",
        "/mode/status:504",
        "",
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let broken = Instant::now();
    let mut after = BTreeMap::new();
    let recovered = wait_until(Duration::from_secs(30), || {
        after = f.ns.props(
            "fake-apache.service",
            &["MainPID", "NRestarts", "InvocationID", "ActiveState"],
        );
        after["InvocationID"] != before["InvocationID"]
            && after["ActiveState"] == "active"
            && serves(port)
    });
    let took = broken.elapsed();
    assert!(
        recovered,
        "not restarted within 30 s: {after:?}\n{}",
        f.diagnose()
    );
    assert_ne!(after["MainPID"], before["MainPID"]);

    // The remedy's own account, from the daemon's journal: the job's result and both states.
    let mut result = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let done = f.logged("remedy done");
            result = done
                .first()
                .and_then(|e| e["RESULT"].as_str())
                .unwrap_or_default()
                .to_string();
            !result.is_empty()
        }),
        "no \"remedy done\"\n{}",
        f.diagnose()
    );
    assert!(
        result.starts_with("restart of fake-apache.service: done in "),
        "{result}"
    );
    // The MainPIDs are the namespace's, as systemd reports them.
    let pids = format!("MainPID {} -> {}", before["MainPID"], after["MainPID"]);
    assert!(result.contains("active/running"), "{result}");
    assert!(result.contains(&pids), "{result} lacks {pids}");
    assert!(
        result.contains(&format!(
            "NRestarts {} -> {}",
            before["NRestarts"], after["NRestarts"]
        )),
        "{result}"
    );
    // A restart asked for is systemd's job, not our child: the watchdog's unit holds no apache.
    let cgroup =
        f.ns.exec_ok(&["cat", &format!("/proc/{}/cgroup", after["MainPID"])]);
    assert!(cgroup.contains("fake-apache.service"), "{cgroup}");
    eprintln!(
        "measured: 504 -> restarted over D-Bus and serving in {:.0} ms (500 ms interval, fail_after 2); \
         NRestarts {} -> {}; remedy: {result}",
        took.as_secs_f64() * 1000.0,
        before["NRestarts"],
        after["NRestarts"]
    );
}

#[test]
fn a_unit_failed_by_its_start_limit_is_reported_as_such_and_not_hammered() {
    let (_held, port) = refusing_port();
    let action = "kind = \"systemd\"\nunit = \"flaky.service\"\ntimeout = \"20s\"";
    let f = Fixture::new(
        "dbus-limit",
        &failing_probe_running(port, "restart-flaky", action),
    );
    // A service that fails at every start; two starts per 5 minutes allowed, both used up.
    f.ns.install_unit(
        "flaky.service",
        "[Unit]\nStartLimitIntervalSec=300\nStartLimitBurst=2\n\n\
         [Service]\nType=oneshot\nExecStart=/bin/false\n",
    );
    for _ in 0..2 {
        assert!(!f.ns.systemctl(&["start", "flaky.service"]).status.success());
    }
    assert_eq!(start_limit_refusals(&f, "flaky.service"), 0);

    // The daemon's probe fails every 500 ms and each failure asks for a restart.
    f.start();
    let mut errors: Vec<String> = Vec::new();
    let t0 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || {
            errors = f
                .logged("remedy failed")
                .iter()
                .filter_map(|e| e["ERROR"].as_str().map(str::to_string))
                .collect();
            errors.len() >= 4
        }),
        "fewer than 4 failed remedies: {errors:?}\n{}",
        f.diagnose()
    );
    // The first, our third start, is refused by systemd: the error says why.
    assert!(
        errors[0].starts_with("restart of flaky.service: job failed after "),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].contains("refused by systemd's start limit (more than 2 starts within 300 s"),
        "{}",
        errors[0]
    );
    // The next ones ask systemd nothing while the limit holds, and say so.
    for e in &errors[1..] {
        assert!(
            e.starts_with("restart of flaky.service: not tried: the unit is failed because systemd's start limit was hit"),
            "{e}"
        );
    }
    assert_eq!(
        start_limit_refusals(&f, "flaky.service"),
        1,
        "{}",
        f.diagnose()
    );
    eprintln!(
        "measured: {} restarts asked in {:.1} s, 1 reached systemd; first: {}; then: {}",
        errors.len(),
        t0.elapsed().as_secs_f64(),
        errors[0],
        errors[1]
    );
}

#[test]
fn a_job_that_outlives_the_timeout_is_an_error_naming_the_unit() {
    let (_held, port) = refusing_port();
    let action =
        "kind = \"systemd\"\nunit = \"slow.service\"\noperation = \"start\"\ntimeout = \"1s\"";
    let f = Fixture::new(
        "dbus-timeout",
        &failing_probe_running(port, "start-slow", action),
    );
    // Its start job lasts as long as ExecStart= of a oneshot runs.
    f.ns.install_unit(
        "slow.service",
        "[Service]\nType=oneshot\nExecStart=/bin/sleep 60\n",
    );
    let (actions, took) = check_actions_inside(&f);
    assert_eq!(actions.len(), 1, "{actions:?}");
    let line = &actions[0];
    assert!(
        line.starts_with(
            "start-slow: FAILED: start of slow.service: job /org/freedesktop/systemd1/job/"
        ),
        "{line}"
    );
    assert!(
        line.contains("still running after 1 s (activating/start"),
        "{line}"
    );
    // Left to systemd, not cancelled.
    assert_eq!(f.prop_of("slow.service", "ActiveState"), "activating");
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    eprintln!(
        "measured: a check run whose start job times out at 1 s took {:.0} ms: {line}",
        took.as_secs_f64() * 1000.0
    );
}

#[test]
fn without_the_bus_systemctl_is_the_fallback() {
    let (_held, port) = refusing_port();
    let action = "kind = \"systemd\"\nunit = \"sleeper.service\"\ntimeout = \"20s\"";
    let f = Fixture::new(
        "dbus-fallback",
        &failing_probe_running(port, "restart-sleeper", action),
    );
    f.ns.install_unit("sleeper.service", "[Service]\nExecStart=/bin/sleep 1000\n");
    f.ns.systemctl_ok(&["start", "sleeper.service"]);
    let before = f.prop_of("sleeper.service", "MainPID");
    // No dbus-daemon any more; systemctl still reaches systemd over /run/systemd/private.
    f.ns.systemctl_ok(&["stop", "dbus.socket", "dbus.service"]);

    let (actions, _) = check_actions_inside(&f);
    assert_eq!(actions.len(), 1, "{actions:?}");
    let line = &actions[0];
    let after = f.prop_of("sleeper.service", "MainPID");
    assert_ne!(after, before);
    assert!(
        line.starts_with("restart-sleeper: restart of sleeper.service: done in "),
        "{line}"
    );
    assert!(
        line.contains(&format!("MainPID {before} -> {after}")),
        "{line}"
    );
    assert!(
        line.contains("(over systemctl: the system bus is unreachable"),
        "{line}"
    );
}

#[test]
fn bus_user_restarts_a_service_of_the_user_manager() {
    let (_held, port) = refusing_port();
    let action =
        "kind = \"systemd\"\nunit = \"sleeper.service\"\nbus = \"user\"\ntimeout = \"20s\"";
    let f = Fixture::new(
        "dbus-user",
        &failing_probe_running(port, "restart-sleeper", action),
    );
    // root's own service manager (systemd --user) and its user bus, /run/user/0/bus.
    f.ns.systemctl_ok(&["start", "user@0.service"]);
    let user_units = Path::new("/proc")
        .join(f.ns.pid1.to_string())
        .join("root/run/systemd/user");
    std::fs::create_dir_all(&user_units).unwrap();
    std::fs::write(
        user_units.join("sleeper.service"),
        "[Service]\nExecStart=/bin/sleep 1000\n",
    )
    .unwrap();
    let user = ["env", "XDG_RUNTIME_DIR=/run/user/0", "systemctl", "--user"];
    let run_user = |args: &[&str]| {
        let mut argv = user.to_vec();
        argv.extend_from_slice(args);
        f.ns.exec_ok(&argv)
    };
    run_user(&["daemon-reload"]);
    run_user(&["start", "sleeper.service"]);
    let main_pid = || {
        run_user(&["show", "sleeper.service", "-p", "MainPID", "--value"])
            .trim()
            .to_string()
    };
    let before = main_pid();
    // The system manager has no such unit: only the user bus can restart it.
    assert_eq!(f.prop_of("sleeper.service", "LoadState"), "not-found");

    let (actions, took) = check_actions_inside_with(&f, &["XDG_RUNTIME_DIR=/run/user/0"]);
    let after = main_pid();
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert!(
        actions[0].starts_with("restart-sleeper: restart of sleeper.service: done in "),
        "{}",
        actions[0]
    );
    assert!(
        actions[0].contains(&format!("active/running, MainPID {before} -> {after}")),
        "{}",
        actions[0]
    );
    assert_ne!(before, after);
    assert!(!actions[0].contains("over systemctl"), "{}", actions[0]);
    eprintln!(
        "measured: restart of a user service over the user bus, check run {:.0} ms: {}",
        took.as_secs_f64() * 1000.0,
        actions[0]
    );
}

#[test]
fn kill_signals_the_unit_and_systemd_restarts_it_by_its_own_policy() {
    let (_held, port) = refusing_port();
    let action =
        "kind = \"systemd\"\nunit = \"sleeper.service\"\noperation = \"kill\"\nsignal = \"KILL\"";
    let f = Fixture::new(
        "dbus-kill",
        &failing_probe_running(port, "kill-sleeper", action),
    );
    // A worker beside the main process: `kill` reaches every process of the unit.
    f.ns.install_unit(
        "sleeper.service",
        "[Service]\nExecStart=/bin/sh -c 'sleep 1000 & exec sleep 1001'\nRestart=always\nRestartSec=100ms\n",
    );
    f.ns.systemctl_ok(&["start", "sleeper.service"]);
    let procs = || {
        let cgroup = f.ns.exec_ok(&[
            "systemctl",
            "show",
            "sleeper.service",
            "-p",
            "ControlGroup",
            "--value",
        ]);
        f.ns.exec_ok(&[
            "cat",
            &format!("/sys/fs/cgroup{}/cgroup.procs", cgroup.trim()),
        ])
        .lines()
        .map(str::to_string)
        .collect::<Vec<_>>()
    };
    let mut old = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        old = procs();
        old.len() == 2
    }));
    let before = f.ns.props("sleeper.service", &["MainPID", "NRestarts"]);
    assert_eq!(before["NRestarts"], "0");

    let (actions, _) = check_actions_inside(&f);
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert!(
        actions[0].starts_with(
            "kill-sleeper: kill of sleeper.service: sent SIGKILL to all its processes; "
        ),
        "{}",
        actions[0]
    );
    // Restart=always did the rest: this time NRestarts counts it.
    let mut after = BTreeMap::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            after =
                f.ns.props("sleeper.service", &["MainPID", "NRestarts", "ActiveState"]);
            after["NRestarts"] == "1" && after["ActiveState"] == "active"
        }),
        "{after:?}"
    );
    assert_ne!(after["MainPID"], before["MainPID"]);
    // The old worker went with the main process: two new processes, none of the old.
    let mut new = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            new = procs();
            new.len() == 2
        }),
        "{new:?}"
    );
    assert!(
        new.iter().all(|p| !old.contains(p)),
        "old {old:?}, new {new:?}"
    );
}

#[test]
fn a_unit_that_does_not_exist_is_an_error_naming_it() {
    let (_held, port) = refusing_port();
    let action = "kind = \"systemd\"\nunit = \"no-such-thing.service\"";
    let f = Fixture::new(
        "dbus-missing",
        &failing_probe_running(port, "restart-it", action),
    );
    let (actions, _) = check_actions_inside(&f);
    assert_eq!(
        actions,
        [
            "restart-it: FAILED: restart of no-such-thing.service: the unit cannot be acted on: LoadState=not-found"
        ]
    );
}

//! The daemon's local API through the real binary and a real Prometheus text parser:
//! `watchdog status`, `/metrics`, pause/resume/reload, and a socket other users cannot reach.

mod common;

use std::time::Duration;

use common::{FakeApache, TempDir, Watchdog, wait_until, watchdog};

fn config(dir: &TempDir, up: &FakeApache, down: &FakeApache) -> std::path::PathBuf {
    let probe = |name: &str, apache: &FakeApache| {
        format!(
            "[[probe]]\nname = \"{name}\"\nkind = \"http\"\nurl = \"{}\"\ninterval = \"300ms\"\ntimeout = \"200ms\"\nfail_after = 1\n\n",
            apache.url("/")
        )
    };
    dir.write(
        "watchdog.toml",
        &format!(
            "[watchdog]\nstate_dir = \"state\"\n\n{}{}",
            probe("web", up),
            probe("api", down)
        ),
    )
}

fn status_json(cfg: &str) -> serde_json::Value {
    let (code, out, err) = watchdog(&["status", "--json", "-c", cfg]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn probe<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()
}

#[test]
fn status_metrics_pause_resume_and_reload() {
    let dir = TempDir::new("api");
    let up = FakeApache::start(&dir.path().join("up"), "healthy");
    let down = FakeApache::start(&dir.path().join("down"), "status:503");
    let cfg = config(&dir, &up, &down);
    let cfg_s = cfg.to_str().unwrap();
    let wd = Watchdog::run(&cfg, dir.path());
    assert!(
        wait_until(Duration::from_secs(10), || {
            let r = status_json(cfg_s);
            probe(&r, "web")["state"] == "up" && probe(&r, "api")["state"] == "down"
        }),
        "{}",
        wd.log_text()
    );
    let report = status_json(cfg_s);
    assert!(
        probe(&report, "api")["last_reason"]
            .as_str()
            .unwrap()
            .starts_with("HTTP 503 in")
    );
    assert_eq!(report["pid"].as_u64(), Some(wd.pid() as u64));

    let (code, table, _) = watchdog(&["status", "-c", cfg_s]);
    assert_eq!(code, 0);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("api") && l.contains("down") && l.contains("HTTP 503")),
        "{table}"
    );

    // /metrics parses as Prometheus text and says what the status says.
    let socket = dir.path().join("state/watchdog.sock");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (code, text) = runtime
        .block_on(uptime_watchdog::status::request(
            &socket,
            reqwest::Method::GET,
            "/metrics",
        ))
        .unwrap();
    assert_eq!(code, 200);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |name: &str, probe: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("probe") == Some(probe))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(value("watchdog_probe_up", "web"), Some(1.0), "{text}");
    assert_eq!(value("watchdog_probe_up", "api"), Some(0.0), "{text}");
    assert!(
        value("watchdog_probe_failures_total", "api").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric.starts_with("watchdog_probe_duration_seconds")),
        "{text}"
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "watchdog_build_info"),
        "{text}"
    );

    // Pause: ignored results, shown in status, kept until resumed.
    let (code, out, err) = watchdog(&["pause", "api", "--for", "30m", "-c", cfg_s]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "api paused for 30m");
    let paused = status_json(cfg_s);
    let left = probe(&paused, "api")["paused"]
        .as_u64()
        .expect("paused with time left");
    assert!((1700..=1800).contains(&left), "{left}");
    let (code, _, err) = watchdog(&["pause", "nginx", "-c", cfg_s]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no probe named \"nginx\"; probes: web, api"),
        "{err}"
    );
    let (code, out, _) = watchdog(&["resume", "api", "-c", cfg_s]);
    assert_eq!((code, out.trim()), (0, "api resumed"));
    let (code, _, err) = watchdog(&["resume", "api", "-c", cfg_s]);
    assert_eq!(code, 1);
    assert!(err.contains("api is not paused"), "{err}");

    // Reload through the API.
    let (code, out, err) = watchdog(&["reload", "-c", cfg_s]);
    assert_eq!((code, out.trim()), (0, "reloaded"), "{err}");
    assert_eq!(wd.stop(), Some(0));
    assert!(!socket.exists(), "the socket is removed at exit");
}

#[test]
fn the_socket_is_not_reachable_by_other_users() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = TempDir::new("apiperm");
    let up = FakeApache::start(&dir.path().join("up"), "healthy");
    let cfg = config(&dir, &up, &up);
    let wd = Watchdog::run(&cfg, dir.path());
    let socket = dir.path().join("state/watchdog.sock");
    assert!(wait_until(Duration::from_secs(5), || socket.exists()));
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), nix::unistd::getuid().as_raw());
    // And for real: another user's connect is refused. (The directories on the way are
    // world-searchable, so only the socket's own mode stands in the way.)
    for d in [dir.path(), &dir.path().join("state")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--", "python3", "-c"])
        .arg(format!(
            "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?})",
            socket.display().to_string()
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PermissionError"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(wd);
}

#[test]
fn the_tcp_api_wants_its_bearer_token() {
    use std::io::{Read, Write};
    let dir = TempDir::new("apitcp");
    let port = common::free_port();
    let cfg = dir.write(
        "watchdog.toml",
        &format!("[watchdog]\nstate_dir = \"state\"\napi_listen = \"127.0.0.1:{port}\"\napi_token = \"env:WD_TEST_API_TOKEN\"\n"),
    );
    let log = dir.path().join("watchdog.log");
    let mut child = std::process::Command::new(common::watchdog_bin())
        .args(["--log-format", "json", "run", "-c", cfg.to_str().unwrap()])
        .env("WD_TEST_API_TOKEN", "s3cret")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let get = |auth: &str| -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        write!(
            s,
            "GET /status HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    };
    assert!(
        wait_until(Duration::from_secs(10), || get("").is_some()),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(get("").unwrap().starts_with("HTTP/1.1 401"));
    assert!(
        get("Authorization: Bearer wrong\r\n")
            .unwrap()
            .starts_with("HTTP/1.1 401")
    );
    let ok = get("Authorization: Bearer s3cret\r\n").unwrap();
    assert!(
        ok.starts_with("HTTP/1.1 200") && ok.contains("\"probes\":[]"),
        "{ok}"
    );
    assert!(
        !std::fs::read_to_string(&log).unwrap().contains("s3cret"),
        "the token must never be logged"
    );
    let _ = child.kill();
    let _ = child.wait();
}

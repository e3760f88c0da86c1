//! Draining through a real HAProxy (Debian's `haproxy` package), started by each test on
//! 127.0.0.1 with an admin socket, in front of real HTTP servers (the fake apache, and small
//! servers that answer their own name):
//! - traffic moves off a drained server and back after recovery, driven by the daemon's rules;
//! - a drain that would take out the last ready server is refused and paged; the per-host cap
//!   refuses a second drain;
//! - `restart_drained` restarts a server while users keep getting answers (no errors);
//! - the `haproxy` pool probe fails when 2 of 4 servers go to MAINT, and recovers.
//!
//! Measured figures are printed (`cargo test --test haproxy -- --nocapture`).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{FakeApache, Receiver, TempDir, Watchdog, free_port, http, wait_until};

/// A server line: (name, "127.0.0.1:port", extra `server` options such as "disabled").
type Server<'a> = (&'a str, String, &'a str);

/// HAProxy in the foreground, stopped by PID when dropped (even when the test fails).
struct Haproxy {
    child: Child,
    socket: PathBuf,
    pub port: u16,
}

impl Haproxy {
    /// `backends`: (backend, [(server, "127.0.0.1:port", extra server options)]); the frontend
    /// on `port` routes to the first backend.
    fn start(dir: &Path, backends: &[(&str, Vec<Server<'_>>)]) -> Haproxy {
        let bin = ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| {
                panic!("haproxy is not installed: `apt-get install haproxy` (.ci/run does)")
            });
        let socket = dir.join("admin.sock");
        let port = free_port();
        let mut cfg = format!(
            "global\n    stats socket {} mode 600 level admin\n\
             defaults\n    mode http\n    timeout connect 1s\n    timeout client 10s\n    timeout server 10s\n\
             frontend fe\n    bind 127.0.0.1:{port}\n    default_backend {}\n",
            socket.display(),
            backends[0].0
        );
        for (name, servers) in backends {
            cfg.push_str(&format!("backend {name}\n    balance roundrobin\n"));
            for (server, addr, extra) in servers {
                cfg.push_str(&format!(
                    "    server {server} {addr} check inter 200ms {extra}\n"
                ));
            }
        }
        let cfg_path = dir.join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg).unwrap();
        let child = Command::new(bin)
            .args(["-db", "-f"])
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log")).unwrap())
            .spawn()
            .unwrap();
        let h = Haproxy {
            child,
            socket,
            port,
        };
        assert!(
            wait_until(Duration::from_secs(10), || h
                .try_api("show info")
                .is_ok_and(|a| a.contains("HAProxy"))),
            "haproxy did not come up: {}",
            std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default()
        );
        h
    }

    fn try_api(&self, command: &str) -> std::io::Result<String> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("{command}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    fn api(&self, command: &str) -> String {
        self.try_api(command)
            .unwrap_or_else(|e| panic!("haproxy `{command}`: {e}"))
    }

    /// `show stat`'s status column of one server.
    fn status(&self, backend: &str, server: &str) -> String {
        let stat = self.api("show stat");
        let header: Vec<&str> = stat.lines().next().unwrap()[2..].split(',').collect();
        let col = header.iter().position(|c| *c == "status").unwrap();
        stat.lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.len() > col && f[0] == backend && f[1] == server)
            .map(|f| f[col].to_string())
            .unwrap_or_else(|| panic!("no {backend}/{server} in {stat}"))
    }

    fn socket(&self) -> String {
        self.socket.display().to_string()
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if !wait_until(Duration::from_secs(5), || {
            self.child.try_wait().is_ok_and(|s| s.is_some())
        }) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A small HTTP server answering its own name (threads; lives as long as the test process).
fn named_server(name: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                    name.len()
                );
            });
        }
    });
    addr
}

/// Requests through HAProxy in a loop, each answer recorded with its time: (when, status,
/// body). Stops when dropped.
struct Traffic {
    log: Arc<Mutex<Vec<(Instant, u16, String)>>>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
}

impl Traffic {
    /// `clients` threads, each sending one request at a time.
    fn start(addr: String, clients: usize) -> Traffic {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        for _ in 0..clients {
            let (l, s, n, addr) = (log.clone(), stop.clone(), sent.clone(), addr.clone());
            std::thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let answer = http(&addr, "GET", "/", "", Duration::from_secs(5))
                        .unwrap_or_else(|e| (0, format!("error: {e}")));
                    n.fetch_add(1, Ordering::Relaxed);
                    l.lock().unwrap().push((Instant::now(), answer.0, answer.1));
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        Traffic { log, stop, sent }
    }

    fn since(&self, t: Instant) -> Vec<(Instant, u16, String)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _, _)| *at >= t)
            .cloned()
            .collect()
    }

    /// Answers after `t` whose body says they came from a server other than `name`.
    fn answers_not_from(&self, t: Instant, name: &str) -> usize {
        self.since(t).iter().filter(|(_, _, b)| b != name).count()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// HAProxy's own behaviour, measured: after `set server ... state drain` returns, how long
/// until no new request reaches the server. Then the watchdog drives the same: a failing
/// probe drains app1 (and raises the drain flag: `/health` answers 503), its recovery readies
/// it (and `/health` answers 200), and traffic follows.
#[test]
fn traffic_leaves_a_drained_server_and_returns_after_recovery() {
    let dir = TempDir::new("haproxy-drain");
    let apache = FakeApache::start(&dir.path().join("app1"), "healthy");
    let app2 = named_server("app2");
    let hx = Haproxy::start(
        dir.path(),
        &[(
            "web",
            vec![("app1", apache.addr(), ""), ("app2", app2.clone(), "")],
        )],
    );
    let traffic = Traffic::start(hx.addr(), 1);
    assert!(
        wait_until(Duration::from_secs(10), || traffic
            .since(Instant::now() - Duration::from_secs(1))
            .iter()
            .any(|(_, _, b)| b.contains("It works"))),
        "app1 gets no traffic before the drain"
    );

    // 1. HAProxy alone: drain, and the last request app1 gets after it.
    let drained_at = Instant::now();
    assert_eq!(hx.api("set server web/app1 state drain").trim(), "");
    assert!(wait_until(Duration::from_secs(5), || traffic
        .answers_not_from(drained_at, "app2")
        == 0
        && traffic.since(drained_at).len() >= 50));
    let last_to_app1 = traffic
        .since(drained_at)
        .iter()
        .filter(|(_, _, b)| b != "app2")
        .map(|(t, _, _)| t.duration_since(drained_at))
        .max();
    println!(
        "MEASURED: set server drain -> no new requests on app1: {} (last app1 answer after the command: {last_to_app1:?}, {} answers since)",
        last_to_app1.map_or(
            "immediate (none after the command)".to_string(),
            |d| format!("{d:?}")
        ),
        traffic.since(drained_at).len()
    );
    assert!(last_to_app1.is_none_or(|d| d < Duration::from_millis(500)));
    assert_eq!(hx.api("set server web/app1 state ready").trim(), "");

    // 2. The watchdog: app1 answers 504 to its probe -> drain + flag; healthy again -> ready.
    let api_port = free_port();
    let flag = dir.path().join("drained.flag");
    let cfg = dir.write(
        "watchdog.toml",
        &format!(
            r#"[watchdog]
state_dir = "state"
api_listen = "127.0.0.1:{api_port}"

[defaults]
interval = "300ms"
timeout = "250ms"
fail_after = 1
recover_after = 1
restart_grace = "0s"

[[probe]]
name = "app1"
kind = "http"
url = "{url}"

[[rule]]
probe = "app1"
when = "down"
do = ["drain-app1", "flag-drained"]

[[rule]]
probe = "app1"
when = "up"
do = ["ready-app1", "flag-ready"]

[action.drain-app1]
kind = "haproxy"
socket = "{socket}"
server = "web/app1"
operation = "drain"

[action.ready-app1]
kind = "haproxy"
socket = "{socket}"
server = "web/app1"
operation = "ready"

[action.flag-drained]
kind = "drain_flag"
file = "{flag}"
operation = "drain"

[action.flag-ready]
kind = "drain_flag"
file = "{flag}"
operation = "ready"
"#,
            url = apache.url("/"),
            socket = hx.socket(),
            flag = flag.display(),
        ),
    );
    let wd = Watchdog::run(&cfg, dir.path());
    let health = || {
        http(
            &format!("127.0.0.1:{api_port}"),
            "GET",
            "/health",
            "",
            Duration::from_secs(2),
        )
        .map(|(s, _)| s)
        .unwrap_or(0)
    };
    assert!(wait_until(Duration::from_secs(10), || health() == 200));

    let fault = Instant::now();
    apache.set_mode("status:504");
    assert!(
        wait_until(Duration::from_secs(10), || hx.status("web", "app1")
            == "DRAIN"),
        "the watchdog did not drain app1: {}",
        wd.log_text()
    );
    let drained = Instant::now();
    assert_eq!(health(), 503, "/health while drained");
    assert!(wait_until(Duration::from_secs(5), || traffic
        .since(drained)
        .len()
        >= 50));
    let stray = traffic.answers_not_from(drained + Duration::from_millis(200), "app2");
    assert_eq!(stray, 0, "requests reached the drained app1");
    println!(
        "MEASURED: app1 fault -> drained by the watchdog: {:?}",
        drained - fault
    );

    let healed = Instant::now();
    apache.set_mode("healthy");
    assert!(
        wait_until(Duration::from_secs(10), || hx.status("web", "app1") == "UP"),
        "the watchdog did not ready app1: {}",
        wd.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(5), || traffic
            .since(healed)
            .iter()
            .any(|(_, s, b)| *s == 200 && b.contains("It works"))),
        "traffic did not come back to app1"
    );
    assert!(wait_until(Duration::from_secs(5), || health() == 200));
    println!(
        "MEASURED: app1 healthy -> back in rotation: {:?}",
        healed.elapsed()
    );
    let results: Vec<String> = wd
        .messages("remedy done")
        .iter()
        .map(|e| e["fields"]["result"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        results
            .iter()
            .any(|r| r.starts_with("web/app1 set to drain (was UP; still ready in web: app2)")),
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .any(|r| r.starts_with("web/app1 set to ready (was drain")),
        "{results:?}"
    );
    let _ = traffic.sent.load(Ordering::Relaxed);
}

/// The last ready server of a backend is never drained: the remedy is refused and the
/// probe's pager hears it, in those words. The per-host cap refuses a second drain.
#[test]
fn the_last_ready_server_is_never_drained_and_the_refusal_is_paged() {
    let dir = TempDir::new("haproxy-refuse");
    let (a1, a2) = (named_server("a1"), named_server("a2"));
    let (b1, b2, b3) = (named_server("b1"), named_server("b2"), named_server("b3"));
    let hx = Haproxy::start(
        dir.path(),
        &[
            // web: app2 is in maintenance from the start, app1 is the last ready server.
            ("web", vec![("app1", a1, ""), ("app2", a2, "disabled")]),
            // api: three ready; with max_drains = 1 only one may be drained.
            ("api", vec![("s1", b1, ""), ("s2", b2, ""), ("s3", b3, "")]),
        ],
    );
    assert!(wait_until(Duration::from_secs(5), || hx
        .status("web", "app1")
        == "UP"
        && hx.status("api", "s1") == "UP"
        && hx.status("api", "s2") == "UP"
        && hx.status("api", "s3") == "UP"));
    let hook = Receiver::start(false);
    let broken = FakeApache::start(&dir.path().join("broken"), "status:500");
    let cfg = dir.write(
        "watchdog.toml",
        &format!(
            r#"[watchdog]
state_dir = "state"

[defaults]
interval = "300ms"
timeout = "250ms"
fail_after = 1

[[probe]]
name = "app1"
kind = "http"
url = "{url}"

[[rule]]
probe = "app1"
when = "down"
do = ["drain-app1", "page"]

[[probe]]
name = "api"
kind = "http"
url = "{url}"

[[rule]]
probe = "api"
when = "down"
do = ["drain-s1", "drain-s2", "page"]

[action.drain-app1]
kind = "haproxy"
socket = "{socket}"
server = "web/app1"
operation = "drain"

[action.drain-s1]
kind = "haproxy"
socket = "{socket}"
server = "api/s1"
operation = "drain"

[action.drain-s2]
kind = "haproxy"
socket = "{socket}"
server = "api/s2"
operation = "drain"

[action.page]
kind = "webhook"
url = "{hook}"
"#,
            url = broken.url("/"),
            socket = hx.socket(),
            hook = hook.url(),
        ),
    );
    let wd = Watchdog::run(&cfg, dir.path());
    let summaries = || -> Vec<String> {
        hook.pages
            .lock()
            .unwrap()
            .iter()
            // A failed remedy pages as its own incident: probe "app1/drain-app1".
            .filter(|p| p["event"] == "firing" && p["probe"].as_str().unwrap_or("").contains('/'))
            .map(|p| p["summary"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(15), || summaries().len() >= 2),
        "no refusal pages: {:?}\n{}",
        hook.events(),
        wd.log_text()
    );
    let pages = summaries();
    assert!(
        pages.contains(&"drain-app1 failed for app1: refused to drain web/app1: it is the last ready server of backend web".to_string()),
        "{pages:?}"
    );
    assert!(
        pages
            .iter()
            .any(|s| s.contains("refused to drain api/s") && s.contains("max_drains = 1")),
        "{pages:?}"
    );
    assert_eq!(
        hx.status("web", "app1"),
        "UP",
        "the last server was drained"
    );
    let api: Vec<String> = ["s1", "s2"].iter().map(|s| hx.status("api", s)).collect();
    assert_eq!(
        api.iter().filter(|s| *s == "DRAIN").count(),
        1,
        "exactly one api server drained (cap 1): {api:?}"
    );
    // Still down, the drains are retried by budget but each refusal pages once (until the
    // action works again or the probe recovers).
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(summaries().len(), 2, "{:?}", summaries());
}

/// `restart_drained`: drain, wait for app1's connections, restart it (a signal action), wait
/// until HAProxy and the healthy_url say it is up, undrain. Users see no error throughout.
#[test]
fn restart_drained_restarts_a_server_with_no_user_errors() {
    let dir = TempDir::new("haproxy-restart");
    // Slow: the probe (max_latency) fails, users still get answers, just late.
    let apache = FakeApache::start(&dir.path().join("app1"), "slow:300");
    let app2 = named_server("app2");
    let hx = Haproxy::start(
        dir.path(),
        &[("web", vec![("app1", apache.addr(), ""), ("app2", app2, "")])],
    );
    let traffic = Traffic::start(hx.addr(), 6);
    let began = Instant::now();
    let old_pid = apache.pid().unwrap();
    let cfg = dir.write(
        "watchdog.toml",
        &format!(
            r#"[watchdog]
state_dir = "state"

[defaults]
interval = "500ms"
timeout = "400ms"
fail_after = 2
restart_grace = "2s"

[[probe]]
name = "app1"
kind = "http"
url = "{url}"
max_latency = "200ms"

[[rule]]
probe = "app1"
when = "down"
do = ["restart-app1"]

[action.drain-app1]
kind = "haproxy"
socket = "{socket}"
server = "web/app1"
operation = "drain"

[action.bounce-app1]
kind = "signal"
pidfile = "{pidfile}"
start = [{start}]

[action.restart-app1]
kind = "restart_drained"
drain = "drain-app1"
restart = "bounce-app1"
drain_timeout = "5s"
healthy_timeout = "10s"
healthy_url = "{url}"
"#,
            url = apache.url("/"),
            socket = hx.socket(),
            pidfile = apache.pidfile.display(),
            start = apache.start_toml("healthy"),
        ),
    );
    let wd = Watchdog::run(&cfg, dir.path());
    assert!(
        wait_until(Duration::from_secs(30), || wd.has("remedy done")
            || wd.has("remedy failed")),
        "no restart: {}",
        wd.log_text()
    );
    let done = wd.messages("remedy done");
    assert_eq!(done.len(), 1, "{}", wd.log_text());
    let result = done[0]["fields"]["result"].as_str().unwrap().to_string();
    println!("MEASURED: restart_drained: {result}");
    assert!(result.contains("set to drain"), "{result}");
    assert!(result.contains("bounce-app1: sent SIGTERM"), "{result}");
    assert!(result.contains("set to ready"), "{result}");
    assert_ne!(apache.pid(), Some(old_pid), "app1 was not restarted");
    assert_eq!(hx.status("web", "app1"), "UP");
    let after = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || traffic
            .since(after)
            .iter()
            .any(|(_, _, b)| b.contains("It works"))),
        "app1 gets no traffic after the restart"
    );
    // Users keep coming for a while after the restart too.
    std::thread::sleep(Duration::from_millis(500));
    let answers = traffic.since(began);
    let errors: Vec<&(Instant, u16, String)> =
        answers.iter().filter(|(_, s, _)| *s != 200).collect();
    println!(
        "MEASURED: {} requests through HAProxy during the drained restart, {} errors",
        answers.len(),
        errors.len()
    );
    assert!(
        answers.len() > 40,
        "too little traffic to tell: {}",
        answers.len()
    );
    assert!(errors.is_empty(), "users saw errors: {errors:?}");
}

/// Incident 2021-02: 2 of 4 servers go to MAINT (an aborted deploy); the pool probe fails
/// within one interval, naming them, and recovers when they come back.
#[test]
fn the_pool_probe_sees_half_a_backend_in_maintenance_and_its_return() {
    let dir = TempDir::new("haproxy-pool");
    let servers: Vec<Server<'_>> = ["s1", "s2", "s3", "s4"]
        .into_iter()
        .map(|n| (n, named_server("x"), ""))
        .collect();
    let hx = Haproxy::start(dir.path(), &[("web", servers)]);
    assert!(wait_until(Duration::from_secs(5), || (1..=4)
        .all(|i| hx.status("web", &format!("s{i}")) == "UP")));
    let cfg = dir.write(
        "watchdog.toml",
        &format!(
            r#"[watchdog]
state_dir = "state"

[[probe]]
name = "web-pool"
kind = "haproxy"
socket = "{socket}"
backend = "web"
min_ready = 3
interval = "1s"
timeout = "500ms"
fail_after = 1
recover_after = 1
"#,
            socket = hx.socket()
        ),
    );
    // One shot, as cron would: all up.
    let rows = common::check_rows(&cfg, &[]);
    assert_eq!(
        rows["web-pool"],
        (true, "web: 4 of 4 servers ready".to_string())
    );

    let wd = Watchdog::run(&cfg, dir.path());
    assert!(wait_until(Duration::from_secs(5), || wd
        .messages("state changed")
        .iter()
        .any(|e| e["fields"]["state"] == "up")));
    let injected = Instant::now();
    hx.api("set server web/s2 state maint");
    hx.api("set server web/s4 state maint");
    let down = || {
        wd.messages("state changed")
            .into_iter()
            .find(|e| e["fields"]["state"] == "down")
    };
    assert!(
        wait_until(Duration::from_secs(5), || down().is_some()),
        "{}",
        wd.log_text()
    );
    let detected = injected.elapsed();
    println!("MEASURED: 2 of 4 servers in MAINT -> pool probe down: {detected:?} (interval 1 s)");
    // One interval, plus a generous margin for a loaded machine.
    assert!(detected < Duration::from_millis(2500), "{detected:?}");
    let reason = down().unwrap()["fields"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.starts_with("web: 2 of 4 servers ready, 3 required; not ready: s2 MAINT for ")
            && reason.contains(", s4 MAINT for "),
        "{reason}"
    );
    let rows = common::check_rows(&cfg, &[]);
    assert!(!rows["web-pool"].0, "{:?}", rows["web-pool"]);

    hx.api("set server web/s2 state ready");
    hx.api("set server web/s4 state ready");
    assert!(
        wait_until(Duration::from_secs(5), || wd
            .messages("state changed")
            .iter()
            .filter(|e| e["fields"]["state"] == "up")
            .count()
            == 2),
        "{}",
        wd.log_text()
    );
}

/// Config mistakes in the HAProxy kinds are reported with file:line:col, all at once.
#[test]
fn haproxy_config_mistakes_are_all_reported() {
    let dir = TempDir::new("haproxy-validate");
    let cfg = dir.write(
        "watchdog.toml",
        r#"[[probe]]
name = "pool"
kind = "haproxy"
socket = "admin.sock"
backend = "web"
url = "http://127.0.0.1/"

[[probe]]
name = "pool2"
kind = "haproxy"
socket = "127.0.0.1:9999"
backend = "web"
min_ready_ratio = 1.5

[action.drain]
kind = "haproxy"
socket = "/run/haproxy/admin.sock"
server = "app1"
operation = "drian"

[action.restart]
kind = "restart_drained"
drain = "drain-app1"
restart = "drain"
"#,
    );
    let (code, out, err) = common::watchdog(&["validate", "--config", cfg.to_str().unwrap()]);
    let text = format!("{out}{err}");
    assert_eq!(code, 78, "{text}");
    for expected in [
        ":4:10: probe \"pool\": `socket`: `admin.sock` is neither an absolute unix socket path nor host:port",
        ":6:7: probe \"pool\": `url` does not apply to kind \"haproxy\" (it is a `http` key)",
        ":13:19: probe \"pool2\": `min_ready_ratio` is a share of the backend's servers",
        ":18:10: action \"drain\": `server` `app1` is not BACKEND/SERVER",
        ":19:13: action \"drain\": `operation` \"drian\" (did you mean \"drain\"?)",
        ":23:9: action \"restart\": `drain`: unknown action \"drain-app1\"",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

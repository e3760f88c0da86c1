//! Test fixtures: real processes on 127.0.0.1, stopped by PID when dropped.
//!
//! - [`FakeApache`]: the `fake_apache` example, switched between faults over its control port;
//! - [`Receiver`]: a real HTTP server that records webhook pages (and can be made to hang);
//! - [`Watchdog`]: the built `watchdog` binary, with JSON logs read back as events;
//! - [`wait_until`]: conditions awaited with a deadline, never a bare sleep.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn watchdog_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_watchdog"))
}

/// `cargo test` builds examples next to the binaries.
pub fn fake_apache_bin() -> PathBuf {
    let p = watchdog_bin()
        .parent()
        .unwrap()
        .join("examples/fake_apache");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --examples` (cargo test builds it)",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh directory under the target dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let base = watchdog_bin().parent().unwrap().join("test-tmp");
        let dir = base.join(format!("{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `cond` every 20 ms until it holds or `within` passes; returns whether it held.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal HTTP/1.1 request; returns (status, body). Connection: close.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = Vec::new();
    s.take(1 << 20).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The fake apache, with a pidfile, run in the foreground (or by the watchdog's start command).
pub struct FakeApache {
    pub port: u16,
    pub control: u16,
    pub pidfile: PathBuf,
    child: Option<Child>,
}

impl FakeApache {
    /// The argv that starts it detached (what a `start` action runs).
    pub fn start_argv(port: u16, control: u16, pidfile: &Path, mode: &str) -> Vec<String> {
        vec![
            fake_apache_bin().display().to_string(),
            "--daemon".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--control".into(),
            format!("127.0.0.1:{control}"),
            "--pidfile".into(),
            pidfile.display().to_string(),
            "--mode".into(),
            mode.into(),
            "--workers".into(),
            "3".into(),
        ]
    }

    /// The start argv as a TOML array's contents, for a `start = [...]` line of a config that
    /// restarts this instance in `mode`.
    pub fn start_toml(&self, mode: &str) -> String {
        Self::start_argv(self.port, self.control, &self.pidfile, mode)
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Starts one detached, as an init script would; it is found again through its pidfile.
    pub fn start(dir: &Path, mode: &str) -> FakeApache {
        std::fs::create_dir_all(dir).unwrap();
        let (port, control) = (free_port(), free_port());
        let pidfile = dir.join("fake_apache.pid");
        let argv = Self::start_argv(port, control, &pidfile, mode);
        let status = Command::new(&argv[0]).args(&argv[1..]).status().unwrap();
        assert!(status.success(), "fake_apache --daemon failed: {status}");
        let me = FakeApache {
            port,
            control,
            pidfile,
            child: None,
        };
        // Bound before it detached (a clash fails above); 15 s is for a loaded CI machine.
        assert!(
            wait_until(Duration::from_secs(15), || me.control_ok()),
            "fake_apache did not answer on its control port within 15 s"
        );
        me
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn control_ok(&self) -> bool {
        http(
            &format!("127.0.0.1:{}", self.control),
            "GET",
            "/mode",
            "",
            Duration::from_millis(500),
        )
        .is_ok_and(|(s, _)| s == 200)
    }

    pub fn set_mode(&self, mode: &str) {
        let (status, body) = http(
            &format!("127.0.0.1:{}", self.control),
            "POST",
            &format!("/mode/{mode}"),
            "",
            Duration::from_secs(2),
        )
        .unwrap_or_else(|e| panic!("control port: {e}"));
        assert_eq!(status, 200, "set mode {mode}: {body}");
    }

    /// Does the service answer a plain GET with 200 right now?
    pub fn serves(&self) -> bool {
        http(
            &self.addr(),
            "GET",
            "/server-status?auto",
            "",
            Duration::from_millis(500),
        )
        .is_ok_and(|(s, b)| s == 200 && b.contains("BusyWorkers"))
    }

    pub fn alive(pid: i32) -> bool {
        // A zombie (crashed, not yet reaped by init) counts as gone.
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            state != Some("Z")
        })
    }
}

impl Drop for FakeApache {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A webhook receiver: records every POSTed JSON body. `hang` makes it accept and never answer.
pub struct Receiver {
    pub port: u16,
    pub pages: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    pub fn start(hang: bool) -> Receiver {
        Self::start_on(0, hang)
    }

    /// On a given port (0: any), e.g. to bring a receiver up where a pager was failing.
    pub fn start_on(port: u16, hang: bool) -> Receiver {
        Self::start_at("127.0.0.1".parse().unwrap(), port, hang)
    }

    /// On another local address, e.g. a Docker network's gateway, where containers reach it.
    pub fn start_at(ip: std::net::IpAddr, port: u16, hang: bool) -> Receiver {
        let listener = TcpListener::bind((ip, port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let pages = Arc::new(Mutex::new(Vec::new()));
        let sink = pages.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                if hang {
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_secs(120));
                        drop(conn);
                    });
                    continue;
                }
                let sink = sink.clone();
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; len];
                    if reader.read_exact(&mut body).is_ok()
                        && let Ok(v) = serde_json::from_slice(&body)
                    {
                        sink.lock().unwrap().push(v);
                    }
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                });
            }
        });
        Receiver { port, pages }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn events(&self) -> Vec<(String, String)> {
        self.pages
            .lock()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["event"].as_str().unwrap_or("").to_string(),
                    p["probe"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    pub fn count(&self, event: &str) -> usize {
        self.events().iter().filter(|(e, _)| e == event).count()
    }
}

/// `watchdog run` with JSON logs to a file, killed when dropped.
pub struct Watchdog {
    child: Child,
    log: PathBuf,
    pub started: Instant,
}

impl Watchdog {
    pub fn run(config: &Path, dir: &Path) -> Watchdog {
        Self::run_logging_to(config, &dir.join("watchdog.log"))
    }

    /// Another run with its own log file (after a restart, say).
    pub fn run_logging_to(config: &Path, log: &Path) -> Watchdog {
        let log = log.to_path_buf();
        let child = Command::new(watchdog_bin())
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let wd = Watchdog {
            child,
            log,
            started: Instant::now(),
        };
        assert!(
            wait_until(Duration::from_secs(10), || wd.has("watchdog running")),
            "watchdog did not start:\n{}",
            wd.log_text()
        );
        wd
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log events as JSON objects (fields flattened in `fields`).
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn messages(&self, message: &str) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|e| e["fields"]["message"] == message)
            .collect()
    }

    pub fn has(&self, message: &str) -> bool {
        !self.messages(message).is_empty()
    }

    /// How many times a remedy started, for one action.
    pub fn remedies(&self, action: &str) -> usize {
        self.messages("running remedy")
            .iter()
            .filter(|e| e["fields"]["action"] == action)
            .count()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// kill -9 and reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for a clean exit; returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `watchdog ARGS...` to completion; returns (exit code, stdout, stderr).
pub fn watchdog(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(watchdog_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// An HTTP server that answers 200 with the request it got (line and headers) as the body,
/// and a TCP server that greets with a banner; both on 127.0.0.1, threads per connection.
pub fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    head.push_str(&line);
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
                    head.len()
                );
            });
        }
    });
    port
}

pub fn banner_server(banner: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.write_all(banner.as_bytes());
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    port
}

/// Runs `watchdog check --json --dry-run -c CFG` (with extra env vars) and returns probe name ->
/// (ok, reason).
pub fn check_rows(
    cfg: &Path,
    env: &[(&str, &str)],
) -> std::collections::BTreeMap<String, (bool, String)> {
    let out = Command::new(watchdog_bin())
        .args(["check", "--json", "--dry-run", "-c", cfg.to_str().unwrap()])
        .envs(env.iter().copied())
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}{}", String::from_utf8_lossy(&out.stderr)));
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["probe"].as_str().unwrap().to_string(),
                (
                    r["ok"].as_bool().unwrap(),
                    r["reason"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

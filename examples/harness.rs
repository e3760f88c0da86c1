//! The dev harness: the fake apache, the real `watchdog run`, and faults on a timeline.
//!
//! ```text
//! cargo build --release --bins --examples && target/release/examples/harness
//! ```
//!
//! It starts `fake_apache` detached (as an init script would), writes a watchdog config for
//! it, runs the `watchdog` binary built next to this one, then injects the faults of the 2009
//! outage and its cousins one by one — 504s, a hang, a crash, a listener that stopped
//! accepting, workers dying one by one, and finally a service that restarting does not fix. It
//! prints what it injected, when the watchdog noticed, what it did and when the service
//! answered again, then a table. About a minute; no root needed; everything on 127.0.0.1.
//!
//! Options: `--keep` leaves the work directory (config, logs) in place for a look afterwards.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Internal: the `start` program of the restart action. Starts fake_apache detached in the
/// mode the harness left in `mode-file`, so the harness can make a restart not help.
const START_SUBCOMMAND: &str = "--start-fake-apache";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(START_SUBCOMMAND) {
        std::process::exit(start_fake_apache(&args[2..]));
    }
    let keep = args.iter().any(|a| a == "--keep");
    if let Err(e) = demo(keep) {
        eprintln!("harness: {e}");
        std::process::exit(1);
    }
}

fn start_fake_apache(args: &[String]) -> i32 {
    let [fake, mode_file, rest @ ..] = args else {
        eprintln!("usage: harness {START_SUBCOMMAND} FAKE_APACHE MODE_FILE ARGS...");
        return 2;
    };
    let mode = std::fs::read_to_string(mode_file).unwrap_or_else(|_| "healthy".into());
    match Command::new(fake)
        .args(rest)
        .args(["--mode", mode.trim()])
        .status()
    {
        Ok(s) => s.code().unwrap_or(1),
        Err(e) => {
            eprintln!("cannot start {fake}: {e}");
            1
        }
    }
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// One HTTP/1.1 request with short timeouts; (status, body).
fn http(addr: &str, method: &str, path: &str) -> Option<(u16, String)> {
    let t = Duration::from_millis(500);
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, t).ok()?;
    s.set_read_timeout(Some(t)).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.take(1 << 16).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        status,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
}

/// What the watchdog logged (JSON lines), boiled down to what the timeline needs.
#[derive(Debug)]
enum Seen {
    Down(String),
    Up,
    Remedy,
    RemedyDone(String),
    BudgetSpent,
    Page(String, String),
}

struct Fault {
    name: &'static str,
    story: &'static str,
    mode: &'static str,
}

const FAULTS: &[Fault] = &[
    Fault {
        name: "504 Gateway Timeout",
        story: "apache answers, but only 504s",
        mode: "status:504",
    },
    Fault {
        name: "hang",
        story: "accepts, reads the request, never answers",
        mode: "hang",
    },
    Fault {
        name: "crash",
        story: "the process dies, its pidfile stays",
        mode: "crash",
    },
    Fault {
        name: "stop accepting",
        story: "listening, but accept() is never called: the backlog fills",
        mode: "stop-accepting",
    },
    Fault {
        name: "workers dying",
        story: "2009: each worker dies after one request; ps still shows apache",
        mode: "workers-dying",
    },
];

struct Row {
    fault: String,
    detect: Option<Duration>,
    recover: Option<Duration>,
    note: String,
}

struct Processes {
    watchdog: Option<Child>,
    pidfile: PathBuf,
}

impl Drop for Processes {
    fn drop(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(w.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = w.wait();
        }
        if let Some(pid) = std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

fn demo(keep: bool) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let examples = me.parent().ok_or("no exe dir")?;
    let fake = examples.join("fake_apache");
    let watchdog = examples.parent().ok_or("no target dir")?.join("watchdog");
    for p in [&fake, &watchdog] {
        if !p.exists() {
            return Err(format!(
                "{} is missing: run `cargo build --release --bins --examples` first",
                p.display()
            ));
        }
    }
    let dir = examples
        .parent()
        .unwrap()
        .join(format!("harness-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (port, control) = (free_port()?, free_port()?);
    let addr = format!("127.0.0.1:{port}");
    let control_addr = format!("127.0.0.1:{control}");
    let pidfile = dir.join("fake_apache.pid");
    let mode_file = dir.join("mode");
    std::fs::write(&mode_file, "healthy").map_err(|e| e.to_string())?;

    // A pager: a real HTTP receiver that prints what it gets.
    let (pages_tx, pages_rx) = mpsc::channel::<String>();
    let hook = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let hook_port = hook.local_addr().map_err(|e| e.to_string())?.port();
    std::thread::spawn(move || receive_pages(hook, pages_tx));

    let start: Vec<String> = vec![
        me.display().to_string(),
        START_SUBCOMMAND.into(),
        fake.display().to_string(),
        mode_file.display().to_string(),
        "--daemon".into(),
        "--listen".into(),
        addr.clone(),
        "--control".into(),
        control_addr.clone(),
        "--pidfile".into(),
        pidfile.display().to_string(),
        "--workers".into(),
        "4".into(),
        "--log".into(),
        dir.join("fake_apache.log").display().to_string(),
    ];
    let start_toml = start
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let config = dir.join("watchdog.toml");
    std::fs::write(
        &config,
        format!(
            r#"# Written by the harness; see config/watchdog.toml for every key explained.
[watchdog]
state_dir = "state"

[defaults]
interval = "1s"
timeout = "800ms"
fail_after = 2
recover_after = 1
restart_grace = "2s"

[[probe]]
name = "apache"
kind = "http"
url = "http://{addr}/server-status?auto"
body_contains = "BusyWorkers"

[[rule]]
probe = "apache"
when = "down"
do = ["restart-apache"]
budget = "7 per 10m"

[[rule]]
probe = "apache"
when = "down for 8s"
do = ["page-oncall"]

[action.restart-apache]
kind = "signal"
pidfile = "{pidfile}"
signal = "TERM"
kill_after = "2s"
start = [{start_toml}]

[action.page-oncall]
kind = "webhook"
url = "http://127.0.0.1:{hook_port}/oncall"
"#,
            pidfile = pidfile.display()
        ),
    )
    .map_err(|e| e.to_string())?;

    let t0 = Instant::now();
    let say = |what: String| println!("[{:>5.1}s] {what}", t0.elapsed().as_secs_f64());
    println!("uptime-watchdog dev harness: fake apache on {addr}, control on {control_addr}");
    println!("work dir {} (config, logs)\n", dir.display());

    let status = Command::new(&start[0])
        .args(&start[1..])
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("starting fake_apache failed: {status}"));
    }
    let serves = || {
        http(&addr, "GET", "/server-status?auto")
            .is_some_and(|(s, b)| s == 200 && b.contains("BusyWorkers"))
    };
    if !wait(Duration::from_secs(5), serves) {
        return Err("fake_apache did not come up".into());
    }
    say("fake apache is serving".into());

    let mut child = Command::new(&watchdog)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", watchdog.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let procs = Processes {
        watchdog: Some(child),
        pidfile: pidfile.clone(),
    };
    let (seen_tx, seen_rx) = mpsc::channel::<Seen>();
    let log_path = dir.join("watchdog.log");
    std::thread::spawn(move || read_watchdog_log(stderr, &log_path, seen_tx));
    say(format!("watchdog running: {}", config.display()));

    let mut rows = Vec::new();
    let control_set = |mode: &str| http(&control_addr, "POST", &format!("/mode/{mode}"));

    for fault in FAULTS {
        // Let the watchdog see it healthy first, so every fault starts from "up".
        wait(Duration::from_secs(10), serves);
        std::thread::sleep(Duration::from_millis(1500));
        drain(&seen_rx);
        println!();
        say(format!("INJECT {}: {}", fault.name, fault.story));
        let injected = Instant::now();
        if control_set(fault.mode).is_none() && fault.mode != "crash" {
            return Err(format!("could not switch fake_apache to {}", fault.mode));
        }
        let mut row = Row {
            fault: fault.name.to_string(),
            detect: None,
            recover: None,
            note: String::new(),
        };
        let deadline = injected + Duration::from_secs(20);
        let mut restarted = false;
        while Instant::now() < deadline && row.recover.is_none() {
            match seen_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Seen::Down(reason)) => {
                    row.detect = Some(injected.elapsed());
                    say(format!("watchdog: apache is DOWN ({reason})"));
                }
                Ok(Seen::Remedy) => {
                    say("watchdog: restarting apache (TERM, wait, KILL, start)".into())
                }
                Ok(Seen::RemedyDone(result)) => {
                    restarted = true;
                    say(format!("watchdog: restart done: {result}"));
                }
                Ok(Seen::Up) => say("watchdog: apache is UP again".into()),
                Ok(other) => say(format!("watchdog: {other:?}")),
                Err(_) => {}
            }
            if restarted && serves() {
                row.recover = Some(injected.elapsed());
                say("apache answers again".into());
            }
        }
        if row.recover.is_none() {
            row.note = "did not recover within 20 s".into();
        }
        rows.push(row);
    }

    // Last: a fault restarting cannot fix. The budget stops the restarts and pages instead.
    wait(Duration::from_secs(10), serves);
    std::thread::sleep(Duration::from_millis(1500));
    drain(&seen_rx);
    println!();
    std::fs::write(&mode_file, "status:503").map_err(|e| e.to_string())?;
    say("INJECT broken config: every restart comes back answering 503; the restart budget (7 per 10m) will run out".into());
    let injected = Instant::now();
    control_set("status:503");
    let mut row = Row {
        fault: "restart does not help".into(),
        detect: None,
        recover: None,
        note: String::new(),
    };
    let mut restarts = 0;
    let deadline = injected + Duration::from_secs(40);
    while Instant::now() < deadline {
        match seen_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Seen::Down(reason)) => {
                row.detect = Some(injected.elapsed());
                say(format!("watchdog: apache is DOWN ({reason})"));
            }
            Ok(Seen::Remedy) => {
                restarts += 1;
                say(format!("watchdog: restart #{restarts}"));
            }
            Ok(Seen::BudgetSpent) => say("watchdog: restart budget spent: no more restarts".into()),
            Ok(Seen::Page(event, summary)) => {
                say(format!("watchdog: paged on-call ({event}): {summary}"));
                if event == "GivingUp" {
                    row.note = format!("{restarts} restarts, then one \"giving up\" page");
                    break;
                }
            }
            _ => {}
        }
    }
    // The pager really received it.
    if let Ok(page) = pages_rx.recv_timeout(Duration::from_secs(5)) {
        say(format!("pager received: {page}"));
    }
    rows.push(row);
    std::fs::write(&mode_file, "healthy").map_err(|e| e.to_string())?;

    println!(
        "\n{:<24} {:>14} {:>14}  note",
        "fault", "detected after", "answers after"
    );
    for r in &rows {
        let f = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()))
        };
        println!(
            "{:<24} {:>14} {:>14}  {}",
            r.fault,
            f(r.detect),
            f(r.recover),
            r.note
        );
    }
    println!(
        "\n(probe every 1 s, timeout 800 ms, down after 2 failures; a human took half an hour in 2009)"
    );

    // Stops the watchdog (SIGTERM, wait) and the fake apache.
    drop(procs);
    if keep {
        println!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let all_recovered = rows.iter().take(FAULTS.len()).all(|r| r.recover.is_some());
    if all_recovered {
        Ok(())
    } else {
        Err("some faults were not recovered".into())
    }
}

fn wait(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn drain(rx: &mpsc::Receiver<Seen>) {
    while rx.try_recv().is_ok() {}
}

fn read_watchdog_log(stderr: impl Read, copy: &Path, tx: mpsc::Sender<Seen>) {
    let mut file = std::fs::File::create(copy).ok();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if let Some(f) = file.as_mut() {
            let _ = writeln!(f, "{line}");
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let f = &v["fields"];
        let text = |k: &str| f[k].as_str().unwrap_or_default().to_string();
        let seen = match f["message"].as_str().unwrap_or_default() {
            "state changed" if f["state"] == "down" => Seen::Down(text("reason")),
            "state changed" if f["state"] == "up" && f["from"] == "down" => Seen::Up,
            "running remedy" => Seen::Remedy,
            "remedy done" => Seen::RemedyDone(text("result")),
            "remedy failed" => Seen::RemedyDone(format!("FAILED: {}", text("error"))),
            "remedy budget spent: giving up" => Seen::BudgetSpent,
            "paging" => Seen::Page(text("event"), text("summary")),
            _ => continue,
        };
        if tx.send(seen).is_err() {
            return;
        }
    }
}

fn receive_pages(listener: TcpListener, tx: mpsc::Sender<String>) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let Ok(clone) = conn.try_clone() else {
            continue;
        };
        let mut reader = BufReader::new(clone);
        let mut len = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if line.trim().is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_ok()
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
        {
            let _ = tx.send(format!(
                "{} \"{}\"",
                v["event"].as_str().unwrap_or("?"),
                v["summary"].as_str().unwrap_or("?")
            ));
        }
        let _ =
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
}

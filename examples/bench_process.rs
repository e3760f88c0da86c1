//! Benchmark of the `process` probe under load: 1,000 `sleep` processes on the host, then
//! 100,000 checks in-process selecting by `pidfile` and by `cmdline` regex (the one that has to
//! find its process in /proc), with CPU time per check from getrusage and RSS before/after.
//! Also, 1,000 checks each of the paths that scan /proc every time: a fresh probe per check
//! (the first check, or after a restart), and `min_children` (children counted from
//! /proc/PID/task/*/children where the kernel has it, else by a scan of /proc).
//!
//! `CARGO_TARGET_DIR=/work/wt/target-process cargo run --release --example bench_process`

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use uptime_watchdog::config::{ProcessCheck, ProcessSelect};
use uptime_watchdog::probe::Phase;
use uptime_watchdog::probe::process::ProcessProbe;

const LOAD: usize = 1_000;
const CHECKS: usize = 100_000;
const SCANS: usize = 1_000;

/// The load, killed by PID and reaped when the benchmark ends (or panics).
struct Load(Vec<Child>);

impl Drop for Load {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

fn spawn(arg: &str) -> Child {
    Command::new("sleep")
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sleep")
}

fn cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let tv =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(u.user_time()) + tv(u.system_time())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
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

/// Runs `n` checks (a fresh probe each time if `fresh`), all of which must pass.
async fn bench(label: &str, n: usize, make: impl Fn() -> ProcessProbe, fresh: bool) {
    let mut probe = make();
    let first = probe.check(&Phase::default(), Instant::now()).await;
    assert!(first.ok, "{label}: {first:?}");
    // Warm-up, so allocator pools and the pidfd are in place before RSS is read.
    for _ in 0..1_000.min(n) {
        probe.check(&Phase::default(), Instant::now()).await;
    }
    let (rss0, cpu0, wall0) = (rss_kib(), cpu(), Instant::now());
    let mut failed = 0;
    let mut last = String::new();
    for _ in 0..n {
        if fresh {
            probe = make();
        }
        let o = probe.check(&Phase::default(), Instant::now()).await;
        if !o.ok {
            failed += 1;
            last = o.reason;
        }
    }
    let (cpu_used, wall) = (cpu() - cpu0, wall0.elapsed());
    let rss1 = rss_kib();
    println!(
        "{label:<44} {n:>7} checks: {:>8.1} µs CPU/check, {:>8.1} µs wall/check, RSS {rss0} -> {rss1} KiB, {failed} failed{}",
        cpu_used.as_secs_f64() * 1e6 / n as f64,
        wall.as_secs_f64() * 1e6 / n as f64,
        if failed > 0 {
            format!(" (last: {last})")
        } else {
            String::new()
        }
    );
    println!("    e.g. {}", first.reason);
}

fn main() {
    let mut load = Load(Vec::with_capacity(LOAD + 1));
    for _ in 0..LOAD {
        load.0.push(spawn("600"));
    }
    // The target: one more sleep with a unique command line (GNU sleep takes fractions).
    let unique = format!("600.{}", std::process::id());
    load.0.push(spawn(&unique));
    let target = load.0.last().unwrap().id();
    let procs = std::fs::read_dir("/proc")
        .unwrap()
        .filter(|e| {
            e.as_ref().is_ok_and(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
        })
        .count();
    println!("load: {procs} processes on the host");

    let dir = std::env::temp_dir().join(format!("bench-process-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pidfile = dir.join("target.pid");
    std::fs::write(&pidfile, format!("{target}\n")).unwrap();
    let re = regex::Regex::new(&format!("^sleep {}$", regex::escape(&unique))).unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        bench(
            "pidfile",
            CHECKS,
            || ProcessProbe::new(spec(ProcessSelect::Pidfile(pidfile.clone()))),
            false,
        )
        .await;
        bench(
            "cmdline regex (kept while alive)",
            CHECKS,
            || ProcessProbe::new(spec(ProcessSelect::Cmdline(re.clone()))),
            false,
        )
        .await;
        bench(
            "cmdline regex, fresh probe (scan of /proc)",
            SCANS,
            || ProcessProbe::new(spec(ProcessSelect::Cmdline(re.clone()))),
            true,
        )
        .await;
        bench(
            "pidfile + min_children (task/*/children)",
            SCANS,
            || {
                let mut c = spec(ProcessSelect::Pidfile(pidfile.clone()));
                c.min_children = Some(0);
                ProcessProbe::new(c)
            },
            false,
        )
        .await;
    });
    let _ = std::fs::remove_dir_all(&dir);
    drop(load);
}

//! Benchmark of the `memory` probe: 100,000 checks in-process, CPU time per check (getrusage)
//! and RSS before and after, for the whole host and for a v1 memory cgroup made for the run.
//!
//! `cargo run --release --example bench_memory [CHECKS]` (as root, for the cgroup and /dev/kmsg).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};
use uptime_watchdog::config::{Limit, MemoryCheck};
use uptime_watchdog::probe::Probe;
use uptime_watchdog::probe::memory::MemoryProbe;

fn cpu_seconds() -> f64 {
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The check as `watchdog` fills in its defaults, plus every optional metric.
fn check(cgroup: Option<PathBuf>) -> MemoryCheck {
    MemoryCheck {
        cgroup,
        max_psi_some_avg10: Some(20.0),
        max_psi_full_avg10: Some(60.0),
        min_available: Some(Limit::Percent(10.0)),
        max_swap_used: Some(Limit::Percent(80.0)),
        oom_kills: true,
        psi_trigger: None,
    }
}

fn bench(rt: &tokio::runtime::Runtime, label: &str, check: MemoryCheck, n: u32) {
    let probe = Probe::Memory(MemoryProbe::new(check));
    let timeout = Duration::from_secs(5);
    let first = rt.block_on(probe.run(timeout));
    // Warm up (allocator pools, the kernel log's first full read) before measuring growth.
    for _ in 0..1000 {
        rt.block_on(probe.run(timeout));
    }
    let (rss0, cpu0, wall0) = (rss_kib(), cpu_seconds(), Instant::now());
    let mut failures = 0u32;
    rt.block_on(async {
        for _ in 0..n {
            if !probe.run(timeout).await.ok {
                failures += 1;
            }
        }
    });
    let (cpu, wall, rss1) = (cpu_seconds() - cpu0, wall0.elapsed(), rss_kib());
    println!("{label}:");
    println!("  first result: ok={} \"{}\"", first.ok, first.reason);
    println!(
        "  {n} checks: {:.1} µs CPU/check (user+sys), {:.1} µs wall/check, {failures} failed",
        cpu * 1e6 / n as f64,
        wall.as_secs_f64() * 1e6 / n as f64
    );
    println!(
        "  RSS before {rss0} KiB, after {rss1} KiB ({:+} KiB)",
        rss1 as i64 - rss0 as i64
    );
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("RSS at start: {} KiB", rss_kib());
    bench(&rt, "host", check(None), n);

    // A child of our own v1 memory cgroup, removed at the end.
    let ours = std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.trim_end_matches('/').to_string())
        });
    let Some(ours) = ours else {
        println!("cgroup: skipped (no cgroup v1 memory controller here)");
        return;
    };
    let dir = PathBuf::from(format!(
        "/sys/fs/cgroup/memory{ours}/bench-memory-{}",
        std::process::id()
    ));
    if let Err(e) = std::fs::create_dir(&dir) {
        println!("cgroup: skipped (mkdir {}: {e})", dir.display());
        return;
    }
    let _ = std::fs::write(dir.join("memory.limit_in_bytes"), "200M");
    bench(&rt, "v1 cgroup (200M limit)", check(Some(dir.clone())), n);
    let _ = std::fs::remove_dir(&dir);
}

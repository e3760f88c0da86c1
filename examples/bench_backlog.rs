//! What a `syn_backlog` check costs: 100 listening sockets on the host, then 100,000 checks of
//! one of their ports in-process, on the current-thread runtime the watchdog itself uses; then
//! 10,000 more with `max_syn_recv` set, which adds the half-open count.
//!
//! ```text
//! CARGO_TARGET_DIR=... cargo run --release --example bench_backlog [CHECKS, default 100000]
//! ```
//!
//! Prints the CPU time per check (user + system, from getrusage: the netlink dumps and the
//! /proc/net/netstat read are mostly kernel time) and the resident set size before and after
//! the checks, to show that nothing accumulates from one check to the next.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};
use uptime_watchdog::config::{BacklogCheck, Limit};
use uptime_watchdog::probe::Probe;
use uptime_watchdog::probe::backlog::BacklogProbe;

fn cpu() -> Duration {
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let tv =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(u.user_time()) + tv(u.system_time())
}

/// VmRSS in KiB: the current resident set (ru_maxrss would be the peak).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let checks: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let listeners: Vec<TcpListener> = (0..100)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let port = listeners[50].local_addr().unwrap().port();
    println!("listeners: {}, watched port {port}", listeners.len());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Without max_syn_recv: the listener dumps only, the default.
    bench(&rt, port, None, checks);
    // With it: one more dump, which walks the kernel's whole established hash (see the
    // module doc); a tenth of the checks, as each costs more.
    bench(&rt, port, Some(200), (checks / 10).max(1));
}

fn bench(rt: &tokio::runtime::Runtime, port: u16, max_syn_recv: Option<u32>, checks: u32) {
    let probe = Probe::SynBacklog(BacklogProbe::new(BacklogCheck {
        port,
        bind: None,
        netns: None,
        max_accept_queue: Limit::Percent(90.0),
        max_syn_recv,
        max_overflows_per_s: Some(1.0),
    }));
    let timeout = Duration::from_secs(5);
    // Warm up: the blocking pool's thread, allocator arenas, the first rate.
    let mut last = None;
    for _ in 0..1_000 {
        last = Some(rt.block_on(probe.run(timeout)));
    }
    println!("\nmax_syn_recv = {max_syn_recv:?}");
    println!("a check: {:?}", last.unwrap());

    let rss_before = rss_kib();
    let cpu_before = cpu();
    let wall = Instant::now();
    let mut failed = 0u32;
    // RSS at each quarter: growth per check would show as a steady climb.
    let mut quarters = Vec::with_capacity(4);
    for i in 1..=checks {
        if !rt.block_on(probe.run(timeout)).ok {
            failed += 1;
        }
        if i % (checks / 4).max(1) == 0 {
            quarters.push(rss_kib());
        }
    }
    let wall = wall.elapsed();
    let cpu_used = cpu() - cpu_before;
    let rss_after = rss_kib();
    println!("checks: {checks} ({failed} failed)");
    println!(
        "CPU per check: {:.1} µs (user+sys, all threads); wall per check: {:.1} µs",
        cpu_used.as_secs_f64() * 1e6 / f64::from(checks),
        wall.as_secs_f64() * 1e6 / f64::from(checks)
    );
    println!(
        "RSS before: {rss_before} KiB, after: {rss_after} KiB ({:+} KiB); at each quarter: {quarters:?} KiB",
        rss_after as i64 - rss_before as i64
    );
}

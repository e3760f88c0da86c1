//! The `syn_backlog` probe against real listeners: a listener that never accepts, filled by
//! real clients (its numbers checked against `ss`), one that recovers, IPv4 beside IPv6 on one
//! port, nothing listening, half-open handshakes made with raw SYNs inside network namespaces
//! this file creates (syncookies off and on), and the built binary keeping rates between runs.
//!
//! Needs `ip` and `ss` (iproute2), `nft` (nftables) and python3, and root.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{TempDir, free_port, wait_until};
use uptime_watchdog::config::{BacklogCheck, Limit};
use uptime_watchdog::probe::backlog::BacklogProbe;
use uptime_watchdog::probe::{Outcome, Probe};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn spec(port: u16) -> BacklogCheck {
    BacklogCheck {
        port,
        bind: None,
        netns: None,
        max_accept_queue: Limit::Percent(90.0),
        max_syn_recv: None,
        max_overflows_per_s: None,
    }
}

fn run(rt: &tokio::runtime::Runtime, probe: &Probe) -> Outcome {
    rt.block_on(probe.run(Duration::from_secs(5)))
}

/// A listener with this backlog that never accepts (until the test says so).
fn listen(rt: &tokio::runtime::Runtime, addr: &str, backlog: u32) -> std::net::TcpListener {
    let _guard = rt.enter();
    let addr: SocketAddr = addr.parse().unwrap();
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .unwrap();
    socket.bind(addr).unwrap();
    socket.listen(backlog).unwrap().into_std().unwrap()
}

/// `n` clients connecting to `addr`, held open until the runtime is dropped. Those past the
/// accept queue stay in SYN-SENT and retransmit, as real clients of a stuck server do.
fn clients(rt: &tokio::runtime::Runtime, addr: SocketAddr, n: usize) {
    for _ in 0..n {
        rt.spawn(async move {
            let _stream = tokio::net::TcpStream::connect(addr).await;
            std::future::pending::<()>().await;
        });
    }
}

/// `ss -ltnH sport = :PORT`, as (Recv-Q, Send-Q) of the listener on `local`.
fn ss_listen(netns: Option<&str>, port: u16, local: &str) -> Option<(u32, u32)> {
    let out = ss(netns, &["-ltnH", "sport", "=", &format!(":{port}")]);
    out.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 4 && f[3] == local).then(|| (f[1].parse().unwrap(), f[2].parse().unwrap()))
    })
}

fn ss(netns: Option<&str>, args: &[&str]) -> String {
    let out = match netns {
        Some(ns) => Command::new("ip")
            .args(["netns", "exec", ns, "ss"])
            .args(args)
            .output(),
        None => Command::new("ss").args(args).output(),
    }
    .expect("ss (iproute2) is needed");
    assert!(out.status.success(), "ss {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Waits until `ss` shows the listener on `local` full (Recv-Q over Send-Q) and settled (the
/// same twice in a row); returns (Recv-Q, Send-Q). The kernel completes backlog + 1
/// handshakes, then drops SYNs; handshakes finishing at once on both CPUs can overshoot that
/// by one or two (its check is lockless), so the count is read, not assumed.
fn wait_full(port: u16, local: &str) -> (u32, u32) {
    let mut last = None;
    let full = wait_until(Duration::from_secs(15), || {
        let now = ss_listen(None, port, local);
        let settled = now.is_some_and(|(q, m)| q > m) && now == last;
        last = now;
        settled
    });
    assert!(full, "ss: {last:?}");
    last.unwrap()
}

/// "accept queue Q/M" in a reason.
fn queue_in(reason: &str) -> (u32, u32) {
    let re = regex::Regex::new(r"accept queue (\d+)/(\d+)").unwrap();
    let c = re
        .captures(reason)
        .unwrap_or_else(|| panic!("no queue in {reason:?}"));
    (c[1].parse().unwrap(), c[2].parse().unwrap())
}

/// "NAME +R/s" in a reason, if present.
fn rate_in(reason: &str, name: &str) -> Option<f64> {
    let re = regex::Regex::new(&format!(r"{name} \+([0-9.]+)/s")).unwrap();
    re.captures(reason).map(|c| c[1].parse().unwrap())
}

fn half_open_in(reason: &str) -> u32 {
    let re = regex::Regex::new(r"(\d+) half-open").unwrap();
    re.captures(reason)
        .unwrap_or_else(|| panic!("no half-open in {reason:?}"))[1]
        .parse()
        .unwrap()
}

#[test]
fn a_listener_that_never_accepts_fails_with_the_numbers_ss_shows() {
    let rt = runtime();
    let listener = listen(&rt, "127.0.0.1:0", 4);
    let addr = listener.local_addr().unwrap();
    let port = addr.port();
    let local = addr.to_string();
    clients(&rt, addr, 20);
    let (queued, max) = wait_full(port, &local);
    assert_eq!(max, 4);

    let mut check = spec(port);
    check.max_overflows_per_s = Some(0.5);
    let probe = Probe::SynBacklog(BacklogProbe::new(check));
    let first = run(&rt, &probe);
    assert!(!first.ok, "{first:?}");
    assert_eq!(
        first.reason,
        format!(
            "accept queue {queued}/4 ({}%) over 90%, no rate yet (first sample)",
            queued * 25
        )
    );
    assert_eq!(Some(queue_in(&first.reason)), ss_listen(None, port, &local));

    // The clients left in SYN-SENT retransmit (1 s, 3 s, ...): each retransmit overflows.
    let mut last = first.clone();
    let overflowed = wait_until(Duration::from_secs(15), || {
        last = run(&rt, &probe);
        rate_in(&last.reason, "ListenOverflows").is_some_and(|r| r > 0.5)
    });
    assert!(overflowed, "{last:?}");
    assert!(!last.ok);
    assert!(
        last.reason.contains("/s over 0.5/s"),
        "the overflow limit is named: {last:?}"
    );
    assert!(
        rate_in(&last.reason, "ListenDrops").is_some_and(|r| r > 0.0),
        "every overflow is a drop too: {last:?}"
    );
    assert_eq!(Some(queue_in(&last.reason)), ss_listen(None, port, &local));
    drop(listener);
}

/// Accepts (and drops) every connection on `listener` until dropped.
struct Acceptor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Acceptor {
    fn start(listener: std::net::TcpListener) -> Acceptor {
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut accepted = 0;
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok(_) => accepted += 1,
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            accepted
        });
        Acceptor {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_listener_that_starts_accepting_recovers() {
    let rt = runtime();
    let listener = listen(&rt, "127.0.0.1:0", 4);
    let addr = listener.local_addr().unwrap();
    clients(&rt, addr, 12);
    let probe = Probe::SynBacklog(BacklogProbe::new(spec(addr.port())));
    let mut last = None;
    assert!(
        wait_until(Duration::from_secs(15), || {
            let o = run(&rt, &probe);
            let full = !o.ok && queue_in(&o.reason).0 > 4;
            last = Some(o);
            full
        }),
        "{last:?}"
    );

    let _acceptor = Acceptor::start(listener);
    // The queue drains at once; the clients still in SYN-SENT get in on their next retransmit
    // and are accepted too.
    assert!(
        wait_until(Duration::from_secs(15), || {
            let o = run(&rt, &probe);
            let ok = o.ok
                && o.reason
                    .starts_with("ok: accept queue 0/4, ListenOverflows +");
            last = Some(o);
            ok
        }),
        "{last:?}"
    );
}

#[test]
fn ipv4_and_ipv6_on_one_port_report_the_fullest_and_bind_picks_one() {
    let rt = runtime();
    let v4 = listen(&rt, "127.0.0.1:0", 4);
    let addr = v4.local_addr().unwrap();
    let port = addr.port();
    let _v6 = listen(&rt, &format!("[::1]:{port}"), 64);
    clients(&rt, addr, 8);
    let local = addr.to_string();
    let (queued, _) = wait_full(port, &local);

    let both = Probe::SynBacklog(BacklogProbe::new(spec(port)));
    let o = run(&rt, &both);
    assert!(!o.ok, "{o:?}");
    assert!(
        o.reason.starts_with(&format!(
            "accept queue {queued}/4 ({}%) over 90% on 127.0.0.1:{port}, ",
            queued * 25
        )),
        "{o:?}"
    );

    let mut only_v6 = spec(port);
    only_v6.bind = Some("::1".parse().unwrap());
    let o = run(&rt, &Probe::SynBacklog(BacklogProbe::new(only_v6)));
    assert!(o.ok, "{o:?}");
    assert!(
        o.reason.starts_with("ok: accept queue 0/64, no rate yet"),
        "{o:?}"
    );
    assert_eq!(
        ss_listen(None, port, &format!("[::1]:{port}")),
        Some((0, 64))
    );

    let mut only_v4 = spec(port);
    only_v4.bind = Some("127.0.0.1".parse().unwrap());
    only_v4.max_accept_queue = Limit::Absolute(u64::from(queued));
    let o = run(&rt, &Probe::SynBacklog(BacklogProbe::new(only_v4)));
    assert!(o.ok, "an absolute limit of {queued} allows {queued}: {o:?}");
    assert!(
        o.reason
            .starts_with(&format!("ok: accept queue {queued}/4, ")),
        "{o:?}"
    );
}

#[test]
fn nothing_listening_has_its_own_reason() {
    let rt = runtime();
    let port = free_port();
    let o = run(&rt, &Probe::SynBacklog(BacklogProbe::new(spec(port))));
    assert!(!o.ok);
    assert_eq!(o.reason, format!("nothing listens on :{port}"));

    // A listener on another address of the port is not the one asked for.
    let _other = listen(&rt, &format!("127.0.0.1:{port}"), 8);
    let mut check = spec(port);
    check.bind = Some("127.0.0.2".parse().unwrap());
    let o = run(&rt, &Probe::SynBacklog(BacklogProbe::new(check)));
    assert_eq!(o.reason, format!("nothing listens on 127.0.0.2:{port}"));

    let mut check = spec(port);
    check.netns = Some("/run/netns/wd-backlog-no-such-ns".into());
    let o = run(&rt, &Probe::SynBacklog(BacklogProbe::new(check)));
    assert!(!o.ok);
    assert!(
        o.reason
            .starts_with("cannot open netns /run/netns/wd-backlog-no-such-ns: "),
        "{o:?}"
    );
}

/// `watchdog check --json --dry-run`: probe name -> (ok, reason).
fn watchdog_check(cfg: &std::path::Path) -> std::collections::BTreeMap<String, (bool, String)> {
    common::check_rows(cfg, &[])
}

#[test]
fn the_binary_checks_and_keeps_rates_between_runs() {
    let dir = TempDir::new("backlog-bin");
    let idle = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = idle.local_addr().unwrap().port();
    let nobody = free_port();
    let cfg = dir.write(
        "watchdog.toml",
        &format!(
            "[watchdog]\nstate_dir = \"state\"\n\n[defaults]\ninterval = \"1m\"\ntimeout = \"2s\"\n\n\
             [[probe]]\nname = \"idle\"\nkind = \"syn_backlog\"\nport = {port}\nbind = \"127.0.0.1\"\n\
             max_accept_queue = \"80%\"\nmax_syn_recv = 200\nmax_overflows_per_s = 1000000\n\n\
             [[probe]]\nname = \"nobody\"\nkind = \"syn_backlog\"\nport = {nobody}\n"
        ),
    );
    let first = watchdog_check(&cfg);
    let backlog = ss_listen(None, port, &format!("127.0.0.1:{port}"))
        .unwrap()
        .1;
    assert_eq!(
        first["idle"],
        (
            true,
            format!("ok: accept queue 0/{backlog}, 0 half-open, no rate yet (first sample)")
        )
    );
    assert_eq!(
        first["nobody"],
        (false, format!("nothing listens on :{nobody}"))
    );
    // The second run has the first one's counters from the state file: a rate.
    let second = watchdog_check(&cfg);
    assert!(second["idle"].0, "{second:?}");
    assert!(
        rate_in(&second["idle"].1, "ListenOverflows").is_some(),
        "{second:?}"
    );
}

/// A network namespace of our own (`ip netns add`), deleted when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("wd-backlog-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ns = Netns { name };
        ns.ip(&["netns", "add", &ns.name]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> std::path::PathBuf {
        format!("/run/netns/{}", self.name).into()
    }

    fn ip(&self, args: &[&str]) -> Output {
        let out = Command::new("ip")
            .args(args)
            .output()
            .expect("ip (iproute2) is needed");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        out
    }

    fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        self.ip(&full)
    }

    fn exec_stdin(&self, args: &[&str], stdin: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A child process, killed by PID and reaped when dropped.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Listeners with backlog 4 on 127.0.0.1 and [::1] inside `ns` that never accept; the process
/// exits when its stdin closes.
fn listeners_in(ns: &Netns, port: u16) -> Kid {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c"])
        .arg(
            "import socket, sys\n\
             port = int(sys.argv[1])\n\
             v4 = socket.socket()\n\
             v4.bind(('127.0.0.1', port))\n\
             v4.listen(4)\n\
             v6 = socket.socket(socket.AF_INET6)\n\
             v6.bind(('::1', port))\n\
             v6.listen(4)\n\
             print('ready', flush=True)\n\
             sys.stdin.read()\n",
        )
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let kid = Kid(child);
    assert_eq!(line.trim(), "ready");
    kid
}

/// Raw SYNs to `port`, `v4` to 127.0.0.1 and `v6` to [::1], from distinct source ports, sent
/// once each: no socket answers their SYN-ACKs, and the SYN-ACKs are dropped on output (see
/// [`drop_synacks`]) so no RST comes back to clear the half-open entries.
fn raw_syns(ns: &Netns, port: u16, v4: u32, v6: u32) {
    ns.exec(&[
        "python3",
        "-c",
        "import random, socket, struct, sys\n\
         port, n4, n6 = map(int, sys.argv[1:4])\n\
         def syn(sport):\n\
         \x20   return struct.pack('!HHIIBBHHH', sport, port, random.getrandbits(32), 0, 5 << 4, 0x02, 65535, 0, 0)\n\
         def csum(b):\n\
         \x20   t = sum(struct.unpack('!%dH' % (len(b) // 2), b))\n\
         \x20   t = (t >> 16) + (t & 0xffff)\n\
         \x20   t += t >> 16\n\
         \x20   return ~t & 0xffff\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)\n\
         lo = socket.inet_aton('127.0.0.1')\n\
         for i in range(n4):\n\
         \x20   h = syn(40000 + i)\n\
         \x20   c = csum(lo + lo + struct.pack('!BBH', 0, 6, len(h)) + h)\n\
         \x20   s.sendto(h[:16] + struct.pack('!H', c) + h[18:], ('127.0.0.1', 0))\n\
         s6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP)\n\
         s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_CHECKSUM, 16)\n\
         for i in range(n6):\n\
         \x20   s6.sendto(syn(41000 + i), ('::1', 0))\n",
        &port.to_string(),
        &v4.to_string(),
        &v6.to_string(),
    ]);
}

fn drop_synacks(ns: &Netns) {
    ns.exec_stdin(
        &["nft", "-f", "-"],
        "table inet wd {\n  chain out {\n    type filter hook output priority 0; policy accept;\n    \
         tcp flags & (syn | ack) == (syn | ack) drop\n  }\n}\n",
    );
}

fn counter(snapshot: &serde_json::Value, name: &str) -> u64 {
    snapshot[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {snapshot}"))
}

/// What [`syn_flood`] saw.
struct Flood {
    /// Half-open entries, as the probe counted them (both families).
    half_open: u32,
    /// ... and as `ss` lists them: all, and IPv6 only.
    ss_all: u32,
    ss_v6: u32,
    /// Counter deltas over the flood.
    dropped: u64,
    cookied: u64,
    cookies_sent: u64,
    /// The reason of a probe checked only before and after the flood (so its rates span it).
    reason: String,
}

const SYNS_V4: u32 = 20;
/// Fewer than the v6 listener's SYN queue holds: all of them stay half-open.
const SYNS_V6: u32 = 3;

/// Raw SYNs at backlog-4 listeners in a fresh namespace with `tcp_syncookies` set as given.
fn syn_flood(tag: &str, syncookies: u8) -> Flood {
    let rt = runtime();
    let ns = Netns::new(tag);
    ns.exec(&[
        "sh",
        "-c",
        &format!("echo {syncookies} > /proc/sys/net/ipv4/tcp_syncookies"),
    ]);
    drop_synacks(&ns);
    let port = 8080;
    let _listeners = listeners_in(&ns, port);

    let mut check = spec(port);
    check.netns = Some(ns.path());
    check.max_syn_recv = Some(2);
    let polled = Probe::SynBacklog(BacklogProbe::new(check.clone()));
    let before_after = Probe::SynBacklog(BacklogProbe::new(check));
    let first = run(&rt, &before_after);
    assert!(first.ok, "{first:?}");
    assert!(
        first.reason.starts_with("ok: accept queue 0/4 on ")
            && first.reason.contains(", 0 half-open, no rate yet"),
        "{first:?}"
    );
    let base = before_after.snapshot().unwrap();

    raw_syns(&ns, port, SYNS_V4, SYNS_V6);
    // Every SYN is accounted for: queued half-open, or dropped, or answered with a cookie.
    let mut last = None;
    let settled = wait_until(Duration::from_secs(15), || {
        let o = run(&rt, &polled);
        let snap = polled.snapshot().unwrap();
        let handled = ["TCPReqQFullDrop", "TCPReqQFullDoCookies"]
            .iter()
            .map(|n| counter(&snap, n) - counter(&base, n))
            .sum::<u64>();
        let done = u64::from(half_open_in(&o.reason)) + handled == u64::from(SYNS_V4 + SYNS_V6);
        last = Some((o, snap));
        done
    });
    let (o, snap) = last.unwrap();
    assert!(settled, "{o:?} {snap}");
    let sport = format!(":{port}");
    let ss_count = |flags: &str| {
        ss(
            Some(&ns.name),
            &[flags, "state", "syn-recv", "sport", "=", &sport],
        )
        .lines()
        .count() as u32
    };
    let after = run(&rt, &before_after);
    assert!(!after.ok, "{after:?}");
    let delta = |n: &str| counter(&snap, n) - counter(&base, n);
    Flood {
        half_open: half_open_in(&o.reason),
        ss_all: ss_count("-tnH"),
        ss_v6: ss_count("-6tnH"),
        dropped: delta("TCPReqQFullDrop"),
        cookied: delta("TCPReqQFullDoCookies"),
        cookies_sent: delta("SyncookiesSent"),
        reason: after.reason,
    }
}

/// The v4 SYN queue holds about its backlog (4, or 5 on kernels that compare with `>`).
fn check_queues(f: &Flood) -> u64 {
    assert_eq!(f.half_open, f.ss_all, "the probe and ss agree");
    assert_eq!(f.ss_v6, SYNS_V6, "every v6 SYN is half-open, and counted");
    let v4 = f.half_open - SYNS_V6;
    assert!((4..=5).contains(&v4), "v4 half-open: {v4}");
    assert!(
        f.reason.starts_with("accept queue 0/4 on ")
            && f.reason
                .contains(&format!(", {} half-open over 2, ", f.half_open)),
        "{}",
        f.reason
    );
    u64::from(SYNS_V4 - v4)
}

#[test]
fn half_open_syns_without_syncookies_are_dropped_when_the_syn_queue_is_full() {
    let f = syn_flood("nocookies", 0);
    let past_the_queue = check_queues(&f);
    assert_eq!(f.dropped, past_the_queue, "{}", f.reason);
    assert_eq!((f.cookied, f.cookies_sent), (0, 0), "{}", f.reason);
    assert!(
        rate_in(&f.reason, "TCPReqQFullDrop").is_some_and(|r| r > 0.0),
        "{}",
        f.reason
    );
    assert!(
        rate_in(&f.reason, "SyncookiesSent").is_none(),
        "{}",
        f.reason
    );
}

#[test]
fn half_open_syns_with_syncookies_are_answered_with_cookies() {
    let f = syn_flood("cookies", 1);
    let past_the_queue = check_queues(&f);
    assert_eq!(f.dropped, 0, "{}", f.reason);
    assert_eq!(f.cookied, past_the_queue, "{}", f.reason);
    assert_eq!(
        f.cookies_sent, past_the_queue,
        "one cookie per SYN past the queue: {}",
        f.reason
    );
    assert!(
        rate_in(&f.reason, "SyncookiesSent").is_some_and(|r| r > 0.0),
        "{}",
        f.reason
    );
    assert!(
        rate_in(&f.reason, "TCPReqQFullDrop").is_none(),
        "{}",
        f.reason
    );
}

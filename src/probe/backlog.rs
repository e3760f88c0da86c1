//! `kind = "syn_backlog"`: is a listener's accept queue, or its SYN queue, full?
//!
//! A listener whose application stops calling accept() (or calls it too slowly) still completes
//! handshakes until its accept queue is full; then the kernel drops new SYNs and clients hang in
//! SYN-SENT. A connect check sees a slow connect at best. In the 2015-09-02 Bitbucket outage
//! (`incidents/2015-09-02-oom-rabbitmq-syn-backlog.txt`) HAProxy's SSH listener "did not work at
//! first, as the kernel's SYN backlog was still full" after a restart; nothing watched it.
//!
//! Each check asks the kernel, over NETLINK_SOCK_DIAG (inet_diag, what `ss` uses), for the TCP
//! sockets in state LISTEN whose local port is the watched one, IPv4 and IPv6 — the kernel
//! filters by state and, with a one-instruction bytecode program, by port. For a LISTEN socket
//! `idiag_rqueue` is the accept queue and `idiag_wqueue` its maximum (`ss -ltn` Recv-Q /
//! Send-Q); of several listeners (v4 and v6, SO_REUSEPORT) the fullest is reported. With
//! `max_syn_recv`, a second dump counts the port's SYN_RECV (half-open) entries; only then,
//! because that dump walks every bucket of the kernel's established hash (`Dump::HalfOpen`). Then
//! the TcpExt counters of /proc/net/netstat (`ListenOverflows`, `ListenDrops`,
//! `TCPReqQFullDrop`, `TCPReqQFullDoCookies`, `SyncookiesSent`) become rates against the
//! previous check's sample. Those counters are namespace-wide: they say that *some* listener
//! overflowed, the queues say which.
//!
//! With `netns`, a short-lived thread enters the namespace (setns) and does all of it there: a
//! netlink socket belongs to the namespace it was created in, and /proc/thread-self/net is the
//! calling thread's namespace. Blocking pool threads are never moved into another namespace.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use netlink_packet_core::{NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, Parseable};
use netlink_packet_sock_diag::inet::InetResponse;
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};
use nix::errno::Errno;

use super::{Outcome, Phase};
use crate::clock::{self, Timestamp};
use crate::config::{BacklogCheck, Limit};

/// The TcpExt counters the probe follows, in the order reasons list them.
pub const COUNTERS: [&str; 5] = [
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDrop",
    "TCPReqQFullDoCookies",
    "SyncookiesSent",
];
const LISTEN_OVERFLOWS: usize = 0;

/// Per-second rates of [`COUNTERS`], `None` for a counter this kernel lacks.
type Rates = [Option<f64>; 5];

// From <linux/sock_diag.h>, <linux/inet_diag.h>, <linux/netlink.h>. The sock-diag crate can
// neither attach a bytecode filter to its request nor make the legacy one, so requests are
// built here; answers are parsed with it.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCPDIAG_GETSOCK: u16 = 18;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_S_COND: u8 = 7;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN_RECV: u8 = 3;
const TCP_LISTEN: u8 = 10;
/// recv(2) flag: return the datagram's real length, so a truncated one is noticed.
const MSG_TRUNC: i32 = 0x20;
/// The kernel sizes dump datagrams to at most 32 KiB (netlink_recvmsg caps max_recvmsg_len).
const RECV_BUFFER: usize = 32 * 1024;

/// One sample of the namespace-wide counters, and when it was taken (boot-time clock, so a
/// one-shot `watchdog check` can compare with the previous run's).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    at: Timestamp,
    counters: [Option<u64>; 5],
}

/// A listening socket on the watched port.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Listener {
    local: SocketAddr,
    /// Connections completed and waiting for accept().
    queued: u32,
    /// The accept queue's maximum: the backlog passed to listen(), capped by somaxconn.
    max: u32,
}

impl Listener {
    fn ratio(&self) -> f64 {
        match (self.queued, self.max) {
            (0, _) => 0.0,
            (_, 0) => f64::INFINITY,
            (q, m) => f64::from(q) / f64::from(m),
        }
    }
}

/// What one check read from the kernel.
#[derive(Debug, Clone, PartialEq)]
struct Reading {
    listeners: Vec<Listener>,
    /// Counted only when `max_syn_recv` is set (see [`Dump::HalfOpen`]).
    half_open: Option<u32>,
    sample: Sample,
}

/// Why a check could not read what it needs.
#[derive(Debug, Clone, PartialEq)]
enum Problem {
    /// The host lacks the interface (no inet_diag, no /proc/net/netstat): not the target's fault.
    Unsupported(String),
    Failed(String),
}

impl Problem {
    fn reason(self) -> String {
        match self {
            Problem::Unsupported(what) => format!("unsupported on this host: {what}"),
            Problem::Failed(what) => what,
        }
    }
}

#[derive(Debug)]
pub struct BacklogProbe {
    check: BacklogCheck,
    /// The previous counter sample, for rates. A std Mutex: held for a copy, never across await.
    previous: Mutex<Option<Sample>>,
}

impl BacklogProbe {
    pub fn new(check: BacklogCheck) -> Self {
        BacklogProbe {
            check,
            previous: Mutex::new(None),
        }
    }

    pub async fn check(&self, phase: &Phase, started: Instant) -> Outcome {
        let port = self.check.port;
        let bind = self.check.bind;
        let half_open = self.check.max_syn_recv.is_some();
        let read = match &self.check.netns {
            None => {
                phase.set("dumping sockets over netlink");
                tokio::task::spawn_blocking(move || {
                    read(port, bind, half_open, "/proc/net/netstat")
                })
                .await
                .unwrap_or_else(|e| Err(Problem::Failed(format!("the reader failed: {e}"))))
            }
            Some(path) => {
                phase.set("dumping sockets over netlink in the network namespace");
                read_in_netns(path.clone(), port, bind, half_open).await
            }
        };
        let reading = match read {
            Ok(r) => r,
            Err(p) => return Outcome::fail(started.elapsed(), p.reason()),
        };
        let previous = {
            let mut slot = self.previous.lock().unwrap_or_else(|e| e.into_inner());
            slot.replace(reading.sample)
        };
        let rates = previous.and_then(|p| rates(&p, &reading.sample));
        let (ok, reason) = judge(&self.check, &reading, rates.as_ref());
        if ok {
            Outcome::ok(started.elapsed(), reason)
        } else {
            Outcome::fail(started.elapsed(), reason)
        }
    }

    /// See [`super::Probe::next_event`]. The kernel announces no queue changes: never.
    pub async fn next_event(&self) {
        std::future::pending::<()>().await
    }

    /// See [`super::Probe::snapshot`]: the previous counter sample, for rates across runs.
    pub fn snapshot(&self) -> Option<serde_json::Value> {
        let sample = (*self.previous.lock().unwrap_or_else(|e| e.into_inner()))?;
        let mut map = serde_json::Map::new();
        map.insert("at".into(), serde_json::to_value(sample.at).ok()?);
        for (name, value) in COUNTERS.iter().zip(sample.counters) {
            if let Some(v) = value {
                map.insert((*name).into(), v.into());
            }
        }
        Some(serde_json::Value::Object(map))
    }

    /// See [`super::Probe::restore`]. Anything unreadable is ignored: the next check then
    /// starts without a rate, as a first check does.
    pub fn restore(&self, snapshot: &serde_json::Value) {
        let Some(at) = snapshot.get("at").and_then(serde_json::Value::as_u64) else {
            return;
        };
        let mut counters = [None; 5];
        for (slot, name) in counters.iter_mut().zip(COUNTERS) {
            *slot = snapshot.get(name).and_then(serde_json::Value::as_u64);
        }
        let sample = Sample {
            at: Timestamp::from_epoch(std::time::Duration::from_millis(at)),
            counters,
        };
        *self.previous.lock().unwrap_or_else(|e| e.into_inner()) = Some(sample);
    }
}

/// Runs [`read`] on a fresh thread that entered the namespace at `path`. A thread of its own,
/// not the blocking pool: a pool thread moved into another namespace would stay there for
/// whatever runs on it next. The thread ends with the read, taking the namespace with it.
async fn read_in_netns(
    path: PathBuf,
    port: u16,
    bind: Option<IpAddr>,
    half_open: bool,
) -> Result<Reading, Problem> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("backlog-netns".into())
        .spawn(move || {
            let result = enter_netns(&path).and_then(|()| {
                // /proc/net is /proc/self/net, the namespace of the process's main thread;
                // thread-self is this thread's.
                read(port, bind, half_open, "/proc/thread-self/net/netstat")
            });
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        return Err(Problem::Failed(format!("cannot start a thread: {e}")));
    }
    rx.await
        .unwrap_or_else(|_| Err(Problem::Failed("the netns reader thread died".into())))
}

fn enter_netns(path: &std::path::Path) -> Result<(), Problem> {
    use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
    use std::os::fd::AsFd;
    let file = std::fs::File::open(path)
        .map_err(|e| Problem::Failed(format!("cannot open netns {}: {e}", path.display())))?;
    move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
        .map_err(|e| Problem::Failed(format!("cannot enter netns {}: {e}", path.display())))
}

/// The sockets on `port`, then the counters. Blocking, but only for netlink dumps the kernel
/// answers at once and one /proc read.
fn read(
    port: u16,
    bind: Option<IpAddr>,
    count_half_open: bool,
    netstat: &str,
) -> Result<Reading, Problem> {
    let (listeners, half_open) = dump_sockets(port, bind, count_half_open)?;
    let text = std::fs::read_to_string(netstat).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Problem::Unsupported(format!("no {netstat}"))
        } else {
            Problem::Failed(format!("cannot read {netstat}: {e}"))
        }
    })?;
    let counters = parse_netstat(&text);
    if counters.iter().all(Option::is_none) {
        return Err(Problem::Unsupported(format!(
            "no TcpExt listen counters in {netstat}"
        )));
    }
    Ok(Reading {
        listeners,
        half_open,
        sample: Sample {
            at: clock::now(),
            counters,
        },
    })
}

/// What one netlink dump asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Dump {
    /// LISTEN sockets of one address family (inet_diag_req_v2): the kernel walks only its
    /// listening hash, tens of microseconds.
    Listeners(u8),
    /// SYN_RECV entries of every family in one walk: the legacy TCPDIAG_GETSOCK request, whose
    /// dump the kernel runs with AF_UNSPEC. The walk covers every bucket of the established
    /// hash (`net.ipv4.tcp_ehash_entries`, 262144 on a small VM: ~1.6 ms of kernel CPU, twice
    /// that as two per-family v2 dumps), which is why it runs only when `max_syn_recv` asks.
    HalfOpen,
}

/// Dumps the LISTEN sockets on `port` (IPv4, IPv6) and, if asked, counts its SYN_RECV
/// entries. `bind` keeps only sockets on that local address.
fn dump_sockets(
    port: u16,
    bind: Option<IpAddr>,
    count_half_open: bool,
) -> Result<(Vec<Listener>, Option<u32>), Problem> {
    let socket = Socket::new(NETLINK_SOCK_DIAG).map_err(|e| {
        if e.raw_os_error() == Some(Errno::EPROTONOSUPPORT as i32) {
            Problem::Unsupported("no NETLINK_SOCK_DIAG in this kernel".into())
        } else {
            Problem::Failed(format!("cannot open a NETLINK_SOCK_DIAG socket: {e}"))
        }
    })?;
    let kernel = netlink_sys::SocketAddr::new(0, 0);
    let mut buf = Vec::with_capacity(RECV_BUFFER);
    let mut listeners = Vec::new();
    let mut half_open = 0u32;
    let dumps = [
        Dump::Listeners(AF_INET),
        Dump::Listeners(AF_INET6),
        Dump::HalfOpen,
    ];
    let dumps = if count_half_open {
        &dumps[..]
    } else {
        &dumps[..2]
    };
    for (seq, dump) in (1u32..).zip(dumps) {
        let request = dump_request(*dump, port, seq);
        socket
            .send_to(&request, &kernel, 0)
            .map_err(|e| Problem::Failed(format!("netlink send failed: {e}")))?;
        let result = receive_dump(&socket, &mut buf, seq, &mut |state, local, rq, wq| {
            if bind.is_some_and(|b| b.to_canonical() != local.ip().to_canonical()) {
                return;
            }
            match state {
                TCP_LISTEN => listeners.push(Listener {
                    local,
                    queued: rq,
                    max: wq,
                }),
                TCP_SYN_RECV => half_open = half_open.saturating_add(1),
                _ => {}
            }
        });
        match result {
            Ok(()) => {}
            // A kernel without IPv6 has no AF_INET6 handler: nothing listens there.
            Err(e)
                if *dump == Dump::Listeners(AF_INET6)
                    && matches!(
                        Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                        Errno::ENOENT | Errno::EAFNOSUPPORT
                    ) => {}
            Err(e) if e.raw_os_error() == Some(Errno::ENOENT as i32) => {
                return Err(Problem::Unsupported(
                    "no TCP socket diagnostics (inet_diag/tcp_diag) in this kernel".into(),
                ));
            }
            Err(e) => return Err(Problem::Failed(format!("netlink dump failed: {e}"))),
        }
    }
    Ok((listeners, count_half_open.then_some(half_open)))
}

/// Reads the answer to request `seq` until NLMSG_DONE, calling `each(state, local address,
/// rqueue, wqueue)` per socket. Both kinds of request are answered with inet_diag_msg.
fn receive_dump(
    socket: &Socket,
    buf: &mut Vec<u8>,
    seq: u32,
    each: &mut dyn FnMut(u8, SocketAddr, u32, u32),
) -> io::Result<()> {
    let bad =
        |e: netlink_packet_core::DecodeError| io::Error::other(format!("bad netlink message: {e}"));
    loop {
        buf.clear();
        let n = socket.recv(buf, MSG_TRUNC)?;
        if n > buf.len() {
            return Err(io::Error::other(format!(
                "a {n}-byte netlink datagram did not fit in {} bytes",
                buf.len()
            )));
        }
        let mut at = 0;
        while at < n {
            let message = NetlinkBuffer::new_checked(&buf[at..n]).map_err(bad)?;
            let len = message.length() as usize;
            if len == 0 {
                break;
            }
            at += (len + 3) & !3;
            if message.sequence_number() != seq {
                // A leftover of an earlier request on this socket.
                continue;
            }
            match message.message_type() {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let code = message
                        .payload()
                        .first_chunk::<4>()
                        .map_or(0, |b| i32::from_ne_bytes(*b));
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                _ => {
                    let r = InetResponse::parse(message.payload()).map_err(bad)?;
                    let id = &r.header.socket_id;
                    each(
                        r.header.state,
                        SocketAddr::new(id.source_address, id.source_port),
                        r.header.recv_queue,
                        r.header.send_queue,
                    );
                }
            }
        }
    }
}

/// A dump request with a bytecode filter keeping local port `port`: one INET_DIAG_BC_S_COND op
/// whose "yes" runs off the end of the program (accept) and whose "no" jumps 4 bytes past it
/// (reject), as `ss sport = :PORT` does.
fn dump_request(dump: Dump, port: u16, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(92);
    // struct nlmsghdr; the length is patched in at the end.
    m.extend_from_slice(&0u32.to_ne_bytes());
    let kind = match dump {
        Dump::Listeners(_) => SOCK_DIAG_BY_FAMILY,
        Dump::HalfOpen => TCPDIAG_GETSOCK,
    };
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel knows ours
    let sockid = [0u8; 48]; // any address, any port: the bytecode filters
    match dump {
        Dump::Listeners(family) => {
            // struct inet_diag_req_v2 { family, protocol, ext, pad, states, id }
            m.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
            m.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
            m.extend_from_slice(&sockid);
        }
        Dump::HalfOpen => {
            // struct inet_diag_req { family, src_len, dst_len, ext, id, states, dbs }; the
            // family is ignored by the dump (AF_UNSPEC), TCP is in the message type.
            m.extend_from_slice(&[AF_INET, 0, 0, 0]);
            m.extend_from_slice(&sockid);
            m.extend_from_slice(&(1u32 << TCP_SYN_RECV).to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
        }
    }
    // struct nlattr { len, type } around the 12-byte program.
    m.extend_from_slice(&16u16.to_ne_bytes());
    m.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    // struct inet_diag_bc_op { code, yes, no }
    m.extend_from_slice(&[INET_DIAG_BC_S_COND, 12]);
    m.extend_from_slice(&16u16.to_ne_bytes());
    // struct inet_diag_hostcond { family AF_UNSPEC, prefix_len 0, pad, int port }
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(&i32::from(port).to_ne_bytes());
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m
}

/// The followed TcpExt counters from /proc/net/netstat: pairs of lines, a header line of names
/// and a line of values, each starting with "TcpExt:". Counters this kernel lacks are `None`.
fn parse_netstat(text: &str) -> [Option<u64>; 5] {
    let mut out = [None; 5];
    let mut lines = text.lines();
    while let Some(names) = lines.next() {
        let Some(names) = names.strip_prefix("TcpExt:") else {
            continue;
        };
        let Some(values) = lines.next().and_then(|l| l.strip_prefix("TcpExt:")) else {
            break;
        };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Some(i) = COUNTERS.iter().position(|c| *c == name) {
                out[i] = value.parse().ok();
            }
        }
        break;
    }
    out
}

/// Per-second rates from `earlier` to `later`, `None` when no time passed between them (a
/// sample from another boot, or the same instant). A counter that went down was reset (a
/// namespace recreated): its rate counts from zero, which can only understate it.
fn rates(earlier: &Sample, later: &Sample) -> Option<Rates> {
    let dt = later.at.saturating_since(earlier.at).as_secs_f64();
    if dt <= 0.0 {
        return None;
    }
    let mut out = [None; 5];
    for (i, slot) in out.iter_mut().enumerate() {
        if let (Some(a), Some(b)) = (earlier.counters[i], later.counters[i]) {
            let delta = if b >= a { b - a } else { b };
            *slot = Some(delta as f64 / dt);
        }
    }
    Some(out)
}

/// Whether `queued` of `max` is over `limit`. Percentages compare exactly (4 of 4 is over 90%),
/// rather than through a rounded count.
fn over(limit: Limit, queued: u32, max: u32) -> bool {
    match limit {
        Limit::Absolute(v) => u64::from(queued) > v,
        Limit::Percent(p) => f64::from(queued) * 100.0 > p * f64::from(max),
    }
}

/// The verdict and its one-line reason.
fn judge(check: &BacklogCheck, reading: &Reading, rates: Option<&Rates>) -> (bool, String) {
    let limit = check.max_accept_queue;
    // The listener to report: one over its limit if any, then the fullest by ratio.
    let Some(worst) = reading.listeners.iter().max_by(|a, b| {
        let key = |l: &Listener| (over(limit, l.queued, l.max), l.ratio(), l.queued);
        let (ka, kb) = (key(a), key(b));
        ka.0.cmp(&kb.0)
            .then(ka.1.total_cmp(&kb.1))
            .then(ka.2.cmp(&kb.2))
    }) else {
        let addr = check.bind.map(|b| b.to_string()).unwrap_or_default();
        let addr = if addr.contains(':') {
            format!("[{addr}]")
        } else {
            addr
        };
        let netns = match &check.netns {
            Some(p) => format!(" in netns {}", p.display()),
            None => String::new(),
        };
        return (
            false,
            format!("nothing listens on {addr}:{}{netns}", check.port),
        );
    };

    let mut ok = true;
    let mut parts = Vec::with_capacity(3);
    let mut queue = format!("accept queue {}/{}", worst.queued, worst.max);
    if over(limit, worst.queued, worst.max) {
        ok = false;
        let pct = if worst.max == 0 {
            "full".to_string()
        } else {
            format!("{:.0}%", worst.ratio() * 100.0)
        };
        queue = format!("{queue} ({pct}) over {limit}");
    }
    if reading.listeners.len() > 1 {
        queue = format!("{queue} on {}", worst.local);
    }
    parts.push(queue);

    if let Some(count) = reading.half_open {
        let mut half_open = format!("{count} half-open");
        if let Some(max) = check.max_syn_recv
            && count > max
        {
            ok = false;
            half_open = format!("{half_open} over {max}");
        }
        parts.push(half_open);
    }

    match rates {
        None => parts.push("no rate yet (first sample)".into()),
        Some(rates) => {
            for (i, rate) in rates.iter().enumerate() {
                let Some(rate) = *rate else { continue };
                // ListenOverflows always (it has a limit); the others when something happened.
                if i != LISTEN_OVERFLOWS && rate == 0.0 {
                    continue;
                }
                let mut part = format!("{} +{rate:.1}/s", COUNTERS[i]);
                if i == LISTEN_OVERFLOWS
                    && let Some(max) = check.max_overflows_per_s
                    && rate > max
                {
                    ok = false;
                    part = format!("{part} over {max}/s");
                }
                parts.push(part);
            }
        }
    }
    let reason = parts.join(", ");
    if ok {
        (true, format!("ok: {reason}"))
    } else {
        (false, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> BacklogCheck {
        BacklogCheck {
            port: 22,
            bind: None,
            netns: None,
            max_accept_queue: Limit::Percent(90.0),
            max_syn_recv: Some(10),
            max_overflows_per_s: Some(1.0),
        }
    }

    fn listener(addr: &str, queued: u32, max: u32) -> Listener {
        Listener {
            local: addr.parse().unwrap(),
            queued,
            max,
        }
    }

    fn reading(listeners: Vec<Listener>, half_open: Option<u32>) -> Reading {
        Reading {
            listeners,
            half_open,
            sample: Sample {
                at: Timestamp::secs(10),
                counters: [Some(0); 5],
            },
        }
    }

    /// Linux 6.x: TcpExt with every counter, and MPTcpExt after it with names of its own.
    const NETSTAT_6: &str = "TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed EmbryonicRsts PruneCalled ListenOverflows ListenDrops TCPReqQFullDoCookies TCPReqQFullDrop\n\
TcpExt: 7 0 0 0 0 15 17 3 2\n\
IpExt: InNoRoutes InTruncatedPkts\n\
IpExt: 0 0\n\
MPTcpExt: MPCapableSYNRX ListenOverflows\n\
MPTcpExt: 0 999\n";

    /// Linux 2.6.32: no TCPReqQFull* counters yet.
    const NETSTAT_2_6: &str = "TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed EmbryonicRsts ListenOverflows ListenDrops\n\
TcpExt: 1 0 0 0 4 4\n\
IpExt: InNoRoutes InTruncatedPkts\n\
IpExt: 0 0\n";

    #[test]
    fn netstat_of_current_and_old_kernels() {
        assert_eq!(
            parse_netstat(NETSTAT_6),
            [Some(15), Some(17), Some(2), Some(3), Some(7)]
        );
        assert_eq!(
            parse_netstat(NETSTAT_2_6),
            [Some(4), Some(4), None, None, Some(1)]
        );
        assert_eq!(parse_netstat("IpExt: A\nIpExt: 1\n"), [None; 5]);
        // A header without its values line (a truncated read) yields nothing, not garbage.
        assert_eq!(parse_netstat("TcpExt: ListenOverflows\n"), [None; 5]);
    }

    #[test]
    fn rates_are_per_second_and_survive_resets() {
        let a = Sample {
            at: Timestamp::secs(100),
            counters: [Some(10), Some(10), None, Some(5), Some(0)],
        };
        let b = Sample {
            at: Timestamp::secs(104),
            counters: [Some(30), Some(8), Some(3), Some(5), Some(2)],
        };
        let r = rates(&a, &b).unwrap();
        assert_eq!(r, [Some(5.0), Some(2.0), None, Some(0.0), Some(0.5)]);
        // No time passed (or the clock went back): no rate rather than a division by zero.
        assert_eq!(rates(&b, &a), None);
        assert_eq!(rates(&a, &a), None);
    }

    #[test]
    fn limits_compare_exactly() {
        assert!(over(Limit::Percent(90.0), 4, 4));
        assert!(!over(Limit::Percent(90.0), 3, 4));
        assert!(over(Limit::Percent(90.0), 5, 4));
        assert!(!over(Limit::Percent(100.0), 4, 4));
        assert!(over(Limit::Percent(50.0), 1, 0));
        assert!(!over(Limit::Percent(0.0), 0, 0));
        assert!(over(Limit::Absolute(3), 4, 128));
        assert!(!over(Limit::Absolute(3), 3, 4));
    }

    #[test]
    fn reasons() {
        let c = check();
        let rates0 = [Some(0.0); 5];
        let table: &[(Reading, Option<Rates>, bool, &str)] = &[
            (
                reading(vec![listener("0.0.0.0:22", 0, 128)], Some(0)),
                Some(rates0),
                true,
                "ok: accept queue 0/128, 0 half-open, ListenOverflows +0.0/s",
            ),
            (
                reading(vec![listener("0.0.0.0:22", 0, 128)], Some(0)),
                None,
                true,
                "ok: accept queue 0/128, 0 half-open, no rate yet (first sample)",
            ),
            (
                reading(vec![listener("127.0.0.1:22", 5, 4)], Some(0)),
                Some([Some(15.0), Some(15.0), None, None, None]),
                false,
                "accept queue 5/4 (125%) over 90%, 0 half-open, ListenOverflows +15.0/s over 1/s, ListenDrops +15.0/s",
            ),
            (
                // The fullest by ratio, not by count; its address, as there are two.
                reading(
                    vec![listener("0.0.0.0:22", 50, 4096), listener("[::]:22", 4, 4)],
                    Some(11),
                ),
                Some([Some(0.5), None, None, Some(2.0), Some(2.0)]),
                false,
                "accept queue 4/4 (100%) over 90% on [::]:22, 11 half-open over 10, ListenOverflows +0.5/s, TCPReqQFullDoCookies +2.0/s, SyncookiesSent +2.0/s",
            ),
            (
                // No max_syn_recv: half-open entries are not counted, nor shown.
                reading(vec![listener("0.0.0.0:22", 1, 128)], None),
                Some(rates0),
                true,
                "ok: accept queue 1/128, ListenOverflows +0.0/s",
            ),
            (
                reading(vec![], Some(0)),
                None,
                false,
                "nothing listens on :22",
            ),
        ];
        for (reading, rates, ok, reason) in table {
            assert_eq!(
                judge(&c, reading, rates.as_ref()),
                (*ok, reason.to_string())
            );
        }
        let mut c = check();
        c.bind = Some("::1".parse().unwrap());
        c.netns = Some("/run/netns/h1".into());
        assert_eq!(
            judge(&c, &reading(vec![], Some(0)), None).1,
            "nothing listens on [::1]:22 in netns /run/netns/h1"
        );
    }

    #[test]
    fn an_absolute_limit_picks_the_listener_over_it() {
        let mut c = check();
        c.max_accept_queue = Limit::Absolute(40);
        let r = reading(
            vec![listener("0.0.0.0:22", 3, 4), listener("[::]:22", 50, 4096)],
            Some(0),
        );
        assert_eq!(
            judge(&c, &r, None).1,
            "accept queue 50/4096 (1%) over 40 on [::]:22, 0 half-open, no rate yet (first sample)"
        );
    }

    #[test]
    fn the_requests_are_what_the_kernel_expects() {
        let u16_at = |m: &[u8], i: usize| u16::from_ne_bytes([m[i], m[i + 1]]);
        let u32_at = |m: &[u8], i: usize| u32::from_ne_bytes([m[i], m[i + 1], m[i + 2], m[i + 3]]);
        // The program, the last 16 bytes of both: nlattr INET_DIAG_REQ_BYTECODE, then S_COND
        // with yes = 12 (its own size: accept), no = 16 (past the end: reject), any address.
        let program = |m: &[u8]| {
            let p = &m[m.len() - 16..];
            assert_eq!((u16_at(p, 0), u16_at(p, 2)), (16, 1));
            assert_eq!((p[4], p[5], u16_at(p, 6)), (7, 12, 16));
            assert_eq!((p[8], p[9]), (0, 0), "AF_UNSPEC, prefix 0");
            u32_at(p, 12)
        };

        let m = dump_request(Dump::Listeners(AF_INET6), 8080, 7);
        assert_eq!(m.len(), 88);
        assert_eq!(u32_at(&m, 0), 88);
        assert_eq!(u16_at(&m, 4), 20, "SOCK_DIAG_BY_FAMILY");
        assert_eq!(u16_at(&m, 6), 0x301, "NLM_F_REQUEST | NLM_F_DUMP");
        assert_eq!(u32_at(&m, 8), 7);
        assert_eq!((m[16], m[17]), (AF_INET6, IPPROTO_TCP));
        assert_eq!(u32_at(&m, 20), 1 << 10, "TCPF_LISTEN");
        assert_eq!(program(&m), 8080);

        let m = dump_request(Dump::HalfOpen, 443, 3);
        assert_eq!(m.len(), 92);
        assert_eq!(u32_at(&m, 0), 92);
        assert_eq!(u16_at(&m, 4), 18, "TCPDIAG_GETSOCK");
        assert_eq!(u32_at(&m, 16 + 4 + 48), 1 << 3, "TCPF_SYN_RECV");
        assert_eq!(program(&m), 443);
    }

    #[test]
    fn snapshots_round_trip() {
        let p = BacklogProbe::new(check());
        assert_eq!(p.snapshot(), None);
        let sample = Sample {
            at: Timestamp::secs(42),
            counters: [Some(1), None, Some(3), Some(4), Some(5)],
        };
        *p.previous.lock().unwrap() = Some(sample);
        let snap = p.snapshot().unwrap();
        assert_eq!(snap["at"], 42_000);
        assert_eq!(snap["ListenOverflows"], 1);
        assert!(snap.get("ListenDrops").is_none());
        let q = BacklogProbe::new(check());
        q.restore(&snap);
        assert_eq!(*q.previous.lock().unwrap(), Some(sample));
        // Garbage is ignored rather than trusted.
        let r = BacklogProbe::new(check());
        r.restore(&serde_json::json!({"ListenOverflows": 3}));
        assert_eq!(*r.previous.lock().unwrap(), None);
    }
}

//! A client of HAProxy's runtime API (the "stats socket" with `level admin`), and parsers of
//! what it answers: `show stat` (CSV) and `show servers state`.
//!
//! One command per connection, as HAProxy's non-interactive mode expects: connect, write the
//! line, read to EOF, all within one timeout, so a wedged HAProxy holds a probe or a remedy for
//! at most that long. The socket is a unix path (`/run/haproxy/admin.sock`) or `host:port`.
//!
//! Columns are found by the names in the header line, not by position: HAProxy adds columns
//! between versions (2.6 has 100+ in `show stat`). The test data under `tests/data/haproxy/` is
//! real output of HAProxy 2.6 captured from the test instance.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers larger than this are cut off: `show stat` of a big config is a few hundred KiB.
const MAX_ANSWER: usize = 16 << 20;

/// Where HAProxy's runtime API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admin {
    Unix(PathBuf),
    /// `host:port`, resolved at each command.
    Tcp(String),
}

impl Admin {
    /// `/path/to/admin.sock` (absolute) or `host:port`.
    pub fn parse(text: &str) -> Result<Admin, String> {
        let t = text.trim();
        if t.starts_with('/') {
            return Ok(Admin::Unix(PathBuf::from(t)));
        }
        let port_ok = t
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if port_ok {
            Ok(Admin::Tcp(t.to_string()))
        } else {
            Err(format!(
                "`{t}` is neither an absolute unix socket path nor host:port (e.g. \"/run/haproxy/admin.sock\", \"127.0.0.1:9999\")"
            ))
        }
    }
}

impl std::fmt::Display for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Admin::Unix(p) => write!(f, "{}", p.display()),
            Admin::Tcp(a) => f.write_str(a),
        }
    }
}

/// Sends one command and returns HAProxy's whole answer.
pub async fn command(admin: &Admin, line: &str, timeout: Duration) -> Result<String, String> {
    let exchange = async {
        let answer = match admin {
            Admin::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| format!("cannot connect to HAProxy at {admin}: {e}"))?;
                exchange(stream, line).await
            }
            Admin::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|e| format!("cannot connect to HAProxy at {admin}: {e}"))?;
                exchange(stream, line).await
            }
        };
        answer.map_err(|e| format!("HAProxy at {admin}, `{line}`: {e}"))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "HAProxy at {admin} did not answer `{line}` within {}",
                crate::probe::human(timeout)
            ))
        })
}

async fn exchange(
    mut stream: impl AsyncReadExt + AsyncWriteExt + Unpin,
    line: &str,
) -> std::io::Result<String> {
    stream.write_all(format!("{line}\n").as_bytes()).await?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER as u64)
        .read_to_end(&mut answer)
        .await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// One server line of `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatRow {
    pub backend: String,
    pub server: String,
    /// `UP`, `DOWN`, `DRAIN`, `MAINT`, `NOLB`, `no check`, `UP 2/3` (going down), `DOWN 1/2`
    /// (coming up), `MAINT (via web/app1)`, ...
    pub status: String,
    /// Seconds since the status last changed.
    pub lastchg: Option<u64>,
    /// Sessions (connections) the server has now.
    pub sessions: u64,
}

impl StatRow {
    /// In rotation: up (even if going down: it still takes traffic) and neither drained nor in
    /// maintenance.
    pub fn ready(&self) -> bool {
        self.status.starts_with("UP") || self.status == "no check"
    }

    /// `web/app1`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.backend, self.server)
    }
}

/// The server lines of `show stat` (no FRONTEND/BACKEND lines).
pub fn parse_stat(text: &str) -> Result<Vec<StatRow>, String> {
    let mut lines = text.lines();
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .ok_or_else(|| format!("not `show stat` output: {}", first_line(text)))?;
    let columns: Vec<&str> = header.split(',').collect();
    let col = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| format!("`show stat` has no `{name}` column"))
    };
    let (px, sv, status, lastchg, scur) = (
        col("pxname")?,
        col("svname")?,
        col("status")?,
        col("lastchg")?,
        col("scur")?,
    );
    let mut rows = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        let get = |i: usize| fields.get(i).copied().unwrap_or("");
        let server = get(sv);
        if matches!(server, "FRONTEND" | "BACKEND") {
            continue;
        }
        if fields.len() <= status.max(px).max(sv) {
            return Err(format!("short `show stat` line: {line}"));
        }
        rows.push(StatRow {
            backend: get(px).to_string(),
            server: server.to_string(),
            status: get(status).to_string(),
            lastchg: get(lastchg).parse().ok(),
            sessions: get(scur).parse().unwrap_or(0),
        });
    }
    Ok(rows)
}

/// One line of `show servers state`: the operational and administrative state as numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub backend: String,
    pub server: String,
    /// 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u32,
    /// Bits: 0x01 forced maintenance, 0x08 forced drain (the ones `set server` sets).
    pub admin_state: u32,
    pub seconds_since_change: u64,
}

impl ServerState {
    pub const FORCED_MAINT: u32 = 0x01;
    pub const FORCED_DRAIN: u32 = 0x08;

    pub fn maint(&self) -> bool {
        self.admin_state & Self::FORCED_MAINT != 0
    }

    pub fn drained(&self) -> bool {
        self.admin_state & Self::FORCED_DRAIN != 0
    }
}

/// `show servers state [BACKEND]`: a version line, a `#` header, then one line per server.
pub fn parse_servers_state(text: &str) -> Result<Vec<ServerState>, String> {
    let header = text
        .lines()
        .find_map(|l| l.strip_prefix("# "))
        .ok_or_else(|| format!("not `show servers state` output: {}", first_line(text)))?;
    let columns: Vec<&str> = header.split_whitespace().collect();
    let col = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| format!("`show servers state` has no `{name}` column"))
    };
    let (be, sv, op, admin, since) = (
        col("be_name")?,
        col("srv_name")?,
        col("srv_op_state")?,
        col("srv_admin_state")?,
        col("srv_time_since_last_change")?,
    );
    let mut out = Vec::new();
    for line in text.lines().skip_while(|l| !l.starts_with('#')).skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let num = |i: usize| -> Result<u32, String> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| format!("bad `show servers state` line: {line}"))
        };
        out.push(ServerState {
            backend: fields.get(be).unwrap_or(&"").to_string(),
            server: fields.get(sv).unwrap_or(&"").to_string(),
            op_state: num(op)?,
            admin_state: num(admin)?,
            seconds_since_change: num(since)? as u64,
        });
    }
    Ok(out)
}

fn first_line(text: &str) -> String {
    crate::probe::snippet(text.lines().next().unwrap_or("").as_bytes(), 120)
}

/// `show stat`, parsed.
pub async fn show_stat(admin: &Admin, timeout: Duration) -> Result<Vec<StatRow>, String> {
    let answer = command(admin, "show stat", timeout).await?;
    parse_stat(&answer).map_err(|e| format!("HAProxy at {admin}: {e}"))
}

/// `show servers state BACKEND`, the one server asked for.
pub async fn server_state(
    admin: &Admin,
    backend: &str,
    server: &str,
    timeout: Duration,
) -> Result<ServerState, String> {
    let answer = command(admin, &format!("show servers state {backend}"), timeout).await?;
    parse_servers_state(&answer)
        .map_err(|e| format!("HAProxy at {admin}: {e}"))?
        .into_iter()
        .find(|s| s.server == server)
        .ok_or_else(|| format!("HAProxy at {admin} has no server {backend}/{server}"))
}

/// What `set server B/S state X` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    Ready,
    Drain,
    Maint,
}

impl AdminState {
    pub fn word(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }

    /// Does the state read back match what was set?
    pub fn holds_in(self, s: &ServerState) -> bool {
        match self {
            AdminState::Ready => !s.maint() && !s.drained(),
            AdminState::Drain => s.drained() && !s.maint(),
            AdminState::Maint => s.maint(),
        }
    }
}

/// Sets a server's administrative state and reads it back: `Ok` only when `show servers state`
/// agrees. HAProxy answers a successful `set server` with an empty line, anything else is its
/// error ("No such server.").
pub async fn set_state(
    admin: &Admin,
    backend: &str,
    server: &str,
    state: AdminState,
    timeout: Duration,
) -> Result<ServerState, String> {
    let line = format!("set server {backend}/{server} state {}", state.word());
    let answer = command(admin, &line, timeout).await?;
    if !answer.trim().is_empty() {
        return Err(format!(
            "HAProxy at {admin} refused `{line}`: {}",
            crate::probe::snippet(answer.trim().as_bytes(), 200)
        ));
    }
    let read_back = server_state(admin, backend, server, timeout).await?;
    if state.holds_in(&read_back) {
        Ok(read_back)
    } else {
        Err(format!(
            "`{line}` was accepted, but `show servers state` reads admin state {:#x} back",
            read_back.admin_state
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = include_str!("../tests/data/haproxy/show-stat.csv");
    const STAT_GOING_DOWN: &str = include_str!("../tests/data/haproxy/show-stat-going-down.csv");
    const SERVERS: &str = include_str!("../tests/data/haproxy/show-servers-state.txt");

    #[test]
    fn show_stat_of_haproxy_2_6() {
        let rows = parse_stat(STAT).unwrap();
        let got: Vec<(&str, &str, Option<u64>, bool)> = rows
            .iter()
            .map(|r| (r.server.as_str(), r.status.as_str(), r.lastchg, r.ready()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("app1", "DRAIN", Some(0), false),
                ("app2", "UP", Some(8), true),
                ("app3", "DOWN", Some(36), false),
                ("app4", "MAINT", Some(37), false),
            ]
        );
        assert!(rows.iter().all(|r| r.backend == "web" && r.sessions == 0));
        // Going down (2 of 3 checks left) still takes traffic: ready.
        let rows = parse_stat(STAT_GOING_DOWN).unwrap();
        let app2 = rows.iter().find(|r| r.server == "app2").unwrap();
        assert_eq!(app2.status, "UP 2/3");
        assert!(app2.ready());
    }

    #[test]
    fn show_servers_state_of_haproxy_2_6() {
        let servers = parse_servers_state(SERVERS).unwrap();
        let got: Vec<(&str, u32, bool, bool)> = servers
            .iter()
            .map(|s| (s.server.as_str(), s.op_state, s.drained(), s.maint()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("app1", 2, true, false),
                ("app2", 2, false, false),
                ("app3", 0, false, false),
                // `disabled` in the config: forced and config maintenance bits (0x05).
                ("app4", 0, false, true),
            ]
        );
        assert!(AdminState::Drain.holds_in(&servers[0]));
        assert!(AdminState::Ready.holds_in(&servers[1]));
        assert!(!AdminState::Ready.holds_in(&servers[3]));
    }

    #[test]
    fn bad_answers_are_errors_not_panics() {
        assert!(parse_stat("").is_err());
        assert!(parse_stat("Unknown command\n").is_err());
        assert!(parse_stat("# pxname,svname\nweb,app1\n").is_err());
        assert!(parse_servers_state("No such backend.\n").is_err());
        assert!(parse_servers_state("1\n# be_name srv_name\nweb app1\n").is_err());
        let short = "# pxname,svname,status,lastchg,scur\nweb\n";
        assert!(parse_stat(short).is_err());
    }

    #[test]
    fn admin_addresses() {
        assert_eq!(
            Admin::parse("/run/haproxy/admin.sock"),
            Ok(Admin::Unix("/run/haproxy/admin.sock".into()))
        );
        assert_eq!(
            Admin::parse("127.0.0.1:9999"),
            Ok(Admin::Tcp("127.0.0.1:9999".into()))
        );
        assert!(Admin::parse("admin.sock").is_err());
        assert!(Admin::parse("127.0.0.1:0").is_err());
    }
}

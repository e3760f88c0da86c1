//! `fake_apache`: a deliberately misbehaving stand-in for an Apache httpd, used
//! by the dev harness and the integration tests to reproduce the failures the
//! watchdog has to detect and repair (error statuses, hangs, full backlogs,
//! refused connections, crashes, memory leaks, dying workers, broken HTTP).
//!
//! # Command line
//!
//! ```text
//! fake_apache --listen 127.0.0.1:PORT --control 127.0.0.1:CPORT
//!             [--pidfile PATH] [--mode MODE] [--workers N] [--backlog N]
//!             [--daemon] [--log PATH]
//! ```
//!
//! * `--listen` is the service port (what probes hit); `--control` is a
//!   separate port that keeps answering whatever the service port is doing,
//!   so faults can be switched even while the service is closed or stuck.
//!   Port 0 picks a free port; the chosen ports are logged at startup.
//! * `--pidfile` is written atomically once both ports are bound, removed on a
//!   clean exit (SIGTERM, SIGINT, `POST /exit`) and left behind by `crash`.
//! * `--mode` is the initial mode (default `healthy`), so an instance can be
//!   broken from birth, like a service that never recovers after a restart.
//!   An unknown mode exits with status 2.
//! * `--workers` (default 8) is the size of the worker pool that answers
//!   service connections; `--backlog` (default 16) is the service listen
//!   backlog.
//! * `--daemon` detaches like `apachectl start`: stdio is pointed at `--log`
//!   (or /dev/null) and the process forks into the background, so the
//!   launcher returns at once and sees EOF on our stdout/stderr. Without it
//!   the server stays in the foreground and logs to stderr (or to `--log`).
//! * Bind/listen failures print a message and exit 1. SIGTERM/SIGINT exit 0
//!   after removing the pidfile; SIGHUP is logged and ignored.
//!
//! # Control API (on `--control`, HTTP/1.1, always `Connection: close`)
//!
//! * `GET /mode` → `200`, body `<mode>\n`.
//! * `GET /mode/<MODE>` or `POST /mode/<MODE>` → `200 ok <mode>\n`, or `400`
//!   listing the valid modes. The reply is sent only after the service port
//!   reflects the new mode (listener closed or re-bound, accept paused).
//! * `GET /stats` → `200` JSON: `pid`, `mode`, `requests` (responses sent on
//!   the service port), `workers_alive`, `workers_total`, `leaked_bytes`.
//! * `POST /exit` → `200`, then a clean exit as on SIGTERM.
//!
//! # Modes (service port)
//!
//! Every answer carries `Content-Length` and `Connection: close`; a request
//! head that is not HTTP (or exceeds 16 KiB) gets `400` in any mode.
//!
//! * `healthy`: `/server-status` and `/server-status?auto` return Apache's
//!   `?auto` text (`Total Accesses`, `BusyWorkers`, `IdleWorkers`,
//!   `Scoreboard`); any other path returns the "It works!" page.
//! * `status:CODE` (200-599): every request gets that status and a short
//!   body such as `504 Gateway Timeout`.
//! * `hang`: read the request and never answer; the connection is held until
//!   the client gives up or the mode changes.
//! * `slow:MS`: answer like `healthy`, MS milliseconds late.
//! * `stop-accepting`: stop calling accept(); the socket stays listening, so
//!   the kernel backlog fills and clients stall in connect.
//! * `refuse`: close the listener (connection refused); any other mode
//!   re-binds the same address.
//! * `crash`: exit at once with status 134 without removing the pidfile.
//! * `leak:MB`: serve like `healthy` while allocating and touching MB MiB per
//!   second that is never freed (`leaked_bytes` in `/stats`).
//! * `workers-dying`: the 2009 outage. Each worker exits for good after its
//!   next answer; once none is left, connections are still accepted but never
//!   answered (a proxy in front reports 504). Going back to `healthy` does not
//!   revive workers: only a restart does.
//! * `garbage`: send ~200 bytes that are not HTTP, then close.
//! * `huge-body`: `200` with `Content-Length: 1073741824`, streamed from a
//!   small reused buffer until done or the client goes away.
//! * `trickle`: `200` with `Content-Length: 100000`, one body byte a second.
//!
//! Switching back to `healthy` from any mode restores normal service (except
//! for dead workers, see above).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Mutex, Notify, mpsc, watch};
use tokio::time::{sleep, timeout};

const MAX_HEAD: usize = 16 * 1024;
/// Like Apache's `Timeout`: a client that connects and never sends a request
/// must not pin a worker forever.
const SERVICE_READ_TIMEOUT: Duration = Duration::from_secs(60);
const CONTROL_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted connections waiting for a worker. Bounded so that, with every
/// worker busy or dead, the accept loop stalls and the kernel backlog fills,
/// as with a real prefork/worker MPM.
const QUEUE_CAPACITY: usize = 64;
const HUGE_BODY_LEN: u64 = 1 << 30;
const TRICKLE_BODY_LEN: u64 = 100_000;
const MIB: usize = 1024 * 1024;
const PAGE: usize = 4096;

const SLOT_IDLE: u8 = 0;
const SLOT_READING: u8 = 1;
const SLOT_WRITING: u8 = 2;
const SLOT_DEAD: u8 = 3;

const VALID_MODES: &str = "healthy, status:CODE (200-599), hang, slow:MS, stop-accepting, \
     refuse, crash, leak:MB, workers-dying, garbage, huge-body, trickle";

#[derive(Parser, Debug)]
#[command(
    name = "fake_apache",
    about = "A misbehaving fake Apache for exercising the watchdog"
)]
struct Cli {
    /// Service address (what health probes hit).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Control API address; keeps working whatever the service port does.
    #[arg(long, value_name = "ADDR")]
    control: SocketAddr,
    /// Pidfile, written atomically once both ports are bound.
    #[arg(long, value_name = "PATH")]
    pidfile: Option<PathBuf>,
    /// Initial mode (same syntax as the control API).
    #[arg(long, default_value = "healthy", value_parser = parse_mode_arg)]
    mode: Mode,
    /// Number of service workers.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=4096))]
    workers: u16,
    /// Listen backlog of the service socket.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    backlog: u32,
    /// Detach into the background like `apachectl start`.
    #[arg(long)]
    daemon: bool,
    /// Append stdout/stderr to this file instead of the terminal (or /dev/null
    /// when daemonized).
    #[arg(long, value_name = "PATH")]
    log: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode {
    Healthy,
    Status(u16),
    Hang,
    Slow(u64),
    StopAccepting,
    Refuse,
    Crash,
    Leak(u64),
    WorkersDying,
    Garbage,
    HugeBody,
    Trickle,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || format!("unknown mode '{s}'; valid modes: {VALID_MODES}");
        let number = |arg: &str| arg.parse::<u64>().map_err(|_| unknown());
        Ok(match s {
            "healthy" => Mode::Healthy,
            "hang" => Mode::Hang,
            "stop-accepting" => Mode::StopAccepting,
            "refuse" => Mode::Refuse,
            "crash" => Mode::Crash,
            "workers-dying" => Mode::WorkersDying,
            "garbage" => Mode::Garbage,
            "huge-body" => Mode::HugeBody,
            "trickle" => Mode::Trickle,
            _ => {
                if let Some(code) = s.strip_prefix("status:") {
                    match number(code)? {
                        c @ 200..=599 => Mode::Status(c as u16),
                        _ => return Err(unknown()),
                    }
                } else if let Some(ms) = s.strip_prefix("slow:") {
                    Mode::Slow(number(ms)?)
                } else if let Some(mb) = s.strip_prefix("leak:") {
                    Mode::Leak(number(mb)?)
                } else {
                    return Err(unknown());
                }
            }
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Healthy => f.write_str("healthy"),
            Mode::Status(code) => write!(f, "status:{code}"),
            Mode::Hang => f.write_str("hang"),
            Mode::Slow(ms) => write!(f, "slow:{ms}"),
            Mode::StopAccepting => f.write_str("stop-accepting"),
            Mode::Refuse => f.write_str("refuse"),
            Mode::Crash => f.write_str("crash"),
            Mode::Leak(mb) => write!(f, "leak:{mb}"),
            Mode::WorkersDying => f.write_str("workers-dying"),
            Mode::Garbage => f.write_str("garbage"),
            Mode::HugeBody => f.write_str("huge-body"),
            Mode::Trickle => f.write_str("trickle"),
        }
    }
}

fn parse_mode_arg(s: &str) -> Result<Mode, String> {
    s.parse()
}

macro_rules! log {
    ($($arg:tt)*) => {
        log_line(&format!($($arg)*))
    };
}

fn log_line(msg: &str) {
    // One write per line keeps lines whole in an O_APPEND log shared with
    // other processes; errors are dropped because a vanished log reader must
    // not take the server down.
    let line = format!(
        "{} fake_apache[{}]: {msg}\n",
        timestamp(),
        std::process::id()
    );
    let _ = io::stderr().write_all(line.as_bytes());
}

fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        now.subsec_millis()
    )
}

/// Howard Hinnant's days-to-civil algorithm; avoids a date crate for a log
/// prefix.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

type ModeRx = watch::Receiver<(u64, Mode)>;

struct Shared {
    /// (generation, mode): the generation lets a control request wait until
    /// the listener supervisor has acted on exactly its change.
    mode: watch::Sender<(u64, Mode)>,
    applied: watch::Sender<u64>,
    requests: AtomicU64,
    leaked_bytes: AtomicU64,
    slots: Vec<AtomicU8>,
    exit: Notify,
}

impl Shared {
    fn current_mode(&self) -> Mode {
        self.mode.borrow().1.clone()
    }

    fn set_mode(&self, mode: Mode) -> u64 {
        let mut generation = 0;
        let mut old = Mode::Healthy;
        self.mode.send_modify(|(g, m)| {
            *g += 1;
            generation = *g;
            old = std::mem::replace(m, mode.clone());
        });
        log!("mode -> {mode} (was {old})");
        generation
    }

    fn set_slot(&self, slot: usize, state: u8) {
        self.slots[slot].store(state, Ordering::Relaxed);
    }

    fn count_slots(&self, pred: impl Fn(u8) -> bool) -> usize {
        self.slots
            .iter()
            .filter(|s| pred(s.load(Ordering::Relaxed)))
            .count()
    }

    fn workers_alive(&self) -> usize {
        self.count_slots(|s| s != SLOT_DEAD)
    }

    fn server_status(&self) -> String {
        let busy = self.count_slots(|s| s == SLOT_READING || s == SLOT_WRITING);
        let idle = self.count_slots(|s| s == SLOT_IDLE);
        let scoreboard: String = self
            .slots
            .iter()
            .map(|s| match s.load(Ordering::Relaxed) {
                SLOT_IDLE => '_',
                SLOT_READING => 'R',
                SLOT_WRITING => 'W',
                _ => '.',
            })
            .collect();
        format!(
            "Total Accesses: {}\nBusyWorkers: {busy}\nIdleWorkers: {idle}\nScoreboard: {scoreboard}\n",
            self.requests.load(Ordering::Relaxed)
        )
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();

    // Bind before detaching so that a port clash reaches whoever launched us
    // as exit status 1 instead of vanishing into the daemon's log.
    let service_sock = match bind_socket(cli.listen) {
        Ok(s) => s,
        Err(e) => {
            log!("cannot bind service address {}: {e}", cli.listen);
            return ExitCode::from(1);
        }
    };
    let control_sock = match bind_socket(cli.control) {
        Ok(s) => s,
        Err(e) => {
            log!("cannot bind control address {}: {e}", cli.control);
            return ExitCode::from(1);
        }
    };

    let redirected = match (&cli.log, cli.daemon) {
        (None, false) => Ok(()),
        (log, detach) => redirect_stdio(log.as_deref(), detach),
    };
    if let Err(e) = redirected {
        let target = cli.log.as_deref().unwrap_or(Path::new("/dev/null"));
        log!("cannot redirect output to {}: {e}", target.display());
        return ExitCode::from(1);
    }
    if cli.daemon {
        // Must happen before the runtime exists: fork() only keeps the
        // calling thread.
        if let Err(e) = nix::unistd::daemon(true, true) {
            log!("daemon() failed: {e}");
            return ExitCode::from(1);
        }
    }

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log!("cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(cli, service_sock, control_sock))
}

fn redirect_stdio(log: Option<&Path>, detach: bool) -> io::Result<()> {
    let out = match log {
        Some(path) => OpenOptions::new().create(true).append(true).open(path)?,
        None => OpenOptions::new().write(true).open("/dev/null")?,
    };
    if detach {
        let null = File::open("/dev/null")?;
        nix::unistd::dup2_stdin(&null).map_err(io::Error::from)?;
    }
    nix::unistd::dup2_stdout(&out).map_err(io::Error::from)?;
    nix::unistd::dup2_stderr(&out).map_err(io::Error::from)?;
    Ok(())
}

fn bind_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Lets `refuse` -> `healthy` and quick restarts re-bind despite
    // connections lingering in TIME_WAIT.
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    Ok(sock)
}

fn listen_on(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    bind_socket(addr)?.listen(backlog)
}

async fn run(cli: Cli, service_sock: TcpSocket, control_sock: TcpSocket) -> ExitCode {
    // Installed before the pidfile appears so that a harness which sends
    // SIGTERM as soon as it sees the pidfile gets a clean exit.
    let signals = (|| {
        Ok::<_, io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
        ))
    })();
    let (mut sigterm, mut sigint, mut sighup) = match signals {
        Ok(s) => s,
        Err(e) => {
            log!("cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };

    let service_listener = match service_sock.listen(cli.backlog) {
        Ok(l) => l,
        Err(e) => {
            log!("cannot listen on service address {}: {e}", cli.listen);
            return ExitCode::from(1);
        }
    };
    let control_listener = match control_sock.listen(128) {
        Ok(l) => l,
        Err(e) => {
            log!("cannot listen on control address {}: {e}", cli.control);
            return ExitCode::from(1);
        }
    };
    // Port 0 resolves here; re-binding after `refuse` must reuse the same port.
    let service_addr = service_listener.local_addr().unwrap_or(cli.listen);
    let control_addr = control_listener.local_addr().unwrap_or(cli.control);

    let pid = std::process::id();
    let pidfile_written = match &cli.pidfile {
        Some(path) => write_pidfile(path, pid).map_err(|e| (path, e)),
        None => Ok(()),
    };
    if let Err((path, e)) = pidfile_written {
        log!("cannot write pidfile {}: {e}", path.display());
        return ExitCode::from(1);
    }
    log!(
        "listening: service {service_addr}, control {control_addr}, workers {}, backlog {}, mode {}",
        cli.workers,
        cli.backlog,
        cli.mode
    );
    if cli.mode == Mode::Crash {
        crash();
    }

    let shared = Arc::new(Shared {
        mode: watch::Sender::new((0, cli.mode.clone())),
        applied: watch::Sender::new(0),
        requests: AtomicU64::new(0),
        leaked_bytes: AtomicU64::new(0),
        slots: (0..cli.workers).map(|_| AtomicU8::new(SLOT_IDLE)).collect(),
        exit: Notify::new(),
    });

    let (queue_tx, queue_rx) = mpsc::channel(QUEUE_CAPACITY);
    let queue_rx = Arc::new(Mutex::new(queue_rx));
    for slot in 0..usize::from(cli.workers) {
        tokio::spawn(worker(shared.clone(), slot, queue_rx.clone()));
    }
    tokio::spawn(service_supervisor(
        shared.clone(),
        Some(service_listener),
        service_addr,
        cli.backlog,
        queue_tx,
    ));
    tokio::spawn(leaker(shared.clone()));
    tokio::spawn(control_server(shared.clone(), control_listener));

    loop {
        tokio::select! {
            _ = sigterm.recv() => { log!("SIGTERM received, exiting"); break; }
            _ = sigint.recv() => { log!("SIGINT received, exiting"); break; }
            _ = shared.exit.notified() => { log!("exit requested via control API"); break; }
            _ = sighup.recv() => log!("SIGHUP received, ignoring (apache would reload)"),
        }
    }
    if let Some(path) = &cli.pidfile {
        remove_pidfile(path, pid);
    }
    ExitCode::SUCCESS
}

fn crash() -> ! {
    log!("crashing: exit 134, pidfile left behind");
    // exit(134) rather than abort(): same status a shell reports for SIGABRT,
    // without littering core files around the test tree.
    std::process::exit(134);
}

fn write_pidfile(path: &Path, pid: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pidfile has no file name"))?;
    // Same directory as the target so the rename is atomic: readers never see
    // an empty or half-written pidfile.
    let tmp = dir.join(format!(".{}.{pid}.tmp", name.to_string_lossy()));
    let written = (|| {
        let mut f = File::create(&tmp)?;
        writeln!(f, "{pid}")?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn remove_pidfile(path: &Path, pid: u32) {
    // A newer instance may already own the pidfile; deleting it would hide
    // that instance from the watchdog.
    match fs::read_to_string(path) {
        Ok(content) if content.trim() == pid.to_string() => {
            if let Err(e) = fs::remove_file(path) {
                log!("cannot remove pidfile {}: {e}", path.display());
            }
        }
        Ok(_) => log!(
            "pidfile {} belongs to another process, left alone",
            path.display()
        ),
        Err(e) => log!("cannot read pidfile {}: {e}", path.display()),
    }
}

/// Owns the service listener so that `refuse` can really close it and
/// `stop-accepting` can really stop calling accept().
async fn service_supervisor(
    shared: Arc<Shared>,
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    backlog: u32,
    queue: mpsc::Sender<TcpStream>,
) {
    let mut mode_rx = shared.mode.subscribe();
    let mut accepting = true;
    loop {
        let (generation, mode) = mode_rx.borrow_and_update().clone();

        if mode == Mode::Refuse {
            if listener.take().is_some() {
                log!("service listener closed");
            }
        } else if listener.is_none() {
            match listen_on(addr, backlog) {
                Ok(l) => {
                    log!("service listener re-bound on {addr}");
                    listener = Some(l);
                }
                Err(e) => {
                    log!("cannot re-bind {addr}: {e}; retrying");
                    tokio::select! {
                        _ = sleep(Duration::from_secs(1)) => {}
                        r = mode_rx.changed() => if r.is_err() { return },
                    }
                    continue;
                }
            }
        }
        let should_accept = !matches!(mode, Mode::Refuse | Mode::StopAccepting);
        if should_accept != accepting && listener.is_some() {
            log!(
                "service accept loop {}",
                if should_accept { "resumed" } else { "paused" }
            );
        }
        accepting = should_accept;
        shared.applied.send_if_modified(|g| {
            let changed = *g != generation;
            *g = generation;
            changed
        });

        let Some(l) = listener.as_ref().filter(|_| should_accept) else {
            if mode_rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        // Reserve a queue slot before accepting so that a full queue leaves
        // connections in the kernel backlog rather than in our memory.
        let permit = tokio::select! {
            r = mode_rx.changed() => { if r.is_err() { return } continue; }
            p = queue.reserve() => match p { Ok(p) => p, Err(_) => return },
        };
        tokio::select! {
            r = mode_rx.changed() => if r.is_err() { return },
            res = l.accept() => match res {
                Ok((stream, _)) => permit.send(stream),
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    log!("accept failed: {e}");
                    sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn worker(shared: Arc<Shared>, slot: usize, queue: Arc<Mutex<mpsc::Receiver<TcpStream>>>) {
    let mut mode_rx = shared.mode.subscribe();
    loop {
        let stream = queue.lock().await.recv().await;
        let Some(stream) = stream else { return };
        shared.set_slot(slot, SLOT_READING);
        let answered_in = serve(&shared, slot, stream, &mut mode_rx).await;
        if answered_in == Some(Mode::WorkersDying) {
            shared.set_slot(slot, SLOT_DEAD);
            let alive = shared.workers_alive();
            log!("worker {slot} exited (workers-dying), {alive} alive");
            if alive == 0 {
                log!("no workers left: connections will be accepted but never answered");
            }
            return;
        }
        shared.set_slot(slot, SLOT_IDLE);
    }
}

/// Handles one service connection; returns the mode that was used to answer,
/// or `None` if nothing was answered (hang, client gone, timeout).
async fn serve(
    shared: &Shared,
    slot: usize,
    mut stream: TcpStream,
    mode_rx: &mut ModeRx,
) -> Option<Mode> {
    let head = read_head(&mut stream, SERVICE_READ_TIMEOUT).await;
    shared.set_slot(slot, SLOT_WRITING);
    let mode = shared.current_mode();
    let request = match head {
        Ok(bytes) => parse_request(&bytes),
        Err(HeadError::Invalid) => None,
        Err(HeadError::Gone) => return None,
    };
    let Some(request) = request else {
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let resp = response(400, "text/plain", b"400 Bad Request\n", false);
        let _ = stream.write_all(&resp).await;
        tokio::spawn(linger_close(stream));
        return Some(mode);
    };
    let head_only = request.method == "HEAD";

    match &mode {
        Mode::Hang => {
            hang(&mut stream, mode_rx).await;
            return None;
        }
        Mode::Crash => crash(),
        _ => {}
    }
    shared.requests.fetch_add(1, Ordering::Relaxed);
    match &mode {
        Mode::Status(code) => {
            let body = format!("{code} {}\n", reason(*code));
            let resp = response(*code, "text/plain", body.as_bytes(), head_only);
            let _ = stream.write_all(&resp).await;
        }
        Mode::Garbage => {
            let _ = stream.write_all(&garbage()).await;
        }
        Mode::HugeBody => {
            stream_body(&mut stream, HUGE_BODY_LEN, head_only, None).await;
        }
        Mode::Trickle => {
            let pace = Some(Duration::from_secs(1));
            stream_body(&mut stream, TRICKLE_BODY_LEN, head_only, pace).await;
        }
        Mode::Slow(ms) => {
            sleep(Duration::from_millis(*ms)).await;
            let _ = stream.write_all(&healthy(shared, &request)).await;
        }
        _ => {
            let _ = stream.write_all(&healthy(shared, &request)).await;
        }
    }
    tokio::spawn(linger_close(stream));
    Some(mode)
}

async fn hang(stream: &mut TcpStream, mode_rx: &mut ModeRx) {
    // Keep reading so a client that gives up frees the worker; never write.
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            _ = mode_rx.wait_for(|(_, m)| *m != Mode::Hang) => return,
        }
    }
}

async fn stream_body(stream: &mut TcpStream, len: u64, head_only: bool, pace: Option<Duration>) {
    let head = format!(
        "HTTP/1.1 200 OK\r\nServer: {SERVER}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(head.as_bytes()).await.is_err() || head_only {
        return;
    }
    let chunk = vec![b'x'; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = match pace {
            Some(delay) => {
                // Watch for the client hanging up between bytes: a write to a
                // closed peer only fails on the second attempt, which at this
                // pace would keep a worker busy for seconds.
                let mut scratch = [0u8; 1024];
                tokio::select! {
                    _ = sleep(delay) => {}
                    r = stream.read(&mut scratch) => if matches!(r, Ok(0) | Err(_)) { return },
                }
                1
            }
            None => left.min(chunk.len() as u64) as usize,
        };
        // A write error means the client went away: stop immediately.
        if stream.write_all(&chunk[..n]).await.is_err() {
            return;
        }
        left -= n as u64;
    }
}

fn garbage() -> Vec<u8> {
    let mut out =
        b"\x00\xff\xfe\x01NOT HTTP AT ALL \x1b[31m<<fake_apache garbage>>\x1b[0m ".to_vec();
    let mut x: u8 = 0x5a;
    while out.len() < 200 {
        x = x.wrapping_mul(37).wrapping_add(11);
        out.push(x);
    }
    out
}

const SERVER: &str = "Apache/2.4.58 (Unix) fake_apache";

fn healthy(shared: &Shared, request: &Request) -> Vec<u8> {
    let head_only = request.method == "HEAD";
    let path = request.target.split('?').next().unwrap_or("");
    if path == "/server-status" {
        let body = shared.server_status();
        response(
            200,
            "text/plain; charset=ISO-8859-1",
            body.as_bytes(),
            head_only,
        )
    } else {
        let body = b"<html><body><h1>It works!</h1></body></html>\n";
        response(200, "text/html", body, head_only)
    }
}

fn response(code: u16, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {}\r\nServer: {SERVER}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        reason(code),
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Closes after the response without resetting it away: closing a socket
/// with unread request bytes sends RST, which can destroy the response before
/// the client reads it.
async fn linger_close(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut buf = [0u8; 4096];
    let _ = timeout(Duration::from_secs(2), async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

enum HeadError {
    /// Not HTTP, or too long: answer 400.
    Invalid,
    /// Client left or never finished: just close.
    Gone,
}

struct Request {
    method: String,
    target: String,
}

async fn read_head(stream: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = head_end(&buf) {
                if end > MAX_HEAD {
                    return Err(HeadError::Invalid);
                }
                buf.truncate(end);
                return Ok(buf);
            }
            // Judge garbage as soon as it is visible instead of waiting for a
            // blank line that may never come.
            if buf.len() > MAX_HEAD || looks_invalid(&buf) {
                return Err(HeadError::Invalid);
            }
            match stream.read(&mut chunk).await {
                Ok(0) if buf.is_empty() => return Err(HeadError::Gone),
                Ok(0) => return Err(HeadError::Invalid),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => return Err(HeadError::Gone),
            }
        }
    };
    timeout(limit, read).await.unwrap_or(Err(HeadError::Gone))
}

fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn looks_invalid(partial: &[u8]) -> bool {
    if partial
        .iter()
        .any(|&b| (b < 0x20 && !matches!(b, b'\r' | b'\n' | b'\t')) || b == 0x7f)
    {
        return true;
    }
    match partial.iter().position(|&b| b == b'\n') {
        Some(nl) => parse_request_line(&partial[..nl]).is_none(),
        None => false,
    }
}

fn parse_request_line(line: &[u8]) -> Option<Request> {
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let method_ok = !method.is_empty()
        && method
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
    let target_ok = target.starts_with('/') || target == "*" || target.starts_with("http");
    let version_ok = version.starts_with("HTTP/1.") && version.len() == 8;
    (parts.next().is_none() && method_ok && target_ok && version_ok).then(|| Request {
        method: method.to_string(),
        target: target.to_string(),
    })
}

fn parse_request(head: &[u8]) -> Option<Request> {
    let mut lines = head.split(|&b| b == b'\n');
    let request = parse_request_line(lines.next()?)?;
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line[0] == b' ' || line[0] == b'\t' {
            continue;
        }
        let colon = line.iter().position(|&b| b == b':')?;
        if colon == 0 || line[..colon].iter().any(|b| b.is_ascii_whitespace()) {
            return None;
        }
    }
    Some(request)
}

/// Allocates on a timer so memory grows steadily like a real leak, and keeps
/// every chunk forever: switching back to `healthy` does not give it back.
async fn leaker(shared: Arc<Shared>) {
    let mut mode_rx = shared.mode.subscribe();
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let Mode::Leak(mb) = mode_rx.borrow_and_update().1 else {
            if mode_rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        let len = usize::try_from(mb)
            .unwrap_or(usize::MAX)
            .saturating_mul(MIB);
        if len > 0 {
            let mut chunk = vec![0u8; len];
            // A zeroed allocation is only address space; writing one byte per
            // page makes it resident so RSS really grows.
            for b in chunk.iter_mut().step_by(PAGE) {
                *b = 0xa5;
            }
            hoard.push(std::hint::black_box(chunk));
            shared.leaked_bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
        tokio::select! {
            _ = sleep(Duration::from_secs(1)) => {}
            r = mode_rx.changed() => if r.is_err() { return },
        }
    }
}

async fn control_server(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(control_conn(shared.clone(), stream));
            }
            Err(e) => {
                log!("control accept failed: {e}");
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

enum After {
    Nothing,
    Exit,
    Crash,
}

async fn control_conn(shared: Arc<Shared>, mut stream: TcpStream) {
    let request = match read_head(&mut stream, CONTROL_READ_TIMEOUT).await {
        Ok(head) => parse_request(&head),
        Err(HeadError::Invalid) => None,
        Err(HeadError::Gone) => return,
    };
    let (code, body, after) = match request {
        Some(req) => control_route(&shared, &req).await,
        None => (400, "400 Bad Request\n".to_string(), After::Nothing),
    };
    let resp = response(code, "text/plain", body.as_bytes(), false);
    let _ = stream.write_all(&resp).await;
    // Linger inline so the reply is delivered before we exit or crash.
    linger_close(stream).await;
    match after {
        After::Nothing => {}
        After::Exit => shared.exit.notify_one(),
        After::Crash => crash(),
    }
}

async fn control_route(shared: &Shared, req: &Request) -> (u16, String, After) {
    let path = req.target.split('?').next().unwrap_or("");
    let method = req.method.as_str();
    let not_allowed = |allowed: &str| {
        (
            405,
            format!("405 Method Not Allowed: use {allowed}\n"),
            After::Nothing,
        )
    };
    if path == "/mode" {
        return match method {
            "GET" | "HEAD" => (200, format!("{}\n", shared.current_mode()), After::Nothing),
            _ => not_allowed("GET"),
        };
    }
    if let Some(raw) = path.strip_prefix("/mode/") {
        if method != "GET" && method != "POST" {
            return not_allowed("GET or POST");
        }
        let mode = match percent_decode(raw).parse::<Mode>() {
            Ok(m) => m,
            Err(msg) => return (400, format!("{msg}\n"), After::Nothing),
        };
        let generation = shared.set_mode(mode.clone());
        if mode == Mode::Crash {
            return (200, "ok crash\n".to_string(), After::Crash);
        }
        // Answer only once the listener reflects the mode, so a harness can
        // probe right after the reply without racing the switch.
        let mut applied = shared.applied.subscribe();
        let _ = timeout(
            Duration::from_secs(2),
            applied.wait_for(|g| *g >= generation),
        )
        .await;
        return (200, format!("ok {mode}\n"), After::Nothing);
    }
    match path {
        "/stats" if method == "GET" || method == "HEAD" => {
            let stats = serde_json::json!({
                "pid": std::process::id(),
                "mode": shared.current_mode().to_string(),
                "requests": shared.requests.load(Ordering::Relaxed),
                "workers_alive": shared.workers_alive(),
                "workers_total": shared.slots.len(),
                "leaked_bytes": shared.leaked_bytes.load(Ordering::Relaxed),
            });
            (200, format!("{stats}\n"), After::Nothing)
        }
        "/stats" => not_allowed("GET"),
        "/exit" if method == "POST" => (200, "ok exiting\n".to_string(), After::Exit),
        "/exit" => not_allowed("POST"),
        _ => (
            404,
            "404 Not Found: try GET /mode, GET|POST /mode/<MODE>, GET /stats, POST /exit\n"
                .to_string(),
            After::Nothing,
        ),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

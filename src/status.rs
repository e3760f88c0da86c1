//! The daemon's local API: status as JSON, Prometheus metrics, and control (pause, resume,
//! reload), served on a unix socket (mode 0600: only the watchdog's user and root) and, if
//! configured, on a TCP address with an optional bearer token.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /status` | [`StatusReport`] as JSON |
//! | `GET /metrics` | Prometheus text exposition |
//! | `POST /pause/{probe}?for=30m` | pause a probe (no `for`: until resumed) |
//! | `POST /resume/{probe}` | resume it |
//! | `POST /reload` | re-read the config, as SIGHUP does |
//! | `GET /health` | 503 while a `drain_flag` action's file exists (drained), else 200; no token |
//!
//! The server never touches the engine: it asks the engine task through a [`Control`] channel
//! and waits (with a timeout) for the answer, so the engine stays single-owner.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::config::secret::Secret;

/// One probe in the status report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbeStatus {
    pub name: String,
    pub kind: String,
    /// `starting`, `up`, `down`.
    pub state: String,
    /// Seconds the probe has been in `state`.
    pub state_for_seconds: u64,
    /// `None`: not paused; `Some(None)`: until resumed; `Some(Some(s))`: `s` seconds left.
    pub paused: Option<Option<u64>>,
    pub last_ok: Option<bool>,
    pub last_reason: Option<String>,
    pub last_latency_ms: Option<u64>,
    pub last_checked_seconds_ago: Option<u64>,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    pub open_incident: Option<u64>,
    pub last_action: Option<String>,
}

/// `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    pub version: String,
    pub host: String,
    pub pid: u32,
    pub dry_run: bool,
    pub pending_pages: usize,
    pub probes: Vec<ProbeStatus>,
}

/// What the API asks of the engine task.
#[derive(Debug)]
pub enum Control {
    Status(oneshot::Sender<StatusReport>),
    Pause {
        probe: String,
        duration: Option<Duration>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Resume {
        probe: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Reload(oneshot::Sender<Result<String, String>>),
    /// The files of the configured `drain_flag` actions, for `/health`.
    DrainFlags(oneshot::Sender<Vec<PathBuf>>),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub probe: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub kind: String,
    pub outcome: String,
}

/// The daemon's metrics; the engine task updates them, `/metrics` encodes them.
pub struct Metrics {
    registry: Registry,
    pub probe_up: Family<ProbeLabels, Gauge>,
    pub probe_duration: Family<ProbeLabels, Histogram>,
    pub probe_failures: Family<ProbeLabels, Counter>,
    pub actions: Family<ActionLabels, Counter>,
    pub pages_pending: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("watchdog");
        let probe_up = Family::<ProbeLabels, Gauge>::default();
        // 1 ms .. ~16 s: a loopback check to a probe at its timeout. (Powers of 4 by shifts,
        // not `exponential_buckets`: its `powf` was the binary's only use of libm, whose
        // mapping alone cost ~450 KiB of RSS; see build.rs and issue #7.)
        let probe_duration = Family::<ProbeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new((0..8).map(|i| 0.001 * f64::from(1u32 << (2 * i))))
        });
        let probe_failures = Family::<ProbeLabels, Counter>::default();
        let actions = Family::<ActionLabels, Counter>::default();
        let pages_pending = Gauge::default();
        registry.register(
            "probe_up",
            "1 when the probe is up, 0 when down or starting",
            probe_up.clone(),
        );
        registry.register(
            "probe_duration_seconds",
            "How long checks took",
            probe_duration.clone(),
        );
        registry.register("probe_failures", "Failed checks", probe_failures.clone());
        registry.register(
            "actions",
            "Remedies and pages, by kind and outcome",
            actions.clone(),
        );
        registry.register(
            "pages_pending",
            "Pages in the outbox, not yet acknowledged",
            pages_pending.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_string())]),
        );
        Metrics {
            registry,
            probe_up,
            probe_duration,
            probe_failures,
            actions,
            pages_pending,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn action(&self, kind: &str, outcome: &str) {
        self.actions
            .get_or_create(&ActionLabels {
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .inc();
    }
}

#[derive(Clone)]
struct Api {
    control: mpsc::Sender<Control>,
    metrics: Arc<Metrics>,
    token: Option<Secret>,
}

/// How long the API waits for the engine task before answering 503.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(5);

async fn ask<T>(
    api: &Api,
    make: impl FnOnce(oneshot::Sender<T>) -> Control,
) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    let unavailable = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine did not answer\n",
        )
            .into_response()
    };
    api.control
        .send(make(tx))
        .await
        .map_err(|_| unavailable())?;
    tokio::time::timeout(ENGINE_TIMEOUT, rx)
        .await
        .map_err(|_| unavailable())?
        .map_err(|_| unavailable())
}

/// `None` when the request may go on; else the 401 to answer.
fn unauthorized(api: &Api, headers: &HeaderMap) -> Option<Response> {
    let token = api.token.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(token.expose()) {
        None
    } else {
        Some((StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response())
    }
}

fn answer(result: Result<String, String>) -> Response {
    match result {
        Ok(s) => (StatusCode::OK, format!("{s}\n")).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn status(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&api, &headers) {
        return r;
    }
    match ask(&api, Control::Status).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(r) => r,
    }
}

async fn metrics(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&api, &headers) {
        return r;
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        api.metrics.encode(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct PauseQuery {
    #[serde(rename = "for")]
    duration: Option<String>,
}

async fn pause(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(probe): UrlPath<String>,
    Query(q): Query<PauseQuery>,
) -> Response {
    if let Some(r) = unauthorized(&api, &headers) {
        return r;
    }
    let duration = match q.duration.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => return (StatusCode::BAD_REQUEST, format!("`for`: {e}\n")).into_response(),
    };
    match ask(&api, |reply| Control::Pause {
        probe,
        duration,
        reply,
    })
    .await
    {
        Ok(r) => answer(r),
        Err(r) => r,
    }
}

async fn resume(
    State(api): State<Api>,
    headers: HeaderMap,
    UrlPath(probe): UrlPath<String>,
) -> Response {
    if let Some(r) = unauthorized(&api, &headers) {
        return r;
    }
    match ask(&api, |reply| Control::Resume { probe, reply }).await {
        Ok(r) => answer(r),
        Err(r) => r,
    }
}

async fn reload(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&api, &headers) {
        return r;
    }
    match ask(&api, Control::Reload).await {
        Ok(r) => answer(r),
        Err(r) => r,
    }
}

/// `GET /health`, for load balancers that poll a URL (ALB, Envoy, nginx): 503 while drained.
/// No token: load balancers send none, and it tells nothing but "drained or not".
async fn health(State(api): State<Api>) -> Response {
    let files = match ask(&api, Control::DrainFlags).await {
        Ok(files) => files,
        Err(r) => return r,
    };
    for file in files {
        if let Ok(text) = tokio::fs::read_to_string(&file).await {
            let line = text.lines().next().unwrap_or("").trim();
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("drained: {} exists ({line})\n", file.display()),
            )
                .into_response();
        }
    }
    (StatusCode::OK, "ok\n").into_response()
}

fn router(api: Api) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/pause/{probe}", post(pause))
        .route("/resume/{probe}", post(resume))
        .route("/reload", post(reload))
        .with_state(api)
}

/// Binds the unix socket at `path` (replacing a stale one), mode 0600, and serves until
/// `stop` fires. Errors binding are returned so the daemon can log them; serving errors end
/// the task with a log line, never the daemon.
pub async fn serve_unix(
    path: PathBuf,
    control: mpsc::Sender<Control>,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    // Only one daemon owns the state dir (the lock), so a socket file here is a stale one.
    let _ = std::fs::remove_file(&path);
    // Bind with a umask-proof mode: create, then chmod before anyone is told it exists.
    let listener = tokio::net::UnixListener::bind(&path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    let app = router(Api {
        control,
        metrics,
        token: None,
    });
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        if let Err(e) = served.await {
            tracing::error!(error = %e, "status API stopped");
        }
    }))
}

/// The same API on TCP (e.g. for Prometheus), with an optional bearer token.
pub async fn serve_tcp(
    address: std::net::SocketAddr,
    token: Option<Secret>,
    control: mpsc::Sender<Control>,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let app = router(Api {
        control,
        metrics,
        token,
    });
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        if let Err(e) = served.await {
            tracing::error!(error = %e, "status API stopped");
        }
    }))
}

/// The client side, for `watchdog status|pause|resume|reload`: one request over the socket.
pub async fn request(
    socket: &Path,
    method: reqwest::Method,
    path: &str,
) -> Result<(u16, String), String> {
    let client = crate::probe::client_builder()
        .unix_socket(socket)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let response = client
        .request(method, format!("http://watchdog{path}"))
        .send()
        .await
        .map_err(|e| {
            format!(
                "cannot reach the daemon at {}: {} (is `watchdog run` running?)",
                socket.display(),
                crate::probe::root_cause(&e)
            )
        })?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    Ok((status, body))
}

/// The table `watchdog status` prints, like `monit summary`.
pub fn table(report: &StatusReport) -> String {
    let w = report
        .probes
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!(
        "uptime-watchdog {} on {} (pid {}){}\n",
        report.version,
        report.host,
        report.pid,
        if report.dry_run { ", DRY RUN" } else { "" }
    );
    out.push_str(&format!(
        "{:<w$}  {:<11} {:<8} {:>8}  {}\n",
        "PROBE", "KIND", "STATE", "FOR", "LAST RESULT"
    ));
    for p in &report.probes {
        let state = match p.paused {
            Some(None) => "paused".to_string(),
            Some(Some(left)) => format!(
                "paused {}",
                humantime::format_duration(Duration::from_secs(left))
            ),
            None => p.state.clone(),
        };
        let state_for =
            humantime::format_duration(Duration::from_secs(p.state_for_seconds)).to_string();
        let state_for = state_for.split(' ').take(2).collect::<Vec<_>>().join(" ");
        out.push_str(&format!(
            "{:<w$}  {:<11} {:<8} {:>8}  {}\n",
            p.name,
            p.kind,
            state,
            state_for,
            p.last_reason.as_deref().unwrap_or("-")
        ));
        if let Some(action) = &p.last_action {
            out.push_str(&format!("{:<w$}  last action: {action}\n", ""));
        }
    }
    if report.pending_pages > 0 {
        out.push_str(&format!(
            "{} page(s) waiting in the outbox\n",
            report.pending_pages
        ));
    }
    out
}

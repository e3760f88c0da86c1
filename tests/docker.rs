//! The Docker sidecar against the real Docker Engine on this machine.
//!
//! No registry is reachable here and the engine starts with no images: the images are made by
//! the shipped `examples/compose/build-local.sh` from this build's binaries (`FROM scratch`,
//! the binaries and the libraries they link), so the test runs the same images a user makes.
//! Every container, network and image a test makes has a unique name and the label
//! `uptime-watchdog.test=PID`, and is removed by a guard when the test ends, failed or not.
//!
//! These tests need a running Docker engine and `docker-compose`; without them they fail
//! with a message saying so (CI has both).

mod common;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use common::{Receiver, TempDir, free_port, http, wait_until, watchdog_bin};

fn label() -> String {
    format!("uptime-watchdog.test={}", std::process::id())
}

/// Runs `docker ARGS`, returns its trimmed stdout; panics with its stderr on failure.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker (the docker tests need it): {e}"));
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn require_engine() {
    let out = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "the docker tests need a running Docker engine; `docker info` failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("the docker tests need the docker CLI and a running engine: {e}"),
    }
}

/// The two images of examples/compose, built once per test process from this build's
/// binaries and removed when the last test using them drops its handle.
struct Images {
    watchdog: String,
    app: String,
    /// Image ids, to remove them even if a container still held a tag when it was dropped.
    ids: Vec<String>,
}

impl Images {
    fn get() -> Arc<Images> {
        static SHARED: Mutex<Weak<Images>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(images) = shared.upgrade() {
            return images;
        }
        require_engine();
        let pid = std::process::id();
        static BUILDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut images = Images {
            watchdog: format!("uptime-watchdog-test:{pid}-{n}"),
            app: format!("uptime-watchdog-test-app:{pid}-{n}"),
            ids: Vec::new(),
        };
        let bin_dir = watchdog_bin().parent().unwrap().to_path_buf();
        let script = repo().join("examples/compose/build-local.sh");
        let out = Command::new(&script)
            .arg(&bin_dir)
            .env("WATCHDOG_IMAGE", &images.watchdog)
            .env("DEMO_APP_IMAGE", &images.app)
            .env("IMAGE_LABEL", label())
            .output()
            .unwrap();
        images.ids = [&images.watchdog, &images.app]
            .iter()
            .filter_map(|tag| {
                let out = Command::new("docker")
                    .args(["image", "inspect", "-f", "{{.Id}}", tag])
                    .output()
                    .ok()?;
                Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
            })
            .filter(|id| !id.is_empty())
            .collect();
        let images = Arc::new(images);
        assert!(
            out.status.success(),
            "{} failed: {}{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        *shared = Arc::downgrade(&images);
        images
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.watchdog, &self.app])
            .args(&self.ids)
            .output();
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Containers and networks of one test, force-removed when dropped.
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    networks: Vec<String>,
    /// A compose project and the directory of its file (kept until `down` ran).
    compose: Option<(TempDir, String)>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some((dir, project)) = &self.compose {
            let _ = Command::new("docker-compose")
                .args(["-p", project, "down", "-t", "1"])
                .current_dir(dir.path())
                .output();
            // Whatever `down` left (it failed, or ran before compose finished creating).
            let left = Command::new("docker")
                .args(["ps", "-aq", "--filter"])
                .arg(format!("label=com.docker.compose.project={project}"))
                .output();
            if let Ok(left) = left {
                for id in String::from_utf8_lossy(&left.stdout).split_whitespace() {
                    let _ = Command::new("docker").args(["rm", "-f", id]).output();
                }
            }
            let _ = Command::new("docker")
                .args(["network", "rm", &format!("{project}_default")])
                .output();
        }
        if !self.containers.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&self.containers)
                .output();
        }
        for n in &self.networks {
            let _ = Command::new("docker").args(["network", "rm", n]).output();
        }
    }
}

fn unique(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("wdtest-{tag}-{}-{n}", std::process::id())
}

/// A network for one test, and its gateway (the host's address on it, where a receiver
/// started by the test is reachable from containers).
fn network(cleanup: &mut Cleanup, tag: &str) -> (String, IpAddr) {
    let name = unique(tag);
    docker(&["network", "create", "--label", &label(), &name]);
    cleanup.networks.push(name.clone());
    let gateway = docker(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
        &name,
    ]);
    (name, gateway.parse().expect("gateway address"))
}

/// When the container last started (Docker's `State.StartedAt`, RFC 3339).
fn started_at(container: &str) -> String {
    docker(&["inspect", "-f", "{{.State.StartedAt}}", container])
}

fn health(container: &str) -> String {
    docker(&[
        "inspect",
        "-f",
        "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
        container,
    ])
}

/// Restarts of `container` Docker performed since `since` (a Unix time), from the engine's
/// own event log: what happened, not what the watchdog says it did.
fn restarts_since(container: &str, since: u64) -> usize {
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    docker(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        &format!("container={container}"),
        "--filter",
        "event=restart",
        "--format",
        "{{.Action}}",
    ])
    .lines()
    .filter(|l| l.trim() == "restart")
    .count()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn socket_gid() -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/var/run/docker.sock")
        .expect("/var/run/docker.sock")
        .gid()
        .to_string()
}

/// Starts the demo app (the fake apache) in `mode`, published on 127.0.0.1, with a fast
/// HEALTHCHECK (the image's, `watchdog check`, at a 1 s interval).
fn run_app(
    cleanup: &mut Cleanup,
    images: &Images,
    network: &str,
    mode: &str,
) -> (String, u16, u16) {
    let name = unique("app");
    let (port, control) = (free_port(), free_port());
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &label(),
        "--network",
        network,
        "--network-alias",
        "app",
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        "-p",
        &format!("127.0.0.1:{control}:8081"),
        "--health-interval",
        "1s",
        "--health-retries",
        "2",
        "--health-start-period",
        "0s",
        "--health-timeout",
        "2s",
        &images.app,
        "--mode",
        mode,
    ]);
    cleanup.containers.push(name.clone());
    (name, port, control)
}

fn serves(port: u16) -> bool {
    http(
        &format!("127.0.0.1:{port}"),
        "GET",
        "/server-status?auto",
        "",
        Duration::from_millis(500),
    )
    .is_ok_and(|(s, b)| s == 200 && b.contains("BusyWorkers"))
}

/// An app that hangs from birth never recovers: the sidecar restarts it through the API after
/// `fail_after` failures, exactly `budget` times (Docker's own event log counts them), then
/// sends one "giving up" page to a receiver, and restarts nothing more.
#[test]
fn sidecar_restarts_an_app_that_never_recovers_budget_times_then_pages_once() {
    let images = Images::get();
    let mut cleanup = Cleanup::default();
    let (net, gateway) = network(&mut cleanup, "net");
    let receiver = Receiver::start_at(gateway, 0, false);
    let since = unix_now();
    let (app, _, _) = run_app(&mut cleanup, &images, &net, "hang");
    let dir = TempDir::new("docker-budget");
    let config = dir.write(
        "watchdog.toml",
        &format!(
            r#"
[watchdog]
state_dir = "/var/lib/uptime-watchdog"

[[probe]]
name = "app"
kind = "http"
url = "http://app:8080/server-status?auto"
interval = "1s"
timeout = "500ms"
fail_after = 2
restart_grace = "1s"

[action.restart-app]
kind = "docker"
container = "{app}"
operation = "restart"
kill_after = "1s"
timeout = "20s"

[action.page]
kind = "webhook"
url = "http://{gateway}:{port}/hook"

[[rule]]
probe = "app"
when = "down"
do = ["restart-app"]
budget = "2 per 10m"

[[rule]]
probe = "app"
when = "down for 3600s"
do = ["page"]
"#,
            port = receiver.port
        ),
    );
    let sidecar = unique("sidecar");
    docker(&[
        "run",
        "-d",
        "--name",
        &sidecar,
        "--label",
        &label(),
        "--network",
        &net,
        "--group-add",
        &socket_gid(),
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        &format!("{}:/etc/uptime-watchdog/watchdog.toml:ro", config.display()),
        &images.watchdog,
        "--log-format",
        "json",
        "run",
        "--config",
        "/etc/uptime-watchdog/watchdog.toml",
    ]);
    cleanup.containers.push(sidecar.clone());
    let logs = || {
        let out = Command::new("docker")
            .args(["logs", &sidecar])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout)
    };

    assert!(
        wait_until(Duration::from_secs(90), || receiver.count("giving_up") >= 1),
        "no giving-up page within 90 s; pages: {:?}; Docker saw {} restarts; sidecar log:\n{}",
        receiver.events(),
        restarts_since(&app, since),
        logs()
    );
    // The budget is spent: a few more failed checks (fail_after = 2 at 1 s) must not restart
    // it again. This is a negative claim, so it needs a window: 5 s is over two down cycles.
    std::thread::sleep(Duration::from_secs(5));
    let restarts = restarts_since(&app, since);
    assert_eq!(
        restarts,
        2,
        "Docker's event log: {restarts} restarts, budget 2; sidecar log:\n{}",
        logs()
    );
    assert_eq!(
        receiver.count("giving_up"),
        1,
        "pages: {:?}",
        receiver.events()
    );
    let log = logs();
    assert_eq!(
        log.matches("\"remedy done\"").count(),
        2,
        "the sidecar reports 2 restarts:\n{log}"
    );
    assert!(
        log.contains(&format!("restarted {app} (")),
        "the remedy names the container it restarted:\n{log}"
    );
}

/// The docker probe, through `watchdog check` on the host: running and healthy passes;
/// Docker's "unhealthy" verdict fails with the HEALTHCHECK's own output; a stopped container
/// and a missing one fail, each with a reason that says which.
#[test]
fn docker_probe_reads_state_and_docker_health() {
    let images = Images::get();
    let mut cleanup = Cleanup::default();
    let (net, _) = network(&mut cleanup, "probe");
    let (healthy, port, _) = run_app(&mut cleanup, &images, &net, "healthy");
    let (sick, _, _) = run_app(&mut cleanup, &images, &net, "status:503");
    let (stopped, _, _) = run_app(&mut cleanup, &images, &net, "healthy");
    docker(&["stop", "-t", "1", &stopped]);
    assert!(
        wait_until(Duration::from_secs(60), || health(&sick) == "unhealthy"
            && health(&healthy) == "healthy"),
        "Docker's HEALTHCHECK verdicts did not settle: {healthy}: {}, {sick}: {}",
        health(&healthy),
        health(&sick)
    );
    assert!(serves(port));
    let dir = TempDir::new("docker-probe");
    let missing = unique("missing");
    let mut toml = format!(
        "[watchdog]\nstate_dir = \"{}\"\n",
        dir.path().join("state").display()
    );
    for (probe, container) in [
        ("healthy", &healthy),
        ("sick", &sick),
        ("stopped", &stopped),
        ("missing", &missing),
    ] {
        toml.push_str(&format!(
            "\n[[probe]]\nname = \"{probe}\"\nkind = \"docker\"\ncontainer = \"{container}\"\ninterval = \"5s\"\ntimeout = \"4s\"\n"
        ));
    }
    let cfg = dir.write("watchdog.toml", &toml);
    let rows = common::check_rows(&cfg, &[]);
    let row = |p: &str| {
        rows.get(p)
            .unwrap_or_else(|| panic!("no row {p}: {rows:?}"))
            .clone()
    };
    assert_eq!(row("healthy"), (true, "running, healthy".to_string()));
    let (ok, reason) = row("sick");
    assert!(
        !ok && reason.starts_with("running, unhealthy ("),
        "{reason}"
    );
    assert!(
        reason.contains("HTTP 503"),
        "the HEALTHCHECK's output is quoted: {reason}"
    );
    let (ok, reason) = row("stopped");
    assert!(!ok && reason.starts_with("exited with code"), "{reason}");
    let (ok, reason) = row("missing");
    assert!(!ok, "{reason}");
    assert_eq!(reason, format!("no container named \"{missing}\""));
}

/// The compose example as shipped (docker-compose.yml and watchdog.toml, with this run's
/// names): the app hangs, the sidecar restarts it over the API, and it serves again.
/// Measures the time from the hang to the container restarted and to serving again.
#[test]
fn compose_example_restarts_a_hung_app() {
    let images = Images::get();
    let compose_ok = Command::new("docker-compose").arg("version").output();
    assert!(
        compose_ok.is_ok_and(|o| o.status.success()),
        "this test needs docker-compose (Debian: apt-get install docker-compose)"
    );
    let mut cleanup = Cleanup::default();
    let dir = TempDir::new("docker-compose");
    let dir_path = dir.path().to_path_buf();
    let example = repo().join("examples/compose");
    let app = unique("app");
    std::fs::copy(
        example.join("docker-compose.yml"),
        dir.path().join("docker-compose.yml"),
    )
    .unwrap();
    let config = std::fs::read_to_string(example.join("watchdog.toml"))
        .unwrap()
        .replace("container = \"app\"", &format!("container = \"{app}\""));
    assert!(
        config.contains(&app),
        "the example names its container `app`"
    );
    dir.write("watchdog.toml", &config);
    let project = unique("compose").replace('-', "");
    let (port, control) = (free_port(), free_port());
    cleanup.compose = Some((dir, project.clone()));
    cleanup.containers.push(app.clone());
    let out = Command::new("docker-compose")
        .args(["-p", &project, "up", "-d"])
        .current_dir(&dir_path)
        .env("WATCHDOG_IMAGE", &images.watchdog)
        .env("DEMO_APP_IMAGE", &images.app)
        .env("APP_CONTAINER", &app)
        .env("APP_PORT", port.to_string())
        .env("APP_CONTROL_PORT", control.to_string())
        .env("DOCKER_GID", socket_gid())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker-compose up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sidecar = format!("{project}_watchdog_1");
    let logs = || {
        let out = Command::new("docker")
            .args(["logs", &sidecar])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(
        wait_until(Duration::from_secs(60), || serves(port)
            && logs().contains("state=up")),
        "the app or the sidecar did not come up:\n{}",
        logs()
    );
    let before = started_at(&app);
    let hung = Instant::now();
    let (status, _) = http(
        &format!("127.0.0.1:{control}"),
        "POST",
        "/mode/hang",
        "",
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(!serves(port), "the app still answers after the hang");
    assert!(
        wait_until(Duration::from_secs(60), || started_at(&app) != before),
        "the sidecar did not restart the app within 60 s:\n{}",
        logs()
    );
    let restarted = hung.elapsed();
    assert!(
        wait_until(Duration::from_secs(30), || serves(port)),
        "the app did not serve again after its restart"
    );
    let serving = hung.elapsed();
    eprintln!(
        "compose: hang -> container restarted {:.1} s, -> serving again {:.1} s",
        restarted.as_secs_f64(),
        serving.as_secs_f64()
    );
    assert!(logs().contains("restarted "), "{}", logs());
}

/// Bad docker configs: every problem at once, each with file:line:col and the item's name.
#[test]
fn docker_config_errors_are_reported_with_positions() {
    let dir = TempDir::new("docker-validate");
    let cfg = dir.write(
        "watchdog.toml",
        r#"[[probe]]
name = "c"
kind = "docker"
container = "app?all=1"

[[probe]]
name = "d"
kind = "docker"
url = "http://x/"

[action.a]
kind = "docker"
container = "app"
operation = "restrat"

[action.b]
kind = "docker"
container = "app"
label = "role=web"
operation = "restart"

[action.c]
kind = "docker"
label = "role=web"
operation = "restart"
signal = "TERM"
kill_after = "30s"

[action.d]
kind = "command"
command = ["/bin/true"]
container = "app"

[[rule]]
probe = "c"
when = "down"
do = ["a", "b", "c", "d"]
"#,
    );
    let (code, _, stderr) = common::watchdog(&["validate", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 78, "{stderr}");
    let file = cfg.display().to_string();
    for expected in [
        format!("{file}:4:13: probe \"c\": `container` `app?all=1` is not a container name or id"),
        format!("{file}:9:7: probe \"d\": `url` does not apply to kind \"docker\""),
        format!("{file}:8:8: probe \"d\": a docker probe needs `container`"),
        format!(
            "{file}:14:13: action \"a\": `operation` \"restrat\" is not one of restart, stop, kill, start (did you mean \"restart\"?)"
        ),
        format!("{file}:19:9: action \"b\": give either `container` or `label`, not both"),
        format!("{file}:26:10: action \"c\": `signal` applies to operation \"kill\""),
        format!(
            "{file}:27:14: action \"c\": `timeout` (30s) must be longer than `kill_after` (30s)"
        ),
        format!("{file}:32:13: action \"d\": `container` does not apply to kind \"command\""),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

/// A docker action by label acts on every matching container, running or not: two stopped
/// containers with the label are both started by one `start` action, which `watchdog check`
/// runs when the docker probe sees the first one down.
#[test]
fn label_action_starts_every_matching_container() {
    let images = Images::get();
    let mut cleanup = Cleanup::default();
    let (net, _) = network(&mut cleanup, "label");
    let role = unique("role");
    let mut names = Vec::new();
    for _ in 0..2 {
        let name = unique("replica");
        docker(&[
            "create",
            "--name",
            &name,
            "--label",
            &label(),
            "--label",
            &format!("com.example.role={role}"),
            "--network",
            &net,
            &images.app,
        ]);
        cleanup.containers.push(name.clone());
        names.push(name);
    }
    let running = |c: &str| docker(&["inspect", "-f", "{{.State.Running}}", c]) == "true";
    assert!(!running(&names[0]) && !running(&names[1]));
    let dir = TempDir::new("docker-label");
    let cfg = dir.write(
        "watchdog.toml",
        &format!(
            r#"[watchdog]
state_dir = "{state}"

[[probe]]
name = "replica"
kind = "docker"
container = "{first}"
fail_after = 1
recover_after = 1
interval = "5s"
timeout = "4s"

[action.start-replicas]
kind = "docker"
label = "com.example.role={role}"
operation = "start"
timeout = "20s"

[[rule]]
probe = "replica"
when = "down"
do = ["start-replicas"]
"#,
            state = dir.path().join("state").display(),
            first = names[0],
        ),
    );
    let (code, stdout, stderr) = common::watchdog(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "the probe failed in this run:\n{stdout}{stderr}");
    assert!(
        running(&names[0]) && running(&names[1]),
        "both labelled containers run after the action:\n{stdout}{stderr}"
    );
    let (code, stdout, stderr) = common::watchdog(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "the next run finds it running:\n{stdout}{stderr}");
}

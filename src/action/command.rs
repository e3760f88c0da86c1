//! Running an argv: no shell, stdin closed, a timeout, output kept short for the log.
//!
//! A start program may daemonize and leave a child holding our stdout: we wait for the program
//! to *exit*, not for its pipes to close, then give the readers a moment and move on.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::probe::{human, snippet};

/// Output kept from a command, per stream.
const MAX_OUTPUT: usize = 2048;

/// Runs `argv` and returns a one-line summary: `Ok("exit 0")` or `Err("exit 3: <stderr>")`.
pub async fn run(
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<String, String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // If we time out (or the watchdog stops) the command must not live on.
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let stdout = child.stdout.take().map(|s| tokio::spawn(read_bounded(s)));
    let stderr = child.stderr.take().map(|s| tokio::spawn(read_bounded(s)));

    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(format!("waiting for {program} failed: {e}")),
        Err(_) => {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
            return Err(format!(
                "{program} timed out after {} and was killed",
                human(timeout)
            ));
        }
    };
    let collect = |task: Option<tokio::task::JoinHandle<Vec<u8>>>| async move {
        match task {
            Some(t) => tokio::time::timeout(Duration::from_millis(200), t)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => Vec::new(),
        }
    };
    let (out, err) = (collect(stdout).await, collect(stderr).await);
    let output = if !err.trim_ascii().is_empty() {
        err
    } else {
        out
    };
    let tail = if output.trim_ascii().is_empty() {
        String::new()
    } else {
        format!(": {}", snippet(output.trim_ascii(), 200))
    };
    match status.code() {
        Some(0) => Ok(format!("exit 0{tail}")),
        Some(code) => Err(format!("exit {code}{tail}")),
        None => Err(format!("killed by a signal{tail}")),
    }
}

/// Runs each argv in turn; a failed `stop` does not prevent the `start` after it (the service
/// may be dead already), but the result reports it. One step: its own result.
pub async fn run_steps(
    steps: &[Vec<String>],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<String, String> {
    if let [only] = steps {
        return run(only, env, timeout).await;
    }
    let mut report = Vec::new();
    let mut last = Ok(());
    for argv in steps {
        let name = argv
            .first()
            .map_or("?", |p| p.rsplit('/').next().unwrap_or(p));
        match run(argv, env, timeout).await {
            Ok(s) => {
                report.push(format!("{name}: {s}"));
                last = Ok(());
            }
            Err(e) => {
                report.push(format!("{name}: {e}"));
                last = Err(());
            }
        }
    }
    let report = report.join("; ");
    // The last step (the start) decides: the service is running or it is not.
    last.map(|()| report.clone()).map_err(|()| report)
}

async fn read_bounded(mut stream: impl AsyncReadExt + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 1024];
    // Keep reading past the limit (discarding) so a chatty program never blocks on a full pipe.
    while let Ok(n) = stream.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        let room = MAX_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
    kept
}

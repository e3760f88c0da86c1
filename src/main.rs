//! The `watchdog` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use uptime_watchdog::cli::{Cli, Command, DaemonAddress};
use uptime_watchdog::config::{self, Diagnostics, EX_CONFIG};
use uptime_watchdog::{check, daemon, logging, probe, status};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, if cli.verbose { "debug" } else { "info" });
    probe::HttpClients::install_crypto_provider();
    // One thread: probes are I/O-bound, and a single-threaded runtime keeps memory small.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("watchdog: cannot start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let code = runtime.block_on(async_main(cli));
    ExitCode::from(code as u8)
}

fn print_diagnostics(diags: &Diagnostics) {
    let report = diags.report();
    if !report.is_empty() {
        eprint!("{report}");
    }
}

async fn async_main(cli: Cli) -> i32 {
    match cli.command {
        Command::Validate { config } => match config::load(&config) {
            Ok((cfg, warnings)) => {
                print_diagnostics(&warnings);
                println!(
                    "{}: valid: {} probes, {} rules, {} actions ({} files)",
                    config.display(),
                    cfg.probes.len(),
                    cfg.probes
                        .iter()
                        .map(|p| p.rules.rules.len())
                        .sum::<usize>(),
                    cfg.actions.len(),
                    cfg.files.len()
                );
                0
            }
            Err(diags) => {
                print_diagnostics(&diags);
                EX_CONFIG
            }
        },
        Command::Check {
            config,
            probes,
            json,
            dry_run,
        } => {
            let cfg = match config::load(&config) {
                Ok((cfg, warnings)) => {
                    print_diagnostics(&warnings);
                    cfg
                }
                Err(diags) => {
                    print_diagnostics(&diags);
                    return EX_CONFIG;
                }
            };
            match check::run(cfg, &probes, dry_run).await {
                Ok(report) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&report).unwrap_or_default()
                        );
                    } else {
                        print!("{}", report.table());
                    }
                    report.exit_code()
                }
                Err(e) => {
                    eprintln!("watchdog check: {e}");
                    1
                }
            }
        }
        Command::Status { daemon, json } => {
            let socket = match socket_of(&daemon) {
                Ok(s) => s,
                Err(code) => return code,
            };
            match status::request(&socket, reqwest::Method::GET, "/status").await {
                Ok((200, body)) if json => {
                    println!("{body}");
                    0
                }
                Ok((200, body)) => match serde_json::from_str::<status::StatusReport>(&body) {
                    Ok(report) => {
                        print!("{}", status::table(&report));
                        0
                    }
                    Err(e) => {
                        eprintln!("watchdog status: unexpected answer ({e}): {body}");
                        1
                    }
                },
                Ok((code, body)) => {
                    eprintln!("watchdog status: HTTP {code}: {}", body.trim());
                    1
                }
                Err(e) => {
                    eprintln!("watchdog status: {e}");
                    1
                }
            }
        }
        Command::Pause {
            daemon,
            probe,
            duration,
        } => {
            let query = duration.map(|d| format!("?for={d}")).unwrap_or_default();
            control(&daemon, &format!("/pause/{probe}{query}")).await
        }
        Command::Resume { daemon, probe } => control(&daemon, &format!("/resume/{probe}")).await,
        Command::Reload { daemon } => control(&daemon, "/reload").await,
        Command::Run { config, dry_run } => {
            let cfg = match config::load(&config) {
                Ok((cfg, warnings)) => {
                    for w in warnings.warnings() {
                        tracing::warn!("config: {w}");
                    }
                    cfg
                }
                Err(diags) => {
                    print_diagnostics(&diags);
                    return EX_CONFIG;
                }
            };
            let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(forward_sighup(reload_tx));
            let options = daemon::RunOptions {
                dry_run,
                config_path: Some(config),
            };
            match daemon::run(cfg, options, shutdown_signal(), reload_rx).await {
                Ok(_) => 0,
                Err(e) => {
                    eprintln!("watchdog run: {e}");
                    1
                }
            }
        }
    }
}

/// The daemon's API socket, from `--socket` or its config.
fn socket_of(daemon: &DaemonAddress) -> Result<std::path::PathBuf, i32> {
    if let Some(socket) = &daemon.socket {
        return Ok(socket.clone());
    }
    match config::load(&daemon.config) {
        Ok((cfg, _)) => Ok(cfg.watchdog.api_socket),
        Err(diags) => {
            print_diagnostics(&diags);
            eprintln!("watchdog: cannot find the daemon's socket from this config; give --socket");
            Err(EX_CONFIG)
        }
    }
}

/// A POST to the daemon's API; prints its answer. 0 when it agreed.
async fn control(daemon: &DaemonAddress, path: &str) -> i32 {
    let socket = match socket_of(daemon) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match status::request(&socket, reqwest::Method::POST, path).await {
        Ok((200, body)) => {
            print!("{body}");
            0
        }
        Ok((code, body)) => {
            eprintln!("watchdog: HTTP {code}: {}", body.trim());
            1
        }
        Err(e) => {
            eprintln!("watchdog: {e}");
            1
        }
    }
}

/// Each SIGHUP asks the daemon to reload its config.
async fn forward_sighup(reloads: tokio::sync::mpsc::Sender<()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; reload by restarting");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the config");
        // A full queue means reloads are already pending: one more adds nothing.
        let _ = reloads.try_send(());
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

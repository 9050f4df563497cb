//! The `parley` binary: parses the command line and runs a role until SIGINT/SIGTERM.

use clap::Parser;
use parley::config::{Cli, Command, Config};
use parley::startup::{self, Role};
use std::process::ExitCode;

/// glibc's malloc took ~15% of the server's CPU under write load (many small, short-lived
/// buffers across threads); mimalloc's thread-local free lists cost a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "parley stopped with an error");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    let (config, roles): (Config, &[Role]) = match command {
        Command::Openapi => {
            println!("{}", parley::http::openapi_json());
            return Ok(());
        }
        Command::Migrate(config) => {
            parley::telemetry::init_logs(config.log_format, &config.log_filter);
            config.validate()?;
            startup::patiently(&config, || startup::open_store(&config)).await?;
            tracing::info!("migrations applied");
            return Ok(());
        }
        Command::Reindex(config) => {
            parley::telemetry::init_logs(config.log_format, &config.log_filter);
            config.validate()?;
            let n = startup::reindex(&config).await?;
            tracing::info!(messages = n, "search index rebuilt");
            return Ok(());
        }
        Command::Serve(c) => (c, &Role::ALL),
        Command::Api(c) => (c, &[Role::Api]),
        Command::Writer(c) => (c, &[Role::Writer]),
        Command::Scheduler(c) => (c, &[Role::Scheduler]),
        Command::Notifier(c) => (c, &[Role::Notifier]),
    };
    parley::telemetry::init_logs(config.log_format, &config.log_filter);
    let grace = config.shutdown_grace;
    // One listener for the process's whole life, there before start-up: a stop while the
    // roles still start (waiting for their engines, STARTUP_WAIT) ends it, with nothing in
    // flight yet, and no signal can fall between start-up and running.
    let signalled = tokio_util::sync::CancellationToken::new();
    let on_signal = signalled.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    let running = tokio::select! {
        running = startup::start(config, roles) => running?,
        () = signalled.cancelled() => {
            tracing::info!("stopped while starting");
            return Ok(());
        }
    };
    let stop = running.shutdown.clone();
    tokio::spawn(async move {
        signalled.cancelled().await;
        stop.cancel();
    });
    let stopped = running.shutdown.clone();
    let mut wait = tokio::spawn(running.wait());
    tokio::select! {
        result = &mut wait => return result?,
        _ = stopped.cancelled() => {}
    }
    match tokio::time::timeout(grace, wait).await {
        Ok(result) => result?,
        Err(_) => anyhow::bail!("in-flight work did not finish within SHUTDOWN_GRACE ({grace:?})"),
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown signal received");
}

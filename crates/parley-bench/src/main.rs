//! parley-bench: the benchmark instrument of Parley (see bench/README.md). Map:
//!
//! - [`cli`]: the command line (`load`, `run`).
//! - [`fixture`]: `load`, a large data set through the store's bulk path.
//! - [`setup`]: what the scenarios work on, from a fixture or through the API.
//! - [`scenarios`]: what each scenario asks; [`runner`]: closed and open loops, persist lag.
//! - [`http`]: the HTTP/1.1 client on a bare socket, one connection per task.
//! - [`floor`]: the raw engines under the write path.
//! - [`cpu`]: the server's CPU time, for CPU per request.
//! - [`stats`]: HDR histograms; [`report`]: JSON and Markdown; [`chart`]: the SVG chart.
//! - [`text`]: message bodies and search words.

mod chart;
mod cli;
mod cpu;
mod fixture;
mod floor;
mod http;
mod inside;
mod report;
mod runner;
mod scenarios;
mod setup;
mod stats;
mod text;

use anyhow::{Context, Result};
use clap::Parser;
use cli::{ChartArgs, Cli, Command, RunArgs, SetupArgs};
use report::{FloorResult, Report, RunConfig, ScenarioResult};
use scenarios::Scenario;
use std::process::ExitCode;
use std::sync::Arc;

/// The load generator shares the machine with what it measures: glibc's malloc was ~8% of
/// its samples (perf, create-message), mimalloc's thread-local free lists cost less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Run(args) => args.threads.max(1),
        // The loader generates text on its own thread; the store's driver has its own too.
        Command::Load(_) => 2,
        Command::Setup(_) | Command::Chart(_) => 1,
    };
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Load(args) => fixture::load(args).await,
            Command::Run(args) => run(*args).await,
            Command::Setup(args) => setup_for_wrk(args).await,
            Command::Chart(args) => redraw(args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let started = chrono::Utc::now();
    let target = http::Target::resolve(&args.target.url).await?;
    let mut scenarios = args.scenario.clone();
    scenarios.dedup();

    let floor = if args.floor {
        let plan = floor::FloorPlan {
            connections: args.connections,
            warmup: args.warmup.min(std::time::Duration::from_secs(1)),
            duration: args.floor_duration,
            timeout: args.timeout,
            redis_url: args.redis_url.clone(),
            rabbitmq_url: args.rabbitmq_url.clone(),
            nats_url: args.nats_url.clone(),
        };
        floor::measure(&plan, &target)
            .await
            .iter()
            .map(|f| FloorResult::new(f, args.floor_duration))
            .collect()
    } else {
        Vec::new()
    };

    let mut results = Vec::new();
    let mut data = None;
    if !scenarios.is_empty() {
        let needs = setup::Needs {
            chats: if scenarios.iter().any(|s| s.spreads()) {
                args.target.spread_chats
            } else {
                1
            },
            hot_messages: if scenarios.iter().any(|s| s.reads_messages()) {
                args.target.seed_messages
            } else {
                0
            },
            search: scenarios.contains(&Scenario::Search),
            connections: args.connections.min(32),
        };
        let session = match &args.target.fixture {
            Some(path) => setup::from_fixture(&target, path, &needs).await,
            None => setup::fresh(&target, &needs).await,
        }
        .context("setting up")?;
        if scenarios.contains(&Scenario::DeepListPage)
            && session.hot_messages < i64::from(args.deep_page) * 10
        {
            eprintln!(
                "warning: deep-list-page asks for page {} but the hot chat has {} messages: the pages are empty (use a fixture or --seed-messages)",
                args.deep_page, session.hot_messages
            );
        }
        let workload = Arc::new(session.workload(args.target.spread_chats, args.deep_page));
        let plan = runner::Plan {
            connections: args.connections.max(1),
            rate: args.rate,
            warmup: args.warmup,
            duration: args.duration,
            timeout: args.timeout,
            persist_every: args.persist_every,
            server_pid: args.server_pid,
        };
        for scenario in &scenarios {
            eprintln!(
                "run: {} for {:?} after {:?} warm-up",
                scenario.name(),
                args.duration,
                args.warmup
            );
            let stats = runner::run(&target, &session.auth, &workload, *scenario, &plan).await;
            let mut result = ScenarioResult::new(scenario.name(), &stats, args.duration);
            result.of_health_floor = floor
                .iter()
                .find(|f: &&FloorResult| f.engine == "parley" && f.ops_per_s > 0.0)
                .map(|f| result.throughput / f.ops_per_s);
            eprintln!(
                "     {:.0} req/s, p50 {} ms, p99 {} ms, {} errors",
                result.throughput,
                report::fmt_ms(result.latency.p50_ms),
                report::fmt_ms(result.latency.p99_ms),
                stats.errors()
            );
            results.push(result);
        }
        data = Some(session.data);
    }

    let report = Report {
        tool: format!("parley-bench {}", env!("CARGO_PKG_VERSION")),
        started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        machine: report::machine(),
        commit: report::commit(),
        config: RunConfig {
            url: target.url.clone(),
            mode: if args.rate.is_some() {
                "open"
            } else {
                "closed"
            }
            .into(),
            connections: args.connections,
            rate: args.rate,
            duration_s: args.duration.as_secs_f64(),
            warmup_s: args.warmup.as_secs_f64(),
            timeout_s: args.timeout.as_secs_f64(),
            floor_duration_s: args.floor.then_some(args.floor_duration.as_secs_f64()),
            client_threads: args.threads.max(1),
            data,
            note: args.note.clone(),
        },
        scenarios: results,
        floor,
    };
    let stamp = started.format("%Y%m%d-%H%M%S").to_string();
    let stem = report.write(&args.out, &stamp)?;
    println!("{}", report.markdown(None));
    eprintln!("wrote {}.{{json,md,svg}}", stem.display());
    Ok(())
}

/// `setup`: what the wrk command lines in bench/README.md need, as shell variables.
async fn setup_for_wrk(args: SetupArgs) -> Result<()> {
    let target = http::Target::resolve(&args.url).await?;
    let needs = setup::Needs {
        chats: args.spread_chats,
        hot_messages: args.seed_messages,
        search: args.seed_messages > 0,
        connections: 16,
    };
    let session = match &args.fixture {
        Some(path) => setup::from_fixture(&target, path, &needs).await,
        None => setup::fresh(&target, &needs).await,
    }
    .context("setting up")?;
    println!("export B={}", target.url);
    println!("export TOKEN={}", session.token);
    println!("export APP={}", session.app);
    println!(
        "export CHATS={}",
        session.data.chats.max(args.spread_chats as u64)
    );
    println!("export MESSAGES={}", session.hot_messages);
    Ok(())
}

/// `chart`: the SVG of a report, again.
fn redraw(args: ChartArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.report)
        .with_context(|| format!("reading {}", args.report.display()))?;
    let report: Report = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", args.report.display()))?;
    let out = args
        .out
        .unwrap_or_else(|| args.report.with_extension("svg"));
    if !chart::render(&report, &out)? {
        anyhow::bail!("the report has no latency to draw");
    }
    eprintln!("wrote {}", out.display());
    Ok(())
}

//! The command line: `load` (fixture) and `run` (scenarios, floor, reports).

use crate::scenarios::Scenario;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "parley-bench",
    version,
    about = "Load generator and benchmark instrument for Parley (see bench/README.md)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Puts a large data set in place through the store's bulk path (stop the server first).
    Load(LoadArgs),
    /// Runs scenarios against a server and writes JSON, Markdown and an SVG chart.
    Run(Box<RunArgs>),
    /// Sets up through the API (or signs in to a fixture) and prints shell variables for wrk.
    Setup(SetupArgs),
    /// Draws the chart of a report again, from its JSON.
    Chart(ChartArgs),
}

/// Where to run and on what data (shared by `run` and `setup`).
#[derive(Debug, Clone, Args)]
pub struct SetupArgs {
    /// The server's base URL (plain http).
    #[arg(
        long,
        env = "PARLEY_BENCH_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// A fixture from `load` (its data directory or its JSON file); without it, a user, an
    /// application, chats and messages are created through the API.
    #[arg(long)]
    pub fixture: Option<PathBuf>,
    /// Without a fixture: messages created in the hot chat before reading scenarios.
    #[arg(long, default_value_t = 6000)]
    pub seed_messages: u64,
    /// Chats 1..=N to exist, that create-message-spread and mix write into.
    #[arg(long, default_value_t = 1000)]
    pub spread_chats: usize,
}

#[derive(Debug, Clone, Args)]
pub struct ChartArgs {
    /// A report written by `run` (`….json`).
    pub report: PathBuf,
    /// Where to write the SVG (default: beside the report).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The server's data directory (PARLEY_DATA_DIR); must not hold a fixture yet.
    #[arg(long, env = "PARLEY_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Messages in all.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Chats; chat 1 is the hot chat.
    #[arg(long, default_value_t = 1000)]
    pub chats: u64,
    /// Share of the messages in the hot chat (the rest are spread evenly over the others).
    #[arg(long, default_value_t = 0.5)]
    pub hot_share: f64,
    /// Messages per `insert_messages` call (one transaction).
    #[arg(long, default_value_t = 20_000)]
    pub batch: usize,
    /// Leave the search index to the server, which catches up from the store on start.
    #[arg(long)]
    pub no_index: bool,
    /// E-mail address of the fixture's user.
    #[arg(long, default_value = "bench@parley.test")]
    pub email: String,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Scenarios to run one after the other (comma-separated or repeated).
    #[arg(
        long,
        short,
        value_enum,
        value_delimiter = ',',
        required_unless_present = "floor"
    )]
    pub scenario: Vec<Scenario>,
    #[command(flatten)]
    pub target: SetupArgs,
    /// Connections, one task each.
    #[arg(long, short, default_value_t = 16)]
    pub connections: usize,
    /// Open loop at this many requests per second (across all connections); closed loop when
    /// absent.
    #[arg(long, short)]
    pub rate: Option<f64>,
    /// Measured time per scenario.
    #[arg(long, short, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Unmeasured time before each scenario.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// A request without a whole answer after this long is a `timeout` error.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Also measure the floor: GET /health, Redis, RabbitMQ, NATS and the store's bulk insert.
    #[arg(long)]
    pub floor: bool,
    /// Measured time per floor engine.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub floor_duration: Duration,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    #[arg(
        long,
        env = "RABBITMQ_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub rabbitmq_url: String,
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// persist-lag: follow every Nth created message until GET finds it.
    #[arg(long, default_value_t = 10)]
    pub persist_every: u64,
    /// deep-list-page: the page number (10 messages a page).
    #[arg(long, default_value_t = 500)]
    pub deep_page: u32,
    /// The server's process id, when it runs on this machine (Linux): each scenario also
    /// reports the server's CPU time per request over the measured window, all its threads
    /// counted — steadier than requests per second on a shared machine.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Worker threads of the load generator (it shares the machine with the server).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Where the reports go.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// A note kept in the report (what changed, why this run).
    #[arg(long)]
    pub note: Option<String>,
}

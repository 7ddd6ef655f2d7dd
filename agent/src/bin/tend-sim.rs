//! `tend-sim`: a thousand simulated tend nodes on one real etcd (`tend::sim`), printing
//! what it measured. `--max-writes-per-node-s` makes it a check: exit 1 when the steady
//! state wrote more than that.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tend::sim::{self, Scenario, Settings};

/// Simulates N tend nodes on a real etcd and prints the figures.
#[derive(Debug, Parser)]
#[command(name = "tend-sim", version)]
struct Args {
    /// Simulated nodes (1 to 5000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=5000))]
    nodes: u32,
    /// etcd's client URLs, comma-separated (http:// only: the figures come from /metrics).
    #[arg(long, value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// How long the steady state is measured (`60s`, `5m`).
    #[arg(long, default_value = "60s")]
    duration: tend_specs::quantity::Duration,
    /// What happens after the steady window.
    #[arg(long, value_enum, default_value_t = Scenario::Steady)]
    scenario: Scenario,
    /// Which nodes crash in `kill`.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The nodes' lease TTL (`10s`).
    #[arg(long = "lease-ttl", default_value = "10s")]
    ttl: tend_specs::quantity::Duration,
    /// Nodes per etcd client connection (1 to 1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    nodes_per_client: u32,
    /// Placed services (each of `--replicas` spread slots); default: one per 10 nodes.
    #[arg(long)]
    services: Option<u32>,
    /// Slots per placed service (1 to 100).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    replicas: u32,
    /// Nodes started per second (1 to 10000).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10000))]
    join_rate: u32,
    /// Output: text or json.
    #[arg(short, long, default_value = "text")]
    output: String,
    /// Exit 1 when the steady state wrote more than this many etcd writes per node per second.
    #[arg(long)]
    max_writes_per_node_s: Option<f64>,
}

fn main() -> anyhow::Result<ExitCode> {
    let a = Args::parse();
    let nodes = a.nodes as usize;
    let settings = Settings {
        nodes,
        endpoints: a.etcd.clone(),
        duration: a.duration.get(),
        scenario: a.scenario,
        seed: a.seed,
        ttl: a.ttl.get().max(Duration::from_secs(2)),
        nodes_per_client: a.nodes_per_client as usize,
        services: a.services.map_or((nodes / 10).max(1), |s| s as usize),
        replicas: a.replicas,
        join_rate: a.join_rate,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let figures = rt.block_on(sim::run(settings))?;
    if a.output == "json" {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        println!("{figures:#?}");
    }
    if let Some(max) = a.max_writes_per_node_s
        && figures.writes_per_node_s > max
    {
        eprintln!(
            "tend-sim: {} etcd writes per node per second in the steady state, more than {max}",
            figures.writes_per_node_s
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

//! The engine's baseline for an initial converge: create and start N containers through
//! the raw Engine API (bollard), with bounded concurrency, and print how long it took.
//!
//! ```text
//! cargo run --release -p tend --example raw_create -- N CONCURRENCY [PREFIX] [LABEL=VALUE] [IMAGE]
//! ```
//!
//! Containers are named `PREFIX-1` … `PREFIX-N` (PREFIX defaults to `rawbench`), run
//! `sleep 1000000` in IMAGE (default `tend-demo/busybox:1`) with a 1 s stop timeout, no
//! ports, the default network and the engine restart policy `no` — the same config tend
//! gives a `kind: Service` instance — and carry the label LABEL=VALUE (default
//! `tendbench.raw=1`) so that the caller can remove them with
//! `docker rm -f $(docker ps -aq --filter label=LABEL=VALUE)`. Nothing is removed here and
//! nothing is pulled.
//!
//! Prints one line on stdout: the milliseconds from before the connection (version
//! negotiation included, as tend does) to the last container started. Details go to stderr.
//! Exit status 1 if any create or start failed.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, bail};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::CreateContainerOptions;
use futures::StreamExt;

struct Args {
    n: usize,
    concurrency: usize,
    prefix: String,
    label: (String, String),
    image: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args.len() > 5 {
        bail!("usage: raw_create N CONCURRENCY [PREFIX] [LABEL=VALUE] [IMAGE]");
    }
    let n: usize = args[0].parse().context("N must be a number")?;
    let concurrency: usize = args[1].parse().context("CONCURRENCY must be a number")?;
    if concurrency == 0 {
        bail!("CONCURRENCY must be at least 1");
    }
    let prefix = args.get(2).cloned().unwrap_or_else(|| "rawbench".into());
    let label = args.get(3).cloned().unwrap_or_else(|| "tendbench.raw=1".into());
    let Some((k, v)) = label.split_once('=') else { bail!("LABEL must be KEY=VALUE, got `{label}`") };
    let image = args.get(4).cloned().unwrap_or_else(|| "tend-demo/busybox:1".into());
    Ok(Args { n, concurrency, prefix, label: (k.to_string(), v.to_string()), image })
}

/// The same container config tend sends for a `kind: Service` instance with an image, a
/// command, a stop timeout and nothing else (no ports, mounts, networks or health check).
fn body(args: &Args, name: &str, instance: usize) -> ContainerCreateBody {
    let labels = HashMap::from([
        (args.label.0.clone(), args.label.1.clone()),
        ("tendbench.name".to_string(), name.to_string()),
        ("tendbench.instance".to_string(), instance.to_string()),
    ]);
    ContainerCreateBody {
        image: Some(args.image.clone()),
        cmd: Some(vec!["sleep".into(), "1000000".into()]),
        env: Some(vec![]),
        labels: Some(labels),
        stop_timeout: Some(1),
        host_config: Some(HostConfig {
            restart_policy: Some(RestartPolicy { name: Some(RestartPolicyNameEnum::NO), maximum_retry_count: None }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn create_and_start(docker: &Docker, args: &Args, i: usize) -> anyhow::Result<()> {
    let name = format!("{}-{i}", args.prefix);
    let options = CreateContainerOptions { name: Some(name.clone()), ..Default::default() };
    let created = docker
        .create_container(Some(options), body(args, &name, i))
        .await
        .with_context(|| format!("creating {name}"))?;
    docker.start_container(&created.id, None).await.with_context(|| format!("starting {name}"))?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let started = Instant::now();
    let docker = Docker::connect_with_local_defaults()
        .context("connecting to the Docker daemon")?
        .negotiate_version()
        .await
        .context("negotiating the API version")?;
    let connected = started.elapsed();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(1..=args.n)
        .map(|i| {
            let (docker, args) = (&docker, &args);
            async move { create_and_start(docker, args, i).await }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let failed: Vec<String> = results.into_iter().filter_map(|r| r.err().map(|e| format!("{e:#}"))).collect();
    eprintln!(
        "raw_create: {} container(s), concurrency {}, connect {} ms, total {} ms, {} failed",
        args.n,
        args.concurrency,
        connected.as_millis(),
        elapsed.as_millis(),
        failed.len()
    );
    println!("{}", elapsed.as_millis());
    if let Some(first) = failed.first() {
        bail!("{} of {} failed; first: {first}", failed.len(), args.n);
    }
    Ok(())
}

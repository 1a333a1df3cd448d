//! `busbar bench cluster`: how long a deployment made on one node takes to run on the others.
//! Starts a `redis-server` and `--nodes` `busbar serve` processes sharing it, then uploads a new
//! version of one plugin (an example component under a manifest naming a new subscription) on
//! the first node, `--uploads` times, and after each acknowledged upload times how long until
//! every other node lists that version. Prints p50, p99 and the worst per node and upload.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use super::servers::{ADMIN_TOKEN, start_redis, start_server};

#[derive(Args)]
pub struct ClusterArgs {
    /// Nodes sharing one Redis (the first takes the uploads).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Uploads to time.
    #[arg(long, default_value_t = 50)]
    uploads: usize,
}

pub fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    if args.nodes < 2 || args.uploads == 0 {
        bail!("--nodes must be at least 2 and --uploads at least 1");
    }
    let redis = start_redis()?;
    let nodes = (0..args.nodes).map(|_| start_server("relay", Some(&redis.addr))).collect::<anyhow::Result<Vec<_>>>()?;
    let (_, component, _) = busbar::examples::PLUGINS.first().context("no example plugin")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let http = reqwest::Client::new();
    let mut waits = Vec::new();
    runtime.block_on(async {
        for i in 0..args.uploads {
            let manifest = format!("subscriptions = [\"probe:{i}\"]\n");
            let form = reqwest::multipart::Form::new().part("component", reqwest::multipart::Part::bytes(component.to_vec())).text("manifest", manifest);
            let url = format!("http://{}/v1/plugins/probe", nodes[0].addr);
            let response = http.put(url).bearer_auth(ADMIN_TOKEN).multipart(form).send().await?;
            if !response.status().is_success() {
                bail!("upload {i}: {} {}", response.status(), response.text().await.unwrap_or_default());
            }
            let acknowledged = Instant::now();
            let expected = serde_json::json!([format!("probe:{i}")]);
            for node in &nodes[1..] {
                loop {
                    let url = format!("http://{}/v1/plugins/probe", node.addr);
                    let view: serde_json::Value = http.get(url).bearer_auth(ADMIN_TOKEN).send().await?.json().await.unwrap_or_default();
                    if view["plugin"]["subscriptions"] == expected {
                        waits.push(acknowledged.elapsed());
                        break;
                    }
                    if acknowledged.elapsed() > Duration::from_secs(30) {
                        bail!("upload {i} never ran on {}", node.addr);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
        Ok(())
    })?;
    waits.sort();
    let at = |q: f64| waits[((waits.len() - 1) as f64 * q).round() as usize];
    println!(
        "cluster: {} nodes, {} uploads on one; running on every other node after p50 {:.1} ms, p99 {:.1} ms, worst {:.1} ms",
        args.nodes,
        args.uploads,
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3
    );
    Ok(ExitCode::SUCCESS)
}

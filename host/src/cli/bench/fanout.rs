//! `busbar bench fanout`: the end-to-end fan-out benchmark. HTTP publish -> plugins -> hub -> N
//! real WebSocket clients, beside a baseline and two peers in the same run.
//!
//! For each client count it measures, one after the other, each with the same load generator
//! and clients (`loadgen`): the naive Rust broadcast server (`naive`, axum and one broadcast
//! channel), busbar's baseline (a native forwarder and no plugins, `busbar bench
//! baseline-server`), busbar with the example plugins, optionally two busbar nodes through a
//! Redis relay, and the Node.js `ws` server (`node`). Every server is a child process started by
//! `servers`. It prints one table: deliveries per second, p50/p99/p99.9 latency, evictions, CPU
//! per delivery, memory per idle connection, and those as ratios against the naive server
//! measured in the same run. This module chooses and reports; it must not measure.

use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::loadgen::{Measurement, Offer, measure};

#[derive(Args, Clone)]
pub struct FanoutArgs {
    /// Client counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    clients: Vec<usize>,
    /// Target deliveries per second (events per second = this / clients).
    #[arg(long, default_value_t = 500_000)]
    deliveries: u64,
    /// Seconds of publishing per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Payload bytes per event (padding around the publish time).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Skip busbar's native baseline (measure busbar with the plugins only).
    #[arg(long)]
    no_baseline: bool,
    /// Peers measured beside busbar, comma-separated: `naive` (an axum broadcast server, no
    /// rooms, no auth), `node` (a Node.js server on npm's `ws`, installed on first use into
    /// the toolchains directory, `$BUSBAR_TOOLCHAINS`), or `none`.
    #[arg(long, value_delimiter = ',', default_value = "naive,node")]
    peers: Vec<Peer>,
    /// Also measure two nodes through a Redis relay (starts `redis-server`; clients on one
    /// node, publishing on the other).
    #[arg(long)]
    relay: bool,
    /// Print the results as JSON too.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Peer {
    Naive,
    Node,
    None,
}

pub fn run(args: FanoutArgs) -> anyhow::Result<ExitCode> {
    crate::cli::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut configs = Vec::new();
    if args.peers.contains(&Peer::Naive) {
        configs.push("naive");
    }
    if !args.no_baseline {
        configs.push("baseline");
    }
    configs.push("plugins");
    if args.relay {
        configs.push("relay");
    }
    if args.peers.contains(&Peer::Node) {
        configs.push("node");
    }
    let mut results = Vec::new();
    for &clients in &args.clients {
        let offer = Offer { clients, deliveries: args.deliveries, seconds: args.seconds, payload: args.payload };
        for &config in &configs {
            eprintln!("bench: {config}, {clients} clients ...");
            let m = runtime.block_on(measure(config, offer))?;
            eprintln!(
                "bench: {config}, {clients} clients: {:.0} deliveries/s ({}/{}), p99 {:.1} ms, {:.2} µs CPU per delivery",
                m.deliveries_per_second, m.deliveries, m.deliveries_expected, m.p99_ms, m.cpu_us_per_delivery
            );
            if m.events_per_second < 0.95 * m.events_per_second_target {
                eprintln!("bench: the publisher fell behind: {:.0} events/s of {:.0} offered", m.events_per_second, m.events_per_second_target);
            }
            results.push(m);
        }
    }
    print_table(&results);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// The results as a Markdown table, with ratios against the naive server at the same client
/// count (`-` where it was not measured).
fn print_table(results: &[Measurement]) {
    println!(
        "| config | clients | events/s | deliveries/s | delivered | p50 ms | p99 ms | p99.9 ms | max ms | evicted / closed | idle KiB/conn | server CPU s | CPU µs/delivery | loadgen CPU s | vs naive: deliveries/s | p99 | CPU/delivery | KiB/conn |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for m in results {
        let naive = results.iter().find(|n| n.config == "naive" && n.clients == m.clients);
        let ratio = |f: fn(&Measurement) -> f64| naive.map_or("-".to_string(), |n| format!("{:.2}x", f(m) / f(n)));
        println!(
            "| {} | {} | {:.0} | {:.0} | {}/{} | {:.2} | {:.2} | {:.2} | {:.2} | {} / {} | {:.1} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |",
            m.config,
            m.clients,
            m.events_per_second,
            m.deliveries_per_second,
            m.deliveries,
            m.deliveries_expected,
            m.p50_ms,
            m.p99_ms,
            m.p999_ms,
            m.max_ms,
            m.evictions.map_or("-".to_string(), |e| e.to_string()),
            m.closed_early,
            m.idle_kib_per_connection,
            m.server_cpu_seconds,
            m.cpu_us_per_delivery,
            m.loadgen_cpu_seconds,
            ratio(|m| m.deliveries_per_second),
            ratio(|m| m.p99_ms),
            ratio(|m| m.cpu_us_per_delivery),
            ratio(|m| m.idle_kib_per_connection),
        );
    }
}

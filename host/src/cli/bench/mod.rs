//! `busbar bench`: busbar measured end to end (see BENCHMARKS.md), one module per benchmark:
//! `fanout` (publish to N WebSocket clients: a native baseline and two peers beside the
//! plugins, driven by `loadgen`), `publish` (the HTTP publish path beside an empty route),
//! `reload` (hot swaps under load), `languages` (one plugin in every guest language), `cluster`
//! (a deployment on one node running on the others); and what
//! they run: `servers` (the child processes), `baseline` (the native busbar server `fanout`
//! compares against) and `naive` (the naive axum broadcast server, `fanout`'s Rust peer; the
//! Node.js peer's script is `peers/ws-server.mjs`).

mod baseline;
mod cluster;
mod fanout;
mod languages;
mod loadgen;
mod naive;
mod publish;
mod reload;
mod servers;

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Fan-out through a real server: deliveries per second, latency, CPU per delivery and memory
    /// per connection to N clients, beside a naive Rust server and a Node.js `ws` server.
    Fanout(fanout::FanoutArgs),
    /// The HTTP publish path: events per second, single and batched, with and without the
    /// per-listener report, beside an empty route in the same run.
    Publish(publish::PublishArgs),
    /// Hot reload under load: time from a file landing to the new version serving, and failed,
    /// lost and doubled events.
    Reload(reload::ReloadArgs),
    /// The same plugin in every guest language: compile, first call, warm calls.
    Languages(languages::LanguagesArgs),
    /// Nodes sharing Redis: time from an upload on one node to the version running on the others.
    Cluster(cluster::ClusterArgs),
    /// The baseline `fanout` runs: a server without plugins, whose native listener forwards
    /// every event to its workspace room.
    #[command(name = "baseline-server", hide = true)]
    BaselineServer(baseline::BaselineArgs),
    /// The naive Rust peer `fanout` runs: one axum broadcast channel for every connection, no
    /// rooms, no auth.
    #[command(name = "naive-server", hide = true)]
    NaiveServer(naive::NaiveArgs),
}

pub fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Fanout(args) => fanout::run(args),
        BenchCommand::Publish(args) => publish::run(args),
        BenchCommand::Reload(args) => reload::run(args),
        BenchCommand::Languages(args) => languages::run(args),
        BenchCommand::Cluster(args) => cluster::run(args),
        BenchCommand::BaselineServer(args) => baseline::run(args),
        BenchCommand::NaiveServer(args) => naive::run(args),
    }
}

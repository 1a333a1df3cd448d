//! `busbar plugin check FILE.wasm`: validate a component and print what it subscribes to.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::RuntimeArgs;

#[derive(Args)]
pub struct CheckArgs {
    /// The component to check.
    file: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let runtime = args.runtime.runtime()?;
    match runtime.check(&bytes) {
        Ok(info) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("{}: ok", args.file.display());
                println!("  contract:      {}", info.contract);
                println!("  sha256:        {}", info.hash);
                println!("  size:          {} bytes", info.size);
                println!("  worlds:        {}", info.worlds.join(", "));
                println!("  subscriptions: {}", info.subscriptions.join(", "));
                println!("  imports:       {}", info.imports.join(", "));
                println!("  start-up:      {} ms (a manifest's `limits.timeout-ms` bounds it; default 100)", info.startup_ms);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            if args.json {
                println!("{}", serde_json::json!({"file": args.file, "error": error.to_string()}));
            } else {
                eprintln!("{}: {error}", args.file.display());
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

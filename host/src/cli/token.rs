//! `busbar token`: mint a connection token (JWT, HS256) for development and tests.

use std::collections::BTreeMap;
use std::process::ExitCode;

use busbar::config::DEV_JWT_SECRET;
use busbar::hub::{Claims, Grants, auth};
use clap::Args;

#[derive(Args)]
pub struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    user: String,
    /// A workspace the user may connect to (repeatable; `*` for any).
    #[arg(long = "workspace", required = true)]
    workspaces: Vec<String>,
    /// A scope grant, `WORKSPACE:task:ID` or `WORKSPACE:chat:ID` (ID may end in `*`); repeatable.
    #[arg(long = "grant")]
    grants: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// The HS256 secret (default: $BUSBAR_JWT_SECRET, else the development secret).
    #[arg(long, env = "BUSBAR_JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
}

pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let mut grants: BTreeMap<String, Grants> = BTreeMap::new();
    for grant in &args.grants {
        let mut parts = grant.splitn(3, ':');
        let (Some(workspace), Some(kind), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            anyhow::bail!("grant `{grant}` is not WORKSPACE:task:ID or WORKSPACE:chat:ID");
        };
        let entry = grants.entry(workspace.to_string()).or_default();
        match kind {
            "task" => entry.task.push(id.to_string()),
            "chat" => entry.chat.push(id.to_string()),
            other => anyhow::bail!("grant `{grant}`: unknown scope kind `{other}` (task or chat)"),
        }
    }
    let claims = Claims {
        sub: args.user,
        exp: busbar::event::now_ms() / 1000 + args.ttl,
        workspaces: args.workspaces,
        grants,
    };
    let secret = args.secret.unwrap_or_else(|| DEV_JWT_SECRET.to_string());
    println!("{}", auth::mint(secret.as_bytes(), &claims));
    Ok(ExitCode::SUCCESS)
}

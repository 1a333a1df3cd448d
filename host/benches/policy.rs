//! What a policy decision costs: the example `original-policy` plugin as authenticator and
//! authorizer beside busbar's built-in checks, in alternating rounds of the same run (these
//! machines are shared and noisy: compare within a run). Every variant goes through the path a
//! connection or a subscribe takes (`PluginAccess`, a blocking thread for the plugin), driven by
//! the same `block_on`. See BENCHMARKS.md.
//!
//! - connect: busbar's JWT check (`TokenVerifier::identify`) beside the plugin verifying the
//!   original application's JWT from a cookie and checking membership in its kv;
//! - subscribe: busbar's grant check (`ClaimsAuthorizer`) beside the plugin deciding a task room
//!   from its kv, uncached (`allow-cache-ms = 0`) and cached;
//! - reference: a hop to a blocking thread and back, which every uncached plugin decision pays.

use std::sync::Arc;
use std::time::Instant;

use busbar::action::Scope;
use busbar::broadcast::Recorder;
use busbar::bus::Bus;
use busbar::event::Event;
use busbar::hub::{Authenticated, Authenticator, ClaimsAuthorizer, ConnectRequest, Identity, ScopeAuthorizer, TokenOnly, TokenVerifier, auth};
use busbar::plugins::{Manifest, PluginAccess, Registry, Runtime, RuntimeConfig};

const SECRET: &str = "bench-secret";

/// The example policy plugin, holding both roles in a registry of its own, fed the events that
/// make `alice` a member of `ws-1` with an issue task `t-1`.
fn original_policy(allow_cache_ms: u32) -> (Arc<Registry>, PluginAccess) {
    let runtime = Arc::new(Runtime::new(RuntimeConfig { cache_dir: Some("bench-cache".into()), ..RuntimeConfig::default() }).expect("a runtime"));
    let dir = format!("{}/policy", busbar::BUILT_PLUGINS_DIR);
    let mut manifest = Manifest::from_file(std::path::Path::new(&format!("{dir}/original-policy.toml")), "original-policy").expect("its manifest");
    manifest.config.insert("jwt-secret".into(), SECRET.into());
    manifest.config.insert("allow-cache-ms".into(), allow_cache_ms.to_string());
    let bytes = std::fs::read(format!("{dir}/original-policy.wasm")).expect("the built plugin");
    let plugin = runtime.load(&bytes, manifest).expect("loading original-policy");
    let bus = Arc::new(Bus::new(Arc::new(Recorder::default())));
    let registry = Arc::new(Registry::new(runtime, bus.clone()));
    registry.activate(plugin).expect("activating it");
    let feed = [
        Event::new("member:added", "ws-1").with_payload(r#"{"member": {"user_id": "alice"}}"#),
        Event::new("task:queued", "ws-1").with_payload(r#"{"task_id": "t-1", "issue_id": "i-1"}"#),
    ];
    for event in feed {
        bus.publish(event.expect("a valid event"));
    }
    let access = PluginAccess::new(registry.roles().clone(), Arc::new(ClaimsAuthorizer), Arc::new(TokenOnly));
    (registry, access)
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let (rounds, per_round) = if measuring { (100, 500) } else { (2, 5) };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let (_uncached_registry, uncached) = original_policy(0);
    let (_cached_registry, cached) = original_policy(60_000);

    let exp = busbar::event::now_ms() / 1000 + 3600;
    let claims = auth::Claims { sub: "alice".into(), exp, workspaces: vec!["ws-1".into()], grants: [("ws-1".to_string(), auth::Grants { task: vec!["t-1".into()], chat: vec![] })].into() };
    let verifier = TokenVerifier::new(SECRET.as_bytes());
    let busbar_token = auth::mint(SECRET.as_bytes(), &claims);
    let original_token = {
        let claims = serde_json::json!({"sub": "alice", "exp": exp, "email": "alice@example.com"});
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()))
            .expect("signing")
    };
    let request = ConnectRequest {
        headers: vec![("cookie".into(), format!("multica_auth={original_token}"))],
        query: vec![("workspace_id".into(), "ws-1".into())],
        auth_frame: None,
    };
    let who: Identity = verifier.identify(&busbar_token, "ws-1").expect("a valid token");
    let task = Scope::task("ws-1", "t-1");
    let grants = ClaimsAuthorizer;

    type Variant<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let variants: Vec<Variant> = vec![
        ("connect: busbar JWT check", Box::new(|| assert!(verifier.identify(&busbar_token, "ws-1").is_ok()))),
        (
            "connect: original-policy",
            Box::new(|| {
                let answer = rt.block_on(uncached.authenticate(&request).expect("a holder"));
                assert!(matches!(answer, Ok(Authenticated::Identified(_))), "{answer:?}");
            }),
        ),
        ("subscribe: busbar grants", Box::new(|| assert!(rt.block_on(grants.authorize(&who, &task)).expect("decided")))),
        ("subscribe: plugin, uncached", Box::new(|| assert!(rt.block_on(uncached.authorize(&who, &task)).expect("decided")))),
        ("subscribe: plugin, cached", Box::new(|| assert!(rt.block_on(cached.authorize(&who, &task)).expect("decided")))),
        // What every uncached plugin decision pays before the guest runs: the hop to a blocking thread.
        ("reference: blocking-thread hop", Box::new(|| rt.block_on(async { tokio::task::spawn_blocking(|| ()).await }).expect("joined"))),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..=rounds {
        for k in 0..variants.len() {
            let i = (k + round) % variants.len();
            for _ in 0..per_round {
                let started = Instant::now();
                (variants[i].1)();
                if round > 0 {
                    samples[i].push(started.elapsed().as_secs_f64() * 1e6);
                }
            }
        }
    }
    println!("policy: one decision, {rounds} alternating rounds of {per_round}");
    let mut p50 = Vec::new();
    for ((name, _), mut times) in variants.iter().zip(samples) {
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        p50.push(at(0.5));
        println!("  {name:<30} p50 {:>8.2} us  p99 {:>8.2} us", at(0.5), at(0.99));
    }
    println!("  ratios of p50: connect plugin/busbar {:.1}x; subscribe uncached/grants {:.1}x, cached/grants {:.1}x", p50[1] / p50[0], p50[3] / p50[2], p50[4] / p50[2]);
}

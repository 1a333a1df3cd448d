//! busbar's `bench-router` plugin (plugins/rust/testing/bench-router) as an Extism plugin:
//! `bench-logic::route` (parse a JSON payload, route it, return one message), for measuring
//! Extism's calls against busbar's on the same work (bench/extism-peer, issue #18).
//!
//! One export, `route`. Its input is the event in one buffer, the cheapest encoding Extism
//! offers (raw bytes, no serde format): the workspace id, the event type and the payload, the
//! first two each ended by a newline:
//!
//! ```text
//! ws-1\nissue:updated\n{"id":"iss-1",...}
//! ```
//!
//! Its output is the routed message the same way: one byte for the target (`w` workspace, `t`
//! task, `u` user), the target's id, a newline, the event type, a newline and the payload. A
//! payload that `route` rejects is an error (Extism's error, with the message).

use bench_logic::Route;
use extism_pdk::{FnResult, plugin_fn};

#[plugin_fn]
pub fn route(input: Vec<u8>) -> FnResult<Vec<u8>> {
    let (workspace_id, rest) = split_line(&input)?;
    let (event_type, payload) = split_line(rest)?;
    let (workspace_id, event_type, payload) = (text(workspace_id)?, text(event_type)?, text(payload)?);
    let routed = bench_logic::route(workspace_id, payload).map_err(extism_pdk::Error::msg)?;
    let (kind, id) = match &routed.route {
        Route::Workspace(id) => (b'w', id),
        Route::Task(id) => (b't', id),
        Route::User(id) => (b'u', id),
    };
    let mut out = Vec::with_capacity(1 + id.len() + 1 + event_type.len() + 1 + routed.payload.len());
    out.push(kind);
    out.extend_from_slice(id.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(event_type.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(routed.payload.as_bytes());
    Ok(out)
}

fn text(bytes: &[u8]) -> Result<&str, extism_pdk::Error> {
    std::str::from_utf8(bytes).map_err(|e| extism_pdk::Error::msg(e.to_string()))
}

/// The bytes before the first newline and those after it.
fn split_line(bytes: &[u8]) -> Result<(&[u8], &[u8]), extism_pdk::Error> {
    let at = bytes.iter().position(|&b| b == b'\n').ok_or_else(|| extism_pdk::Error::msg("expected a newline-ended header"))?;
    Ok((&bytes[..at], &bytes[at + 1..]))
}

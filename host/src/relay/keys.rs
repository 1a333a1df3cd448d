//! Where relayed frames live in Redis, and their wire forms.
//!
//! This module owns `Channel` (a scope, or everyone, as Redis names it: the keys of its meta
//! hash, stream and high-water marks, and its pub/sub channel), the Lua script that publishes a
//! frame, and the text forms of what goes through Redis (a frame's JSON, a pub/sub message).
//! Names percent-escape the characters that delimit them. It must not talk to Redis.

use crate::action::{Scope, ScopeKind};
use crate::broadcast::{Frame, Reach};
use crate::event::Json;

use super::HistoryLimits;
use super::sequencer::Entry;

/// The Lua script run for every relayed frame: position, history, notification, in one step.
/// `seen` holds the highest `n` of this origin appended to the scope: a frame at or below it is a
/// retry of one already appended, and is skipped. Returns `{epoch, offset, duplicate}`; for a
/// duplicate, `offset` is the scope's current one (the frame's own is at or before it).
pub(super) const PUBLISH: &str = r#"
local meta, stream, seen = KEYS[1], KEYS[2], KEYS[3]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', stream, seen)
  redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
end
if tonumber(redis.call('GET', seen) or '0') >= tonumber(ARGV[5]) then
  return {epoch, tonumber(redis.call('HGET', meta, 'offset')), 1}
end
local offset = redis.call('HINCRBY', meta, 'offset', 1)
redis.call('XADD', stream, 'MAXLEN', ARGV[2], offset .. '-0', 'o', ARGV[4], 'n', ARGV[5], 't', ARGV[9], 'x', ARGV[6], 'f', ARGV[7])
redis.call('SET', seen, ARGV[5], 'PX', ARGV[3])
redis.call('PEXPIRE', meta, ARGV[3])
redis.call('PEXPIRE', stream, ARGV[3])
redis.call('PUBLISH', ARGV[8], epoch .. '\n' .. offset .. '\n' .. ARGV[4] .. '\n' .. ARGV[5] .. '\n' .. ARGV[9] .. '\n' .. ARGV[6] .. '\n' .. ARGV[7])
return {epoch, offset, 0}
"#;

/// Redis keys and channel of a scope (`everyone` is a scope too). The braces keep a scope's keys
/// in one cluster slot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Channel {
    Scope(Scope),
    Everyone,
}

impl Channel {
    /// `workspace:<id>`, `user:<id>`, `task:<workspace>:<id>`, `chat:<workspace>:<id>` or
    /// `everyone`, each id with `%`, `:`, `{` and `}` percent-escaped (so names parse back, and
    /// stay inside the braces of a cluster hash tag).
    pub(super) fn name(&self) -> String {
        match self {
            Channel::Scope(scope) => match scope.kind {
                ScopeKind::Task | ScopeKind::Chat => {
                    format!("{}:{}:{}", scope.kind, escape(&scope.workspace), escape(&scope.id))
                }
                ScopeKind::Workspace | ScopeKind::User => format!("{}:{}", scope.kind, escape(&scope.id)),
            },
            Channel::Everyone => "everyone".to_string(),
        }
    }
    pub(super) fn meta(&self) -> String {
        format!("busbar:{{{}}}:meta", self.name())
    }
    pub(super) fn stream(&self) -> String {
        format!("busbar:{{{}}}:stream", self.name())
    }
    pub(super) fn channel(&self) -> String {
        format!("busbar:{{{}}}", self.name())
    }
    /// The high-water mark of `origin`'s frames in this scope.
    pub(super) fn seen(&self, origin: &str) -> String {
        format!("busbar:{{{}}}:seen:{origin}", self.name())
    }
    pub(super) fn from_channel(channel: &str) -> Option<Channel> {
        let name = channel.strip_prefix("busbar:{")?.strip_suffix('}')?;
        if name == "everyone" {
            return Some(Channel::Everyone);
        }
        let (kind, rest) = name.split_once(':')?;
        let kind: ScopeKind = kind.parse().ok()?;
        let (workspace, id) = match kind {
            ScopeKind::Task | ScopeKind::Chat => rest.split_once(':')?,
            ScopeKind::Workspace | ScopeKind::User => ("", rest),
        };
        Some(Channel::Scope(Scope::of(kind, unescape(workspace)?, unescape(id)?)))
    }
    pub(super) fn history(&self, limits: &HistoryLimits) -> usize {
        match self {
            Channel::Everyone => limits.everyone,
            Channel::Scope(s) => match s.kind {
                ScopeKind::Workspace => limits.workspace,
                ScopeKind::User => limits.user,
                ScopeKind::Task => limits.task,
                ScopeKind::Chat => limits.chat,
            },
        }
        .max(1)
    }
}

/// A frame as relayed: the same fields as `broadcast::Frame`.
#[derive(serde::Deserialize)]
pub(super) struct WireFrame {
    #[serde(rename = "type")]
    event_type: String,
    payload: Json,
    actor_id: String,
    actor_type: String,
    event_id: String,
    #[serde(default)]
    workspace_id: String,
}

impl WireFrame {
    pub(super) fn into_frame(self) -> Frame {
        Frame {
            event_type: self.event_type,
            payload: self.payload,
            actor_id: self.actor_id,
            actor_type: self.actor_type,
            event_id: self.event_id,
            workspace_id: self.workspace_id,
        }
    }
}

pub(super) fn parse_message(payload: &[u8]) -> Option<Entry> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(7, '\n');
    let epoch = parts.next()?.to_string();
    let offset = parts.next()?.parse().ok()?;
    let origin = parts.next()?.to_string();
    let n = parts.next()?.parse().ok()?;
    let at_ms = parts.next()?.parse().ok()?;
    let reach = Reach::decode(parts.next()?);
    let frame = parts.next()?.to_string();
    Some(Entry { epoch, offset, origin, n, at_ms, reach, frame })
}

/// Percent-escapes the characters that delimit a scope's name in keys and channels.
fn escape(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            other => out.push(other),
        }
    }
    out
}

fn unescape(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 3)?;
        out.push(match code {
            "25" => '%',
            "3A" => ':',
            "7B" => '{',
            "7D" => '}',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

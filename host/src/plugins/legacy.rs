//! Components built against contract 0.1.0: their bindings, imports and values.
//!
//! 0.1.0 (wit/0.1.0/, frozen) differs from the current contract in one thing: `handle` takes the
//! whole event as a record, copied into the guest before the call. This module owns the
//! bindings of that version, its `log`/`config`/`kv` imports (the current ones, under the old
//! names), and the conversions of its values: the event in, the actions out (the same shapes
//! as today's). It must not hold any behaviour of its own: a 0.1.0 component is called,
//! bounded and checked exactly as a 0.2.0 one, by `plugin`.

use wasmtime::Result as WasmResult;
use wasmtime::component::{HasSelf, Linker};

use super::host::PluginState;
use super::host::bindings::busbar::plugin as current;
use crate::event::Event;

pub(crate) use super::host::CONTRACT_0_1 as CONTRACT;

/// The bindings of contract 0.1.0's `listener` world.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "listener",
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

/// The bindings of contract 0.1.0's `policy` world, for its `policy-types` import (the policy
/// exports' values have the same shapes in both versions, so `plugin::decide` calls them alike).
mod policy_bindings {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "policy",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "busbar:plugin/types": crate::plugins::legacy::bindings::busbar::plugin::types,
            "busbar:plugin/log": crate::plugins::legacy::bindings::busbar::plugin::log,
            "busbar:plugin/config": crate::plugins::legacy::bindings::busbar::plugin::config,
            "busbar:plugin/kv": crate::plugins::legacy::bindings::busbar::plugin::kv,
        },
    });
}

use bindings::busbar::plugin::{config, kv, log, types};

/// Adds contract 0.1.0's imports to a linker that has the current ones.
pub(crate) fn add_to_linker(linker: &mut Linker<PluginState>) -> WasmResult<()> {
    bindings::Listener::add_to_linker::<PluginState, HasSelf<PluginState>>(linker, |s| s)?;
    policy_bindings::busbar::plugin::policy_types::add_to_linker::<PluginState, HasSelf<PluginState>>(linker, |s| s)
}

/// The whole event, as 0.1.0's `handle` takes it.
pub(crate) fn event(event: &Event) -> types::Event<'_> {
    types::Event {
        id: &event.id,
        event_type: &event.event_type,
        workspace_id: &event.workspace_id,
        actor_type: &event.actor_type,
        actor_id: &event.actor_id,
        payload: event.payload.as_str(),
        task_id: event.task_id.as_deref(),
        chat_session_id: event.chat_session_id.as_deref(),
        published_at_ms: event.published_at_ms,
    }
}

/// 0.1.0's actions as today's (the same shapes: nothing is checked here, `output` does that).
pub(crate) fn actions(actions: Vec<types::Action>) -> Vec<current::types::Action> {
    actions.into_iter().map(action).collect()
}

fn action(action: types::Action) -> current::types::Action {
    use current::types as now;
    match action {
        types::Action::Send(m) => now::Action::Send(now::Message { target: target(m.target), event_type: m.event_type, payload: m.payload }),
        types::Action::Publish(f) => now::Action::Publish(now::FollowUp {
            event_type: f.event_type,
            workspace_id: f.workspace_id,
            actor_type: f.actor_type,
            actor_id: f.actor_id,
            payload: f.payload,
            task_id: f.task_id,
            chat_session_id: f.chat_session_id,
        }),
    }
}

fn target(target: types::Target) -> current::types::Target {
    use current::types as now;
    match target {
        types::Target::Workspace(id) => now::Target::Workspace(id),
        types::Target::User(u) => now::Target::User(now::UserTarget { user_id: u.user_id, exclude_workspace: u.exclude_workspace }),
        types::Target::Scope(s) => now::Target::Scope(now::Scope {
            kind: match s.kind {
                types::ScopeKind::Workspace => now::ScopeKind::Workspace,
                types::ScopeKind::User => now::ScopeKind::User,
                types::ScopeKind::Task => now::ScopeKind::Task,
                types::ScopeKind::Chat => now::ScopeKind::Chat,
            },
            id: s.id,
        }),
        types::Target::Everyone => now::Target::Everyone,
    }
}

impl types::Host for PluginState {}

impl policy_bindings::busbar::plugin::policy_types::Host for PluginState {}

impl log::Host for PluginState {
    fn write(&mut self, level: types::Level, message: String) {
        let level = match level {
            types::Level::Trace => current::types::Level::Trace,
            types::Level::Debug => current::types::Level::Debug,
            types::Level::Info => current::types::Level::Info,
            types::Level::Warn => current::types::Level::Warn,
            types::Level::Error => current::types::Level::Error,
        };
        current::log::Host::write(self, level, message)
    }
}

impl config::Host for PluginState {
    fn get(&mut self, key: String) -> Option<String> {
        current::config::Host::get(self, key)
    }

    fn keys(&mut self) -> Vec<String> {
        current::config::Host::keys(self)
    }
}

impl kv::Host for PluginState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        current::kv::Host::get(self, key)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        current::kv::Host::set(self, key, value)
    }

    fn delete(&mut self, key: String) -> bool {
        current::kv::Host::delete(self, key)
    }
}

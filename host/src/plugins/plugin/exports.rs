//! Where a component's exports are, and how its listener exports are called in either contract
//! version.
//!
//! This module owns `Exports` (found once at link time: the `listener` world's, in 0.2.0 or
//! 0.1.0 shape, and each policy export) and `ListenerExports`, one instance's listener functions.
//! A 0.2.0 `handle` is lent the event (`host::lend`); a 0.1.0 `handle` gets it copied whole, and
//! its actions are converted to today's (`legacy`). Both return the same values, so `Plugin`
//! checks and applies them on one path. It must not decide anything about a call's outcome.

use wasmtime::Store;
use wasmtime::component::{ComponentExportIndex, Instance, InstancePre};

use crate::event::Event;
use crate::plugins::host::{self, PluginState, bindings};
use crate::plugins::legacy;
use crate::plugins::lent;
use crate::plugins::roles::Role;

use bindings::busbar::plugin::types as wit;

/// Where a component's exports are, found once at link time: the `listener` world's (when it
/// has both), and each policy export it has.
pub(in crate::plugins) struct Exports {
    /// The contract version the component was built against.
    pub contract: &'static str,
    pub listener: Option<ListenerIndices>,
    pub authenticate: Option<ComponentExportIndex>,
    pub authorize: Option<ComponentExportIndex>,
}

impl Exports {
    pub(super) fn of(&self, role: Role) -> Option<&ComponentExportIndex> {
        match role {
            Role::Authenticator => self.authenticate.as_ref(),
            Role::Authorizer => self.authorize.as_ref(),
        }
    }
}

/// The `listener` exports of a component, in the contract version it was built against.
pub(in crate::plugins) enum ListenerIndices {
    /// 0.2.0: `handle` borrows the event.
    Lent(bindings::ListenerIndices),
    /// 0.1.0: `handle` takes a copy of the whole event.
    Copied(legacy::bindings::ListenerIndices),
}

impl ListenerIndices {
    /// The component's listener exports, checked against 0.2.0, or else against 0.1.0 when it
    /// was built against that; the error says what does not match the version it was built for.
    pub(in crate::plugins) fn new(pre: &InstancePre<PluginState>, built_for_0_1: bool) -> wasmtime::Result<ListenerIndices> {
        if built_for_0_1 {
            return legacy::bindings::ListenerIndices::new(pre).map(ListenerIndices::Copied);
        }
        match bindings::ListenerIndices::new(pre) {
            Ok(lent) => Ok(ListenerIndices::Lent(lent)),
            // A component that imports no busbar interface says nothing of its version.
            Err(current) => legacy::bindings::ListenerIndices::new(pre).map(ListenerIndices::Copied).map_err(|_| current),
        }
    }

    /// The contract version these exports have.
    pub(in crate::plugins) fn contract(&self) -> &'static str {
        match self {
            ListenerIndices::Lent(_) => host::CONTRACT,
            ListenerIndices::Copied(_) => legacy::CONTRACT,
        }
    }

    pub(super) fn load(&self, store: &mut Store<PluginState>, instance: &Instance) -> wasmtime::Result<ListenerExports> {
        Ok(match self {
            ListenerIndices::Lent(indices) => ListenerExports::Lent(indices.load(store, instance)?),
            ListenerIndices::Copied(indices) => ListenerExports::Copied(indices.load(store, instance)?),
        })
    }
}

/// One instance's listener functions.
pub(super) enum ListenerExports {
    Lent(bindings::Listener),
    Copied(legacy::bindings::Listener),
}

impl ListenerExports {
    pub(super) fn subscriptions(&self, store: &mut Store<PluginState>) -> wasmtime::Result<Vec<String>> {
        match self {
            ListenerExports::Lent(listener) => listener.call_subscriptions(store),
            ListenerExports::Copied(listener) => listener.call_subscriptions(store),
        }
    }

    pub(super) fn handle(&self, store: &mut Store<PluginState>, event: &Event) -> wasmtime::Result<Result<Vec<wit::Action>, String>> {
        match self {
            ListenerExports::Lent(listener) => host::lend(store, event, |store| listener.call_handle(store, lent::borrowed())),
            ListenerExports::Copied(listener) => Ok(listener.call_handle(store, legacy::event(event))?.map(legacy::actions)),
        }
    }
}

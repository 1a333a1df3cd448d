//! Hostile test plugin: keeps the handle of the event it was lent and reads through it in the
//! next call (`keep:reuse`), or in `subscriptions`-free ways the SDK's lifetimes forbid, by
//! using the raw bindings of contract 0.2.0. busbar must never let it read any event but the one
//! being handled: the stale handle traps, or (if the component model reused the slot) names the
//! current event.

use std::sync::atomic::{AtomicU32, Ordering};

mod bindings {
    busbar_plugin_sdk::__private::wit_bindgen::generate!({
        path: "../../../../wit",
        world: "listener",
        runtime_path: "busbar_plugin_sdk::__private::wit_bindgen::rt",
    });
}

use bindings::busbar::plugin::types::{Action, Event, Message, Target};

/// The handle of the event lent in the previous call (0: none yet).
static KEPT: AtomicU32 = AtomicU32::new(0);

struct Keeper;

impl bindings::Guest for Keeper {
    fn subscriptions() -> Vec<String> {
        vec!["keep:*".to_string()]
    }

    fn handle(event: &Event) -> Result<Vec<Action>, String> {
        let kept = KEPT.swap(event.handle(), Ordering::Relaxed);
        if event.event_type() != "keep:reuse" || kept == 0 {
            return Ok(Vec::new());
        }
        // SAFETY (for the guest): deliberately wrong; the host must refuse or contain it.
        let stale = unsafe { Event::from_handle(kept) };
        let payload = stale.payload();
        std::mem::forget(stale); // dropping it would drop a borrow
        let message = Message { target: Target::Workspace(event.workspace_id()), event_type: "keep:read".into(), payload };
        Ok(vec![Action::Send(message)])
    }
}

bindings::export!(Keeper with_types_in bindings);

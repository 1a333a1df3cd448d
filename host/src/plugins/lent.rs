//! The event a contract-0.2.0 `handle` call is lent, and the `event` resource's methods.
//!
//! This module owns `Lent`, the slot in each store that points at the event being handled for
//! exactly the length of one call (`host::lend` fills it and empties it when the call returns or
//! unwinds), `LentEvent`, the type the bindings give the `event` resource, and the resource's
//! methods, linked by hand rather than through the bindings so that each hands wasmtime the
//! event's own text: the field is copied once, straight into the guest, and only when the guest
//! asks for it. The guest holds only a `borrow`, which the component model ends with the call,
//! so nothing it keeps can reach an event after that. It must not decide anything about calls.

use std::ptr::NonNull;

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, LinkerInstance, Resource, ResourceType};

use crate::event::Event;

/// The type the bindings give the `event` resource: a marker, since a store lends at most one
/// event at a time and the resource's methods read it from `Lent`. `pub` because the generated
/// bindings re-export it (they are crate-private themselves).
#[allow(unreachable_pub)]
pub struct LentEvent;

/// The event lent to the call in progress, if any.
#[derive(Default)]
pub(crate) struct Lent(Option<NonNull<Event>>);

// SAFETY: the pointer is set only by `host::lend`, which keeps the `&Event` it came from
// borrowed (and `Event` is `Sync`) until it has emptied the slot again.
unsafe impl Send for Lent {}

impl Lent {
    /// Lends `event`.
    ///
    /// # Safety
    /// The caller must `clear` the slot before its borrow of `event` ends (`host::lend` does, on
    /// return and on unwind).
    pub(crate) unsafe fn set(&mut self, event: &Event) {
        self.0 = Some(NonNull::from(event));
    }

    /// Takes the event back.
    pub(crate) fn clear(&mut self) {
        self.0 = None;
    }

    /// `read` of the lent event, or the default while none is lent (a guest cannot hold an
    /// event outside `handle`, so no guest sees that).
    ///
    /// # Safety
    /// What `read` returns may borrow the event for any `'a` the caller picks: the caller must
    /// drop it before the host call it serves returns (the event stays lent until `handle` does).
    unsafe fn read<'a, T: Default + 'a>(&self, read: impl FnOnce(&'a Event) -> T) -> T {
        // SAFETY: between `set` and `clear` the event is borrowed by `host::lend`'s caller, for
        // longer than any host call the guest makes during `handle`.
        self.0.map(|event| read(unsafe { event.as_ref() })).unwrap_or_default()
    }
}

/// The interface that declares the resource, in the contract version that lends events.
const TYPES: &str = "busbar:plugin/types@0.2.0";

/// Links the `event` resource and its methods. Each method returns a field of the lent event
/// as a reference, which wasmtime copies into the guest before the host call returns: the
/// reference never outlives the call, so the `'static` its type claims is never relied on.
pub(crate) fn add_to_linker<T: 'static>(linker: &mut Linker<T>, lent: fn(&T) -> &Lent) -> wasmtime::Result<()> {
    let mut types = linker.instance(TYPES)?;
    // Only borrows are handed out; ending a borrow (the guest drops it before `handle` returns)
    // calls no destructor.
    types.resource("event", ResourceType::host::<LentEvent>(), |_, _| Ok(()))?;
    let text = |types: &mut LinkerInstance<'_, T>, method: &str, field: fn(&'static Event) -> &'static str| {
        types.func_wrap(&format!("[method]event.{method}"), move |store: StoreContextMut<'_, T>, (_,): (Resource<LentEvent>,)| {
            // SAFETY: wasmtime copies the returned text into the guest before this call returns.
            Ok((unsafe { lent(store.data()).read(field) },))
        })
    };
    text(&mut types, "id", |e| &e.id)?;
    text(&mut types, "event-type", |e| &e.event_type)?;
    text(&mut types, "workspace-id", |e| &e.workspace_id)?;
    text(&mut types, "actor-type", |e| &e.actor_type)?;
    text(&mut types, "actor-id", |e| &e.actor_id)?;
    text(&mut types, "payload", |e| e.payload.as_str())?;
    let hint = |types: &mut LinkerInstance<'_, T>, method: &str, field: fn(&'static Event) -> Option<&'static str>| {
        types.func_wrap(&format!("[method]event.{method}"), move |store: StoreContextMut<'_, T>, (_,): (Resource<LentEvent>,)| {
            // SAFETY: wasmtime copies the returned text into the guest before this call returns.
            Ok((unsafe { lent(store.data()).read(field) },))
        })
    };
    hint(&mut types, "task-id", |e| e.task_id.as_deref())?;
    hint(&mut types, "chat-session-id", |e| e.chat_session_id.as_deref())?;
    types.func_wrap("[method]event.published-at-ms", move |store: StoreContextMut<'_, T>, (_,): (Resource<LentEvent>,)| {
        // SAFETY: a `u64` borrows nothing.
        Ok((unsafe { lent(store.data()).read(|event| event.published_at_ms) },))
    })
}

/// The handle a 0.2.0 `handle` gets: a borrow, which the guest cannot keep past the call.
pub(crate) fn borrowed() -> Resource<LentEvent> {
    Resource::new_borrow(0)
}

//! The event a contract-0.2.0 `handle` call is lent: the slot that holds it during the call.
//!
//! This module owns `Lent`, the slot in each store that points at the event being handled for
//! exactly the length of one call (`host::lend` fills it and empties it when the call returns or
//! unwinds), and `LentEvent`, the type the bindings give the `event` resource. The guest holds
//! only a `borrow`, which the component model ends with the call, so nothing it keeps can reach
//! an event after that. It must not copy anything itself: the resource's methods (in `host`)
//! copy one field each, when the guest asks for it.

use std::ptr::NonNull;

use wasmtime::component::Resource;

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
    pub(crate) fn read<T: Default>(&self, read: impl FnOnce(&Event) -> T) -> T {
        // SAFETY: between `set` and `clear` the event is borrowed by `host::lend`'s caller.
        self.0.map(|event| read(unsafe { event.as_ref() })).unwrap_or_default()
    }
}

/// The handle a 0.2.0 `handle` gets: a borrow, which the guest cannot keep past the call.
pub(crate) fn borrowed() -> Resource<LentEvent> {
    Resource::new_borrow(0)
}

//! Hostile test plugin: recurses until the wasm stack overflows.

use busbar_plugin_sdk::{Action, Error, Event, Plugin, export};

struct Recurse;

#[inline(never)]
#[allow(unconditional_recursion)]
fn descend(depth: u64, frame: [u64; 16]) -> u64 {
    let next = std::hint::black_box([depth; 16]);
    descend(depth + 1, next) + frame[(depth % 16) as usize]
}

impl Plugin for Recurse {
    fn handle(event: &Event) -> Result<Vec<Action>, Error> {
        let n = descend(event.payload().len() as u64, [0; 16]);
        Err(Error::new(format!("unreachable: {n}")))
    }
}

export!(Recurse);

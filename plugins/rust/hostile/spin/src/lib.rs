//! Hostile test plugin: never returns. The host's per-call deadline must interrupt it.

use busbar_plugin_sdk::{Action, Error, Event, Plugin, export};

struct Spin;

impl Plugin for Spin {
    fn handle(event: &Event) -> Result<Vec<Action>, Error> {
        let mut n: u64 = event.payload().len() as u64;
        loop {
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

export!(Spin);

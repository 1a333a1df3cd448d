//! Does nothing and returns nothing: the floor of crossing into a component, for benchmarks.

use busbar_plugin_sdk::{Action, Error, Event, Plugin, export};

struct Noop;

impl Plugin for Noop {
    fn handle(_event: &Event) -> Result<Vec<Action>, Error> {
        Ok(Vec::new())
    }
}

export!(Noop);

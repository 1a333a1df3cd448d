//! Hostile test plugin: panics while the component is being instantiated (a static
//! constructor, run by the component's start function), before any export can be called.

use busbar_plugin_sdk::{Action, Error, Event, Plugin, export};

struct StartupPanic;

impl Plugin for StartupPanic {
    fn handle(_event: &Event) -> Result<Vec<Action>, Error> {
        Ok(vec![])
    }
}

export!(StartupPanic);

extern "C" fn explode() {
    panic!("panic during start-up");
}

#[used]
#[unsafe(link_section = ".init_array")]
static CONSTRUCTOR: extern "C" fn() = explode;

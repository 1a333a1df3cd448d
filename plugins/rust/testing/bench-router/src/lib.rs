//! The dispatch benchmark's plugin: `bench-logic::route` (parse a JSON payload, route it, return
//! one message) behind the listener contract. Compared with the same function called natively.

use bench_logic::Route;
use busbar_plugin_sdk::{Action, Error, Event, Plugin, Target, export};

struct BenchRouter;

impl Plugin for BenchRouter {
    fn handle(event: &Event) -> Result<Vec<Action>, Error> {
        let routed = bench_logic::route(event.workspace_id(), event.payload())?;
        let target = match routed.route {
            Route::Workspace(id) => Target::workspace(id),
            Route::Task(id) => Target::task(id),
            Route::User(id) => Target::user(id),
        };
        Ok(vec![Action::send(target, event.event_type(), routed.payload)])
    }
}

export!(BenchRouter);

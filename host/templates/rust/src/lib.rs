//! {{name}}: a busbar listener plugin. It forwards `issue:*` events to their workspace, under a
//! type prefixed with the `prefix` config value.

use busbar_plugin_sdk::{Action, Error, Event, Plugin, Target, config, export};

struct {{type}};

impl Plugin for {{type}} {
    fn subscriptions() -> Vec<String> {
        vec!["issue:*".into()]
    }

    fn handle(event: &Event) -> Result<Vec<Action>, Error> {
        let prefix = config::get("prefix").unwrap_or_default();
        let event_type = format!("{prefix}{}", event.event_type());
        Ok(vec![Action::send(Target::workspace(event.workspace_id()), event_type, event.payload())])
    }
}

export!({{type}});

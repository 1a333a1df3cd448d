//! The Rust SDK for busbar listener plugins.
//!
//! It owns the bindings generated from the contract in `wit/` and gives plugin authors typed
//! helpers on top, so that a plugin is one [`Plugin`] impl plus one [`export!`]:
//!
//! ```no_run
//! use busbar_plugin_sdk::{export, Action, Error, Event, Plugin, Target};
//!
//! struct Echo;
//!
//! impl Plugin for Echo {
//!     fn subscriptions() -> Vec<String> {
//!         vec!["issue:*".into()]
//!     }
//!     fn handle(event: Event) -> Result<Vec<Action>, Error> {
//!         Ok(vec![event.forward(Target::workspace(&event.workspace_id))])
//!     }
//! }
//!
//! export!(Echo);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component busbar loads.
//!
//! The SDK must not grow a runtime of its own: everything here is a thin, allocation-light
//! wrapper over the generated bindings, so that a plugin costs what its own logic costs.

extern crate self as busbar_plugin_sdk;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The bindings generated from `wit/busbar-plugin.wit`. Authors rarely need them directly.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "listener",
        pub_export_macro: true,
        export_macro_name: "__export_listener",
        default_bindings_module: "busbar_plugin_sdk::bindings",
        runtime_path: "busbar_plugin_sdk::__private::wit_bindgen::rt",
    });
}

pub use bindings::busbar::plugin::types::{
    Action, Event, FollowUp, Level, Message, Scope, ScopeKind, Target, UserTarget,
};

/// What a plugin implements. Both functions run inside the plugin's sandbox.
pub trait Plugin {
    /// The event types this plugin wants: exact types (`issue:created`), prefixes (`task:*`),
    /// or `*` for all. Called once at load; the manifest's `subscriptions` overrides it.
    fn subscriptions() -> Vec<String> {
        vec!["*".to_string()]
    }

    /// Handle one event and say what to do about it. An `Err` is logged and counted by the
    /// host; none of the actions of a failed call are applied.
    fn handle(event: Event) -> Result<Vec<Action>, Error>;
}

/// Exports a [`Plugin`] implementation as the component's `listener` world.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        const _: () = {
            struct BusbarListener;

            impl $crate::bindings::Guest for BusbarListener {
                fn subscriptions() -> ::std::vec::Vec<::std::string::String> {
                    <$plugin as $crate::Plugin>::subscriptions()
                }

                fn handle(
                    event: $crate::Event,
                ) -> ::std::result::Result<::std::vec::Vec<$crate::Action>, ::std::string::String>
                {
                    <$plugin as $crate::Plugin>::handle(event).map_err(|e| e.to_string())
                }
            }

            $crate::bindings::__export_listener!(BusbarListener with_types_in $crate::bindings);
        };
    };
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}

/// serde and serde_json, re-exported for plugins that only need `serde_json` (`json!`,
/// `Value`). To derive on your own payload types, depend on serde itself (`serde = { version =
/// "1", features = ["derive"] }`, as `busbar plugin new` sets up) and derive as usual:
///
/// ```
/// use busbar_plugin_sdk::{Error, Event};
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct IssueCreated {
///     title: String,
/// }
///
/// fn title(event: &Event) -> Result<String, Error> {
///     let created: IssueCreated = event.payload_as()?;
///     Ok(created.title)
/// }
/// ```
pub use serde;
pub use serde_json;

/// The error a plugin returns: a message for the host's log and the listener's outcome.
///
/// Strings and the errors a plugin commonly meets (serde, I/O, parsing) convert into it, so `?`
/// works throughout; anything else converts with `Error::new(e.to_string())`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    pub fn new(message: impl Into<String>) -> Error {
        Error(message.into())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! error_from_display {
    ($($source:ty),* $(,)?) => {
        $(impl From<$source> for Error {
            fn from(e: $source) -> Error {
                Error(e.to_string())
            }
        })*
    };
}

error_from_display!(
    serde_json::Error,
    std::io::Error,
    std::str::Utf8Error,
    std::string::FromUtf8Error,
    std::num::ParseIntError,
    std::num::ParseFloatError,
    std::fmt::Error,
);

impl From<String> for Error {
    fn from(message: String) -> Error {
        Error(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Error {
        Error(message.to_string())
    }
}

impl Event {
    /// Parses the payload into the author's own type.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_str(&self.payload)
            .map_err(|e| Error(format!("{} payload: {e}", self.event_type)))
    }

    /// A message carrying this event's type and payload, unchanged byte for byte, to `target`.
    pub fn forward(&self, target: Target) -> Action {
        Action::Send(Message {
            target,
            event_type: self.event_type.clone(),
            payload: self.payload.clone(),
        })
    }

    /// Like [`Event::forward`], but with the top-level `keys` removed from an object payload.
    /// The payload is forwarded unchanged (byte for byte) when none of the keys is present.
    pub fn forward_without(&self, target: Target, keys: &[&str]) -> Result<Action, Error> {
        if keys.is_empty() {
            return Ok(self.forward(target));
        }
        let mut payload = match self.payload_as::<serde_json::Value>()? {
            serde_json::Value::Object(map) => map,
            _ => return Ok(self.forward(target)),
        };
        let before = payload.len();
        for key in keys {
            payload.remove(*key);
        }
        if payload.len() == before {
            return Ok(self.forward(target));
        }
        Action::send_json(target, self.event_type.clone(), &payload)
    }

    /// A follow-up event of type `event_type` in this event's workspace, by the same actor,
    /// with the same task and chat hints.
    pub fn follow_up<T: Serialize + ?Sized>(
        &self,
        event_type: impl Into<String>,
        payload: &T,
    ) -> Result<Action, Error> {
        Ok(Action::Publish(FollowUp {
            event_type: event_type.into(),
            workspace_id: self.workspace_id.clone(),
            actor_type: self.actor_type.clone(),
            actor_id: self.actor_id.clone(),
            payload: serde_json::to_string(payload)?,
            task_id: self.task_id.clone(),
            chat_session_id: self.chat_session_id.clone(),
        }))
    }
}

impl Action {
    /// A message whose payload is already JSON text.
    pub fn send(target: Target, event_type: impl Into<String>, payload: impl Into<String>) -> Action {
        Action::Send(Message {
            target,
            event_type: event_type.into(),
            payload: payload.into(),
        })
    }

    /// A message whose payload is `payload` serialized to JSON.
    pub fn send_json<T: Serialize + ?Sized>(
        target: Target,
        event_type: impl Into<String>,
        payload: &T,
    ) -> Result<Action, Error> {
        Ok(Action::send(target, event_type, serde_json::to_string(payload)?))
    }
}

impl Target {
    /// Every connection of a workspace.
    pub fn workspace(id: impl Into<String>) -> Target {
        Target::Workspace(id.into())
    }

    /// Every connection of a user.
    pub fn user(id: impl Into<String>) -> Target {
        Target::User(UserTarget {
            user_id: id.into(),
            exclude_workspace: None,
        })
    }

    /// Every connection of a user except those to `workspace`.
    pub fn user_except(id: impl Into<String>, workspace: impl Into<String>) -> Target {
        Target::User(UserTarget {
            user_id: id.into(),
            exclude_workspace: Some(workspace.into()),
        })
    }

    /// Connections subscribed to a task.
    pub fn task(id: impl Into<String>) -> Target {
        Target::Scope(Scope {
            kind: ScopeKind::Task,
            id: id.into(),
        })
    }

    /// Connections subscribed to a chat session.
    pub fn chat(id: impl Into<String>) -> Target {
        Target::Scope(Scope {
            kind: ScopeKind::Chat,
            id: id.into(),
        })
    }
}

/// Logging into the host's log, under the plugin's name.
pub mod log {
    use crate::bindings::busbar::plugin::log::write;
    use crate::Level;

    pub fn trace(message: impl AsRef<str>) {
        write(Level::Trace, message.as_ref());
    }
    pub fn debug(message: impl AsRef<str>) {
        write(Level::Debug, message.as_ref());
    }
    pub fn info(message: impl AsRef<str>) {
        write(Level::Info, message.as_ref());
    }
    pub fn warn(message: impl AsRef<str>) {
        write(Level::Warn, message.as_ref());
    }
    pub fn error(message: impl AsRef<str>) {
        write(Level::Error, message.as_ref());
    }
}

/// The plugin's `[config]` values from its manifest.
pub mod config {
    use crate::Error;
    use crate::bindings::busbar::plugin::config;

    /// The value of `key`, if the manifest sets it.
    pub fn get(key: &str) -> Option<String> {
        config::get(key)
    }

    /// The value of `key`, or an error naming the missing key.
    pub fn require(key: &str) -> Result<String, Error> {
        config::get(key).ok_or_else(|| Error::new(format!("config key `{key}` is not set")))
    }

    /// Every configured key, sorted.
    pub fn keys() -> Vec<String> {
        config::keys()
    }
}

/// The plugin's private key-value store, kept by the host across instances and reloads.
pub mod kv {
    use crate::Error;
    use crate::bindings::busbar::plugin::kv;
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    pub fn get(key: &str) -> Option<Vec<u8>> {
        kv::get(key)
    }

    pub fn set(key: &str, value: &[u8]) -> Result<(), Error> {
        kv::set(key, value).map_err(Error::from)
    }

    /// Removes `key`; returns whether it was present.
    pub fn delete(key: &str) -> bool {
        kv::delete(key)
    }

    /// The value under `key` parsed from JSON; `Ok(None)` when absent.
    pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, Error> {
        match kv::get(key) {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Stores `value` under `key` as JSON.
    pub fn set_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), Error> {
        set(key, &serde_json::to_vec(value)?)
    }
}

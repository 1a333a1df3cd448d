//! busbar: a WebAssembly-extensible event bus with realtime fan-out.
//!
//! Applications publish events on the [`bus::Bus`]; listener plugins (WebAssembly components,
//! see [`plugins`]) and native Rust listeners run synchronously, in registration order, for
//! each one; the messages they return leave through a [`broadcast::Broadcaster`].
//!
//! An event's journey, by module: [`event`] (what was published) → [`bus`] (who runs, in which
//! order, with which outcome) → [`plugins`] (the sandboxed call) → [`action`] (what the listener
//! asked for) → [`broadcast`] (who receives it). [`build`] turns a plugin's sources into a
//! component.

#![warn(unreachable_pub)]

/// For a fieldless enum whose variants have names (on the wire, in manifests, on the command
/// line), from one table: `ALL`, `as_str`, `from_name` and `Display`.
macro_rules! named_variants {
    ($ty:ident { $($variant:ident = $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: [$ty; [$($name),+].len()] = [$($ty::$variant),+];

            /// The variant's name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }

            /// The variant named `name`.
            pub fn from_name(name: &str) -> Option<$ty> {
                $ty::ALL.into_iter().find(|v| v.as_str() == name)
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub mod action;
pub mod api;
pub mod broadcast;
pub mod build;
pub mod bus;
pub mod config;
pub mod event;
pub mod hub;
pub mod plugins;
pub mod relay;
pub mod report;
pub mod server;
pub mod store;

pub use action::{Action, Scope, ScopeKind, Target};
pub use broadcast::{Broadcaster, Frame, Recorder};
pub use bus::{Bus, Listener, ListenerError, Outcome, PublishReport};
pub use event::Event;

/// The example plugins from `plugins/rust/examples`, compiled into busbar: what `busbar serve`
/// and `busbar dispatch` load when no plugin directory is given.
pub mod examples {
    /// `(name, component bytes, manifest text)`, sorted by name.
    pub const PLUGINS: &[(&str, &[u8], &str)] = include!(concat!(env!("OUT_DIR"), "/examples.rs"));

    /// Loads the example plugins into `runtime`, sorted by manifest order, then name.
    pub fn load(runtime: &crate::plugins::Runtime) -> Result<Vec<crate::plugins::Plugin>, crate::plugins::LoadError> {
        let mut plugins = Vec::new();
        for (name, wasm, manifest) in PLUGINS {
            let origin = format!("examples/{name}.toml");
            let manifest = crate::plugins::Manifest::parse(manifest, name, &origin, std::path::Path::new("."))?;
            plugins.push(runtime.load(wasm, manifest)?);
        }
        plugins.sort_by_key(|p| (p.manifest().order.unwrap_or(i64::MAX), p.name().to_string()));
        Ok(plugins)
    }
}

/// Where the build put every Rust plugin (`examples/`, `testing/`, `hostile/`), each as
/// `name.wasm` beside `name.toml`. For busbar's own tests and benchmarks.
#[doc(hidden)]
pub const BUILT_PLUGINS_DIR: &str = concat!(env!("OUT_DIR"), "/plugins");

//! A plugin version's policy calls: `authenticate` and `authorize`, through the same `admit`
//! and `enter` path as `handle` (deadline, budgets, quarantine, a failed instance dropped), and
//! the check at load that the exports its manifest's roles use have the contract's signatures.
//! What the hub makes of the answers is `access`'s business, not this module's.

use wasmtime::component::{ComponentExportIndex, Func};

use super::{Plugin, Warm};
use crate::bus::ListenerError;
use crate::plugins::error::LoadError;
use crate::plugins::host::policy_bindings::busbar::plugin::policy_types as pwit;
use crate::plugins::roles::Role;
use crate::plugins::text;
use crate::plugins::trips::Limit;

impl Plugin {
    /// Asks the plugin who a connection is (its `authenticate` export).
    pub(in crate::plugins) fn authenticate(&self, request: pwit::ConnectRequest<'_>) -> Result<pwit::Authentication, ListenerError> {
        let _room = self.admit()?;
        let answer = self.enter(|warm| {
            let func = Self::export(warm, self.exports.authenticate.as_ref(), "authenticate")?;
            let (answer,) = func.typed::<(pwit::ConnectRequest<'_>,), (pwit::Authentication,)>(&warm.store)?.call(&mut warm.store, (request,))?;
            Ok(answer)
        })?;
        self.health.record_success(self.name());
        Ok(answer)
    }

    /// Asks the plugin whether `who` may join `room` (its `authorize` export). The plugin's own
    /// "could not decide" is the inner `Err`, cut to `limits.max-error-bytes`.
    pub(in crate::plugins) fn authorize(&self, who: pwit::IdentityParam<'_>, room: pwit::Room<'_>) -> Result<Result<pwit::Decision, String>, ListenerError> {
        let _room = self.admit()?;
        let answer = self.enter(|warm| {
            let func = Self::export(warm, self.exports.authorize.as_ref(), "authorize")?;
            let typed = func.typed::<(pwit::IdentityParam<'_>, pwit::Room<'_>), (Result<pwit::Decision, String>,)>(&warm.store)?;
            let (answer,) = typed.call(&mut warm.store, (who, room))?;
            Ok(answer)
        })?;
        self.health.record_success(self.name());
        Ok(answer.map_err(|message| {
            if message.len() > self.manifest.limits.max_error_bytes {
                self.ctx.trips.count(Limit::ErrorText);
            }
            text::sanitize(&message, self.manifest.limits.max_error_bytes)
        }))
    }

    /// An export of the instance, found by the index taken at link time.
    fn export(warm: &mut Warm, index: Option<&ComponentExportIndex>, name: &str) -> wasmtime::Result<Func> {
        index
            .and_then(|index| warm.instance.get_func(&mut warm.store, index))
            .ok_or_else(|| wasmtime::format_err!("the component has no `{name}` export"))
    }

    /// Checks, on the probe instance, that each policy export the manifest's roles use has the
    /// contract's signature.
    pub(super) fn check_policy_types(&self, warm: &mut Warm) -> Result<(), LoadError> {
        for &role in self.roles() {
            let wrong = |e: wasmtime::Error| LoadError::WrongExports { world: role.as_str(), message: format!("`{}`: {e:#}", role.export()) };
            let func = Self::export(warm, self.exports.of(role), role.export()).map_err(wrong)?;
            let checked = match role {
                Role::Authenticator => func.typed::<(pwit::ConnectRequest<'_>,), (pwit::Authentication,)>(&warm.store).map(drop),
                Role::Authorizer => func.typed::<(pwit::IdentityParam<'_>, pwit::Room<'_>), (Result<pwit::Decision, String>,)>(&warm.store).map(drop),
            };
            checked.map_err(wrong)?;
        }
        Ok(())
    }

}

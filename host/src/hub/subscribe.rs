//! Subscribing and unsubscribing: who may join which room, how fast, and how many.
//!
//! This module owns `SubscribeError` and the `Hub`'s subscribe checks: a connection's own
//! workspace and user rooms; task and chat rooms of its own workspace only, decided by the
//! `ScopeAuthorizer` within a deadline; a rate limit (token bucket) and a cap on rooms per
//! connection. It must not fan anything out.

use std::sync::Arc;
use std::time::Instant;

use super::{Conn, Hub, Joined, Position};
use crate::action::{Scope, ScopeKind};

/// Why a subscribe or unsubscribe was refused. `code()` is what the client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("invalid payload")]
    InvalidPayload,
    #[error("forbidden")]
    Forbidden,
    #[error("unknown scope")]
    UnknownScope,
    #[error("authorization lookup failed")]
    LookupFailed,
    #[error("too many scopes")]
    TooManyScopes,
    #[error("too many subscribes")]
    RateLimited,
}

impl SubscribeError {
    pub fn code(self) -> &'static str {
        match self {
            SubscribeError::InvalidPayload => "invalid payload",
            SubscribeError::Forbidden => "forbidden",
            SubscribeError::UnknownScope => "unknown_scope",
            SubscribeError::LookupFailed => "lookup_failed",
            SubscribeError::TooManyScopes => "too_many_scopes",
            SubscribeError::RateLimited => "rate_limited",
        }
    }
}

/// A connection's subscribe allowance: tokens refill at `subscribe_rate` per second up to
/// `subscribe_burst`.
pub(super) struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub(super) fn full(burst: f64) -> TokenBucket {
        TokenBucket { tokens: burst, at: Instant::now() }
    }
}

impl Hub {
    /// Subscribes a connection to a scope, if it may: its own workspace and user always (an
    /// idempotent ack), task and chat scopes when the authorizer allows, within the caps. With
    /// `since`, what the connection missed after that position is replayed first, when possible.
    pub async fn subscribe(&self, conn: &Arc<Conn>, scope: Scope, since: Option<Position>) -> Result<Joined, SubscribeError> {
        let result = self.check_subscribe(conn, &scope).await;
        match result {
            Ok(()) => {
                self.metrics.subscribe(scope.kind);
                let member = conn.scopes.lock().iter().any(|(s, _)| *s == scope);
                if !member {
                    // The ack goes out under the room's lock, before any replayed frame.
                    return Ok(self.join_scope(conn, &scope, since.as_ref(), true).await);
                }
                // Already in the room (its own workspace or user): a position to resume from
                // can only be honoured when nothing was missed.
                Ok(self.ack_member(conn, &scope, since.as_ref()))
            }
            Err(e @ (SubscribeError::Forbidden | SubscribeError::LookupFailed)) => {
                self.metrics.denial(scope.kind);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn check_subscribe(&self, conn: &Arc<Conn>, scope: &Scope) -> Result<(), SubscribeError> {
        if scope.id.is_empty() || scope.id.len() > crate::event::MAX_NAME_LEN {
            return Err(SubscribeError::InvalidPayload);
        }
        let who = &conn.identity;
        match scope.kind {
            ScopeKind::Workspace if scope.id == who.workspace_id => return Ok(()),
            ScopeKind::User if scope.id == who.user_id => return Ok(()),
            ScopeKind::Workspace | ScopeKind::User => return Err(SubscribeError::Forbidden),
            // A grant in one workspace never opens a room of another.
            ScopeKind::Task | ScopeKind::Chat if scope.workspace != who.workspace_id => {
                return Err(SubscribeError::Forbidden);
            }
            ScopeKind::Task | ScopeKind::Chat => {}
        }
        if conn.scopes.lock().iter().any(|(s, _)| s == scope) {
            return Ok(());
        }
        self.take_token(conn)?;
        if conn.scopes.lock().len() >= self.config.max_scopes {
            return Err(SubscribeError::TooManyScopes);
        }
        match tokio::time::timeout(self.config.authorize_timeout, self.authorizer.authorize(who, scope)).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(SubscribeError::Forbidden),
            Ok(Err(e)) => {
                tracing::warn!(scope = %scope, user = %who.user_id, "scope authorization failed: {e}");
                Err(SubscribeError::LookupFailed)
            }
            Err(_) => {
                tracing::warn!(scope = %scope, user = %who.user_id, "scope authorization timed out");
                Err(SubscribeError::LookupFailed)
            }
        }
    }

    fn take_token(&self, conn: &Conn) -> Result<(), SubscribeError> {
        let mut bucket = conn.bucket.lock();
        let now = Instant::now();
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.config.subscribe_rate;
        bucket.tokens = (bucket.tokens + refill).min(self.config.subscribe_burst);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Err(SubscribeError::RateLimited);
        }
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// Leaves a task or chat scope. Leaving one's own workspace or user room is acknowledged
    /// but does nothing: those rooms last as long as the connection.
    pub fn unsubscribe(&self, conn: &Arc<Conn>, scope: &Scope) -> Result<(), SubscribeError> {
        if scope.id.is_empty() {
            return Err(SubscribeError::InvalidPayload);
        }
        let own = match scope.kind {
            ScopeKind::Workspace => scope.id == conn.identity.workspace_id,
            ScopeKind::User => scope.id == conn.identity.user_id,
            ScopeKind::Task | ScopeKind::Chat => false,
        };
        if !own {
            let left = {
                let mut scopes = conn.scopes.lock();
                scopes.iter().position(|(s, _)| s == scope).map(|at| scopes.remove(at))
            };
            if let Some((scope, member)) = left {
                self.leave_room(&scope, &member);
            }
        }
        self.metrics.unsubscribe(scope.kind);
        Ok(())
    }
}

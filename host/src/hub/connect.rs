//! Who a connection is, when something other than busbar's own token check decides it.
//!
//! This module owns the `Authenticator` trait (implemented by the plugin runtime's access
//! adapter, or by an embedding application), `ConnectRequest` (what the upgrade carried, and
//! later the `auth` frame), and `Refusal`, which maps every reason to the HTTP status of a
//! refused upgrade and the close code of a refused `auth` frame. It must not know about plugins
//! or sockets: `api::ws` builds the request, the session applies the answer.

use std::future::Future;
use std::pin::Pin;

use super::{Close, Identity};

/// What a WebSocket upgrade carried: its headers (names in lower case) and query parameters,
/// and, once the client sent one, its `auth` frame's payload (JSON text).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectRequest {
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    pub auth_frame: Option<String>,
}

/// An authenticator's answer that lets the connection go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticated {
    /// The connection is this identity.
    Identified(Identity),
    /// Nothing at the upgrade identifies the client: accept the upgrade and ask again with the
    /// first `auth` frame.
    NeedAuthFrame,
}

/// Why an authenticator refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    BadRequest,
    InvalidToken,
    Expired,
    Forbidden,
    NotFound,
    /// The authenticator failed (trapped, timed out, was quarantined, answered nonsense): the
    /// connection is refused, never let through.
    Unavailable,
}

impl RefusalKind {
    /// The stable code clients see in error frames and metrics.
    pub fn code(self) -> &'static str {
        match self {
            RefusalKind::BadRequest => "bad_request",
            RefusalKind::InvalidToken => "invalid_token",
            RefusalKind::Expired => "token_expired",
            RefusalKind::Forbidden => "forbidden_workspace",
            RefusalKind::NotFound => "workspace_not_found",
            RefusalKind::Unavailable => "authenticator_failed",
        }
    }

    /// The HTTP status of a refused upgrade.
    pub fn status(self) -> u16 {
        match self {
            RefusalKind::BadRequest => 400,
            RefusalKind::InvalidToken | RefusalKind::Expired => 401,
            RefusalKind::Forbidden => 403,
            RefusalKind::NotFound => 404,
            RefusalKind::Unavailable => 503,
        }
    }

    /// The close code of a refused `auth` frame.
    pub fn close(self) -> Close {
        match self {
            RefusalKind::BadRequest | RefusalKind::NotFound => Close::BAD_REQUEST,
            RefusalKind::InvalidToken => Close::INVALID_TOKEN,
            RefusalKind::Expired => Close::TOKEN_EXPIRED,
            RefusalKind::Forbidden => Close::FORBIDDEN,
            RefusalKind::Unavailable => Close::AUTH_UNAVAILABLE,
        }
    }
}

/// A refused connection: the reason and the message the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

impl Refusal {
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Refusal {
        Refusal { kind, message: message.into() }
    }
}

/// A boxed future, so that authenticators may look things up asynchronously.
pub type AuthenticateFuture<'a> = Pin<Box<dyn Future<Output = Result<Authenticated, Refusal>> + Send + 'a>>;

/// Decides who a connection is from what its upgrade (and `auth` frame) carried. Fail closed:
/// anything but an identity refuses the connection.
pub trait Authenticator: Send + Sync + 'static {
    /// `None` when this authenticator does not decide now (no plugin holds the role): busbar's
    /// own token check applies.
    fn authenticate<'a>(&'a self, request: &'a ConnectRequest) -> Option<AuthenticateFuture<'a>>;
}

/// The authenticator of a hub without one: busbar's own token check always applies.
pub struct TokenOnly;

impl Authenticator for TokenOnly {
    fn authenticate<'a>(&'a self, _request: &'a ConnectRequest) -> Option<AuthenticateFuture<'a>> {
        None
    }
}

//! Who a connection is, and which scopes it may join.
//!
//! This module owns token verification (JWT, HS256 only, `exp` required, `nbf` checked, `aud`
//! and `iss` when the operator configures them, size-capped), the
//! `Claims` busbar reads from a token, `Identity` (the user and workspace of one connection), and
//! the `ScopeAuthorizer` trait with its default, `ClaimsAuthorizer`, which denies by default.
//! It must not know about sockets or rooms.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::action::{Scope, ScopeKind};

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 << 10;

/// What busbar reads from a connection token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch. Required.
    pub exp: u64,
    /// Workspaces the user may connect to; `"*"` allows any.
    #[serde(default)]
    pub workspaces: Vec<String>,
    /// Task and chat scopes the user may subscribe to, per workspace id. A task or chat scope
    /// is only ever granted inside the workspace it belongs to.
    #[serde(default)]
    pub grants: BTreeMap<String, Grants>,
}

/// Task and chat ids (exact, or a prefix ending in `*`) granted in one workspace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chat: Vec<String>,
}

impl Claims {
    pub fn may_join_workspace(&self, workspace_id: &str) -> bool {
        !workspace_id.is_empty() && self.workspaces.iter().any(|w| w == "*" || w == workspace_id)
    }
}

/// Why a token or a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("not allowed in workspace `{0}`")]
    Workspace(String),
}

impl AuthError {
    /// The stable code clients see in error frames.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Expired => "token_expired",
            AuthError::Invalid(_) | AuthError::TooLarge => "invalid_token",
            AuthError::Workspace(_) => "forbidden_workspace",
        }
    }
}

/// What a token must say besides its signature: the audience and issuer the operator expects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenRules {
    /// `aud` must be (or contain) this.
    pub audience: Option<String>,
    /// `iss` must be this.
    pub issuer: Option<String>,
}

/// Verifies connection tokens: HMAC-SHA256 with one secret, the algorithm pinned (never read
/// from the token), `exp` required, `nbf` honoured, `aud` and `iss` checked when configured.
#[derive(Clone)]
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl TokenVerifier {
    pub fn new(secret: &[u8]) -> TokenVerifier {
        TokenVerifier::with_rules(secret, &TokenRules::default())
    }

    pub fn with_rules(secret: &[u8], rules: &TokenRules) -> TokenVerifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &rules.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &rules.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        TokenVerifier { key: DecodingKey::from_secret(secret), validation }
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => AuthError::Invalid("algorithm not allowed".into()),
                jsonwebtoken::errors::ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(c) => AuthError::Invalid(format!("missing `{c}`")),
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::Invalid("not valid yet (`nbf`)".into()),
                jsonwebtoken::errors::ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience (`aud`)".into()),
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer (`iss`)".into()),
                _ => AuthError::Invalid("malformed".into()),
            })
    }

    /// Verifies a token and checks that it may join `workspace_id`.
    pub fn identify(&self, token: &str, workspace_id: &str) -> Result<Identity, AuthError> {
        let claims = self.verify(token)?;
        if !claims.may_join_workspace(workspace_id) {
            return Err(AuthError::Workspace(workspace_id.to_string()));
        }
        Ok(Identity { user_id: claims.sub.clone(), workspace_id: workspace_id.to_string(), claims: Arc::new(claims) })
    }
}

/// Signs claims with HS256 (for `busbar token` and tests).
pub fn mint(secret: &[u8], claims: &Claims) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret))
        .expect("HS256 signing of serializable claims cannot fail")
}

/// One authenticated connection: a user in one workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub workspace_id: String,
    pub claims: Arc<Claims>,
}

/// A boxed future, so that authorizers may look things up asynchronously.
pub type AuthorizeFuture<'a> = Pin<Box<dyn Future<Output = Result<bool, LookupError>> + Send + 'a>>;

/// An authorizer could not find the answer (its database is down, a lookup timed out): clients
/// see `lookup_failed`, and the hub logs the cause.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LookupError(Box<dyn std::error::Error + Send + Sync>);

impl LookupError {
    /// From any error, or from a message (`LookupError::new("chat store unreachable")`).
    pub fn new(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> LookupError {
        LookupError(cause.into())
    }
}

/// Decides whether a connection may subscribe to a task or chat scope. Deny by default: return
/// `Ok(false)` for anything not known to be allowed, `Err` when the answer could not be found
/// (clients then see `lookup_failed`, not `forbidden`).
pub trait ScopeAuthorizer: Send + Sync + 'static {
    fn authorize<'a>(&'a self, who: &'a Identity, scope: &'a Scope) -> AuthorizeFuture<'a>;
}

/// Allows what the connection's token grants in the connection's own workspace.
pub struct ClaimsAuthorizer;

impl ScopeAuthorizer for ClaimsAuthorizer {
    fn authorize<'a>(&'a self, who: &'a Identity, scope: &'a Scope) -> AuthorizeFuture<'a> {
        Box::pin(async move { Ok(claims_allow(who, scope)) })
    }
}

/// The rule of `ClaimsAuthorizer`, usable by other authorizers as a first check: a grant of the
/// connection's workspace, for a scope of that workspace.
pub fn claims_allow(who: &Identity, scope: &Scope) -> bool {
    if scope.workspace != who.workspace_id {
        return false;
    }
    let Some(grants) = who.claims.grants.get(&who.workspace_id) else { return false };
    let patterns = match scope.kind {
        ScopeKind::Task => &grants.task,
        ScopeKind::Chat => &grants.chat,
        ScopeKind::Workspace | ScopeKind::User => return false,
    };
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => scope.id.starts_with(prefix),
        None => *p == scope.id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "u1".into(),
            exp,
            workspaces: vec!["ws-1".into()],
            grants: BTreeMap::from([(
                "ws-1".into(),
                Grants { task: vec!["t-1".into(), "batch-*".into()], chat: vec!["c-1".into()] },
            )]),
        }
    }

    fn future() -> u64 {
        crate::event::now_ms() / 1000 + 3600
    }

    #[test]
    fn a_good_token_identifies_the_user_in_an_allowed_workspace() {
        let verifier = TokenVerifier::new(SECRET);
        let token = mint(SECRET, &claims(future()));
        let who = verifier.identify(&token, "ws-1").unwrap();
        assert_eq!((who.user_id.as_str(), who.workspace_id.as_str()), ("u1", "ws-1"));
        assert_eq!(verifier.identify(&token, "ws-2").unwrap_err(), AuthError::Workspace("ws-2".into()));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let verifier = TokenVerifier::new(SECRET);
        let expired = mint(SECRET, &claims(1_000));
        assert_eq!(verifier.verify(&expired).unwrap_err(), AuthError::Expired);
        let other_secret = mint(b"other", &claims(future()));
        assert!(matches!(verifier.verify(&other_secret), Err(AuthError::Invalid(_))));
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &claims(future()),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(verifier.verify(&hs384).unwrap_err(), AuthError::Invalid("algorithm not allowed".into()));
        // alg=none, unsigned.
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            base64_url(&serde_json::to_vec(&claims(future())).unwrap())
        );
        assert!(matches!(verifier.verify(&none), Err(AuthError::Invalid(_))));
        let no_exp = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "u1", "workspaces": ["ws-1"]}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(matches!(verifier.verify(&no_exp), Err(AuthError::Invalid(_))));
        assert_eq!(verifier.verify(&"x".repeat(MAX_TOKEN_BYTES + 1)).unwrap_err(), AuthError::TooLarge);
        assert!(matches!(verifier.verify("garbage"), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn grants_are_per_workspace_and_deny_by_default() {
        let claims = Arc::new(claims(future()));
        let at = |ws: &str| Identity { user_id: "u1".into(), workspace_id: ws.into(), claims: claims.clone() };
        let task = |id: &str| Scope::task("ws-1", id);
        assert!(claims_allow(&at("ws-1"), &task("t-1")));
        assert!(claims_allow(&at("ws-1"), &task("batch-7")));
        assert!(!claims_allow(&at("ws-1"), &task("t-2")));
        assert!(claims_allow(&at("ws-1"), &Scope::chat("ws-1", "c-1")));
        assert!(!claims_allow(&at("ws-1"), &Scope::chat("ws-1", "t-1")));
        // The same task id in another workspace is a different task.
        assert!(!claims_allow(&at("ws-2"), &Scope::task("ws-2", "t-1")));
        assert!(!claims_allow(&at("ws-1"), &Scope::task("ws-2", "t-1")));
    }

    #[test]
    fn nbf_aud_and_iss_are_checked_and_exp_cannot_overflow() {
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET)).unwrap()
        };
        let plain = TokenVerifier::new(SECRET);
        let later = sign(serde_json::json!({"sub": "u1", "exp": future(), "nbf": future()}));
        assert_eq!(plain.verify(&later).unwrap_err(), AuthError::Invalid("not valid yet (`nbf`)".into()));
        let forever = sign(serde_json::json!({"sub": "u1", "exp": u64::MAX}));
        assert_eq!(plain.verify(&forever).unwrap().exp, u64::MAX);
        let rules = TokenRules { audience: Some("busbar".into()), issuer: Some("https://app.example".into()) };
        let strict = TokenVerifier::with_rules(SECRET, &rules);
        let good = sign(serde_json::json!({"sub": "u1", "exp": future(), "aud": "busbar", "iss": "https://app.example"}));
        assert!(strict.verify(&good).is_ok());
        let other_aud = sign(serde_json::json!({"sub": "u1", "exp": future(), "aud": "other", "iss": "https://app.example"}));
        assert_eq!(strict.verify(&other_aud).unwrap_err(), AuthError::Invalid("wrong audience (`aud`)".into()));
        let other_iss = sign(serde_json::json!({"sub": "u1", "exp": future(), "aud": "busbar", "iss": "evil"}));
        assert_eq!(strict.verify(&other_iss).unwrap_err(), AuthError::Invalid("wrong issuer (`iss`)".into()));
        let none = sign(serde_json::json!({"sub": "u1", "exp": future()}));
        assert!(matches!(strict.verify(&none), Err(AuthError::Invalid(_))));
    }

    fn base64_url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

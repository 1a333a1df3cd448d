//! `/v1/plugins`: list, inspect, upload (validate, store, then activate), roll back and delete
//! plugins; what changes is kept in the store (see `Registry::deploy`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use serde_json::json;

use super::AppState;
use super::access::Admin;
use super::error::ApiError;
use crate::plugins::{InstallError, Installed, KvOnRemove, LoadError, Manifest, PluginView, RollbackError, check_plugin_name};

pub(super) async fn list(_: Admin, State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    // With a shared store, what every node runs is read from it: off the async threads.
    let registry = state.registry.clone();
    let plugins = tokio::task::spawn_blocking(move || registry.list_cluster())
        .await
        .map_err(|e| ApiError::Internal(format!("listing task failed: {e}")))?;
    Ok(Json(json!({ "plugins": plugins })))
}

pub(super) async fn get(_: Admin, State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<PluginView>, ApiError> {
    state.registry.get(&name).map(Json).ok_or_else(|| ApiError::NotFound(format!("no plugin named `{name}`")))
}

/// Upload a component: the raw bytes (`application/wasm`), or `multipart/form-data` with a
/// `component` part and an optional `manifest` part (TOML). Every refused upload is recorded as
/// the plugin's last failure and counted, like a failed load from the plugin directory.
pub(super) async fn put(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> Result<(StatusCode, Json<PluginView>), ApiError> {
    check_plugin_name(&name).map_err(|p| ApiError::BadRequest(format!("plugin name {p}")))?;
    let (component, manifest) = match read_upload(&state, &name, request).await {
        Ok(upload) => upload,
        Err(e) => {
            state.registry.record_failure(&name, &format!("upload refused: {e}"));
            return Err(e);
        }
    };
    let registry = state.registry.clone();
    let install_name = name.clone();
    let installed = tokio::task::spawn_blocking(move || registry.deploy(&install_name, &component, manifest))
        .await
        .map_err(|e| ApiError::Internal(format!("install task failed: {e}")))?;
    let status = match installed {
        Ok(Installed::Created) => StatusCode::CREATED,
        Ok(Installed::Replaced | Installed::Unchanged) => StatusCode::OK,
        Err(InstallError::Load(e @ LoadError::RoleTaken { .. })) => return Err(ApiError::Conflict(e.to_string())),
        Err(InstallError::Load(e)) => return Err(ApiError::Unprocessable(e.to_string())),
        Err(e @ (InstallError::Bus(_) | InstallError::Managed(_))) => return Err(ApiError::Conflict(e.to_string())),
        Err(e @ InstallError::Store(_)) => return Err(ApiError::StoreUnavailable(e.to_string())),
    };
    let view = state.registry.get(&name).ok_or_else(|| ApiError::Internal("installed plugin vanished".into()))?;
    Ok((status, Json(view)))
}

/// The component bytes and the manifest of an upload, read and checked.
async fn read_upload(state: &AppState, name: &str, request: Request) -> Result<(Bytes, Option<Manifest>), ApiError> {
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let too_large = |max: usize| ApiError::TooLarge(format!("upload larger than {max} bytes"));
    let (component, manifest_text) = if is_multipart {
        let mut multipart = Multipart::from_request(request, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let (mut component, mut manifest) = (None, None);
        while let Some(field) = multipart.next_field().await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE { too_large(state.max_upload) } else { ApiError::BadRequest(e.body_text()) }
        })? {
            let field_name = field.name().unwrap_or_default().to_string();
            let data = field.bytes().await.map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE { too_large(state.max_upload) } else { ApiError::BadRequest(e.body_text()) }
            })?;
            match field_name.as_str() {
                "component" => component = Some(data),
                "manifest" => {
                    manifest = Some(String::from_utf8(data.to_vec()).map_err(|_| ApiError::BadRequest("manifest is not UTF-8".into()))?)
                }
                other => return Err(ApiError::BadRequest(format!("unexpected form field `{other}`; expected `component` and `manifest`"))),
            }
        }
        (component.ok_or_else(|| ApiError::BadRequest("missing form field `component`".into()))?, manifest)
    } else {
        let body = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE { too_large(state.max_upload) } else { ApiError::BadRequest(e.body_text()) }
        })?;
        (body, None)
    };
    if component.is_empty() {
        return Err(ApiError::BadRequest("empty component".into()));
    }
    let manifest = match manifest_text {
        Some(text) => {
            let origin = format!("manifest of `{name}`");
            let manifest = Manifest::parse(&text, name, &origin, std::path::Path::new("."))
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            if manifest.name != name {
                return Err(ApiError::BadRequest(format!("manifest names `{}` but the path names `{name}`", manifest.name)));
            }
            if !manifest.capabilities.read_dirs.is_empty() {
                return Err(ApiError::BadRequest(
                    "`capabilities.read-dirs` cannot be granted over HTTP; install the plugin from the plugin directory".into(),
                ));
            }
            Some(manifest)
        }
        None => None,
    };
    Ok((component, manifest))
}

/// Restores the previous version at the same position (and makes the current one previous).
pub(super) async fn rollback(_: Admin, State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<PluginView>, ApiError> {
    state.registry.rollback(&name).map_err(|e| match e {
        RollbackError::Unknown(_) => ApiError::NotFound(e.to_string()),
        RollbackError::NoPrevious(_) | RollbackError::Bus(_) => ApiError::Conflict(e.to_string()),
        RollbackError::Store(_) => ApiError::StoreUnavailable(e.to_string()),
    })?;
    state.registry.get(&name).map(Json).ok_or_else(|| ApiError::Internal("rolled back plugin vanished".into()))
}

/// `?keep-kv=true` keeps the plugin's kv store for the next plugin installed under this name.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct DeleteQuery {
    #[serde(default)]
    keep_kv: bool,
}

pub(super) async fn delete(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let kv = if query.keep_kv { KvOnRemove::Keep } else { KvOnRemove::Delete };
    let registry = state.registry.clone();
    let (removing, kept) = (name.clone(), kv);
    let removed = tokio::task::spawn_blocking(move || registry.undeploy(&removing, kept))
        .await
        .map_err(|e| ApiError::Internal(format!("delete task failed: {e}")))?;
    match removed {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::NotFound(format!("no plugin named `{name}`"))),
        Err(e @ InstallError::Store(_)) => Err(ApiError::StoreUnavailable(e.to_string())),
        Err(e) => Err(ApiError::Conflict(e.to_string())),
    }
}

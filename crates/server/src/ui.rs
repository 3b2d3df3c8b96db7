//! The chat page (`/`) and the hub console (`/console`): the pages and assets Vite builds
//! from `web/` into `web/dist`, embedded in the binary (rust-embed; a debug build reads them
//! from disk, so `npm run build` shows without recompiling).
//!
//! Hashed assets under `/assets/` never change under their name: cached for a year,
//! `immutable`. Pages are `no-cache` (revalidated by ETag), so a new binary's page, and
//! through it its new assets, is seen at once. Pages carry a Content-Security-Policy that
//! allows only this origin's scripts: even an answer that got past the page's sanitizer
//! could not run script.

use std::borrow::Cow;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use rust_embed::RustEmbed;

use crate::conn::ClientAddr;
use crate::error::ApiError;
use crate::state::AppState;

/// `web/dist`, as built by `make` (`npm run build` in `web/`). When it is missing at compile
/// time the build script leaves a placeholder page there that says so.
#[derive(RustEmbed)]
#[folder = "../../web/dist"]
#[allow_missing = true]
struct Assets;

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const NO_CACHE: &str = "no-cache";
const PAGE_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data: https:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     frame-ancestors 'none'; form-action 'self'";

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(chat))
        .route("/console", get(console))
        .route("/assets/{*path}", get(asset))
        .route("/api/dev/token", get(dev_token))
}

/// Development mode's publisher token, for the console: only in development mode and only to
/// a client on this machine (a loopback address); 404 otherwise, as if there were no such
/// route.
async fn dev_token(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<ClientAddr>,
) -> Result<Response, ApiError> {
    match &state.config().dev_publisher_token {
        Some(token) if client.0.ip().is_loopback() => {
            let body = serde_json::json!({"publisher_token": token});
            let mut response = axum::Json(body).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }
        _ => Err(ApiError::not_found("no such endpoint")),
    }
}

async fn chat(headers: HeaderMap) -> Response {
    page("index.html", &headers)
}

async fn console(headers: HeaderMap) -> Response {
    page("console.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    // The path is percent-decoded: refuse anything that could step outside assets/.
    let safe = !path.is_empty()
        && !path.contains('\\')
        && path.split('/').all(|segment| !segment.is_empty() && segment != "..");
    match safe.then(|| Assets::get(&format!("assets/{path}"))).flatten() {
        Some(file) => respond(&path, file, IMMUTABLE, &headers),
        None => not_found(),
    }
}

fn page(name: &str, headers: &HeaderMap) -> Response {
    match Assets::get(name) {
        Some(file) => respond(name, file, NO_CACHE, headers),
        None => not_built(),
    }
}

fn respond(
    name: &str,
    file: rust_embed::EmbeddedFile,
    cache: &'static str,
    request: &HeaderMap,
) -> Response {
    let etag: String =
        file.metadata.sha256_hash()[..16].iter().map(|b| format!("{b:02x}")).collect();
    let etag = format!("\"{etag}\"");
    let unchanged = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"));
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let body = match file.data {
            Cow::Borrowed(bytes) => Bytes::from_static(bytes),
            Cow::Owned(bytes) => Bytes::from(bytes),
        };
        Response::new(Body::from(body))
    };
    let content_type = content_type(name);
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    if !unchanged {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if content_type.starts_with("text/html") {
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_POLICY));
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    response
}

/// The content type of a built file, by its extension.
fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase()).as_deref() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        Some("txt") => "text/plain; charset=utf-8",
        Some("wasm") => "application/wasm",
        _ => "application/octet-stream",
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "not found\n")
        .into_response()
}

/// What `/` shows when the binary was built without the web UI.
fn not_built() -> Response {
    let body = "<!doctype html><meta charset=utf-8><title>Sluice</title>\
        <p>The web UI was not built into this binary: run <code>make</code> \
        (or <code>npm ci &amp;&amp; npm run build</code> in <code>web/</code>, then rebuild).</p>\n";
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, NO_CACHE)],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::extract::Path;
    use axum::http::{HeaderMap, HeaderValue, StatusCode, header};

    use super::{asset, chat, content_type};

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("assets/index-ab12.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("assets/index-ab12.CSS"), "text/css; charset=utf-8");
        assert_eq!(content_type("assets/x"), "application/octet-stream");
    }

    #[tokio::test]
    async fn pages_are_revalidated_and_locked_down() {
        let page = chat(HeaderMap::new()).await;
        if page.status() == StatusCode::SERVICE_UNAVAILABLE {
            return; // built without web/dist and unable to write the placeholder
        }
        assert_eq!(page.status(), StatusCode::OK);
        let headers = page.headers();
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(
            headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        let etag = headers[header::ETAG].clone();

        let mut conditional = HeaderMap::new();
        conditional.insert(header::IF_NONE_MATCH, etag.clone());
        let again = chat(conditional).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], etag);
        let mut other = HeaderMap::new();
        other.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(chat(other).await.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn assets_never_leave_their_folder() {
        for path in ["../index.html", "../../Cargo.toml", "a/../../x", "", "x\\..\\y", "missing.js"]
        {
            let response = asset(Path(path.to_owned()), HeaderMap::new()).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        }
    }
}

//! The web console at `/ui` (SPEC §9): a small single-page app whose files are embedded in
//! the binary at compile time (`crates/api/ui/`, no build step, no Node).
//!
//! The page holds no data of its own: its script calls the same JSON routes as any client,
//! with the credential the person signed in with (kept in the tab's `sessionStorage`, sent as
//! `Authorization: Bearer`), so every read goes through the same authentication and tenant
//! scoping as the API, and no cookie means no cross-site request forgery. Every answer here
//! carries a strict Content-Security-Policy: scripts, styles and requests only from this
//! origin, no inline script, and `frame-ancestors` from `--ui-frame-ancestors` (none by
//! default), plus `Referrer-Policy: no-referrer` so a viewer link's token never leaves in a
//! `Referer`.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG,
    IF_NONE_MATCH, REFERRER_POLICY, VARY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::state::AppState;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// The page and its assets. `index.html` names the others by path under `/ui/assets/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../ui/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../ui/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../ui/app.css"),
    },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../ui/vendor/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../ui/vendor/uPlot.min.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../ui/favicon.svg"),
    },
];

/// An asset ready to serve: its gzip form (computed once, on first use) and its ETag.
struct Prepared {
    gzip: Vec<u8>,
    etag: HeaderValue,
}

fn prepared(index: usize) -> &'static Prepared {
    static ALL: OnceLock<Vec<Prepared>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.bytes);
                let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
                Prepared {
                    gzip: gzip(a.bytes),
                    etag: HeaderValue::from_str(&format!("\"{hex}\""))
                        .unwrap_or_else(|_| HeaderValue::from_static("\"0\"")),
                }
            })
            .collect()
    });
    &all[index]
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

/// Who may frame the console: the value of CSP `frame-ancestors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameAncestors(String);

impl Default for FrameAncestors {
    fn default() -> Self {
        Self("'none'".to_owned())
    }
}

impl FrameAncestors {
    /// Parses `--ui-frame-ancestors`: `'none'`, `'self'`, or origins (`https://app.example.com`,
    /// `https://*.example.com`, `http://localhost:3000`), separated by spaces or commas.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut sources = Vec::new();
        for source in value
            .split([' ', ','])
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let ok = match source {
                "'none'" | "'self'" | "none" | "self" => true,
                _ => valid_origin(source),
            };
            if !ok {
                return Err(format!(
                    "--ui-frame-ancestors: {source:?} is not an origin like https://app.example.com \
                     (scheme, host, optional port; a leading *. for subdomains), 'self' or 'none'"
                ));
            }
            sources.push(match source {
                "none" => "'none'".to_owned(),
                "self" => "'self'".to_owned(),
                s => s.to_owned(),
            });
        }
        if sources.is_empty() {
            return Err("--ui-frame-ancestors: no origin given".to_owned());
        }
        if sources.len() > 1 && sources.iter().any(|s| s == "'none'") {
            return Err("--ui-frame-ancestors: 'none' cannot be combined with origins".to_owned());
        }
        if sources.len() > 64 {
            return Err("--ui-frame-ancestors: at most 64 origins".to_owned());
        }
        Ok(Self(sources.join(" ")))
    }

    /// Whether no page may frame the console.
    fn is_none(&self) -> bool {
        self.0 == "'none'"
    }
}

/// `scheme://host[:port]` with no path, query, or characters that could end a CSP directive.
fn valid_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.len() > 253 {
        return false;
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    let host = host.strip_prefix("*.").unwrap_or(host);
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok());
    host_ok && port_ok
}

/// The console's routes: `/ui` (the page; `/ui/` and `/ui/index.html` redirect there) and
/// `/ui/assets/{name}`.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(page))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/assets/{name}", get(asset))
}

async fn page(
    axum::extract::State(state): axum::extract::State<AppState>,
    headers: HeaderMap,
) -> Response {
    let mut res = serve_asset(0, &headers);
    let h = res.headers_mut();
    // The page may carry a viewer token in its address: never store it.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let ancestors = &state.config().ui_frame_ancestors;
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors {}",
        ancestors.0
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(CONTENT_SECURITY_POLICY, v);
    }
    if ancestors.is_none() {
        h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    res
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS
        .iter()
        .position(|a| a.name == name && name != "index.html")
    {
        Some(i) => {
            let mut res = serve_asset(i, &headers);
            res.headers_mut().insert(
                CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
            );
            res
        }
        None => (
            StatusCode::NOT_FOUND,
            [
                (CONTENT_TYPE, "text/plain; charset=utf-8"),
                (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            "no such console asset\n",
        )
            .into_response(),
    }
}

/// An embedded file with its validators; gzip when the client takes it; 304 when its copy is
/// current. Assets are revalidated on each use (`no-cache`) so a new release is picked up at
/// once, at the cost of a 304 round trip.
fn serve_asset(index: usize, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let prep = prepared(index);
    let fresh = headers
        .get(IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == prep.etag.as_bytes());
    let gzip_ok = headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|c| c.trim().split(';').next() == Some("gzip") && !c.contains("q=0"))
        });
    let mut res = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else if gzip_ok && prep.gzip.len() < asset.bytes.len() {
        let mut r = prep.gzip.clone().into_response();
        r.headers_mut()
            .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        asset.bytes.into_response()
    };
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(ETAG, prep.etag.clone());
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_ancestors_take_origins_and_refuse_anything_else() {
        assert_eq!(
            FrameAncestors::parse("https://app.example.com, http://localhost:3000")
                .unwrap()
                .0,
            "https://app.example.com http://localhost:3000"
        );
        assert_eq!(FrameAncestors::parse("self").unwrap().0, "'self'");
        assert_eq!(
            FrameAncestors::parse("https://*.example.com").unwrap().0,
            "https://*.example.com"
        );
        for bad in [
            "",
            "example.com",
            "https://a.com; script-src *",
            "https://a.com/path",
            "javascript://x",
            "https://a.com:99999",
            "'none' https://a.com",
            "*",
        ] {
            assert!(FrameAncestors::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_asset_named_by_the_page_is_embedded() {
        let page = std::str::from_utf8(ASSETS[0].bytes).unwrap();
        for asset in &ASSETS[1..] {
            assert!(
                page.contains(&format!("/ui/assets/{}", asset.name)),
                "index.html does not use {}",
                asset.name
            );
        }
        // And nothing inline: the CSP would refuse it.
        assert!(!page.contains("<script>") && !page.contains("style="));
    }
}

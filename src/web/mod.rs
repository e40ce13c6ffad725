//! The web pages the broker serves itself, so `cargo run --release` is all a
//! contact center needs: the agent desktop at `/desk`, the customer webchat at
//! `/chat` (plus the embeddable `/chat/widget.js`), and the supervisor board at
//! `/board`. Their shared style, scripts and icon live under `/web/`.
//!
//! This module owns those routes and the files under `src/web/assets/`: plain
//! HTML, CSS and JavaScript with no build step, embedded in the binary with
//! `include_bytes!`. The pages talk to the broker only through the public
//! protocol (`docs/protocol.md`), exactly like any other client.
//!
//! Every file is answered with its `Content-Type`, a strong `ETag` (a hash of
//! the bytes computed at compile time) and `Cache-Control: no-cache`, so a
//! browser revalidates each load with `If-None-Match` and gets a `304` while
//! the binary is unchanged; an upgraded broker is never mixed with stale
//! scripts. Pages carry a Content-Security-Policy that allows only this
//! origin; `/desk` and `/board` refuse to be framed, `/chat` may be framed by
//! any site (that is how the widget embeds it).

use actix_web::http::header::{self, HeaderValue};
use actix_web::{guard, web, HttpRequest, HttpResponse};

/// One embedded file.
struct Asset {
    /// The URL path it is served at.
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// Strong validator, from the bytes.
    etag: u64,
    kind: Kind,
}

/// What extra headers a file gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An HTML page that must not be framed.
    Page,
    /// An HTML page that other sites may frame (the webchat).
    FramablePage,
    /// A script, style sheet or image.
    Static,
}

/// FNV-1a over the bytes: enough to tell two versions of a file apart.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

macro_rules! asset {
    ($path:expr, $file:expr, $content_type:expr, $kind:expr) => {{
        const BODY: &[u8] = include_bytes!(concat!("assets/", $file));
        Asset {
            path: $path,
            content_type: $content_type,
            body: BODY,
            etag: fnv1a(BODY),
            kind: $kind,
        }
    }};
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

static ASSETS: &[Asset] = &[
    asset!("/desk", "desk.html", HTML, Kind::Page),
    asset!("/board", "board.html", HTML, Kind::Page),
    asset!("/chat", "chat.html", HTML, Kind::FramablePage),
    asset!("/chat/widget.js", "widget.js", JS, Kind::Static),
    asset!("/web/style.css", "style.css", CSS, Kind::Static),
    asset!("/web/common.js", "common.js", JS, Kind::Static),
    asset!("/web/desk.js", "desk.js", JS, Kind::Static),
    asset!("/web/chat.js", "chat.js", JS, Kind::Static),
    asset!("/web/board.js", "board.js", JS, Kind::Static),
    asset!("/web/favicon.svg", "favicon.svg", SVG, Kind::Static),
];

/// What a page may load: this origin only, plus `blob:` URLs for the
/// attachments it downloads with a bearer token.
const PAGE_POLICY: &str = "default-src 'self'; img-src 'self' blob: data:; \
    media-src 'self' blob:; connect-src 'self'; script-src 'self'; style-src 'self'; \
    object-src 'none'; base-uri 'none'; form-action 'none'";

/// Mount the pages and their files. Called from [`crate::http::routes`].
pub fn routes(cfg: &mut web::ServiceConfig) {
    for (index, asset) in ASSETS.iter().enumerate() {
        cfg.route(
            asset.path,
            web::route()
                .guard(guard::Any(guard::Get()).or(guard::Head()))
                .to(move |req: HttpRequest| async move { serve(&ASSETS[index], &req) }),
        );
    }
    // `/desk/` and friends: send the browser to the canonical address.
    for page in ["/desk/", "/chat/", "/board/"] {
        cfg.route(
            page,
            web::route()
                .guard(guard::Any(guard::Get()).or(guard::Head()))
                .to(move |req: HttpRequest| async move { redirect(page, &req) }),
        );
    }
}

fn redirect(page: &str, req: &HttpRequest) -> HttpResponse {
    let target = page.trim_end_matches('/');
    let location = match req.query_string() {
        "" => target.to_owned(),
        query => format!("{target}?{query}"),
    };
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, location))
        .finish()
}

/// Does `If-None-Match` name this version?
fn not_modified(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag == etag || tag.strip_prefix("W/") == Some(etag))
}

fn serve(asset: &Asset, req: &HttpRequest) -> HttpResponse {
    let etag = format!("\"{:016x}\"", asset.etag);
    let fresh = not_modified(req, &etag);
    let mut resp = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    resp.insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .insert_header((
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .insert_header((
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ));
    match asset.kind {
        Kind::Page => {
            resp.insert_header((
                header::CONTENT_SECURITY_POLICY,
                format!("{PAGE_POLICY}; frame-ancestors 'none'"),
            ))
            .insert_header((header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")));
        }
        Kind::FramablePage => {
            resp.insert_header((
                header::CONTENT_SECURITY_POLICY,
                format!("{PAGE_POLICY}; frame-ancestors *"),
            ));
        }
        Kind::Static => {
            // The widget script is loaded by other sites' pages.
            resp.insert_header((
                header::CROSS_ORIGIN_RESOURCE_POLICY,
                HeaderValue::from_static("cross-origin"),
            ));
        }
    }
    if fresh {
        return resp.finish();
    }
    // For HEAD, actix sends the headers (Content-Length included) and no body.
    resp.content_type(asset.content_type).body(asset.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_distinct_path_and_a_body() {
        let mut paths: Vec<&str> = ASSETS.iter().map(|a| a.path).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), ASSETS.len());
        assert!(ASSETS.iter().all(|a| !a.body.is_empty()));
    }

    #[test]
    fn etags_differ_between_files() {
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn if_none_match_is_honoured() {
        let req = actix_web::test::TestRequest::default()
            .insert_header((header::IF_NONE_MATCH, "\"x\", \"0000000000000001\""))
            .to_http_request();
        assert!(not_modified(&req, "\"0000000000000001\""));
        assert!(!not_modified(&req, "\"0000000000000002\""));
    }

    #[test]
    fn pages_reference_only_served_files() {
        for page in ASSETS.iter().filter(|a| a.kind != Kind::Static) {
            let text = std::str::from_utf8(page.body).unwrap_or_default();
            for part in text.split(['"', '\'']) {
                if part.starts_with("/web/") || part.starts_with("/chat/") {
                    assert!(
                        ASSETS.iter().any(|a| a.path == part),
                        "{} refers to {part}, which is not served",
                        page.path
                    );
                }
            }
        }
    }
}

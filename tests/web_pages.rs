//! The web pages the broker serves itself (`src/web`): every page and asset
//! answers with its content type, cache validators and security headers, over
//! a real socket.

use reqwest::header;
use switchboard::{server, Config};

const FILES: &[(&str, &str, &str)] = &[
    ("/desk", "text/html", "Switchboard Desk"),
    ("/chat", "text/html", "Chat with us"),
    ("/board", "text/html", "Supervisor Board"),
    ("/chat/widget.js", "text/javascript", "attachShadow"),
    ("/web/style.css", "text/css", ":root"),
    ("/web/common.js", "text/javascript", "window.SB"),
    ("/web/desk.js", "text/javascript", "task.offered"),
    ("/web/chat.js", "text/javascript", "/v1/webchat/sessions"),
    ("/web/board.js", "text/javascript", "/v1/supervisor/ws"),
    ("/web/favicon.svg", "image/svg+xml", "<svg"),
];

fn header_of(resp: &reqwest::Response, name: header::HeaderName) -> &str {
    resp.headers()
        .get(&name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_and_asset_is_served_with_its_type() {
    let srv = server::spawn(Config::for_tests()).expect("server starts");
    let http = reqwest::Client::new();
    for (path, content_type, marker) in FILES {
        let resp = http
            .get(format!("{}{path}", srv.base_url()))
            .send()
            .await
            .expect("GET");
        assert_eq!(resp.status(), 200, "GET {path}");
        assert!(
            header_of(&resp, header::CONTENT_TYPE).starts_with(content_type),
            "{path}: content type {}",
            header_of(&resp, header::CONTENT_TYPE)
        );
        assert_eq!(
            header_of(&resp, header::CACHE_CONTROL),
            "no-cache",
            "{path}"
        );
        assert_eq!(header_of(&resp, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        let etag = header_of(&resp, header::ETAG).to_owned();
        assert!(
            etag.starts_with('"') && etag.len() > 2,
            "{path}: etag {etag}"
        );
        let body = resp.text().await.expect("body");
        assert!(body.contains(marker), "{path} should contain {marker}");

        // The same version again: 304 with no body.
        let again = http
            .get(format!("{}{path}", srv.base_url()))
            .header(header::IF_NONE_MATCH, &etag)
            .send()
            .await
            .expect("GET");
        assert_eq!(again.status(), 304, "{path} revalidation");
        assert_eq!(header_of(&again, header::ETAG), etag);
        assert!(again.bytes().await.expect("body").is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_carry_a_policy_and_only_the_webchat_may_be_framed() {
    let srv = server::spawn(Config::for_tests()).expect("server starts");
    let http = reqwest::Client::new();
    for path in ["/desk", "/board"] {
        let resp = http
            .get(format!("{}{path}", srv.base_url()))
            .send()
            .await
            .expect("GET");
        let csp = header_of(&resp, header::CONTENT_SECURITY_POLICY);
        assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(header_of(&resp, header::X_FRAME_OPTIONS), "DENY");
    }
    let resp = http
        .get(format!("{}/chat?embed=1", srv.base_url()))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
    let csp = header_of(&resp, header::CONTENT_SECURITY_POLICY);
    assert!(csp.contains("frame-ancestors *"), "{csp}");
    assert!(resp.headers().get(header::X_FRAME_OPTIONS).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_trailing_slash_and_unknown_files() {
    let srv = server::spawn(Config::for_tests()).expect("server starts");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    let resp = http
        .head(format!("{}/desk", srv.base_url()))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(resp.status(), 200);
    assert!(header_of(&resp, header::CONTENT_TYPE).starts_with("text/html"));
    let length: usize = header_of(&resp, header::CONTENT_LENGTH)
        .parse()
        .unwrap_or(0);
    assert!(length > 1000, "HEAD tells the page's length, got {length}");

    let resp = http
        .get(format!("{}/desk/?agent=alice", srv.base_url()))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 308);
    assert_eq!(header_of(&resp, header::LOCATION), "/desk?agent=alice");

    // Anything else under /web/ is the API's JSON 404, not a page.
    let resp = http
        .get(format!("{}/web/nope.js", srv.base_url()))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_found");

    // The API is untouched by the pages.
    let resp = http
        .get(format!("{}/healthz", srv.base_url()))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
}

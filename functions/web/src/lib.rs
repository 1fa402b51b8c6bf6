//! The web page, served by the app itself: `GET /` (the page) and `GET /static/{app.js,app.css}`.
//! Everything is built into the component (no CDN, no framework): the page signs in with
//! `POST /login`, uploads with the tus protocol on `/uploads` (progress per file, resumed after a
//! network error), follows each job with `GET /jobs/{id}` as its `Retry-After` says, lists
//! earlier jobs with `GET /jobs`, downloads through the signed link, and deletes with
//! `DELETE /jobs/{id}`.
//!
//! The token lives in the tab's `sessionStorage`, never in a cookie, so no other site can make
//! the browser use it; the Content-Security-Policy allows this origin's scripts and styles only.

use component_http::Reply;

/// The component's name in its log line.
pub const COMPONENT: &str = "web";

/// A file of the page.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 3] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../assets/index.html"),
    },
    Asset {
        path: "/static/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/app.js"),
    },
    Asset {
        path: "/static/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../assets/app.css"),
    },
];

/// What the browser may do with the page: this origin's scripts, styles and requests only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'none'; \
    frame-ancestors 'none'; base-uri 'none'";

/// The answer to `method` on `path` (the query is ignored): the asset, 404 for another path,
/// 405 for a method other than GET or HEAD.
pub fn serve(method: &str, path: &str) -> Reply {
    let Some(asset) = ASSETS.iter().find(|a| a.path == path) else {
        return Reply::text(404, "not found", "not_found");
    };
    if method != "GET" && method != "HEAD" {
        return Reply::method_not_allowed("GET, HEAD");
    }
    let mut reply = Reply::new(200, asset.content_type, asset.body, "ok")
        // Small, and changed with every release: always revalidated.
        .header("cache-control", "no-cache")
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer");
    if asset.path == "/" {
        reply = reply
            .header("content-security-policy", CONTENT_SECURITY_POLICY)
            .header("x-frame-options", "DENY");
    }
    reply
}

#[cfg(target_arch = "wasm32")]
mod spin {
    use std::time::Instant;

    use component_http::spin::{method_name, respond};
    use spin_sdk::http::{IncomingRequest, ResponseOutparam};
    use spin_sdk::http_component;

    #[http_component]
    fn handle(req: IncomingRequest, out: ResponseOutparam) {
        let started = Instant::now();
        let method = method_name(&req.method());
        let target = req.path_with_query().unwrap_or_default();
        let path = target.split('?').next().unwrap_or_default();
        respond(
            super::COMPONENT,
            &method,
            out,
            super::serve(&method, path),
            started,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_files() {
        let page = serve("GET", "/");
        assert_eq!(page.status, 200);
        assert_eq!(
            page.header_value("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(
            page.header_value("content-security-policy"),
            Some(CONTENT_SECURITY_POLICY)
        );
        // Everything the page loads is ours.
        for path in ["/static/app.js", "/static/app.css"] {
            assert!(page.body.contains(path), "{path}");
            let asset = serve("GET", path);
            assert_eq!(asset.status, 200, "{path}");
            assert_eq!(
                asset.header_value("x-content-type-options"),
                Some("nosniff")
            );
        }
        assert!(!page.body.contains("http://") && !page.body.contains("https://"));
        assert!(
            !serve("GET", "/static/app.js").body.contains("innerHTML"),
            "text, never markup"
        );
        assert_eq!(serve("HEAD", "/").status, 200);
    }

    #[test]
    fn nothing_else() {
        assert_eq!(serve("GET", "/static/../Cargo.toml").status, 404);
        assert_eq!(serve("GET", "/static/").status, 404);
        let refused = serve("POST", "/");
        assert_eq!(refused.status, 405);
        assert_eq!(refused.header_value("allow"), Some("GET, HEAD"));
    }
}

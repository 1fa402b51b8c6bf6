//! The gateway: the only public entry of the app. It forwards `POST /login`, `/logout` and
//! `/validate` to the auth service, checks every other request's bearer token with the
//! auth service's `POST /validate`, and serves uploads, job status and downloads from MongoDB (GridFS) and
//! RabbitMQ over outbound TCP.
//!
//! Spin variables read: `auth_url` (base URL of login and validate, `http://self.alt` for this
//! app itself), `mongodb_url`, `amqp_url`, `max_upload_bytes`, `download_key` and
//! `download_link_ttl_secs` (signed download links; an empty key turns them off).
//!
//! | route | success | errors |
//! |---|---|---|
//! | `POST /login` | the auth service's answer (200 and the JWT, `Cache-Control: no-store`) | its 401/429, 503 when it is unreachable |
//! | `POST /validate` | the auth service's answer (200 and the claims) | its 401/403, 503 when it is unreachable |
//! | `POST /logout` | the auth service's answer (200: every token of the user revoked) | its 401/403, 503 when it is unreachable |
//! | `POST /upload` (multipart, one file) | 202 `{"job_id","video_fid","status_url"}` | 400 (no file, several files, not multipart), 413, 415, 503 |
//! | `GET /jobs?limit=&cursor=` | 200 `{"jobs":[…],"next":…}`, the caller's jobs, newest first | 400 (bad limit or cursor), 503 |
//! | `GET /jobs/{id}` | 200 the job as JSON (`Retry-After` while it moves) | 404 (unknown, or another user's: the same answer) |
//! | `DELETE /jobs/{id}` | 204: the job, its video and its MP3 deleted (a conversion under way is dropped) | 404 (as above), 503 (retry: it finishes the deletion) |
//! | `OPTIONS /uploads` | 204 with the tus headers (version, extensions, max size, checksums) | |
//! | `POST /uploads` (tus creation: `Upload-Length`, `Upload-Metadata`) | 201, `Location: /uploads/{id}`, `Upload-Expires` | 400, 412, 413 |
//! | `HEAD /uploads/{id}` | 200 `Upload-Offset`, `Upload-Length` | 404 (unknown, another user's, expired) |
//! | `PATCH /uploads/{id}` (`Upload-Offset`, optional `Upload-Checksum: sha1 …`) | 204, the new `Upload-Offset`; the last byte makes the job `{id}` | 400, 404, 409, 412, 413, 415, 460, 503 |
//! | `DELETE /uploads/{id}` (tus termination) | 204 | 404 |
//! | `GET /download?fid=<mp3 id>` | 200 or 206 `audio/mpeg`, streamed | 400 (missing or malformed fid), 404 (unknown or another user's), 416, 503 |
//! | `GET /download?fid=…&expires=…&sig=…` (a signed link, no token) | the same | 403 (`invalid link`, `link expired`, or no `download_key`), 400, 404, 416, 503 |
//!
//! Every other route needs `Authorization: Bearer <jwt>`: 401 without one, 403 for one
//! validate refuses, 503 when validate cannot be reached. Other paths are 404, other methods
//! 405. Errors are one line of plain text; one `key=value` log line per request goes to stderr.
//!
//! The decisions live in small modules unit-tested natively ([`auth`], [`upload`], [`jobs`],
//! [`download`], [`range`], [`magic`]); [`backend`] talks to MongoDB and RabbitMQ; the Spin
//! entry point (wasm only) wires them to the request and the streaming response.

// Decisions return `Result<_, Reply>`: the refusal is the reply to send, built once per request,
// so its size does not matter.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod backend;
pub mod config;
pub mod download;
pub mod jobs;
pub mod magic;
pub mod range;
pub mod tus;
pub mod upload;
pub mod webhook;

use component_http::Reply;
pub use config::Config;

/// The component's name in its log line.
pub const COMPONENT: &str = "gateway";

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Login,
    /// `POST /validate`, forwarded as is (in Kubernetes the ingress sends it here).
    Validate,
    /// `POST /logout`, forwarded as is.
    Logout,
    Upload,
    /// `GET /jobs`: the caller's jobs, a page at a time.
    Jobs,
    /// `GET /jobs/{id}`, with the id as sent (not yet checked).
    Job(String),
    /// `DELETE /jobs/{id}`: the job, its video and its MP3.
    DeleteJob(String),
    /// `OPTIONS /uploads[/{id}]`: the tus protocol's discovery.
    TusOptions,
    /// `POST /uploads`: a new resumable upload.
    TusCreate,
    /// `HEAD`, `PATCH` or `DELETE /uploads/{id}`, with the id as sent and the method.
    TusUpload(String, TusMethod),
    Download,
    Webhook(WebhookAction),
}

/// What `/webhook` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookAction {
    Show,
    Update,
    Rotate,
}

/// What is done to a resumable upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TusMethod {
    Head,
    Patch,
    Delete,
}

/// Routes a request by method and path (without the query): 404 for an unknown path, 405
/// (with `Allow`) for a known path and another method.
pub fn route(method: &str, path: &str) -> Result<Route, Reply> {
    let (allowed, route) = match (path, method) {
        ("/login", _) => ("POST", Some(Route::Login)),
        ("/validate", _) => ("POST", Some(Route::Validate)),
        ("/logout", _) => ("POST", Some(Route::Logout)),
        ("/upload", _) => ("POST", Some(Route::Upload)),
        ("/download", _) => ("GET", Some(Route::Download)),
        ("/jobs", _) => ("GET", Some(Route::Jobs)),
        ("/webhook", "GET") => ("GET, PUT", Some(Route::Webhook(WebhookAction::Show))),
        ("/webhook", _) => ("GET, PUT", Some(Route::Webhook(WebhookAction::Update))),
        ("/webhook/rotate", _) => ("POST", Some(Route::Webhook(WebhookAction::Rotate))),
        ("/uploads", "OPTIONS") => ("OPTIONS, POST", Some(Route::TusOptions)),
        ("/uploads", _) => ("OPTIONS, POST", Some(Route::TusCreate)),
        _ if path.starts_with("/uploads/") => {
            let id = &path["/uploads/".len()..];
            if id.is_empty() || id.contains('/') {
                return Err(Reply::text(404, "not found", "not_found"));
            }
            let route = match method {
                "OPTIONS" => Some(Route::TusOptions),
                "HEAD" => Some(Route::TusUpload(id.to_owned(), TusMethod::Head)),
                "PATCH" => Some(Route::TusUpload(id.to_owned(), TusMethod::Patch)),
                "DELETE" => Some(Route::TusUpload(id.to_owned(), TusMethod::Delete)),
                _ => None,
            };
            ("HEAD, PATCH, DELETE, OPTIONS", route)
        }
        _ => match path.strip_prefix("/jobs/") {
            Some(id) if !id.is_empty() && !id.contains('/') => {
                let id = id.to_owned();
                let route = match method {
                    "GET" => Some(Route::Job(id)),
                    "DELETE" => Some(Route::DeleteJob(id)),
                    _ => None,
                };
                ("GET, DELETE", route)
            }
            _ => return Err(Reply::text(404, "not found", "not_found")),
        },
    };
    match route {
        Some(route) if allowed.split(", ").any(|m| m == method) => Ok(route),
        _ => Err(Reply::method_not_allowed(allowed)),
    }
}

/// Splits a request target into path and query (`""` when there is none).
pub fn split_target(target: &str) -> (&str, &str) {
    target.split_once('?').unwrap_or((target, ""))
}

/// 413 when a declared `Content-Length` is over the limit (checked before reading anything).
pub fn declared_too_large(content_length: Option<&str>, max_bytes: u64) -> bool {
    content_length
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|len| len > max_bytes)
}

#[cfg(target_arch = "wasm32")]
mod spin;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("POST", "/login"), Ok(Route::Login));
        assert_eq!(route("POST", "/upload"), Ok(Route::Upload));
        assert_eq!(route("GET", "/download"), Ok(Route::Download));
        assert_eq!(route("GET", "/jobs/abc"), Ok(Route::Job("abc".into())));
        assert_eq!(route("GET", "/jobs"), Ok(Route::Jobs));
        assert_eq!(route("POST", "/jobs").unwrap_err().status, 405);
        let refused = route("GET", "/upload").unwrap_err();
        assert_eq!(refused.status, 405);
        assert!(refused.headers.contains(&("allow", "POST".into())));
        assert_eq!(
            route("DELETE", "/jobs/abc"),
            Ok(Route::DeleteJob("abc".into()))
        );
        let refused = route("PUT", "/jobs/abc").unwrap_err();
        assert_eq!(refused.status, 405);
        assert!(refused.headers.contains(&("allow", "GET, DELETE".into())));
        assert_eq!(route("DELETE", "/jobs").unwrap_err().status, 405);
        assert_eq!(route("POST", "/validate"), Ok(Route::Validate));
        assert_eq!(route("POST", "/uploads"), Ok(Route::TusCreate));
        assert_eq!(route("OPTIONS", "/uploads"), Ok(Route::TusOptions));
        assert_eq!(
            route("PATCH", "/uploads/abc"),
            Ok(Route::TusUpload("abc".into(), TusMethod::Patch))
        );
        let refused = route("GET", "/uploads/abc").unwrap_err();
        assert_eq!(refused.status, 405);
        assert!(refused
            .headers
            .contains(&("allow", "HEAD, PATCH, DELETE, OPTIONS".into())));
        assert_eq!(route("GET", "/uploads").unwrap_err().status, 405);
        assert_eq!(
            route("GET", "/webhook"),
            Ok(Route::Webhook(WebhookAction::Show))
        );
        assert_eq!(
            route("PUT", "/webhook"),
            Ok(Route::Webhook(WebhookAction::Update))
        );
        assert_eq!(
            route("POST", "/webhook/rotate"),
            Ok(Route::Webhook(WebhookAction::Rotate))
        );
        assert_eq!(route("POST", "/webhook").unwrap_err().status, 405);
        assert_eq!(route("GET", "/webhook/rotate").unwrap_err().status, 405);
        for path in [
            "/",
            "/jobs/",
            "/jobs/a/b",
            "/uploads/",
            "/uploads/a/b",
            "/validates",
        ] {
            let refused = route("GET", path).unwrap_err();
            assert_eq!(
                (refused.status, refused.body.as_str()),
                (404, "not found"),
                "{path}"
            );
        }
    }

    #[test]
    fn targets_and_declared_lengths() {
        assert_eq!(split_target("/download?fid=1"), ("/download", "fid=1"));
        assert_eq!(split_target("/upload"), ("/upload", ""));
        assert!(declared_too_large(Some("101"), 100));
        assert!(!declared_too_large(Some("100"), 100));
        assert!(!declared_too_large(None, 100));
        assert!(!declared_too_large(Some("junk"), 100));
    }
}

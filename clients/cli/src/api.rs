//! The service's HTTP API, as the CLI uses it: login, jobs, downloads, and the tus upload
//! protocol. Every failure says what was asked and what came back, in one line.

use std::io::Read;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use serde::Deserialize;
use ureq::http::Response;
use ureq::{Agent, Body};

/// A user's webhook settings, as `GET /webhook` shows them.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSettings {
    pub secret: String,
    pub url: Option<String>,
    #[serde(default)]
    pub previous_secret_expires_at: Option<i64>,
}

/// Why a request failed, when the CLI's exit code or a retry depends on it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401 or 403: no token, or one the server refuses.
    #[error("{0}")]
    Auth(String),
    /// No connection to the server, or it stopped answering.
    #[error("{0}")]
    Unreachable(String),
    /// Any other answer than a success: its status, the server's one-line reason, and when to
    /// ask again if it said.
    #[error("{message}")]
    Refused {
        status: u16,
        message: String,
        retry_after: Option<u64>,
    },
}

/// The [`ApiError`] in `error`, as a context (found by `downcast_ref`) or a cause.
pub fn api_error(error: &anyhow::Error) -> Option<&ApiError> {
    error
        .downcast_ref::<ApiError>()
        .or_else(|| error.chain().find_map(|c| c.downcast_ref::<ApiError>()))
}

/// The HTTP status a failure came with, if it was an answer.
pub fn status_of(error: &anyhow::Error) -> Option<u16> {
    match api_error(error)? {
        ApiError::Refused { status, .. } => Some(*status),
        _ => None,
    }
}

/// How long the server asked to wait before trying again, if it did.
pub fn retry_after(error: &anyhow::Error) -> Option<u64> {
    match api_error(error)? {
        ApiError::Refused { retry_after, .. } => *retry_after,
        _ => None,
    }
}

/// A job as `GET /jobs/{id}` shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    pub job_id: String,
    pub status: String,
    pub filename: String,
    pub created_at: i64,
    #[serde(default)]
    pub download_url: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

impl Job {
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "done" | "failed")
    }
}

/// One page of `GET /jobs`.
#[derive(Debug, Deserialize)]
pub struct Page {
    pub jobs: Vec<Job>,
    pub next: Option<String>,
}

/// The service at `base` (`http://host:port`), with a token or without.
#[derive(Clone)]
pub struct Api {
    agent: Agent,
    base: String,
    token: Option<String>,
}

/// Whether a failure is worth trying again: the connection broke or timed out, or the server
/// is busy, restarting or behind a failing proxy (408, 423, 429, 5xx).
pub fn is_transient(error: &anyhow::Error) -> bool {
    match api_error(error) {
        Some(ApiError::Unreachable(_)) => true,
        Some(ApiError::Refused { status, .. }) => {
            matches!(status, 408 | 423 | 429) || (500..600).contains(status)
        }
        Some(ApiError::Auth(_)) => false,
        None => error
            .chain()
            .any(|cause| cause.downcast_ref::<ureq::Error>().is_some()),
    }
}

impl Api {
    pub fn new(base: &str, token: Option<String>) -> Self {
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            // Per read and per write, never per request: a big PATCH or download takes as long
            // as it takes, a stalled connection does not.
            .timeout_per_read(Some(Duration::from_secs(120)))
            .timeout_per_write(Some(Duration::from_secs(120)))
            .build()
            .into();
        Self {
            agent,
            base: base.trim_end_matches('/').to_owned(),
            token,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The URL of `path` on this server. A path from the server (a download link, a next page)
    /// must be one: `@host/...` or `//host/...` would send the token elsewhere.
    fn url(&self, path: &str) -> anyhow::Result<String> {
        if !path.starts_with('/') || path.starts_with("//") || path.contains('\\') {
            bail!("refusing a link off this server: {path:?}");
        }
        Ok(format!("{}{path}", self.base))
    }

    /// Whether a token goes with the requests (a login saved for this server).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    fn bearer(&self) -> anyhow::Result<String> {
        self.token
            .as_ref()
            .map(|t| format!("Bearer {t}"))
            .ok_or_else(|| ApiError::Auth("not logged in: run `mp3 login` first".into()).into())
    }

    /// Runs a request; a connection failure becomes [`ApiError::Unreachable`].
    fn run(
        &self,
        what: &str,
        result: Result<Response<Body>, ureq::Error>,
    ) -> anyhow::Result<Response<Body>> {
        match result {
            Ok(response) => Ok(response),
            Err(
                e @ (ureq::Error::Io(_)
                | ureq::Error::ConnectionFailed
                | ureq::Error::HostNotFound
                | ureq::Error::Timeout(_)),
            ) => Err(anyhow::Error::new(e).context(ApiError::Unreachable(format!(
                "{what}: cannot reach {}",
                self.base
            )))),
            Err(e) => Err(anyhow::Error::new(e).context(what.to_owned())),
        }
    }

    /// Turns a non-2xx answer into an error carrying the server's one-line reason.
    fn check(what: &str, mut response: Response<Body>) -> anyhow::Result<Response<Body>> {
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let reason = response
            .body_mut()
            .with_config()
            .limit(4096)
            .read_to_string()
            .unwrap_or_default();
        let reason = reason.lines().next().unwrap_or("").trim();
        let message = format!("{what}: {reason} ({status})");
        if status == 401 || status == 403 {
            return Err(ApiError::Auth(message).into());
        }
        Err(ApiError::Refused {
            status,
            message,
            retry_after,
        }
        .into())
    }

    /// `POST /login` with HTTP Basic: the token.
    pub fn login(&self, email: &str, password: &str) -> anyhow::Result<String> {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{email}:{password}"));
        let response = self.run(
            "logging in",
            self.agent
                .post(self.url("/login")?)
                .header("authorization", format!("Basic {basic}"))
                .send_empty(),
        )?;
        let mut response = Self::check("logging in", response)?;
        let token = response.body_mut().read_to_string()?;
        Ok(token.trim().to_owned())
    }

    /// `POST /logout`: every token of the user stops working.
    pub fn logout(&self) -> anyhow::Result<()> {
        let response = self.run(
            "logging out",
            self.agent
                .post(self.url("/logout")?)
                .header("authorization", self.bearer()?)
                .send_empty(),
        )?;
        Self::check("logging out", response).map(|_| ())
    }

    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
    ) -> anyhow::Result<(T, Option<u64>)> {
        let response = self.run(
            what,
            self.agent
                .get(self.url(path)?)
                .header("authorization", self.bearer()?)
                .call(),
        )?;
        let mut response = Self::check(what, response)?;
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let text = response
            .body_mut()
            .with_config()
            .limit(16 * 1024 * 1024)
            .read_to_string()
            .with_context(|| format!("{what}: reading the answer"))?;
        let value = serde_json::from_str(&text)
            .with_context(|| format!("{what}: the answer is not the expected JSON"))?;
        Ok((value, retry_after))
    }

    /// A page of the caller's jobs: `path` is `/jobs?...` or a `next` link.
    pub fn jobs(&self, path: &str) -> anyhow::Result<Page> {
        self.get_json("listing jobs", path).map(|(page, _)| page)
    }

    /// The job and how long to wait before asking again while it moves.
    pub fn job(&self, id: &str) -> anyhow::Result<(Job, Option<u64>)> {
        self.get_json(
            &format!("reading job {id}"),
            &format!("/jobs/{}", path_segment(id)),
        )
    }

    /// The caller's webhook settings (`secret`, `url`).
    pub fn webhook(&self) -> anyhow::Result<WebhookSettings> {
        self.get_json("reading the webhook settings", "/webhook")
            .map(|(settings, _)| settings)
    }

    /// Sets (or, with `None`, removes) the default callback.
    pub fn set_webhook_url(&self, url: Option<&str>) -> anyhow::Result<WebhookSettings> {
        let what = "setting the webhook";
        let body = serde_json::json!({ "url": url }).to_string();
        let response = self.run(
            what,
            self.agent
                .put(self.url("/webhook")?)
                .header("authorization", self.bearer()?)
                .header("content-type", "application/json")
                .send(body.as_bytes()),
        )?;
        Self::read_json(what, Self::check(what, response)?)
    }

    /// A new secret (the old one signs too for a day).
    pub fn rotate_webhook_secret(&self) -> anyhow::Result<WebhookSettings> {
        let what = "rotating the webhook secret";
        let response = self.run(
            what,
            self.agent
                .post(self.url("/webhook/rotate")?)
                .header("authorization", self.bearer()?)
                .send_empty(),
        )?;
        Self::read_json(what, Self::check(what, response)?)
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        what: &str,
        mut response: Response<Body>,
    ) -> anyhow::Result<T> {
        let text = response
            .body_mut()
            .with_config()
            .limit(1024 * 1024)
            .read_to_string()
            .with_context(|| format!("{what}: reading the answer"))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{what}: the answer is not the expected JSON"))
    }

    pub fn delete_job(&self, id: &str) -> anyhow::Result<()> {
        let what = format!("deleting job {id}");
        let response = self.run(
            &what,
            self.agent
                .delete(self.url(&format!("/jobs/{}", path_segment(id)))?)
                .header("authorization", self.bearer()?)
                .call(),
        )?;
        Self::check(&what, response).map(|_| ())
    }

    /// Streams `path` (a job's `download_url`) into `out`; the bytes written.
    pub fn download(&self, path: &str, out: &mut dyn std::io::Write) -> anyhow::Result<u64> {
        let response = self.run(
            "downloading",
            self.agent
                .get(self.url(path)?)
                .header("authorization", self.bearer()?)
                .call(),
        )?;
        let mut response = Self::check("downloading", response)?;
        let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
        std::io::copy(&mut reader, out).context("downloading")
    }

    /// tus creation: the new upload's path (`/uploads/{id}`).
    pub fn create_upload(
        &self,
        length: u64,
        filename: &str,
        options: &[(&str, String)],
    ) -> anyhow::Result<String> {
        let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        let mut metadata = format!("filename {}", b64(filename));
        for (name, value) in options {
            metadata.push_str(&format!(",{name} {}", b64(value)));
        }
        let response = self.run(
            "starting the upload",
            self.agent
                .post(self.url("/uploads")?)
                .header("authorization", self.bearer()?)
                .header("tus-resumable", "1.0.0")
                .header("upload-length", length.to_string())
                .header("upload-metadata", metadata)
                .send_empty(),
        )?;
        let response = Self::check("starting the upload", response)?;
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow!("starting the upload: no Location in the answer"))?;
        // The server answers with a path; a full URL is reduced to one.
        let path = match location.find("/uploads/") {
            Some(at) => &location[at..],
            None => {
                return Err(anyhow!(
                    "starting the upload: unexpected Location {location:?}"
                ))
            }
        };
        Ok(path.to_owned())
    }

    /// tus HEAD: the bytes stored and the declared length, or `None` if the upload is gone.
    pub fn upload_offset(&self, path: &str) -> anyhow::Result<Option<(u64, u64)>> {
        let response = self.run(
            "asking how far the upload got",
            self.agent
                .head(self.url(path)?)
                .header("authorization", self.bearer()?)
                .header("tus-resumable", "1.0.0")
                .call(),
        )?;
        if response.status().as_u16() == 404 {
            return Ok(None);
        }
        let response = Self::check("asking how far the upload got", response)?;
        let number = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| anyhow!("the server's answer has no {name}"))
        };
        Ok(Some((number("upload-offset")?, number("upload-length")?)))
    }

    /// tus PATCH of `piece` at `offset`, with its SHA-1; the new offset.
    pub fn patch(
        &self,
        path: &str,
        offset: u64,
        piece: &[u8],
        sent: &dyn Fn(u64),
    ) -> anyhow::Result<u64> {
        use sha1::Digest as _;
        let digest = base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(piece));
        let mut reader = Counting { inner: piece, sent };
        let response = self.run(
            "uploading",
            self.agent
                .patch(self.url(path)?)
                .header("authorization", self.bearer()?)
                .header("tus-resumable", "1.0.0")
                .header("upload-offset", offset.to_string())
                .header("upload-checksum", format!("sha1 {digest}"))
                .header("content-type", "application/offset+octet-stream")
                .header("content-length", piece.len().to_string())
                .send(ureq::SendBody::from_reader(&mut reader)),
        )?;
        let response = Self::check("uploading", response)?;
        response
            .headers()
            .get("upload-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("uploading: the server's answer has no Upload-Offset"))
    }

    pub fn terminate_upload(&self, path: &str) -> anyhow::Result<()> {
        let response = self.run(
            "cancelling the upload",
            self.agent
                .delete(self.url(path)?)
                .header("authorization", self.bearer()?)
                .header("tus-resumable", "1.0.0")
                .call(),
        )?;
        Self::check("cancelling the upload", response).map(|_| ())
    }
}

/// A reader that reports how many bytes were read so far.
struct Counting<'a> {
    inner: &'a [u8],
    sent: &'a dyn Fn(u64),
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.sent)(n as u64);
        Ok(n)
    }
}

/// An id as one path segment: anything but `[0-9A-Za-z]` percent-encoded, so a hostile id
/// cannot reach another route.
fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_from_the_server_stay_on_it() {
        let api = Api::new("http://127.0.0.1:3000", Some("t".into()));
        assert_eq!(
            api.url("/download?fid=ab").unwrap(),
            "http://127.0.0.1:3000/download?fid=ab"
        );
        for off in [
            "@evil.example/x",
            "//evil.example/x",
            "evil/x",
            "/\\evil",
            "",
        ] {
            assert!(api.url(off).is_err(), "{off:?}");
        }
    }

    #[test]
    fn which_failures_are_tried_again() {
        let refused = |status| -> anyhow::Error {
            ApiError::Refused {
                status,
                message: String::new(),
                retry_after: Some(5),
            }
            .into()
        };
        for status in [408, 423, 429, 500, 502, 503, 504] {
            assert!(is_transient(&refused(status)), "{status}");
        }
        for status in [400, 404, 409, 413, 415, 460] {
            assert!(!is_transient(&refused(status)), "{status}");
        }
        assert!(!is_transient(&ApiError::Auth(String::new()).into()));
        assert!(is_transient(&ApiError::Unreachable(String::new()).into()));
        let wrapped = refused(423).context("uploading");
        assert_eq!(
            (status_of(&wrapped), retry_after(&wrapped)),
            (Some(423), Some(5))
        );
    }

    #[test]
    fn ids_stay_one_segment() {
        assert_eq!(path_segment("6650c2aa"), "6650c2aa");
        assert_eq!(path_segment("../x?y"), "%2E%2E%2Fx%3Fy");
    }
}

//! A blocking HTTP client that returns every status as data, for asserting on errors.

use std::sync::OnceLock;
use std::time::Duration;

/// A response: status, selected headers, body as text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into()
    })
}

/// Sends `method url` with `headers` and an optional body.
pub fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Reply {
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(body.map(<[u8]>::to_vec).unwrap_or_default())
        .expect("building a request");
    let mut response = agent()
        .run(request)
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = response
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| format!("<unreadable body: {e}>"));
    Reply {
        status,
        body,
        headers,
    }
}

pub fn get(url: &str) -> Reply {
    send("GET", url, &[], None)
}

pub fn post(url: &str, headers: &[(&str, &str)]) -> Reply {
    send("POST", url, headers, Some(b""))
}

/// A response with its body as bytes (downloads).
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (error replies).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request body: none, bytes (sent with `Content-Length`), or a reader (sent chunked).
pub enum Body {
    Empty,
    Bytes(Vec<u8>),
    Stream(Box<dyn std::io::Read + Send + 'static>),
}

/// Sends a request and returns the response with a binary body; `Err` when the exchange
/// itself failed (connection reset, ...).
pub fn send_raw(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> Result<RawReply, String> {
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let result = match body {
        Body::Empty => agent().run(request.body(()).expect("building a request")),
        Body::Bytes(bytes) => agent().run(request.body(bytes).expect("building a request")),
        Body::Stream(reader) => agent().run(
            request
                .body(ureq::SendBody::from_owned_reader(reader))
                .expect("building a request"),
        ),
    };
    let mut response = result.map_err(|e| format!("{method} {url}: {e}"))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .map_err(|e| format!("{method} {url}: reading the body: {e}"))?;
    Ok(RawReply {
        status,
        body,
        headers,
    })
}

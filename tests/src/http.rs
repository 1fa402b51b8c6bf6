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

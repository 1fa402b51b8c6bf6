//! The glue between a component's decision and the Spin SDK (wasm build only).

use std::time::Instant;

use spin_sdk::http::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::OutputStream;

use mp3_auth::revocation::{cache_key, Cached, GenerationCache};

use crate::{log_line, Reply, Variables};

/// Spin variables, through the SDK.
pub struct SpinVariables;

impl Variables for SpinVariables {
    fn variable(&self, name: &str) -> Result<String, String> {
        spin_sdk::variables::get(name).map_err(|e| e.to_string())
    }
}

/// Users' cached token generations in Spin's `default` key-value store, opened on first use
/// (at most once per request).
#[derive(Default)]
pub struct SpinGenerationCache {
    store: std::cell::OnceCell<Option<spin_sdk::key_value::Store>>,
}

impl SpinGenerationCache {
    fn store(&self) -> Option<&spin_sdk::key_value::Store> {
        self.store
            .get_or_init(|| spin_sdk::key_value::Store::open_default().ok())
            .as_ref()
    }
}

impl GenerationCache for SpinGenerationCache {
    fn cached_generation(&self, email: &str) -> Option<Cached> {
        let bytes = self.store()?.get(&cache_key(email)).ok()??;
        Cached::decode(&bytes)
    }

    fn cache_generation(&self, email: &str, cached: Cached) {
        if let Some(store) = self.store() {
            let _ = store.set(&cache_key(email), &cached.encode());
        }
    }
}

/// The request method as its HTTP token (`GET`, `POST`, ... or the method as sent).
pub fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.clone(),
    }
}

/// The single value of header `name` as UTF-8, or `None` (absent, repeated or not UTF-8).
pub fn header(req: &IncomingRequest, name: &str) -> Option<String> {
    let mut values = req.headers().get(name);
    if values.len() != 1 {
        return None;
    }
    String::from_utf8(values.pop()?).ok()
}

/// Every value of header `name` that is UTF-8, in order.
pub fn header_values(req: &IncomingRequest, name: &str) -> Vec<String> {
    req.headers()
        .get(name)
        .into_iter()
        .filter_map(|v| String::from_utf8(v).ok())
        .collect()
}

/// The address Spin saw the request come from: the last `spin-client-addr`, the one Spin
/// appends after the request's own headers (a client may send the header too).
pub fn peer_ip(req: &IncomingRequest) -> Option<std::net::IpAddr> {
    crate::forwarded::peer_ip(header_values(req, "spin-client-addr").last()?)
}

/// The single `Authorization` header as UTF-8, or `None` (absent, repeated or not UTF-8).
pub fn authorization(req: &IncomingRequest) -> Option<String> {
    header(req, "authorization")
}

/// An outgoing response with `status` and `headers`, its body not yet written.
pub fn response_head(status: u16, headers: &[(&str, String)]) -> Result<OutgoingResponse, String> {
    let list: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.clone().into_bytes()))
        .collect();
    let fields = Fields::from_list(&list).map_err(|e| format!("response headers: {e:?}"))?;
    let response = OutgoingResponse::new(fields);
    response
        .set_status_code(status)
        .map_err(|()| format!("invalid status {status}"))?;
    Ok(response)
}

/// Writes the request's log line to stderr and sends `reply` as the whole response.
pub fn respond(
    component: &str,
    method: &str,
    out: ResponseOutparam,
    reply: Reply,
    started: Instant,
) {
    eprintln!("{}", log_line(component, method, &reply, started.elapsed()));
    let mut headers = reply.headers;
    headers.push(("content-length", reply.body.len().to_string()));
    let sent = response_head(reply.status, &headers)
        .and_then(|response| start_body(out, response, reply.body.as_bytes()))
        .and_then(BodyWriter::finish);
    if let Err(e) = sent {
        eprintln!(
            "component={component} error={:?}",
            format!("sending the response: {e}")
        );
    }
}

/// Sends the head of `response` with `first` already in its body, and returns the body for the
/// rest. The bytes are queued before the head is handed to the host, so the host writes head and
/// body to the connection together. Handing the head over first, as the SDK's `set_with_body`
/// does, lets the host write it alone; Spin 3.6 leaves Nagle's algorithm on for its
/// connections, so the small body segment that follows then waits for the client's delayed ACK:
/// about 40 ms, on a good share of the requests on a kept-alive connection.
pub fn start_body(
    out: ResponseOutparam,
    response: OutgoingResponse,
    first: &[u8],
) -> Result<BodyWriter, String> {
    let body = response
        .body()
        .map_err(|()| "the response body was already taken".to_owned())?;
    let stream = body
        .write()
        .map_err(|()| "the body stream was already taken".to_owned())?;
    // Before the head is sent, the host takes one write of up to its chunk size (1 MiB); a
    // bigger start goes after the head like the rest.
    let fits = stream
        .check_write()
        .is_ok_and(|permit| first.len() as u64 <= permit);
    let writer = BodyWriter { stream, body };
    if fits {
        if !first.is_empty() {
            writer
                .stream
                .write(first)
                .map_err(|e| format!("writing the body: {e:?}"))?;
        }
        out.set(response);
    } else {
        out.set(response);
        writer.write_all(first)?;
    }
    Ok(writer)
}

/// A response body being written after its head was sent. Dropped unfinished (after a failed
/// read, say), the response ends early and the client sees it cut short.
pub struct BodyWriter {
    // Fields drop in order, and the stream must go before the body it belongs to.
    stream: OutputStream,
    body: OutgoingBody,
}

impl BodyWriter {
    /// Writes all of `bytes`, as much per write as the host takes, waiting while it is busy.
    pub fn write_all(&self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            let permit = self
                .stream
                .check_write()
                .map_err(|e| format!("writing the body: {e:?}"))?;
            if permit == 0 {
                self.stream.subscribe().block();
                continue;
            }
            let n = bytes
                .len()
                .min(usize::try_from(permit).unwrap_or(usize::MAX));
            self.stream
                .write(&bytes[..n])
                .map_err(|e| format!("writing the body: {e:?}"))?;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Ends the body.
    pub fn finish(self) -> Result<(), String> {
        drop(self.stream);
        OutgoingBody::finish(self.body, None).map_err(|e| format!("finishing the body: {e:?}"))
    }
}

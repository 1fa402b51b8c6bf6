//! The glue between a component's decision and the Spin SDK (wasm build only).

use std::time::Instant;

use spin_sdk::http::{IncomingRequest, Method, Response};

use crate::{log_line, Reply, Variables};

/// Spin variables, through the SDK.
pub struct SpinVariables;

impl Variables for SpinVariables {
    fn variable(&self, name: &str) -> Result<String, String> {
        spin_sdk::variables::get(name).map_err(|e| e.to_string())
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

/// The single `Authorization` header as UTF-8, or `None` (absent, repeated or not UTF-8).
pub fn authorization(req: &IncomingRequest) -> Option<String> {
    let mut values = req.headers().get("authorization");
    if values.len() != 1 {
        return None;
    }
    String::from_utf8(values.pop()?).ok()
}

/// Writes the request's log line to stderr and turns `reply` into the response.
pub fn respond(component: &str, method: &str, reply: Reply, started: Instant) -> Response {
    eprintln!("{}", log_line(component, method, &reply, started.elapsed()));
    let mut builder = Response::builder();
    builder.status(reply.status);
    for (name, value) in reply.headers {
        builder.header(name, value);
    }
    builder.body(reply.body).build()
}

//! Outbound wasi:http: the allow-list check, `*.spin.internal` service chaining and self requests
//! (answered in-process, as Spin does), and wasmtime's default client for everything else.

use std::future::Future;
use std::sync::Arc;

use http::uri::Authority;
use runner_outbound_hosts::{is_self_request, service_chaining_target, Denial};
use wasmtime_wasi_http::{default_send_request, Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::runtime::{ComponentIndex, Runtime};
use crate::server::with_spin_headers;

type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;
type SendFuture =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), Error>> + Send>;

/// The wasi:http hooks of one request's store.
pub struct OutboundHttp {
    runtime: Arc<Runtime>,
    component: ComponentIndex,
}

impl OutboundHttp {
    pub(crate) fn new(runtime: Arc<Runtime>, component: ComponentIndex) -> Self {
        Self { runtime, component }
    }
}

/// Where an outbound request goes.
enum Destination {
    /// Another component of this app, by id (`http://<id>.spin.internal`).
    Component(ComponentIndex),
    /// This app itself (a URL without authority, or host `self.alt` with any port). As Spin
    /// does, the request goes over the network to the address the app listens on, so the
    /// target sees what Spin's would: a real client address, and that address in the URL.
    SelfApp,
    /// The network.
    Network,
}

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> SendFuture {
        let caller = self.runtime.component(self.component);
        let allowed = &caller.allowed_hosts;
        let url = request.uri().to_string();
        let host = request.uri().authority().map(Authority::as_str);

        let destination = if is_self_request(request.uri().host()) {
            if let Err(denial) = allowed.check_self() {
                return deny(caller, &denial);
            }
            Destination::SelfApp
        } else {
            let parsed = match url::Url::parse(&url) {
                Ok(parsed) => parsed,
                Err(_) => return deny(caller, &Denial::Unparseable { url }),
            };
            if let Err(denial) = allowed.check_url(&parsed) {
                return deny(caller, &denial);
            }
            match host.and_then(service_chaining_target) {
                Some(id) => match self.runtime.component_index(id) {
                    Some(target) => Destination::Component(target),
                    // Spin refuses these as it refuses a host the allow-list lacks.
                    None => {
                        tracing::error!(component = %caller.id, "service chaining to unknown component `{id}` ({url})");
                        return Box::new(std::future::ready(Err(Error::HttpRequestDenied)));
                    }
                },
                None => Destination::Network,
            }
        };

        let runtime = self.runtime.clone();
        Box::new(async move {
            let (target, request) = match destination {
                Destination::Network => {
                    let (response, io) = default_send_request(request, options).await?;
                    let response = response.map(http_body_util::BodyExt::boxed_unsync);
                    return Ok((response, Box::new(io) as IoFuture));
                }
                Destination::Component(target) => {
                    (target, with_spin_headers(&runtime, request, None, None))
                }
                Destination::SelfApp => {
                    let request = to_self(&runtime, request)?;
                    let (response, io) = default_send_request(request, options).await?;
                    let response = response.map(http_body_util::BodyExt::boxed_unsync);
                    return Ok((response, Box::new(io) as IoFuture));
                }
            };
            // As in Spin, a component that fails answers its caller a plain 500, as it would
            // answer a client: the caller gets a response, and nothing of the failure.
            let response = match Box::pin(runtime.handle(target, request)).await {
                Ok(response) => response,
                Err(error) => {
                    let id = &runtime.component(target).id;
                    tracing::error!(component = %id, error = format!("{error:#}"), "chained request failed");
                    crate::server::status(http::StatusCode::INTERNAL_SERVER_ERROR)
                }
            };
            Ok((response, done()))
        })
    }
}

/// `request` addressed to the app's own listener (`http://<listen address><path>`, `Host` set
/// to it), as Spin rewrites a self request.
fn to_self(
    runtime: &crate::runtime::Runtime,
    mut request: http::Request<WasiBody>,
) -> Result<http::Request<WasiBody>, Error> {
    let origin = runtime.self_origin().ok_or_else(|| {
        tracing::error!("a self request before the app listens");
        Error::HttpRequestUriInvalid
    })?;
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = format!("http://{origin}{path}")
        .parse()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let host = http::HeaderValue::from_str(&origin.to_string())
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    request.headers_mut().insert(http::header::HOST, host);
    Ok(request)
}

/// Logs what `spin up` logs for a denied request, naming the component, and refuses it.
fn deny(caller: &crate::runtime::LoadedComponent, denial: &Denial) -> SendFuture {
    tracing::error!(component = %caller.id, "{} {}", denial.warning(), denial.suggestion().unwrap_or_default());
    Box::new(std::future::ready(Err(Error::HttpRequestDenied)))
}

fn done() -> IoFuture {
    Box::new(std::future::ready(Ok(())))
}

//! The HTTP trigger: listens, routes each request to its component, sets Spin's `spin-*`
//! headers, and shuts down gracefully on SIGINT/SIGTERM.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use runner_routes::{RouteMatch, WellKnown};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::idle_body::IdleTimeout;
use crate::runtime::{ComponentIndex, Runtime};

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// How long in-flight requests may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// How long a connection may take to send a request's head, counted from when the server
    /// starts waiting for it: a slow client's, and an idle kept-alive connection's, time.
    pub header_read_timeout: Duration,
    /// How long the guest may wait for the next piece of a request body.
    pub body_idle_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// Serves `runtime` on `listener` until `shutdown` resolves, then stops accepting and waits up to
/// the grace period for open connections.
pub async fn serve(
    runtime: Arc<Runtime>,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let local = listener
        .local_addr()
        .context("reading the listening address")?;
    runtime.set_self_origin(local);
    print_routes(&runtime, local);

    // HTTP/1.1 with keep-alive, as Spin's HTTP trigger serves plain-text connections. Unlike
    // Spin 3.6, which arms no timer, a head that is slow to come closes the connection.
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let body_idle = options.body_idle_timeout;
    tokio::pin!(shutdown);
    loop {
        // A slot first: past the cap, connections wait in the kernel's backlog, unread.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.context("the connection slots closed")?,
            () = &mut shutdown => break,
        };
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: keep serving the open connections.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let runtime = runtime.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let runtime = runtime.clone();
            let request = request.map(|body| IdleTimeout::new(body, body_idle));
            async move { Ok::<_, Infallible>(dispatch(&runtime, request, client).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%client, error = %error, "connection closed with an error");
            }
            drop(slot);
        });
    }

    tracing::info!("shutting down: no new connections, waiting for in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(options.shutdown_grace) => {
            tracing::warn!(grace = ?options.shutdown_grace, "in-flight requests did not finish in time");
        }
    }
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

async fn dispatch(
    runtime: &Arc<Runtime>,
    request: Request<IdleTimeout<Incoming>>,
    client: SocketAddr,
) -> Response<HyperOutgoingBody> {
    if let Some(well_known) = runner_routes::well_known(request.uri().path()) {
        return answer_well_known(runtime, well_known);
    }
    let Some(matched) = runtime.router().route(request.uri().path()) else {
        return status(StatusCode::NOT_FOUND);
    };
    // Spin 3.6 hands components only UTF-8 header values: it fails any other request before
    // the component runs (with a 500, its bug; README, "Runner and Spin"). The component never
    // sees such a request here either; the client gets the 400 it deserves.
    if let Some((name, _)) = request
        .headers()
        .iter()
        .find(|(_, value)| std::str::from_utf8(value.as_bytes()).is_err())
    {
        tracing::info!(header = %name, "refused a request: a header value is not UTF-8");
        return status(StatusCode::BAD_REQUEST);
    }
    let component: ComponentIndex = *matched.target;
    let request = with_spin_headers(runtime, request, Some(&matched), Some(client));
    match runtime.handle(component, request).await {
        Ok(response) => response,
        Err(error) => {
            tracing::error!(component = %runtime.component(component).id, error = format!("{error:#}"), "request failed");
            status(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

/// Spin answers `/.well-known/spin/health` and `/info` itself, whatever the routes say, and
/// as it does: `OK` with no content type, the app's name and version as pretty JSON (a version
/// left out when there is none).
fn answer_well_known(runtime: &Runtime, well_known: WellKnown) -> Response<HyperOutgoingBody> {
    let (content_type, body) = match well_known {
        WellKnown::Health => (None, b"OK".to_vec()),
        WellKnown::Info => {
            let mut info = serde_json::Map::new();
            info.insert("name".into(), runtime.app_name().into());
            if !runtime.app_version().is_empty() {
                info.insert("version".into(), runtime.app_version().into());
            }
            let json = serde_json::to_vec_pretty(&info).unwrap_or_default();
            (Some("application/json"), json)
        }
        WellKnown::NotFound => return status(StatusCode::NOT_FOUND),
    };
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    if let Some(content_type) = content_type {
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
    }
    response
}

/// Adds the headers Spin's HTTP trigger gives every request (`spin-full-url`, `spin-path-info`,
/// `spin-matched-route`, ...). `matched` is `None` for service chaining, where Spin routes by
/// component id rather than by path.
pub(crate) fn with_spin_headers<B>(
    _runtime: &Runtime,
    mut request: Request<B>,
    matched: Option<&RouteMatch<'_, ComponentIndex>>,
    client: Option<SocketAddr>,
) -> Request<B> {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let headers = match matched {
        Some(matched) => {
            let host = request
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok());
            matched.spin_headers(&runner_routes::full_url("http", host, path), client)
        }
        // Spin names a chained request's URL after localhost, not the `.spin.internal` host.
        None => RouteMatch::<ComponentIndex>::chained_headers(
            request.uri().path(),
            &runner_routes::full_url("http", None, path),
        ),
    };
    // Appended after the client's own headers, as Spin does, not replacing them.
    let map = request.headers_mut();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_ref()),
            HeaderValue::try_from(value.as_str()),
        ) {
            map.append(name, value);
        }
    }
    request
}

pub(crate) fn empty_body() -> HyperOutgoingBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A status with an empty body, as Spin answers misses and failures.
pub(crate) fn status(code: StatusCode) -> Response<HyperOutgoingBody> {
    let mut response = Response::new(empty_body());
    *response.status_mut() = code;
    response
}

/// Prints what `spin up` prints, so people and scripts find the address the same way.
fn print_routes(runtime: &Runtime, local: SocketAddr) {
    println!("Serving http://{local}");
    println!("Available Routes:");
    for (route, component) in runtime.router().available_routes() {
        println!(
            "  {}: http://{local}{route}",
            runtime.component(*component).id
        );
    }
}

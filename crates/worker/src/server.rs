//! The worker's HTTP endpoints: `GET /healthz` (200 while connected to RabbitMQ and consuming
//! with no job stuck, 503 otherwise) and `GET /metrics` (Prometheus / OpenMetrics text).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the worker is consuming, and since when each running job runs: set by the consumer,
/// read by `/healthz`.
#[derive(Debug, Clone)]
pub struct Health(Arc<HealthState>);

#[derive(Debug)]
struct HealthState {
    consuming: AtomicBool,
    next_job: AtomicU64,
    /// Start of each running job, by a sequence number.
    jobs: Mutex<BTreeMap<u64, Instant>>,
    /// A job running longer than this is stuck: its deadline should have ended it.
    stuck_after: Duration,
}

/// What `/healthz` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    NotConsuming,
    /// A job has run this long, past its deadline: something blocks it (and may block the
    /// worker's threads): the orchestrator should restart the worker.
    Stuck(Duration),
}

impl Health {
    /// A job running longer than `stuck_after` makes the worker unhealthy.
    pub fn new(stuck_after: Duration) -> Self {
        Self(Arc::new(HealthState {
            consuming: AtomicBool::new(false),
            next_job: AtomicU64::new(0),
            jobs: Mutex::new(BTreeMap::new()),
            stuck_after,
        }))
    }

    pub fn set_consuming(&self, consuming: bool) {
        self.0.consuming.store(consuming, Ordering::Relaxed);
    }

    pub fn is_consuming(&self) -> bool {
        self.0.consuming.load(Ordering::Relaxed)
    }

    /// Records a job as running until the returned guard drops.
    pub fn job_started(&self) -> RunningJob {
        let id = self.0.next_job.fetch_add(1, Ordering::Relaxed);
        self.jobs().insert(id, Instant::now());
        RunningJob {
            health: self.clone(),
            id,
        }
    }

    pub fn status(&self) -> Status {
        if !self.is_consuming() {
            return Status::NotConsuming;
        }
        // Sequence numbers grow with time, so the first entry is the oldest job.
        let oldest = self.jobs().values().next().map(Instant::elapsed);
        match oldest {
            Some(age) if age > self.0.stuck_after => Status::Stuck(age),
            _ => Status::Ok,
        }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Instant>> {
        // A panic while holding this lock leaves the map valid: keep using it.
        self.0.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running job, forgotten by [`Health`] when dropped.
pub struct RunningJob {
    health: Health,
    id: u64,
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        self.health.jobs().remove(&self.id);
    }
}

/// Binds `addr` now (so a taken port fails at start) and serves until `stop` fires.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    registry: Arc<Registry>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "serving /healthz and /metrics");
    Ok(tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accepting a metrics connection");
                        continue;
                    }
                },
            };
            let health = health.clone();
            let registry = registry.clone();
            let service = service_fn(move |request| {
                let response = respond(&request, &health, &registry);
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(async move {
                if let Err(error) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%error, "metrics connection");
                }
            });
        }
    }))
}

fn respond(
    request: &Request<Incoming>,
    health: &Health,
    registry: &Registry,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        );
    }
    match request.uri().path() {
        "/healthz" => match health.status() {
            Status::Ok => text(StatusCode::OK, "ok\n".into()),
            Status::NotConsuming => text(StatusCode::SERVICE_UNAVAILABLE, "not consuming\n".into()),
            Status::Stuck(age) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("a job has run for {} s, past its deadline\n", age.as_secs()),
            ),
        },
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => Response::builder()
                    .header(header::CONTENT_TYPE, OPENMETRICS)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_else(|_| {
                        text(StatusCode::INTERNAL_SERVER_ERROR, "encoding\n".into())
                    }),
                Err(error) => {
                    tracing::error!(%error, "encoding metrics");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "cannot encode metrics\n".into(),
                    )
                }
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_past_its_deadline_makes_the_worker_unhealthy_until_it_ends() {
        let health = Health::new(Duration::from_millis(50));
        assert_eq!(health.status(), Status::NotConsuming);
        health.set_consuming(true);
        assert_eq!(health.status(), Status::Ok);
        let old = health.job_started();
        std::thread::sleep(Duration::from_millis(60));
        let young = health.job_started();
        assert!(matches!(health.status(), Status::Stuck(age) if age >= Duration::from_millis(50)));
        drop(old);
        assert_eq!(health.status(), Status::Ok);
        drop(young);
        health.set_consuming(false);
        assert_eq!(health.status(), Status::NotConsuming);
    }
}

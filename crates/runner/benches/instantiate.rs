//! Per-request fixed cost: a fresh store and instance for each component of the project's
//! spin.toml, with the pooling allocator (what the runner uses) against wasmtime's on-demand
//! allocator (the baseline), in the same process. Also the whole in-process request path for
//! `POST /validate` without a token (instantiate, run the guest, build the 401), no network.
//!
//! Run with `scripts/bench-auth` (which builds the components first) or
//! `cargo bench -p spin-runner --bench instantiate`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use spin_runner::engine::EngineOptions;
use spin_runner::{Runtime, RuntimeOptions};

/// Iterations per measurement under `cargo bench`; `cargo test` runs the bench as a quick smoke
/// test (cargo passes `--bench` only to benchmarks it runs as benchmarks).
fn iterations() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        5_000
    } else {
        20
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn measure<F, Fut>(mut op: F) -> Result<(Duration, Duration, Duration)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let iterations = iterations();
    for _ in 0..iterations / 20 {
        op().await?; // warm the pool's slots and the caches
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        op().await?;
        samples.push(start.elapsed());
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    Ok((mean, percentile(&samples, 0.5), percentile(&samples, 0.99)))
}

/// The apps' secret (scripts/dev-services exports it), so a token from their login verifies here.
fn secret() -> String {
    std::env::var("SPIN_VARIABLE_JWT_SECRET")
        .unwrap_or_else(|_| "benchmark-secret-that-is-at-least-32-bytes".into())
}

async fn load(pooling: bool) -> Result<Arc<Runtime>> {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../spin.toml");
    Runtime::load(RuntimeOptions {
        manifest,
        // Instantiation never reads them, but the app refuses to load without its required
        // variables. validate reads the token's user from db_url (scripts/bench-auth makes
        // `bench@example.com` there), once per token_check_seconds.
        variables: vec![
            format!(
                "db_url={}",
                std::env::var("MP3_BENCH_DB_URL")
                    .unwrap_or_else(|_| "mysql://bench:bench@127.0.0.1:13306/auth".into())
            ),
            format!("jwt_secret={}", secret()),
        ],
        max_instance_memory: None,
        runtime_config: None,
        state_dir: Some(PathBuf::new()),
        engine: EngineOptions {
            pooling,
            ..EngineOptions::default()
        },
    })
    .await
    .context("loading spin.toml (build the components first: scripts/bench-auth does)")
}

fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

#[tokio::main]
async fn main() -> Result<()> {
    let pooled = load(true).await?;
    let on_demand = load(false).await?;

    println!(
        "instantiation, {} sequential iterations each (µs)",
        iterations()
    );
    println!("| component | allocator | mean | p50 | p99 | vs on-demand |");
    println!("|---|---|---|---|---|---|");
    for id in ["validate", "login"] {
        let mut means = Vec::new();
        for (name, runtime) in [("on-demand", &on_demand), ("pooling", &pooled)] {
            let component = runtime
                .component_index(id)
                .context("component in spin.toml")?;
            let (mean, p50, p99) = measure(|| runtime.instantiate_once(component)).await?;
            means.push(mean);
            let ratio = means[0].as_secs_f64() / mean.as_secs_f64();
            println!(
                "| {id} | {name} | {} | {} | {} | {ratio:.2}x faster |",
                micros(mean),
                micros(p50),
                micros(p99)
            );
        }
    }

    let validate = pooled
        .component_index("validate")
        .context("validate in spin.toml")?;
    // A real login's token, which carries bench@example.com's token generation (validate checks
    // it against MySQL): scripts/bench-auth passes one, with its database. Without them (as a
    // test under `cargo test --all-targets`) only the no-token row runs.
    let token = std::env::var("MP3_BENCH_TOKEN")
        .ok()
        .map(|token| format!("Bearer {token}"));
    println!();
    println!("in-process POST /validate, the whole request (µs)");
    println!("| request | mean | p50 | p99 |");
    println!("|---|---|---|---|");
    let mut rows = vec![("without a token (401)", None, 401)];
    match &token {
        Some(token) => rows.push(("with a token (200)", Some(token.as_str()), 200)),
        None => {
            println!("(with a token: skipped, MP3_BENCH_TOKEN is not set; run scripts/bench-auth)")
        }
    }
    for (label, authorization, expected) in rows {
        let (mean, p50, p99) = measure(|| {
            let runtime = pooled.clone();
            let authorization = authorization.map(str::to_owned);
            async move {
                let mut request =
                    http::Request::post("http://localhost/validate").header("host", "localhost");
                if let Some(value) = authorization {
                    request = request.header("authorization", value);
                }
                let request = request.body(http_body_util::Empty::<bytes::Bytes>::new())?;
                let response = runtime.handle(validate, request).await?;
                anyhow::ensure!(
                    response.status() == expected,
                    "unexpected status {}",
                    response.status()
                );
                Ok(())
            }
        })
        .await?;
        println!(
            "| {label} | {} | {} | {} |",
            micros(mean),
            micros(p50),
            micros(p99)
        );
    }
    Ok(())
}

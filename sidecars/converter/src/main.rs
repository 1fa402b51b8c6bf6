//! `converter`: consumes the `video` queue, converts each job's video to MP3 with ffmpeg into
//! GridFS `mp3s`, marks the job done and announces it on the `mp3` queue.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use converter::warm::WarmEncoders;
use converter::{handler, store, sweeper};
use mp3_worker::{LogFormat, Worker, WorkerOptions};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Converts uploaded videos to MP3.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Config {
    /// RabbitMQ, `amqp://user:password@host:port/vhost`.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    amqp_url: String,
    /// MongoDB, `mongodb://...` (databases `videos` and `mp3s`).
    #[arg(long, env = "MONGODB_URL", hide_env_values = true)]
    mongodb_url: String,
    /// Videos converted at once (default: the number of cores).
    #[arg(long, env = "CONCURRENCY", default_value_t = default_concurrency(),
          value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Attempts per job before it is marked failed.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: u32,
    /// Delay before the second attempt, in milliseconds; doubles for each further one.
    #[arg(long, env = "RETRY_BASE_DELAY_MS", default_value_t = 1000)]
    retry_base_delay_ms: u64,
    /// Address of `/healthz` and `/metrics`.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9101")]
    metrics_addr: SocketAddr,
    /// On SIGTERM, seconds running conversions may take to finish before they are requeued.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 300)]
    shutdown_timeout_secs: u64,
    /// The ffmpeg binary.
    #[arg(long, env = "FFMPEG_PATH", default_value = "ffmpeg")]
    ffmpeg_path: PathBuf,
    /// ffmpeg processes started ahead of default jobs for each way of reading a video, plus one
    /// each for trims and presets: 2 x (this + 3) in all, each about 10 MiB of memory while it
    /// waits (default: the concurrency; 0: start ffmpeg for each job).
    #[arg(long, env = "WARM_FFMPEG")]
    warm_ffmpeg: Option<u16>,
    /// Seconds one attempt may take (a conversion); past it the attempt is abandoned and counts as
    /// failed. Keep it under RabbitMQ's `consumer_timeout` (30 minutes by default).
    #[arg(long, env = "JOB_TIMEOUT_SECS", default_value_t = 1200,
          value_parser = clap::value_parser!(u64).range(1..))]
    job_timeout_secs: u64,
    /// Seconds between two sweeps of the store (retention, stuck jobs, orphans), on each
    /// replica; 0 turns the sweeper off.
    #[arg(long, env = "SWEEP_INTERVAL_SECS", default_value_t = 300)]
    sweep_interval_secs: u64,
    /// Seconds a done or failed job is kept, with its MP3 and video (default 7 days).
    #[arg(long, env = "RETENTION_SECS", default_value_t = 7 * 24 * 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    retention_secs: u64,
    /// Keep a job's source video until the retention ends (default: delete it once the job is
    /// done or failed).
    #[arg(long, env = "KEEP_VIDEOS", default_value_t = false,
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    keep_videos: bool,
    /// Seconds without progress after which a queued or converting job has lost its message
    /// and is published again (at least JOB_TIMEOUT_SECS); also how long after a job ended its
    /// owner must have been emailed before it is announced again.
    #[arg(long, env = "STUCK_AFTER_SECS", default_value_t = 3600)]
    stuck_after_secs: u64,
    /// Times a stuck job is published again before it is failed (and a final job announced
    /// again).
    #[arg(long, env = "MAX_REPUBLISH", default_value_t = 2)]
    max_republish: u32,
    /// Seconds after which a file no job names, or chunks without their file, are deleted
    /// (longer than any upload takes).
    #[arg(long, env = "ORPHAN_AGE_SECS", default_value_t = 24 * 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    orphan_age_secs: u64,
    /// Leave files no job names alone (chunks without a file are still deleted): for a store
    /// shared with another system, such as the seed system's during a migration.
    #[arg(long, env = "KEEP_UNOWNED_FILES", default_value_t = false,
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    keep_unowned_files: bool,
    /// Log lines as `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn default_concurrency() -> u16 {
    std::thread::available_parallelism()
        .map(|n| u16::try_from(n.get()).unwrap_or(u16::MAX))
        .unwrap_or(1)
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    mp3_worker::telemetry::init(config.log_format);
    // ffmpeg runs as our user on files anyone may upload: without this it could read our
    // /proc/<pid>/environ (the RabbitMQ and MongoDB URLs, with their passwords) or memory,
    // whatever environment it is given itself. Before any ffmpeg starts.
    if let Err(error) = nix::sys::prctl::set_dumpable(false) {
        tracing::error!(%error, "cannot make the process undumpable");
        return ExitCode::FAILURE;
    }
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "converter failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.sweep_interval_secs == 0 || config.stuck_after_secs >= config.job_timeout_secs,
        "STUCK_AFTER_SECS ({}) must be at least JOB_TIMEOUT_SECS ({}): a job still converting \
         would be published again",
        config.stuck_after_secs,
        config.job_timeout_secs
    );
    let mut options = mongodb::options::ClientOptions::parse(&config.mongodb_url)
        .await
        .context("parsing MONGODB_URL")?;
    options.app_name.get_or_insert_with(|| "converter".into());
    let client = mongodb::Client::with_options(options).context("configuring MongoDB")?;

    let mut registry = Registry::with_prefix("converter");
    let metrics = handler::Metrics::register(&mut registry);
    let encoders = WarmEncoders::new(
        config.ffmpeg_path,
        config.warm_ffmpeg.unwrap_or(config.concurrency).into(),
    );
    let store = store::Store::new(&client);
    let sweeper = (config.sweep_interval_secs > 0).then(|| {
        let policy = sweeper::Policy {
            interval: Duration::from_secs(config.sweep_interval_secs),
            delete_video_when_final: !config.keep_videos,
            retention: Duration::from_secs(config.retention_secs),
            stuck_after: Duration::from_secs(config.stuck_after_secs),
            max_republish: config.max_republish,
            orphan_age: Duration::from_secs(config.orphan_age_secs),
            keep_unowned_files: config.keep_unowned_files,
        };
        sweeper::Sweeper::new(&client, store.clone(), policy, &mut registry)
    });
    let converter = handler::Converter::new(store.clone(), encoders, metrics);
    let options = WorkerOptions {
        name: "converter",
        queue: mp3_model::topology::VIDEO[0],
        amqp_url: config.amqp_url,
        concurrency: config.concurrency,
        max_attempts: config.max_attempts,
        retry_base_delay: Duration::from_millis(config.retry_base_delay_ms),
        metrics_addr: config.metrics_addr,
        shutdown_timeout: Duration::from_secs(config.shutdown_timeout_secs),
        job_timeout: Duration::from_secs(config.job_timeout_secs),
        confirm_timeout: mp3_worker::DEFAULT_CONFIRM_TIMEOUT,
    };
    let stop = CancellationToken::new();
    tokio::spawn(mp3_worker::stop_on_signal(stop.clone()));
    tokio::spawn(ensure_indexes(store.clone(), stop.clone()));
    let sweeping =
        sweeper.map(|sweeper| tokio::spawn(sweeper.run(options.amqp_url.clone(), stop.clone())));
    Worker::new(options, converter, registry)
        .run_until(stop)
        .await?;
    if let Some(sweeping) = sweeping {
        let _ = sweeping.await;
    }
    client.shutdown().await;
    Ok(())
}

/// Creates the store's indexes, trying again while MongoDB is away: conversions do not wait
/// for them, only queries get faster.
async fn ensure_indexes(store: store::Store, stop: CancellationToken) {
    let mut pause = Duration::from_secs(1);
    loop {
        match store.ensure_indexes().await {
            Ok(()) => return tracing::info!("the store's indexes are in place"),
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                retry_in_secs = pause.as_secs(),
                "cannot create the store's indexes"
            ),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(60));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUIRED: [&str; 5] = [
        "converter",
        "--amqp-url",
        "amqp://u:p@h/%2f",
        "--mongodb-url",
        "mongodb://h",
    ];

    fn parse(extra: &[&str]) -> Result<Config, clap::Error> {
        mp3_worker::cli::parse_ignoring_env(REQUIRED.iter().chain(extra))
    }

    #[test]
    fn every_option_has_its_documented_environment_variable() {
        assert_eq!(
            mp3_worker::cli::env_names::<Config>(),
            [
                "AMQP_URL",
                "CONCURRENCY",
                "FFMPEG_PATH",
                "JOB_TIMEOUT_SECS",
                "KEEP_UNOWNED_FILES",
                "KEEP_VIDEOS",
                "LOG_FORMAT",
                "MAX_ATTEMPTS",
                "MAX_REPUBLISH",
                "METRICS_ADDR",
                "MONGODB_URL",
                "ORPHAN_AGE_SECS",
                "RETENTION_SECS",
                "RETRY_BASE_DELAY_MS",
                "SHUTDOWN_TIMEOUT_SECS",
                "STUCK_AFTER_SECS",
                "SWEEP_INTERVAL_SECS",
                "WARM_FFMPEG",
            ]
        );
    }

    #[test]
    fn defaults_match_the_documented_configuration() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.max_attempts, 3);
        assert_eq!(config.retry_base_delay_ms, 1000);
        assert_eq!(config.metrics_addr, "127.0.0.1:9101".parse().unwrap());
        assert_eq!(config.shutdown_timeout_secs, 300);
        assert_eq!(config.job_timeout_secs, 1200);
        assert_eq!(config.ffmpeg_path, PathBuf::from("ffmpeg"));
        assert_eq!(config.log_format, LogFormat::Text);
        assert!(config.concurrency >= 1);
        assert_eq!(config.warm_ffmpeg, None);
        assert_eq!(config.sweep_interval_secs, 300);
        assert_eq!(config.retention_secs, 604_800);
        assert!(!config.keep_videos && !config.keep_unowned_files);
        assert_eq!((config.stuck_after_secs, config.max_republish), (3600, 2));
        assert_eq!(config.orphan_age_secs, 86_400);
    }

    #[test]
    fn invalid_values_are_refused() {
        assert!(parse(&["--concurrency", "0"]).is_err());
        assert!(parse(&["--max-attempts", "0"]).is_err());
        assert!(parse(&["--job-timeout-secs", "0"]).is_err());
        assert!(parse(&["--retention-secs", "0"]).is_err());
        assert!(parse(&["--orphan-age-secs", "0"]).is_err());
        assert!(parse(&["--keep-videos", "true"]).unwrap().keep_videos);
        assert!(!parse(&["--keep-videos", "no"]).unwrap().keep_videos);
        assert!(parse(&["--metrics-addr", "9101"]).is_err());
        assert!(parse(&["--log-format", "xml"]).is_err());
        assert!(parse(&["--log-format", "json"]).is_ok());
        assert!(parse(&["--warm-ffmpeg", "-1"]).is_err());
        assert_eq!(parse(&["--warm-ffmpeg", "0"]).unwrap().warm_ffmpeg, Some(0));
        let missing_mongodb = ["converter", "--amqp-url", "amqp://h"];
        assert!(mp3_worker::cli::parse_ignoring_env::<Config>(missing_mongodb).is_err());
    }
}

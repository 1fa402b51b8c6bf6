//! `notifier`: consumes the `mp3` queue and emails each job's owner that their MP3 is ready (or
//! that the conversion failed), once per job.

mod email;
mod handler;
mod mailer;
mod running;
mod store;
mod webhook;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use lettre::message::Mailbox;
use mp3_worker::{LogFormat, Worker, WorkerOptions};
use prometheus_client::registry::Registry;

use crate::mailer::{SmtpSettings, SmtpTls};

/// Emails users about their conversions.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Config {
    /// RabbitMQ, `amqp://user:password@host:port/vhost`.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    amqp_url: String,
    /// MongoDB, `mongodb://...` (the job documents in database `videos`).
    #[arg(long, env = "MONGODB_URL", hide_env_values = true)]
    mongodb_url: String,
    /// SMTP server host.
    #[arg(long, env = "SMTP_HOST", default_value = "127.0.0.1")]
    smtp_host: String,
    /// SMTP server port.
    #[arg(long, env = "SMTP_PORT", default_value_t = 587)]
    smtp_port: u16,
    /// `none`, `starttls` (required upgrade) or `tls` (implicit TLS).
    #[arg(long, env = "SMTP_TLS", value_enum, default_value_t = SmtpTls::Starttls)]
    smtp_tls: SmtpTls,
    /// SMTP user name (with --smtp-password).
    #[arg(long, env = "SMTP_USERNAME", requires = "smtp_password")]
    smtp_username: Option<String>,
    /// SMTP password (with --smtp-username).
    #[arg(
        long,
        env = "SMTP_PASSWORD",
        hide_env_values = true,
        requires = "smtp_username"
    )]
    smtp_password: Option<String>,
    /// The sender, `Name <address>` or `address`.
    #[arg(
        long,
        env = "MAIL_FROM",
        default_value = "mp3-converter <noreply@mp3converter.local>"
    )]
    mail_from: Mailbox,
    /// Public base URL of the gateway, for the download link.
    #[arg(long, env = "DOWNLOAD_BASE_URL", default_value = "http://127.0.0.1:3000",
          value_parser = parse_base_url)]
    download_base_url: String,
    /// Signs the email's download link so that it works in a browser without a login: the
    /// gateway's `download_key`, at least 32 bytes. Unset or empty: the link needs a token.
    #[arg(long, env = "DOWNLOAD_KEY", hide_env_values = true, value_parser = parse_link_key)]
    download_key: Option<OptionalKey>,
    /// How long the email's signed link works, in seconds (at most 7 days).
    #[arg(long, env = "DOWNLOAD_LINK_TTL_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..=7 * 24 * 3600))]
    download_link_ttl_secs: u64,
    /// Messages handled at once.
    #[arg(long, env = "CONCURRENCY", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Attempts per message before it is dead-lettered.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: u32,
    /// Delay before the second attempt, in milliseconds; doubles for each further one.
    #[arg(long, env = "RETRY_BASE_DELAY_MS", default_value_t = 1000)]
    retry_base_delay_ms: u64,
    /// Address of `/healthz` and `/metrics`.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9102")]
    metrics_addr: SocketAddr,
    /// On SIGTERM, seconds running sends may take to finish before they are requeued.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    shutdown_timeout_secs: u64,
    /// Seconds one attempt may take (a send); past it the attempt is abandoned and counts as
    /// failed. Under the 120 s lease on a job's email, so an abandoned send never overlaps
    /// another delivery's.
    #[arg(long, env = "JOB_TIMEOUT_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    job_timeout_secs: u64,
    /// Seconds a webhook delivery may take, connecting included (at most
    /// (JOB_TIMEOUT_SECS - 5) / 2: a delivery and its record each take up to this).
    #[arg(long, env = "WEBHOOK_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=60))]
    webhook_timeout_secs: u64,
    /// Milliseconds before a webhook's second attempt; later ones wait 3, 12, 60, 180, 360,
    /// 720 and 1440 times as long.
    #[arg(long, env = "WEBHOOK_RETRY_BASE_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    webhook_retry_base_ms: u64,
    /// Attempts of a webhook before its message is given up (dead-lettered).
    #[arg(long, env = "WEBHOOK_MAX_ATTEMPTS", default_value_t = 9,
          value_parser = clap::value_parser!(u32).range(1..))]
    webhook_max_attempts: u32,
    /// Let webhooks reach loopback, private, link-local and other special-use addresses (for
    /// development only: a callback could then reach the cluster's insides).
    #[arg(long, env = "WEBHOOK_ALLOW_PRIVATE", default_value_t = false)]
    webhook_allow_private: bool,
    /// Networks webhooks may reach even though they are special-use, `10.1.0.0/16, 192.0.2.7`.
    #[arg(long, env = "WEBHOOK_ALLOW", default_value = "", value_parser = parse_networks)]
    webhook_allow: Networks,
    /// Networks webhooks may never reach, whatever else allows them.
    #[arg(long, env = "WEBHOOK_DENY", default_value = "", value_parser = parse_networks)]
    webhook_deny: Networks,
    /// Log lines as `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// A list of networks (`WEBHOOK_ALLOW`, `WEBHOOK_DENY`).
#[derive(Debug, Clone, Default)]
struct Networks(Vec<mp3_webhook::IpNet>);

fn parse_networks(value: &str) -> Result<Networks, String> {
    mp3_webhook::Policy::parse_networks(value).map(Networks)
}

/// `DOWNLOAD_KEY`: empty means none (a Secret's key may be present but empty).
#[derive(Debug, Clone)]
struct OptionalKey(Option<mp3_download_link::LinkKey>);

fn parse_link_key(value: &str) -> Result<OptionalKey, String> {
    if value.is_empty() {
        return Ok(OptionalKey(None));
    }
    mp3_download_link::LinkKey::new(value).map(|key| OptionalKey(Some(key)))
}

/// An absolute http(s) URL without query or fragment, returned without a trailing slash.
fn parse_base_url(value: &str) -> Result<String, String> {
    let url = url::Url::parse(value).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or a fragment".into());
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    mp3_worker::telemetry::init(config.log_format);
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "notifier failed");
            ExitCode::FAILURE
        }
    }
}

/// At exit, how long the sends the worker gave up on at its shutdown timeout may take to be
/// recorded (Kubernetes' grace period covers it: see the manifest).
const FINISH_TIMEOUT: Duration = Duration::from_secs(20);

async fn run(config: Config) -> anyhow::Result<()> {
    anyhow::ensure!(
        Duration::from_secs(config.job_timeout_secs) + Duration::from_secs(10) <= store::LEASE,
        "JOB_TIMEOUT_SECS ({}) must be at least 10 s under the email lease ({} s)",
        config.job_timeout_secs,
        store::LEASE.as_secs()
    );
    let mut options = mongodb::options::ClientOptions::parse(&config.mongodb_url)
        .await
        .context("parsing MONGODB_URL")?;
    options.app_name.get_or_insert_with(|| "notifier".into());
    let client = mongodb::Client::with_options(options).context("configuring MongoDB")?;
    let mailer = mailer::Mailer::new(SmtpSettings {
        host: config.smtp_host,
        port: config.smtp_port,
        tls: config.smtp_tls,
        credentials: config.smtp_username.zip(config.smtp_password),
        from: config.mail_from,
    })?;

    // An attempt and its record, each bounded by the webhook timeout, within the handler's.
    anyhow::ensure!(
        2 * config.webhook_timeout_secs + 5 <= config.job_timeout_secs,
        "WEBHOOK_TIMEOUT_SECS ({}) must be at most (JOB_TIMEOUT_SECS ({}) - 5) / 2",
        config.webhook_timeout_secs,
        config.job_timeout_secs
    );

    let mut registry = Registry::with_prefix("notifier");
    let metrics = handler::Metrics::register(&mut registry);
    let links = email::Links {
        base_url: config.download_base_url,
        key: config.download_key.and_then(|k| k.0),
        ttl_secs: config.download_link_ttl_secs,
    };
    let webhooks = webhook::Webhooks::new(
        &client,
        &webhook::WebhookSettings {
            timeout: Duration::from_secs(config.webhook_timeout_secs),
            policy: mp3_webhook::Policy {
                allow_private: config.webhook_allow_private,
                allow: config.webhook_allow.0,
                deny: config.webhook_deny.0,
            },
            retry_base: Duration::from_millis(config.webhook_retry_base_ms),
            max_attempts: config.webhook_max_attempts,
        },
        links.clone(),
        webhook::Metrics::register(&mut registry),
    )?;
    let notifier =
        handler::Notifier::new(store::Store::new(&client), mailer, links, metrics, webhooks);
    let tasks = notifier.tasks();
    let options = WorkerOptions {
        name: "notifier",
        queue: mp3_model::topology::MP3[0],
        amqp_url: config.amqp_url,
        concurrency: config.concurrency,
        max_attempts: config.max_attempts,
        retry_base_delay: Duration::from_millis(config.retry_base_delay_ms),
        metrics_addr: config.metrics_addr,
        shutdown_timeout: Duration::from_secs(config.shutdown_timeout_secs),
        job_timeout: Duration::from_secs(config.job_timeout_secs),
        confirm_timeout: mp3_worker::DEFAULT_CONFIRM_TIMEOUT,
    };
    Worker::new(options, notifier, registry).run().await?;
    handler::finish(&tasks, FINISH_TIMEOUT).await;
    client.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUIRED: [&str; 5] = [
        "notifier",
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
                "DOWNLOAD_BASE_URL",
                "DOWNLOAD_KEY",
                "DOWNLOAD_LINK_TTL_SECS",
                "JOB_TIMEOUT_SECS",
                "LOG_FORMAT",
                "MAIL_FROM",
                "MAX_ATTEMPTS",
                "METRICS_ADDR",
                "MONGODB_URL",
                "RETRY_BASE_DELAY_MS",
                "SHUTDOWN_TIMEOUT_SECS",
                "SMTP_HOST",
                "SMTP_PASSWORD",
                "SMTP_PORT",
                "SMTP_TLS",
                "SMTP_USERNAME",
                "WEBHOOK_ALLOW",
                "WEBHOOK_ALLOW_PRIVATE",
                "WEBHOOK_DENY",
                "WEBHOOK_MAX_ATTEMPTS",
                "WEBHOOK_RETRY_BASE_MS",
                "WEBHOOK_TIMEOUT_SECS",
            ]
        );
    }

    #[test]
    fn defaults_match_the_documented_configuration() {
        let config = parse(&[]).unwrap();
        assert_eq!(
            (config.smtp_host.as_str(), config.smtp_port),
            ("127.0.0.1", 587)
        );
        assert_eq!(config.smtp_tls, SmtpTls::Starttls);
        assert_eq!((config.smtp_username, config.smtp_password), (None, None));
        assert_eq!(
            config.mail_from.to_string(),
            "mp3-converter <noreply@mp3converter.local>"
        );
        assert_eq!(config.download_base_url, "http://127.0.0.1:3000");
        assert_eq!((config.concurrency, config.max_attempts), (4, 5));
        assert_eq!(config.retry_base_delay_ms, 1000);
        assert_eq!(config.metrics_addr, "127.0.0.1:9102".parse().unwrap());
        assert_eq!(config.shutdown_timeout_secs, 30);
        assert_eq!(config.job_timeout_secs, 60);
        assert_eq!(config.webhook_timeout_secs, 10);
        assert_eq!(
            (config.webhook_retry_base_ms, config.webhook_max_attempts),
            (10_000, 9)
        );
        assert!(!config.webhook_allow_private);
        assert!(config.webhook_allow.0.is_empty() && config.webhook_deny.0.is_empty());
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn credentials_come_in_pairs() {
        assert!(parse(&["--smtp-username", "u"]).is_err());
        assert!(parse(&["--smtp-password", "p"]).is_err());
        let both = parse(&["--smtp-username", "u", "--smtp-password", "p"]).unwrap();
        assert_eq!(
            both.smtp_username.zip(both.smtp_password),
            Some(("u".into(), "p".into()))
        );
    }

    #[test]
    fn invalid_values_are_refused() {
        for (flag, value) in [
            ("--smtp-tls", "ssl"),
            ("--smtp-port", "70000"),
            ("--mail-from", "not an address"),
            ("--download-base-url", "ftp://h"),
            ("--download-base-url", "/relative"),
            ("--download-base-url", "http://h/?q=1"),
            ("--concurrency", "0"),
            ("--max-attempts", "0"),
            ("--job-timeout-secs", "0"),
            ("--download-link-ttl-secs", "0"),
            ("--download-link-ttl-secs", "86400000"),
            ("--download-key", "too short"),
            ("--webhook-allow", "10.0.0.0/33"),
            ("--webhook-deny", "localhost"),
            ("--webhook-timeout-secs", "0"),
        ] {
            assert!(parse(&[flag, value]).is_err(), "{flag} {value} accepted");
        }
        let url = parse(&["--download-base-url", "https://mp3.example/app/"]).unwrap();
        assert_eq!(url.download_base_url, "https://mp3.example/app");
        let tls = parse(&["--smtp-tls", "tls"]).unwrap();
        assert_eq!(tls.smtp_tls, SmtpTls::Tls);
    }
}

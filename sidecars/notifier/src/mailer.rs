//! SMTP with lettre: plain, STARTTLS or implicit TLS, optional credentials.

use std::time::Duration;

use anyhow::Context as _;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::email::Email;

/// How long one SMTP exchange may take; well under the notification lease.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// How the SMTP connection is secured (`SMTP_TLS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SmtpTls {
    /// Plain text (a local relay or a test server only).
    None,
    /// Upgrade with STARTTLS, required (usually port 587).
    Starttls,
    /// TLS from the first byte (usually port 465).
    Tls,
}

/// Where and how to send.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub credentials: Option<(String, String)>,
    pub from: Mailbox,
}

/// Why an email was not sent.
#[derive(Debug)]
pub enum SendError {
    /// The recipient or the message is unacceptable: sending again will not help.
    Permanent(anyhow::Error),
    /// The server is unreachable, busy or timed out: try again later.
    Transient(anyhow::Error),
}

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    pub fn new(settings: SmtpSettings) -> anyhow::Result<Self> {
        let host = settings.host.as_str();
        let builder = match settings.tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .with_context(|| format!("configuring STARTTLS to {host}"))?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
                .with_context(|| format!("configuring TLS to {host}"))?,
        };
        let mut builder = builder.port(settings.port).timeout(Some(SMTP_TIMEOUT));
        if let Some((user, password)) = settings.credentials {
            builder = builder.credentials(Credentials::new(user, password));
        }
        Ok(Self {
            transport: builder.build(),
            from: settings.from,
        })
    }

    /// Sends `email` to `to`; `Ok` once the server accepted it.
    pub async fn send(&self, to: &str, email: &Email) -> Result<(), SendError> {
        let to: Mailbox = to
            .parse()
            .with_context(|| format!("{to:?} is not an email address"))
            .map_err(SendError::Permanent)?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(email.subject.as_str())
            .header(ContentType::TEXT_PLAIN)
            .body(email.body.clone())
            .context("building the email")
            .map_err(SendError::Permanent)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(error) if error.is_permanent() => Err(SendError::Permanent(
                anyhow::Error::new(error).context("the SMTP server refused the email"),
            )),
            Err(error) => Err(SendError::Transient(
                anyhow::Error::new(error).context("sending the email"),
            )),
        }
    }
}

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

    /// Sends `email` to `to`; `Ok` once the server accepted it. Only a refusal of the recipient
    /// is permanent; any other, 5xx included, is retried (see [`refuses_the_recipient`]).
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
            Err(error) if refuses_the_recipient(&error) => Err(SendError::Permanent(
                anyhow::Error::new(error).context("the SMTP server refused the recipient"),
            )),
            Err(error) => Err(SendError::Transient(
                anyhow::Error::new(error).context("sending the email"),
            )),
        }
    }
}

/// A refusal no retry can change, because it is about this recipient: no such mailbox (550), not
/// here (551), a name the server refuses (553), and where the server gives an enhanced status
/// code (RFC 3463), one about the destination's address (5.1.0 other address status, as
/// Mailpit refuses a recipient, 5.1.1 no such mailbox, 5.1.2 no such host, 5.1.3 bad syntax,
/// 5.1.6 moved, 5.1.10 null MX); not 5.1.7 or 5.1.8, which are about the sender's. Every other refusal, permanent by its 5xx code
/// included, may be the sender's or the server's state: a rejected login after a password
/// rotation (535), authentication required (530), a relay or policy refusal (554, 550 5.7.x:
/// "relaying denied", "not allowed to send as"), a greeting refused while the server is
/// overloaded. Retried, the emails go out once that is put right, instead of being
/// dead-lettered for good on the first try.
fn refuses_the_recipient(error: &lettre::transport::smtp::Error) -> bool {
    use lettre::transport::smtp::response::{Category, Detail, Severity};
    let Some(code) = error.status().filter(|_| error.is_permanent()) else {
        return false;
    };
    let mailbox = code.severity == Severity::PermanentNegativeCompletion
        && code.category == Category::MailSystem
        && matches!(code.detail, Detail::Zero | Detail::One | Detail::Three);
    // lettre keeps the server's text, enhanced code first, as the error's source.
    let text = std::error::Error::source(error).map(ToString::to_string);
    mailbox
        && enhanced_code(text.as_deref().unwrap_or(""))
            .is_none_or(|code| matches!(code, (5, 1, 0 | 1 | 2 | 3 | 6 | 10)))
}

/// The enhanced status code (`5.1.1`: class, subject, detail) that starts an SMTP reply's
/// text, if it has one.
fn enhanced_code(text: &str) -> Option<(u8, u16, u16)> {
    let word = text.split_whitespace().next()?;
    let mut parts = word.split('.');
    let class = parts.next()?.parse().ok()?;
    let subject = parts.next()?.parse().ok()?;
    let detail = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((class, subject, detail))
}

#[cfg(test)]
mod tests {
    use super::enhanced_code;

    #[test]
    fn enhanced_codes_are_read_from_the_start_of_the_text() {
        assert_eq!(
            enhanced_code("5.1.1 <a@b.c>: user unknown"),
            Some((5, 1, 1))
        );
        assert_eq!(enhanced_code("5.7.1 relaying denied"), Some((5, 7, 1)));
        assert_eq!(
            enhanced_code("  5.7.60 SMTP; not allowed"),
            Some((5, 7, 60))
        );
        assert_eq!(enhanced_code("5.1.8 bad outbound sender"), Some((5, 1, 8)));
        assert_eq!(enhanced_code("mailbox unavailable"), None);
        assert_eq!(enhanced_code("5.1 short"), None);
        assert_eq!(enhanced_code("550 5.1.1"), None);
        assert_eq!(enhanced_code(""), None);
    }
}

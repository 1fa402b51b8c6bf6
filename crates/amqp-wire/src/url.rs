//! `amqp://user:pass@host:port/vhost?heartbeat=N&connection_timeout=MS&connection_name=NAME`,
//! as RabbitMQ's URI spec reads it: user, password and vhost percent-decoded (`%2f` is `/`), a
//! missing path is vhost `/`, an empty path (`amqp://host/`) is the empty vhost name.

use std::time::Duration;

use percent_encoding::percent_decode_str;

use crate::error::Error;

#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: u16,
    pub vhost: String,
    /// Requested heartbeat in seconds (`?heartbeat=`); `None` leaves the default.
    pub heartbeat: Option<u16>,
    /// `?connection_timeout=` in milliseconds.
    pub connection_timeout: Option<Duration>,
    /// `?connection_name=`, shown in the management UI.
    pub connection_name: Option<String>,
}

/// Everything but the password, so that URLs can be logged.
impl std::fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpUrl")
            .field("user", &self.user)
            .field("password", &"***")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("vhost", &self.vhost)
            .field("heartbeat", &self.heartbeat)
            .field("connection_timeout", &self.connection_timeout)
            .field("connection_name", &self.connection_name)
            .finish()
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidUrl(msg.into())
}

fn decode(s: &str, what: &str) -> Result<String, Error> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| bad(format!("{what} is not UTF-8 after percent-decoding")))
}

impl AmqpUrl {
    pub fn parse(url: &str) -> Result<Self, Error> {
        let rest = match url.split_once("://") {
            Some(("amqp", rest)) => rest,
            Some(("amqps", _)) => return Err(bad("amqps (TLS) is not supported")),
            _ => return Err(bad("expected amqp://user:pass@host:port/vhost")),
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                (decode(user, "user")?, decode(pass, "password")?)
            }
            None => ("guest".to_owned(), "guest".to_owned()),
        };
        let (host, port) = split_host_port(hostport)?;
        let vhost = match path {
            None => "/".to_owned(),
            Some(p) if p.contains('/') => {
                return Err(bad("vhost must be one path segment; write / as %2f"))
            }
            Some(p) => decode(p, "vhost")?,
        };
        let mut parsed = AmqpUrl {
            user,
            password,
            host,
            port,
            vhost,
            heartbeat: None,
            connection_timeout: None,
            connection_name: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value, key)?;
            let number = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| bad(format!("{key} must be a number")))
            };
            match key {
                "heartbeat" => {
                    parsed.heartbeat = Some(
                        u16::try_from(number(&value)?)
                            .map_err(|_| bad("heartbeat is at most 65535"))?,
                    )
                }
                "connection_timeout" => match number(&value)? {
                    0 => return Err(bad("connection_timeout=0 (no timeout) is not supported")),
                    ms => parsed.connection_timeout = Some(Duration::from_millis(ms)),
                },
                "connection_name" => parsed.connection_name = Some(value),
                other => return Err(bad(format!("unsupported query parameter {other:?}"))),
            }
        }
        Ok(parsed)
    }
}

fn split_host_port(s: &str) -> Result<(String, u16), Error> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("unclosed [ in host"))?;
        (host, after.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let host = if host.is_empty() { "localhost" } else { host };
    let port = match port {
        None | Some("") => 5672,
        Some(p) => p.parse().map_err(|_| bad(format!("bad port {p:?}")))?,
    };
    Ok((decode(host, "host")?, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_dev_services_url() {
        let u = AmqpUrl::parse("amqp://mp3:s3cr%40t@127.0.0.1:25672/%2f").unwrap();
        assert_eq!((u.user.as_str(), u.password.as_str()), ("mp3", "s3cr@t"));
        assert_eq!(
            (u.host.as_str(), u.port, u.vhost.as_str()),
            ("127.0.0.1", 25672, "/")
        );
        assert!(
            !format!("{u:?}").contains("s3cr"),
            "Debug hides the password"
        );
    }

    #[test]
    fn defaults_and_vhost_rules() {
        let u = AmqpUrl::parse("amqp://rabbit").unwrap();
        assert_eq!(
            (u.user.as_str(), u.port, u.vhost.as_str()),
            ("guest", 5672, "/")
        );
        assert_eq!(AmqpUrl::parse("amqp://h/").unwrap().vhost, "");
        assert_eq!(AmqpUrl::parse("amqp://h/prod").unwrap().vhost, "prod");
        let u = AmqpUrl::parse(
            "amqp://[::1]:5673/v?heartbeat=30&connection_timeout=1500&connection_name=gw",
        )
        .unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 5673));
        assert_eq!(u.heartbeat, Some(30));
        assert_eq!(u.connection_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(u.connection_name.as_deref(), Some("gw"));
    }

    #[test]
    fn rejects_what_it_cannot_do() {
        for bad in [
            "http://h",
            "amqps://h",
            "amqp://h:port",
            "amqp://h/a/b",
            "amqp://h?frame_max=1",
            "amqp://h?connection_timeout=0",
            "amqp://h/%ff",
        ] {
            assert!(
                matches!(AmqpUrl::parse(bad), Err(Error::InvalidUrl(_))),
                "{bad}"
            );
        }
    }
}

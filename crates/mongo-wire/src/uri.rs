//! `mongodb://[user:pass@]host[:port][,host2...]/[db][?authSource=..&...]` parsing.

use std::time::Duration;

use percent_encoding::percent_decode_str;

use crate::error::{Error, Result};

/// What a connection string says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionString {
    pub hosts: Vec<(String, u16)>,
    pub credentials: Option<Credentials>,
    /// The database in the path, if any.
    pub database: Option<String>,
    pub app_name: Option<String>,
    pub connect_timeout: Duration,
    pub socket_timeout: Duration,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// `authSource`, else the path database, else `admin`.
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidUri(msg.into())
}

fn decode(s: &str, what: &str) -> Result<String> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| bad(format!("{what} is not valid percent-encoded UTF-8")))
}

impl std::str::FromStr for ConnectionString {
    type Err = Error;

    fn from_str(uri: &str) -> Result<Self> {
        let rest = uri
            .strip_prefix("mongodb://")
            .ok_or_else(|| bad("must start with mongodb:// (mongodb+srv is not supported)"))?;
        let (before_path, after) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, hostlist) = match before_path.rfind('@') {
            Some(i) => (Some(&before_path[..i]), &before_path[i + 1..]),
            None => (None, before_path),
        };
        let mut hosts = Vec::new();
        for h in hostlist.split(',') {
            if h.is_empty() {
                return Err(bad("empty host"));
            }
            let (host, port) = if let Some(v6) = h.strip_prefix('[') {
                let (addr, tail) = v6
                    .split_once(']')
                    .ok_or_else(|| bad("unclosed [ in host"))?;
                (addr, tail.strip_prefix(':'))
            } else {
                match h.rsplit_once(':') {
                    Some((a, p)) => (a, Some(p)),
                    None => (h, None),
                }
            };
            let port = match port {
                Some(p) => p.parse().map_err(|_| bad(format!("bad port {p:?}")))?,
                None => 27017,
            };
            hosts.push((host.to_owned(), port));
        }
        let (path, query) = match after.split_once('?') {
            Some((p, q)) => (p, q),
            None => (after, ""),
        };
        let database = match path.trim_start_matches('/') {
            "" => None,
            db => Some(decode(db, "database")?),
        };
        let mut auth_source = None;
        let mut app_name = None;
        let mut connect_timeout = Duration::from_secs(10);
        let mut socket_timeout = Duration::from_secs(60);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("option {pair:?} has no value")))?;
            let v = decode(v, k)?;
            // 0 means "no timeout" in MongoDB's URIs; here every wait is bounded.
            let ms = |v: &str| -> Result<Duration> {
                match v.parse::<u64>() {
                    Ok(0) => Err(bad(format!("{k}=0 (no timeout) is not supported"))),
                    Ok(ms) => Ok(Duration::from_millis(ms)),
                    Err(_) => Err(bad(format!("{k} must be milliseconds"))),
                }
            };
            match k.to_ascii_lowercase().as_str() {
                "authsource" => auth_source = Some(v),
                "authmechanism" if v == "SCRAM-SHA-256" => {}
                "authmechanism" => return Err(bad(format!("authMechanism {v} is not supported"))),
                "appname" => app_name = Some(v),
                "connecttimeoutms" => connect_timeout = ms(&v)?,
                "sockettimeoutms" => socket_timeout = ms(&v)?,
                "tls" | "ssl" if v == "false" => {}
                "tls" | "ssl" => return Err(bad("TLS is not supported")),
                // Harmless for a single blocking connection.
                "retrywrites" | "retryreads" | "w" | "directconnection" | "replicaset"
                | "readpreference" | "maxpoolsize" | "minpoolsize" => {}
                other => return Err(bad(format!("unknown option {other}"))),
            }
        }
        let credentials = match userinfo {
            None => None,
            Some(ui) => {
                let (u, p) = ui
                    .split_once(':')
                    .ok_or_else(|| bad("credentials need user:password"))?;
                Some(Credentials {
                    username: decode(u, "username")?,
                    password: decode(p, "password")?,
                    source: auth_source
                        .clone()
                        .or_else(|| database.clone())
                        .unwrap_or_else(|| "admin".into()),
                })
            }
        };
        Ok(ConnectionString {
            hosts,
            credentials,
            database,
            app_name,
            connect_timeout,
            socket_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_common_shapes() {
        let c: ConnectionString = "mongodb://127.0.0.1:27027".parse().unwrap();
        assert_eq!(c.hosts, vec![("127.0.0.1".to_string(), 27027)]);
        assert!(c.credentials.is_none() && c.database.is_none());

        let c: ConnectionString =
            "mongodb://us%40r:p%3Ass@mongo,m2:1/videos?authSource=admin&connectTimeoutMS=500"
                .parse()
                .unwrap();
        assert_eq!(
            c.hosts,
            vec![("mongo".to_string(), 27017), ("m2".to_string(), 1)]
        );
        let cred = c.credentials.unwrap();
        assert_eq!(
            (cred.username.as_str(), cred.password.as_str()),
            ("us@r", "p:ss")
        );
        assert_eq!(cred.source, "admin");
        assert_eq!(c.database.as_deref(), Some("videos"));
        assert_eq!(c.connect_timeout, Duration::from_millis(500));

        let c: ConnectionString = "mongodb://u:p@h/db".parse().unwrap();
        assert_eq!(c.credentials.unwrap().source, "db");
        let c: ConnectionString = "mongodb://u:p@[::1]:5/".parse().unwrap();
        assert_eq!(c.hosts, vec![("::1".to_string(), 5)]);
    }

    #[test]
    fn rejects_what_it_cannot_do() {
        for uri in [
            "http://h",
            "mongodb+srv://h",
            "mongodb://h:notaport",
            "mongodb://h/?tls=true",
            "mongodb://h/?authMechanism=PLAIN",
            "mongodb://u@h/",
            "mongodb://h/?frobnicate=1",
            "mongodb://h/?socketTimeoutMS=0",
            "mongodb://h/?connectTimeoutMS=0",
            "mongodb://",
        ] {
            assert!(uri.parse::<ConnectionString>().is_err(), "{uri}");
        }
    }

    #[test]
    fn password_is_not_printed() {
        let c: ConnectionString = "mongodb://u:secret@h".parse().unwrap();
        assert!(!format!("{c:?}").contains("secret"));
    }
}

//! Connecting to the auth database.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use mysql_async::{Conn, Opts, OptsBuilder};

/// MySQL/MariaDB error code for "Unknown database".
const ER_BAD_DB_ERROR: u16 = 1049;
/// MySQL/MariaDB error code for "Table doesn't exist".
pub const ER_NO_SUCH_TABLE: u16 = 1146;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The server error code of `err`, if it is one.
pub fn server_code(err: &mysql_async::Error) -> Option<u16> {
    match err {
        mysql_async::Error::Server(e) => Some(e.code),
        _ => None,
    }
}

fn parse(url: &str) -> Result<Opts> {
    // The URL holds a password: never echo it back.
    let opts = Opts::from_url(url).map_err(|e| anyhow::anyhow!("invalid database URL: {e}"))?;
    if opts.db_name().is_none() {
        bail!("the database URL must name the database, e.g. mysql://user:pw@127.0.0.1:3306/auth");
    }
    Ok(opts)
}

async fn open(opts: Opts) -> std::result::Result<Conn, mysql_async::Error> {
    let target = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
    match tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts)).await {
        Ok(result) => result,
        Err(_) => Err(mysql_async::Error::Other(
            format!(
                "no answer from {target} within {}s",
                CONNECT_TIMEOUT.as_secs()
            )
            .into(),
        )),
    }
}

fn describe(opts: &Opts) -> String {
    format!(
        "{}@{}:{}/{}",
        opts.user().unwrap_or(""),
        opts.ip_or_hostname(),
        opts.tcp_port(),
        opts.db_name().unwrap_or("")
    )
}

/// Connect to the database the URL names.
pub async fn connect(url: &str) -> Result<Conn> {
    let opts = parse(url)?;
    let what = describe(&opts);
    open(opts)
        .await
        .with_context(|| format!("cannot connect to {what}"))
}

/// Connect to the database the URL names, creating it first if the server says it does not
/// exist (this needs the CREATE privilege; the error says so if it is missing).
pub async fn connect_or_create(url: &str) -> Result<Conn> {
    let opts = parse(url)?;
    let what = describe(&opts);
    match open(opts.clone()).await {
        Ok(conn) => return Ok(conn),
        Err(e) if server_code(&e) == Some(ER_BAD_DB_ERROR) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot connect to {what}")),
    }
    let name = opts.db_name().unwrap_or_default().to_owned();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("database {name:?} does not exist, and its name is not one this tool creates (letters, digits, _)");
    }
    let server = OptsBuilder::from_opts(opts.clone()).db_name(None::<String>);
    let mut conn = open(server.into())
        .await
        .with_context(|| format!("cannot connect to the server of {what}"))?;
    mysql_async::prelude::Queryable::query_drop(
        &mut conn,
        format!("CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4"),
    )
    .await
    .with_context(|| format!("database {name} does not exist and cannot be created"))?;
    tracing::info!(database = %name, "created database");
    conn.disconnect().await.ok();
    open(opts)
        .await
        .with_context(|| format!("cannot connect to {what}"))
}

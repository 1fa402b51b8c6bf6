//! A throwaway MariaDB database per test, migrated by the real `mp3-admin`.

use mysql_async::prelude::Queryable;

use crate::{admin, service_env, unique};

/// A fresh database, dropped with the value.
pub struct TestDb {
    name: String,
    admin_url: String,
}

impl TestDb {
    /// Creates an empty database (no schema).
    pub fn empty() -> Self {
        let admin_url = service_env("MARIADB_ADMIN_URL");
        let name = format!("auth_test_{}", unique());
        run_sql(&admin_url, &format!("CREATE DATABASE `{name}`"));
        Self { name, admin_url }
    }

    /// Creates a database and applies the schema with `mp3-admin migrate`.
    pub fn migrated() -> Self {
        let db = Self::empty();
        let (ok, output) = admin(&db.url(), &["migrate"], "");
        assert!(ok, "mp3-admin migrate failed: {output}");
        db
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `mysql://user:password@host:port/<this database>`, with the admin account.
    pub fn url(&self) -> String {
        format!("{}/{}", server_url(&self.admin_url), self.name)
    }

    /// `host:port` of the server, for `allowed_outbound_hosts`.
    pub fn host_port(&self) -> String {
        let url = url_host_port(&self.admin_url);
        url.unwrap_or_else(|| panic!("MARIADB_ADMIN_URL has no host:port: {}", self.admin_url))
    }

    /// Adds a user row that cannot log in (no password hash), for tests that mint its tokens
    /// themselves: validate wants the token's user to exist.
    pub fn add_token_user(&self, email: &str) {
        let url = self.url();
        let email = email.to_owned();
        block_on(async move {
            let mut conn = mysql_async::Conn::from_url(url)
                .await
                .expect("connecting to MariaDB");
            conn.exec_drop(
                "INSERT INTO user (email, password) VALUES (?, '!')",
                (email,),
            )
            .await
            .expect("adding a user");
            conn.disconnect().await.ok();
        });
    }

    /// Runs a query and returns the first column of each row as text.
    pub fn query_strings(&self, sql: &str) -> Vec<Option<String>> {
        let url = self.url();
        block_on(async move {
            let mut conn = mysql_async::Conn::from_url(url)
                .await
                .expect("connecting to MariaDB");
            let rows: Vec<mysql_async::Row> = conn.query(sql).await.expect("running a query");
            let out = rows
                .into_iter()
                .map(|row| {
                    row.get_opt::<Option<String>, _>(0)
                        .and_then(Result::ok)
                        .flatten()
                })
                .collect();
            conn.disconnect().await.ok();
            out
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        run_sql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS `{}`", self.name),
        );
    }
}

/// The URL without its database path.
fn server_url(url: &str) -> &str {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url;
    };
    let authority_start = rest.rfind('@').map_or(0, |at| at + 1);
    match rest[authority_start..].find('/') {
        Some(slash) => &url[..scheme.len() + 3 + authority_start + slash],
        None => url,
    }
}

fn url_host_port(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split('/').next()?;
    if host_port.contains(':') {
        Some(host_port.to_owned())
    } else {
        Some(format!("{host_port}:3306"))
    }
}

fn run_sql(admin_url: &str, sql: &str) {
    let url = admin_url.to_owned();
    let sql = sql.to_owned();
    block_on(async move {
        let mut conn = mysql_async::Conn::from_url(url)
            .await
            .expect("connecting to MariaDB as admin");
        conn.query_drop(sql).await.expect("running admin SQL");
        conn.disconnect().await.ok();
    });
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

//! A response plus what to log about it, and the log line itself.

use std::time::Duration;

/// A response plus what to log about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// Short machine-readable outcome for the log line.
    pub outcome: String,
    /// Detail for the log line only (never sent to the client).
    pub detail: Option<String>,
    /// The user, when known, for the log line.
    pub user: Option<String>,
}

impl Reply {
    /// A reply whose only header is `content-type`.
    pub fn new(
        status: u16,
        content_type: &str,
        body: impl Into<String>,
        outcome: impl Into<String>,
    ) -> Self {
        Self {
            status,
            headers: vec![("content-type", content_type.into())],
            body: body.into(),
            outcome: outcome.into(),
            detail: None,
            user: None,
        }
    }

    /// A `text/plain; charset=utf-8` reply.
    pub fn text(status: u16, body: impl Into<String>, outcome: impl Into<String>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body, outcome)
    }

    /// 405 `method not allowed` with `Allow: <allow>`.
    pub fn method_not_allowed(allow: &str) -> Self {
        Self::text(405, "method not allowed", "method_not_allowed").header("allow", allow)
    }

    /// 500 `server misconfigured`; `detail` (a missing or invalid variable) goes to the log only.
    pub fn misconfigured(detail: impl Into<String>) -> Self {
        Self::text(500, "server misconfigured", "misconfigured").detail(detail)
    }

    /// Adds a header after those already set.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The value of header `name` (as set, lower case), if the reply has it.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets the detail logged (never sent).
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Sets the user logged.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }
}

/// The one log line for a request: `key=value`, values that may hold user input quoted.
pub fn log_line(component: &str, method: &str, reply: &Reply, elapsed: Duration) -> String {
    let mut line = format!(
        "component={component} method={method:?} status={} outcome={} ms={}",
        reply.status,
        reply.outcome,
        elapsed.as_millis()
    );
    if let Some(user) = &reply.user {
        line.push_str(&format!(" user={user:?}"));
    }
    if let Some(detail) = &reply.detail {
        line.push_str(&format!(" error={detail:?}"));
    }
    line
}

/// `text` with the password of `url` (`scheme://user:password@host/…`) replaced by `***`: Spin
/// words some MySQL errors with the whole address (`address mysql://user:password@… is not
/// permitted`), and the error goes to the log line.
pub fn without_password(text: &str, url: &str) -> String {
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .filter(|password| !password.is_empty());
    match password {
        Some(password) => text.replace(password, "***"),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_sets_plain_content_type_and_nothing_to_log() {
        let reply = Reply::text(401, "missing token", "missing_token");
        assert_eq!(
            reply,
            Reply {
                status: 401,
                headers: vec![("content-type", "text/plain; charset=utf-8".into())],
                body: "missing token".into(),
                outcome: "missing_token".into(),
                detail: None,
                user: None,
            }
        );
    }

    #[test]
    fn builders_add_headers_in_order_and_log_fields() {
        let reply = Reply::new(200, "application/json", "{}", "ok")
            .header("cache-control", "no-store")
            .user("a@example.com")
            .detail("why");
        assert_eq!(
            reply.headers,
            [
                ("content-type", "application/json".into()),
                ("cache-control", "no-store".into())
            ]
        );
        assert_eq!(reply.user.as_deref(), Some("a@example.com"));
        assert_eq!(reply.detail.as_deref(), Some("why"));
    }

    #[test]
    fn method_not_allowed_and_misconfigured() {
        let reply = Reply::method_not_allowed("POST");
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (405, "method not allowed")
        );
        assert_eq!(reply.outcome, "method_not_allowed");
        assert_eq!(reply.headers[1], ("allow", "POST".into()));

        let reply = Reply::misconfigured("variable db_url: undefined");
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (500, "server misconfigured")
        );
        assert_eq!(reply.outcome, "misconfigured");
        assert_eq!(reply.detail.as_deref(), Some("variable db_url: undefined"));
    }

    #[test]
    fn log_line_has_fixed_fields_then_quoted_user_and_error() {
        let reply = Reply::text(200, "x", "ok");
        assert_eq!(
            log_line("login", "POST", &reply, Duration::from_millis(7)),
            r#"component=login method="POST" status=200 outcome=ok ms=7"#
        );
        let reply = reply.user("evil\nline@x").detail("a \"b\"");
        let line = log_line("validate", "GET", &reply, Duration::ZERO);
        assert!(!line.contains('\n'));
        assert_eq!(
            line,
            r#"component=validate method="GET" status=200 outcome=ok ms=0 user="evil\nline@x" error="a \"b\"""#
        );
    }

    #[test]
    fn the_password_never_reaches_the_log() {
        let url = "mysql://mp3:s3cr%2Ft@10.0.0.5:3306/auth";
        assert_eq!(
            super::without_password(&format!("connect: address {url} is not permitted"), url),
            "connect: address mysql://mp3:***@10.0.0.5:3306/auth is not permitted"
        );
        assert_eq!(
            super::without_password("refused", "mysql://h/auth"),
            "refused"
        );
        assert_eq!(super::without_password("x", "mysql://user@h/auth"), "x");
    }
}

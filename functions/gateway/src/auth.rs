//! The auth service, seen from the gateway: `POST {auth_url}/validate` decides who the caller
//! is, `POST {auth_url}/login` is forwarded as is. The HTTP calls themselves are made by the
//! Spin glue; this module turns their answers into claims or replies.

use component_http::Reply;
use mp3_model::Claims;

/// The headers of login's answer that the gateway relays.
pub const RELAYED: [&str; 4] = [
    "content-type",
    "retry-after",
    "www-authenticate",
    "cache-control",
];

/// What the auth service answered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answer {
    pub status: u16,
    /// The [`RELAYED`] headers it sent.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// 503: the auth service could not be asked, or answered nonsense.
fn unavailable(detail: impl Into<String>) -> Reply {
    Reply::text(
        503,
        "authentication service unavailable",
        "auth_unavailable",
    )
    .detail(detail)
}

/// The first line of an answer's body, for relaying a reason.
fn first_line(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// The caller's claims from validate's answer, or the reply to send instead: validate's 401
/// and 403 (with its reason), 503 when it was unreachable or failed.
pub fn claims(answer: Result<Answer, String>) -> Result<Claims, Reply> {
    let answer = answer.map_err(unavailable)?;
    match answer.status {
        200 => serde_json::from_slice::<Claims>(&answer.body)
            .map_err(|e| unavailable(format!("validate answered 200 with unreadable claims: {e}"))),
        401 => Err(Reply::text(
            401,
            or(first_line(&answer.body), "missing token"),
            "unauthenticated",
        )
        .header("www-authenticate", r#"Bearer realm="mp3""#)),
        403 => Err(Reply::text(
            403,
            or(first_line(&answer.body), "invalid token"),
            "forbidden",
        )),
        status => Err(unavailable(format!(
            "validate answered {status}: {}",
            first_line(&answer.body)
        ))),
    }
}

fn or(text: String, fallback: &str) -> String {
    if text.is_empty() {
        fallback.to_owned()
    } else {
        text
    }
}

/// The gateway's reply to `POST /login` or `POST /validate`, forwarded to the auth service
/// (`service` names it): its status, body and [`RELAYED`] headers, or 503 when it could not be
/// reached or failed (5xx). Neither answer may be cached: a 200 goes out with
/// `Cache-Control: no-store` whatever the service said.
pub fn forwarded_reply(service: &str, answer: Result<Answer, String>) -> Reply {
    let answer = match answer {
        Ok(answer) if answer.status < 500 => answer,
        Ok(answer) => {
            return unavailable(format!(
                "{service} answered {}: {}",
                answer.status,
                first_line(&answer.body)
            ))
        }
        Err(e) => return unavailable(e),
    };
    let content_type = answer
        .header("content-type")
        .unwrap_or("text/plain; charset=utf-8")
        .to_owned();
    let outcome = if answer.status == 200 {
        format!("{service}_forwarded")
    } else {
        format!("{service}_{}", answer.status)
    };
    let mut reply = Reply::new(
        answer.status,
        &content_type,
        String::from_utf8_lossy(&answer.body).into_owned(),
        outcome,
    );
    for (name, value) in answer.headers {
        if name != "content-type" && !(name == "cache-control" && answer.status == 200) {
            reply = reply.header(name, value);
        }
    }
    if answer.status == 200 {
        reply = reply.header("cache-control", "no-store");
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Result<Answer, String> {
        Ok(Answer {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        })
    }

    #[test]
    fn validate_200_gives_the_claims() {
        let json = r#"{"username":"a@b.c","sub":"a@b.c","admin":false,"iat":1,"exp":2,"iss":"i","aud":"a"}"#;
        assert_eq!(claims(answer(200, json)).unwrap().username, "a@b.c");
    }

    #[test]
    fn validate_refusals_are_relayed() {
        let reply = claims(answer(401, "missing token")).unwrap_err();
        assert_eq!((reply.status, reply.body.as_str()), (401, "missing token"));
        let reply = claims(answer(403, "invalid token: expired\n")).unwrap_err();
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (403, "invalid token: expired")
        );
    }

    #[test]
    fn anything_else_is_503() {
        for a in [
            answer(500, "server misconfigured"),
            answer(404, "not found"),
            answer(200, "not json"),
            Err("connection refused".to_owned()),
        ] {
            let reply = claims(a).unwrap_err();
            assert_eq!(reply.status, 503);
            assert_eq!(reply.body, "authentication service unavailable");
            assert!(reply.detail.is_some());
        }
    }

    #[test]
    fn validate_answers_are_forwarded_uncached() {
        let reply = forwarded_reply("validate", answer(200, r#"{"username":"a"}"#));
        assert_eq!(reply.status, 200);
        assert_eq!(reply.outcome, "validate_forwarded");
        assert!(reply
            .headers
            .contains(&("cache-control", "no-store".into())));
        let reply = forwarded_reply("validate", answer(403, "invalid token: expired"));
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (403, "invalid token: expired")
        );
    }

    #[test]
    fn login_answers_are_forwarded() {
        let reply = forwarded_reply("login", answer(200, "a.b.c"));
        assert_eq!((reply.status, reply.body.as_str()), (200, "a.b.c"));
        assert_eq!(
            reply.headers,
            vec![
                ("content-type", "text/plain; charset=utf-8".to_owned()),
                ("cache-control", "no-store".to_owned())
            ]
        );
        let reply = forwarded_reply(
            "login",
            Ok(Answer {
                status: 200,
                headers: vec![("cache-control", "max-age=600".into())],
                body: b"a.b.c".to_vec(),
            }),
        );
        assert!(reply
            .headers
            .contains(&("cache-control", "no-store".into())));
        assert!(!reply
            .headers
            .contains(&("cache-control", "max-age=600".into())));
        let reply = forwarded_reply(
            "login",
            Ok(Answer {
                status: 429,
                headers: vec![
                    ("content-type", "text/plain".into()),
                    ("retry-after", "60".into()),
                ],
                body: b"too many failed logins".to_vec(),
            }),
        );
        assert_eq!(reply.status, 429);
        assert!(reply.headers.contains(&("retry-after", "60".into())));
        let reply = forwarded_reply(
            "login",
            Ok(Answer {
                status: 401,
                headers: vec![("www-authenticate", r#"Basic realm="mp3""#.into())],
                body: b"missing credentials".to_vec(),
            }),
        );
        assert_eq!(reply.status, 401);
        assert!(reply
            .headers
            .contains(&("www-authenticate", r#"Basic realm="mp3""#.into())));
        assert_eq!(
            forwarded_reply("login", answer(503, "database unavailable")).status,
            503
        );
        assert_eq!(forwarded_reply("login", Err("refused".into())).status, 503);
    }
}

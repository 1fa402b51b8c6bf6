//! The auth service, seen from the gateway: `POST {auth_url}/validate` decides who the caller
//! is, `POST {auth_url}/login` is forwarded as is. The HTTP calls themselves are made by the
//! Spin glue; this module turns their answers into claims or replies.

use component_http::Reply;
use mp3_model::Claims;

/// What the auth service answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub retry_after: Option<String>,
    pub www_authenticate: Option<String>,
    pub body: Vec<u8>,
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

/// The gateway's reply to `POST /login`: the auth service's status and body (and its
/// `Content-Type`, `Retry-After` and `WWW-Authenticate`), or 503 when it could not be reached
/// or failed (5xx).
pub fn login_reply(answer: Result<Answer, String>) -> Reply {
    let answer = match answer {
        Ok(answer) if answer.status < 500 => answer,
        Ok(answer) => {
            return unavailable(format!(
                "login answered {}: {}",
                answer.status,
                first_line(&answer.body)
            ))
        }
        Err(e) => return unavailable(e),
    };
    let content_type = answer
        .content_type
        .unwrap_or_else(|| "text/plain; charset=utf-8".to_owned());
    let outcome = if answer.status == 200 {
        "login_forwarded".to_owned()
    } else {
        format!("login_{}", answer.status)
    };
    let mut reply = Reply::new(
        answer.status,
        &content_type,
        String::from_utf8_lossy(&answer.body).into_owned(),
        outcome,
    );
    if let Some(retry_after) = answer.retry_after {
        reply = reply.header("retry-after", retry_after);
    }
    if let Some(challenge) = answer.www_authenticate {
        reply = reply.header("www-authenticate", challenge);
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Result<Answer, String> {
        Ok(Answer {
            status,
            content_type: None,
            retry_after: None,
            www_authenticate: None,
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
    fn login_answers_are_forwarded() {
        let reply = login_reply(answer(200, "a.b.c"));
        assert_eq!((reply.status, reply.body.as_str()), (200, "a.b.c"));
        let reply = login_reply(Ok(Answer {
            status: 429,
            content_type: Some("text/plain".into()),
            retry_after: Some("60".into()),
            www_authenticate: None,
            body: b"too many failed logins".to_vec(),
        }));
        assert_eq!(reply.status, 429);
        assert!(reply.headers.contains(&("retry-after", "60".into())));
        let reply = login_reply(Ok(Answer {
            status: 401,
            content_type: None,
            retry_after: None,
            www_authenticate: Some(r#"Basic realm="mp3""#.into()),
            body: b"missing credentials".to_vec(),
        }));
        assert_eq!(reply.status, 401);
        assert!(reply
            .headers
            .contains(&("www-authenticate", r#"Basic realm="mp3""#.into())));
        assert_eq!(login_reply(answer(503, "database unavailable")).status, 503);
        assert_eq!(login_reply(Err("refused".into())).status, 503);
    }
}

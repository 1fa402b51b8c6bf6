//! `GET /download?fid=<mp3 id>`: who may download, and the response head (status, length,
//! range, file name) for the MP3's bytes, which the Spin glue then streams from GridFS.

use component_http::Reply;
use mp3_download_link::{LinkKey, Refusal};
use mp3_model::Job;

use crate::config::LinkSettings;

use crate::jobs::parse_id;
use crate::range::{self, Selection};

/// The first value of query parameter `name` (`""` for a bare `name`), as sent.
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

/// The `fid` query parameter as a well-formed id: 400 when missing or malformed.
pub fn fid(query: &str) -> Result<String, Reply> {
    match query_param(query, "fid") {
        None | Some("") => Err(Reply::text(400, "missing fid", "missing_fid")),
        Some(value) => {
            parse_id(value).ok_or_else(|| Reply::text(400, "malformed fid", "malformed_fid"))
        }
    }
}

/// The `expires` and `sig` of a signed link (see `mp3_download_link`), as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub expires: String,
    pub sig: String,
}

/// The link's signature when the query has a `sig`: such a request is judged by its link, not
/// by a bearer token.
pub fn signed(query: &str) -> Option<Signed> {
    let sig = query_param(query, "sig")?;
    Some(Signed {
        expires: query_param(query, "expires").unwrap_or("").to_owned(),
        sig: sig.to_owned(),
    })
}

fn refused(refusal: Refusal) -> Reply {
    let outcome = match refusal {
        Refusal::Expired => "link_expired",
        Refusal::Invalid => "bad_link",
    };
    Reply::text(403, refusal.to_string(), outcome)
}

/// What can be judged of a link before any lookup, so that a request without a token costs
/// nothing unless its link is well formed and current: links on (403 when off, 500 when
/// misconfigured), a signature of the right shape, an expiry in canonical form and not past.
/// The key, for [`link_owner`].
pub fn precheck<'s>(
    settings: &'s LinkSettings,
    link: &Signed,
    now: u64,
) -> Result<&'s LinkKey, Reply> {
    let key = match settings {
        LinkSettings::On { key, .. } => key,
        LinkSettings::Off => {
            return Err(Reply::text(
                403,
                "download links are not enabled",
                "links_disabled",
            ))
        }
        LinkSettings::Misconfigured(detail) => return Err(Reply::misconfigured(detail.clone())),
    };
    let shaped = link.sig.len() == mp3_download_link::SIGNATURE_CHARS
        && link
            .sig
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let expires = link
        .expires
        .parse::<u64>()
        .ok()
        .filter(|n| n.to_string() == link.expires);
    match expires {
        Some(at) if shaped && at > now => Ok(key),
        Some(at) if shaped && at <= now => Err(refused(Refusal::Expired)),
        _ => Err(refused(Refusal::Invalid)),
    }
}

/// Whom a signed link lets download MP3 `fid` at `now` (Unix seconds): the owner of its job.
/// 403 with the reason otherwise; a link to a file no job names is as invalid as a forged one,
/// so links cannot probe for files. (A refusal's log line names no user: a link someone else
/// altered is not the owner's doing.)
pub fn link_owner(
    key: &LinkKey,
    job: Option<&Job>,
    fid: &str,
    link: &Signed,
    now: u64,
) -> Result<String, Reply> {
    let Some(job) = job else {
        return Err(refused(Refusal::Invalid));
    };
    key.verify(fid, &job.owner, &link.expires, &link.sig, now)
        .map_err(refused)?;
    Ok(job.owner.clone())
}

/// 404 for an MP3 that no job of anyone produced (or that is gone from GridFS).
pub fn not_found() -> Reply {
    Reply::text(404, "mp3 not found", "mp3_not_found")
}

/// Only the uploader of the job that produced the MP3 may download it; to anyone else it
/// answers as an unknown one (only the log tells them apart).
pub fn check_owner(job: Option<&Job>, user: &str) -> Result<(), Reply> {
    match job {
        None => Err(not_found().user(user)),
        Some(job) if job.owner != user => {
            let mut reply = not_found().user(user);
            reply.outcome = "not_owner".into();
            Err(reply)
        }
        Some(_) => Ok(()),
    }
}

/// The name the browser saves the MP3 under: the upload's name with `.mp3` for its extension.
pub fn mp3_filename(upload_name: &str) -> String {
    let stem = match upload_name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => upload_name,
    };
    let stem = if stem.trim().is_empty() {
        "audio"
    } else {
        stem
    };
    format!("{stem}.mp3")
}

/// `attachment` with an ASCII `filename` (anything else replaced by `_`) and the exact name as
/// RFC 8187 `filename*`.
pub fn content_disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// What to send: the head, and which bytes of the file follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    /// First byte and number of bytes of the file in the body (0 bytes for a 416).
    pub start: u64,
    pub len: u64,
}

/// The response for a file of `length` bytes with the given `Range` header.
pub fn plan(length: u64, range_header: Option<&str>, upload_name: &str) -> Plan {
    let mut headers = vec![
        ("content-type", "audio/mpeg".to_owned()),
        ("accept-ranges", "bytes".to_owned()),
        (
            "content-disposition",
            content_disposition(&mp3_filename(upload_name)),
        ),
        ("cache-control", "private, no-store".to_owned()),
    ];
    let selection = range::select(range_header, length);
    let (start, len) = selection.span(length);
    let status = match selection {
        Selection::Full => 200,
        Selection::Partial { start, end } => {
            headers.push(("content-range", format!("bytes {start}-{end}/{length}")));
            206
        }
        Selection::Unsatisfiable => {
            headers[0].1 = "text/plain; charset=utf-8".to_owned();
            headers.push(("content-range", format!("bytes */{length}")));
            return Plan {
                status: 416,
                headers,
                start: 0,
                len: 0,
            };
        }
    };
    headers.push(("content-length", len.to_string()));
    Plan {
        status,
        headers,
        start,
        len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fid_is_required_and_checked() {
        assert_eq!(
            fid("fid=0123456789abcdef01234567").unwrap(),
            "0123456789abcdef01234567"
        );
        assert_eq!(
            fid("x=1&fid=0123456789ABCDEF01234567").unwrap(),
            "0123456789abcdef01234567"
        );
        assert_eq!(fid("").unwrap_err().body, "missing fid");
        assert_eq!(fid("fid=").unwrap_err().body, "missing fid");
        assert_eq!(fid("fid").unwrap_err().body, "missing fid");
        assert_eq!(fid("fid=12345").unwrap_err().body, "malformed fid");
        assert_eq!(fid("fid=../etc").unwrap_err().status, 400);
    }

    #[test]
    fn signed_links_open_their_owners_file_until_they_expire() {
        let key = LinkKey::new("a download link key of at least 32 bytes").unwrap();
        let on = LinkSettings::On {
            key: key.clone(),
            ttl_secs: 100,
        };
        let fid = "bbbbbbbbbbbbbbbbbbbbbbbb";
        let job = Job {
            id: "0123456789abcdef01234567".into(),
            owner: "a@example.com".into(),
            video_fid: "aaaaaaaaaaaaaaaaaaaaaaaa".into(),
            filename: "clip.mp4".into(),
            status: mp3_model::JobStatus::Done,
            mp3_fid: Some(fid.into()),
            error: None,
            attempts: 1,
            options: Default::default(),
            webhook: None,
            created_at: 1,
            updated_at: 2,
        };
        let query = key.query(fid, "a@example.com", 1_000);
        let link = signed(&query).unwrap();
        assert_eq!(link.expires, "1000");
        assert_eq!(fid_of(&query), fid);
        let checked = precheck(&on, &link, 999).unwrap();
        let owner = link_owner(checked, Some(&job), fid, &link, 999).unwrap();
        assert_eq!(owner, "a@example.com");

        let early = |settings: &LinkSettings, link: &Signed, now| {
            let r = precheck(settings, link, now).unwrap_err();
            (r.status, r.body, r.outcome)
        };
        let late = |job: Option<&Job>, link: &Signed| {
            let r = link_owner(&key, job, fid, link, 0).unwrap_err();
            (r.status, r.body, r.outcome, r.user)
        };
        // Judged before any lookup: expired, malformed, links off or misconfigured.
        assert_eq!(
            early(&on, &link, 1_000),
            (403, "link expired".into(), "link_expired".into())
        );
        for (expires, sig) in [
            ("1000x", link.sig.as_str()),
            ("01000", link.sig.as_str()),
            ("", link.sig.as_str()),
            ("1000", &link.sig[1..]),
            ("1000", "a".repeat(43).replace('a', "+").as_str()),
        ] {
            let bad = Signed {
                expires: expires.into(),
                sig: sig.into(),
            };
            assert_eq!(early(&on, &bad, 0).1, "invalid link", "{expires} {sig}");
        }
        assert_eq!(
            early(&LinkSettings::Off, &link, 0),
            (
                403,
                "download links are not enabled".into(),
                "links_disabled".into()
            )
        );
        assert_eq!(
            early(&LinkSettings::Misconfigured("bad key".into()), &link, 0).0,
            500
        );
        // Judged against the job: altered, given to someone else, or no job at all.
        let altered = Signed {
            expires: "2000".into(),
            ..link.clone()
        };
        assert_eq!(
            late(Some(&job), &altered),
            (403, "invalid link".into(), "bad_link".into(), None)
        );
        let moved = Job {
            owner: "b@example.com".into(),
            ..job.clone()
        };
        assert_eq!(late(Some(&moved), &link).1, "invalid link");
        assert_eq!(late(None, &link).1, "invalid link");
        assert_eq!(signed("fid=1"), None);
        assert_eq!(
            signed("fid=1&sig="),
            Some(Signed {
                expires: String::new(),
                sig: String::new()
            })
        );
    }

    fn fid_of(query: &str) -> String {
        fid(query).unwrap()
    }

    #[test]
    fn names_and_disposition() {
        assert_eq!(mp3_filename("clip.mp4"), "clip.mp3");
        assert_eq!(mp3_filename("a.b.mkv"), "a.b.mp3");
        assert_eq!(mp3_filename("noext"), "noext.mp3");
        assert_eq!(mp3_filename(".hidden"), ".hidden.mp3");
        assert_eq!(mp3_filename(""), "audio.mp3");
        assert_eq!(
            content_disposition("été \"x\".mp3"),
            "attachment; filename=\"_t_ _x_.mp3\"; filename*=UTF-8''%C3%A9t%C3%A9%20%22x%22.mp3"
        );
    }

    #[test]
    fn plans() {
        let full = plan(1000, None, "a.mp4");
        assert_eq!((full.status, full.start, full.len), (200, 0, 1000));
        assert!(full.headers.contains(&("content-length", "1000".into())));
        assert!(full.headers.contains(&("accept-ranges", "bytes".into())));
        assert!(full
            .headers
            .contains(&("content-type", "audio/mpeg".into())));

        let part = plan(1000, Some("bytes=100-199"), "a.mp4");
        assert_eq!((part.status, part.start, part.len), (206, 100, 100));
        assert!(part
            .headers
            .contains(&("content-range", "bytes 100-199/1000".into())));
        assert!(part.headers.contains(&("content-length", "100".into())));

        let none = plan(1000, Some("bytes=1000-"), "a.mp4");
        assert_eq!((none.status, none.len), (416, 0));
        assert!(none
            .headers
            .contains(&("content-range", "bytes */1000".into())));
    }
}

//! `GET /download?fid=<mp3 id>`: who may download, and the response head (status, length,
//! range, file name) for the MP3's bytes, which the Spin glue then streams from GridFS.

use component_http::Reply;
use mp3_model::Job;

use crate::jobs::parse_id;
use crate::range::{self, Selection};

/// The `fid` query parameter as a well-formed id: 400 when missing or malformed.
pub fn fid(query: &str) -> Result<String, Reply> {
    let value = query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(name, _)| *name == "fid")
        .map(|(_, value)| value);
    match value {
        None | Some("") => Err(Reply::text(400, "missing fid", "missing_fid")),
        Some(value) => {
            parse_id(value).ok_or_else(|| Reply::text(400, "malformed fid", "malformed_fid"))
        }
    }
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

//! `GET /jobs/{job_id}`: where a job is, for its owner only; `GET /jobs`: the caller's jobs,
//! newest first, a page at a time.

use component_http::Reply;
use mp3_download_link::LinkKey;
use mp3_model::{Job, JobStatus};

/// A job or file id as sent by a client: 24 hex digits, returned lower-case; `None` otherwise.
pub fn parse_id(text: &str) -> Option<String> {
    (text.len() == 24 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| text.to_ascii_lowercase())
}

/// What signs the download links in job views: the key, how long a link works, now, and the
/// latest a link may expire (the asking token's expiry: a link from a view must not outlive the
/// login that fetched it). Times in Unix seconds.
#[derive(Debug, Clone, Copy)]
pub struct Links<'k> {
    pub key: &'k LinkKey,
    pub ttl_secs: u64,
    pub now: u64,
    pub not_after: u64,
}

/// The job as the API shows it: status, file ids, the reason of a failure, times in ms. A done
/// job has `download_url` (for a bearer token) and, with `links`, `signed_download_url`, which
/// works without one until `signed_url_expires_at` (Unix seconds).
pub fn view(job: &Job, links: Option<Links<'_>>) -> serde_json::Value {
    let mut v = job.public_view();
    if let (JobStatus::Done, Some(fid)) = (job.status, &job.mp3_fid) {
        v["download_url"] = format!("/download?fid={fid}").into();
        if let Some(links) = links {
            let expires = links
                .now
                .saturating_add(links.ttl_secs)
                .min(links.not_after);
            if expires > links.now {
                let query = links.key.query(fid, &job.owner, expires);
                v["signed_download_url"] = format!("/download?{query}").into();
                v["signed_url_expires_at"] = expires.into();
            }
        }
    }
    v
}

/// Seconds a client following a queued or converting job is asked to wait between polls.
pub const POLL_AFTER_SECS: u32 = 2;

/// Jobs per page of `GET /jobs` unless `limit` says otherwise, and the most it may ask for.
pub const DEFAULT_PAGE: u32 = 20;
pub const MAX_PAGE: u32 = 100;

/// Where a page of `GET /jobs` starts: after the job created at `created_at` with id `id`
/// (jobs are listed by creation time, then id, both descending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub id: String,
}

impl Cursor {
    /// The opaque text clients pass back as `cursor`: `<created_at>.<job id>`.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at, self.id)
    }

    fn decode(text: &str) -> Option<Self> {
        let (time, id) = text.split_once('.')?;
        let created_at = time.parse::<i64>().ok().filter(|t| *t >= 0)?;
        Some(Cursor {
            created_at,
            id: parse_id(id)?,
        })
    }
}

/// A `GET /jobs` request: how many jobs, from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    pub after: Option<Cursor>,
}

/// Reads `limit` (1 to [`MAX_PAGE`], default [`DEFAULT_PAGE`]) and `cursor` (from a previous
/// page's `next`): 400 with the reason for anything else. Unknown parameters are ignored.
pub fn page(query: &str) -> Result<Page, Reply> {
    let mut page = Page {
        limit: DEFAULT_PAGE,
        after: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "limit" => {
                page.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        Reply::text(
                            400,
                            format!("limit must be a whole number from 1 to {MAX_PAGE}"),
                            "bad_limit",
                        )
                    })?;
            }
            "cursor" => {
                page.after = Some(
                    Cursor::decode(value)
                        .ok_or_else(|| Reply::text(400, "malformed cursor", "bad_cursor"))?,
                );
            }
            _ => {}
        }
    }
    Ok(page)
}

/// The page's reply from the jobs found for it: up to `limit + 1` of the caller's jobs, newest
/// first (the extra one only tells that another page follows).
pub fn page_reply(page: &Page, mut found: Vec<Job>, user: &str, links: Option<Links<'_>>) -> Reply {
    let more = found.len() > page.limit as usize;
    found.truncate(page.limit as usize);
    let next = found.last().filter(|_| more).map(|last| {
        let cursor = Cursor {
            created_at: last.created_at,
            id: last.id.clone(),
        };
        format!("/jobs?limit={}&cursor={}", page.limit, cursor.encode())
    });
    let body = serde_json::json!({
        "jobs": found.iter().map(|job| view(job, links)).collect::<Vec<_>>(),
        "next": next,
    });
    Reply::new(200, "application/json", body.to_string(), "ok")
        .header("cache-control", "no-store")
        .user(user)
}

/// 404 for a job that does not exist (or whose id is malformed): the same answer, so ids
/// cannot be probed by their shape.
pub fn not_found() -> Reply {
    Reply::text(404, "job not found", "job_not_found")
}

/// `job` (looked up by a well-formed id) if `user` owns it; otherwise the 404 an unknown job
/// gets, so another user's ids cannot be probed for existence (only the log tells them apart).
pub fn owned<'j>(job: Option<&'j Job>, user: &str) -> Result<&'j Job, Reply> {
    let Some(job) = job else {
        return Err(not_found().user(user));
    };
    if job.owner != user {
        let mut reply = not_found().user(user);
        reply.outcome = "not_owner".into();
        return Err(reply);
    }
    Ok(job)
}

/// 204 for a job deleted with its files.
pub fn deleted(user: &str) -> Reply {
    let mut reply = Reply::text(204, "", "deleted").user(user);
    reply.headers.clear();
    reply
}

/// The reply for `user` asking about `job` (looked up by a well-formed id). Another user's job
/// answers exactly as an unknown one, so ids cannot be probed for existence; only the log
/// tells them apart.
pub fn status_reply(job: Option<&Job>, user: &str, links: Option<Links<'_>>) -> Reply {
    let job = match owned(job, user) {
        Ok(job) => job,
        Err(reply) => return reply,
    };
    let reply = Reply::new(200, "application/json", view(job, links).to_string(), "ok")
        .header("cache-control", "no-store")
        .user(user);
    // A job still moving: tell a polling client how long to wait, so a page or script need not
    // guess (long-polling would hold a wasm instance per waiting client).
    if job.status.is_final() {
        reply
    } else {
        reply.header("retry-after", POLL_AFTER_SECS.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: JobStatus) -> Job {
        Job {
            id: "0123456789abcdef01234567".into(),
            owner: "a@example.com".into(),
            video_fid: "aaaaaaaaaaaaaaaaaaaaaaaa".into(),
            filename: "clip.mp4".into(),
            status,
            mp3_fid: (status == JobStatus::Done).then(|| "bbbbbbbbbbbbbbbbbbbbbbbb".into()),
            error: (status == JobStatus::Failed).then(|| "no audio stream".into()),
            attempts: 1,
            options: Default::default(),
            webhook: None,
            created_at: 1,
            updated_at: 2,
        }
    }

    #[test]
    fn ids_are_24_hex_digits() {
        assert_eq!(
            parse_id("0123456789ABCDEF01234567").as_deref(),
            Some("0123456789abcdef01234567")
        );
        for bad in [
            "",
            "123",
            "0123456789abcdef0123456g",
            "0123456789abcdef012345678",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn owner_sees_status_others_get_what_an_unknown_id_gets() {
        let queued = job(JobStatus::Queued);
        let reply = status_reply(Some(&queued), "a@example.com", None);
        assert_eq!(reply.status, 200);
        let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(v["status"], "queued");
        assert_eq!(
            (v["created_at"].as_i64(), v["updated_at"].as_i64()),
            (Some(1), Some(2))
        );
        assert!(v.get("mp3_fid").is_none() && v.get("error").is_none());

        let theirs = status_reply(Some(&queued), "b@example.com", None);
        let unknown = status_reply(None, "b@example.com", None);
        assert_eq!(
            (theirs.status, &theirs.body, &theirs.headers),
            (404, &unknown.body, &unknown.headers)
        );
        assert_eq!(
            (theirs.outcome.as_str(), unknown.outcome.as_str()),
            ("not_owner", "job_not_found")
        );
    }

    #[test]
    fn moving_jobs_say_when_to_ask_again() {
        let retry = |status| {
            status_reply(Some(&job(status)), "a@example.com", None)
                .headers
                .into_iter()
                .find(|(name, _)| *name == "retry-after")
                .map(|(_, value)| value)
        };
        assert_eq!(retry(JobStatus::Queued).as_deref(), Some("2"));
        assert_eq!(retry(JobStatus::Converting).as_deref(), Some("2"));
        assert_eq!(retry(JobStatus::Done), None);
        assert_eq!(retry(JobStatus::Failed), None);
    }

    #[test]
    fn pages_read_limit_and_cursor() {
        assert_eq!(
            page("").unwrap(),
            Page {
                limit: DEFAULT_PAGE,
                after: None
            }
        );
        let p = page("limit=5&cursor=17.0123456789ABCDEF01234567&x=y").unwrap();
        assert_eq!(p.limit, 5);
        assert_eq!(
            p.after,
            Some(Cursor {
                created_at: 17,
                id: "0123456789abcdef01234567".into()
            })
        );
        for bad in [
            "limit=0",
            "limit=101",
            "limit=-1",
            "limit=",
            "limit=1e2",
            "limit",
        ] {
            let err = page(bad).unwrap_err();
            assert_eq!(
                (err.status, err.body.as_str()),
                (400, "limit must be a whole number from 1 to 100"),
                "{bad}"
            );
        }
        for bad in [
            "cursor=",
            "cursor=17",
            "cursor=.0123456789abcdef01234567",
            "cursor=-1.0123456789abcdef01234567",
            "cursor=17.xyz",
            "cursor=17.0123456789abcdef01234567.1",
        ] {
            let err = page(bad).unwrap_err();
            assert_eq!(
                (err.status, err.body.as_str()),
                (400, "malformed cursor"),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_page_links_the_next_only_when_there_is_one() {
        let jobs = |n: i64| -> Vec<Job> {
            (0..n)
                .map(|i| Job {
                    id: format!("{:024x}", 100 - i),
                    created_at: 1000 - i,
                    ..job(JobStatus::Done)
                })
                .collect()
        };
        let two = page("limit=2").unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&page_reply(&two, jobs(3), "a@example.com", None).body).unwrap();
        assert_eq!(v["jobs"].as_array().unwrap().len(), 2);
        assert_eq!(v["jobs"][1]["job_id"], format!("{:024x}", 99));
        assert_eq!(
            v["jobs"][0]["download_url"],
            "/download?fid=bbbbbbbbbbbbbbbbbbbbbbbb"
        );
        let next = v["next"].as_str().unwrap();
        assert_eq!(next, format!("/jobs?limit=2&cursor=999.{:024x}", 99));
        let (_, query) = next.split_once('?').unwrap();
        assert_eq!(
            page(query).unwrap().after,
            Some(Cursor {
                created_at: 999,
                id: format!("{:024x}", 99)
            })
        );

        let v: serde_json::Value =
            serde_json::from_str(&page_reply(&two, jobs(2), "a@example.com", None).body).unwrap();
        assert_eq!(v["jobs"].as_array().unwrap().len(), 2);
        assert!(v["next"].is_null());
        let v: serde_json::Value =
            serde_json::from_str(&page_reply(&two, Vec::new(), "a@example.com", None).body)
                .unwrap();
        assert_eq!(
            (v["jobs"].as_array().unwrap().len(), v["next"].is_null()),
            (0, true)
        );
    }

    #[test]
    fn done_shows_the_mp3_and_failed_the_reason() {
        let v = view(&job(JobStatus::Done), None);
        assert_eq!(v["mp3_fid"], "bbbbbbbbbbbbbbbbbbbbbbbb");
        assert_eq!(v["download_url"], "/download?fid=bbbbbbbbbbbbbbbbbbbbbbbb");
        let v = view(&job(JobStatus::Failed), None);
        assert_eq!(
            (v["status"].as_str(), v["error"].as_str()),
            (Some("failed"), Some("no audio stream"))
        );
        assert_eq!(
            view(&job(JobStatus::Converting), None)["status"],
            "converting"
        );
        assert!(v.get("signed_download_url").is_none());

        // With a key, a done job also carries a link that works without a token.
        let key = LinkKey::new("a download link key of at least 32 bytes").unwrap();
        let links = Links {
            key: &key,
            ttl_secs: 100,
            now: 1_000,
            not_after: 5_000,
        };
        let v = view(&job(JobStatus::Done), Some(links));
        assert_eq!(v["signed_url_expires_at"], 1_100);
        let url = v["signed_download_url"].as_str().unwrap();
        let query = url.strip_prefix("/download?").unwrap();
        let sig = crate::download::query_param(query, "sig").unwrap();
        assert_eq!(
            key.verify(
                "bbbbbbbbbbbbbbbbbbbbbbbb",
                "a@example.com",
                "1100",
                sig,
                1_099
            ),
            Ok(())
        );
        // Never past the token that asked, and none once that is past.
        let capped = Links {
            not_after: 1_050,
            ..links
        };
        assert_eq!(
            view(&job(JobStatus::Done), Some(capped))["signed_url_expires_at"],
            1_050
        );
        let spent = Links {
            not_after: 1_000,
            ..links
        };
        assert!(view(&job(JobStatus::Done), Some(spent))
            .get("signed_download_url")
            .is_none());
        assert!(view(&job(JobStatus::Queued), Some(links))
            .get("signed_download_url")
            .is_none());
    }
}

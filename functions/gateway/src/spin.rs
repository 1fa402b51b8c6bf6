//! The Spin entry point: reads the request, calls the modules' decisions, and writes the
//! (possibly streamed) response. Blocking code drives async SDK calls with Spin's executor.

use std::future::Future;
use std::io::Read;
use std::task::Waker;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use component_http::forwarded::forward_for;
use component_http::spin::{
    header, header_values, method_name, peer_ip, respond, response_head, start_body, SpinVariables,
};
use component_http::{log_line, Reply};
use futures::StreamExt;
use mongo_wire::bson::oid::ObjectId;
use mp3_download_link::LinkKey;
use mp3_model::{new_object_id, Claims};
use spin_sdk::http::conversions::TryIntoOutgoingRequest;
use spin_sdk::http::{IncomingRequest, Method, Request, Response, ResponseOutparam};
use spin_sdk::http_component;

use crate::auth::{self, Answer};
use crate::backend::{Mongo, Queue, Services};
use crate::config::LinkSettings;
use crate::tus::{self, UploadState};
use crate::upload::{self, BlockOn, Upload};
use crate::{
    declared_too_large, download, jobs, route, split_target, webhook, Config, Route, TusMethod,
    WebhookAction, COMPONENT,
};

/// Bytes read from GridFS and written to the client per step of a download.
const DOWNLOAD_STEP: usize = 64 * 1024;

struct SpinExecutor;

impl BlockOn for SpinExecutor {
    type WakeUp = spin_executor::CancelOnDropToken;
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        spin_sdk::http::run(future)
    }
    /// A timer that is due at once: Spin's executor only wakes tasks through pollables.
    fn wake_soon(&self, waker: &Waker) -> Self::WakeUp {
        let now = wasi::clocks::monotonic_clock::subscribe_duration(0);
        spin_executor::push_waker_and_get_token(now, waker.clone()).into()
    }
}

#[http_component]
fn handle(req: IncomingRequest, out: ResponseOutparam) {
    let started = Instant::now();
    let method = method_name(&req.method());
    let target = req.path_with_query().unwrap_or_default();
    let (path, query) = split_target(&target);
    let route = match route(&method, path) {
        Ok(route) => route,
        Err(reply) => return send(out, reply, &method, started),
    };
    let config = match Config::load(&SpinVariables) {
        Ok(config) => config,
        Err(detail) => return send(out, Reply::misconfigured(detail), &method, started),
    };
    match route {
        Route::Login => {
            // login counts failures per client: tell it who that is, as a proxy does.
            let forwarded = forward_for(&header_values(&req, "x-forwarded-for"), peer_ip(&req));
            let mut headers = Vec::new();
            headers.extend(header(&req, "authorization").map(|v| ("authorization", v)));
            headers.extend(forwarded.map(|v| ("x-forwarded-for", v)));
            let reply = auth::forwarded_reply("login", call_auth(&config, "/login", &headers));
            send(out, reply, &method, started);
        }
        Route::Validate | Route::Logout => {
            let (path, service) = match route {
                Route::Logout => ("/logout", "logout"),
                _ => ("/validate", "validate"),
            };
            let headers: Vec<_> = header(&req, "authorization")
                .map(|v| ("authorization", v))
                .into_iter()
                .collect();
            let reply = auth::forwarded_reply(service, call_auth(&config, path, &headers));
            send(out, reply, &method, started);
        }
        Route::Upload => upload_route(req, out, &config, &method, started),
        Route::Jobs => send(out, jobs_route(&req, &config, query), &method, started),
        Route::Job(id) => send(out, job_route(&req, &config, &id), &method, started),
        Route::DeleteJob(id) => send(out, delete_job_route(&req, &config, &id), &method, started),
        Route::TusOptions => send(
            out,
            tus::options(config.max_resumable_upload_bytes),
            &method,
            started,
        ),
        Route::TusCreate => send(out, tus_create(&req, &config), &method, started),
        Route::TusUpload(id, what) => {
            let reply = tus_upload(req, &config, &id, what);
            send(out, reply, &method, started);
        }
        Route::Download => download_route(&req, out, &config, query, &method, started),
        Route::Webhook(action) => {
            let reply = webhook_route(req, &config, action);
            send(out, reply, &method, started);
        }
    }
}

/// `/webhook`: the caller's webhook settings, shown, changed or given a new secret.
fn webhook_route(req: IncomingRequest, config: &Config, action: WebhookAction) -> Reply {
    let user = match authenticate(&req, config) {
        Ok(user) => user,
        Err(reply) => return reply,
    };
    // Read before connecting: a bad body costs no MongoDB connection.
    let url = match action {
        WebhookAction::Update => {
            let body = match read_small_body(req, webhook::MAX_BODY) {
                Ok(body) => body,
                Err(reply) => return reply.user(user),
            };
            match webhook::parse_update(&body) {
                Ok(url) => url,
                Err(reply) => return reply.user(user),
            }
        }
        WebhookAction::Show | WebhookAction::Rotate => None,
    };
    let mut mongo = match connect_mongo(config) {
        Ok(mongo) => mongo,
        Err(reply) => return reply.user(user),
    };
    let now = now_ms();
    let settings = match action {
        WebhookAction::Show => webhook::settings_of(&mut mongo, &user, now),
        WebhookAction::Update => webhook::update(&mut mongo, &user, url, now),
        WebhookAction::Rotate => webhook::rotate(&mut mongo, &user, now),
    };
    match settings {
        Ok(settings) => webhook::view(&settings, now),
        Err(reply) => reply.user(user),
    }
}

/// A request body of at most `max` bytes, or 413.
fn read_small_body(req: IncomingRequest, max: usize) -> Result<Vec<u8>, Reply> {
    let mut body = Vec::new();
    let mut stream = req.into_body_stream();
    while let Some(chunk) = spin_sdk::http::run(stream.next()) {
        let chunk = chunk.map_err(|e| {
            Reply::text(400, "the request body broke off", "body_broken").detail(format!("{e:?}"))
        })?;
        body.extend_from_slice(&chunk);
        if body.len() > max {
            return Err(Reply::text(
                413,
                format!("the body exceeds {max} bytes"),
                "too_large",
            ));
        }
    }
    Ok(body)
}

/// `POST {auth_url}{path}` with `headers` (the caller's `Authorization`, ...), and no body.
/// A request whose connection broke before any answer (`HttpProtocolError`: the host's pooled
/// connection to the auth service closed by it just as it was reused, seen on Spin) is sent
/// once more; a timeout or a refused connection is not. A repeat is harmless: validate and
/// logout are idempotent, and a login that did arrive the first time at most issues a second
/// token or counts a failure twice.
fn call_auth(config: &Config, path: &str, headers: &[(&str, String)]) -> Result<Answer, String> {
    let url = format!("{}{path}", config.auth_url);
    let send = || {
        let mut builder = Request::builder();
        builder.method(Method::Post).uri(url.as_str());
        for (name, value) in headers {
            builder.header(*name, value.as_str());
        }
        // Sent without taking its body, so the head alone is the whole request (no chunked
        // body whose end follows once the guest writes it). Otherwise the auth service, which
        // never reads the body, can answer and close before that end is sent, and the host's
        // client then fails the call (hyper: IncompleteMessage) although the answer came. The
        // length is said, as proxies on the way may require of a POST.
        builder.header("content-length", "0");
        let (bodiless, _empty) = builder
            .body(Vec::new())
            .build()
            .try_into_outgoing_request()
            .map_err(|e| spin_sdk::http::SendError::RequestConversion(e.into()))?;
        send_within(bodiless, Duration::from_secs(config.auth_timeout_secs))
    };
    let response = send()
        .or_else(|e| match e {
            spin_sdk::http::SendError::Http(spin_sdk::http::ErrorCode::HttpProtocolError) => send(),
            other => Err(other),
        })
        .map_err(|e| format!("calling {url}: {e}"))?;
    let headers = auth::RELAYED
        .into_iter()
        .filter_map(|name| {
            let value = response.header(name)?.as_str()?;
            Some((name, value.to_owned()))
        })
        .collect();
    Ok(Answer {
        status: *response.status(),
        headers,
        body: response.body().to_vec(),
    })
}

/// Sends `request` (its body already complete), waiting at most `limit` for the connection,
/// for the answer's head and between its body's bytes: `spin_sdk::http::send` takes no
/// request options, so the host's defaults (600 s on Spin) would apply.
fn send_within(
    request: spin_sdk::http::OutgoingRequest,
    limit: Duration,
) -> Result<Response, spin_sdk::http::SendError> {
    use spin_sdk::http::conversions::TryFromIncomingResponse as _;
    use spin_sdk::http::SendError;
    use spin_sdk::wit::wasi::http0_2_0::{outgoing_handler, types::RequestOptions};
    let nanos = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
    let options = RequestOptions::new();
    for set in [
        RequestOptions::set_connect_timeout,
        RequestOptions::set_first_byte_timeout,
        RequestOptions::set_between_bytes_timeout,
    ] {
        set(&options, Some(nanos)).map_err(|()| {
            SendError::RequestConversion("the host refused a request timeout".into())
        })?;
    }
    let answer = outgoing_handler::handle(request, Some(options)).map_err(SendError::Http)?;
    answer.subscribe().block();
    let response = match answer.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(SendError::Http(code)),
        Some(Err(())) | None => {
            return Err(SendError::RequestConversion(
                "the host gave no answer to a finished request".into(),
            ))
        }
    };
    spin_sdk::http::run(Response::try_from_incoming_response(response))
        .map_err(|e| SendError::ResponseConversion(e.into()))
}

/// The caller's username, or the reply refusing them.
fn authenticate(req: &IncomingRequest, config: &Config) -> Result<String, Reply> {
    claims_of(req, config).map(|c| c.username)
}

/// The caller's token's claims (as validate read them), or the reply refusing them.
fn claims_of(req: &IncomingRequest, config: &Config) -> Result<Claims, Reply> {
    let Some(authorization) = header(req, "authorization") else {
        return Err(Reply::text(401, "missing token", "missing_token")
            .header("www-authenticate", r#"Bearer realm="mp3""#));
    };
    let headers = [("authorization", authorization)];
    auth::claims(call_auth(config, "/validate", &headers))
}

/// The SCRAM key cache: Spin's default key-value store, which outlives the request's instance
/// (in memory or in a local SQLite file of Spin's; the entries are as secret as the MongoDB
/// password they come from, and named by a hash). Any store failure only means no cache.
struct KeyValueCache(Option<spin_sdk::key_value::Store>);

impl KeyValueCache {
    fn open() -> Self {
        Self(spin_sdk::key_value::Store::open_default().ok())
    }
}

impl mongo_wire::KeyCache for KeyValueCache {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.0.as_ref()?.get(key).ok().flatten()
    }
    fn put(&self, key: &str, value: &[u8]) {
        if let Some(store) = &self.0 {
            let _ = store.set(key, value);
        }
    }
    fn remove(&self, key: &str) {
        if let Some(store) = &self.0 {
            let _ = store.delete(key);
        }
    }
}

fn connect_mongo(config: &Config) -> Result<Mongo, Reply> {
    Mongo::connect(&config.mongodb_url, &KeyValueCache::open()).map_err(storage_unavailable)
}

/// 503 for a MongoDB failure, `detail` in the log line only.
fn storage_unavailable(detail: String) -> Reply {
    Reply::text(503, "storage unavailable", "storage_unavailable").detail(detail)
}

/// What signs the download links of the job views, when links are on: none outlives the
/// token (`exp`) that asked for the view.
fn links(config: &Config, token_exp: i64) -> Option<jobs::Links<'_>> {
    match &config.links {
        LinkSettings::On { key, ttl_secs } => Some(jobs::Links {
            key,
            ttl_secs: *ttl_secs,
            now: now_secs(),
            not_after: u64::try_from(token_exp).unwrap_or(0),
        }),
        LinkSettings::Off | LinkSettings::Misconfigured(_) => None,
    }
}

fn jobs_route(req: &IncomingRequest, config: &Config, query: &str) -> Reply {
    let (user, exp) = match claims_of(req, config) {
        Ok(claims) => (claims.username, claims.exp),
        Err(reply) => return reply,
    };
    let page = match jobs::page(query) {
        Ok(page) => page,
        Err(reply) => return reply.user(user),
    };
    let mut mongo = match connect_mongo(config) {
        Ok(mongo) => mongo,
        Err(reply) => return reply.user(user),
    };
    // One more than the page holds: whether it does tells if another page follows.
    match mongo.jobs_of(&user, page.after.as_ref(), page.limit + 1) {
        Ok(found) => jobs::page_reply(&page, found, &user, links(config, exp)),
        Err(e) => Reply::text(503, "storage unavailable", "storage_unavailable")
            .detail(e)
            .user(user),
    }
}

fn job_route(req: &IncomingRequest, config: &Config, id: &str) -> Reply {
    let (user, exp) = match claims_of(req, config) {
        Ok(claims) => (claims.username, claims.exp),
        Err(reply) => return reply,
    };
    let Some(id) = jobs::parse_id(id) else {
        return jobs::not_found().user(user);
    };
    let mut mongo = match connect_mongo(config) {
        Ok(mongo) => mongo,
        Err(reply) => return reply.user(user),
    };
    match mongo.job(&id) {
        Ok(job) => jobs::status_reply(job.as_ref(), &user, links(config, exp)),
        Err(e) => Reply::text(503, "storage unavailable", "storage_unavailable")
            .detail(e)
            .user(user),
    }
}

fn delete_job_route(req: &IncomingRequest, config: &Config, id: &str) -> Reply {
    let user = match authenticate(req, config) {
        Ok(user) => user,
        Err(reply) => return reply,
    };
    let Some(id) = jobs::parse_id(id) else {
        return jobs::not_found().user(user);
    };
    let mut mongo = match connect_mongo(config) {
        Ok(mongo) => mongo,
        Err(reply) => return reply.user(user),
    };
    let job = match mongo.job(&id) {
        Ok(job) => job,
        Err(e) => return storage_unavailable(e).user(user),
    };
    let job = match jobs::owned(job.as_ref(), &user) {
        Ok(job) => job,
        Err(reply) => return reply,
    };
    match mongo.remove_job(job, now_ms()) {
        Ok(()) => jobs::deleted(&user),
        Err(e) => storage_unavailable(e).user(user),
    }
}

fn tus_headers(req: &IncomingRequest) -> tus::Headers {
    tus::Headers {
        tus_resumable: header(req, "tus-resumable"),
        upload_length: header(req, "upload-length"),
        upload_defer_length: header(req, "upload-defer-length"),
        upload_metadata: header(req, "upload-metadata"),
        upload_offset: header(req, "upload-offset"),
        upload_checksum: header(req, "upload-checksum"),
        content_type: header(req, "content-type"),
        content_length: header(req, "content-length"),
    }
}

/// `POST /uploads`: a new resumable upload of the caller's.
fn tus_create(req: &IncomingRequest, config: &Config) -> Reply {
    let user = match authenticate(req, config) {
        Ok(user) => user,
        Err(reply) => return reply,
    };
    let creation = match tus::creation(&tus_headers(req), config.max_resumable_upload_bytes) {
        Ok(creation) => creation,
        Err(reply) => return reply.user(user),
    };
    let ids = new_object_id().and_then(|id| new_object_id().map(|video| (id, video)));
    let Ok((id, video)) = ids else {
        return Reply::text(500, "internal error", "no_randomness").user(user);
    };
    let mut mongo = match connect_mongo(config) {
        Ok(mongo) => mongo,
        Err(reply) => return reply.user(user),
    };
    let now = now_ms();
    // Counted, then created: requests racing each other may get a few uploads past the
    // limits, which bound what an account holds, not exactly.
    match tus::Store::open_uploads(&mut mongo, &user, now) {
        Ok(open) => {
            if let Err(reply) = tus::admit(open, creation.length, config.max_resumable_upload_bytes)
            {
                return reply.user(user);
            }
        }
        Err(e) => return storage_unavailable(e).user(user),
    }
    let state = UploadState {
        id: ObjectId::from_bytes(id).to_hex(),
        owner: user.clone(),
        filename: creation.filename,
        length: creation.length,
        offset: 0,
        tail: Vec::new(),
        video_fid: ObjectId::from_bytes(video).to_hex(),
        checked: false,
        done: false,
        options: creation.options,
        created_at: now,
        expires_at: now.saturating_add(expiry_ms(config)),
    };
    match tus::Store::create(&mut mongo, &state) {
        Ok(()) => tus::created(&state).user(user),
        Err(e) => storage_unavailable(e).user(user),
    }
}

fn expiry_ms(config: &Config) -> i64 {
    i64::try_from(config.upload_expiry_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// `HEAD`, `PATCH` or `DELETE /uploads/{id}`.
fn tus_upload(req: IncomingRequest, config: &Config, id: &str, what: TusMethod) -> Reply {
    let user = match authenticate(&req, config) {
        Ok(user) => user,
        Err(reply) => return reply,
    };
    let headers = tus_headers(&req);
    if let Err(reply) = tus::check_version(&headers) {
        return reply.user(user);
    }
    let Some(id) = jobs::parse_id(id) else {
        return tus::not_found().user(user);
    };
    let mut mongo = match connect_mongo(config) {
        Ok(mongo) => mongo,
        Err(reply) => return reply.user(user),
    };
    let state = match tus::Store::load(&mut mongo, &id) {
        Ok(state) => state,
        Err(e) => return storage_unavailable(e).user(user),
    };
    let state = match tus::owned(state, &user, now_ms()) {
        Ok(state) => state,
        Err(reply) => return reply.user(user),
    };
    // RabbitMQ is connected to only to publish a finished upload's job.
    let mut queue: Option<Queue> = None;
    let mut publish = |message: &mp3_model::JobMessage| {
        let queue = match &mut queue {
            Some(queue) => queue,
            None => queue.insert(Queue::connect(&config.amqp_url)?),
        };
        queue.publish(message)
    };
    let reply = match tus::settled(state, &mut mongo, &mut publish) {
        Ok(state) => tus_act(req, config, what, state, &headers, &mut mongo, &mut publish),
        Err(reply) => reply,
    };
    if let Some(queue) = queue {
        queue.close();
    }
    reply.user(user)
}

/// What `HEAD`, `DELETE` or `PATCH` does to an upload as it really is.
fn tus_act(
    req: IncomingRequest,
    config: &Config,
    what: TusMethod,
    state: tus::UploadState,
    headers: &tus::Headers,
    mongo: &mut Mongo,
    publish: &mut dyn FnMut(&mp3_model::JobMessage) -> Result<(), String>,
) -> Reply {
    match what {
        TusMethod::Head => tus::progress(&state),
        TusMethod::Delete => match new_object_id() {
            Ok(token) => tus::terminate(
                &state,
                mongo,
                &ObjectId::from_bytes(token).to_hex(),
                now_ms(),
            ),
            Err(_) => Reply::text(500, "internal error", "no_randomness"),
        },
        TusMethod::Patch => {
            let request = match tus::patch_request(headers, &state) {
                Ok(request) => request,
                Err(reply) => return reply,
            };
            let Ok(token) = new_object_id() else {
                return Reply::text(500, "internal error", "no_randomness");
            };
            let token = ObjectId::from_bytes(token).to_hex();
            let mut body = BodyReader {
                stream: Box::pin(req.into_body_stream()),
                pending: Vec::new(),
                pos: 0,
            };
            tus::patch(
                state,
                &mut body,
                tus::Patch {
                    request,
                    chunk_size: mp3_model::GRIDFS_CHUNK_SIZE,
                    clock: &now_ms,
                    expiry_ms: expiry_ms(config),
                    token: &token,
                    publish,
                },
                mongo,
            )
        }
    }
}

/// The request body as a blocking [`Read`], a chunk of the host's at a time.
struct BodyReader<S> {
    stream: std::pin::Pin<Box<S>>,
    pending: Vec<u8>,
    pos: usize,
}

impl<S, E> Read for BodyReader<S>
where
    S: futures::Stream<Item = Result<Vec<u8>, E>>,
    E: std::fmt::Debug,
{
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.pending.len() {
            match spin_sdk::http::run(self.stream.next()) {
                Some(Ok(chunk)) => {
                    self.pending = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(std::io::Error::other(format!("{e:?}"))),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len() - self.pos);
        buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn upload_route(
    req: IncomingRequest,
    out: ResponseOutparam,
    config: &Config,
    method: &str,
    started: Instant,
) {
    let reply = (|| {
        let user = authenticate(&req, config)?;
        if declared_too_large(
            header(&req, "content-length").as_deref(),
            config.max_upload_bytes,
        ) {
            return Err(upload::too_large(config.max_upload_bytes).user(&user));
        }
        let mongo = connect_mongo(config).map_err(|r| r.user(&user))?;
        let queue = Queue::connect(&config.amqp_url).map_err(|e| {
            Reply::text(503, "queue unavailable", "queue_unavailable")
                .detail(e)
                .user(&user)
        })?;
        let content_type = header(&req, "content-type");
        let mut services = Services {
            mongo,
            queue,
            amqp_url: config.amqp_url.clone(),
        };
        let body = req
            .into_body_stream()
            .map(|chunk| chunk.map_err(|e| e.to_debug_string()));
        let job_id = new_object_id().map_err(|e| {
            Reply::text(500, "internal error", "no_randomness")
                .detail(e)
                .user(&user)
        })?;
        let upload = Upload {
            content_type: content_type.as_deref(),
            owner: &user,
            max_bytes: config.max_upload_bytes,
            clock: now_ms,
            job_id: ObjectId::from_bytes(job_id).to_hex(),
        };
        let reply = upload::handle(upload, body, &mut services, &SpinExecutor).user(&user);
        services.queue.close();
        Ok(reply)
    })()
    .unwrap_or_else(|reply| reply);
    send(out, reply, method, started);
}

/// Who asks for a download: a user with a token, or the holder of a signed link (with the key
/// that checks it).
enum Caller<'k> {
    Token(String),
    Link(&'k LinkKey, download::Signed),
}

fn download_route(
    req: &IncomingRequest,
    out: ResponseOutparam,
    config: &Config,
    query: &str,
    method: &str,
    started: Instant,
) {
    let prepared = (|| {
        // A signed link stands in for the token; without one, the token says who asks. What
        // can be judged of a link without a lookup is, first.
        let now = now_secs();
        let caller = match download::signed(query) {
            Some(link) => {
                let key = download::precheck(&config.links, &link, now)?;
                Caller::Link(key, link)
            }
            None => Caller::Token(authenticate(req, config)?),
        };
        let tag = |reply: Reply| match &caller {
            Caller::Token(user) => reply.user(user),
            Caller::Link(..) => reply,
        };
        let fid = download::fid(query).map_err(tag)?;
        let mut mongo = connect_mongo(config).map_err(tag)?;
        let job = mongo.job_by_mp3(&fid).map_err(|e| {
            tag(Reply::text(503, "storage unavailable", "storage_unavailable").detail(e))
        })?;
        let user = match &caller {
            Caller::Token(user) => {
                download::check_owner(job.as_ref(), user)?;
                user.clone()
            }
            Caller::Link(key, link) => download::link_owner(key, job.as_ref(), &fid, link, now)?,
        };
        let unavailable = |e: String| {
            Reply::text(503, "storage unavailable", "storage_unavailable")
                .detail(e)
                .user(&user)
        };
        let id = ObjectId::parse_str(&fid).map_err(|e| unavailable(e.to_string()))?;
        let info = match mongo.mp3_info(id) {
            Ok(info) => info,
            Err(mongo_wire::Error::NotFound(_)) => return Err(download::not_found().user(&user)),
            Err(e) => return Err(unavailable(format!("MongoDB: {e}"))),
        };
        let filename = job.map(|j| j.filename).unwrap_or_default();
        let plan = download::plan(info.length, header(req, "range").as_deref(), &filename);
        Ok((user, mongo, id, plan))
    })();
    let (user, mut mongo, id, plan) = match prepared {
        Ok(prepared) => prepared,
        Err(reply) => return send(out, reply, method, started),
    };
    if plan.status == 416 {
        let mut reply =
            Reply::text(416, "range not satisfiable", "range_not_satisfiable").user(&user);
        reply.headers = plan.headers;
        return send(out, reply, method, started);
    }
    let mut log = Reply::new(plan.status, "audio/mpeg", "", "ok").user(&user);
    let mut source = match mongo.open_mp3(id, plan.start) {
        Ok(source) => source,
        Err(e) => {
            let reply = Reply::text(503, "storage unavailable", "storage_unavailable")
                .detail(format!("MongoDB: {e}"))
                .user(&user);
            return send(out, reply, method, started);
        }
    };
    let response = match response_head(plan.status, &plan.headers) {
        Ok(response) => response,
        Err(e) => {
            let reply = Reply::text(500, "internal error", "bad_header").detail(e);
            return send(out, reply, method, started);
        }
    };
    // The first step goes out with the head (see `start_body`), the rest as it is read.
    let mut left = plan.len;
    let mut buf = vec![0u8; DOWNLOAD_STEP];
    let mut next = |left: u64, buf: &mut [u8]| -> Result<usize, (String, &'static str)> {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        match source.read(&mut buf[..want]) {
            Ok(0) => Err((format!("mp3 ended {left} bytes early"), "stream_failed")),
            Ok(n) => Ok(n),
            Err(e) => Err((format!("reading the mp3: {e}"), "stream_failed")),
        }
    };
    // Nothing has been sent yet: a first read that fails is still a clean 503.
    let first = if left == 0 {
        0
    } else {
        match next(left, &mut buf) {
            Ok(n) => n,
            Err((detail, _)) => {
                let reply = Reply::text(503, "storage unavailable", "storage_unavailable")
                    .detail(detail)
                    .user(&user);
                return send(out, reply, method, started);
            }
        }
    };
    left -= first as u64;
    let body = match start_body(out, response, &buf[..first]) {
        Ok(body) => body,
        Err(e) => {
            log = log.detail(format!("sending the response: {e}"));
            log.outcome = "send_failed".into();
            eprintln!("{}", log_line(COMPONENT, method, &log, started.elapsed()));
            return;
        }
    };
    let mut failure = None;
    while left > 0 && failure.is_none() {
        let n = match next(left, &mut buf) {
            Ok(n) => n,
            Err(f) => {
                failure = Some(f);
                break;
            }
        };
        if let Err(e) = body.write_all(&buf[..n]) {
            failure = Some((format!("client went away: {e}"), "client_gone"));
            break;
        }
        left -= n as u64;
    }
    match failure {
        // A body cut short is not finished, so the client sees the response end early.
        Some((detail, outcome)) => {
            log = log.detail(detail);
            log.outcome = outcome.into();
        }
        None => {
            if let Err(e) = body.finish() {
                log = log.detail(format!("client went away: {e}"));
                log.outcome = "client_gone".into();
            }
        }
    }
    eprintln!("{}", log_line(COMPONENT, method, &log, started.elapsed()));
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Logs `reply` and sends it as the whole response.
fn send(out: ResponseOutparam, reply: Reply, method: &str, started: Instant) {
    respond(COMPONENT, method, out, reply, started);
}

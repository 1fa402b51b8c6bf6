//! The connection: handshake, authentication, commands, and the CRUD helpers on top.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bson::spec::BinarySubtype;
use bson::{doc, Binary, Bson, Document};

use crate::error::{Error, Result};
use crate::scram::{KeyCache, NoCache, ScramSha256};
use crate::uri::{ConnectionString, Credentials};
use crate::wire::{self, DocumentSequence, OpMsg};

/// Limits before the handshake tells the real ones (MongoDB's defaults).
const DEFAULT_MAX_BSON: usize = 16 * 1024 * 1024;
const DEFAULT_MAX_MESSAGE: usize = 48_000_000;
const DEFAULT_MAX_WRITE_BATCH: usize = 100_000;
/// `socketTimeoutMS` when the URI does not say.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the `hello` handshake told about the server.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub max_bson_object_size: usize,
    pub max_message_size_bytes: usize,
    pub max_write_batch_size: usize,
    pub writable_primary: bool,
    pub max_wire_version: i32,
}

/// A blocking client over one stream (a `TcpStream` or anything `Read + Write`).
pub struct Client<S> {
    stream: S,
    next_request_id: i32,
    info: ServerInfo,
    default_database: Option<String>,
    /// Set after an i/o or framing error: the stream may be mid-message, so no more requests.
    broken: bool,
    /// Ids of recent `moreToCome` requests: MongoDB never answers them, FerretDB 1.x does, so
    /// a reply to one of these is skipped.
    unanswered: VecDeque<i32>,
    /// How long one answer (or a cursor without a document) may take in all, however slowly
    /// its bytes trickle in (`socketTimeoutMS`).
    timeout: Duration,
}

/// Connects to the first usable host of a `mongodb://` URI, handshakes and authenticates.
pub fn connect(uri: &str) -> Result<Client<TcpStream>> {
    connect_cached(uri, &NoCache)
}

/// [`connect`], keeping the keys SCRAM derives from the password in `cache` (see
/// [`KeyCache`]), so that later connections skip the derivation.
pub fn connect_cached(uri: &str, cache: &dyn KeyCache) -> Result<Client<TcpStream>> {
    let cs: ConnectionString = uri.parse()?;
    let mut last = None;
    for (host, port) in &cs.hosts {
        match connect_host(&cs, host, *port, cache) {
            Ok(client) if client.info.writable_primary || cs.hosts.len() == 1 => return Ok(client),
            Ok(_) => last = Some(Error::protocol(format!("{host}:{port} is not the primary"))),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::InvalidUri("no host".into())))
}

fn connect_host(
    cs: &ConnectionString,
    host: &str,
    port: u16,
    cache: &dyn KeyCache,
) -> Result<Client<TcpStream>> {
    let mut last: Option<std::io::Error> = None;
    let mut stream = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, cs.connect_timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            // Some platforms (older wasi:sockets shims) have no timed connect.
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => match TcpStream::connect(addr)
            {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            },
            Err(e) => last = Some(e),
        }
    }
    let stream = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(e.into()),
        (None, None) => return Err(Error::InvalidUri(format!("{host} resolves to nothing"))),
    };
    for r in [
        stream.set_read_timeout(Some(cs.socket_timeout)),
        stream.set_write_timeout(Some(cs.socket_timeout)),
        stream.set_nodelay(true),
    ] {
        if let Err(e) = r {
            if e.kind() != std::io::ErrorKind::Unsupported {
                return Err(e.into());
            }
        }
    }
    let app_name = cs.app_name.as_deref();
    let mut client = Client::new(stream);
    client.set_timeout(cs.socket_timeout);
    match &cs.credentials {
        None => client.hello(app_name)?,
        Some(cred) => {
            let scram = ScramSha256::new(&cred.username, &cred.password)?;
            let mut speculative = sasl_start_command(&scram);
            speculative.insert("db", cred.source.clone());
            let start = client.hello_speculative(app_name, speculative)?;
            client.log_in(cred, scram, start, cache)?;
        }
    }
    client.default_database = cs.database.clone();
    Ok(client)
}

/// The `hello` (or legacy `isMaster`) command with the client metadata drivers send.
fn hello_command(name: &str, app_name: Option<&str>) -> Document {
    let mut hello = doc! {
        name: 1,
        "client": {
            "driver": {"name": "mongo-wire", "version": env!("CARGO_PKG_VERSION")},
            "os": {"type": std::env::consts::OS, "architecture": std::env::consts::ARCH},
        },
    };
    if let Some(app) = app_name {
        if let Ok(client_doc) = hello.get_document_mut("client") {
            client_doc.insert("application", doc! {"name": app});
        }
    }
    hello
}

/// A reader that fails with `TimedOut` once `deadline` has passed: each read is bounded by the
/// socket's own timeout, a whole answer by this.
struct Deadline<'a, R> {
    inner: &'a mut R,
    deadline: Instant,
}

impl<R: Read> Read for Deadline<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if Instant::now() >= self.deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the server's answer took longer than socketTimeoutMS",
            ));
        }
        self.inner.read(buf)
    }
}

/// The limits a `hello` answer announces, never above MongoDB's own (which are the defaults):
/// a server announcing more gets MongoDB's, so no answer can make the client accept, or
/// reserve memory for, messages of any size.
fn server_info(reply: &Document) -> ServerInfo {
    let size = |key: &str, default: usize| -> usize {
        let announced = match reply.get(key) {
            Some(Bson::Int32(v)) => usize::try_from(*v).unwrap_or(default),
            Some(Bson::Int64(v)) => usize::try_from(*v).unwrap_or(default),
            Some(Bson::Double(v)) if *v >= 1.0 => *v as usize,
            _ => default,
        };
        announced.min(default)
    };
    ServerInfo {
        max_bson_object_size: size("maxBsonObjectSize", DEFAULT_MAX_BSON),
        max_message_size_bytes: size("maxMessageSizeBytes", DEFAULT_MAX_MESSAGE),
        max_write_batch_size: size("maxWriteBatchSize", DEFAULT_MAX_WRITE_BATCH).max(1),
        writable_primary: reply.get_bool("isWritablePrimary").unwrap_or(false)
            || reply.get_bool("ismaster").unwrap_or(false),
        max_wire_version: reply.get_i32("maxWireVersion").unwrap_or(0),
    }
}

/// Options of [`Client::find`].
#[derive(Debug, Clone, Default)]
pub struct FindOptions {
    pub sort: Option<Document>,
    pub projection: Option<Document>,
    /// At most this many documents in all (0 or `None`: no limit).
    pub limit: Option<i64>,
    pub skip: Option<i64>,
    /// Documents per batch (first batch and each getMore).
    pub batch_size: Option<i32>,
}

/// What an update did.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateResult {
    pub matched: u64,
    pub modified: u64,
    pub upserted_id: Option<Bson>,
}

impl<S: Read + Write> Client<S> {
    /// Wraps a connected stream and runs the `hello` handshake.
    pub fn handshake(stream: S, app_name: Option<&str>) -> Result<Self> {
        let mut client = Self::new(stream);
        client.hello(app_name)?;
        Ok(client)
    }

    /// How long one answer, or a cursor without a document, may take (`socketTimeoutMS`; 60 s
    /// unless set).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn hello(&mut self, app_name: Option<&str>) -> Result<()> {
        let reply = self.command("admin", hello_command("hello", app_name))?;
        self.info = server_info(&reply);
        Ok(())
    }

    /// The handshake as drivers make it when they will log in: a legacy OP_QUERY `isMaster`
    /// (the one command servers still take that way) carrying the SCRAM client-first message
    /// as `speculativeAuthenticate`. A server that supports it (MongoDB 4.4+, FerretDB) answers
    /// with its saslStart reply in the same round trip; `None` means it did not, and the
    /// conversation starts the usual way.
    fn hello_speculative(
        &mut self,
        app_name: Option<&str>,
        speculative: Document,
    ) -> Result<Option<Document>> {
        let mut hello = hello_command("isMaster", app_name);
        hello.insert("helloOk", true);
        hello.insert("speculativeAuthenticate", speculative);
        let request_id = self.next_id();
        let bytes = wire::encode_op_query(request_id, "admin", &hello)?;
        self.write_all(&bytes)?;
        let reply = self.read_reply(request_id)?;
        let body = check_ok(reply.into_body()?)?;
        self.info = server_info(&body);
        Ok(body.get_document("speculativeAuthenticate").ok().cloned())
    }

    fn new(stream: S) -> Self {
        Client {
            stream,
            next_request_id: 1,
            info: ServerInfo {
                max_bson_object_size: DEFAULT_MAX_BSON,
                max_message_size_bytes: DEFAULT_MAX_MESSAGE,
                max_write_batch_size: DEFAULT_MAX_WRITE_BATCH,
                writable_primary: false,
                max_wire_version: 0,
            },
            default_database: None,
            broken: false,
            unanswered: VecDeque::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn server_info(&self) -> &ServerInfo {
        &self.info
    }

    /// The database named in the connection string's path, if any.
    pub fn default_database(&self) -> Option<&str> {
        self.default_database.as_deref()
    }

    /// The stream back, for callers that want to close it themselves.
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// SCRAM-SHA-256 with saslStart/saslContinue against `source` (usually `admin`).
    pub fn authenticate(&mut self, source: &str, username: &str, password: &str) -> Result<()> {
        self.authenticate_cached(source, username, password, &NoCache)
    }

    /// [`Client::authenticate`] with the derived keys kept in `cache`.
    pub fn authenticate_cached(
        &mut self,
        source: &str,
        username: &str,
        password: &str,
        cache: &dyn KeyCache,
    ) -> Result<()> {
        let credentials = Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
            source: source.to_owned(),
        };
        let scram = ScramSha256::new(username, password)?;
        self.log_in(&credentials, scram, None, cache)
    }

    /// Finishes the conversation `scram` began (`start` is the server's saslStart answer when
    /// the handshake carried it). Keys from the cache that the server refuses are dropped from
    /// it and the conversation is started again once, with keys derived anew: a stale or damaged
    /// entry costs one round, never a failed login.
    fn log_in(
        &mut self,
        credentials: &Credentials,
        mut scram: ScramSha256,
        start: Option<Document>,
        cache: &dyn KeyCache,
    ) -> Result<()> {
        let source = credentials.source.as_str();
        match (
            self.sasl_conversation(source, &mut scram, start, cache),
            scram.cache_entry(),
        ) {
            (Err(Error::Auth(_)), Some(entry)) => {
                cache.remove(entry);
                let mut scram = ScramSha256::new(&credentials.username, &credentials.password)?;
                self.sasl_conversation(source, &mut scram, None, cache)
            }
            (result, _) => result,
        }
    }

    fn sasl_conversation(
        &mut self,
        source: &str,
        scram: &mut ScramSha256,
        start: Option<Document>,
        cache: &dyn KeyCache,
    ) -> Result<()> {
        let start = match start {
            Some(start) => start,
            None => self
                .command(source, sasl_start_command(scram))
                .map_err(auth_error)?,
        };
        let conversation = start
            .get("conversationId")
            .cloned()
            .ok_or_else(|| Error::Auth("saslStart answer has no conversationId".into()))?;
        let server_first = sasl_payload(&start)?;
        let client_final = scram.client_final_cached(&server_first, cache)?;
        let cont = self
            .command(
                source,
                doc! {
                    "saslContinue": 1,
                    "conversationId": conversation.clone(),
                    "payload": binary(client_final.into_bytes()),
                },
            )
            .map_err(auth_error)?;
        scram.verify_server_final(&sasl_payload(&cont)?)?;
        scram.cache_verified_keys(cache);
        if !cont.get_bool("done").unwrap_or(false) {
            // A server that ignores skipEmptyExchange (FerretDB, MongoDB before 4.4) wants one
            // more, empty, round. It goes without waiting: the next command's answer comes after
            // its answer, which is skipped, and a server that refused it refuses that command.
            self.command_deferred(
                source,
                doc! {
                    "saslContinue": 1,
                    "conversationId": conversation,
                    "payload": binary(Vec::new()),
                },
            )?;
        }
        Ok(())
    }

    /// Runs a command in `db`; `ok: 0` becomes [`Error::Command`].
    pub fn command(&mut self, db: &str, cmd: Document) -> Result<Document> {
        self.command_with_sequences(db, cmd, Vec::new())
    }

    /// Runs a command whose big arrays travel as kind-1 document sequences.
    pub fn command_with_sequences(
        &mut self,
        db: &str,
        mut cmd: Document,
        sequences: Vec<DocumentSequence>,
    ) -> Result<Document> {
        cmd.insert("$db", db);
        let msg = OpMsg {
            flags: 0,
            body: cmd,
            sequences,
        };
        let request_id = self.send(&msg)?;
        let reply = self.read_reply(request_id)?;
        let body = reply.into_body()?;
        check_ok(body)
    }

    /// Sends a command without waiting for its answer, which a later command skips.
    fn command_deferred(&mut self, db: &str, mut cmd: Document) -> Result<()> {
        cmd.insert("$db", db);
        let id = self.send(&OpMsg::new(cmd))?;
        self.remember_unanswered(id);
        Ok(())
    }

    fn remember_unanswered(&mut self, id: i32) {
        if self.unanswered.len() >= 64 {
            self.unanswered.pop_front();
        }
        self.unanswered.push_back(id);
    }

    /// Sends a command with `moreToCome`: MongoDB sends no answer (use with `writeConcern: {w:
    /// 0}`). FerretDB 1.x answers anyway; that answer is recognised and skipped later.
    pub fn command_no_reply(&mut self, db: &str, mut cmd: Document) -> Result<()> {
        cmd.insert("$db", db);
        let mut msg = OpMsg::new(cmd);
        msg.flags = wire::MORE_TO_COME;
        let id = self.send(&msg)?;
        self.remember_unanswered(id);
        Ok(())
    }

    /// Reads until the answer to `request_id`, skipping answers to messages sent without
    /// waiting (see [`Client::command_no_reply`]).
    fn read_reply(&mut self, request_id: i32) -> Result<wire::Reply> {
        let deadline = Instant::now() + self.timeout;
        let (header, reply) = loop {
            let mut stream = Deadline {
                inner: &mut self.stream,
                deadline,
            };
            let bytes = wire::read_message(&mut stream, self.info.max_message_size_bytes)
                .inspect_err(|_| self.broken = true)?;
            let (header, reply) =
                wire::decode_message(&bytes).inspect_err(|_| self.broken = true)?;
            match self
                .unanswered
                .iter()
                .position(|id| *id == header.response_to)
            {
                Some(i) if header.response_to != request_id => {
                    self.unanswered.remove(i);
                }
                _ => break (header, reply),
            }
        };
        if header.response_to != request_id {
            self.broken = true;
            return Err(Error::protocol(format!(
                "reply to request {} while waiting for {request_id}",
                header.response_to
            )));
        }
        if let wire::Reply::Msg(m) = &reply {
            if m.more_to_come() {
                self.broken = true;
                return Err(Error::protocol(
                    "unexpected moreToCome reply (exhaust not requested)",
                ));
            }
        }
        Ok(reply)
    }

    fn next_id(&mut self) -> i32 {
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        request_id
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        if self.broken {
            return Err(Error::protocol(
                "connection unusable after an earlier i/o error",
            ));
        }
        wire::write_message(&mut self.stream, bytes).inspect_err(|_| self.broken = true)
    }

    /// False once an i/o or framing error has left the stream unusable.
    pub fn is_usable(&self) -> bool {
        !self.broken
    }

    fn send(&mut self, msg: &OpMsg) -> Result<i32> {
        if self.broken {
            return Err(Error::protocol(
                "connection unusable after an earlier i/o error",
            ));
        }
        let docs =
            std::iter::once(&msg.body).chain(msg.sequences.iter().flat_map(|s| &s.documents));
        for doc in docs {
            let size = bson_size(doc)?;
            if size > self.info.max_bson_object_size.saturating_add(16 * 1024) {
                return Err(Error::MessageTooLarge {
                    size,
                    max: self.info.max_bson_object_size,
                });
            }
        }
        let request_id = self.next_id();
        let bytes = wire::encode_op_msg(request_id, msg, false)?;
        if bytes.len() > self.info.max_message_size_bytes {
            return Err(Error::MessageTooLarge {
                size: bytes.len(),
                max: self.info.max_message_size_bytes,
            });
        }
        self.write_all(&bytes)?;
        Ok(request_id)
    }

    /// Inserts one document (an `_id` ObjectId is added when missing) and returns its `_id`.
    pub fn insert_one(&mut self, db: &str, coll: &str, doc: Document) -> Result<Bson> {
        let mut ids = self.insert_many(db, coll, vec![doc])?;
        ids.pop()
            .ok_or_else(|| Error::protocol("insert returned no id"))
    }

    /// Inserts documents in order, in as many batches as the server's limits need; returns the
    /// `_id`s. Stops at the first write error.
    pub fn insert_many(&mut self, db: &str, coll: &str, docs: Vec<Document>) -> Result<Vec<Bson>> {
        let mut ids = Vec::with_capacity(docs.len());
        let mut batch = Vec::new();
        let mut batch_bytes = 0usize;
        // Room for the command body and framing.
        let budget = self.info.max_message_size_bytes.saturating_sub(16 * 1024);
        for mut doc in docs {
            let id = match doc.get("_id") {
                Some(id) => id.clone(),
                None => {
                    let id = Bson::ObjectId(bson::oid::ObjectId::new());
                    let mut with_id = doc! {"_id": id.clone()};
                    with_id.extend(doc);
                    doc = with_id;
                    id
                }
            };
            let size = bson_size(&doc)?;
            if !batch.is_empty()
                && (batch_bytes + size > budget || batch.len() >= self.info.max_write_batch_size)
            {
                self.insert_batch(db, coll, std::mem::take(&mut batch))?;
                batch_bytes = 0;
            }
            batch_bytes += size;
            batch.push(doc);
            ids.push(id);
        }
        if !batch.is_empty() {
            self.insert_batch(db, coll, batch)?;
        }
        Ok(ids)
    }

    fn insert_batch(&mut self, db: &str, coll: &str, documents: Vec<Document>) -> Result<()> {
        let reply = self.command_with_sequences(
            db,
            doc! {"insert": coll, "ordered": true},
            vec![DocumentSequence {
                identifier: "documents".into(),
                documents,
            }],
        )?;
        check_write_errors(&reply)
    }

    /// Starts a query; the cursor fetches further batches with getMore as it is iterated.
    pub fn find(
        &mut self,
        db: &str,
        coll: &str,
        filter: Document,
        options: FindOptions,
    ) -> Result<Cursor<'_, S>> {
        let mut cmd = doc! {"find": coll, "filter": filter};
        if let Some(sort) = options.sort {
            cmd.insert("sort", sort);
        }
        if let Some(p) = options.projection {
            cmd.insert("projection", p);
        }
        if let Some(l) = options.limit.filter(|l| *l != 0) {
            cmd.insert("limit", l.abs());
            if l < 0 {
                cmd.insert("singleBatch", true);
            }
        }
        if let Some(s) = options.skip {
            cmd.insert("skip", s);
        }
        if let Some(b) = options.batch_size {
            cmd.insert("batchSize", b);
        }
        let reply = self.command(db, cmd)?;
        Cursor::from_reply(self, db, coll, &reply, "firstBatch", options.batch_size)
    }

    /// The first document matching `filter`, if any.
    pub fn find_one(&mut self, db: &str, coll: &str, filter: Document) -> Result<Option<Document>> {
        let opts = FindOptions {
            limit: Some(-1),
            ..FindOptions::default()
        };
        self.find(db, coll, filter, opts)?.next().transpose()
    }

    /// Updates the first match of `filter` with `update` (operators or a pipeline).
    pub fn update_one(
        &mut self,
        db: &str,
        coll: &str,
        filter: Document,
        update: Document,
        upsert: bool,
    ) -> Result<UpdateResult> {
        let reply = self.command(
            db,
            doc! {
                "update": coll,
                "updates": [{"q": filter, "u": update, "upsert": upsert, "multi": false}],
                "ordered": true,
            },
        )?;
        check_write_errors(&reply)?;
        let upserted_id = reply
            .get_array("upserted")
            .ok()
            .and_then(|a| a.first())
            .and_then(|u| u.as_document())
            .and_then(|u| u.get("_id"))
            .cloned();
        let n = count(&reply, "n");
        Ok(UpdateResult {
            matched: if upserted_id.is_some() {
                n.saturating_sub(1)
            } else {
                n
            },
            modified: count(&reply, "nModified"),
            upserted_id,
        })
    }

    /// How many documents of `coll` match `filter` (the `count` command).
    pub fn count_documents(&mut self, db: &str, coll: &str, filter: Document) -> Result<u64> {
        let reply = self.command(db, doc! {"count": coll, "query": filter})?;
        Ok(count(&reply, "n"))
    }

    /// Deletes every match of `filter`; returns how many went.
    pub fn delete_many(&mut self, db: &str, coll: &str, filter: Document) -> Result<u64> {
        let reply = self.command(
            db,
            doc! {"delete": coll, "deletes": [{"q": filter, "limit": 0}], "ordered": true},
        )?;
        check_write_errors(&reply)?;
        Ok(count(&reply, "n"))
    }

    /// findAndModify: updates the first match (by `sort`) and returns it, before or after.
    #[allow(clippy::too_many_arguments)]
    pub fn find_one_and_update(
        &mut self,
        db: &str,
        coll: &str,
        filter: Document,
        update: Document,
        sort: Option<Document>,
        upsert: bool,
        return_new: bool,
    ) -> Result<Option<Document>> {
        let mut cmd = doc! {
            "findAndModify": coll,
            "query": filter,
            "update": update,
            "upsert": upsert,
            "new": return_new,
        };
        if let Some(sort) = sort {
            cmd.insert("sort", sort);
        }
        let reply = self.command(db, cmd)?;
        Ok(reply.get_document("value").ok().cloned())
    }

    /// createIndexes with index specs such as `{key: {a: 1}, name: "a_1", unique: true}`.
    pub fn create_indexes(&mut self, db: &str, coll: &str, indexes: Vec<Document>) -> Result<()> {
        self.command(db, doc! {"createIndexes": coll, "indexes": indexes})
            .map(|_| ())
    }

    /// Drops a whole database.
    pub fn drop_database(&mut self, db: &str) -> Result<()> {
        self.command(db, doc! {"dropDatabase": 1}).map(|_| ())
    }
}

/// A query's results, fetched batch by batch.
pub struct Cursor<'a, S: Read + Write> {
    client: &'a mut Client<S>,
    db: String,
    coll: String,
    id: i64,
    batch: VecDeque<Document>,
    batch_size: Option<i32>,
    failed: bool,
    /// Since when the server has answered `getMore` with empty batches, one after the other:
    /// one doing so forever holds the cursor for its client's timeout at most. (The time the
    /// caller takes between batches does not count.)
    empty_since: Option<Instant>,
}

impl<'a, S: Read + Write> Cursor<'a, S> {
    fn from_reply(
        client: &'a mut Client<S>,
        db: &str,
        coll: &str,
        reply: &Document,
        key: &str,
        batch_size: Option<i32>,
    ) -> Result<Self> {
        let (id, batch) = cursor_batch(reply, key)?;
        Ok(Cursor {
            client,
            db: db.to_owned(),
            coll: coll.to_owned(),
            id,
            batch,
            batch_size,
            failed: false,
            empty_since: None,
        })
    }

    /// True while the server still holds more results.
    pub fn is_open(&self) -> bool {
        self.id != 0
    }

    fn get_more(&mut self) -> Result<()> {
        let mut cmd = doc! {"getMore": self.id, "collection": self.coll.as_str()};
        if let Some(b) = self.batch_size {
            cmd.insert("batchSize", b);
        }
        let reply = self.client.command(&self.db, cmd)?;
        let (id, batch) = cursor_batch(&reply, "nextBatch")?;
        self.id = id;
        if !batch.is_empty() || id == 0 {
            self.empty_since = None;
        } else {
            let since = *self.empty_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.client.timeout {
                // The connection is sound: the server's cursor goes now, not at its idle limit.
                let kill = doc! {"killCursors": self.coll.as_str(), "cursors": [id]};
                let _ = self.client.command(&self.db, kill);
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the cursor gave no document for longer than socketTimeoutMS",
                )));
            }
        }
        self.batch = batch;
        Ok(())
    }
}

impl<S: Read + Write> Iterator for Cursor<'_, S> {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(doc) = self.batch.pop_front() {
                return Some(Ok(doc));
            }
            if self.id == 0 || self.failed {
                return None;
            }
            if let Err(e) = self.get_more() {
                self.failed = true;
                self.id = 0;
                return Some(Err(e));
            }
        }
    }
}

impl<S: Read + Write> Drop for Cursor<'_, S> {
    fn drop(&mut self) {
        if self.id != 0 {
            let cmd = doc! {"killCursors": self.coll.as_str(), "cursors": [self.id]};
            // Best effort: the server also times idle cursors out.
            let _ = self.client.command(&self.db, cmd);
        }
    }
}

fn cursor_batch(reply: &Document, key: &str) -> Result<(i64, VecDeque<Document>)> {
    let cursor = reply
        .get_document("cursor")
        .map_err(|_| Error::protocol("reply has no cursor"))?;
    let id = match cursor.get("id") {
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Int32(v)) => i64::from(*v),
        _ => return Err(Error::protocol("cursor has no id")),
    };
    let batch = cursor
        .get_array(key)
        .map_err(|_| Error::protocol(format!("cursor has no {key}")))?
        .iter()
        .map(|b| match b {
            Bson::Document(d) => Ok(d.clone()),
            _ => Err(Error::protocol("cursor batch holds a non-document")),
        })
        .collect::<Result<VecDeque<_>>>()?;
    Ok((id, batch))
}

fn check_ok(body: Document) -> Result<Document> {
    let ok = match body.get("ok") {
        Some(Bson::Double(v)) => *v == 1.0,
        Some(Bson::Int32(v)) => *v == 1,
        Some(Bson::Int64(v)) => *v == 1,
        Some(Bson::Boolean(v)) => *v,
        _ => false,
    };
    if ok {
        return Ok(body);
    }
    Err(Error::Command {
        code: body.get_i32("code").unwrap_or(0),
        code_name: body.get_str("codeName").unwrap_or("").to_owned(),
        message: one_line(body.get_str("errmsg").unwrap_or("no errmsg")),
    })
}

fn check_write_errors(reply: &Document) -> Result<()> {
    if let Ok(errors) = reply.get_array("writeErrors") {
        if let Some(Bson::Document(first)) = errors.first() {
            return Err(Error::Write {
                code: first.get_i32("code").unwrap_or(0),
                message: one_line(first.get_str("errmsg").unwrap_or("write error")),
            });
        }
    }
    if let Ok(wce) = reply.get_document("writeConcernError") {
        return Err(Error::Write {
            code: wce.get_i32("code").unwrap_or(0),
            message: one_line(wce.get_str("errmsg").unwrap_or("write concern error")),
        });
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn count(reply: &Document, key: &str) -> u64 {
    match reply.get(key) {
        Some(Bson::Int32(v)) => u64::try_from(*v).unwrap_or(0),
        Some(Bson::Int64(v)) => u64::try_from(*v).unwrap_or(0),
        Some(Bson::Double(v)) if *v >= 0.0 => *v as u64,
        _ => 0,
    }
}

fn binary(bytes: Vec<u8>) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    }
}

fn sasl_payload(reply: &Document) -> Result<String> {
    let bytes = match reply.get("payload") {
        Some(Bson::Binary(b)) => b.bytes.clone(),
        Some(Bson::String(s)) => s.clone().into_bytes(),
        _ => return Err(Error::Auth("SASL answer has no payload".into())),
    };
    String::from_utf8(bytes).map_err(|_| Error::Auth("SASL payload is not UTF-8".into()))
}

/// saslStart with the conversation's client-first message, asking the server to end the
/// exchange as soon as it has proved itself (skipEmptyExchange).
fn sasl_start_command(scram: &ScramSha256) -> Document {
    doc! {
        "saslStart": 1,
        "mechanism": "SCRAM-SHA-256",
        "payload": binary(scram.client_first().into_bytes()),
        "autoAuthorize": 1,
        "options": {"skipEmptyExchange": true},
    }
}

fn auth_error(e: Error) -> Error {
    match e {
        Error::Command { message, .. } => Error::Auth(message),
        other => other,
    }
}

pub(crate) fn bson_size(doc: &Document) -> Result<usize> {
    let mut counter = CountingWriter(0);
    doc.to_writer(&mut counter)?;
    Ok(counter.0)
}

struct CountingWriter(usize);

impl Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode_op_msg;

    /// A stream that answers from prepared replies and records what was sent.
    struct Scripted {
        input: std::io::Cursor<Vec<u8>>,
        sent: Vec<u8>,
        /// Each read takes this long and gives at most `per_read` bytes: a server trickling.
        pause: Duration,
        per_read: usize,
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            std::thread::sleep(self.pause);
            let n = buf.len().min(self.per_read);
            self.input.read(&mut buf[..n])
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.sent.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn replies(items: &[(i32, Document)]) -> Scripted {
        let mut input = Vec::new();
        for (response_to, body) in items {
            let mut bytes = encode_op_msg(99, &OpMsg::new(body.clone()), false).unwrap();
            bytes[8..12].copy_from_slice(&response_to.to_le_bytes());
            input.extend_from_slice(&bytes);
        }
        Scripted {
            input: std::io::Cursor::new(input),
            sent: Vec::new(),
            pause: Duration::ZERO,
            per_read: usize::MAX,
        }
    }

    #[test]
    fn an_answer_trickling_in_is_cut_off_at_the_timeout() {
        let mut stream = replies(&[(1, hello(1000))]);
        stream.pause = Duration::from_millis(5);
        stream.per_read = 1;
        let mut client = Client::new(stream);
        client.set_timeout(Duration::from_millis(100));
        let started = Instant::now();
        let error = client.hello(None).unwrap_err();
        assert!(
            matches!(&error, Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut),
            "{error:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_cursor_answered_with_empty_batches_ends_at_the_timeout() {
        let empty = |first: bool| {
            let key = if first { "firstBatch" } else { "nextBatch" };
            doc! {"cursor": {"id": 5_i64, "ns": "db.c", key: []}, "ok": 1.0}
        };
        let script: Vec<(i32, Document)> = (1..=200).map(|id| (id, empty(id == 1))).collect();
        let mut stream = replies(&script);
        stream.pause = Duration::from_millis(2);
        let mut client = Client::new(stream);
        client.set_timeout(Duration::from_millis(100));
        let started = Instant::now();
        let mut cursor = client
            .find("db", "c", doc! {}, FindOptions::default())
            .unwrap();
        let error = cursor.next().expect("an error, not the end").unwrap_err();
        assert!(
            matches!(&error, Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut),
            "{error:?}"
        );
        assert!(cursor.next().is_none());
        assert!(started.elapsed() < Duration::from_secs(2));
        // The server's cursor was killed on the way out.
        drop(cursor);
        let sent = String::from_utf8_lossy(&client.into_inner().sent).into_owned();
        assert!(sent.contains("killCursors"));
    }

    #[test]
    fn a_slow_reader_of_a_cursor_is_not_cut_off() {
        let script = [
            (
                1,
                doc! {"cursor": {"id": 5_i64, "ns": "db.c", "firstBatch": [{"n": 1}]}, "ok": 1.0},
            ),
            (
                2,
                doc! {"cursor": {"id": 5_i64, "ns": "db.c", "nextBatch": []}, "ok": 1.0},
            ),
            (
                3,
                doc! {"cursor": {"id": 0_i64, "ns": "db.c", "nextBatch": [{"n": 2}]}, "ok": 1.0},
            ),
        ];
        let mut client = Client::new(replies(&script));
        client.set_timeout(Duration::from_millis(100));
        let mut cursor = client
            .find("db", "c", doc! {}, FindOptions::default())
            .unwrap();
        assert_eq!(cursor.next().unwrap().unwrap(), doc! {"n": 1});
        // The caller takes its time with what it got: that is no stalled server.
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(cursor.next().unwrap().unwrap(), doc! {"n": 2});
        assert!(cursor.next().is_none());
    }

    fn hello(max_bson: i32) -> Document {
        doc! {"isWritablePrimary": true, "maxBsonObjectSize": max_bson,
        "maxMessageSizeBytes": 48_000_000, "maxWriteBatchSize": 2, "maxWireVersion": 21, "ok": 1.0}
    }

    #[test]
    fn announced_limits_never_exceed_mongodbs() {
        let boasting = doc! {"isWritablePrimary": true, "maxBsonObjectSize": 1.0e300,
        "maxMessageSizeBytes": i64::MAX, "maxWriteBatchSize": i64::MAX, "ok": 1.0};
        let ping = doc! {"ok": 1.0};
        let mut client = Client::handshake(replies(&[(1, boasting), (2, ping)]), None).unwrap();
        let info = client.server_info();
        assert_eq!(
            (
                info.max_bson_object_size,
                info.max_message_size_bytes,
                info.max_write_batch_size
            ),
            (
                DEFAULT_MAX_BSON,
                DEFAULT_MAX_MESSAGE,
                DEFAULT_MAX_WRITE_BATCH
            )
        );
        client.command("admin", doc! {"ping": 1}).unwrap();
    }

    #[test]
    fn handshake_reads_limits_and_sends_client_metadata() {
        let client = Client::handshake(replies(&[(1, hello(1000))]), Some("gw")).unwrap();
        assert_eq!(client.server_info().max_bson_object_size, 1000);
        assert_eq!(client.server_info().max_write_batch_size, 2);
        assert!(client.server_info().writable_primary);
        let sent = client.into_inner().sent;
        let (_, reply) = wire::decode_message(&sent).unwrap();
        let body = reply.into_body().unwrap();
        assert_eq!(body.get_str("$db").unwrap(), "admin");
        let app = body
            .get_document("client")
            .unwrap()
            .get_document("application");
        assert_eq!(app.unwrap().get_str("name").unwrap(), "gw");
    }

    #[test]
    fn oversized_documents_are_refused_before_sending() {
        let mut client = Client::handshake(replies(&[(1, hello(1000))]), None).unwrap();
        let big = doc! {"data": "x".repeat(20_000)};
        let err = client.insert_one("d", "c", big).unwrap_err();
        assert!(matches!(err, Error::MessageTooLarge { .. }), "{err}");
        assert!(client.is_usable());
    }

    #[test]
    fn insert_many_splits_by_max_write_batch_size() {
        let ok = doc! {"n": 2, "ok": 1.0};
        let stream = replies(&[
            (1, hello(1 << 24)),
            (2, ok.clone()),
            (3, ok.clone()),
            (4, ok),
        ]);
        let mut client = Client::handshake(stream, None).unwrap();
        let docs = (0..5).map(|i| doc! {"i": i}).collect();
        assert_eq!(client.insert_many("d", "c", docs).unwrap().len(), 5);
    }

    #[test]
    fn write_errors_and_ok_zero_are_typed() {
        let dup = doc! {"n": 0, "writeErrors": [{"index": 0, "code": 11000, "errmsg": "dup\nkey"}], "ok": 1.0};
        let bad = doc! {"ok": 0.0, "code": 13, "codeName": "Unauthorized", "errmsg": "no"};
        let mut client =
            Client::handshake(replies(&[(1, hello(1 << 24)), (2, dup), (3, bad)]), None).unwrap();
        let e = client.insert_one("d", "c", doc! {}).unwrap_err();
        assert_eq!(e.code(), Some(11000));
        assert_eq!(e.to_string(), "write failed with code 11000: dup key");
        let e = client.command("d", doc! {"find": "c"}).unwrap_err();
        assert!(matches!(e, Error::Command { code: 13, .. }), "{e}");
    }

    #[test]
    fn a_reply_to_another_request_breaks_the_connection() {
        let stream = replies(&[(1, hello(1 << 24)), (77, doc! {"ok": 1.0})]);
        let mut client = Client::handshake(stream, None).unwrap();
        assert!(matches!(
            client.command("admin", doc! {"ping": 1}),
            Err(Error::Protocol(_))
        ));
        assert!(!client.is_usable());
        assert!(client.command("admin", doc! {"ping": 1}).is_err());
    }
}

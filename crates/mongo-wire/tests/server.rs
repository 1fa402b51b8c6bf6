//! Against a real server (FerretDB locally: `scripts/dev-services start`, then
//! `eval "$(scripts/dev-services env)"`). Each test works in its own database and drops it.

use std::io::{Read, Write};
use std::net::TcpStream;

use mongo_wire::bson::oid::ObjectId;
use mongo_wire::bson::{doc, Bson, Document};
use mongo_wire::{Bucket, Client, Error, FindOptions};

fn url() -> String {
    std::env::var("MONGODB_URL").expect(
        "MONGODB_URL is not set: start FerretDB with scripts/dev-services start and \
         eval \"$(scripts/dev-services env)\" (these tests need a real server)",
    )
}

/// A connection plus a fresh database, dropped at the end of the test.
struct TestDb {
    client: Client<TcpStream>,
    name: String,
}

impl TestDb {
    fn new(tag: &str) -> Self {
        let client = mongo_wire::connect(&url()).expect("connect to MONGODB_URL");
        let name = format!("mw_{tag}_{}", ObjectId::new().to_hex());
        TestDb { client, name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = self.client.drop_database(&self.name);
    }
}

fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn command_round_trip_and_typed_errors() {
    let mut t = TestDb::new("cmd");
    let pong = t.client.command("admin", doc! {"ping": 1}).unwrap();
    assert!(matches!(pong.get("ok"), Some(Bson::Double(v)) if *v == 1.0));
    assert!(t.client.server_info().max_bson_object_size >= 16 * 1024 * 1024);
    assert!(t.client.server_info().max_message_size_bytes > 0);
    let err = t
        .client
        .command(&t.name, doc! {"noSuchCommandAtAll": 1})
        .unwrap_err();
    match &err {
        Error::Command { code, message, .. } => {
            assert_eq!(*code, 59, "CommandNotFound: {message}");
            assert!(!err.to_string().contains('\n'));
        }
        other => panic!("expected a command error, got {other}"),
    }
    // The connection is still usable after a command error.
    t.client.command("admin", doc! {"ping": 1}).unwrap();
}

#[test]
fn crud() {
    let mut t = TestDb::new("crud");
    let db = t.name.clone();
    let c = &mut t.client;
    let id = c
        .insert_one(&db, "people", doc! {"name": "ada", "age": 36})
        .unwrap();
    assert!(matches!(id, Bson::ObjectId(_)));
    c.insert_many(
        &db,
        "people",
        vec![
            doc! {"_id": 7, "name": "bob", "age": 20},
            doc! {"name": "cy", "age": 50},
        ],
    )
    .unwrap();
    let dup = c.insert_one(&db, "people", doc! {"_id": 7}).unwrap_err();
    assert_eq!(dup.code(), Some(11000), "{dup}");

    let got = c.find_one(&db, "people", doc! {"_id": 7}).unwrap().unwrap();
    assert_eq!(got.get_str("name").unwrap(), "bob");

    let names: Vec<String> = c
        .find(
            &db,
            "people",
            doc! {"age": {"$gte": 30}},
            FindOptions {
                sort: Some(doc! {"age": -1}),
                projection: Some(doc! {"name": 1, "_id": 0}),
                ..FindOptions::default()
            },
        )
        .unwrap()
        .map(|d| d.unwrap().get_str("name").unwrap().to_owned())
        .collect();
    assert_eq!(names, ["cy", "ada"]);

    let r = c
        .update_one(
            &db,
            "people",
            doc! {"_id": 7},
            doc! {"$set": {"age": 21}},
            false,
        )
        .unwrap();
    assert_eq!((r.matched, r.modified, r.upserted_id), (1, 1, None));
    let r = c
        .update_one(
            &db,
            "people",
            doc! {"name": "dee"},
            doc! {"$set": {"age": 9}},
            true,
        )
        .unwrap();
    assert_eq!(r.matched, 0);
    assert!(r.upserted_id.is_some());

    let after = c
        .find_one_and_update(
            &db,
            "people",
            doc! {"_id": 7},
            doc! {"$inc": {"age": 1}},
            None,
            false,
            true,
        )
        .unwrap()
        .unwrap();
    assert_eq!(after.get_i32("age").unwrap(), 22);

    assert_eq!(
        c.delete_many(&db, "people", doc! {"age": {"$lt": 40}})
            .unwrap(),
        3
    );
    let left: Vec<Document> = c
        .find(&db, "people", doc! {}, FindOptions::default())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].get_str("name").unwrap(), "cy");
}

#[test]
fn cursor_spans_several_batches_and_respects_limit() {
    let mut t = TestDb::new("cursor");
    let db = t.name.clone();
    let docs: Vec<Document> = (0..250).map(|i| doc! {"i": i}).collect();
    t.client.insert_many(&db, "n", docs).unwrap();
    let opts = FindOptions {
        sort: Some(doc! {"i": 1}),
        batch_size: Some(40),
        ..FindOptions::default()
    };
    let cursor = t.client.find(&db, "n", doc! {}, opts.clone()).unwrap();
    assert!(
        cursor.is_open(),
        "250 documents in batches of 40 need getMore"
    );
    let all: Vec<i32> = cursor.map(|d| d.unwrap().get_i32("i").unwrap()).collect();
    assert_eq!(all, (0..250).collect::<Vec<_>>());

    let limited = FindOptions {
        limit: Some(95),
        ..opts.clone()
    };
    let n = t.client.find(&db, "n", doc! {}, limited).unwrap().count();
    assert_eq!(n, 95);

    // Dropping a cursor early kills it and leaves the connection usable.
    let mut partial = t.client.find(&db, "n", doc! {}, opts).unwrap();
    partial.next().unwrap().unwrap();
    drop(partial);
    t.client.command("admin", doc! {"ping": 1}).unwrap();
}

#[test]
fn gridfs_round_trip_of_3mb() {
    let mut t = TestDb::new("gridfs");
    let bucket = Bucket::new(&t.name);
    let data = pseudo_random_bytes(3 * 1024 * 1024 + 12_345, 42);
    let id = bucket
        .upload(
            &mut t.client,
            data.as_slice(),
            "song.mp4",
            Some(doc! {"owner": "ada"}),
            10 << 20,
        )
        .unwrap();
    let info = bucket.file_info(&mut t.client, id).unwrap();
    assert_eq!(info.length, data.len() as u64);
    assert_eq!(info.chunk_size, 255 * 1024);
    assert_eq!(info.filename.as_deref(), Some("song.mp4"));
    assert_eq!(info.metadata, Some(doc! {"owner": "ada"}));
    assert!(info.upload_date.is_some());

    let mut back = Vec::new();
    // A small buffer on purpose: many reads per chunk.
    let mut dl = bucket.open_download(&mut t.client, id).unwrap();
    let mut buf = [0u8; 10_000];
    loop {
        let n = dl.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        back.extend_from_slice(&buf[..n]);
    }
    drop(dl);
    assert!(back == data, "downloaded bytes differ");

    let chunks = t
        .client
        .find(
            &t.name,
            "fs.chunks",
            doc! {"files_id": id},
            FindOptions::default(),
        )
        .unwrap()
        .count();
    assert_eq!(chunks, data.len().div_ceil(255 * 1024));

    bucket.delete(&mut t.client, id).unwrap();
    assert!(matches!(
        bucket.file_info(&mut t.client, id),
        Err(Error::NotFound(x)) if x == id
    ));
    assert!(t
        .client
        .find_one(&t.name, "fs.chunks", doc! {"files_id": id})
        .unwrap()
        .is_none());
}

#[test]
fn gridfs_empty_file_and_exact_chunk_multiple() {
    let mut t = TestDb::new("gridfs_edges");
    let bucket = Bucket::new(&t.name).with_chunk_size(1000);
    for len in [0usize, 1000, 3000, 3001] {
        let data = pseudo_random_bytes(len, len as u64);
        let id = bucket
            .upload(&mut t.client, data.as_slice(), "f", None, 1 << 20)
            .unwrap();
        let mut back = Vec::new();
        bucket
            .open_download(&mut t.client, id)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data, "length {len}");
    }
}

#[test]
fn gridfs_download_from_an_offset() {
    let mut t = TestDb::new("gridfs_offset");
    let bucket = Bucket::new(&t.name).with_chunk_size(1000);
    for len in [0usize, 999, 3000, 3001] {
        let data = pseudo_random_bytes(len, 7 + len as u64);
        let id = bucket
            .upload(&mut t.client, data.as_slice(), "f", None, 1 << 20)
            .unwrap();
        for offset in [0usize, 1, 999, 1000, 1001, 2999, 3000, 3001, 5000] {
            let mut back = Vec::new();
            bucket
                .open_download_at(&mut t.client, id, offset as u64)
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(
                back,
                data[offset.min(len)..],
                "length {len}, offset {offset}"
            );
        }
    }
}

#[test]
fn gridfs_over_the_limit_leaves_nothing() {
    let mut t = TestDb::new("gridfs_limit");
    let bucket = Bucket::new(&t.name);
    let data = pseudo_random_bytes(2 * 1024 * 1024, 7);
    let err = bucket
        .upload(&mut t.client, data.as_slice(), "big.mp4", None, 1024 * 1024)
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { max: 1048576 }), "{err}");
    let db = t.name.clone();
    let chunks = t
        .client
        .find(&db, "fs.chunks", doc! {}, FindOptions::default())
        .unwrap()
        .count();
    let files = t
        .client
        .find(&db, "fs.files", doc! {}, FindOptions::default())
        .unwrap()
        .count();
    assert_eq!((chunks, files), (0, 0));

    // Exactly at the limit is fine.
    let at = pseudo_random_bytes(1024 * 1024, 8);
    bucket
        .upload(&mut t.client, at.as_slice(), "ok.mp4", None, 1024 * 1024)
        .unwrap();
}

#[test]
fn gridfs_failing_source_leaves_nothing() {
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("client went away"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(1);
            self.0 -= n;
            Ok(n)
        }
    }
    let mut t = TestDb::new("gridfs_src");
    let bucket = Bucket::new(&t.name);
    let err = bucket
        .upload(&mut t.client, Failing(2 * 1024 * 1024), "x", None, u64::MAX)
        .unwrap_err();
    assert!(matches!(err, Error::Source(_)), "{err}");
    let db = t.name.clone();
    assert_eq!(
        t.client
            .find(&db, "fs.chunks", doc! {}, FindOptions::default())
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn gridfs_missing_file_and_missing_chunk() {
    let mut t = TestDb::new("gridfs_missing");
    let bucket = Bucket::new(&t.name);
    let nobody = ObjectId::new();
    assert!(matches!(
        bucket.file_info(&mut t.client, nobody),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        bucket.open_download(&mut t.client, nobody),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        bucket.delete(&mut t.client, nobody),
        Err(Error::NotFound(_))
    ));

    let data = pseudo_random_bytes(800 * 1024, 3);
    let id = bucket
        .upload(&mut t.client, data.as_slice(), "holey", None, u64::MAX)
        .unwrap();
    let db = t.name.clone();
    t.client
        .delete_many(&db, "fs.chunks", doc! {"files_id": id, "n": 1})
        .unwrap();
    let mut sink = Vec::new();
    let err = bucket
        .open_download(&mut t.client, id)
        .unwrap()
        .read_to_end(&mut sink)
        .unwrap_err();
    let inner = err.into_inner().unwrap().downcast::<Error>().unwrap();
    assert!(matches!(*inner, Error::Corrupt { .. }), "{inner}");
    assert!(inner.to_string().contains("missing chunk 1"), "{inner}");
}

#[test]
fn gridfs_interoperates_with_the_official_driver() {
    let mut t = TestDb::new("gridfs_interop");
    let official = mongodb::sync::Client::with_uri_str(url()).unwrap();
    let theirs = official.database(&t.name).gridfs_bucket(None);
    let ours = Bucket::new(&t.name);

    // Ours written, theirs read.
    let data = pseudo_random_bytes(600 * 1024 + 17, 11);
    let id = ours
        .upload(
            &mut t.client,
            data.as_slice(),
            "ours.bin",
            Some(doc! {"k": "v"}),
            u64::MAX,
        )
        .unwrap();
    let mut back = Vec::new();
    theirs
        .open_download_stream(Bson::ObjectId(id))
        .run()
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == data, "official driver read different bytes");
    let file = theirs.find_one(doc! {"_id": id}).run().unwrap().unwrap();
    assert_eq!(file.length, data.len() as u64);
    assert_eq!(file.filename.as_deref(), Some("ours.bin"));

    // Theirs written, ours read.
    let data2 = pseudo_random_bytes(700 * 1024 + 5, 12);
    let mut up = theirs.open_upload_stream("theirs.bin").run().unwrap();
    up.write_all(&data2).unwrap();
    up.close().unwrap();
    let Bson::ObjectId(id2) = up.id().clone() else {
        panic!("official driver ids are ObjectIds")
    };
    let mut back2 = Vec::new();
    ours.open_download(&mut t.client, id2)
        .unwrap()
        .read_to_end(&mut back2)
        .unwrap();
    assert!(
        back2 == data2,
        "we read different bytes than the official driver wrote"
    );
    assert_eq!(
        ours.file_info(&mut t.client, id2)
            .unwrap()
            .filename
            .as_deref(),
        Some("theirs.bin")
    );
}

#[test]
fn indexes_are_the_standard_ones() {
    let mut t = TestDb::new("gridfs_idx");
    let bucket = Bucket::new(&t.name);
    bucket.ensure_indexes(&mut t.client).unwrap();
    bucket.ensure_indexes(&mut t.client).unwrap();
    let db = t.name.clone();
    let reply = t
        .client
        .command(&db, doc! {"listIndexes": "fs.chunks"})
        .unwrap();
    let batch = reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap();
    let unique = batch
        .iter()
        .filter_map(|b| b.as_document())
        .any(|ix| ix.get_str("name") == Ok("files_id_1_n_1") && ix.get_bool("unique") == Ok(true));
    assert!(unique, "{batch:?}");
}

#[test]
fn unacknowledged_write_with_more_to_come() {
    let mut t = TestDb::new("w0");
    let db = t.name.clone();
    t.client
        .command_no_reply(
            &db,
            doc! {"insert": "c", "documents": [{"a": 1}], "writeConcern": {"w": 0}},
        )
        .unwrap();
    // The next command gets its own reply: the server sent none for the first.
    let n = t
        .client
        .find(&db, "c", doc! {}, FindOptions::default())
        .unwrap()
        .count();
    assert_eq!(n, 1);
}

/// A thread-unsafe cache that counts what it was asked, for the tests below.
#[derive(Default)]
struct CountingCache {
    entries: std::cell::RefCell<std::collections::HashMap<String, Vec<u8>>>,
    hits: std::cell::Cell<u32>,
    puts: std::cell::Cell<u32>,
}

impl mongo_wire::KeyCache for CountingCache {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let found = self.entries.borrow().get(key).cloned();
        if found.is_some() {
            self.hits.set(self.hits.get() + 1);
        }
        found
    }
    fn put(&self, key: &str, value: &[u8]) {
        self.puts.set(self.puts.get() + 1);
        self.entries
            .borrow_mut()
            .insert(key.to_owned(), value.to_vec());
    }
    fn remove(&self, key: &str) {
        self.entries.borrow_mut().remove(key);
    }
}

/// The server that requires logins (`MONGODB_AUTH_URL`: the dev services' second FerretDB, which
/// asks for SCRAM-SHA-256 as Kubernetes' MongoDB does).
fn authenticated_url() -> String {
    let url = std::env::var("MONGODB_AUTH_URL").expect(
        "MONGODB_AUTH_URL is not set: start the services with scripts/dev-services start and \
         eval \"$(scripts/dev-services env)\"",
    );
    assert!(url.contains('@'), "MONGODB_AUTH_URL has no credentials");
    url
}

#[test]
fn scram_keys_are_derived_once_then_taken_from_the_cache() {
    let url = authenticated_url();
    let cache = CountingCache::default();
    for round in 0..3 {
        let mut client = mongo_wire::connect_cached(&url, &cache).expect("logging in");
        // The login is real: a command that needs it works.
        client
            .command("admin", doc! {"listDatabases": 1, "nameOnly": true})
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    assert_eq!(cache.puts.get(), 1, "derived on the first login only");
    assert_eq!(cache.hits.get(), 2);
    assert_eq!(cache.entries.borrow().len(), 1);
}

#[test]
fn a_damaged_cache_entry_costs_one_round_not_the_login() {
    let url = authenticated_url();
    let cache = CountingCache::default();
    mongo_wire::connect_cached(&url, &cache).expect("logging in");
    let (name, good) = cache
        .entries
        .borrow()
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    cache
        .entries
        .borrow_mut()
        .insert(name.clone(), vec![7u8; 64]);
    let mut client =
        mongo_wire::connect_cached(&url, &cache).expect("logging in despite the entry");
    client
        .command("admin", doc! {"listDatabases": 1, "nameOnly": true})
        .expect("a command after the second login");
    assert_eq!(
        cache.entries.borrow()[&name],
        good,
        "the entry was derived again"
    );
}

#[test]
fn a_wrong_password_fails_with_or_without_a_cache() {
    let url = authenticated_url();
    let (head, tail) = url.split_once('@').unwrap();
    let user = head.rsplit_once(':').unwrap().0;
    let wrong = format!("{user}:not-the-password@{tail}");
    let cache = CountingCache::default();
    for _ in 0..2 {
        let err = mongo_wire::connect_cached(&wrong, &cache)
            .err()
            .expect("refused");
        assert!(matches!(err, Error::Auth(_)), "{err}");
    }
    assert!(matches!(
        mongo_wire::connect(&wrong).err().expect("refused"),
        Error::Auth(_)
    ));
}

//! The gateway's two backing services over outbound TCP: MongoDB (GridFS buckets and the
//! `jobs` collection, through `mongo-wire`) and RabbitMQ (the `video` queue, through
//! `amqp-wire`). Every error is one line, for the log.

use std::io::Read;
use std::net::TcpStream;
use std::ops::Range;
use std::time::Duration;

use amqp_wire::{BasicProperties, ConnectOptions, Connection, FieldTable, QueueOptions};
use mongo_wire::bson::oid::ObjectId;
use mongo_wire::bson::{self, doc, Bson, Document};
use mongo_wire::{Bucket, Client, Download, FileInfo, FindOptions};
use mp3_model::{
    new_object_id, topology, Job, JobMessage, JobStatus, DELETED_JOBS_COLLECTION,
    GRIDFS_CHUNK_SIZE, JOBS_COLLECTION, MP3S_DB, NOTIFY_CLAIMS_COLLECTION, UPLOADS_COLLECTION,
    UPLOAD_LEASES_COLLECTION, VIDEOS_DB,
};

use crate::jobs::Cursor;
use crate::tus::{self, UploadState};
use crate::upload::{Backend, StoreError};
use crate::webhook;
use mp3_model::webhook as webhook_model;

/// A MongoDB connection.
pub struct Mongo {
    client: Client<TcpStream>,
}

fn videos() -> Bucket {
    Bucket::new(VIDEOS_DB).with_chunk_size(GRIDFS_CHUNK_SIZE)
}

fn mp3s() -> Bucket {
    Bucket::new(MP3S_DB).with_chunk_size(GRIDFS_CHUNK_SIZE)
}

impl Mongo {
    /// Connects and logs in, with the SCRAM keys derived from the password kept in `cache`
    /// across requests (each request is a new instance: without it every request would pay
    /// the derivation, tens of milliseconds of PBKDF2).
    pub fn connect(url: &str, cache: &dyn mongo_wire::KeyCache) -> Result<Self, String> {
        mongo_wire::connect_cached(url, cache)
            .map(|client| Mongo { client })
            .map_err(|e| format!("MongoDB: {e}"))
    }

    /// The job with id `id`, if any. A document that does not read as a [`Job`] is an error.
    pub fn job(&mut self, id: &str) -> Result<Option<Job>, String> {
        self.find_job(doc! {"_id": id})
    }

    /// The job whose MP3 is `mp3_fid`, if any.
    pub fn job_by_mp3(&mut self, mp3_fid: &str) -> Result<Option<Job>, String> {
        self.find_job(doc! {"mp3_fid": mp3_fid})
    }

    /// Up to `limit` of `owner`'s jobs, newest first (by creation time, then id), after
    /// `after` when given.
    pub fn jobs_of(
        &mut self,
        owner: &str,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<Job>, String> {
        let mut filter = doc! {"owner": owner};
        if let Some(after) = after {
            filter.insert(
                "$or",
                vec![
                    doc! {"created_at": {"$lt": after.created_at}},
                    doc! {"created_at": after.created_at, "_id": {"$lt": &after.id}},
                ],
            );
        }
        let options = FindOptions {
            sort: Some(doc! {"created_at": -1, "_id": -1}),
            limit: Some(i64::from(limit)),
            ..FindOptions::default()
        };
        let cursor = self
            .client
            .find(VIDEOS_DB, JOBS_COLLECTION, filter, options)
            .map_err(|e| format!("MongoDB: listing jobs: {e}"))?;
        let mut jobs = Vec::new();
        for doc in cursor {
            let doc = doc.map_err(|e| format!("MongoDB: listing jobs: {e}"))?;
            jobs.push(
                bson::from_document::<Job>(doc)
                    .map_err(|e| format!("job document unreadable: {e}"))?,
            );
        }
        Ok(jobs)
    }

    fn find_job(&mut self, filter: Document) -> Result<Option<Job>, String> {
        let found = self
            .client
            .find_one(VIDEOS_DB, JOBS_COLLECTION, filter)
            .map_err(|e| format!("MongoDB: finding a job: {e}"))?;
        found
            .map(|doc| {
                bson::from_document::<Job>(doc).map_err(|e| format!("job document unreadable: {e}"))
            })
            .transpose()
    }

    /// Deletes `job` with its files. First a tombstone, so a worker handed the job's message
    /// meanwhile drops it; then the video, the MP3 and the notifier's records; the job last.
    /// Every step is idempotent: after a failure, deleting again finishes the work. An MP3 a
    /// conversion stores after this read is left to the sweeper, as a file no job names.
    pub fn remove_job(&mut self, job: &Job, now_ms: i64) -> Result<(), String> {
        let fail = |what: &str, e: mongo_wire::Error| {
            format!("MongoDB: deleting job {}: {what}: {e}", job.id)
        };
        self.client
            .update_one(
                VIDEOS_DB,
                DELETED_JOBS_COLLECTION,
                doc! {"_id": &job.id},
                doc! {"$set": {"owner": &job.owner, "deleted_at": now_ms}},
                true,
            )
            .map_err(|e| fail("recording the deletion", e))?;
        let files = [
            (videos(), Some(&job.video_fid)),
            (mp3s(), job.mp3_fid.as_ref()),
        ];
        for (bucket, fid) in files {
            let Some(id) = fid.and_then(|hex| ObjectId::parse_str(hex).ok()) else {
                continue;
            };
            match bucket.delete(&mut self.client, id) {
                Ok(()) | Err(mongo_wire::Error::NotFound(_)) => {}
                Err(e) => return Err(fail("deleting its files", e)),
            }
        }
        self.client
            .delete_many(
                VIDEOS_DB,
                NOTIFY_CLAIMS_COLLECTION,
                doc! {"job_id": &job.id},
            )
            .map_err(|e| fail("deleting its email records", e))?;
        self.client
            .delete_many(
                VIDEOS_DB,
                webhook_model::CLAIMS_COLLECTION,
                doc! {"job_id": &job.id},
            )
            .map_err(|e| fail("deleting its webhook records", e))?;
        // A job made by a resumable upload: its record goes too, so no retry makes it again.
        self.client
            .delete_many(VIDEOS_DB, UPLOADS_COLLECTION, doc! {"_id": &job.id})
            .map_err(|e| fail("deleting its upload", e))?;
        self.client
            .delete_many(
                VIDEOS_DB,
                UPLOAD_LEASES_COLLECTION,
                doc! {"upload": &job.id},
            )
            .map_err(|e| fail("deleting its upload's leases", e))?;
        self.client
            .delete_many(
                VIDEOS_DB,
                JOBS_COLLECTION,
                doc! {"_id": &job.id, "owner": &job.owner},
            )
            .map_err(|e| fail("deleting the job", e))?;
        Ok(())
    }

    /// See [`crate::upload::Backend::withdraw_job`].
    pub fn withdraw_job(&mut self, job: &Job, now_ms: i64) -> Result<bool, String> {
        let fail = |what: &str, e: mongo_wire::Error| {
            format!("MongoDB: withdrawing job {}: {what}: {e}", job.id)
        };
        let tombstone = doc! {"_id": &job.id};
        self.client
            .update_one(
                VIDEOS_DB,
                DELETED_JOBS_COLLECTION,
                tombstone.clone(),
                doc! {"$set": {"owner": &job.owner, "deleted_at": now_ms}},
                true,
            )
            .map_err(|e| fail("recording the withdrawal", e))?;
        // Only as the upload left it: a claim makes it `converting` and counts an attempt.
        let unclaimed = doc! {
            "_id": &job.id,
            "owner": &job.owner,
            "status": JobStatus::Queued.as_str(),
            "attempts": 0,
        };
        let deleted = self
            .client
            .delete_many(VIDEOS_DB, JOBS_COLLECTION, unclaimed)
            .map_err(|e| fail("deleting the job", e))?;
        if deleted == 0 {
            // The job lives, whatever becomes of its tombstone: a converter that meets one
            // still finds the job, and goes on (see the converter's handler).
            let _ = self
                .client
                .delete_many(VIDEOS_DB, DELETED_JOBS_COLLECTION, tombstone);
            return Ok(false);
        }
        match ObjectId::parse_str(&job.video_fid).map(|id| videos().delete(&mut self.client, id)) {
            Ok(Ok(())) | Ok(Err(mongo_wire::Error::NotFound(_))) | Err(_) => Ok(true),
            Ok(Err(e)) => Err(fail("deleting its video", e)),
        }
    }

    /// The files document of MP3 `id` in `mp3s`.
    pub fn mp3_info(&mut self, id: ObjectId) -> Result<FileInfo, mongo_wire::Error> {
        mp3s().file_info(&mut self.client, id)
    }

    /// A reader of MP3 `id` from byte `offset` on.
    pub fn open_mp3(
        &mut self,
        id: ObjectId,
        offset: u64,
    ) -> Result<Download<'_, TcpStream>, mongo_wire::Error> {
        mp3s().open_download_at(&mut self.client, id, offset)
    }

    /// Direct access, for the tests' fixtures and for operations not wrapped here.
    pub fn client(&mut self) -> &mut Client<TcpStream> {
        &mut self.client
    }
}

/// A RabbitMQ connection on which the queues are declared.
pub struct Queue {
    conn: Connection<TcpStream>,
}

/// How long to wait for the broker (connect, declare, publisher confirm).
const AMQP_TIMEOUT: Duration = Duration::from_secs(10);

impl Queue {
    /// Connects and declares `video` and the queues it dead-letters to, with their arguments,
    /// so a publish never lands nowhere, whoever starts first.
    pub fn connect(url: &str) -> Result<Self, String> {
        let options = ConnectOptions {
            connect_timeout: AMQP_TIMEOUT,
            timeout: AMQP_TIMEOUT,
            connection_name: Some("gateway".into()),
            ..ConnectOptions::default()
        };
        let mut conn = Connection::connect(url, options).map_err(|e| format!("RabbitMQ: {e}"))?;
        {
            let mut channel = conn
                .open_channel()
                .map_err(|e| format!("RabbitMQ: opening a channel: {e}"))?;
            for spec in topology::video_publisher() {
                let mut arguments = FieldTable::new();
                for (name, value) in spec.arguments() {
                    arguments.insert(name, value);
                }
                channel
                    .queue_declare(spec.name, QueueOptions::durable(), arguments)
                    .map_err(|e| format!("RabbitMQ: declaring {}: {e}", spec.name))?;
            }
            channel
                .close()
                .map_err(|e| format!("RabbitMQ: closing a channel: {e}"))?;
        }
        Ok(Queue { conn })
    }

    /// Publishes `message` to `video` on the default exchange: persistent, JSON, mandatory,
    /// and confirmed by the broker before this returns.
    pub fn publish(&mut self, message: &JobMessage) -> Result<(), String> {
        let body = serde_json::to_vec(message).map_err(|e| format!("encoding the message: {e}"))?;
        let properties =
            BasicProperties::persistent("application/json").with_message_id(&message.job_id);
        let mut channel = self
            .conn
            .open_channel()
            .map_err(|e| format!("RabbitMQ: opening a channel: {e}"))?;
        channel
            .publish_confirmed("", topology::VIDEO_QUEUE, &properties, &body)
            .map_err(|e| format!("RabbitMQ: publishing to {}: {e}", topology::VIDEO_QUEUE))?;
        channel
            .close()
            .map_err(|e| format!("RabbitMQ: closing a channel: {e}"))
    }

    /// Closes the connection politely (a failure only means it was already gone).
    pub fn close(self) {
        let _ = self.conn.close();
    }
}

/// The upload's view of both services.
pub struct Services {
    pub mongo: Mongo,
    pub queue: Queue,
    /// To reconnect when the connection made before the upload died during it.
    pub amqp_url: String,
}

fn object_id(hex: &str) -> Result<ObjectId, String> {
    ObjectId::parse_str(hex).map_err(|e| format!("bad ObjectId {hex:?}: {e}"))
}

impl Backend for Services {
    fn store_video(
        &mut self,
        reader: &mut dyn Read,
        filename: &str,
        max_bytes: u64,
    ) -> Result<String, StoreError> {
        let id = new_object_id().map_err(StoreError::Database)?;
        let id = ObjectId::from_bytes(id);
        match videos().upload_with_id(
            &mut self.mongo.client,
            id,
            reader,
            filename,
            None,
            max_bytes,
        ) {
            Ok(id) => Ok(id.to_hex()),
            Err(mongo_wire::Error::TooLarge { .. }) => Err(StoreError::TooLarge),
            Err(mongo_wire::Error::Source(e)) => Err(StoreError::Body(e)),
            Err(e) => Err(StoreError::Database(format!(
                "MongoDB: storing the video: {e}"
            ))),
        }
    }

    fn delete_video(&mut self, fid: &str) -> Result<(), String> {
        videos()
            .delete(&mut self.mongo.client, object_id(fid)?)
            .map_err(|e| format!("MongoDB: deleting video {fid}: {e}"))
    }

    fn insert_job(&mut self, job: &Job) -> Result<(), String> {
        let doc = bson::to_document(job).map_err(|e| format!("encoding the job: {e}"))?;
        self.mongo
            .client
            .insert_one(VIDEOS_DB, JOBS_COLLECTION, doc)
            .map(|_| ())
            .map_err(|e| format!("MongoDB: inserting job {}: {e}", job.id))
    }

    fn withdraw_job(&mut self, job: &Job, now_ms: i64) -> Result<bool, String> {
        self.mongo.withdraw_job(job, now_ms)
    }

    /// Publishes on the connection opened before the upload; if that one died meanwhile (a
    /// long upload, a broker restart), once more on a new connection.
    fn publish(&mut self, message: &JobMessage) -> Result<(), String> {
        let first = match self.queue.publish(message) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let fresh =
            Queue::connect(&self.amqp_url).map_err(|e| format!("{first}; reconnecting: {e}"))?;
        let stale = std::mem::replace(&mut self.queue, fresh);
        stale.close();
        self.queue
            .publish(message)
            .map_err(|e| format!("{first}; after reconnecting: {e}"))
    }
}

/// Resumable uploads in MongoDB: `videos.uploads`, their leases, GridFS `videos`.
impl tus::Store for Mongo {
    fn create(&mut self, state: &UploadState) -> Result<(), String> {
        // The chunks' unique index is what keeps two writers from storing one chunk twice.
        videos()
            .ensure_indexes(&mut self.client)
            .map_err(|e| format!("MongoDB: GridFS indexes: {e}"))?;
        let doc = bson::to_document(state).map_err(|e| format!("encoding the upload: {e}"))?;
        self.client
            .insert_one(VIDEOS_DB, UPLOADS_COLLECTION, doc)
            .map(|_| ())
            .map_err(|e| format!("MongoDB: creating upload {}: {e}", state.id))
    }

    fn load(&mut self, id: &str) -> Result<Option<UploadState>, String> {
        let found = self
            .client
            .find_one(VIDEOS_DB, UPLOADS_COLLECTION, doc! {"_id": id})
            .map_err(|e| format!("MongoDB: reading upload {id}: {e}"))?;
        found
            .map(|doc| {
                bson::from_document(doc).map_err(|e| format!("upload document unreadable: {e}"))
            })
            .transpose()
    }

    fn lease(&mut self, id: &str, offset: u64, token: &str, now: i64) -> Result<bool, String> {
        let key = format!("{id}/{offset}");
        let fail = |e: mongo_wire::Error| format!("MongoDB: leasing upload {id}: {e}");
        let lease = doc! {"_id": &key, "upload": id, "token": token, "at": now};
        for _ in 0..2 {
            match self
                .client
                .insert_one(VIDEOS_DB, UPLOAD_LEASES_COLLECTION, lease.clone())
            {
                Ok(_) => return Ok(true),
                Err(e) if e.is_duplicate_key() => {}
                Err(e) => return Err(fail(e)),
            }
            let Some(held) = self
                .client
                .find_one(VIDEOS_DB, UPLOAD_LEASES_COLLECTION, doc! {"_id": &key})
                .map_err(fail)?
            else {
                continue;
            };
            let holder = held.get_str("token").unwrap_or_default().to_owned();
            if holder == token {
                let renewed = self
                    .client
                    .update_one(
                        VIDEOS_DB,
                        UPLOAD_LEASES_COLLECTION,
                        doc! {"_id": &key, "token": token},
                        doc! {"$set": {"at": now}},
                        false,
                    )
                    .map_err(fail)?;
                if renewed.matched == 1 {
                    return Ok(true);
                }
                continue;
            }
            let at = held.get_i64("at").unwrap_or(0);
            if now - at < tus::LEASE_MS {
                return Ok(false);
            }
            // Its PATCH died: its lease goes, and the insert is tried once more (of two
            // takers, the unique key lets one in).
            self.client
                .delete_many(
                    VIDEOS_DB,
                    UPLOAD_LEASES_COLLECTION,
                    doc! {"_id": &key, "token": holder},
                )
                .map_err(fail)?;
        }
        Ok(false)
    }

    fn renew(&mut self, id: &str, offset: u64, token: &str, now: i64) -> Result<bool, String> {
        self.client
            .update_one(
                VIDEOS_DB,
                UPLOAD_LEASES_COLLECTION,
                doc! {"_id": format!("{id}/{offset}"), "token": token},
                doc! {"$set": {"at": now}},
                false,
            )
            .map(|renewed| renewed.matched == 1)
            .map_err(|e| format!("MongoDB: renewing the lease of upload {id}: {e}"))
    }

    fn release(&mut self, id: &str, offset: u64, token: &str) -> Result<(), String> {
        self.client
            .delete_many(
                VIDEOS_DB,
                UPLOAD_LEASES_COLLECTION,
                doc! {"_id": format!("{id}/{offset}"), "token": token},
            )
            .map(|_| ())
            .map_err(|e| format!("MongoDB: releasing upload {id}: {e}"))
    }

    fn drop_chunks(&mut self, video_fid: &str, chunks: Range<u64>) -> Result<(), String> {
        videos()
            .delete_chunks(&mut self.client, object_id(video_fid)?, chunks)
            .map(|_| ())
            .map_err(|e| format!("MongoDB: deleting chunks of {video_fid}: {e}"))
    }

    fn insert_chunks(
        &mut self,
        video_fid: &str,
        first: u64,
        chunks: &[Vec<u8>],
    ) -> Result<bool, String> {
        match videos().insert_chunks(
            &mut self.client,
            object_id(video_fid)?,
            first,
            chunks.to_vec(),
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.is_duplicate_key() => Ok(false),
            Err(e) => Err(format!("MongoDB: storing chunks of {video_fid}: {e}")),
        }
    }

    fn save(&mut self, state: &UploadState, from: u64) -> Result<bool, String> {
        let mut fields =
            bson::to_document(state).map_err(|e| format!("encoding the upload: {e}"))?;
        fields.remove("_id");
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        self.client
            .update_one(
                VIDEOS_DB,
                UPLOADS_COLLECTION,
                doc! {"_id": &state.id, "offset": from, "done": false},
                doc! {"$set": fields},
                false,
            )
            .map(|result| result.matched == 1)
            .map_err(|e| format!("MongoDB: saving upload {}: {e}", state.id))
    }

    fn finish_file(&mut self, state: &UploadState, _chunk_size: u32) -> Result<(), String> {
        videos()
            .write_files_document(
                &mut self.client,
                object_id(&state.video_fid)?,
                state.length,
                &state.filename,
            )
            .map_err(|e| format!("MongoDB: finishing {}: {e}", state.video_fid))
    }

    fn insert_job(&mut self, job: &Job) -> Result<(), String> {
        let doc = bson::to_document(job).map_err(|e| format!("encoding the job: {e}"))?;
        match self.client.insert_one(VIDEOS_DB, JOBS_COLLECTION, doc) {
            Ok(_) => Ok(()),
            Err(e) if e.is_duplicate_key() => Ok(()),
            Err(e) => Err(format!("MongoDB: inserting job {}: {e}", job.id)),
        }
    }

    fn open_uploads(&mut self, owner: &str, now: i64) -> Result<tus::OpenUploads, String> {
        let fail = |e: mongo_wire::Error| format!("MongoDB: counting the uploads of {owner}: {e}");
        let options = FindOptions {
            projection: Some(doc! {"length": 1}),
            limit: Some(i64::try_from(tus::MAX_OPEN_UPLOADS + 1).unwrap_or(i64::MAX)),
            ..FindOptions::default()
        };
        let cursor = self
            .client
            .find(
                VIDEOS_DB,
                UPLOADS_COLLECTION,
                doc! {"owner": owner, "done": false, "expires_at": {"$gt": now}},
                options,
            )
            .map_err(fail)?;
        let mut open = tus::OpenUploads::default();
        for doc in cursor {
            let doc = doc.map_err(fail)?;
            let length = match doc.get("length") {
                Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
                Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
                _ => 0,
            };
            open.count += 1;
            open.bytes = open.bytes.saturating_add(length);
        }
        Ok(open)
    }

    fn job_exists(&mut self, id: &str) -> Result<bool, String> {
        self.find_job(doc! {"_id": id}).map(|job| job.is_some())
    }

    fn remove(&mut self, state: &UploadState) -> Result<(), String> {
        let fail = |e: mongo_wire::Error| format!("MongoDB: deleting upload {}: {e}", state.id);
        if !state.done {
            match videos().delete(&mut self.client, object_id(&state.video_fid)?) {
                Ok(()) | Err(mongo_wire::Error::NotFound(_)) => {}
                Err(e) => return Err(fail(e)),
            }
        }
        self.client
            .delete_many(VIDEOS_DB, UPLOADS_COLLECTION, doc! {"_id": &state.id})
            .map_err(fail)?;
        self.client
            .delete_many(
                VIDEOS_DB,
                UPLOAD_LEASES_COLLECTION,
                doc! {"upload": &state.id},
            )
            .map_err(fail)?;
        Ok(())
    }
}

impl webhook::Store for Mongo {
    fn load(&mut self, owner: &str) -> Result<Option<webhook_model::Settings>, String> {
        let found = self
            .client
            .find_one(
                VIDEOS_DB,
                webhook_model::SETTINGS_COLLECTION,
                doc! {"_id": owner},
            )
            .map_err(|e| format!("MongoDB: reading webhook settings: {e}"))?;
        found
            .map(|doc| {
                bson::from_document(doc).map_err(|e| format!("webhook settings unreadable: {e}"))
            })
            .transpose()
    }

    fn insert(&mut self, settings: &webhook_model::Settings) -> Result<bool, String> {
        let doc =
            bson::to_document(settings).map_err(|e| format!("encoding webhook settings: {e}"))?;
        match self
            .client
            .insert_one(VIDEOS_DB, webhook_model::SETTINGS_COLLECTION, doc)
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_duplicate_key() => Ok(false),
            Err(e) => Err(format!("MongoDB: storing webhook settings: {e}")),
        }
    }

    fn set_url(&mut self, owner: &str, url: Option<&str>, now_ms: i64) -> Result<(), String> {
        let update = match url {
            Some(url) => doc! {"$set": {"url": url, "updated_at": now_ms}},
            None => doc! {"$unset": {"url": ""}, "$set": {"updated_at": now_ms}},
        };
        self.client
            .update_one(
                VIDEOS_DB,
                webhook_model::SETTINGS_COLLECTION,
                doc! {"_id": owner},
                update,
                false,
            )
            .map_err(|e| format!("MongoDB: saving the webhook callback: {e}"))?;
        Ok(())
    }

    fn rotate(
        &mut self,
        owner: &str,
        from: &str,
        to: &str,
        previous_until: i64,
        now_ms: i64,
    ) -> Result<bool, String> {
        let updated = self
            .client
            .update_one(
                VIDEOS_DB,
                webhook_model::SETTINGS_COLLECTION,
                doc! {"_id": owner, "secret": from},
                doc! {"$set": {
                    "secret": to,
                    "previous_secret": from,
                    "previous_until": previous_until,
                    "updated_at": now_ms,
                }},
                false,
            )
            .map_err(|e| format!("MongoDB: rotating the webhook secret: {e}"))?;
        Ok(updated.matched > 0)
    }
}

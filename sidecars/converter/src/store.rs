//! MongoDB: the job documents (`videos.jobs`), the videos (GridFS `videos`) and the MP3s
//! (GridFS `mp3s`).
//!
//! A job is converted at most once into at most one MP3, however often its message is
//! delivered and however many converters run:
//! - [`Store::claim`] moves a `queued` or `converting` job to `converting`, counts the attempt
//!   and records in `converting_fid` the id the MP3 of this attempt will get, before any byte
//!   is uploaded; it returns the previous attempt's id, so that attempt's leftovers (a converter
//!   killed mid-upload leaves chunks without a files document) can be deleted.
//! - [`Store::mark_done`] succeeds only while `converting_fid` is still this attempt's id: of
//!   two racing attempts only the last to claim can finish; the other deletes its own MP3.

use anyhow::Context as _;
use futures_util::io::AsyncRead;
use futures_util::TryStreamExt as _;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use mongodb::gridfs::{GridFsBucket, GridFsUploadStream};
use mongodb::options::{GridFsBucketOptions, GridFsUploadOptions, ReturnDocument};
use mongodb::{Client, Collection, Cursor, Database, IndexModel};
use mp3_model::{
    Job, JobMessage, JobStatus, DELETED_JOBS_COLLECTION, GRIDFS_CHUNK_SIZE, JOBS_COLLECTION,
    MP3S_DB, UPLOADS_COLLECTION, UPLOAD_LEASES_COLLECTION, VIDEOS_DB,
};

/// The field holding the id of the MP3 the current attempt is writing (hex), next to the
/// model's fields in the job document.
const CONVERTING_FID: &str = "converting_fid";

#[derive(Clone)]
pub struct Store {
    jobs: Collection<Job>,
    videos_db: Database,
    mp3s_db: Database,
    mp3s: GridFsBucket,
}

/// The outcome of [`Store::claim`].
#[derive(Debug)]
pub enum Claim {
    /// The job is ours to convert; `leftover` is the MP3 id of an earlier attempt, if any.
    Claimed {
        job: Job,
        leftover: Option<ObjectId>,
    },
    /// Already done (a redelivery): nothing to convert.
    Done {
        job: Job,
        mp3_fid: String,
    },
    /// Already given up.
    Failed {
        job: Job,
        error: String,
    },
    NotFound,
}

/// The outcome of [`Store::mark_failed`].
#[derive(Debug)]
pub enum MarkFailed {
    /// Now `failed`; `leftover` is the MP3 id the last attempt was writing, if any.
    Marked {
        job: Job,
        leftover: Option<ObjectId>,
    },
    /// Was failed already (a repeated give-up).
    AlreadyFailed {
        job: Job,
    },
    /// Done already (by another attempt, or by this message's before its announcement
    /// failed).
    Done {
        job: Job,
    },
    NotFound,
}

/// Where a video is.
#[derive(Debug, Clone, Copy)]
pub struct Video {
    pub id: ObjectId,
    pub len: u64,
    pub chunk_size: u64,
}

/// A video that cannot be converted, whatever the attempt.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error("video_fid {0:?} is not an ObjectId")]
    BadId(String),
    #[error("video {0} is not in GridFS")]
    Missing(ObjectId),
    #[error("the GridFS files document of video {0} has no valid `{1}`")]
    Invalid(ObjectId, &'static str),
}

impl Store {
    pub fn new(client: &Client) -> Self {
        let videos_db = client.database(VIDEOS_DB);
        let mp3s_db = client.database(MP3S_DB);
        Self {
            jobs: videos_db.collection(JOBS_COLLECTION),
            mp3s: mp3s_db.gridfs_bucket(
                GridFsBucketOptions::builder()
                    .chunk_size_bytes(GRIDFS_CHUNK_SIZE)
                    .build(),
            ),
            videos_db,
            mp3s_db,
        }
    }

    /// Creates the indexes the queries need, if missing: on `videos.jobs`, a user's jobs newest
    /// first (`GET /jobs`), the job of an MP3 (`GET /download`), and the sweeper's jobs by
    /// status and age; on the resumable uploads, a user's (`POST /uploads` counts them), the
    /// expired ones, and the leases of one. Converters create them because the gateway, a
    /// function, has no start-up; every replica may (two creating one index at once: the
    /// loser's error is retried, and then finds it there).
    pub async fn ensure_indexes(&self) -> anyhow::Result<()> {
        for (collection, keys) in [
            (
                JOBS_COLLECTION,
                vec![
                    doc! { "owner": 1, "created_at": -1, "_id": -1 },
                    doc! { "mp3_fid": 1 },
                    doc! { "status": 1, "updated_at": 1 },
                ],
            ),
            (
                UPLOADS_COLLECTION,
                vec![doc! { "owner": 1 }, doc! { "expires_at": 1 }],
            ),
            (UPLOAD_LEASES_COLLECTION, vec![doc! { "upload": 1 }]),
        ] {
            let collection = self.videos_db.collection::<Document>(collection);
            ensure_keys(&collection, keys)
                .await
                .with_context(|| format!("creating the indexes of videos.{}", collection.name()))?;
        }
        Ok(())
    }

    pub async fn job(&self, job_id: &str) -> anyhow::Result<Option<Job>> {
        self.jobs
            .find_one(doc! { "_id": job_id })
            .await
            .with_context(|| format!("reading job {job_id}"))
    }

    /// Applies `update` to the job if it is still queued or converting. The job as it was
    /// before, and the MP3 its last attempt was writing (to delete); `None` when the job is
    /// finished or missing.
    async fn update_unfinished(
        &self,
        job_id: &str,
        update: Document,
    ) -> anyhow::Result<Option<(Job, Option<ObjectId>)>> {
        let filter = doc! {
            "_id": job_id,
            "status": { "$in": [JobStatus::Queued.as_str(), JobStatus::Converting.as_str()] },
        };
        self.update_matching(filter, update).await
    }

    /// [`update_unfinished`](Self::update_unfinished) with the caller's filter.
    async fn update_matching(
        &self,
        filter: Document,
        update: Document,
    ) -> anyhow::Result<Option<(Job, Option<ObjectId>)>> {
        let job_id = filter.get_str("_id").unwrap_or_default().to_owned();
        let Some(before) = self
            .jobs
            .clone_with_type::<Document>()
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::Before)
            .await?
        else {
            return Ok(None);
        };
        let leftover = before
            .get_str(CONVERTING_FID)
            .ok()
            .and_then(|hex| ObjectId::parse_str(hex).ok());
        let job: Job = mongodb::bson::from_document(before)
            .with_context(|| format!("job {job_id} is not a valid job document"))?;
        Ok(Some((job, leftover)))
    }

    /// Claims a job for an attempt that will write the MP3 `mp3_fid`.
    pub async fn claim(&self, job_id: &str, mp3_fid: ObjectId) -> anyhow::Result<Claim> {
        let update = doc! {
            "$set": {
                "status": JobStatus::Converting.as_str(),
                CONVERTING_FID: mp3_fid.to_hex(),
                "updated_at": now_ms(),
            },
            "$inc": { "attempts": 1 },
        };
        if let Some((job, leftover)) = self
            .update_unfinished(job_id, update)
            .await
            .with_context(|| format!("claiming job {job_id}"))?
        {
            return Ok(Claim::Claimed { job, leftover });
        }
        Ok(match self.job(job_id).await? {
            None => Claim::NotFound,
            Some(job) => match (job.status, job.mp3_fid.clone()) {
                (JobStatus::Done, Some(mp3_fid)) => Claim::Done { job, mp3_fid },
                (JobStatus::Failed, _) => {
                    let error = job
                        .error
                        .clone()
                        .unwrap_or_else(|| "conversion failed".into());
                    Claim::Failed { job, error }
                }
                // Done without an MP3 id, or a status changed between the two reads:
                // inconsistent, let the retry policy look again.
                (status, _) => {
                    anyhow::bail!("job {job_id} is {} and cannot be claimed", status.as_str())
                }
            },
        })
    }

    /// Hands the job back after this attempt failed and its retry copy waits in the queues:
    /// `queued` again, as of now, if this attempt (`mp3_fid`) still holds it. Left `converting`
    /// with the claim's time, it would look to the sweeper like a conversion that outlived
    /// every deadline, and be republished, then failed, under a retry that is on its way.
    /// The claim's MP3 id stays: the next claim deletes whatever of it is left.
    pub async fn release(&self, job_id: &str, mp3_fid: ObjectId) -> anyhow::Result<bool> {
        let result = self
            .jobs
            .update_one(
                doc! {
                    "_id": job_id,
                    "status": JobStatus::Converting.as_str(),
                    CONVERTING_FID: mp3_fid.to_hex(),
                },
                doc! { "$set": { "status": JobStatus::Queued.as_str(), "updated_at": now_ms() } },
            )
            .await
            .with_context(|| format!("handing job {job_id} back"))?;
        Ok(result.matched_count == 1)
    }

    /// Marks the job done with `mp3_fid`, if this attempt still holds it. `false`: another
    /// attempt claimed the job since, and this attempt's MP3 must be deleted.
    pub async fn mark_done(&self, job_id: &str, mp3_fid: ObjectId) -> anyhow::Result<bool> {
        let result = self
            .jobs
            .update_one(
                doc! {
                    "_id": job_id,
                    "status": JobStatus::Converting.as_str(),
                    CONVERTING_FID: mp3_fid.to_hex(),
                },
                doc! {
                    "$set": {
                        "status": JobStatus::Done.as_str(),
                        "mp3_fid": mp3_fid.to_hex(),
                        "updated_at": now_ms(),
                    },
                    "$unset": { CONVERTING_FID: "", "error": "" },
                },
            )
            .await
            .with_context(|| format!("marking job {job_id} done"))?;
        Ok(result.matched_count == 1)
    }

    /// Marks a job that is not done `failed` with `error`.
    pub async fn mark_failed(&self, job_id: &str, error: &str) -> anyhow::Result<MarkFailed> {
        let update = doc! {
            "$set": {
                "status": JobStatus::Failed.as_str(),
                "error": error,
                "updated_at": now_ms(),
            },
            "$unset": { CONVERTING_FID: "" },
        };
        if let Some((job, leftover)) = self
            .update_unfinished(job_id, update)
            .await
            .with_context(|| format!("marking job {job_id} failed"))?
        {
            return Ok(MarkFailed::Marked { job, leftover });
        }
        Ok(match self.job(job_id).await? {
            None => MarkFailed::NotFound,
            Some(job) if job.status == JobStatus::Done => MarkFailed::Done { job },
            Some(job) => MarkFailed::AlreadyFailed { job },
        })
    }

    /// Creates the job of a seed-format message (named after its video, see
    /// [`JobMessage::is_seed`]) unless it exists. `false` when the video is not there, so there
    /// is no job to make.
    pub async fn create_seed_job(&self, message: &JobMessage) -> anyhow::Result<bool> {
        let Ok(id) = ObjectId::parse_str(&message.video_fid) else {
            return Ok(false);
        };
        let Some(file) = self.video_file(id).await? else {
            return Ok(false);
        };
        // A video an upload of ours made belongs to its job: a message naming it cannot give
        // it another owner.
        let claimed = self
            .jobs
            .find_one(doc! { "video_fid": &message.video_fid, "_id": { "$ne": &message.job_id } })
            .await
            .with_context(|| format!("looking for the job of video {id}"))?;
        if claimed.is_some() {
            tracing::warn!(video = %id, "a seed-format message names another job's video; refused");
            return Ok(false);
        }
        let filename = file.get_str("filename").unwrap_or_default();
        let job = Job::for_seed_message(message, filename, now_ms());
        match self.jobs.insert_one(&job).await {
            Ok(_) => {
                tracing::info!(job_id = %job.id, "created the job of a seed-format message");
                Ok(true)
            }
            // Another delivery created it first.
            Err(error) if is_duplicate_key(&error) => Ok(true),
            Err(error) => Err(error).with_context(|| format!("creating job {}", job.id)),
        }
    }

    /// Marks a job `failed` with `error` only if it is still as `seen` (same status, no update
    /// since): a job a converter claimed meanwhile is left alone. The MP3 its last attempt was
    /// writing, if it was failed.
    pub async fn fail_unchanged(
        &self,
        seen: &Job,
        error: &str,
    ) -> anyhow::Result<Option<(Job, Option<ObjectId>)>> {
        let filter = doc! {
            "_id": &seen.id,
            "status": seen.status.as_str(),
            "updated_at": seen.updated_at,
        };
        let update = doc! {
            "$set": { "status": JobStatus::Failed.as_str(), "error": error, "updated_at": now_ms() },
            "$unset": { CONVERTING_FID: "" },
        };
        self.update_matching(filter, update)
            .await
            .with_context(|| format!("marking job {} failed", seen.id))
    }

    /// A video's GridFS files document, if it is stored.
    async fn video_file(&self, id: ObjectId) -> anyhow::Result<Option<Document>> {
        self.videos_db
            .collection::<Document>("fs.files")
            .find_one(doc! { "_id": id })
            .await
            .with_context(|| format!("reading the files document of video {id}"))
    }

    /// Finds the video's files document.
    pub async fn video(&self, video_fid: &str) -> anyhow::Result<Result<Video, VideoError>> {
        let Ok(id) = ObjectId::parse_str(video_fid) else {
            return Ok(Err(VideoError::BadId(video_fid.to_owned())));
        };
        let Some(file) = self.video_file(id).await? else {
            return Ok(Err(VideoError::Missing(id)));
        };
        let Some(len) = integer(&file, "length") else {
            return Ok(Err(VideoError::Invalid(id, "length")));
        };
        let Some(chunk_size) = integer(&file, "chunkSize").filter(|&size| size > 0) else {
            return Ok(Err(VideoError::Invalid(id, "chunkSize")));
        };
        Ok(Ok(Video {
            id,
            len,
            chunk_size,
        }))
    }

    /// Streams a video's bytes, each chunk as soon as the store returns it.
    ///
    /// The chunks are asked for unsorted: MongoDB returns them in `n` order anyway (through the
    /// GridFS `files_id, n` index), and FerretDB, which decodes every stored chunk to answer a
    /// query and would sort them all before returning the first, returns them as it reads them,
    /// in the order they were written. Should one still come out of order, the rest is read
    /// through a sorted query from there on.
    pub async fn open_video(&self, video: Video) -> anyhow::Result<impl AsyncRead + Unpin> {
        let chunks = self.videos_db.collection::<Document>("fs.chunks");
        let reader = ChunkReader {
            chunks,
            video,
            next: 0,
            remaining: video.len,
            sorted: false,
            abandoned: None,
            requeried: 0,
        };
        let cursor = ChunkReader::query(&reader.chunks, video.id, None).await?;
        let stream = futures_util::stream::try_unfold(
            (reader, cursor),
            |(mut reader, mut cursor)| async move {
                let bytes = reader.next_chunk(&mut cursor).await.map_err(|error| {
                    std::io::Error::other(format!("video {}: {error:#}", reader.video.id))
                })?;
                Ok(bytes.map(|bytes| (bytes, (reader, cursor))))
            },
        );
        Ok(Box::pin(stream).into_async_read())
    }

    /// Opens the upload of an MP3 with a chosen id, 255 KiB chunks and the job in its
    /// metadata.
    pub async fn create_mp3(
        &self,
        id: ObjectId,
        filename: &str,
        job: &Job,
    ) -> anyhow::Result<GridFsUploadStream> {
        let options = GridFsUploadOptions::builder()
            .chunk_size_bytes(GRIDFS_CHUNK_SIZE)
            .metadata(doc! { "job_id": &job.id, "owner": &job.owner, "content_type": "audio/mpeg" })
            .build();
        self.mp3s
            .open_upload_stream(filename)
            .id(Bson::ObjectId(id))
            .with_options(options)
            .await
            .with_context(|| format!("opening the upload of MP3 {id}"))
    }

    /// Deletes an MP3 and its chunks, complete or not (a killed upload leaves chunks without a
    /// files document, which the driver's own delete would not find).
    /// Whether the owner deleted job `job_id` (the gateway left its tombstone).
    pub async fn is_deleted(&self, job_id: &str) -> anyhow::Result<bool> {
        let tombstone = self
            .videos_db
            .collection::<Document>(DELETED_JOBS_COLLECTION)
            .find_one(doc! { "_id": job_id })
            .await
            .with_context(|| format!("reading whether job {job_id} was deleted"))?;
        Ok(tombstone.is_some())
    }

    pub async fn delete_mp3(&self, id: ObjectId) -> anyhow::Result<()> {
        delete_file(&self.mp3s_db, id).await
    }
}

/// Deletes a file of `db`'s default GridFS bucket: its files document and its chunks.
pub(crate) async fn delete_file(db: &Database, id: ObjectId) -> anyhow::Result<()> {
    db.collection::<Document>("fs.files")
        .delete_one(doc! { "_id": id })
        .await
        .with_context(|| format!("deleting file {id} of {}", db.name()))?;
    db.collection::<Document>("fs.chunks")
        .delete_many(doc! { "files_id": id })
        .await
        .with_context(|| format!("deleting the chunks of file {id} of {}", db.name()))?;
    Ok(())
}

/// Chunks per query batch: FerretDB answers a batch only once it has decoded all of it.
const CHUNKS_PER_BATCH: u32 = 1;

/// A video's chunks in order, checked against its files document.
struct ChunkReader {
    chunks: Collection<Document>,
    video: Video,
    /// The next chunk's `n`.
    next: u64,
    /// Bytes still to come.
    remaining: u64,
    /// Whether the cursor is the sorted query.
    sorted: bool,
    /// The unsorted cursor, once replaced by the sorted one: kept open until the read ends,
    /// because dropping it sends killCursors on another connection at once, and FerretDB,
    /// whose cursors belong to a connection, may then lose the new cursor's getMore.
    abandoned: Option<Cursor<Document>>,
    /// Cursors lost (CursorNotFound) and queried again from where the read was.
    requeried: u32,
}

/// Cursors a video read may lose before it fails.
const MAX_REQUERIES: u32 = 3;

impl ChunkReader {
    /// The video's chunks: in storage order, or sorted from chunk `from` on. (Given only the
    /// collection, which is `Sync`, so that a read holding an abandoned cursor stays `Send`.)
    async fn query(
        chunks: &Collection<Document>,
        video: ObjectId,
        from: Option<u64>,
    ) -> anyhow::Result<Cursor<Document>> {
        let mut filter = doc! { "files_id": video };
        let mut find = match from {
            None => chunks.find(filter),
            Some(n) => {
                filter.insert("n", doc! { "$gte": i64::try_from(n).unwrap_or(i64::MAX) });
                chunks.find(filter).sort(doc! { "n": 1 })
            }
        };
        find = find.batch_size(CHUNKS_PER_BATCH);
        find.await
            .with_context(|| format!("querying the chunks of video {video}"))
    }

    /// The next chunk's bytes; `None` after the last.
    async fn next_chunk(
        &mut self,
        cursor: &mut Cursor<Document>,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        loop {
            let chunk = match cursor.try_next().await {
                Err(e) if is_cursor_not_found(&e) && self.requeried < MAX_REQUERIES => {
                    self.requeried += 1;
                    tracing::info!(next = self.next, "video cursor lost; querying from there");
                    *cursor = Self::query(&self.chunks, self.video.id, Some(self.next)).await?;
                    self.sorted = true;
                    continue;
                }
                other => other?,
            };
            let Some(mut chunk) = chunk else {
                anyhow::bail!("chunk {} is missing", self.next);
            };
            let n = integer(&chunk, "n").context("a chunk without a valid n")?;
            if n != self.next {
                // Out of order, or a gap, which the sorted query shows.
                anyhow::ensure!(!self.sorted, "chunk {} is missing", self.next);
                tracing::info!(
                    expected = self.next,
                    got = n,
                    "video chunks out of order; reading the rest sorted"
                );
                let sorted = Self::query(&self.chunks, self.video.id, Some(self.next)).await?;
                let unsorted = std::mem::replace(cursor, sorted);
                self.abandoned = Some(unsorted);
                self.sorted = true;
                continue;
            }
            let data = match chunk.remove("data") {
                Some(Bson::Binary(binary)) => binary.bytes,
                _ => anyhow::bail!("chunk {n} has no binary data"),
            };
            let expected = self.remaining.min(self.video.chunk_size);
            anyhow::ensure!(
                data.len() as u64 == expected,
                "chunk {n} holds {} bytes instead of {expected}",
                data.len()
            );
            self.next += 1;
            self.remaining -= expected;
            return Ok(Some(data));
        }
    }
}

/// Creates the indexes on `keys` that `collection` lacks. Only those: FerretDB 1.24 panics
/// and drops the connection when asked again for one of these it has (seen with the jobs'
/// indexes; the GridFS ones the gateway asks for on each upload do not do it).
async fn ensure_keys(collection: &Collection<Document>, keys: Vec<Document>) -> anyhow::Result<()> {
    let existing: Vec<IndexModel> = match collection.list_indexes().await {
        Ok(cursor) => cursor.try_collect().await?,
        // No collection yet (MongoDB's NamespaceNotFound): no index either.
        Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == 26) => {
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    for key in keys {
        if !existing.iter().any(|index| same_keys(&index.keys, &key)) {
            collection
                .create_index(IndexModel::builder().keys(key).build())
                .await?;
        }
    }
    Ok(())
}

/// Whether two index keys name the same fields in the same order and directions, whatever
/// number type each direction is stored as.
fn same_keys(a: &Document, b: &Document) -> bool {
    let direction = |value: &Bson| match value {
        Bson::Int32(n) => Some(f64::from(*n)),
        Bson::Int64(n) => Some(*n as f64),
        Bson::Double(n) => Some(*n),
        _ => None,
    };
    a.len() == b.len()
        && a.iter().zip(b.iter()).all(|((x, u), (y, v))| {
            x == y && direction(u).is_some() && direction(u) == direction(v)
        })
}

/// A getMore for a cursor the server no longer has (43).
fn is_cursor_not_found(error: &mongodb::error::Error) -> bool {
    matches!(error.kind.as_ref(), mongodb::error::ErrorKind::Command(e) if e.code == 43)
}

/// MongoDB's duplicate key error (11000), however the driver wraps it.
pub fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == 11000,
        ErrorKind::Command(e) => e.code == 11000,
        ErrorKind::InsertMany(e) => e.write_errors.iter().flatten().any(|e| e.code == 11000),
        _ => false,
    }
}

/// A non-negative integer field, whatever its BSON width.
fn integer(document: &Document, key: &str) -> Option<u64> {
    match document.get(key)? {
        Bson::Int32(n) => u64::try_from(*n).ok(),
        Bson::Int64(n) => u64::try_from(*n).ok(),
        Bson::Double(n) if *n >= 0.0 && n.fract() == 0.0 => Some(*n as u64),
        _ => None,
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_match_field_by_field_whatever_the_number_type() {
        let key = doc! { "owner": 1, "created_at": -1, "_id": -1 };
        assert!(same_keys(&key, &key));
        assert!(same_keys(
            &doc! { "owner": 1_i64, "created_at": -1.0, "_id": -1 },
            &key
        ));
        for other in [
            doc! { "owner": 1, "created_at": 1, "_id": -1 },
            doc! { "created_at": -1, "owner": 1, "_id": -1 },
            doc! { "owner": 1, "created_at": -1 },
            doc! { "owner": "text", "created_at": -1, "_id": -1 },
        ] {
            assert!(!same_keys(&other, &key), "{other}");
        }
    }
}

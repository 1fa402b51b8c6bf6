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

use std::sync::Arc;

use anyhow::Context as _;
use futures_util::io::AsyncRead;
use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{doc, oid::ObjectId, Binary, Bson, DateTime, Document};
use mongodb::error::{ErrorKind, GridFsErrorKind};
use mongodb::gridfs::GridFsBucket;
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::IndexModel;
use mongodb::{Client, Collection, Database};
use mp3_model::{Job, JobStatus, GRIDFS_CHUNK_SIZE, JOBS_COLLECTION, MP3S_DB, VIDEOS_DB};
use tokio::sync::OnceCell;

use crate::convert::Output;

/// The field holding the id of the MP3 the current attempt is writing (hex), next to the
/// model's fields in the job document.
const CONVERTING_FID: &str = "converting_fid";

#[derive(Clone)]
pub struct Store {
    jobs: Collection<Job>,
    videos_db: Database,
    videos: GridFsBucket,
    mp3s_db: Database,
    /// Set once the `mp3s` bucket's standard indexes are known to exist.
    mp3_indexes: Arc<OnceCell<()>>,
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
    /// Another attempt finished it meanwhile.
    Done,
    NotFound,
}

/// Where a video is.
#[derive(Debug, Clone, Copy)]
pub struct Video {
    pub id: ObjectId,
    pub len: u64,
    pub chunk_size: u64,
}

/// A video's bytes, as [`Store::open_video`] streams them.
pub type VideoStream = Box<dyn AsyncRead + Send + Unpin>;

/// Video chunks fetched ahead of ffmpeg (about 1 MiB).
const CHUNKS_AHEAD: usize = 4;

/// A video that cannot be converted, whatever the attempt.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error("video_fid {0:?} is not an ObjectId")]
    BadId(String),
    #[error("video {0} is not in GridFS")]
    Missing(ObjectId),
}

impl Store {
    pub fn new(client: &Client) -> Self {
        let videos_db = client.database(VIDEOS_DB);
        let mp3s_db = client.database(MP3S_DB);
        Self {
            jobs: videos_db.collection(JOBS_COLLECTION),
            videos: videos_db.gridfs_bucket(None),
            videos_db,
            mp3s_db,
            mp3_indexes: Arc::default(),
        }
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
            Some(job) if job.status == JobStatus::Done => MarkFailed::Done,
            Some(job) => MarkFailed::AlreadyFailed { job },
        })
    }

    /// Finds the video's files document.
    pub async fn video(&self, video_fid: &str) -> anyhow::Result<Result<Video, VideoError>> {
        let Ok(id) = ObjectId::parse_str(video_fid) else {
            return Ok(Err(VideoError::BadId(video_fid.to_owned())));
        };
        let files = self.videos_db.collection::<Document>("fs.files");
        let Some(file) = files
            .find_one(doc! { "_id": id })
            .await
            .with_context(|| format!("reading the files document of video {id}"))?
        else {
            return Ok(Err(VideoError::Missing(id)));
        };
        let len = integer(&file, "length").context("video files document without a length")?;
        let chunk_size = integer(&file, "chunkSize")
            .filter(|&n| n > 0)
            .context("video files document without a chunk size")?;
        Ok(Ok(Video {
            id,
            len,
            chunk_size,
        }))
    }

    /// Streams a video's bytes, fetching [`CHUNKS_AHEAD`] chunks ahead. Chunks written with
    /// addressable ids (the gateway's uploads, see `mongo_wire::chunk_id`) are fetched by `_id`;
    /// other files through the driver's GridFS download, whose `files_id` query reads the whole
    /// chunks collection on FerretDB.
    pub async fn open_video(&self, video: Video) -> anyhow::Result<VideoStream> {
        let chunks = self.videos_db.collection::<Document>("fs.chunks");
        let count = video.len.div_ceil(video.chunk_size);
        if count > 0 {
            if let Some(first) = chunk_by_id(&chunks, video.id, 0).await? {
                let first = check_chunk(&video, 0, first);
                let rest = stream::iter(1..count)
                    .map(move |n| {
                        let chunks = chunks.clone();
                        async move { fetch_chunk(&chunks, &video, n).await }
                    })
                    .buffered(CHUNKS_AHEAD);
                let bytes = stream::once(async { first }).chain(rest);
                return Ok(Box::new(Box::pin(bytes).into_async_read()));
            }
        }
        let download = self
            .videos
            .open_download_stream(Bson::ObjectId(video.id))
            .await
            .map_err(|error| match *error.kind {
                ErrorKind::GridFs(GridFsErrorKind::FileNotFound { .. }) => {
                    anyhow::Error::new(VideoError::Missing(video.id))
                }
                _ => anyhow::Error::new(error).context(format!("opening video {}", video.id)),
            })?;
        Ok(Box::new(download))
    }

    /// Starts storing the MP3 `id` (from [`mongo_wire::new_file_id`]) with the job in its
    /// metadata.
    pub async fn create_mp3(
        &self,
        id: ObjectId,
        filename: &str,
        job: &Job,
    ) -> anyhow::Result<Mp3Upload> {
        self.mp3_indexes
            .get_or_try_init(|| self.create_mp3_indexes())
            .await?;
        Ok(Mp3Upload {
            chunks: self.mp3s_db.collection("fs.chunks"),
            files: self.mp3s_db.collection("fs.files"),
            id,
            filename: filename.to_owned(),
            metadata: doc! { "job_id": &job.id, "owner": &job.owner, "content_type": "audio/mpeg" },
            pending: Vec::with_capacity(GRIDFS_CHUNK_SIZE as usize),
            n: 0,
            length: 0,
        })
    }

    /// The indexes official drivers create for a bucket, under their names: the gateway's
    /// downloads of files of other writers and [`Store::delete_mp3`] query `files_id`.
    async fn create_mp3_indexes(&self) -> anyhow::Result<()> {
        let index = |keys: Document, name: &str, unique: bool| {
            IndexModel::builder()
                .keys(keys)
                .options(
                    IndexOptions::builder()
                        .name(name.to_owned())
                        .unique(unique)
                        .build(),
                )
                .build()
        };
        self.mp3s_db
            .collection::<Document>("fs.files")
            .create_index(index(
                doc! { "filename": 1, "uploadDate": 1 },
                "filename_1_uploadDate_1",
                false,
            ))
            .await
            .context("creating the index of mp3s fs.files")?;
        self.mp3s_db
            .collection::<Document>("fs.chunks")
            .create_index(index(
                doc! { "files_id": 1, "n": 1 },
                "files_id_1_n_1",
                true,
            ))
            .await
            .context("creating the index of mp3s fs.chunks")?;
        Ok(())
    }

    /// Deletes an MP3 and its chunks, complete or not (a killed upload leaves chunks without a
    /// files document, which the driver's own delete would not find).
    pub async fn delete_mp3(&self, id: ObjectId) -> anyhow::Result<()> {
        self.mp3s_db
            .collection::<Document>("fs.files")
            .delete_one(doc! { "_id": id })
            .await
            .with_context(|| format!("deleting MP3 {id}"))?;
        self.mp3s_db
            .collection::<Document>("fs.chunks")
            .delete_many(doc! { "files_id": id })
            .await
            .with_context(|| format!("deleting the chunks of MP3 {id}"))?;
        Ok(())
    }
}

/// Chunk `n` of `file` at its addressable id, if it is there.
async fn chunk_by_id(
    chunks: &Collection<Document>,
    file: ObjectId,
    n: u64,
) -> anyhow::Result<Option<Document>> {
    let Some(id) = mongo_wire::chunk_id(file, n) else {
        return Ok(None);
    };
    let chunk = chunks
        .find_one(doc! { "_id": id })
        .await
        .with_context(|| format!("reading chunk {n} of video {file}"))?;
    Ok(chunk
        .filter(|c| c.get_object_id("files_id").ok() == Some(file) && integer(c, "n") == Some(n)))
}

/// Chunk `n` of a video whose chunk 0 was at its addressable id: by id, or by the standard
/// query if another tool rewrote it.
async fn fetch_chunk(
    chunks: &Collection<Document>,
    video: &Video,
    n: u64,
) -> std::io::Result<Vec<u8>> {
    let found = match chunk_by_id(chunks, video.id, n).await {
        Ok(Some(chunk)) => Ok(Some(chunk)),
        Ok(None) => chunks
            .find_one(doc! { "files_id": video.id, "n": i64::try_from(n).unwrap_or(i64::MAX) })
            .await
            .with_context(|| format!("reading chunk {n} of video {}", video.id)),
        Err(error) => Err(error),
    };
    match found {
        Ok(Some(chunk)) => check_chunk(video, n, chunk),
        Ok(None) => Err(std::io::Error::other(format!(
            "video {} has no chunk {n}",
            video.id
        ))),
        Err(error) => Err(std::io::Error::other(format!("{error:#}"))),
    }
}

/// The data of chunk `n`, if it has the length the files document implies.
fn check_chunk(video: &Video, n: u64, mut chunk: Document) -> std::io::Result<Vec<u8>> {
    let expected = (video.len - n * video.chunk_size).min(video.chunk_size);
    match chunk.remove("data") {
        Some(Bson::Binary(binary)) if binary.bytes.len() as u64 == expected => Ok(binary.bytes),
        _ => Err(std::io::Error::other(format!(
            "chunk {n} of video {} is not {expected} bytes of binary data",
            video.id
        ))),
    }
}

/// An MP3 being stored in GridFS `mp3s`, in 255 KiB chunks at addressable ids (so the
/// gateway's download fetches them by `_id`, see `mongo_wire::chunk_id`); the files document
/// is written by [`Mp3Upload::close`], so an interrupted upload leaves only chunks, which
/// [`Store::delete_mp3`] finds.
pub struct Mp3Upload {
    chunks: Collection<Document>,
    files: Collection<Document>,
    id: ObjectId,
    filename: String,
    metadata: Document,
    pending: Vec<u8>,
    n: u64,
    length: u64,
}

impl Mp3Upload {
    async fn insert_chunk(&mut self) -> anyhow::Result<()> {
        let id = mongo_wire::chunk_id(self.id, self.n)
            .with_context(|| format!("MP3 {} has too many chunks for its id", self.id))?;
        let chunk = doc! {
            "_id": id,
            "files_id": self.id,
            "n": i32::try_from(self.n)?,
            "data": Binary { subtype: BinarySubtype::Generic, bytes: std::mem::take(&mut self.pending) },
        };
        self.chunks
            .insert_one(chunk)
            .await
            .with_context(|| format!("storing chunk {} of MP3 {}", self.n, self.id))?;
        self.n += 1;
        self.pending.reserve(GRIDFS_CHUNK_SIZE as usize);
        Ok(())
    }

    /// Writes the last chunk and the files document.
    pub async fn close(mut self) -> anyhow::Result<()> {
        if !self.pending.is_empty() {
            self.insert_chunk().await?;
        }
        let files = doc! {
            "_id": self.id,
            "length": i64::try_from(self.length)?,
            "chunkSize": i32::try_from(GRIDFS_CHUNK_SIZE)?,
            "uploadDate": DateTime::now(),
            "filename": &self.filename,
            "metadata": &self.metadata,
        };
        self.files
            .insert_one(files)
            .await
            .with_context(|| format!("storing the files document of MP3 {}", self.id))?;
        Ok(())
    }
}

impl Output for Mp3Upload {
    async fn write(&mut self, mut bytes: &[u8]) -> anyhow::Result<()> {
        let chunk_size = GRIDFS_CHUNK_SIZE as usize;
        while !bytes.is_empty() {
            let take = (chunk_size - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            self.length += take as u64;
            bytes = &bytes[take..];
            if self.pending.len() == chunk_size {
                self.insert_chunk().await?;
            }
        }
        Ok(())
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

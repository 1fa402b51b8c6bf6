//! GridFS in the standard layout (`<bucket>.files`, `<bucket>.chunks`), readable and writable by
//! every official driver. Uploads and downloads are streamed: memory holds a few chunks at most.

use std::io::{Read, Write};

use bson::oid::ObjectId;
use bson::spec::BinarySubtype;
use bson::{doc, Binary, Bson, DateTime, Document};

use crate::client::{Client, Cursor, FindOptions};
use crate::error::{Error, Result};

/// The chunk size official drivers use: 255 KiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 255 * 1024;
const MAX_CHUNK_SIZE: u32 = 15 * 1024 * 1024;
/// Chunks per insert and per getMore: bounds memory to about this many chunks.
const CHUNKS_PER_BATCH: usize = 4;

/// A GridFS bucket: where files live. Cheap; holds no connection.
#[derive(Debug, Clone)]
pub struct Bucket {
    db: String,
    name: String,
    chunk_size: u32,
    create_indexes: bool,
}

/// The `files` document of a stored file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileInfo {
    pub id: ObjectId,
    pub length: u64,
    pub chunk_size: u32,
    pub upload_date: Option<DateTime>,
    pub filename: Option<String>,
    pub metadata: Option<Document>,
}

impl Bucket {
    /// The default bucket `fs` of database `db`.
    pub fn new(db: &str) -> Self {
        Bucket::named(db, "fs")
    }

    /// Bucket `name` of database `db`.
    pub fn named(db: &str, name: &str) -> Self {
        Bucket {
            db: db.to_owned(),
            name: name.to_owned(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            create_indexes: true,
        }
    }

    /// Chunk size of new uploads, kept between 1 byte and 15 MiB (a chunk must fit in a
    /// 16 MiB BSON document).
    pub fn with_chunk_size(mut self, bytes: u32) -> Self {
        self.chunk_size = bytes.clamp(1, MAX_CHUNK_SIZE);
        self
    }

    /// Whether `upload` makes sure the standard indexes exist first (default: yes).
    pub fn with_index_creation(mut self, on: bool) -> Self {
        self.create_indexes = on;
        self
    }

    fn files(&self) -> String {
        format!("{}.files", self.name)
    }

    fn chunks(&self) -> String {
        format!("{}.chunks", self.name)
    }

    /// Creates `files {filename:1, uploadDate:1}` and unique `chunks {files_id:1, n:1}`, with the
    /// names official drivers give them (so theirs and ours are the same index).
    pub fn ensure_indexes<S: Read + Write>(&self, client: &mut Client<S>) -> Result<()> {
        client.create_indexes(
            &self.db,
            &self.files(),
            vec![doc! {"key": {"filename": 1, "uploadDate": 1}, "name": "filename_1_uploadDate_1"}],
        )?;
        client.create_indexes(
            &self.db,
            &self.chunks(),
            vec![doc! {"key": {"files_id": 1, "n": 1}, "name": "files_id_1_n_1", "unique": true}],
        )
    }

    /// Streams `reader` into the bucket, chunk by chunk, and writes the files document last.
    /// Past `max_bytes` it stops with [`Error::TooLarge`]; on that or any other failure the
    /// chunks already written are deleted (best effort), so no half file is left.
    pub fn upload<S: Read + Write, R: Read>(
        &self,
        client: &mut Client<S>,
        reader: R,
        filename: &str,
        metadata: Option<Document>,
        max_bytes: u64,
    ) -> Result<ObjectId> {
        self.upload_with_id(
            client,
            ObjectId::new(),
            reader,
            filename,
            metadata,
            max_bytes,
        )
    }

    /// [`Bucket::upload`] under an id of the caller's choosing.
    pub fn upload_with_id<S: Read + Write, R: Read>(
        &self,
        client: &mut Client<S>,
        id: ObjectId,
        mut reader: R,
        filename: &str,
        metadata: Option<Document>,
        max_bytes: u64,
    ) -> Result<ObjectId> {
        if self.create_indexes {
            self.ensure_indexes(client)?;
        }
        match self.write_chunks(client, &mut reader, id, max_bytes) {
            Ok(length) => {
                let mut files = doc! {
                    "_id": id,
                    "length": i64::try_from(length).unwrap_or(i64::MAX),
                    "chunkSize": i32::try_from(self.chunk_size).unwrap_or(i32::MAX),
                    "uploadDate": DateTime::now(),
                    "filename": filename,
                };
                if let Some(m) = metadata {
                    files.insert("metadata", m);
                }
                match client.insert_one(&self.db, &self.files(), files) {
                    Ok(_) => Ok(id),
                    Err(e) => Err(self.discard_chunks(client, id, e)),
                }
            }
            Err(e) => Err(self.discard_chunks(client, id, e)),
        }
    }

    fn discard_chunks<S: Read + Write>(
        &self,
        client: &mut Client<S>,
        id: ObjectId,
        cause: Error,
    ) -> Error {
        if client.is_usable() {
            let _ = client.delete_many(&self.db, &self.chunks(), doc! {"files_id": id});
        }
        cause
    }

    fn write_chunks<S: Read + Write, R: Read>(
        &self,
        client: &mut Client<S>,
        reader: &mut R,
        id: ObjectId,
        max_bytes: u64,
    ) -> Result<u64> {
        let chunk_size = self.chunk_size as usize;
        let mut total: u64 = 0;
        let mut n: i32 = 0;
        let mut pending: Vec<Document> = Vec::with_capacity(CHUNKS_PER_BATCH);
        loop {
            let data = read_up_to(reader, chunk_size).map_err(Error::Source)?;
            let full = data.len() == chunk_size;
            if !data.is_empty() {
                total += data.len() as u64;
                if total > max_bytes {
                    return Err(Error::TooLarge { max: max_bytes });
                }
                pending.push(doc! {
                    "_id": ObjectId::new(),
                    "files_id": id,
                    "n": n,
                    "data": Binary { subtype: BinarySubtype::Generic, bytes: data },
                });
                n = n
                    .checked_add(1)
                    .ok_or_else(|| Error::TooLarge { max: max_bytes })?;
            }
            if pending.len() >= CHUNKS_PER_BATCH || (!full && !pending.is_empty()) {
                client.insert_many(&self.db, &self.chunks(), std::mem::take(&mut pending))?;
            }
            if !full {
                return Ok(total);
            }
        }
    }

    /// Inserts `chunks` as chunks `first`, `first + 1`, ... of file `id`, a few per round
    /// trip: for a file written piece by piece (a resumable upload), whose files document
    /// comes last ([`Bucket::write_files_document`]).
    pub fn insert_chunks<S: Read + Write>(
        &self,
        client: &mut Client<S>,
        id: ObjectId,
        first: u64,
        chunks: Vec<Vec<u8>>,
    ) -> Result<()> {
        let mut docs = Vec::with_capacity(CHUNKS_PER_BATCH);
        for (i, data) in chunks.into_iter().enumerate() {
            let n = first + i as u64;
            docs.push(doc! {
                "_id": ObjectId::new(),
                "files_id": id,
                "n": chunk_number(n)?,
                "data": Binary { subtype: BinarySubtype::Generic, bytes: data },
            });
            if docs.len() == CHUNKS_PER_BATCH {
                client.insert_many(&self.db, &self.chunks(), std::mem::take(&mut docs))?;
            }
        }
        if !docs.is_empty() {
            client.insert_many(&self.db, &self.chunks(), docs)?;
        }
        Ok(())
    }

    /// How many chunks file `id` has (whatever its files document says).
    pub fn chunk_count<S: Read + Write>(
        &self,
        client: &mut Client<S>,
        id: ObjectId,
    ) -> Result<u64> {
        client.count_documents(&self.db, &self.chunks(), doc! {"files_id": id})
    }

    /// Deletes chunks `range.start <= n < range.end` of file `id`.
    pub fn delete_chunks<S: Read + Write>(
        &self,
        client: &mut Client<S>,
        id: ObjectId,
        range: std::ops::Range<u64>,
    ) -> Result<u64> {
        let filter = doc! {
            "files_id": id,
            "n": {"$gte": chunk_number(range.start)?, "$lt": chunk_number(range.end)?},
        };
        client.delete_many(&self.db, &self.chunks(), filter)
    }

    /// Writes the files document of `id`, whose chunks of this bucket's chunk size are all
    /// stored, which makes the file whole. Already written is fine.
    pub fn write_files_document<S: Read + Write>(
        &self,
        client: &mut Client<S>,
        id: ObjectId,
        length: u64,
        filename: &str,
    ) -> Result<()> {
        let files = doc! {
            "_id": id,
            "length": i64::try_from(length).unwrap_or(i64::MAX),
            "chunkSize": i32::try_from(self.chunk_size).unwrap_or(i32::MAX),
            "uploadDate": DateTime::now(),
            "filename": filename,
        };
        match client.insert_one(&self.db, &self.files(), files) {
            Ok(_) => Ok(()),
            Err(e) if e.is_duplicate_key() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The files document of `id`, or [`Error::NotFound`].
    pub fn file_info<S: Read + Write>(
        &self,
        client: &mut Client<S>,
        id: ObjectId,
    ) -> Result<FileInfo> {
        let doc = client
            .find_one(&self.db, &self.files(), doc! {"_id": id})?
            .ok_or(Error::NotFound(id))?;
        let corrupt = |reason: &str| Error::Corrupt {
            id,
            reason: reason.to_owned(),
        };
        let length = as_u64(doc.get("length")).ok_or_else(|| corrupt("bad length"))?;
        let chunk_size = as_u64(doc.get("chunkSize"))
            .and_then(|c| u32::try_from(c).ok())
            .filter(|c| *c > 0)
            .ok_or_else(|| corrupt("bad chunkSize"))?;
        Ok(FileInfo {
            id,
            length,
            chunk_size,
            upload_date: doc.get_datetime("uploadDate").ok().copied(),
            filename: doc.get_str("filename").ok().map(str::to_owned),
            metadata: doc.get_document("metadata").ok().cloned(),
        })
    }

    /// A reader of the file's bytes, fetched a few chunks at a time, checked as they come
    /// (chunk order, chunk sizes, total length): a gap or excess is an [`Error::Corrupt`].
    pub fn open_download<'c, S: Read + Write>(
        &self,
        client: &'c mut Client<S>,
        id: ObjectId,
    ) -> Result<Download<'c, S>> {
        self.open_download_at(client, id, 0)
    }

    /// [`Bucket::open_download`] from byte `offset` on (for HTTP range requests): only the
    /// chunks from the one holding `offset` are fetched. An offset past the end reads nothing.
    pub fn open_download_at<'c, S: Read + Write>(
        &self,
        client: &'c mut Client<S>,
        id: ObjectId,
        offset: u64,
    ) -> Result<Download<'c, S>> {
        let info = self.file_info(client, id)?;
        let chunk = u64::from(info.chunk_size);
        let expected_chunks = info.length.div_ceil(chunk);
        let offset = offset.min(info.length);
        let first = (offset / chunk).min(expected_chunks);
        let mut filter = doc! {"files_id": id};
        if first > 0 {
            let first_n = match i32::try_from(first) {
                Ok(n) => Bson::Int32(n),
                Err(_) => Bson::Int64(i64::try_from(first).unwrap_or(i64::MAX)),
            };
            filter.insert("n", doc! {"$gte": first_n});
        }
        let cursor = client.find(
            &self.db,
            &self.chunks(),
            filter,
            FindOptions {
                sort: Some(doc! {"n": 1}),
                batch_size: Some(CHUNKS_PER_BATCH as i32),
                ..FindOptions::default()
            },
        )?;
        Ok(Download {
            cursor,
            info,
            expected_chunks,
            next_n: first,
            current: Vec::new(),
            pos: 0,
            skip: usize::try_from(offset - first * chunk).unwrap_or(0),
        })
    }

    /// Deletes the files document, then the chunks. [`Error::NotFound`] if there was no files
    /// document (orphan chunks are deleted all the same).
    pub fn delete<S: Read + Write>(&self, client: &mut Client<S>, id: ObjectId) -> Result<()> {
        let files = client.delete_many(&self.db, &self.files(), doc! {"_id": id})?;
        client.delete_many(&self.db, &self.chunks(), doc! {"files_id": id})?;
        if files == 0 {
            return Err(Error::NotFound(id));
        }
        Ok(())
    }
}

/// A chunk's `n` as drivers write it: an int32 while it fits.
fn chunk_number(n: u64) -> Result<Bson> {
    match i32::try_from(n) {
        Ok(n) => Ok(Bson::Int32(n)),
        Err(_) => i64::try_from(n)
            .map(Bson::Int64)
            .map_err(|_| Error::TooLarge { max: u64::MAX }),
    }
}

/// A streaming download: `impl Read`. Errors come out as `std::io::Error` wrapping [`Error`]
/// (get it back with `e.into_inner()` and `downcast`).
pub struct Download<'c, S: Read + Write> {
    cursor: Cursor<'c, S>,
    info: FileInfo,
    expected_chunks: u64,
    next_n: u64,
    current: Vec<u8>,
    pos: usize,
    /// Bytes of the first chunk loaded to skip (the start of a range).
    skip: usize,
}

impl<S: Read + Write> Download<'_, S> {
    pub fn info(&self) -> &FileInfo {
        &self.info
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::Corrupt {
            id: self.info.id,
            reason,
        }
    }

    /// Loads the next chunk into `current`; false at the end of the file.
    fn next_chunk(&mut self) -> Result<bool> {
        let Some(doc) = self.cursor.next().transpose()? else {
            if self.next_n < self.expected_chunks {
                return Err(self.corrupt(format!("missing chunk {}", self.next_n)));
            }
            return Ok(false);
        };
        let n = as_u64(doc.get("n")).ok_or_else(|| self.corrupt("chunk without n".into()))?;
        if n != self.next_n {
            return Err(self.corrupt(format!("missing chunk {} (found {n})", self.next_n)));
        }
        if n >= self.expected_chunks {
            return Err(self.corrupt(format!("extra chunk {n}")));
        }
        let data = match doc.get("data") {
            Some(Bson::Binary(b)) => b.bytes.clone(),
            _ => return Err(self.corrupt(format!("chunk {n} has no binary data"))),
        };
        let chunk = u64::from(self.info.chunk_size);
        let want = if n + 1 == self.expected_chunks {
            self.info.length - n * chunk
        } else {
            chunk
        };
        if data.len() as u64 != want {
            return Err(self.corrupt(format!(
                "chunk {n} holds {} bytes, expected {want}",
                data.len()
            )));
        }
        self.current = data;
        self.pos = std::mem::take(&mut self.skip).min(self.current.len());
        self.next_n += 1;
        Ok(true)
    }
}

impl<S: Read + Write> Read for Download<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.pos >= self.current.len() {
            match self.next_chunk() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn as_u64(v: Option<&Bson>) -> Option<u64> {
    match v? {
        Bson::Int32(x) => u64::try_from(*x).ok(),
        Bson::Int64(x) => u64::try_from(*x).ok(),
        Bson::Double(x) if x.fract() == 0.0 && *x >= 0.0 && *x < 9.0e15 => Some(*x as u64),
        _ => None,
    }
}

/// Reads until `want` bytes or end of input.
fn read_up_to<R: Read>(reader: &mut R, want: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; want];
    let mut filled = 0;
    while filled < want {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

//! A small tus 1.0 client for the tests and benchmarks: a file sent in pieces as the CLI and the
//! page send it (each piece with its SHA-1), resumed from the server's offset, and a PATCH broken
//! off on purpose, as a dropped connection does.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest as _, Sha1};

use crate::http::{send_raw, Body, RawReply};

/// One resumable upload on the app at `base` (`http://host:port`).
pub struct Upload {
    base: String,
    auth: String,
    /// `/uploads/{id}`, from the creation's `Location`.
    pub path: String,
    /// Whether each PATCH carries its SHA-1 (`Upload-Checksum`), as the CLI and the page do.
    checksums: bool,
}

impl Upload {
    /// `POST /uploads` for `length` bytes named `name`.
    pub fn create(base: &str, token: &str, length: u64, name: &str) -> Result<Self, String> {
        Self::create_with(base, token, length, name, &[])
    }

    /// [`Upload::create`] with more `Upload-Metadata` (conversion options).
    pub fn create_with(
        base: &str,
        token: &str,
        length: u64,
        name: &str,
        metadata: &[(&str, &str)],
    ) -> Result<Self, String> {
        let auth = format!("Bearer {token}");
        let mut pairs = vec![format!("filename {}", STANDARD.encode(name))];
        pairs.extend(
            metadata
                .iter()
                .map(|(key, value)| format!("{key} {}", STANDARD.encode(value))),
        );
        let metadata = pairs.join(",");
        let reply = request(
            base,
            "POST",
            "/uploads",
            &auth,
            &[
                ("Upload-Length", &length.to_string()),
                ("Upload-Metadata", &metadata),
            ],
            Body::Empty,
        )?;
        if reply.status != 201 {
            return Err(format!("creating: {} {}", reply.status, reply.text()));
        }
        let path = reply
            .header("location")
            .ok_or("creating: no Location")?
            .to_owned();
        Ok(Upload {
            base: base.to_owned(),
            auth,
            path,
            checksums: true,
        })
    }

    /// PATCHes without `Upload-Checksum` from now on.
    pub fn without_checksums(mut self) -> Self {
        self.checksums = false;
        self
    }

    /// The upload's id (the job's, once it is complete).
    pub fn id(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or_default()
    }

    /// `HEAD`: how many bytes the server has.
    pub fn offset(&self) -> Result<u64, String> {
        let reply = request(&self.base, "HEAD", &self.path, &self.auth, &[], Body::Empty)?;
        reply
            .header("upload-offset")
            .and_then(|o| o.parse().ok())
            .filter(|_| reply.status == 200)
            .ok_or_else(|| format!("HEAD {}: {}", self.path, reply.status))
    }

    /// One `PATCH` of `bytes` at `offset` (with their SHA-1); the offset the server reached.
    pub fn patch(&self, offset: u64, bytes: Vec<u8>) -> Result<u64, String> {
        let offset_text = offset.to_string();
        let mut headers = vec![
            ("Upload-Offset", offset_text.as_str()),
            ("Content-Type", "application/offset+octet-stream"),
        ];
        let checksum = self
            .checksums
            .then(|| format!("sha1 {}", STANDARD.encode(Sha1::digest(&bytes))));
        if let Some(checksum) = &checksum {
            headers.push(("Upload-Checksum", checksum));
        }
        let reply = request(
            &self.base,
            "PATCH",
            &self.path,
            &self.auth,
            &headers,
            Body::Bytes(bytes),
        )?;
        match reply.header("upload-offset").and_then(|o| o.parse().ok()) {
            Some(reached) if reply.status == 204 => Ok(reached),
            _ => Err(format!(
                "PATCH at {offset}: {} {}",
                reply.status,
                reply.text()
            )),
        }
    }

    /// A `PATCH` that declares `declared` bytes, sends `bytes`, and goes away.
    pub fn break_off(&self, offset: u64, bytes: &[u8], declared: u64) {
        break_off(&self.base, &self.path, &self.auth, offset, bytes, declared)
    }

    /// Sends `file` from `offset` on in pieces of `piece` bytes, calling `progress` with the
    /// offset after each; the final offset.
    pub fn send_file(
        &self,
        file: &Path,
        mut offset: u64,
        piece: usize,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, String> {
        let mut source = File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let length = source.metadata().map_err(|e| e.to_string())?.len();
        while offset < length {
            let bytes = read_at(&mut source, offset, piece)?;
            offset = self.patch(offset, bytes)?;
            progress(offset);
        }
        Ok(offset)
    }
}

/// Up to `len` bytes of `file` from `offset`.
pub fn read_at(file: &mut File, offset: u64, len: usize) -> Result<Vec<u8>, String> {
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| e.to_string())?;
    let mut bytes = Vec::with_capacity(len);
    file.take(len as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// A `PATCH` to `path` at `base` whose client declares `declared` bytes, sends `bytes`, and
/// closes the connection.
pub fn break_off(base: &str, path: &str, auth: &str, offset: u64, bytes: &[u8], declared: u64) {
    let address = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("connecting to the app");
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {address}\r\nTus-Resumable: 1.0.0\r\nAuthorization: {auth}\r\n\
         Upload-Offset: {offset}\r\nContent-Type: application/offset+octet-stream\r\n\
         Content-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("sending the head");
    // The server may answer and close early (a refusal): what is not sent then does not matter.
    let _ = stream.write_all(bytes);
    let _ = stream.flush();
    std::thread::sleep(Duration::from_millis(300));
}

fn request(
    base: &str,
    method: &str,
    path: &str,
    auth: &str,
    extra: &[(&str, &str)],
    body: Body,
) -> Result<RawReply, String> {
    let mut headers = vec![("Tus-Resumable", "1.0.0"), ("Authorization", auth)];
    headers.extend_from_slice(extra);
    send_raw(method, &format!("{base}{path}"), &headers, body)
}

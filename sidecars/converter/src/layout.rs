//! Whether ffmpeg can read a video from a pipe, judged from its top-level ISO BMFF boxes
//! (MP4, MOV, M4V, 3GP).
//!
//! ffmpeg reads such a file front to back only when the `moov` box (the index) comes before
//! `mdat` (the media): a "fast start" file. When `mdat` comes first, as cameras and many
//! encoders write it, ffmpeg must seek to the end for the index, which a plain pipe cannot do,
//! so ffmpeg reads that file through its cache protocol. Everything else (Matroska, WebM, AVI,
//! MPEG-TS, fragmented MP4, files that are not video at all) is streamed, and ffmpeg judges it.
//!
//! The verdict comes from the start of the file: the walk over the top-level boxes ends at the
//! first `moov`, `moof` or `mdat`. [`sniff`] reads that start from the stream ffmpeg will be
//! given, so deciding costs no extra read.

use futures_util::io::{AsyncRead, AsyncReadExt as _};

use crate::convert::BUFFER;

/// How ffmpeg must be given the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Read front to back from a pipe.
    Streamable,
    /// `mdat` before `moov`: ffmpeg must seek in it.
    NeedsSeek,
}

/// Bytes the walker wants at each offset: a box header with its 64-bit size.
pub const HEADER_LEN: usize = 16;

/// Boxes walked before giving up and streaming (ffmpeg decides then).
const MAX_BOXES: u32 = 256;
/// Bytes [`sniff`] reads ahead at most. Boxes before the media larger than that are unusual;
/// the file is then read as [`Layout::NeedsSeek`], which works whatever its layout.
const MAX_PREFIX: u64 = 4 << 20;

/// Reads the start of a file of `len` bytes from `reader` until the layout is known; returns it
/// with the bytes read, which go back in front of the rest of the stream.
pub async fn sniff<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: u64,
) -> std::io::Result<(Layout, Vec<u8>)> {
    let (mut walker, mut step) = BoxWalker::new(len);
    let mut prefix = Vec::new();
    loop {
        let offset = match step {
            Step::Done(layout) => return Ok((layout, prefix)),
            Step::Read(offset) => offset,
        };
        let end = offset.saturating_add(HEADER_LEN as u64).min(len);
        if end > MAX_PREFIX {
            return Ok((Layout::NeedsSeek, prefix));
        }
        let end = end as usize; // at most MAX_PREFIX
        while prefix.len() < end {
            let start = prefix.len();
            prefix.resize(start + BUFFER.max(end - start), 0);
            let n = reader.read(&mut prefix[start..]).await?;
            prefix.truncate(start + n);
            if n == 0 {
                break; // shorter than its files document says: ffmpeg will tell
            }
        }
        let from = (offset as usize).min(prefix.len());
        step = walker.feed(&prefix[from..end.min(prefix.len())]);
    }
}

/// What the walker needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Feed up to [`HEADER_LEN`] bytes read at this offset.
    Read(u64),
    /// The verdict.
    Done(Layout),
}

/// Walks the top-level boxes of a file of known length.
#[derive(Debug)]
pub struct BoxWalker {
    file_len: u64,
    offset: u64,
    boxes: u32,
}

impl BoxWalker {
    /// A walk over a file of `file_len` bytes, and its first step.
    pub fn new(file_len: u64) -> (Self, Step) {
        let walker = Self {
            file_len,
            offset: 0,
            boxes: 0,
        };
        let step = if file_len < 8 {
            Step::Done(Layout::Streamable)
        } else {
            Step::Read(0)
        };
        (walker, step)
    }

    /// Feeds the bytes read at the offset the last [`Step::Read`] asked for (fewer than
    /// [`HEADER_LEN`] only at the end of the file).
    pub fn feed(&mut self, bytes: &[u8]) -> Step {
        let streamable = Step::Done(Layout::Streamable);
        if bytes.len() < 8 {
            return streamable;
        }
        let size32 = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let kind = [bytes[4], bytes[5], bytes[6], bytes[7]];
        if self.offset == 0 && !is_leading_box(&kind) {
            return streamable; // not ISO BMFF
        }
        match &kind {
            b"moov" | b"moof" => return streamable,
            b"mdat" => return Step::Done(Layout::NeedsSeek),
            _ => {}
        }
        let size = match size32 {
            0 => return streamable, // the box runs to the end: no moov, no mdat after it
            1 if bytes.len() >= 16 => u64::from_be_bytes([
                bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14],
                bytes[15],
            ]),
            1 => return streamable,
            n => u64::from(n),
        };
        let header = if size32 == 1 { 16 } else { 8 };
        self.boxes += 1;
        match self.offset.checked_add(size) {
            Some(next) if size >= header && next < self.file_len && self.boxes < MAX_BOXES => {
                self.offset = next;
                Step::Read(next)
            }
            _ => streamable,
        }
    }
}

/// Box types an ISO BMFF file starts with.
fn is_leading_box(kind: &[u8; 4]) -> bool {
    matches!(
        kind,
        b"ftyp" | b"styp" | b"moov" | b"mdat" | b"free" | b"skip" | b"wide" | b"pdin" | b"uuid"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a walk over an in-memory file (the tests, and small files).
    fn layout_of(file: &[u8]) -> Layout {
        let (mut walker, mut step) = BoxWalker::new(file.len() as u64);
        loop {
            match step {
                Step::Done(layout) => return layout,
                Step::Read(offset) => {
                    let start = usize::try_from(offset)
                        .unwrap_or(usize::MAX)
                        .min(file.len());
                    let end = start.saturating_add(HEADER_LEN).min(file.len());
                    step = walker.feed(&file[start..end]);
                }
            }
        }
    }

    fn boxed(kind: &[u8; 4], payload_len: usize) -> Vec<u8> {
        let mut b = ((payload_len + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.resize(payload_len + 8, 0xAB);
        b
    }

    fn file(boxes: &[Vec<u8>]) -> Vec<u8> {
        boxes.concat()
    }

    #[test]
    fn fast_start_mp4_streams_and_moov_at_the_end_needs_a_file() {
        let fast = file(&[
            boxed(b"ftyp", 24),
            boxed(b"moov", 500),
            boxed(b"mdat", 5000),
        ]);
        assert_eq!(layout_of(&fast), Layout::Streamable);
        let slow = file(&[
            boxed(b"ftyp", 24),
            boxed(b"free", 0),
            boxed(b"mdat", 5000),
            boxed(b"moov", 500),
        ]);
        assert_eq!(layout_of(&slow), Layout::NeedsSeek);
    }

    #[test]
    fn sixty_four_bit_sizes_are_followed() {
        let mut wide = 1u32.to_be_bytes().to_vec();
        wide.extend_from_slice(b"free");
        wide.extend_from_slice(&40u64.to_be_bytes());
        wide.resize(40, 0);
        let f = file(&[
            boxed(b"ftyp", 16),
            wide,
            boxed(b"mdat", 100),
            boxed(b"moov", 10),
        ]);
        assert_eq!(layout_of(&f), Layout::NeedsSeek);
    }

    #[test]
    fn other_formats_and_garbage_stream() {
        // Matroska starts with the EBML magic.
        assert_eq!(
            layout_of(&[0x1A, 0x45, 0xDF, 0xA3, 0, 0, 0, 0, 0, 0]),
            Layout::Streamable
        );
        assert_eq!(layout_of(b"this is not a video at all"), Layout::Streamable);
        assert_eq!(layout_of(b""), Layout::Streamable);
        // Fragmented MP4 reads front to back.
        let frag = file(&[boxed(b"ftyp", 16), boxed(b"moof", 100), boxed(b"mdat", 100)]);
        assert_eq!(layout_of(&frag), Layout::Streamable);
    }

    async fn sniffed(file: &[u8]) -> (Layout, Vec<u8>) {
        let mut reader = futures_util::io::Cursor::new(file.to_vec());
        let (layout, mut prefix) = sniff(&mut reader, file.len() as u64).await.unwrap();
        reader.read_to_end(&mut prefix).await.unwrap();
        (layout, prefix)
    }

    #[tokio::test]
    async fn sniffing_a_stream_agrees_with_the_walk_and_keeps_every_byte() {
        let mut wide = 1u32.to_be_bytes().to_vec();
        wide.extend_from_slice(b"free");
        wide.extend_from_slice(&(200_000u64 + 16).to_be_bytes());
        wide.resize(200_016, 0);
        let files = [
            file(&[
                boxed(b"ftyp", 24),
                boxed(b"moov", 500),
                boxed(b"mdat", 300_000),
            ]),
            file(&[
                boxed(b"ftyp", 24),
                boxed(b"mdat", 300_000),
                boxed(b"moov", 500),
            ]),
            file(&[
                boxed(b"ftyp", 16),
                wide,
                boxed(b"mdat", 100),
                boxed(b"moov", 10),
            ]),
            b"this is not a video at all".to_vec(),
            Vec::new(),
        ];
        for (i, f) in files.iter().enumerate() {
            let (layout, bytes) = sniffed(f).await;
            assert_eq!(layout, layout_of(f), "file {i}");
            assert!(&bytes == f, "file {i}: bytes lost or reordered");
        }
    }

    #[tokio::test]
    async fn a_huge_box_before_the_media_means_seeking() {
        let f = file(&[
            boxed(b"ftyp", 16),
            boxed(b"free", 5 << 20),
            boxed(b"moov", 100),
            boxed(b"mdat", 100),
        ]);
        let (layout, bytes) = sniffed(&f).await;
        assert_eq!(layout, Layout::NeedsSeek);
        assert!(bytes == f);
    }

    #[tokio::test]
    async fn a_stream_shorter_than_announced_streams() {
        let f = file(&[boxed(b"ftyp", 16), boxed(b"free", 100)]);
        let mut reader = futures_util::io::Cursor::new(f.clone());
        let (layout, prefix) = sniff(&mut reader, 10_000).await.unwrap();
        assert_eq!(layout, Layout::Streamable);
        assert_eq!(prefix, f);
    }

    #[test]
    fn broken_sizes_end_the_walk_instead_of_looping() {
        // A box claiming 4 bytes (smaller than its header) would never advance.
        let mut tiny = boxed(b"ftyp", 16);
        tiny.extend_from_slice(&4u32.to_be_bytes());
        tiny.extend_from_slice(b"free");
        tiny.extend_from_slice(&[0; 64]);
        assert_eq!(layout_of(&tiny), Layout::Streamable);
        // A size past the end of the file.
        let mut long = boxed(b"ftyp", 16);
        long.extend_from_slice(&u32::MAX.to_be_bytes());
        long.extend_from_slice(b"free");
        assert_eq!(layout_of(&long), Layout::Streamable);
        // A 64-bit size that overflows the offset.
        let mut huge = boxed(b"ftyp", 16);
        huge.extend_from_slice(&1u32.to_be_bytes());
        huge.extend_from_slice(b"free");
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(layout_of(&huge), Layout::Streamable);
    }
}

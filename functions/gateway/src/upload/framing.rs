//! Limits on a multipart body's framing, checked on the raw bytes before multer parses them.
//!
//! multer buffers until it finds what it looks for: the first delimiter, and the blank line
//! that ends a part's headers. A body that never shows them would grow that buffer up to the
//! whole upload limit (gigabytes). [`Framing`] follows the body exactly as multer reads it and
//! refuses it once the preamble or a part's headers run over their limit, or the form has too
//! many parts, so multer never holds more than those limits plus one chunk of the request.

use memchr::memmem;

/// The most bytes before the first delimiter (browsers send none).
pub const MAX_PREAMBLE: usize = 8 * 1024;
/// The most bytes of one part's headers, from its delimiter to the blank line.
pub const MAX_PART_HEADERS: usize = 16 * 1024;
/// The most parts in one form (the file and a few ordinary fields).
pub const MAX_PARTS: usize = 32;

/// Why a body's framing was refused: the one-line reason for the 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("no multipart boundary in the first {MAX_PREAMBLE} bytes")]
    NoBoundary,
    #[error("multipart part headers over {MAX_PART_HEADERS} bytes")]
    HeadersTooLong,
    #[error("more than {MAX_PARTS} parts in the form")]
    TooManyParts,
    #[error("malformed multipart delimiter line")]
    BadDelimiter,
}

/// Finds a pattern in a stream that comes in pieces, including across pieces.
struct Finder {
    pattern: Vec<u8>,
    /// The last `pattern.len() - 1` bytes fed without a match.
    carry: Vec<u8>,
}

impl Finder {
    fn new(pattern: Vec<u8>) -> Self {
        Self {
            pattern,
            carry: Vec::new(),
        }
    }

    /// The offset in `data` just past the first match, counting one that began in earlier
    /// pieces; `None` when there is none yet.
    fn feed(&mut self, data: &[u8]) -> Option<usize> {
        let keep = self.pattern.len() - 1;
        if !self.carry.is_empty() {
            // Every match in carry + the first `keep` bytes starts in the carry: earliest.
            let mut joined = self.carry.clone();
            joined.extend_from_slice(&data[..data.len().min(keep)]);
            if let Some(at) = memmem::find(&joined, &self.pattern) {
                let end = at + self.pattern.len() - self.carry.len();
                self.carry.clear();
                return Some(end);
            }
        }
        if let Some(at) = memmem::find(data, &self.pattern) {
            self.carry.clear();
            return Some(at + self.pattern.len());
        }
        self.carry
            .extend_from_slice(&data[data.len().saturating_sub(keep)..]);
        let excess = self.carry.len().saturating_sub(keep);
        self.carry.drain(..excess);
        None
    }

    fn reset(&mut self) {
        self.carry.clear();
    }
}

/// Where the body is, in multer's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the first `--boundary`.
    Preamble { seen: usize },
    /// Just after a delimiter: `--` (the end of the form) or the rest of the line.
    Lead { dash: bool },
    /// Spaces and tabs after a delimiter, then its CRLF (`cr` once the CR came).
    LineEnd { cr: bool },
    /// A part's header lines, up to the blank line.
    Headers,
    /// A part's content, up to the next `CRLF--boundary`.
    Content,
    /// After the closing delimiter: multer reads no further.
    Done,
}

/// Follows a multipart body's framing as it streams by.
pub struct Framing {
    stage: Stage,
    /// Bytes since the last delimiter, for the header limit.
    since_delimiter: usize,
    parts: usize,
    first: Finder,
    delimiter: Finder,
    blank_line: Finder,
}

impl Framing {
    pub fn new(boundary: &str) -> Self {
        Self {
            stage: Stage::Preamble { seen: 0 },
            since_delimiter: 0,
            parts: 0,
            first: Finder::new(format!("--{boundary}").into_bytes()),
            delimiter: Finder::new(format!("\r\n--{boundary}").into_bytes()),
            blank_line: Finder::new(b"\r\n\r\n".to_vec()),
        }
    }

    /// Takes the next piece of the body; `Err` once the framing is over a limit or broken.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), FramingError> {
        while !data.is_empty() {
            let used = match self.stage {
                Stage::Preamble { seen } => match self.first.feed(data) {
                    Some(end) => {
                        self.after_delimiter();
                        end
                    }
                    None if seen + data.len() > MAX_PREAMBLE => {
                        return Err(FramingError::NoBoundary)
                    }
                    None => {
                        self.stage = Stage::Preamble {
                            seen: seen + data.len(),
                        };
                        data.len()
                    }
                },
                Stage::Lead { dash } => {
                    let next = match (dash, data[0]) {
                        (true, b'-') => Stage::Done,
                        (false, b'-') => Stage::Lead { dash: true },
                        (true, _) => return Err(FramingError::BadDelimiter),
                        // Not the end: this byte starts the padding or the line's end.
                        (false, _) => {
                            self.stage = Stage::LineEnd { cr: false };
                            continue;
                        }
                    };
                    self.stage = next;
                    self.count(1)?;
                    1
                }
                Stage::LineEnd { cr } => {
                    self.stage = match (cr, data[0]) {
                        (false, b' ' | b'\t') => Stage::LineEnd { cr: false },
                        (false, b'\r') => Stage::LineEnd { cr: true },
                        // multer looks for the blank line only after this CRLF.
                        (true, b'\n') => {
                            self.blank_line.reset();
                            Stage::Headers
                        }
                        _ => return Err(FramingError::BadDelimiter),
                    };
                    self.count(1)?;
                    1
                }
                Stage::Headers => match self.blank_line.feed(data) {
                    Some(end) => {
                        self.count(end)?;
                        self.parts += 1;
                        if self.parts > MAX_PARTS {
                            return Err(FramingError::TooManyParts);
                        }
                        self.delimiter.reset();
                        self.stage = Stage::Content;
                        end
                    }
                    None => {
                        self.count(data.len())?;
                        data.len()
                    }
                },
                Stage::Content => match self.delimiter.feed(data) {
                    Some(end) => {
                        self.after_delimiter();
                        end
                    }
                    None => data.len(),
                },
                Stage::Done => data.len(),
            };
            data = &data[used..];
        }
        Ok(())
    }

    fn after_delimiter(&mut self) {
        self.since_delimiter = 0;
        self.stage = Stage::Lead { dash: false };
    }

    /// Counts header-side bytes since the last delimiter against the header limit.
    fn count(&mut self, n: usize) -> Result<(), FramingError> {
        self.since_delimiter += n;
        if self.since_delimiter > MAX_PART_HEADERS {
            return Err(FramingError::HeadersTooLong);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "xyzBOUNDARY";

    fn feed_in(pieces: usize, body: &[u8]) -> Result<Stage, FramingError> {
        let mut framing = Framing::new(B);
        let step = body.len().div_ceil(pieces).max(1);
        for piece in body.chunks(step) {
            framing.feed(piece)?;
        }
        Ok(framing.stage)
    }

    /// Every way of cutting `body` into two pieces, and byte by byte, agrees with one piece.
    fn feed_every_way(body: &[u8]) -> Result<Stage, FramingError> {
        let whole = feed_in(1, body);
        for cut in 0..=body.len() {
            let mut framing = Framing::new(B);
            let split = framing
                .feed(&body[..cut])
                .and_then(|()| framing.feed(&body[cut..]))
                .map(|()| framing.stage);
            assert_eq!(split, whole, "cut at {cut}");
        }
        assert_eq!(feed_in(body.len(), body), whole, "byte by byte");
        whole
    }

    fn form(parts: &[&str]) -> Vec<u8> {
        let mut body = Vec::new();
        for content in parts {
            body.extend_from_slice(
                format!("--{B}\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n{content}\r\n")
                    .as_bytes(),
            );
        }
        body.extend_from_slice(format!("--{B}--\r\n").as_bytes());
        body
    }

    #[test]
    fn a_well_formed_form_reaches_its_end() {
        assert_eq!(
            feed_every_way(&form(&["a", "", "--not-it\r\n"])),
            Ok(Stage::Done)
        );
        // A preamble, padding after a delimiter, an epilogue.
        let body = format!(
            "preamble\r\n--{B} \t\r\nX: y\r\n\r\ncontent\r\n--{B}\r\nX: y\r\n\r\n\r\n--{B}--epilogue"
        );
        assert_eq!(feed_every_way(body.as_bytes()), Ok(Stage::Done));
    }

    #[test]
    fn content_may_be_long_and_look_like_a_delimiter() {
        let content = format!("{}\r\n--{}", "x".repeat(100_000), &B[..5]);
        let mut framing = Framing::new(B);
        for piece in form(&[&content]).chunks(16 * 1024) {
            framing.feed(piece).unwrap();
        }
        assert_eq!(framing.stage, Stage::Done);
    }

    #[test]
    fn a_body_without_its_boundary_is_refused_after_the_preamble_limit() {
        let zeros = vec![0u8; MAX_PREAMBLE + 1];
        assert_eq!(
            feed_in(1, &zeros[..MAX_PREAMBLE]),
            Ok(Stage::Preamble { seen: MAX_PREAMBLE })
        );
        assert_eq!(feed_in(1, &zeros), Err(FramingError::NoBoundary));
        assert_eq!(feed_in(7, &zeros), Err(FramingError::NoBoundary));
    }

    #[test]
    fn endless_part_headers_are_refused() {
        let mut body = format!("--{B}\r\nContent-Disposition: form-data; filename=\"").into_bytes();
        body.extend(std::iter::repeat_n(b'a', MAX_PART_HEADERS));
        assert_eq!(feed_in(1, &body), Err(FramingError::HeadersTooLong));
        assert_eq!(feed_in(100, &body), Err(FramingError::HeadersTooLong));
        // Endless padding after the delimiter counts too (multer drops it, but it never ends).
        let mut padded = format!("--{B}").into_bytes();
        padded.extend(std::iter::repeat_n(b' ', MAX_PART_HEADERS + 1));
        assert_eq!(feed_in(3, &padded), Err(FramingError::HeadersTooLong));
        // Headers just under the limit are fine.
        let header = format!("X: {}\r\n", "v".repeat(MAX_PART_HEADERS - 20));
        let body = format!("--{B}\r\n{header}\r\nc\r\n--{B}--");
        assert_eq!(feed_every_way(body.as_bytes()), Ok(Stage::Done));
    }

    #[test]
    fn a_part_without_a_blank_line_after_its_padding_cannot_hide_its_headers() {
        // multer reads the delimiter line's CRLF and only then looks for the blank line: the
        // CRLF right after the delimiter does not end the headers.
        let mut body = format!("--{B}\r\n\r").into_bytes();
        body.extend(std::iter::repeat_n(b'a', MAX_PART_HEADERS));
        assert_eq!(feed_in(5, &body), Err(FramingError::HeadersTooLong));
    }

    #[test]
    fn too_many_parts_are_refused() {
        let many: Vec<&str> = vec!["x"; MAX_PARTS + 1];
        assert_eq!(feed_in(1, &form(&many[..MAX_PARTS])), Ok(Stage::Done));
        assert_eq!(feed_in(1, &form(&many)), Err(FramingError::TooManyParts));
    }

    #[test]
    fn a_broken_delimiter_line_is_refused() {
        assert_eq!(
            feed_in(1, format!("--{B}x\r\n").as_bytes()),
            Err(FramingError::BadDelimiter)
        );
        assert_eq!(
            feed_in(1, format!("--{B}-x").as_bytes()),
            Err(FramingError::BadDelimiter)
        );
    }

    #[test]
    fn the_finder_matches_across_any_cut() {
        let text = b"aaab--xyzBOUNDARYtail";
        for cut in 0..text.len() {
            let mut finder = Finder::new(format!("--{B}").into_bytes());
            let found = match finder.feed(&text[..cut]) {
                Some(end) => end,
                None => cut + finder.feed(&text[cut..]).expect("found after the cut"),
            };
            assert_eq!(found, 17, "cut at {cut}");
        }
    }
}

//! MongoDB wire framing: OP_MSG (sections of kind 0 and 1, flag bits, CRC-32C checksum) out and
//! in, plus the legacy OP_QUERY out (servers still take the first `hello` that way) and OP_REPLY
//! in. Decoders take untrusted bytes and never panic.

use std::io::{Read, Write};

use bson::Document;

use crate::error::{Error, Result};

pub const OP_REPLY: i32 = 1;
pub const OP_QUERY: i32 = 2004;
pub const OP_COMPRESSED: i32 = 2012;
pub const OP_MSG: i32 = 2013;
pub const HEADER_LEN: usize = 16;

/// OP_MSG flag: a CRC-32C of the message follows the last section.
pub const CHECKSUM_PRESENT: u32 = 1;
/// OP_MSG flag: the sender will send another message without waiting for an answer; on a
/// request it means "no reply wanted" (unacknowledged write).
pub const MORE_TO_COME: u32 = 1 << 1;
/// OP_MSG flag: the client accepts exhaust replies (never set by this crate).
pub const EXHAUST_ALLOWED: u32 = 1 << 16;
/// Bits 0-15 are "required": a receiver must reject bits it does not know.
const REQUIRED_MASK: u32 = 0xffff;
const KNOWN_FLAGS: u32 = CHECKSUM_PRESENT | MORE_TO_COME | EXHAUST_ALLOWED;

/// The 16-byte message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub message_length: i32,
    pub request_id: i32,
    pub response_to: i32,
    pub op_code: i32,
}

/// A kind-1 section: a named sequence of documents (`documents` of an insert, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentSequence {
    pub identifier: String,
    pub documents: Vec<Document>,
}

/// An OP_MSG: flag bits, the kind-0 body and any kind-1 document sequences.
#[derive(Debug, Clone, PartialEq)]
pub struct OpMsg {
    pub flags: u32,
    pub body: Document,
    pub sequences: Vec<DocumentSequence>,
}

impl OpMsg {
    pub fn new(body: Document) -> Self {
        OpMsg {
            flags: 0,
            body,
            sequences: Vec::new(),
        }
    }

    pub fn more_to_come(&self) -> bool {
        self.flags & MORE_TO_COME != 0
    }
}

/// A decoded reply from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Msg(OpMsg),
    /// Legacy OP_REPLY: its documents (a command answer holds exactly one).
    Legacy {
        response_flags: i32,
        cursor_id: i64,
        documents: Vec<Document>,
    },
}

impl Reply {
    /// The command answer: the OP_MSG body, or the first OP_REPLY document.
    pub fn into_body(self) -> Result<Document> {
        match self {
            Reply::Msg(msg) => Ok(msg.body),
            Reply::Legacy { documents, .. } => documents
                .into_iter()
                .next()
                .ok_or_else(|| Error::protocol("OP_REPLY without documents")),
        }
    }
}

/// Encodes an OP_MSG with the given request id. `checksum` appends a CRC-32C.
pub fn encode_op_msg(request_id: i32, msg: &OpMsg, checksum: bool) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    let flags = if checksum {
        msg.flags | CHECKSUM_PRESENT
    } else {
        msg.flags & !CHECKSUM_PRESENT
    };
    out.extend_from_slice(&flags.to_le_bytes());
    out.push(0);
    msg.body.to_writer(&mut out)?;
    for seq in &msg.sequences {
        if seq.identifier.as_bytes().contains(&0) {
            return Err(Error::protocol("document sequence identifier contains NUL"));
        }
        out.push(1);
        let size_at = out.len();
        out.extend_from_slice(&[0u8; 4]);
        out.extend_from_slice(seq.identifier.as_bytes());
        out.push(0);
        for doc in &seq.documents {
            doc.to_writer(&mut out)?;
        }
        let size = len_i32(out.len() - size_at)?;
        out[size_at..size_at + 4].copy_from_slice(&size.to_le_bytes());
    }
    if checksum {
        // The length must cover the checksum before the checksum is computed.
        let total = len_i32(out.len() + 4)?;
        out[0..4].copy_from_slice(&total.to_le_bytes());
        write_header_tail(&mut out, request_id);
        let crc = crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
    } else {
        let total = len_i32(out.len())?;
        out[0..4].copy_from_slice(&total.to_le_bytes());
        write_header_tail(&mut out, request_id);
    }
    Ok(out)
}

/// Encodes a legacy OP_QUERY of one command document on `db`'s `$cmd` collection, asking for one
/// answer. Servers take only the connection's first `hello` this way (the handshake in which
/// drivers ask for speculative authentication); everything else goes as OP_MSG.
pub fn encode_op_query(request_id: i32, db: &str, command: &Document) -> Result<Vec<u8>> {
    if db.as_bytes().contains(&0) {
        return Err(Error::protocol("database name contains NUL"));
    }
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    out.extend_from_slice(&0i32.to_le_bytes()); // flags
    out.extend_from_slice(db.as_bytes());
    out.extend_from_slice(b".$cmd\0");
    out.extend_from_slice(&0i32.to_le_bytes()); // numberToSkip
    out.extend_from_slice(&(-1i32).to_le_bytes()); // numberToReturn: one, and close the cursor
    command.to_writer(&mut out)?;
    let total = len_i32(out.len())?;
    out[0..4].copy_from_slice(&total.to_le_bytes());
    out[4..8].copy_from_slice(&request_id.to_le_bytes());
    out[8..12].copy_from_slice(&0i32.to_le_bytes());
    out[12..16].copy_from_slice(&OP_QUERY.to_le_bytes());
    Ok(out)
}

fn write_header_tail(out: &mut [u8], request_id: i32) {
    out[4..8].copy_from_slice(&request_id.to_le_bytes());
    out[8..12].copy_from_slice(&0i32.to_le_bytes());
    out[12..16].copy_from_slice(&OP_MSG.to_le_bytes());
}

fn len_i32(n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::MessageTooLarge {
        size: n,
        max: i32::MAX as usize,
    })
}

/// Reads one whole message (header included) from `r`, refusing lengths over `max_len`.
pub fn read_message<R: Read>(r: &mut R, max_len: usize) -> Result<Vec<u8>> {
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header)?;
    let len = i32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l >= HEADER_LEN)
        .ok_or_else(|| Error::protocol(format!("message length {len} is invalid")))?;
    if len > max_len {
        return Err(Error::MessageTooLarge {
            size: len,
            max: max_len,
        });
    }
    // Grown as bytes arrive: a header alone reserves little, whatever length it claims.
    let mut buf = Vec::with_capacity(len.min(64 * 1024));
    buf.extend_from_slice(&header);
    r.take((len - HEADER_LEN) as u64).read_to_end(&mut buf)?;
    if buf.len() != len {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed in the middle of a message",
        )));
    }
    Ok(buf)
}

/// Writes bytes and flushes.
pub fn write_message<W: Write>(w: &mut W, bytes: &[u8]) -> Result<()> {
    w.write_all(bytes)?;
    w.flush()?;
    Ok(())
}

/// Decodes the header of a whole message.
pub fn decode_header(bytes: &[u8]) -> Result<Header> {
    let mut cur = Cursor::new(bytes);
    let header = Header {
        message_length: cur.i32()?,
        request_id: cur.i32()?,
        response_to: cur.i32()?,
        op_code: cur.i32()?,
    };
    if usize::try_from(header.message_length).ok() != Some(bytes.len()) {
        return Err(Error::protocol(format!(
            "header says {} bytes, got {}",
            header.message_length,
            bytes.len()
        )));
    }
    Ok(header)
}

/// Decodes a whole message (header included): OP_MSG or OP_REPLY.
pub fn decode_message(bytes: &[u8]) -> Result<(Header, Reply)> {
    let header = decode_header(bytes)?;
    let body = &bytes[HEADER_LEN..];
    let reply = match header.op_code {
        OP_MSG => Reply::Msg(decode_op_msg_body(bytes, body)?),
        OP_REPLY => decode_op_reply_body(body)?,
        OP_COMPRESSED => return Err(Error::protocol("compressed messages are not supported")),
        other => return Err(Error::protocol(format!("unexpected opCode {other}"))),
    };
    Ok((header, reply))
}

fn decode_op_msg_body(whole: &[u8], body: &[u8]) -> Result<OpMsg> {
    let mut cur = Cursor::new(body);
    let flags = cur.u32()?;
    let unknown = flags & REQUIRED_MASK & !KNOWN_FLAGS;
    if unknown != 0 {
        return Err(Error::protocol(format!(
            "unknown required flag bits {unknown:#x}"
        )));
    }
    let mut sections_end = body.len();
    if flags & CHECKSUM_PRESENT != 0 {
        sections_end = sections_end
            .checked_sub(4)
            .filter(|e| *e >= 4)
            .ok_or_else(|| Error::protocol("checksum flag set but no room for it"))?;
        let stated = u32::from_le_bytes(
            body[sections_end..]
                .try_into()
                .map_err(|_| Error::protocol("bad checksum length"))?,
        );
        let computed = crc32c(&whole[..whole.len() - 4]);
        if stated != computed {
            return Err(Error::protocol("checksum mismatch"));
        }
    }
    let mut cur = Cursor::new(&body[..sections_end]);
    cur.pos = 4;
    let mut main: Option<Document> = None;
    let mut sequences = Vec::new();
    while !cur.at_end() {
        match cur.u8()? {
            0 => {
                if main.is_some() {
                    return Err(Error::protocol("more than one kind-0 section"));
                }
                main = Some(cur.document()?);
            }
            1 => {
                let start = cur.pos;
                let size = cur.i32()?;
                let size = usize::try_from(size)
                    .ok()
                    .filter(|s| *s >= 5)
                    .ok_or_else(|| Error::protocol(format!("section size {size} is invalid")))?;
                let end = start
                    .checked_add(size)
                    .filter(|e| *e <= cur.buf.len())
                    .ok_or_else(|| Error::protocol("section overruns the message"))?;
                let mut sec = Cursor::new(&cur.buf[..end]);
                sec.pos = cur.pos;
                let identifier = sec.cstring()?;
                let mut documents = Vec::new();
                while !sec.at_end() {
                    documents.push(sec.document()?);
                }
                sequences.push(DocumentSequence {
                    identifier,
                    documents,
                });
                cur.pos = end;
            }
            kind => return Err(Error::protocol(format!("unknown section kind {kind}"))),
        }
    }
    let body = main.ok_or_else(|| Error::protocol("OP_MSG without a kind-0 section"))?;
    Ok(OpMsg {
        flags,
        body,
        sequences,
    })
}

fn decode_op_reply_body(body: &[u8]) -> Result<Reply> {
    let mut cur = Cursor::new(body);
    let response_flags = cur.i32()?;
    let cursor_id = cur.i64()?;
    let _starting_from = cur.i32()?;
    let number_returned = cur.i32()?;
    let mut documents = Vec::new();
    while !cur.at_end() {
        documents.push(cur.document()?);
    }
    if usize::try_from(number_returned).ok() != Some(documents.len()) {
        return Err(Error::protocol(format!(
            "OP_REPLY announces {number_returned} documents, holds {}",
            documents.len()
        )));
    }
    Ok(Reply::Legacy {
        response_flags,
        cursor_id,
        documents,
    })
}

/// A bounds-checked reader over a byte slice.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| Error::protocol("message truncated"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        self.take(N)?
            .try_into()
            .map_err(|_| Error::protocol("message truncated"))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn cstring(&mut self) -> Result<String> {
        let rest = &self.buf[self.pos.min(self.buf.len())..];
        let nul = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| Error::protocol("unterminated string"))?;
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|_| Error::protocol("identifier is not UTF-8"))?
            .to_owned();
        self.pos += nul + 1;
        Ok(s)
    }

    fn document(&mut self) -> Result<Document> {
        let start = self.pos;
        let len = self.i32()?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l >= 5)
            .ok_or_else(|| Error::protocol(format!("BSON length {len} is invalid")))?;
        self.pos = start;
        let bytes = self.take(len)?;
        crate::depth::check(bytes)?;
        Ok(Document::from_reader(bytes)?)
    }
}

/// CRC-32C (Castagnoli), as OP_MSG checksums use.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_query_layout() {
        let command = bson::doc! {"isMaster": 1};
        let bytes = encode_op_query(7, "admin", &command).unwrap();
        let int = |at: usize| i32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!(int(0) as usize, bytes.len());
        assert_eq!((int(4), int(8), int(12)), (7, 0, OP_QUERY));
        assert_eq!(int(16), 0);
        assert_eq!(&bytes[20..31], b"admin.$cmd\0");
        assert_eq!((int(31), int(35)), (0, -1));
        assert_eq!(Document::from_reader(&bytes[39..]).unwrap(), command);
        assert!(encode_op_query(1, "a\0b", &command).is_err());
    }
    use bson::doc;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn op_msg_round_trip_with_sequence_and_checksum() {
        for checksum in [false, true] {
            let msg = OpMsg {
                flags: 0,
                body: doc! {"insert": "c", "$db": "d"},
                sequences: vec![DocumentSequence {
                    identifier: "documents".into(),
                    documents: vec![doc! {"a": 1}, doc! {"b": "x"}],
                }],
            };
            let bytes = encode_op_msg(7, &msg, checksum).unwrap();
            let (header, reply) = decode_message(&bytes).unwrap();
            assert_eq!(header.request_id, 7);
            assert_eq!(header.op_code, OP_MSG);
            assert_eq!(header.message_length as usize, bytes.len());
            let Reply::Msg(got) = reply else {
                panic!("expected OP_MSG")
            };
            assert_eq!(got.body, msg.body);
            assert_eq!(got.sequences, msg.sequences);
            assert_eq!(got.flags & CHECKSUM_PRESENT != 0, checksum);
        }
    }

    #[test]
    fn ping_matches_the_known_bytes() {
        // The same bytes scripts/dev-services sends as its FerretDB health check.
        let bytes = encode_op_msg(1, &OpMsg::new(doc! {"ping": 1, "$db": "admin"}), false).unwrap();
        let mut expected = vec![
            0x33, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xdd, 0x07, 0, 0, 0, 0, 0, 0, 0,
        ];
        expected.extend_from_slice(
            b"\x1e\x00\x00\x00\x10ping\x00\x01\x00\x00\x00\x02$db\x00\x06\x00\x00\x00admin\x00\x00",
        );
        assert_eq!(bytes, expected);
    }

    #[test]
    fn corrupted_checksum_is_rejected() {
        let mut bytes = encode_op_msg(1, &OpMsg::new(doc! {"ping": 1}), true).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert!(matches!(decode_message(&bytes), Err(Error::Protocol(_))));
    }

    #[test]
    fn unknown_required_flag_is_rejected_and_optional_ignored() {
        let mut msg = OpMsg::new(doc! {"ok": 1});
        msg.flags = 1 << 5;
        let bytes = encode_op_msg(1, &msg, false).unwrap();
        assert!(decode_message(&bytes).is_err());
        msg.flags = 1 << 20;
        let bytes = encode_op_msg(1, &msg, false).unwrap();
        assert!(decode_message(&bytes).is_ok());
    }

    #[test]
    fn more_to_come_is_reported() {
        let mut msg = OpMsg::new(doc! {"ok": 1});
        msg.flags = MORE_TO_COME;
        let bytes = encode_op_msg(1, &msg, false).unwrap();
        let (_, Reply::Msg(got)) = decode_message(&bytes).unwrap() else {
            panic!("expected OP_MSG")
        };
        assert!(got.more_to_come());
    }

    #[test]
    fn legacy_op_reply_decodes() {
        let doc = doc! {"ismaster": true, "ok": 1.0};
        let mut docbytes = Vec::new();
        doc.to_writer(&mut docbytes).unwrap();
        let mut bytes = Vec::new();
        let len = (16 + 20 + docbytes.len()) as i32;
        for v in [len, 9, 3, OP_REPLY, 8] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes.extend_from_slice(&0i64.to_le_bytes());
        bytes.extend_from_slice(&0i32.to_le_bytes());
        bytes.extend_from_slice(&1i32.to_le_bytes());
        bytes.extend_from_slice(&docbytes);
        let (header, reply) = decode_message(&bytes).unwrap();
        assert_eq!(header.response_to, 3);
        assert_eq!(reply.into_body().unwrap(), doc);
    }

    #[test]
    fn truncations_and_bad_lengths_are_errors() {
        let msg = OpMsg {
            flags: 0,
            body: doc! {"insert": "c"},
            sequences: vec![DocumentSequence {
                identifier: "documents".into(),
                documents: vec![doc! {"a": 1}],
            }],
        };
        let bytes = encode_op_msg(1, &msg, true).unwrap();
        for cut in 0..bytes.len() {
            let mut short = bytes[..cut].to_vec();
            if short.len() >= 4 {
                short[0..4].copy_from_slice(&(cut as i32).to_le_bytes());
            }
            assert!(decode_message(&short).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn read_message_refuses_oversized_and_short_lengths() {
        let mut big = Vec::new();
        big.extend_from_slice(&1_000_000i32.to_le_bytes());
        big.extend_from_slice(&[0u8; 12]);
        assert!(matches!(
            read_message(&mut big.as_slice(), 1000),
            Err(Error::MessageTooLarge { .. })
        ));
        let mut small = Vec::new();
        small.extend_from_slice(&3i32.to_le_bytes());
        small.extend_from_slice(&[0u8; 12]);
        assert!(matches!(
            read_message(&mut small.as_slice(), 1000),
            Err(Error::Protocol(_))
        ));
        let mut eof = Vec::new();
        eof.extend_from_slice(&40i32.to_le_bytes());
        eof.extend_from_slice(&[0u8; 20]);
        assert!(matches!(
            read_message(&mut eof.as_slice(), 1000),
            Err(Error::Io(_))
        ));
    }
}

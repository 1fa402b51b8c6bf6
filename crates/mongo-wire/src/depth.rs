//! How deep a BSON document nests, measured without recursion before the `bson` crate decodes
//! it: that decoder recurses once per level with no limit of its own, so a hostile reply nested
//! some thousands deep (tens of KB) would overflow the stack and abort the process (trap the
//! wasm instance) instead of failing as bad input.

use crate::error::{Error, Result};

/// Levels of documents and arrays allowed: MongoDB refuses documents nested deeper than 200
/// (`maxBSONDepth`), and a reply wraps them in a few more (`cursor`, `firstBatch`). An
/// optimised build decodes 400 levels within 1 MiB of stack.
pub const MAX_DEPTH: usize = 210;

/// `Ok` if `doc` (one whole BSON document) nests at most [`MAX_DEPTH`] levels; a document
/// malformed on the way is refused too.
pub fn check(doc: &[u8]) -> Result<()> {
    let malformed = || Error::protocol("malformed BSON document");
    let length_at = |pos: usize| -> Result<usize> {
        let bytes = doc.get(pos..pos + 4).ok_or_else(malformed)?;
        let n = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        usize::try_from(n).map_err(|_| malformed())
    };
    // Where each open document ends (the offset of its terminating NUL), innermost last.
    let mut ends: Vec<usize> = Vec::new();
    let mut pos = 0;
    let mut open_at = Some(0);
    loop {
        if let Some(start) = open_at.take() {
            let len = length_at(start)?;
            if len < 5 {
                return Err(malformed());
            }
            let end = start.checked_add(len - 1).ok_or_else(malformed)?;
            if ends.last().is_some_and(|outer| end >= *outer) || end >= doc.len() {
                return Err(malformed());
            }
            if ends.len() == MAX_DEPTH {
                return Err(Error::protocol(format!(
                    "BSON document nested deeper than {MAX_DEPTH} levels"
                )));
            }
            ends.push(end);
            pos = start + 4;
        }
        let Some(&end) = ends.last() else {
            break;
        };
        if pos == end {
            if doc[pos] != 0 {
                return Err(malformed());
            }
            pos += 1;
            ends.pop();
            continue;
        }
        let kind = doc[pos];
        pos += 1;
        let name = doc.get(pos..end).ok_or_else(malformed)?;
        pos += name.iter().position(|b| *b == 0).ok_or_else(malformed)? + 1;
        let skip = match kind {
            0x03 | 0x04 => {
                open_at = Some(pos);
                continue;
            }
            // JavaScript code with scope: total length, the code as a string, the scope.
            0x0F => {
                let code = length_at(pos + 4)?;
                open_at = Some(pos + 8 + code);
                continue;
            }
            0x01 | 0x09 | 0x11 | 0x12 => 8,
            0x07 => 12,
            0x08 => 1,
            0x10 => 4,
            0x13 => 16,
            0x06 | 0x0A | 0x7F | 0xFF => 0,
            0x02 | 0x0D | 0x0E => 4 + length_at(pos)?,
            0x05 => 5 + length_at(pos)?,
            0x0C => 16 + length_at(pos)?,
            // A regular expression: pattern and options, two C strings.
            0x0B => {
                let rest = doc.get(pos..end).ok_or_else(malformed)?;
                let mut nuls = rest.iter().enumerate().filter(|(_, b)| **b == 0);
                nuls.nth(1).ok_or_else(malformed)?.0 + 1
            }
            _ => return Err(malformed()),
        };
        pos = pos
            .checked_add(skip)
            .filter(|p| *p <= end)
            .ok_or_else(malformed)?;
    }
    if pos != doc.len() {
        return Err(malformed());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, Bson, Document};

    /// A document `levels` deep, built as bytes (the bson crate would recurse to write it).
    fn nested(levels: usize) -> Vec<u8> {
        let mut inner = vec![5, 0, 0, 0, 0];
        for _ in 1..levels {
            // {"d": inner}: length, type 3, "d\0", inner, NUL.
            let len = 4 + 1 + 2 + inner.len() + 1;
            let mut outer = (len as i32).to_le_bytes().to_vec();
            outer.extend_from_slice(&[3, b'd', 0]);
            outer.extend_from_slice(&inner);
            outer.push(0);
            inner = outer;
        }
        inner
    }

    #[test]
    fn every_kind_of_value_is_walked() {
        let scope = doc! {"x": [1, {"y": "z"}]};
        let document = doc! {
            "double": 1.5, "string": "s", "doc": {"a": {"b": 1}}, "array": [1, [2, [3]]],
            "binary": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![1, 2] },
            "undefined": Bson::Undefined, "oid": bson::oid::ObjectId::new(), "bool": true,
            "date": bson::DateTime::now(), "null": Bson::Null,
            "regex": bson::Regex { pattern: "a.*".into(), options: "i".into() },
            "code": Bson::JavaScriptCode("f()".into()),
            "scoped": Bson::JavaScriptCodeWithScope(bson::JavaScriptCodeWithScope { code: "g()".into(), scope }),
            "int32": 7, "timestamp": bson::Timestamp { time: 1, increment: 2 }, "int64": 8_i64,
            "decimal": bson::Decimal128::from_bytes([0; 16]), "min": Bson::MinKey, "max": Bson::MaxKey,
        };
        let mut bytes = Vec::new();
        document.to_writer(&mut bytes).unwrap();
        check(&bytes).unwrap();
        // Every strict prefix, and any byte changed to an unknown type, is refused, never a panic.
        for n in 0..bytes.len() {
            assert!(check(&bytes[..n]).is_err(), "prefix {n}");
        }
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] = 0x42;
            let _ = check(&bad);
        }
    }

    #[test]
    fn depth_is_bounded_without_recursion() {
        check(&nested(MAX_DEPTH)).unwrap();
        // What passes decodes (on a big stack: unoptimised builds take far more per level).
        let allowed = nested(MAX_DEPTH);
        let decoded = std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || Document::from_reader(&allowed[..]).is_ok())
            .unwrap()
            .join()
            .unwrap();
        assert!(decoded);
        let error = check(&nested(MAX_DEPTH + 1)).unwrap_err().to_string();
        assert!(error.contains("nested deeper than 210 levels"), "{error}");
        // Deep enough to overflow a recursive decoder on a small stack: refused all the same.
        let deep = nested(50_000);
        let refused = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || check(&deep).is_err())
            .unwrap()
            .join()
            .unwrap();
        assert!(refused);
    }
}

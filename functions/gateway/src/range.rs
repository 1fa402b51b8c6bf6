//! `Range: bytes=...` on a download (RFC 9110 §14): one range is served as 206, several as the
//! whole file (allowed by the RFC), an unsatisfiable one as 416.

/// What to send of a file of a known length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// The whole file, 200.
    Full,
    /// Bytes `start..=end`, 206 with `Content-Range: bytes start-end/len`.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

impl Selection {
    /// The first byte and the number of bytes to send for a file of `len` bytes.
    pub fn span(self, len: u64) -> (u64, u64) {
        match self {
            Selection::Full | Selection::Unsatisfiable => (0, len),
            Selection::Partial { start, end } => (start, end - start + 1),
        }
    }
}

/// Reads the `Range` header (if any) against a file of `len` bytes. A header that is not a
/// valid `bytes` range set is ignored (the RFC says so), which gives the whole file.
pub fn select(range: Option<&str>, len: u64) -> Selection {
    let Some(spec) = range.map(str::trim) else {
        return Selection::Full;
    };
    let Some(set) = spec
        .split_once('=')
        .filter(|(unit, _)| unit.trim().eq_ignore_ascii_case("bytes"))
        .map(|(_, set)| set.trim())
    else {
        return Selection::Full;
    };
    if set.contains(',') {
        // Several ranges: a multipart/byteranges answer is optional; send it all.
        return Selection::Full;
    }
    let Some((first, last)) = set.split_once('-') else {
        return Selection::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Digits only: too many of them is a position past any file, not a syntax error.
        Some(s.parse::<u64>().unwrap_or(u64::MAX))
    };
    match (first.is_empty(), last.is_empty()) {
        // `bytes=-N`: the last N bytes.
        (true, false) => match number(last) {
            Some(0) => Selection::Unsatisfiable,
            Some(_) if len == 0 => Selection::Unsatisfiable,
            Some(n) => Selection::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
            None => Selection::Full,
        },
        // `bytes=A-`: from A to the end.
        (false, true) => match number(first) {
            Some(start) if start < len => Selection::Partial {
                start,
                end: len - 1,
            },
            Some(_) => Selection::Unsatisfiable,
            None => Selection::Full,
        },
        // `bytes=A-B`.
        (false, false) => match (number(first), number(last)) {
            (Some(start), Some(end)) if start <= end => {
                if start >= len {
                    Selection::Unsatisfiable
                } else {
                    Selection::Partial {
                        start,
                        end: end.min(len - 1),
                    }
                }
            }
            _ => Selection::Full,
        },
        (true, true) => Selection::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Selection::*;

    #[test]
    fn no_header_or_other_units_give_the_whole_file() {
        assert_eq!(select(None, 10), Full);
        assert_eq!(select(Some("items=0-1"), 10), Full);
        assert_eq!(select(Some("bytes"), 10), Full);
        assert_eq!(select(Some("bytes=a-b"), 10), Full);
        assert_eq!(select(Some("bytes=5-2"), 10), Full);
        assert_eq!(select(Some("bytes=-"), 10), Full);
        assert_eq!(select(Some("bytes=+1-2"), 10), Full);
    }

    #[test]
    fn single_ranges() {
        assert_eq!(select(Some("bytes=0-0"), 10), Partial { start: 0, end: 0 });
        assert_eq!(select(Some("bytes=2-5"), 10), Partial { start: 2, end: 5 });
        assert_eq!(select(Some("bytes=2-"), 10), Partial { start: 2, end: 9 });
        assert_eq!(
            select(Some("bytes=8-100"), 10),
            Partial { start: 8, end: 9 }
        );
        assert_eq!(select(Some("bytes=-3"), 10), Partial { start: 7, end: 9 });
        assert_eq!(select(Some("bytes=-30"), 10), Partial { start: 0, end: 9 });
        assert_eq!(
            select(Some(" Bytes = 1 - 2 "), 10),
            Partial { start: 1, end: 2 }
        );
        assert_eq!(Partial { start: 2, end: 5 }.span(10), (2, 4));
        assert_eq!(Full.span(10), (0, 10));
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(select(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(select(Some("bytes=10-20"), 10), Unsatisfiable);
        assert_eq!(select(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(select(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(select(Some("bytes=-5"), 0), Unsatisfiable);
        assert_eq!(
            select(Some("bytes=99999999999999999999999-"), 10),
            Unsatisfiable
        );
    }

    #[test]
    fn several_ranges_give_the_whole_file() {
        assert_eq!(select(Some("bytes=0-1,4-5"), 10), Full);
    }
}

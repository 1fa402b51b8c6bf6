//! One route pattern, parsed into segments, matched against a path and ranked against other
//! patterns: the semantics of the `routefinder` crate (0.5) that Spin's HTTP trigger builds its
//! router on, re-implemented here so that matching allocates nothing until a route is chosen.

use std::cmp::Ordering;

/// A piece of a route pattern. `/hello/:planet/*` is `[Exact(hello), Slash, Param(planet), Slash,
/// Wildcard]`; leading and trailing slashes are not segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Matches one `/`.
    Slash,
    /// Matches one `.` (only where a dot follows something other than literal text).
    Dot,
    /// Matches this text (a dot right after literal text is appended to that text).
    Exact(Box<str>),
    /// `:name`: captures up to the next `/` (or `.`, when a dot follows in the pattern).
    Param(Box<str>),
    /// `*`: captures the rest of the path, possibly nothing.
    Wildcard,
}

impl Segment {
    /// routefinder's precedence of one segment over another, compared position by position.
    /// Literal text beats a parameter, which beats a wildcard. Slashes and dots rank as equals of
    /// each other, a dot above and a slash below everything else: not a total order, but it is
    /// the one Spin ranks by.
    fn rank(&self, other: &Segment) -> Ordering {
        use Segment::*;
        match (self, other) {
            (Exact(_), Exact(_))
            | (Slash, Slash)
            | (Dot, Slash)
            | (Slash, Dot)
            | (Dot, Dot)
            | (Param(_), Param(_))
            | (Wildcard, Wildcard) => Ordering::Equal,
            (Dot, _) | (Exact(_), _) => Ordering::Greater,
            (Param(_), Exact(_)) => Ordering::Less,
            (Param(_), _) => Ordering::Greater,
            (Wildcard, Exact(_)) | (Wildcard, Param(_)) => Ordering::Less,
            (Wildcard, _) => Ordering::Greater,
            (Slash, _) => Ordering::Less,
        }
    }
}

/// A parsed route pattern.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    segments: Vec<Segment>,
    dots: usize,
}

impl Spec {
    /// Parses a pattern the way routefinder does. The errors are routefinder's, word for word.
    pub(crate) fn parse(source: &str) -> Result<Spec, String> {
        let trimmed = source.trim_start_matches('/').trim_end_matches('/');
        let mut segments: Vec<Segment> = Vec::new();
        let mut preceded_by: Option<char> = None;
        let mut rest = trimmed;
        loop {
            let end = rest.find(['.', '/']).unwrap_or(rest.len());
            let section = &rest[..end];
            let segment = if section == "*" {
                Some(Segment::Wildcard)
            } else if section.starts_with('*') {
                return Err(format!(
                    "since there can only be one wildcard, it doesn't need a name. replace `{section}` with `*`"
                ));
            } else if section == ":" {
                return Err("params must be named".to_owned());
            } else if let Some(name) = section.strip_prefix(':') {
                Some(Segment::Param(name.into()))
            } else if section.is_empty() {
                None
            } else {
                Some(Segment::Exact(section.into()))
            };

            if preceded_by == Some('.') {
                match segments.last_mut() {
                    Some(Segment::Exact(text)) => *text = format!("{text}.").into(),
                    _ => segments.push(Segment::Dot),
                }
            }
            if let Some(segment) = segment {
                if preceded_by == Some('/') {
                    segments.push(Segment::Slash);
                }
                segments.push(segment);
            }

            if end == rest.len() {
                break;
            }
            preceded_by = rest[end..].chars().next();
            rest = &rest[end + 1..];
        }

        let dots = segments
            .iter()
            .filter(|s| matches!(s, Segment::Dot))
            .count();
        Ok(Spec { segments, dots })
    }

    /// True when a `*` is followed by more pattern. routefinder accepts such a pattern but panics
    /// on the first request that reaches it, so the router refuses it up front.
    pub(crate) fn has_inner_wildcard(&self) -> bool {
        self.segments
            .iter()
            .position(|s| matches!(s, Segment::Wildcard))
            .is_some_and(|i| i + 1 < self.segments.len())
    }

    /// The names of the `:name` segments, in order.
    pub(crate) fn param_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(name) => Some(&**name),
            _ => None,
        })
    }

    /// Matches `path` (the request path, untrimmed). Each capture (parameters, then the wildcard
    /// if any, in pattern order) is handed to `capture`; nothing is allocated here.
    pub(crate) fn matches<'p>(&self, path: &'p str, mut capture: impl FnMut(&'p str)) -> bool {
        let mut path = path.trim_start_matches('/').trim_end_matches('/');
        let mut segments = self.segments.iter().peekable();
        while let Some(segment) = segments.next() {
            path = match segment {
                Segment::Exact(text) => match path.strip_prefix(&**text) {
                    Some(rest) => rest,
                    None => return false,
                },
                Segment::Param(_) => {
                    if path.is_empty() {
                        return false;
                    }
                    match segments.peek() {
                        None | Some(Segment::Slash) => {
                            let end = path.find('/').unwrap_or(path.len());
                            capture(&path[..end]);
                            &path[end..]
                        }
                        Some(Segment::Dot) => {
                            let Some(index) = path.find(['.', '/']) else {
                                return false;
                            };
                            // routefinder looks the byte index up as a character index; the two
                            // differ only for non-ASCII paths, where Spin's quirk is kept.
                            if path.chars().nth(index) == Some('.') {
                                capture(&path[..index]);
                                &path[index..]
                            } else {
                                return false;
                            }
                        }
                        // The parser never puts anything else after a parameter.
                        Some(_) => return false,
                    }
                }
                Segment::Wildcard => {
                    capture(path);
                    ""
                }
                Segment::Slash => match (path.starts_with('/'), segments.peek()) {
                    (true, Some(_)) => &path[1..],
                    (false, None) | (false, Some(Segment::Wildcard)) if path.is_empty() => path,
                    _ => return false,
                },
                Segment::Dot => match path.strip_prefix('.') {
                    Some(rest) => rest,
                    None => return false,
                },
            };
        }
        path.is_empty() || path == "/"
    }

    /// routefinder's ordering of two patterns (its `Ord for RouteSpec`): `Less` means `self` is
    /// tried first. It never answers `Equal`: of two patterns that rank the same, the one added
    /// later is `Greater`, so ties keep the order in which routes were added.
    pub(crate) fn precedence(&self, other: &Spec) -> Ordering {
        self.segments
            .iter()
            .zip(&other.segments)
            .map(|(mine, theirs)| mine.rank(theirs))
            .chain(std::iter::once_with(|| self.dots.cmp(&other.dots)))
            .chain(std::iter::once_with(|| {
                other.segments.len().cmp(&self.segments.len())
            }))
            .find(|o| *o != Ordering::Equal)
            .unwrap_or(Ordering::Less)
            .reverse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(route: &str) -> Vec<Segment> {
        Spec::parse(route).unwrap().segments
    }

    fn exact(s: &str) -> Segment {
        Segment::Exact(s.into())
    }

    #[test]
    fn parses_like_routefinder() {
        use Segment::*;
        assert_eq!(segs("/"), vec![]);
        assert_eq!(segs(""), vec![]);
        assert_eq!(segs("/foo/bar/"), vec![exact("foo"), Slash, exact("bar")]);
        assert_eq!(segs("/foo//bar"), vec![exact("foo"), Slash, exact("bar")]);
        assert_eq!(segs("/foo.json"), vec![exact("foo."), exact("json")]);
        assert_eq!(
            segs("/:name.json"),
            vec![Param("name".into()), Dot, exact("json")]
        );
        assert_eq!(
            segs("/.well-known/spin/*"),
            vec![
                Dot,
                exact("well-known"),
                Slash,
                exact("spin"),
                Slash,
                Wildcard
            ]
        );
        assert_eq!(segs("/foo..."), vec![exact("foo...")]);
        assert_eq!(segs("/a*b"), vec![exact("a*b")]);
        assert_eq!(
            Spec::parse("/*x").unwrap_err(),
            "since there can only be one wildcard, it doesn't need a name. replace `*x` with `*`"
        );
        assert_eq!(Spec::parse("/a/:/b").unwrap_err(), "params must be named");
        assert!(Spec::parse("/a/*/b").unwrap().has_inner_wildcard());
        assert!(!Spec::parse("/a/:b/*").unwrap().has_inner_wildcard());
    }
}

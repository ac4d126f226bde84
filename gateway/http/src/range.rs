//! `Range` (blob reads) and `Content-Range` (upload chunks) header parsing.

use pier_storage::RangeSpec;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error(
        "malformed Range header {0:?}: expected bytes=START-END, bytes=START- or bytes=-SUFFIX"
    )]
    Malformed(String),
    #[error("Range header {0:?} asks for several ranges; only one is supported")]
    Multiple(String),
    #[error("malformed Content-Range header {0:?}: expected START-END")]
    MalformedContentRange(String),
}

fn num(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a `Range` request header. Units other than `bytes` are ignored (`Ok(None)`), as
/// RFC 9110 allows.
pub fn parse_range(header: &str) -> Result<Option<RangeSpec>, RangeError> {
    let h = header.trim();
    let Some((unit, spec)) = h.split_once('=') else {
        return Err(RangeError::Malformed(header.to_owned()));
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ok(None);
    }
    if spec.contains(',') {
        return Err(RangeError::Multiple(header.to_owned()));
    }
    let (a, b) = spec
        .trim()
        .split_once('-')
        .ok_or_else(|| RangeError::Malformed(header.to_owned()))?;
    let bad = || RangeError::Malformed(header.to_owned());
    let r = match (a.trim(), b.trim()) {
        ("", n) => RangeSpec::Suffix(num(n).ok_or_else(bad)?),
        (a, "") => RangeSpec::From(num(a).ok_or_else(bad)?),
        (a, b) => {
            let (a, b) = (num(a).ok_or_else(bad)?, num(b).ok_or_else(bad)?);
            if b < a {
                return Err(bad());
            }
            RangeSpec::FromTo(a, b)
        }
    };
    Ok(Some(r))
}

/// Parses an upload chunk's `Content-Range`: `START-END` (as docker sends it), also accepting
/// `bytes START-END/TOTAL`. Returns the inclusive range.
pub fn parse_content_range(header: &str) -> Result<(u64, u64), RangeError> {
    let bad = || RangeError::MalformedContentRange(header.to_owned());
    let h = header.trim();
    let h = h
        .strip_prefix("bytes")
        .map(|s| s.trim_start_matches([' ', '=']))
        .unwrap_or(h);
    let h = h.split('/').next().unwrap_or(h);
    let (a, b) = h.split_once('-').ok_or_else(bad)?;
    let (a, b) = (
        num(a.trim()).ok_or_else(bad)?,
        num(b.trim()).ok_or_else(bad)?,
    );
    if b < a {
        return Err(bad());
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9"), Ok(Some(RangeSpec::FromTo(0, 9))));
        assert_eq!(parse_range("bytes=10-"), Ok(Some(RangeSpec::From(10))));
        assert_eq!(parse_range("bytes=-5"), Ok(Some(RangeSpec::Suffix(5))));
        assert_eq!(parse_range("items=0-1"), Ok(None));
        assert!(matches!(
            parse_range("bytes=abc"),
            Err(RangeError::Malformed(_))
        ));
        assert!(matches!(
            parse_range("bytes=5-1"),
            Err(RangeError::Malformed(_))
        ));
        assert!(matches!(
            parse_range("bytes=-"),
            Err(RangeError::Malformed(_))
        ));
        assert!(matches!(
            parse_range("bytes=0-1,3-4"),
            Err(RangeError::Multiple(_))
        ));
        assert!(matches!(
            parse_range("bytes=+1-2"),
            Err(RangeError::Malformed(_))
        ));
        assert!(matches!(
            parse_range("garbage"),
            Err(RangeError::Malformed(_))
        ));
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-1023"), Ok((0, 1023)));
        assert_eq!(parse_content_range("bytes 5-9/100"), Ok((5, 9)));
        assert_eq!(parse_content_range("bytes=5-9"), Ok((5, 9)));
        assert!(parse_content_range("9-5").is_err());
        assert!(parse_content_range("x").is_err());
        assert!(parse_content_range("-5").is_err());
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = parse_range(&s);
            let _ = parse_content_range(&s);
        }

        #[test]
        fn from_to_roundtrips(a in 0u64..1 << 40, len in 0u64..1 << 20) {
            prop_assert_eq!(parse_range(&format!("bytes={}-{}", a, a + len)), Ok(Some(RangeSpec::FromTo(a, a + len))));
            prop_assert_eq!(parse_content_range(&format!("{}-{}", a, a + len)), Ok((a, a + len)));
        }
    }
}

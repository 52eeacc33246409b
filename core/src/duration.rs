//! The one duration grammar weir reads, on the command line (`--resync-interval 5m`) and in
//! BackendTrafficPolicy fields (`timeouts.connect: 250ms`): Gateway API's, one to four
//! `<1-5 digits><h|m|s|ms>` groups, e.g. `250ms`, `2s`, `1m30s`. The CRD schema's
//! [`crate::crd::DURATION_PATTERN`] is the same grammar as a regular expression.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration (use e.g. 250ms, 2s, 1m30s; units h, m, s, ms)")]
pub struct DurationError(pub String);

pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError(text.to_string());
    if text.is_empty() {
        return Err(bad());
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    let mut groups = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let n: u32 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        total += unit * n;
        groups += 1;
        if groups > 4 {
            return Err(bad());
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: [(&str, u64); 9] = [
        ("250ms", 250),
        ("2s", 2_000),
        ("1m30s", 90_000),
        ("1h", 3_600_000),
        ("1s500ms", 1_500),
        ("5m", 300_000),
        ("0s", 0),
        ("99999ms", 99_999),
        ("1h1m1s1ms", 3_661_001),
    ];
    const BAD: [&str; 15] = [
        "",
        "2 parsecs",
        "2",
        "s",
        "1.5s",
        "-1s",
        "1d",
        "123456s",
        "1s1s1s1s1s",
        "1us",
        " 1s",
        "1s ",
        "5 min",
        "1M",
        "ms",
    ];

    #[test]
    fn the_grammar() {
        for (text, ms) in GOOD {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(ms)), "{text}");
        }
        for bad in BAD {
            let err = parse_duration(bad).unwrap_err().to_string();
            assert_eq!(err, format!("{bad:?} is not a duration (use e.g. 250ms, 2s, 1m30s; units h, m, s, ms)"));
        }
    }

    /// The parser and the CRD schema's pattern accept the same texts.
    #[test]
    fn the_crd_pattern_is_the_same_grammar() {
        let pattern = regex::Regex::new(crate::crd::DURATION_PATTERN).unwrap();
        for (text, _) in GOOD {
            assert!(pattern.is_match(text), "{text}");
        }
        for bad in BAD {
            assert!(!pattern.is_match(bad), "{bad:?}");
        }
    }
}

//! The weight arithmetic of DESIGN §1: cluster weight × annotation weight × health, in integers.
//!
//! Everything here is pure. Parsing is strict: a weight is a non-negative base-10 integer; values above
//! 100 are clamped to 100 (compatibility with the earlier Go controller); anything else is an error,
//! never a weight.

use std::fmt;

/// The largest weight weir publishes or accepts as a factor. Route53 allows up to 255, but every factor
/// of the composition is a percentage.
pub const MAX_WEIGHT: u8 = 100;

/// Annotation weight used when the Ingress has no `<prefix>/traffic-weight` annotation.
pub const DEFAULT_ANNOTATION_WEIGHT: u8 = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeightError {
    #[error("weight is empty")]
    Empty,
    #[error("weight {0:?} is negative")]
    Negative(String),
    #[error("weight {0:?} is not a whole number")]
    NotANumber(String),
    #[error("weight {0} is above {MAX_WEIGHT}")]
    OutOfRange(i128),
}

/// Parses an annotation weight. Values above 100 are clamped to 100, as the Go controller did;
/// negative numbers, fractions and garbage (`abc`, `NaN`, `Inf`, empty) are errors.
pub fn parse_annotation_weight(raw: &str) -> Result<u8, WeightError> {
    parse_non_negative(raw).map(|n| n.min(MAX_WEIGHT as u128) as u8)
}

/// Parses a weight that must already be in 0–100 (a cluster weight in the store, an operator's
/// `weir weights set`). Out-of-range values are refused rather than clamped: an operator who typed
/// 150 meant something, and weir should not guess what.
pub fn parse_strict_weight(raw: &str) -> Result<u8, WeightError> {
    let n = parse_non_negative(raw)?;
    if n > MAX_WEIGHT as u128 {
        return Err(WeightError::OutOfRange(n.min(i128::MAX as u128) as i128));
    }
    Ok(n as u8)
}

/// Checks a number that arrived already typed (a DynamoDB number, an SQLite integer).
pub fn check_strict_weight(n: i128) -> Result<u8, WeightError> {
    if n < 0 {
        return Err(WeightError::Negative(n.to_string()));
    }
    if n > MAX_WEIGHT as i128 {
        return Err(WeightError::OutOfRange(n));
    }
    Ok(n as u8)
}

fn parse_non_negative(raw: &str) -> Result<u128, WeightError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(WeightError::Empty);
    }
    let digits = s.strip_prefix('+').unwrap_or(s);
    if let Some(rest) = s.strip_prefix('-') {
        if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
            return Err(WeightError::Negative(s.to_string()));
        }
        return Err(WeightError::NotANumber(s.to_string()));
    }
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WeightError::NotANumber(s.to_string()));
    }
    // Very long digit strings are still non-negative integers: saturate, they clamp or fail range.
    Ok(digits.parse::<u128>().unwrap_or(u128::MAX))
}

/// The factors that make one host's record weight in this cluster, kept so that `weir explain` and the
/// golden files can show every one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WeightFactors {
    /// `C`: this cluster's weight (DesiredWeight being applied).
    pub cluster: u8,
    /// `A`: the annotation weight (100 when absent).
    pub annotation: u8,
    /// `H`: false when no backend of the host has a ready endpoint here, or the Ingress is being deleted.
    pub healthy: bool,
}

impl WeightFactors {
    /// `W = H × ceil(C × A / 100)`, in integers, each factor clamped to 100 first.
    pub fn record_weight(self) -> u8 {
        if !self.healthy {
            return 0;
        }
        compose(self.cluster, self.annotation)
    }
}

/// `ceil(C × A / 100)` with both factors clamped to 0–100. Exact: `(C*A + 99) / 100`.
pub fn compose(cluster: u8, annotation: u8) -> u8 {
    let c = cluster.min(MAX_WEIGHT) as u32;
    let a = annotation.min(MAX_WEIGHT) as u32;
    (c * a).div_ceil(100) as u8
}

/// A share of traffic as a fraction 0–1 of a total weight, for explain output.
pub fn share(weight: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        weight as f64 / total as f64
    }
}

impl fmt::Display for WeightFactors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "H={} × ceil(C={} × A={} / 100) = {}",
            u8::from(self.healthy),
            self.cluster,
            self.annotation,
            self.record_weight()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Go controller's test vectors: (annotation, cluster) → weight.
    #[test]
    fn compatibility_vectors() {
        let vectors = [
            ((1, 1), 1),
            ((0, 1), 0),
            ((50, 50), 25),
            ((10, 50), 5),
            ((100, 50), 50),
            ((100, 100), 100),
            ((100, 0), 0),
            ((120, 10), 10),
            ((100, 120), 100),
            ((10, 120), 10),
        ];
        for ((annotation, cluster), want) in vectors {
            assert_eq!(compose(cluster, annotation), want, "A={annotation} C={cluster}");
        }
    }

    #[test]
    fn integer_arithmetic_is_exact_where_float_was_not() {
        // float64(100*7)/100 rounds up to 8 in the Go version; 7 is right.
        assert_eq!(compose(7, 100), 7);
        assert_eq!(compose(100, 7), 7);
        // ceil, not round: 1 × 1 / 100 = 0.01 → 1, so a tiny weight never becomes 0.
        assert_eq!(compose(1, 1), 1);
        assert_eq!(compose(33, 33), 11);
    }

    #[test]
    fn unhealthy_is_zero() {
        let f = WeightFactors { cluster: 100, annotation: 100, healthy: false };
        assert_eq!(f.record_weight(), 0);
        let f = WeightFactors { cluster: 100, annotation: 100, healthy: true };
        assert_eq!(f.record_weight(), 100);
    }

    #[test]
    fn annotation_parsing() {
        assert_eq!(parse_annotation_weight("50"), Ok(50));
        assert_eq!(parse_annotation_weight(" 7 "), Ok(7));
        assert_eq!(parse_annotation_weight("0"), Ok(0));
        assert_eq!(parse_annotation_weight("120"), Ok(100));
        assert_eq!(parse_annotation_weight("99999999999999999999999999999999999999999"), Ok(100));
        assert_eq!(parse_annotation_weight(""), Err(WeightError::Empty));
        assert_eq!(parse_annotation_weight("  "), Err(WeightError::Empty));
        assert_eq!(parse_annotation_weight("-1"), Err(WeightError::Negative("-1".into())));
        for garbage in ["abc", "NaN", "Inf", "-Inf", "1.5", "1e2", "0x10", "-", "+", "5%"] {
            assert!(
                matches!(parse_annotation_weight(garbage), Err(WeightError::NotANumber(_))),
                "{garbage:?} must be refused"
            );
        }
    }

    #[test]
    fn strict_parsing_refuses_out_of_range() {
        assert_eq!(parse_strict_weight("100"), Ok(100));
        assert_eq!(parse_strict_weight("101"), Err(WeightError::OutOfRange(101)));
        assert!(parse_strict_weight("-3").is_err());
        assert!(parse_strict_weight("x").is_err());
        assert_eq!(check_strict_weight(42), Ok(42));
        assert!(check_strict_weight(-1).is_err());
        assert!(check_strict_weight(101).is_err());
    }
}

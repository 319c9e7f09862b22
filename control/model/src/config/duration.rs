//! Durations as people write them in YAML: `500ms`, `10s`, `5m`, `1h`, `30d`.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `Duration` that reads and writes as `<number><unit>` (units: ms, s, m, h, d).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span(pub Duration);

impl Span {
    pub const fn secs(s: u64) -> Self {
        Span(Duration::from_secs(s))
    }

    pub const fn millis(ms: u64) -> Self {
        Span(Duration::from_millis(ms))
    }
}

impl FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("invalid duration {s:?}: expected a whole number then a unit, like 10s")
        })?;
        let ms = match unit {
            "ms" => Some(n),
            "s" => n.checked_mul(1_000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            "d" => n.checked_mul(86_400_000),
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: missing unit (ms, s, m, h or d)"
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {other:?} (ms, s, m, h or d)"
                ))
            }
        };
        ms.map(|ms| Span(Duration::from_millis(ms)))
            .ok_or_else(|| format!("duration {s:?} is too large"))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms != 0 && ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_units() {
        for (text, ms) in [
            ("500ms", 500),
            ("10s", 10_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("30d", 2_592_000_000),
        ] {
            let span: Span = text.parse().unwrap();
            assert_eq!(span.0, Duration::from_millis(ms));
            assert_eq!(span.to_string(), text);
        }
        assert_eq!(Span::millis(1500).to_string(), "1500ms");
    }

    #[test]
    fn rejects_bad_text() {
        assert!("10".parse::<Span>().unwrap_err().contains("missing unit"));
        assert!("10y".parse::<Span>().unwrap_err().contains("unknown unit"));
        assert!("s".parse::<Span>().unwrap_err().contains("whole number"));
        assert!("1.5s".parse::<Span>().is_err());
    }
}

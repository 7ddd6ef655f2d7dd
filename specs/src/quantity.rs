//! Scalar value types of the spec language: durations (`500ms`, `30s`, `5m`, `1h`) and
//! byte sizes (`512Mi`, `1G`). Each parses from a string and prints back canonically.
//!
//! Parsing is bounded whatever the text: at most [`MAX_TEXT`] characters are looked at
//! (a longer text is refused, and messages show only its start), the arithmetic is
//! checked, and a duration is at most [`Duration::MAX`], so that adding one to a time
//! anywhere in tend cannot overflow. Each field has its own, lower bound
//! ([`crate::bounds`]).

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A duration written as one or more `<number><unit>` parts: `500ms`, `30s`, `5m`, `1h`,
/// `1d`, `1h30m`. Stored as milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(std::time::Duration);

/// The longest text read as a duration or a size; the longest real one (`1d23h59m59s999ms`)
/// is 16 characters.
pub const MAX_TEXT: usize = 64;

/// `text` for a message: at most [`MAX_TEXT`] characters, then `…`.
fn cut(text: &str) -> String {
    let mut out: String = text.chars().take(MAX_TEXT).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

impl Duration {
    /// The longest duration read: 36500 days (100 years). Every field has a lower bound of
    /// its own; this one keeps `now + duration` representable everywhere.
    pub const MAX: Duration = Duration::from_secs(36_500 * 86_400);

    /// A duration of whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    /// A duration of milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    /// The std duration.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

/// Why a duration or size could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The text is not a duration.
    #[error("invalid duration `{0}`: expected a number followed by ms, s, m, h or d (e.g. 500ms, 30s, 5m, 1h30m)")]
    Duration(String),
    /// The text is a duration longer than [`Duration::MAX`].
    #[error("duration `{0}` is longer than 36500d (100 years), the longest tend reads")]
    DurationTooLong(String),
    /// The text is not a byte size.
    #[error(
        "invalid size `{0}`: expected bytes or a number with a unit: k, M, G (powers of 1000) or Ki, Mi, Gi (powers of 1024), e.g. 512Mi"
    )]
    Size(String),
}

impl FromStr for Duration {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || QuantityError::Duration(cut(s));
        let mut rest = s.trim();
        if rest.is_empty() || rest.len() > MAX_TEXT {
            return Err(err());
        }
        let mut total: u64 = 0;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits == 0 {
                return Err(err());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| err())?;
            rest = &rest[digits..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let factor: u64 = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(err()),
            };
            rest = &rest[unit_len..];
            total = n.checked_mul(factor).and_then(|v| total.checked_add(v)).ok_or_else(err)?;
        }
        let d = Self::from_millis(total);
        if d > Self::MAX {
            return Err(QuantityError::DurationTooLong(cut(s)));
        }
        Ok(d)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(ms|s|m|h|d))+$",
            "description": "A duration: 500ms, 30s, 5m, 1h, 1d, or combined like 1h30m.",
        })
    }
}

/// A size in bytes, written as `1048576`, `512Mi`, `2G`, `100k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || QuantityError::Size(cut(s));
        let t = s.trim();
        if t.len() > MAX_TEXT {
            return Err(err());
        }
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = t[..digits].parse().map_err(|_| err())?;
        let factor: u64 = match &t[digits..] {
            "" | "B" => 1,
            "k" | "K" | "kB" => 1_000,
            "M" | "MB" => 1_000_000,
            "G" | "GB" => 1_000_000_000,
            "T" | "TB" => 1_000_000_000_000,
            "Ki" | "KiB" => 1 << 10,
            "Mi" | "MiB" => 1 << 20,
            "Gi" | "GiB" => 1 << 30,
            "Ti" | "TiB" => 1 << 40,
            _ => return Err(err()),
        };
        n.checked_mul(factor).map(Self).ok_or_else(err)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 512Mi or 2G")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom(QuantityError::Size(v.to_string())))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^[0-9]+(B|k|K|kB|M|MB|G|GB|T|TB|Ki|KiB|Mi|MiB|Gi|GiB|Ti|TiB)?$"}
            ],
            "description": "A size in bytes: 1048576, 512Mi, 2G.",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_canonically() {
        for (text, ms, canon) in [
            ("500ms", 500, "500ms"),
            ("30s", 30_000, "30s"),
            ("5m", 300_000, "5m"),
            ("1h", 3_600_000, "1h"),
            ("1h30m", 5_400_000, "1h30m"),
            ("90s", 90_000, "1m30s"),
            ("0s", 0, "0s"),
            ("2d", 172_800_000, "2d"),
        ] {
            let d: Duration = text.parse().expect(text);
            assert_eq!(d.get().as_millis(), ms, "{text}");
            assert_eq!(d.to_string(), canon, "{text}");
        }
    }

    #[test]
    fn malformed_durations_are_rejected() {
        for text in ["", "5", "m", "5 m", "5mins", "1.5s", "-1s", "s5", "99999999999999999999d"] {
            assert!(text.parse::<Duration>().is_err(), "{text:?} should fail");
        }
    }

    #[test]
    fn parsing_is_bounded_and_messages_show_only_the_start_of_a_long_text() {
        assert_eq!("36500d".parse::<Duration>(), Ok(Duration::MAX));
        assert_eq!(
            "36500d1ms".parse::<Duration>().map_err(|e| e.to_string()),
            Err("duration `36500d1ms` is longer than 36500d (100 years), the longest tend reads".into())
        );
        assert!("18446744073709551615ms".parse::<Duration>().is_err());
        assert!("18446744073709551615d".parse::<Duration>().is_err());
        assert!("18446744073709551615Ti".parse::<ByteSize>().is_err());
        let long = "1s".repeat(1000);
        let e = long.parse::<Duration>().expect_err("too long").to_string();
        assert!(e.len() < 200 && e.contains("1s1s…"), "{e}");
        let e = "1".repeat(1000).parse::<ByteSize>().expect_err("too long").to_string();
        assert!(e.len() < 300 && e.contains("11…"), "{e}");
    }

    #[test]
    fn sizes_use_decimal_and_binary_units() {
        assert_eq!("512Mi".parse::<ByteSize>(), Ok(ByteSize(512 << 20)));
        assert_eq!("2G".parse::<ByteSize>(), Ok(ByteSize(2_000_000_000)));
        assert_eq!("1024".parse::<ByteSize>(), Ok(ByteSize(1024)));
        assert!("12 apples".parse::<ByteSize>().is_err());
        assert!("Mi".parse::<ByteSize>().is_err());
    }
}

//! Sizes ([`ByteSize`], `"4 GiB"`) and shares of a total ([`Amount`], `"10%"`): their text
//! forms, parsing and TOML deserialization.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A size in bytes, written in TOML as an integer or a string with a binary or decimal unit
/// (`"512 MiB"`, `"4GiB"`, `"10 GB"`, `"4096"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A size or a share of a total (`"10%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// A fixed number of bytes.
    Bytes(u64),
    /// Percent of the total, 0 to 100.
    Percent(u8),
}

impl Amount {
    /// The amount out of `total`, never more than `total`.
    pub fn of(self, total: u64) -> u64 {
        match self {
            Self::Bytes(bytes) => bytes.min(total),
            Self::Percent(pct) => {
                let part = u128::from(total) * u128::from(pct.min(100)) / 100;
                u64::try_from(part).unwrap_or(total)
            }
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(bytes) => write!(f, "{bytes} bytes"),
            Self::Percent(pct) => write!(f, "{pct}%"),
        }
    }
}

/// Why a size or a share was rejected; each message quotes the text at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No digits before the unit.
    #[error("{0:?} is not a size (expected e.g. \"4 GiB\")")]
    NotASize(String),
    /// The number does not fit in 64 bits, before or after applying its unit.
    #[error("{0:?} is too large")]
    TooLarge(String),
    /// The unit is none of B, KB, MB, GB, TB, KiB, MiB, GiB, TiB.
    #[error("unknown size unit {0:?} (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)")]
    UnknownUnit(String),
    /// A share whose number is not a whole percentage.
    #[error("{0:?} is not a percentage from 0% to 100%")]
    NotAPercentage(String),
    /// A share over 100%.
    #[error("{0:?} is more than 100%")]
    OverHundredPercent(String),
}

/// Parses a size: digits, optional spaces, optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(SizeError::NotASize(text.to_owned()));
    }
    let value: u64 = digits
        .parse()
        .map_err(|_| SizeError::TooLarge(digits.to_owned()))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => return Err(SizeError::UnknownUnit(other.to_owned())),
    };
    value
        .checked_mul(multiplier)
        .ok_or_else(|| SizeError::TooLarge(text.to_owned()))
}

/// Parses an [`Amount`]: `"N%"` or a size.
pub fn parse_amount(text: &str) -> Result<Amount, SizeError> {
    match text.trim().strip_suffix('%') {
        Some(pct) => {
            let pct: u8 = pct
                .trim()
                .parse()
                .map_err(|_| SizeError::NotAPercentage(text.to_owned()))?;
            if pct > 100 {
                return Err(SizeError::OverHundredPercent(text.to_owned()));
            }
            Ok(Amount::Percent(pct))
        }
        None => parse_size(text).map(Amount::Bytes),
    }
}

/// An integer or a string, as TOML allows for sizes.
#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(u64),
    String(String),
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match IntOrString::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("expected a size: an integer or a string like \"4 GiB\"")
        })? {
            IntOrString::Int(bytes) => Ok(Self(bytes)),
            IntOrString::String(text) => parse_size(&text)
                .map(Self)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match IntOrString::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("expected a size (\"4 GiB\") or a share (\"10%\")")
        })? {
            IntOrString::Int(bytes) => Ok(Self::Bytes(bytes)),
            IntOrString::String(text) => parse_amount(&text).map_err(serde::de::Error::custom),
        }
    }
}

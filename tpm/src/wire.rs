//! Bounds-checked big-endian reading and writing of TPM wire structures.
//!
//! Every read names the structure being parsed, so a malformed input yields an error that says
//! what was wrong and where, never a panic.

use thiserror::Error;

/// Why bytes could not be parsed as a TPM structure.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// The input ended inside a field.
    #[error("{structure}: truncated at byte {offset} reading {field} ({need} more bytes needed)")]
    Truncated {
        /// Structure being parsed.
        structure: &'static str,
        /// Field being read.
        field: &'static str,
        /// Byte offset where the field starts.
        offset: usize,
        /// Bytes missing.
        need: usize,
    },
    /// Bytes remained after the structure ended.
    #[error("{structure}: {count} trailing bytes after byte {offset}")]
    Trailing {
        /// Structure being parsed.
        structure: &'static str,
        /// Byte offset where the structure ended.
        offset: usize,
        /// Number of unexpected bytes.
        count: usize,
    },
    /// A field held a value this parser does not accept.
    #[error("{structure}: {field} has unsupported value {value:#x} at byte {offset}")]
    BadValue {
        /// Structure being parsed.
        structure: &'static str,
        /// Field with the bad value.
        field: &'static str,
        /// The value found.
        value: u64,
        /// Byte offset of the field.
        offset: usize,
    },
    /// A sized field was larger than the structure allows.
    #[error("{structure}: {field} is {len} bytes, more than the limit of {max}")]
    TooLong {
        /// Structure being parsed.
        structure: &'static str,
        /// Field that was too long.
        field: &'static str,
        /// Its declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// A cursor over a byte slice that reads big-endian TPM fields with bounds checks.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    structure: &'static str,
}

impl<'a> Reader<'a> {
    /// Starts reading `buf` as `structure`.
    pub(crate) fn new(buf: &'a [u8], structure: &'static str) -> Self {
        Self {
            buf,
            pos: 0,
            structure,
        }
    }

    /// Current offset.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Reads `n` raw bytes.
    pub(crate) fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ParseError> {
        let rest = self.buf.len() - self.pos;
        if n > rest {
            return Err(ParseError::Truncated {
                structure: self.structure,
                field,
                offset: self.pos,
                need: n - rest,
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ParseError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, field)?);
        Ok(out)
    }

    /// Reads a u8.
    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, ParseError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// Reads a big-endian u16.
    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, ParseError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian u32.
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, ParseError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian u64.
    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, ParseError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// Reads a TPM2B: a u16 size then that many bytes, at most `max`.
    pub(crate) fn tpm2b(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<&'a [u8], ParseError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(ParseError::TooLong {
                structure: self.structure,
                field,
                len,
                max,
            });
        }
        self.bytes(len, field)
    }

    /// An error for a field whose value (read at `offset`) is not accepted.
    pub(crate) fn bad(&self, field: &'static str, value: u64, offset: usize) -> ParseError {
        ParseError::BadValue {
            structure: self.structure,
            field,
            value,
            offset,
        }
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(self) -> Result<(), ParseError> {
        let count = self.buf.len() - self.pos;
        if count == 0 {
            Ok(())
        } else {
            Err(ParseError::Trailing {
                structure: self.structure,
                offset: self.pos,
                count,
            })
        }
    }
}

/// Appends a TPM2B (u16 big-endian size, then the bytes) to `out`.
///
/// Fails (returns `None`) when `data` is longer than a u16 can describe.
pub(crate) fn put_tpm2b(out: &mut Vec<u8>, data: &[u8]) -> Option<()> {
    let len = u16::try_from(data.len()).ok()?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_detects_truncation_and_trailing_bytes() {
        let mut r = Reader::new(&[0, 1, 0, 0, 0, 2, 0, 2, 9, 9, 7], "T");
        assert_eq!(r.u16("a").unwrap(), 1);
        assert_eq!(r.u32("b").unwrap(), 2);
        assert_eq!(r.tpm2b("c", 2).unwrap(), &[9, 9]);
        let err = r.u16("d").unwrap_err();
        assert!(
            matches!(err, ParseError::Truncated { need: 1, .. }),
            "{err}"
        );
        let r = Reader::new(&[1, 2], "T");
        assert!(matches!(
            r.finish(),
            Err(ParseError::Trailing { count: 2, .. })
        ));
    }

    #[test]
    fn tpm2b_over_limit_is_rejected() {
        let mut r = Reader::new(&[0, 5, 1, 2, 3, 4, 5], "T");
        let err = r.tpm2b("f", 4).unwrap_err();
        assert_eq!(err.to_string(), "T: f is 5 bytes, more than the limit of 4");
    }
}

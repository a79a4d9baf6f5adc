//! A strict, bounds-checked reader of SMBIOS type 17 (Memory Device) records.
//!
//! The structure table is binary input from firmware: every offset is checked against the
//! record's declared length and the table's end, so a malformed table yields an error or a
//! shorter record, never a panic. Field offsets follow DMTF DSP0134 §7.18.

use super::Dimm;

const TYPE_MEMORY_DEVICE: u8 = 17;
const TYPE_END_OF_TABLE: u8 = 127;

/// `(major, minor)` from `smbios_entry_point` (`_SM_` 2.x or `_SM3_` 3.x anchor).
pub fn entry_point_version(entry: &[u8]) -> Option<(u8, u8)> {
    if entry.starts_with(b"_SM3_") {
        Some((*entry.get(7)?, *entry.get(8)?))
    } else if entry.starts_with(b"_SM_") {
        Some((*entry.get(6)?, *entry.get(7)?))
    } else {
        None
    }
}

/// Why the structure table cannot be walked; names the byte offset of the structure at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmbiosError {
    /// A structure header declares a length shorter than the header itself.
    #[error("structure at byte {offset} declares length {length} (< 4)")]
    ShortLength {
        /// Where the structure starts.
        offset: usize,
        /// Its declared length.
        length: usize,
    },
    /// A structure's formatted area runs past the end of the table.
    #[error("structure at byte {offset} runs past the table end")]
    PastEnd {
        /// Where the structure starts.
        offset: usize,
    },
    /// A structure's string-set has no double-NUL terminator.
    #[error("strings of structure at byte {offset} are not terminated")]
    Unterminated {
        /// Where the structure starts.
        offset: usize,
    },
}

/// Every populated memory device in the structure table.
pub fn memory_devices(table: &[u8], _version: Option<(u8, u8)>) -> Result<Vec<Dimm>, SmbiosError> {
    let mut dimms = Vec::new();
    let mut offset = 0;
    while offset + 4 <= table.len() {
        let kind = table[offset];
        let length = usize::from(table[offset + 1]);
        if length < 4 {
            return Err(SmbiosError::ShortLength { offset, length });
        }
        let formatted = table
            .get(offset..offset + length)
            .ok_or(SmbiosError::PastEnd { offset })?;
        let strings_start = offset + length;
        let strings_end =
            find_double_nul(table, strings_start).ok_or(SmbiosError::Unterminated { offset })?;
        let strings = split_strings(&table[strings_start..strings_end]);
        if kind == TYPE_MEMORY_DEVICE {
            if let Some(dimm) = memory_device(formatted, &strings) {
                dimms.push(dimm);
            }
        }
        if kind == TYPE_END_OF_TABLE {
            break;
        }
        offset = strings_end + 2;
    }
    Ok(dimms)
}

/// Index of the first of two consecutive NULs at or after `from` (the end of a string-set).
fn find_double_nul(table: &[u8], from: usize) -> Option<usize> {
    let tail = table.get(from..)?;
    tail.windows(2).position(|w| w == [0, 0]).map(|p| from + p)
}

fn split_strings(set: &[u8]) -> Vec<String> {
    if set.is_empty() {
        return Vec::new();
    }
    set.split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).trim().to_owned())
        .collect()
}

/// One type 17 record; `None` for an empty slot.
fn memory_device(rec: &[u8], strings: &[String]) -> Option<Dimm> {
    let u8_at = |at: usize| rec.get(at).copied();
    let u16_at = |at: usize| {
        rec.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        rec.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let string = |at: usize| -> Option<String> {
        let index = usize::from(u8_at(at)?);
        let value = strings.get(index.checked_sub(1)?)?;
        meaningful(value).then(|| value.clone())
    };
    let size_bytes = match u16_at(0x0C)? {
        0 | 0xFFFF => return None,
        0x7FFF => u64::from(u32_at(0x1C)? & 0x7FFF_FFFF) << 20,
        raw if raw & 0x8000 != 0 => u64::from(raw & 0x7FFF) << 10,
        raw => u64::from(raw) << 20,
    };
    if size_bytes == 0 {
        return None;
    }
    let speed = |base: usize, extended: usize| match u16_at(base) {
        Some(0) | None => None,
        Some(0xFFFF) => u32_at(extended).filter(|s| *s != 0),
        Some(mts) => Some(u32::from(mts)),
    };
    let width = |at: usize| u16_at(at).filter(|w| *w != 0 && *w != 0xFFFF);
    Some(Dimm {
        locator: string(0x10),
        bank_locator: string(0x11),
        size_bytes,
        memory_type: u8_at(0x12).and_then(memory_type).map(str::to_owned),
        form_factor: u8_at(0x0E).and_then(form_factor).map(str::to_owned),
        speed_mts: speed(0x15, 0x54),
        configured_speed_mts: speed(0x20, 0x58),
        manufacturer: string(0x17),
        part_number: string(0x1A),
        serial: string(0x18),
        total_width_bits: width(0x08),
        data_width_bits: width(0x0A),
    })
}

/// Firmware fills unknown strings with placeholders: treat them as absent.
fn meaningful(value: &str) -> bool {
    const PLACEHOLDERS: [&str; 8] = [
        "",
        "Not Specified",
        "Unknown",
        "None",
        "NO DIMM",
        "Undefined",
        "To Be Filled By O.E.M.",
        "00000000",
    ];
    !PLACEHOLDERS.iter().any(|p| value.eq_ignore_ascii_case(p))
}

/// DSP0134 §7.18.2 memory type.
fn memory_type(code: u8) -> Option<&'static str> {
    Some(match code {
        0x03 => "DRAM",
        0x07 => "RAM",
        0x0F => "SDRAM",
        0x11 => "RDRAM",
        0x12 => "DDR",
        0x13 => "DDR2",
        0x14 => "DDR2 FB-DIMM",
        0x18 => "DDR3",
        0x19 => "FBD2",
        0x1A => "DDR4",
        0x1B => "LPDDR",
        0x1C => "LPDDR2",
        0x1D => "LPDDR3",
        0x1E => "LPDDR4",
        0x1F => "Logical non-volatile device",
        0x20 => "HBM",
        0x21 => "HBM2",
        0x22 => "DDR5",
        0x23 => "LPDDR5",
        0x24 => "HBM3",
        _ => return None,
    })
}

/// DSP0134 §7.18.1 form factor.
fn form_factor(code: u8) -> Option<&'static str> {
    Some(match code {
        0x03 => "SIMM",
        0x05 => "Chip",
        0x09 => "DIMM",
        0x0B => "Row of chips",
        0x0C => "RIMM",
        0x0D => "SODIMM",
        0x0F => "FB-DIMM",
        0x10 => "Die",
        0x11 => "CAMM",
        _ => return None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a type 17 record (SMBIOS 3.3 layout, 0x5C bytes) with its strings.
    pub fn type17(size_mib: u32, kind: u8, form: u8, speed: u16, strings: [&str; 5]) -> Vec<u8> {
        let mut rec = vec![0u8; 0x5C];
        rec[0] = 17;
        rec[1] = 0x5C;
        rec[0x08..0x0A].copy_from_slice(&72u16.to_le_bytes());
        rec[0x0A..0x0C].copy_from_slice(&64u16.to_le_bytes());
        if size_mib >= 0x7FFF {
            rec[0x0C..0x0E].copy_from_slice(&0x7FFFu16.to_le_bytes());
            rec[0x1C..0x20].copy_from_slice(&size_mib.to_le_bytes());
        } else {
            rec[0x0C..0x0E].copy_from_slice(&(size_mib as u16).to_le_bytes());
        }
        rec[0x0E] = form;
        rec[0x10] = 1; // locator
        rec[0x11] = 2; // bank
        rec[0x12] = kind;
        rec[0x15..0x17].copy_from_slice(&speed.to_le_bytes());
        rec[0x17] = 3; // manufacturer
        rec[0x18] = 4; // serial
        rec[0x1A] = 5; // part number
        rec[0x20..0x22].copy_from_slice(&speed.to_le_bytes());
        for s in strings {
            rec.extend_from_slice(s.as_bytes());
            rec.push(0);
        }
        rec.push(0);
        rec
    }

    fn end_of_table() -> Vec<u8> {
        vec![127, 4, 0xFF, 0xFE, 0, 0]
    }

    #[test]
    fn parses_populated_and_skips_empty_slots() {
        let mut table = type17(
            32768,
            0x1A,
            0x09,
            3200,
            [
                "DIMM_A1",
                "P0 CHANNEL A",
                "Samsung",
                "0x1234",
                "M393A4K40DB3-CWE",
            ],
        );
        table.extend(type17(
            0,
            0x1A,
            0x09,
            0,
            ["DIMM_A2", "P0 CHANNEL A", "NO DIMM", "NO DIMM", "NO DIMM"],
        ));
        table.extend(end_of_table());
        let dimms = memory_devices(&table, Some((3, 3))).unwrap();
        assert_eq!(dimms.len(), 1);
        let d = &dimms[0];
        assert_eq!(d.size_bytes, 32 << 30);
        assert_eq!(d.memory_type.as_deref(), Some("DDR4"));
        assert_eq!(d.form_factor.as_deref(), Some("DIMM"));
        assert_eq!(d.speed_mts, Some(3200));
        assert_eq!(d.locator.as_deref(), Some("DIMM_A1"));
        assert_eq!(d.manufacturer.as_deref(), Some("Samsung"));
        assert_eq!(d.part_number.as_deref(), Some("M393A4K40DB3-CWE"));
        assert_eq!(d.total_width_bits, Some(72));
    }

    #[test]
    fn extended_size_and_kib_units() {
        let mut big = type17(0x10000, 0x22, 0x09, 4800, ["A", "B", "C", "D", "E"]);
        big.extend(end_of_table());
        assert_eq!(memory_devices(&big, None).unwrap()[0].size_bytes, 64 << 30);
        let mut small = type17(0, 0x0F, 0x0D, 0, ["A", "B", "C", "D", "E"]);
        small[0x0C..0x0E].copy_from_slice(&(0x8000u16 | 512).to_le_bytes());
        assert_eq!(
            memory_devices(&small, None).unwrap()[0].size_bytes,
            512 << 10
        );
    }

    #[test]
    fn malformed_tables_are_errors_not_panics() {
        let good = type17(8192, 0x1A, 0x09, 2666, ["A", "B", "C", "D", "E"]);
        for cut in 0..good.len() {
            let _ = memory_devices(&good[..cut], None);
        }
        assert_eq!(
            memory_devices(&[17, 2, 0, 0, 0, 0], None),
            Err(SmbiosError::ShortLength {
                offset: 0,
                length: 2
            })
        );
        assert_eq!(
            memory_devices(&[17, 200, 0, 0], None)
                .unwrap_err()
                .to_string(),
            "structure at byte 0 runs past the table end"
        );
        // A record shorter than the size field is skipped, not read past its end.
        assert_eq!(
            memory_devices(&[17, 8, 0, 0, 0, 0, 0, 0, 0, 0], None).unwrap(),
            vec![]
        );
        // Pseudo-random bytes never panic.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x % 256) as u8
                })
                .collect();
            let _ = memory_devices(&bytes, None);
        }
    }

    #[test]
    fn entry_points() {
        assert_eq!(
            entry_point_version(b"_SM3_\x00\x18\x03\x03\x00"),
            Some((3, 3))
        );
        assert_eq!(entry_point_version(b"_SM_\x00\x1f\x02\x08"), Some((2, 8)));
        assert_eq!(entry_point_version(b"junk"), None);
    }
}

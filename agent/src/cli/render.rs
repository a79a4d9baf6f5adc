//! Small helpers for human output: byte sizes, durations and tables.

use comfy_table::{presets, Cell, CellAlignment, ContentArrangement, Table};

/// A byte count in binary units with one decimal, e.g. `23.5 GiB`, `512 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = "B";
    for next in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    if value >= 100.0 || value.fract() < 0.05 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// A duration in seconds as `3d 4h`, `5h 12m`, `7m 3s` or `42s`.
pub fn duration_secs(secs: f64) -> String {
    let secs = secs.max(0.0) as u64;
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `value` or a dash when absent.
pub fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// A borderless table with a header row, like `kubectl get`; numeric columns right-aligned.
pub fn table(header: &[&str], right_aligned: &[usize]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| Cell::new(h.to_uppercase())));
    for &index in right_aligned {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// Indents every line of a rendered table.
pub fn indent(table: &Table, by: usize) -> String {
    let pad = " ".repeat(by);
    table
        .lines()
        .map(|line| format!("{pad}{}", line.trim_end()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1 KiB");
        assert_eq!(bytes(32 * 1024), "32 KiB");
        assert_eq!(bytes(1536 * 1024), "1.5 MiB");
        assert_eq!(bytes(24_612_000_000), "22.9 GiB");
        assert_eq!(bytes(512 * (1 << 30)), "512 GiB");
        assert_eq!(bytes(u64::MAX), "16 EiB");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(duration_secs(42.9), "42s");
        assert_eq!(duration_secs(423.0), "7m 3s");
        assert_eq!(duration_secs(18_720.0), "5h 12m");
        assert_eq!(duration_secs(273_600.0), "3d 4h");
        assert_eq!(duration_secs(-1.0), "0s");
    }
}

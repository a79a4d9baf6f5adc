//! Why a config is rejected ([`ConfigError`], [`Problem`]), and how a TOML error is traced to
//! the key path and line it is about.

use std::fmt;
use std::path::PathBuf;

/// Why a config file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key, or a value of the wrong type.
    #[error("{origin}:{line}:{column}: {key}: {message}")]
    Syntax {
        /// File name (or `<embedded default>`).
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The key path, e.g. `api.listen` (the section when no key applies).
        key: String,
        /// What was wrong.
        message: String,
    },
    /// Several keys are unknown or have a value of the wrong type: each is a
    /// [`ConfigError::Syntax`] naming its key and line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Keys(Vec<ConfigError>),
    /// Values are well-formed but do not make sense; each names its key.
    #[error("{origin}: {}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// File name.
        origin: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

/// One semantic problem with a config value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path, e.g. `telemetry.min_interval_millis`.
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Turns toml's error into one that names the key path and the line.
pub(super) fn syntax_error(text: &str, origin: &str, err: &toml::de::Error) -> ConfigError {
    let offset = err.span().map_or(0, |span| span.start).min(text.len());
    let (line, column) = line_column(text, offset);
    ConfigError::Syntax {
        origin: origin.to_owned(),
        line,
        column,
        key: key_path_at(text, offset),
        message: err.message().trim().to_owned(),
    }
}

/// Every unknown key and every value of the wrong type in `text` (a well-formed TOML document),
/// each with its key path and line, found by deserializing `T` from each key alone (one section
/// key at a time inside a table), so one bad key does not hide the next; `T` must take a
/// default for every missing key. Empty when `T` deserializes key by key.
pub(super) fn key_errors<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &str,
) -> Vec<ConfigError> {
    use toml::de::{DeTable, DeValue, Deserializer};
    use toml::Spanned;
    let Ok(doc) = DeTable::parse(text) else {
        return Vec::new();
    };
    let span = doc.span();
    // `T` from the document holding only `key = value`.
    let alone = |key: &Spanned<toml::de::DeString<'_>>, value: Spanned<DeValue<'_>>| {
        let mut table = DeTable::new();
        table.insert(key.clone(), value);
        T::deserialize(Deserializer::from(Spanned::new(span.clone(), table))).err()
    };
    let mut out = Vec::new();
    for (key, value) in doc.get_ref() {
        let Some(err) = alone(key, value.clone()) else {
            continue;
        };
        let found = out.len();
        if let DeValue::Table(section) = value.get_ref() {
            for (inner_key, inner_value) in section {
                let mut one = DeTable::new();
                one.insert(inner_key.clone(), inner_value.clone());
                let one = Spanned::new(value.span(), DeValue::Table(one));
                if let Some(err) = alone(key, one) {
                    out.push(syntax_error(text, origin, &err));
                }
            }
        }
        // Not a table, or the section itself is wrong (e.g. an unknown one).
        if out.len() == found {
            out.push(syntax_error(text, origin, &err));
        }
    }
    // In the file's order (the parsed tables are sorted by key).
    out.sort_by_key(|err| match err {
        ConfigError::Syntax { line, column, .. } => (*line, *column),
        _ => (0, 0),
    });
    out
}

/// 1-based line and column of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// The dotted key path of the key on the line holding `offset`: the nearest table header above
/// it, plus the key on that line (the header alone when the line is a header or has no key).
pub(super) fn key_path_at(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |nl| line_start + nl);
    let line = text[line_start..line_end].trim();
    let header = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find_map(table_header)
        .unwrap_or_default();
    if let Some(own) = table_header(line) {
        return own;
    }
    let key = line
        .split_once('=')
        .map(|(key, _)| key.trim().trim_matches('"'))
        .filter(|key| !key.is_empty() && !key.starts_with('#'));
    match (header.is_empty(), key) {
        (_, None) if header.is_empty() => "(top level)".to_owned(),
        (_, None) => header,
        (true, Some(key)) => key.to_owned(),
        (false, Some(key)) => format!("{header}.{key}"),
    }
}

/// The name of a `[table]` header line.
fn table_header(line: &str) -> Option<String> {
    let inner = line.strip_prefix('[')?;
    let end = inner.find(']')?;
    Some(inner[..end].trim().trim_matches('[').trim().to_owned())
}

//! The config-key table in `agent/DAEMON.md` ("Configuration keys") is the one reference for
//! the config file. It must name every key the code reads and every key the shipped default
//! config sets, and nothing else:
//!
//! - every key of [`Config`], found through its `Deserialize` implementation (the field names
//!   serde derives, section by section), so a new field needs a row; no hand-kept list; a key
//!   that takes a table or a plain string (`jobs.network`: `"none"` or `[jobs.network]`) is a
//!   key and a table of keys;
//! - every key in `packaging/agent.toml`, set or commented out (`# key = value` in a section);
//! - every row names a key that `Config` has (a row for a removed or misspelled key fails).

use std::cell::RefCell;
use std::collections::BTreeSet;

use fog_agent::config::{Config, DEFAULT_TOML};
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};
use serde::Deserialize;

const DAEMON_MD: &str = include_str!("../../DAEMON.md");
const TABLE_HEADING: &str = "## Configuration keys";

/// A deserializer that feeds `Config`'s derived `Deserialize` a single entry per level along
/// `path`, and at the end of the path, where a struct is asked for, does what `at_end` says.
/// Any other value (a leaf: string, number, list, enum, ...) is an error, so nothing is
/// recorded and the path is a key.
#[derive(Clone, Copy)]
struct Probe<'a> {
    path: &'a [&'static str],
    at_end: AtEnd,
    found: &'a RefCell<Found>,
}

/// What a [`Probe`] does with the struct at the end of its path.
#[derive(Clone, Copy)]
enum AtEnd {
    /// Record its field names.
    RecordFields,
    /// Offer its visitor a string and record whether it takes strings at all (a derived struct
    /// refuses any with "invalid type"; a table-or-string key refuses only unknown ones).
    OfferString,
}

/// What a [`Probe`] recorded.
#[derive(Default)]
struct Found {
    fields: Option<&'static [&'static str]>,
    takes_a_string: bool,
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("a value, not a table"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match (self.path.split_first(), self.at_end) {
            (None, AtEnd::RecordFields) => {
                self.found.borrow_mut().fields = Some(fields);
                Err(de::Error::custom("fields recorded"))
            }
            (None, AtEnd::OfferString) => {
                let refusal = visitor.visit_str::<Self::Error>("").err();
                self.found.borrow_mut().takes_a_string =
                    refusal.is_none_or(|err| !err.to_string().starts_with("invalid type"));
                Err(de::Error::custom("string offered"))
            }
            (Some((key, rest)), _) => visitor.visit_map(OneEntry {
                key: Some(key),
                value: Probe { path: rest, ..self },
            }),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// A table with one key.
struct OneEntry<'a> {
    key: Option<&'static str>,
    value: Probe<'a>,
}

impl<'de> MapAccess<'de> for OneEntry<'_> {
    type Error = de::value::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        self.key
            .take()
            .map(|key| seed.deserialize(key.into_deserializer()))
            .transpose()
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        seed.deserialize(self.value)
    }
}

/// What a probe along `path` below `Config` finds.
fn probe(path: &[&'static str], at_end: AtEnd) -> Found {
    let found = RefCell::new(Found::default());
    let outcome = Config::deserialize(Probe {
        path,
        at_end,
        found: &found,
    });
    assert!(outcome.is_err(), "the probe never yields a whole Config");
    found.into_inner()
}

/// The struct fields at `path` below `Config`, or `None` when `path` is a key (a leaf).
fn fields_at(path: &[&'static str]) -> Option<&'static [&'static str]> {
    probe(path, AtEnd::RecordFields).fields
}

/// Whether the struct at `path` may also be given as a string (then `path` is a key too).
fn takes_a_string(path: &[&'static str]) -> bool {
    probe(path, AtEnd::OfferString).takes_a_string
}

/// Every key of `Config` as `section.key` (deeper tables would give `a.b.c`).
fn code_keys() -> BTreeSet<String> {
    fn walk(path: &mut Vec<&'static str>, out: &mut BTreeSet<String>) {
        match fields_at(path) {
            Some(fields) => {
                if !path.is_empty() && takes_a_string(path) {
                    out.insert(path.join("."));
                }
                for field in fields {
                    path.push(field);
                    walk(path, out);
                    path.pop();
                }
            }
            None => {
                out.insert(path.join("."));
            }
        }
    }
    assert!(fields_at(&[]).is_some(), "Config is a struct of sections");
    let mut out = BTreeSet::new();
    walk(&mut Vec::new(), &mut out);
    out
}

/// Every key of the shipped default config: the keys it sets, and keys commented out inside a
/// section (`# key = value`).
fn shipped_keys() -> BTreeSet<String> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut BTreeSet<String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(inner) => walk(&path, inner, out),
                _ => {
                    out.insert(path);
                }
            }
        }
    }
    let table: toml::Table = toml::from_str(DEFAULT_TOML).unwrap();
    let mut out = BTreeSet::new();
    walk("", &table, &mut out);

    let mut section = String::new();
    for line in DEFAULT_TOML.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
        } else if let Some(comment) = line.strip_prefix('#') {
            if let Some((key, value)) = comment.split_once('=') {
                let key = key.trim();
                let is_key = !key.is_empty()
                    && key.starts_with(|c: char| c.is_ascii_lowercase())
                    && key
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if is_key && !section.is_empty() && !value.trim().is_empty() {
                    out.insert(format!("{section}.{key}"));
                }
            }
        }
    }
    out
}

/// The keys of the rows of the table under [`TABLE_HEADING`]: the first cell, one
/// `` `section.key` `` per row.
fn documented_keys() -> Vec<String> {
    let start = DAEMON_MD
        .find(TABLE_HEADING)
        .unwrap_or_else(|| panic!("agent/DAEMON.md has no {TABLE_HEADING:?} section"));
    let section = &DAEMON_MD[start + TABLE_HEADING.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut keys = Vec::new();
    for line in section.lines().map(str::trim) {
        let Some(row) = line.strip_prefix('|') else {
            continue;
        };
        let first = row.split('|').next().unwrap_or_default().trim();
        if first == "key" || first.chars().all(|c| c == '-' || c == ':' || c == ' ') {
            continue; // header and separator
        }
        let key = first
            .strip_prefix('`')
            .and_then(|k| k.strip_suffix('`'))
            .filter(|k| !k.contains('`'))
            .unwrap_or_else(|| panic!("a row's first cell is not one `section.key`: {line}"));
        keys.push(key.to_owned());
    }
    keys
}

fn list(keys: &BTreeSet<String>) -> String {
    keys.iter().cloned().collect::<Vec<_>>().join(", ")
}

#[test]
fn the_config_table_names_every_key_of_the_code_and_of_the_shipped_file() {
    let code = code_keys();
    let shipped = shipped_keys();
    let rows = documented_keys();
    let documented: BTreeSet<String> = rows.iter().cloned().collect();

    // The probe sees what the parser sees: every key of the shipped file is a key of Config
    // (this also keeps the probe from passing vacuously).
    let unknown_shipped = &shipped - &code;
    assert!(
        unknown_shipped.is_empty(),
        "keys in packaging/agent.toml that Config does not have: {}",
        list(&unknown_shipped)
    );
    assert!(code.contains("api.listen") && code.len() >= shipped.len());

    let missing_code = &code - &documented;
    assert!(
        missing_code.is_empty(),
        "keys of Config without a row in agent/DAEMON.md ({TABLE_HEADING}): {}",
        list(&missing_code)
    );
    let missing_shipped = &shipped - &documented;
    assert!(
        missing_shipped.is_empty(),
        "keys of packaging/agent.toml without a row in agent/DAEMON.md ({TABLE_HEADING}): {}",
        list(&missing_shipped)
    );
    let stale = &documented - &code;
    assert!(
        stale.is_empty(),
        "rows in agent/DAEMON.md ({TABLE_HEADING}) for keys Config does not have: {}",
        list(&stale)
    );
    assert_eq!(rows.len(), documented.len(), "a key has two rows: {rows:?}");
}

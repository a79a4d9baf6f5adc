//! The JSON rules every document of `REPORT.md` is held to before it is read: UTF-8 text
//! (serde_json alone does not look inside what a struct skips), one JSON value and nothing
//! after it, and no object with the same member name twice (serde_json keeps the last of a
//! map's duplicates silently, so `{"0": "aa…", "0": "bb…"}` would be two readings of one
//! report). Names are compared as the strings they decode to, so `"a"` and `"\u0061"` are the
//! same name.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Checks `bytes` against the rules above; the error says what broke which.
pub fn check(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut de = serde_json::Deserializer::from_str(text);
    Unique(0).deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())
}

/// Deepest nesting walked (serde_json itself stops at 128).
const MAX_DEPTH: usize = 128;

/// A JSON value whose objects have unique member names, at nesting depth `.0`.
struct Unique(usize);

impl<'de> DeserializeSeed<'de> for Unique {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        while seq.next_element_seed(Unique(inner))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        let mut seen = HashSet::new();
        while let Some(name) = map.next_key::<String>()? {
            if !seen.insert(name.clone()) {
                return Err(de::Error::custom(format!(
                    "member \"{}\" appears twice in one object",
                    name.escape_debug()
                )));
            }
            map.next_value_seed(Unique(inner))?;
        }
        Ok(())
    }
}

impl Unique {
    fn deeper<E: de::Error>(&self) -> Result<usize, E> {
        if self.0 >= MAX_DEPTH {
            return Err(E::custom("nested too deeply"));
        }
        Ok(self.0 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn duplicates_anywhere_are_refused_and_named() {
        assert_eq!(check(br#"{"a": {"b": [1, {"c": 2}]}, "d": null}"#), Ok(()));
        let err = check(br#"{"a": {"0": "aa", "0": "bb"}}"#).unwrap_err();
        assert!(err.contains("member \"0\" appears twice"), "{err}");
        let err = check(br#"[{"x": 1, "\u0078": 2}]"#).unwrap_err();
        assert!(
            err.contains("\"x\" appears twice"),
            "escapes decode first: {err}"
        );
    }

    #[test]
    fn invalid_utf8_and_trailing_bytes_are_refused() {
        let err = check(b"{\"a\": \"\xff\"}").unwrap_err();
        assert!(err.starts_with("not UTF-8"), "{err}");
        assert!(check(br#"{"a": 1} {"b": 2}"#).is_err());
        assert!(check(b"{\"a\": 1}\n").is_ok(), "whitespace may follow");
    }
}

//! The `fog-attest-v1` report: its JSON wrapper, the payload it signs, and the qualifying data
//! that binds them (see `tpm/REPORT.md` for the normative description).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::structures::{HashAlg, PcrBankSelection, PcrSelection, MAX_PCR_SELECT};

/// Value of the report's `format` field.
pub const REPORT_FORMAT: &str = "fog-attest-v1";
/// Value of the payload's `format` field.
pub const PAYLOAD_FORMAT: &str = "fog-attest-v1-payload";
/// Domain separator hashed in front of the nonce (including the zero byte).
pub const QUALIFYING_DATA_DOMAIN: &[u8] = b"fog-attest-v1\0";
/// Shortest nonce accepted, in bytes.
pub const MIN_NONCE_LEN: usize = 8;
/// Longest nonce accepted, in bytes.
pub const MAX_NONCE_LEN: usize = 64;

/// Errors of the report format itself (not of verification).
#[derive(Debug, Error)]
pub enum ReportError {
    /// The JSON does not have the report's shape.
    #[error("report JSON is malformed: {0}")]
    Json(#[from] serde_json::Error),
    /// The text breaks the JSON rules every document is held to.
    #[error("report JSON is malformed: {0}")]
    Strict(String),
    /// A nonce given as hex is malformed.
    #[error("nonce must be {MIN_NONCE_LEN} to {MAX_NONCE_LEN} bytes of hex: {0}")]
    Nonce(String),
    /// A PCR selection such as `sha256:0-7` is malformed.
    #[error("PCR selection \"{spec}\" is malformed: {reason}")]
    PcrSpec {
        /// What was given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
}

/// Base64 (standard alphabet, padded) for `Vec<u8>` fields.
pub(crate) mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }

    /// Base64 for `Option<Vec<u8>>` (null when absent).
    pub(crate) mod opt {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(
            v: &Option<Vec<u8>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Vec<u8>>, D::Error> {
            let s = Option::<String>::deserialize(d)?;
            s.map(|s| {
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
        }
    }

    /// Base64 for `Vec<Vec<u8>>`.
    pub(crate) mod list {
        use super::*;
        use serde::ser::SerializeSeq;

        pub(crate) fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(v.len()))?;
            for item in v {
                seq.serialize_element(&base64::engine::general_purpose::STANDARD.encode(item))?;
            }
            seq.end()
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<Vec<u8>>, D::Error> {
            Vec::<String>::deserialize(d)?
                .into_iter()
                .map(|s| {
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(serde::de::Error::custom)
                })
                .collect()
        }
    }
}

/// PCR values as reported: bank name (`sha256`) -> PCR index -> lowercase hex value.
pub type PcrValues = BTreeMap<String, BTreeMap<u32, String>>;

/// The quote as the TPM produced it plus the PCR values read after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteEvidence {
    /// The signed `TPMS_ATTEST`, exactly as signed.
    #[serde(with = "b64")]
    pub attest: Vec<u8>,
    /// The `TPMT_SIGNATURE`.
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
    /// PCR values (untrusted until hashed against the signed digest). Index keys are decimal
    /// 0 to 31 written without sign or leading zeros, so no two keys name one PCR.
    #[serde(deserialize_with = "pcr_values")]
    pub pcrs: PcrValues,
}

/// Reads [`PcrValues`], refusing an index key that is not canonical decimal (`"00"`, `"+1"`,
/// `"32"`): two spellings of one index would give a PCR two values.
fn pcr_values<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PcrValues, D::Error> {
    let raw = BTreeMap::<String, BTreeMap<String, String>>::deserialize(d)?;
    let mut out = PcrValues::new();
    for (bank, values) in raw {
        let mut indexed = BTreeMap::new();
        for (key, value) in values {
            let index = key
                .parse::<u32>()
                .ok()
                .filter(|i| *i < 32 && i.to_string() == key)
                .ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "PCR index \"{}\" in bank \"{}\" is not 0 to 31 in plain decimal",
                        key.escape_debug(),
                        bank.escape_debug()
                    ))
                })?;
            indexed.insert(index, value);
        }
        out.insert(bank, indexed);
    }
    Ok(out)
}

/// The TPM part of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmEvidence {
    /// The AK's `TPM2B_PUBLIC`.
    #[serde(with = "b64")]
    pub ak_pub: Vec<u8>,
    /// The EK's `TPM2B_PUBLIC`.
    #[serde(with = "b64")]
    pub ek_pub: Vec<u8>,
    /// The EK certificate (DER), or null when the TPM has none.
    #[serde(with = "b64::opt")]
    pub ek_cert: Option<Vec<u8>>,
    /// Further certificates (DER) from NV 0x01c00100-0x01c001ff.
    #[serde(with = "b64::list")]
    pub ek_chain: Vec<Vec<u8>>,
    /// The quote.
    pub quote: QuoteEvidence,
}

/// A `fog-attest-v1` report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Always [`REPORT_FORMAT`].
    pub format: String,
    /// The reporting host's id.
    pub host_id: String,
    /// The auditor's nonce.
    #[serde(with = "b64")]
    pub nonce: Vec<u8>,
    /// The payload bytes P, exactly as hashed.
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
    /// TPM evidence.
    pub tpm: TpmEvidence,
    /// The raw `binary_bios_measurements` event log, when collected.
    #[serde(default, with = "b64::opt", skip_serializing_if = "Option::is_none")]
    pub event_log: Option<Vec<u8>>,
}

impl Report {
    /// Parses a report from JSON text, held to [`crate::strict_json`] first (UTF-8, no
    /// member twice in an object).
    pub fn from_json(text: &[u8]) -> Result<Self, ReportError> {
        crate::strict_json::check(text).map_err(ReportError::Strict)?;
        Ok(serde_json::from_slice(text)?)
    }

    /// Serializes the report as pretty JSON.
    pub fn to_json(&self) -> Result<Vec<u8>, ReportError> {
        Ok(serde_json::to_vec_pretty(self)?)
    }
}

/// The signed payload P.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// Always [`PAYLOAD_FORMAT`].
    pub format: String,
    /// Must equal the report's `host_id`.
    pub host_id: String,
    /// Must equal the report's nonce.
    #[serde(with = "b64")]
    pub nonce: Vec<u8>,
    /// The agent version that built the report.
    pub agent_version: String,
    /// When the payload was assembled, Unix seconds (UTC).
    pub collected_at: u64,
    /// The hardware inventory.
    pub inventory: serde_json::Value,
    /// Cached benchmark results, or null when none exist.
    pub benchmarks: Option<serde_json::Value>,
}

/// The payload's members and the JSON type each must have (others may follow and are not
/// read).
const PAYLOAD_MEMBERS: &[(&str, &str)] = &[
    ("format", "string"),
    ("host_id", "string"),
    ("nonce", "string"),
    ("agent_version", "string"),
    ("collected_at", "integer"),
    ("inventory", "object"),
    ("benchmarks", "object or null"),
];

impl Payload {
    /// Reads P as `REPORT.md` §2 defines it: held to [`crate::strict_json`], an object with
    /// every member of `REPORT.md` §2 of its type (`collected_at` 0 to 2^64 - 1, `nonce`
    /// base64). The error names what is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let bad = |why: String| format!("payload is not fog payload JSON: {why}");
        crate::strict_json::check(bytes).map_err(bad)?;
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let object = value
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        for (name, kind) in PAYLOAD_MEMBERS {
            let member = object
                .get(*name)
                .ok_or_else(|| bad(format!("member \"{name}\" is missing")))?;
            let fits = match *kind {
                "string" => member.is_string(),
                "integer" => member.is_u64(),
                "object" => member.is_object(),
                _ => member.is_object() || member.is_null(),
            };
            if !fits {
                return Err(bad(format!("member \"{name}\" is not {kind}")));
            }
        }
        serde_json::from_value(value).map_err(|e| bad(e.to_string()))
    }

    /// Serializes the payload once to the bytes P that are hashed and shipped.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ReportError> {
        Ok(serde_json::to_vec(self)?)
    }
}

/// qualifying data = SHA-256("fog-attest-v1\0" || nonce || SHA-256(payload)), 32 bytes.
pub fn qualifying_data(nonce: &[u8], payload: &[u8]) -> [u8; 32] {
    let inner = HashAlg::Sha256.digest(&[payload]);
    let outer = HashAlg::Sha256.digest(&[QUALIFYING_DATA_DOMAIN, nonce, &inner]);
    let mut out = [0u8; 32];
    out.copy_from_slice(&outer);
    out
}

/// Parses a nonce given as hex.
pub fn parse_nonce_hex(text: &str) -> Result<Vec<u8>, ReportError> {
    let bytes = hex::decode(text.trim()).map_err(|e| ReportError::Nonce(e.to_string()))?;
    if !(MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&bytes.len()) {
        return Err(ReportError::Nonce(format!("got {} bytes", bytes.len())));
    }
    Ok(bytes)
}

/// Parses a PCR selection such as `sha256:0-7`, `sha256:0,2,4-6+sha384:0`.
pub fn parse_pcr_spec(spec: &str) -> Result<PcrSelection, ReportError> {
    let err = |reason: String| ReportError::PcrSpec {
        spec: spec.to_string(),
        reason,
    };
    let mut banks: Vec<PcrBankSelection> = Vec::new();
    for part in spec.split('+') {
        let (bank, list) = part
            .split_once(':')
            .ok_or_else(|| err(format!("\"{part}\" lacks \"bank:\"")))?;
        let h =
            HashAlg::from_name(bank).ok_or_else(|| err(format!("unsupported bank \"{bank}\"")))?;
        if banks.iter().any(|b| b.hash == h.tpm_id()) {
            return Err(err(format!("bank {bank} given twice")));
        }
        let mut select = vec![0u8; 3];
        for item in list.split(',') {
            let (lo, hi) = match item.split_once('-') {
                Some((a, b)) => (a, b),
                None => (item, item),
            };
            let parse = |s: &str| {
                s.trim()
                    .parse::<u32>()
                    .map_err(|_| err(format!("\"{s}\" is not a PCR index")))
            };
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if lo > hi || hi as usize >= MAX_PCR_SELECT * 8 {
                return Err(err(format!("range {lo}-{hi} is empty or beyond PCR 31")));
            }
            for i in lo..=hi {
                let byte = (i / 8) as usize;
                if byte >= select.len() {
                    select.resize(byte + 1, 0);
                }
                select[byte] |= 1 << (i % 8);
            }
        }
        banks.push(PcrBankSelection {
            hash: h.tpm_id(),
            select,
        });
    }
    Ok(PcrSelection { banks })
}

/// Formats a selection back as `sha256:0,1,2` (for messages).
pub fn format_pcr_selection(sel: &PcrSelection) -> String {
    sel.banks
        .iter()
        .map(|b| {
            let name = HashAlg::from_tpm(b.hash)
                .map_or_else(|| format!("{:#06x}", b.hash), |h| h.name().to_string());
            let idx: Vec<String> = b.indices().iter().map(u32::to_string).collect();
            format!("{name}:{}", idx.join(","))
        })
        .collect::<Vec<_>>()
        .join("+")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifying_data_is_sha256_of_domain_nonce_and_payload_hash() {
        use sha2::{Digest, Sha256};
        let q = qualifying_data(b"nonce-01", b"{}");
        let mut h = Sha256::new();
        h.update(b"fog-attest-v1\0");
        h.update(b"nonce-01");
        h.update(Sha256::digest(b"{}"));
        assert_eq!(q.as_slice(), h.finalize().as_slice());
    }

    #[test]
    fn pcr_specs_parse_and_reject_nonsense() {
        let s = parse_pcr_spec("sha256:0-7").unwrap();
        assert_eq!(s.banks[0].select, vec![0xff, 0, 0]);
        let s = parse_pcr_spec("sha256:0,10,16-17+sha384:23").unwrap();
        assert_eq!(s.banks.len(), 2);
        assert_eq!(s.banks[0].indices(), vec![0, 10, 16, 17]);
        assert_eq!(format_pcr_selection(&s), "sha256:0,10,16,17+sha384:23");
        for bad in [
            "sha1:0",
            "sha256",
            "sha256:7-3",
            "sha256:x",
            "sha256:0+sha256:1",
            "sha256:40",
        ] {
            assert!(parse_pcr_spec(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn nonce_hex_length_limits() {
        assert_eq!(parse_nonce_hex("0011223344556677").unwrap().len(), 8);
        assert!(parse_nonce_hex("0011").is_err());
        assert!(parse_nonce_hex(&"00".repeat(65)).is_err());
        assert!(parse_nonce_hex("zz11223344556677").is_err());
    }

    #[test]
    fn report_json_round_trips_and_rejects_unknown_fields() {
        let r = Report {
            format: REPORT_FORMAT.into(),
            host_id: "h".into(),
            nonce: vec![1; 8],
            payload: b"{}".to_vec(),
            tpm: TpmEvidence {
                ak_pub: vec![1],
                ek_pub: vec![2],
                ek_cert: None,
                ek_chain: vec![vec![3]],
                quote: QuoteEvidence {
                    attest: vec![4],
                    signature: vec![5],
                    pcrs: [("sha256".to_string(), [(0u32, "00".to_string())].into())].into(),
                },
            },
            event_log: None,
        };
        let json = r.to_json().unwrap();
        assert_eq!(Report::from_json(&json).unwrap(), r);
        let text = String::from_utf8(json)
            .unwrap()
            .replace("\"host_id\"", "\"extra\": 1, \"host_id\"");
        assert!(Report::from_json(text.as_bytes()).is_err());
    }
}

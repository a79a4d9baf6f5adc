//! Export of a report's quote in the file formats `tpm2_checkquote` (tpm2-tools) reads, for an
//! independent interop check: `quote.msg` (TPMS_ATTEST), `quote.sig` (TPMT_SIGNATURE),
//! `ak.pub.pem` (SubjectPublicKeyInfo) and `pcrs.bin` in tpm2-tools' "serialized" layout.
//!
//! `pcrs.bin` is the in-memory layout of tpm2-tss' C structures on little-endian x86-64:
//! `TPML_PCR_SELECTION` (u32 count, 16 x {u16 hash, u8 sizeofSelect, u8 pcrSelect\[4\], 1 pad
//! byte} = 132 bytes), then u32 n = number of `TPML_DIGEST`s, then n x `TPML_DIGEST` (u32 count,
//! 8 x {u16 size, u8 buffer\[64\]} = 532 bytes), values in signed-selection order, 8 per list.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::report::Report;
use crate::structures::{Attest, HashAlg, Public, PublicKey, MAX_PCR_BANKS, MAX_PCR_SELECT};

/// Why an export failed.
#[derive(Debug, Error)]
pub enum ExportError {
    /// The report's TPM structures do not parse.
    #[error("report quote: {0}")]
    Structure(#[from] crate::wire::ParseError),
    /// The AK key cannot be expressed as PEM.
    #[error("AK public key cannot be exported as PEM: {0}")]
    Key(String),
    /// A PCR value is missing or malformed.
    #[error("PCR {0} is missing or malformed in the report")]
    Pcr(String),
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Size of a `TPMS_PCR_SELECTION` in tpm2-tss' C layout (with padding).
const C_PCR_SELECTION: usize = 8;
/// Digests per `TPML_DIGEST`.
const C_DIGESTS_PER_LIST: usize = 8;
/// Size of a `TPM2B_DIGEST` in C layout.
const C_TPM2B_DIGEST: usize = 2 + 64;

/// Builds `pcrs.bin` for the report's signed selection.
pub fn serialized_pcrs(report: &Report) -> Result<Vec<u8>, ExportError> {
    let attest = Attest::parse(&report.tpm.quote.attest)?;
    let sel = &attest.quote.pcr_select;
    let mut out = Vec::with_capacity(4 + MAX_PCR_BANKS * C_PCR_SELECTION + 4 + 532);
    out.extend_from_slice(&(sel.banks.len() as u32).to_le_bytes());
    for i in 0..MAX_PCR_BANKS {
        let mut entry = [0u8; C_PCR_SELECTION];
        if let Some(b) = sel.banks.get(i) {
            entry[..2].copy_from_slice(&b.hash.to_le_bytes());
            entry[2] = b.select.len() as u8;
            let n = b.select.len().min(MAX_PCR_SELECT);
            entry[3..3 + n].copy_from_slice(&b.select[..n]);
        }
        out.extend_from_slice(&entry);
    }
    let mut values = Vec::new();
    for (bank, index) in sel.pairs() {
        let h =
            HashAlg::from_tpm(bank).ok_or_else(|| ExportError::Pcr(format!("bank {bank:#06x}")))?;
        let v = report
            .tpm
            .quote
            .pcrs
            .get(h.name())
            .and_then(|m| m.get(&index))
            .and_then(|t| hex::decode(t).ok())
            .filter(|v| v.len() <= 64)
            .ok_or_else(|| ExportError::Pcr(format!("{}:{index}", h.name())))?;
        values.push(v);
    }
    let lists: Vec<&[Vec<u8>]> = values.chunks(C_DIGESTS_PER_LIST).collect();
    out.extend_from_slice(&(lists.len() as u32).to_le_bytes());
    for list in lists {
        out.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for i in 0..C_DIGESTS_PER_LIST {
            let mut d = [0u8; C_TPM2B_DIGEST];
            if let Some(v) = list.get(i) {
                d[..2].copy_from_slice(&(v.len() as u16).to_le_bytes());
                d[2..2 + v.len()].copy_from_slice(v);
            }
            out.extend_from_slice(&d);
        }
    }
    Ok(out)
}

/// The AK public key as a PEM SubjectPublicKeyInfo.
pub fn ak_pem(ak: &Public) -> Result<String, ExportError> {
    let key_err = |e: &dyn std::fmt::Display| ExportError::Key(e.to_string());
    match &ak.key {
        PublicKey::Rsa {
            exponent, modulus, ..
        } => {
            use rsa::pkcs8::EncodePublicKey;
            let e = if *exponent == 0 { 65537 } else { *exponent };
            let key =
                rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(modulus), rsa::BigUint::from(e))
                    .map_err(|e| key_err(&e))?;
            key.to_public_key_pem(rsa::pkcs8::LineEnding::LF)
                .map_err(|e| key_err(&e))
        }
        PublicKey::Ecc { curve, x, y, .. } => {
            use p256::pkcs8::EncodePublicKey;
            let mut sec1 = vec![0x04];
            sec1.extend_from_slice(x);
            sec1.extend_from_slice(y);
            match *curve {
                crate::structures::curve::NIST_P256 => p256::PublicKey::from_sec1_bytes(&sec1)
                    .map_err(|e| key_err(&e))?
                    .to_public_key_pem(p256::pkcs8::LineEnding::LF)
                    .map_err(|e| key_err(&e)),
                crate::structures::curve::NIST_P384 => p384::PublicKey::from_sec1_bytes(&sec1)
                    .map_err(|e| key_err(&e))?
                    .to_public_key_pem(p384::pkcs8::LineEnding::LF)
                    .map_err(|e| key_err(&e)),
                other => Err(ExportError::Key(format!("curve {other:#06x}"))),
            }
        }
    }
}

/// Writes `quote.msg`, `quote.sig`, `ak.pub.pem` and `pcrs.bin` into `dir` and returns the
/// `-q` argument for `tpm2_checkquote` (hex of the qualifying data).
pub fn export_tpm2_tools(report: &Report, dir: &Path) -> Result<String, ExportError> {
    let ak = Public::parse_tpm2b(&report.tpm.ak_pub)?;
    let pcrs = serialized_pcrs(report)?;
    let pem = ak_pem(&ak)?;
    let write = |name: &str, data: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, data).map_err(|source| ExportError::Io { path, source })
    };
    std::fs::create_dir_all(dir).map_err(|source| ExportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write("quote.msg", &report.tpm.quote.attest)?;
    write("quote.sig", &report.tpm.quote.signature)?;
    write("ak.pub.pem", pem.as_bytes())?;
    write("pcrs.bin", &pcrs)?;
    Ok(hex::encode(crate::report::qualifying_data(
        &report.nonce,
        &report.payload,
    )))
}

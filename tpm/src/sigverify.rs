//! The quote's signature checked with the AK, in the AK's own scheme (`REPORT.md` §5 check 10).
//!
//! `ring` verifies RSASSA-PKCS1-v1_5 and RSA-PSS (SHA-256/384/512) and ECDSA P-256/SHA-256 and
//! P-384/SHA-384: its assembly is 5 to 10 times faster than the pure-Rust `rsa` and `p256`
//! crates (about 30 µs for RSA-2048 and 55 µs for P-256 on the CI machine, against 260 and
//! 300 µs), which is what lets one core verify 10,000 reports a second. ECDSA with a hash that
//! is not the curve's own (P-256 with SHA-384 or SHA-512, P-384 with SHA-256 or SHA-512), which
//! `ring` does not offer over raw r and s, goes through RustCrypto's `ecdsa`.
//!
//! Inputs as TPMs write them: RSA n and e big-endian (leading zeros dropped; e = 0 means
//! 65537); ECDSA x, y, r and s with leading zeros dropped, then left-padded to the field size.

use ring::signature::{self as ring_sig, RsaPublicKeyComponents, UnparsedPublicKey};

use crate::structures::{alg, curve, HashAlg, Public, PublicKey, Signature};

/// Checks `sig` over `message` with `ak`'s key and scheme; the error says which kind failed.
pub fn verify(sig: &Signature, ak: &Public, message: &[u8]) -> Result<(), &'static str> {
    let scheme = ak.scheme.ok_or("AK has no signing scheme")?;
    let hash = HashAlg::from_tpm(scheme.hash).ok_or("AK scheme hash unsupported")?;
    match (&ak.key, sig) {
        (
            PublicKey::Rsa {
                exponent, modulus, ..
            },
            Signature::Rsa { sig, .. },
        ) => {
            let params: &ring_sig::RsaParameters = match (scheme.scheme, hash) {
                (alg::RSASSA, HashAlg::Sha256) => &ring_sig::RSA_PKCS1_2048_8192_SHA256,
                (alg::RSASSA, HashAlg::Sha384) => &ring_sig::RSA_PKCS1_2048_8192_SHA384,
                (alg::RSASSA, HashAlg::Sha512) => &ring_sig::RSA_PKCS1_2048_8192_SHA512,
                (alg::RSAPSS, HashAlg::Sha256) => &ring_sig::RSA_PSS_2048_8192_SHA256,
                (alg::RSAPSS, HashAlg::Sha384) => &ring_sig::RSA_PSS_2048_8192_SHA384,
                (alg::RSAPSS, HashAlg::Sha512) => &ring_sig::RSA_PSS_2048_8192_SHA512,
                _ => return Err("RSA scheme unsupported"),
            };
            let e = if *exponent == 0 { 65537 } else { *exponent }.to_be_bytes();
            let key = RsaPublicKeyComponents {
                n: strip_zeros(modulus),
                e: strip_zeros(&e),
            };
            key.verify(params, message, sig).map_err(|_| "RSA")
        }
        (PublicKey::Ecc { curve: c, x, y, .. }, Signature::Ecc { r, s, .. }) => {
            let field = match *c {
                curve::NIST_P256 => 32,
                curve::NIST_P384 => 48,
                _ => return Err("ECDSA curve unsupported"),
            };
            let (Some(x), Some(y), Some(r), Some(s)) = (
                left_pad(x, field),
                left_pad(y, field),
                left_pad(r, field),
                left_pad(s, field),
            ) else {
                return Err("ECDSA");
            };
            let mut point = Vec::with_capacity(1 + 2 * field);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let mut rs = r;
            rs.extend_from_slice(&s);
            let ok = match (*c, hash) {
                (curve::NIST_P256, HashAlg::Sha256) => {
                    UnparsedPublicKey::new(&ring_sig::ECDSA_P256_SHA256_FIXED, &point)
                        .verify(message, &rs)
                        .is_ok()
                }
                (curve::NIST_P384, HashAlg::Sha384) => {
                    UnparsedPublicKey::new(&ring_sig::ECDSA_P384_SHA384_FIXED, &point)
                        .verify(message, &rs)
                        .is_ok()
                }
                (curve::NIST_P256, _) => {
                    rust_crypto_ecdsa::<p256::NistP256>(&point, &rs, &hash.digest(&[message]))
                }
                _ => rust_crypto_ecdsa::<p384::NistP384>(&point, &rs, &hash.digest(&[message])),
            };
            ok.then_some(()).ok_or("ECDSA")
        }
        _ => Err("signature type does not match the AK's key type"),
    }
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// `bytes` without leading zeros, left-padded to `len`; None when longer.
fn left_pad(bytes: &[u8], len: usize) -> Option<Vec<u8>> {
    let bytes = strip_zeros(bytes);
    let pad = len.checked_sub(bytes.len())?;
    let mut out = vec![0u8; pad];
    out.extend_from_slice(bytes);
    Some(out)
}

/// ECDSA over a prehashed `digest` (any length the curve takes) with RustCrypto.
fn rust_crypto_ecdsa<C>(sec1_point: &[u8], rs: &[u8], digest: &[u8]) -> bool
where
    C: ecdsa::PrimeCurve + elliptic_curve::CurveArithmetic,
    ecdsa::SignatureSize<C>: elliptic_curve::generic_array::ArrayLength<u8>,
    elliptic_curve::FieldBytesSize<C>: elliptic_curve::sec1::ModulusSize,
    elliptic_curve::AffinePoint<C>: elliptic_curve::sec1::FromEncodedPoint<C>
        + elliptic_curve::sec1::ToEncodedPoint<C>
        + ecdsa::hazmat::VerifyPrimitive<C>,
{
    use ecdsa::signature::hazmat::PrehashVerifier;
    let Ok(key) = ecdsa::VerifyingKey::<C>::from_sec1_bytes(sec1_point) else {
        return false;
    };
    let Ok(sig) = ecdsa::Signature::<C>::from_slice(rs) else {
        return false;
    };
    key.verify_prehash(digest, &sig).is_ok()
}

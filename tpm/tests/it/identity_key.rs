//! The identity key on swtpm: created under the ECC EK with the identity attributes, its
//! signatures verify with its public area, and the AK's certification names it.

use fog_tpm::ak::{AkAlg, EkAlg};
use fog_tpm::device::Tpm;
use fog_tpm::structures::{attr, CertifyAttest, Public, Signature};
use fog_tpm::testing::Swtpm;

#[test]
fn identity_key_signs_and_is_certified_by_the_ak() {
    let swtpm = Swtpm::start().unwrap();
    let tpm = Tpm::open(&swtpm.tcti()).unwrap();
    let ak = tpm.create_ak(AkAlg::Rsa, EkAlg::Rsa, "host-a").unwrap();
    let key = tpm.create_identity_key().unwrap();
    let public = Public::parse_tpm2b(&key.public).unwrap();
    assert_eq!(public.attributes, attr::IDENTITY);

    let message = b"fog-receipt-v1\0{}";
    let digest: [u8; 32] = fog_tpm::structures::HashAlg::Sha256
        .digest(&[message])
        .try_into()
        .unwrap();
    let sig = Signature::parse(&tpm.sign_digest(&key, &digest).unwrap()).unwrap();
    fog_tpm::sigverify::verify(&sig, &public, message).unwrap();
    assert!(fog_tpm::sigverify::verify(&sig, &public, b"another message").is_err());

    let certification = tpm.certify_identity_key(&ak, &key, &[7; 32]).unwrap();
    let attest = CertifyAttest::parse(&certification.attest).unwrap();
    assert_eq!(attest.extra_data, vec![7; 32]);
    assert_eq!(attest.certified.name, public.name().unwrap());
    let ak_public = Public::parse_tpm2b(&ak.public).unwrap();
    let sig = Signature::parse(&certification.signature).unwrap();
    fog_tpm::sigverify::verify(&sig, &ak_public, &certification.attest).unwrap();
    let (checked, _) = fog_tpm::identity::check_certification(
        &key.public,
        &certification.attest,
        &certification.signature,
        &ak_public,
    )
    .unwrap();
    assert_eq!(checked, public);
    // The AK is not an identity key, and a certification names one key only.
    let err = fog_tpm::identity::check_certification(
        &ak.public,
        &certification.attest,
        &certification.signature,
        &ak_public,
    )
    .unwrap_err();
    assert!(err.contains("has restricted"), "{err}");

    // A second swtpm cannot use the first one's key blob.
    let other = Swtpm::start().unwrap();
    let other_tpm = Tpm::open(&other.tcti()).unwrap();
    assert!(other_tpm.sign_digest(&key, &digest).is_err());
}

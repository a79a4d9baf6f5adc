//! Usage receipts on swtpm: a genuine job chain (identity key signatures, AK quotes of the
//! receipt digests) verifies, and every tamper class is rejected with its own check id
//! (`RECEIPTS.md` §6); the bundles are the conformance cases of `tpm/conformance/receipts`.

use std::collections::BTreeSet;

use fog_tpm::receipt::ReceiptBundle;
use fog_tpm::testing::receipt_cases;
use fog_tpm::testing::receipts::JobChain;

#[test]
fn genuine_chain_verifies_and_each_tamper_class_is_rejected_with_its_own_reason() {
    let (world, cases) = receipt_cases::build().unwrap();
    let mut reasons = BTreeSet::new();
    for case in &cases {
        let verdict = world.verdict(case).unwrap();
        assert_eq!(
            verdict.failed(),
            case.failed,
            "{}: {:#?}",
            case.id,
            verdict.checks
        );
        assert_eq!(verdict.passed, case.failed.is_empty(), "{}", case.id);
        if verdict.passed {
            let bundle = ReceiptBundle::from_json(&case.bundle).unwrap();
            assert_eq!(verdict.receipts, bundle.receipts.len());
            assert_eq!(verdict.host_id, receipt_cases::HOST);
            let last = bundle.receipts.len() as u64 - 1;
            assert_eq!(verdict.usage, Some(JobChain::usage_at(last)), "{}", case.id);
        } else {
            assert_eq!(verdict.usage, None);
            let first = verdict.check(case.failed[0]).unwrap();
            reasons.insert(first.reason.clone().unwrap());
        }
    }
    // The tamper classes: each fails a set of checks no other case fails, and each
    // says why in its own words.
    let classes = [
        "changed-counter",
        "dropped-receipt",
        "reordered",
        "forked-chain",
        "replayed-into-other-job",
        "foreign-key",
        "rollback-same-seq",
    ];
    let failed_sets: BTreeSet<Vec<&str>> = classes
        .iter()
        .map(|id| cases.iter().find(|c| c.id == *id).unwrap().failed.clone())
        .collect();
    assert_eq!(failed_sets.len(), classes.len(), "{failed_sets:?}");
    assert!(failed_sets.iter().all(|f| !f.is_empty()));
    assert!(reasons.len() >= classes.len());
}

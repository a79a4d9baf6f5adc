//! The checks of the AK's receipt quotes: each signed by the AK, each binding its receipts and
//! its place in the quote chain, the TPM clock increasing along the chain, and no rewritten
//! history (rollback).

use std::collections::{BTreeMap, HashMap};

use super::chain::Chain;
use super::{Outcome, Parsed};
use crate::receipt::{quote_qualifying_data, GENESIS};
use crate::structures::{Attest, ClockInfo, Public, Signature};

pub(super) fn check_quote_signatures(
    p: &Parsed,
    ak: Result<&Public, &String>,
    quotes: &[Result<Attest, String>],
) -> Outcome {
    let ak = ak.map_err(Clone::clone)?;
    let scheme = ak.scheme.ok_or("AK has no signing scheme")?;
    for (j, (q, attest)) in p.bundle.quotes.iter().zip(quotes).enumerate() {
        attest.as_ref().map_err(Clone::clone)?;
        let sig = Signature::parse(&q.signature).map_err(|e| format!("quote {j}: {e}"))?;
        if sig.scheme() != scheme.scheme || sig.hash() != scheme.hash {
            return Err(format!(
                "quote {j}: signature scheme {:#06x}/{:#06x} is not the AK's {:#06x}/{:#06x}",
                sig.scheme(),
                sig.hash(),
                scheme.scheme,
                scheme.hash
            ));
        }
        crate::sigverify::verify(&sig, ak, &q.attest).map_err(|what| {
            format!(
                "quote {j} (seq {}): signature does not verify with the AK ({what})",
                q.seq
            )
        })?;
    }
    Ok(None)
}

/// Every quote's attest parsed, or the first failure.
fn attests(quotes: &[Result<Attest, String>]) -> Result<Vec<&Attest>, String> {
    quotes
        .iter()
        .map(|q| q.as_ref().map_err(Clone::clone))
        .collect()
}

pub(super) fn check_quote_binding(
    p: &Parsed,
    chain: &Chain<'_>,
    quotes: &[Result<Attest, String>],
) -> Outcome {
    let attests = attests(quotes)?;
    let qs = &p.bundle.quotes;
    for (j, (q, attest)) in qs.iter().zip(&attests).enumerate() {
        let (prev, receipts) = &p.quote_links[j];
        let expected = quote_qualifying_data(q.seq, prev, receipts);
        if attest.extra_data != expected {
            return Err(format!(
                "quote {j} (seq {}): extraData {} is not the qualifying data {} of its seq, prev and receipts",
                q.seq,
                hex::encode(&attest.extra_data),
                hex::encode(expected)
            ));
        }
        if q.seq == 0 && q.prev != GENESIS {
            return Err(format!("quote {j} has seq 0 but its prev is not GENESIS"));
        }
    }
    // The quote chain: where seqs s and s+1 are each held by exactly one quote, prev links them.
    let mut by_seq: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (j, q) in qs.iter().enumerate() {
        by_seq.entry(q.seq).or_default().push(j);
    }
    for (&seq, at) in &by_seq {
        let Some(before) = seq.checked_sub(1).and_then(|s| by_seq.get(&s)) else {
            continue;
        };
        if let ([a], [b]) = (before.as_slice(), at.as_slice()) {
            if p.quote_links[*b].0 != qs[*a].digest() {
                return Err(format!(
                    "quote {b} (seq {seq})'s prev is not the digest of quote {a} (seq {})",
                    seq - 1
                ));
            }
        }
    }
    // Coverage: each receipt's digest listed exactly once, at a position (quote seq, index).
    let mut listed: HashMap<[u8; 32], Vec<(u64, usize)>> =
        p.digests.iter().map(|d| (*d, Vec::new())).collect();
    for (j, q) in qs.iter().enumerate() {
        for (k, d) in p.quote_links[j].1.iter().enumerate() {
            if let Some(at) = listed.get_mut(d) {
                at.push((q.seq, k));
            }
        }
    }
    let mut position = Vec::with_capacity(p.digests.len());
    for (i, d) in p.digests.iter().enumerate() {
        match listed[d].as_slice() {
            [at] => position.push(*at),
            [] => {
                return Err(format!(
                    "receipt {i} (seq {}) is in no quote",
                    p.bodies[i].seq
                ))
            }
            many => {
                return Err(format!(
                    "receipt {i} (seq {}) is listed {} times in the quotes",
                    p.bodies[i].seq,
                    many.len()
                ))
            }
        }
    }
    // Order: a receipt of a lower seq is quoted before one of a higher seq.
    let mut before_max: Option<((u64, usize), u64)> = None;
    for (&seq, at) in &chain.by_seq {
        if let Some((max_pos, max_seq)) = before_max {
            if let Some(&i) = at.iter().find(|&&i| position[i] <= max_pos) {
                return Err(format!(
                    "receipt {i} (seq {seq}) is quoted before or with seq {max_seq}'s receipt"
                ));
            }
        }
        for &i in at {
            if before_max.is_none_or(|(max_pos, _)| position[i] > max_pos) {
                before_max = Some((position[i], seq));
            }
        }
    }
    Ok(None)
}

fn clock_key(c: &ClockInfo) -> (u32, u32, u64) {
    (c.reset_count, c.restart_count, c.clock)
}

fn fmt_clock(c: &ClockInfo) -> String {
    format!(
        "(resetCount {}, restartCount {}, clock {} ms)",
        c.reset_count, c.restart_count, c.clock
    )
}

pub(super) fn check_tpm_clock(quotes: &[Result<Attest, String>]) -> Outcome {
    let attests = attests(quotes)?;
    for (j, w) in attests.windows(2).enumerate() {
        if clock_key(&w[1].clock_info) <= clock_key(&w[0].clock_info) {
            return Err(format!(
                "quote {} {} is not later than quote {j} {}",
                j + 1,
                fmt_clock(&w[1].clock_info),
                fmt_clock(&w[0].clock_info)
            ));
        }
    }
    Ok(None)
}

pub(super) fn check_rollback(p: &Parsed, quotes: &[Result<Attest, String>]) -> Outcome {
    let attests = attests(quotes)?;
    let qs = &p.bundle.quotes;
    let mut order: Vec<usize> = (0..qs.len()).collect();
    order.sort_by_key(|&j| qs[j].seq);
    for w in order.windows(2) {
        let (a, b) = (w[0], w[1]);
        if qs[a].seq == qs[b].seq && qs[a].attest != qs[b].attest {
            return Err(format!(
                "quotes {a} and {b} both have seq {} and differ: the agent's quote chain was rewritten (database rolled back)",
                qs[a].seq
            ));
        }
    }
    // The latest clock among quotes of lower seq, against each quote.
    let mut latest: Option<(usize, (u32, u32, u64))> = None;
    let mut i = 0;
    while i < order.len() {
        let seq = qs[order[i]].seq;
        let group: Vec<usize> = order[i..]
            .iter()
            .copied()
            .take_while(|&j| qs[j].seq == seq)
            .collect();
        if let Some((a, clock)) = latest {
            if let Some(&b) = group
                .iter()
                .find(|&&b| clock_key(&attests[b].clock_info) < clock)
            {
                return Err(format!(
                    "quote {a} (seq {}) {} is later than quote {b} (seq {seq}) {}: the agent's quote chain was rewritten (database rolled back)",
                    qs[a].seq,
                    fmt_clock(&attests[a].clock_info),
                    fmt_clock(&attests[b].clock_info)
                ));
            }
        }
        for &j in &group {
            let c = clock_key(&attests[j].clock_info);
            if latest.is_none_or(|(_, l)| c > l) {
                latest = Some((j, c));
            }
        }
        i += group.len();
    }
    Ok(None)
}

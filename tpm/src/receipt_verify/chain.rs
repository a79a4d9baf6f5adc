//! The checks of one job's receipt chain: it starts at seq 0 from GENESIS, has no gap, no
//! reordering and no fork, ends with at most one `end`, and its counters never decrease.

use std::collections::BTreeMap;

use super::{Outcome, Parsed};
use crate::receipt::{ReceiptKind, GENESIS};

/// The receipts' seqs, counted, with the index of each seq's receipt when it is unique.
pub(super) struct Chain<'a> {
    p: &'a Parsed,
    /// seq -> indices (bundle order) of the receipts with that seq.
    pub(super) by_seq: BTreeMap<u64, Vec<usize>>,
}

impl<'a> Chain<'a> {
    pub(super) fn new(p: &'a Parsed) -> Self {
        let mut by_seq: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, body) in p.bodies.iter().enumerate() {
            by_seq.entry(body.seq).or_default().push(i);
        }
        Self { p, by_seq }
    }

    /// Chain neighbours: (index of seq k-1, index of seq k) for every k whose seq and k-1 are
    /// each held by exactly one receipt, in seq order.
    pub(super) fn neighbours(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.by_seq.iter().filter_map(|(&seq, at)| {
            let before = self.by_seq.get(&seq.checked_sub(1)?)?;
            match (before.as_slice(), at.as_slice()) {
                ([a], [b]) => Some((*a, *b)),
                _ => None,
            }
        })
    }

    pub(super) fn start(&self) -> Outcome {
        let first = self.p.bodies.first().ok_or("the bundle has no receipts")?;
        if first.seq != 0 {
            return Err(format!("the first receipt has seq {}, not 0", first.seq));
        }
        if first.prev != GENESIS {
            return Err("the first receipt's prev is not GENESIS (64 zeros)".into());
        }
        if first.kind != ReceiptKind::Start {
            return Err(format!(
                "the first receipt is of kind {:?}, not start",
                first.kind
            ));
        }
        if let Some(i) =
            (1..self.p.bodies.len()).find(|&i| self.p.bodies[i].kind == ReceiptKind::Start)
        {
            return Err(format!("receipt {i} is a second start receipt"));
        }
        Ok(None)
    }

    pub(super) fn gap(&self) -> Outcome {
        let mut expected = 0u64;
        for &seq in self.by_seq.keys() {
            // Seqs come in ascending order, so seq >= expected.
            if seq != expected {
                return Err(if seq - expected == 1 {
                    format!("seq {expected} is missing")
                } else {
                    format!("seqs {expected} to {} are missing", seq - 1)
                });
            }
            expected = seq.saturating_add(1);
        }
        Ok(None)
    }

    pub(super) fn order(&self) -> Outcome {
        match self.p.bodies.windows(2).position(|w| w[1].seq < w[0].seq) {
            None => Ok(None),
            Some(i) => Err(format!(
                "receipt {} (seq {}) follows receipt {i} (seq {}): reordered",
                i + 1,
                self.p.bodies[i + 1].seq,
                self.p.bodies[i].seq
            )),
        }
    }

    pub(super) fn fork(&self) -> Outcome {
        if let Some((seq, at)) = self.by_seq.iter().find(|(_, at)| at.len() > 1) {
            return Err(format!(
                "seq {seq} is held by {} different receipts ({at:?}): the chain forks",
                at.len()
            ));
        }
        for (a, b) in self.neighbours() {
            if self.p.bodies[b].prev != hex::encode(self.p.digests[a]) {
                return Err(format!(
                    "receipt {b} (seq {})'s prev is not the digest of receipt {a} (seq {}): the chain forks",
                    self.p.bodies[b].seq, self.p.bodies[a].seq
                ));
            }
        }
        Ok(None)
    }

    pub(super) fn end(&self) -> Outcome {
        let bodies = &self.p.bodies;
        for (i, body) in bodies.iter().enumerate() {
            match (body.kind, &body.termination) {
                (ReceiptKind::End, None) => {
                    return Err(format!("receipt {i} ends the job without a termination"))
                }
                (ReceiptKind::Start | ReceiptKind::Periodic, Some(_)) => {
                    return Err(format!(
                        "receipt {i} carries a termination but is not an end receipt"
                    ))
                }
                _ => {}
            }
        }
        let ends: Vec<usize> = (0..bodies.len())
            .filter(|&i| bodies[i].kind == ReceiptKind::End)
            .collect();
        let Some(&end) = ends.first() else {
            return Ok(Some("the job has not ended (no end receipt)".into()));
        };
        if ends.len() > 1 {
            return Err(format!("receipts {ends:?} all end the job"));
        }
        if end + 1 != bodies.len() {
            return Err(format!("receipt {} follows the end receipt {end}", end + 1));
        }
        if let Some(i) = (0..end).find(|&i| bodies[i].seq >= bodies[end].seq) {
            return Err(format!(
                "receipt {i} has seq {}, not lower than the end receipt's {}",
                bodies[i].seq, bodies[end].seq
            ));
        }
        Ok(None)
    }

    pub(super) fn counters(&self) -> Outcome {
        let bodies = &self.p.bodies;
        if let Some(i) = bodies
            .iter()
            .position(|b| b.to_unix_millis < b.from_unix_millis)
        {
            return Err(format!(
                "receipt {i}: interval ends ({}) before it starts ({})",
                bodies[i].to_unix_millis, bodies[i].from_unix_millis
            ));
        }
        for (a, b) in self.neighbours() {
            let (x, y) = (&bodies[a], &bodies[b]);
            if y.from_unix_millis != x.to_unix_millis {
                return Err(format!(
                    "seq {}: interval starts at {}, seq {} ended at {}",
                    y.seq, y.from_unix_millis, x.seq, x.to_unix_millis
                ));
            }
            let (u, v) = (&x.usage, &y.usage);
            for (name, before, after) in [
                ("run_millis", u.run_millis, v.run_millis),
                ("cpu_nanos", u.cpu_nanos, v.cpu_nanos),
                (
                    "memory_mib_millis",
                    u.memory_mib_millis,
                    v.memory_mib_millis,
                ),
                (
                    "memory_peak_bytes",
                    u.memory_peak_bytes,
                    v.memory_peak_bytes,
                ),
                ("net_in_bytes", u.net_in_bytes, v.net_in_bytes),
                ("net_out_bytes", u.net_out_bytes, v.net_out_bytes),
                ("disk_peak_bytes", u.disk_peak_bytes, v.disk_peak_bytes),
            ] {
                if after < before {
                    return Err(format!(
                        "seq {}: {name} {after} is lower than seq {}'s {before}",
                        y.seq, x.seq
                    ));
                }
            }
            for (gpu, before) in &u.gpu_millis {
                match v.gpu_millis.get(gpu) {
                    None => {
                        return Err(format!(
                            "seq {}: GPU {} listed at seq {} is gone",
                            y.seq,
                            gpu.escape_debug(),
                            x.seq
                        ))
                    }
                    Some(after) if after < before => {
                        return Err(format!(
                            "seq {}: gpu_millis of {} {after} is lower than seq {}'s {before}",
                            y.seq,
                            gpu.escape_debug(),
                            x.seq
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(None)
    }
}

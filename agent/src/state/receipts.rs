//! The usage receipts' tables (schema v4): drafts waiting to be signed, signed receipts, and
//! the AK's receipt quotes. Plain rows: what a receipt means is `crate::receipts`' business.
//!
//! A draft becomes a receipt in one transaction (insert the receipt, delete the draft), and a
//! quote marks the receipts it covers in the same transaction that stores it, so a crash never
//! leaves a receipt both pending and signed, or quoted without its quote.

use rusqlite::{params, OptionalExtension, Row};

use super::{sqlite_err, StateError, StateStore};

/// A receipt decided but not signed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptDraftRow {
    /// Issue order.
    pub id: i64,
    /// The job.
    pub job_id: String,
    /// Position in the job's chain.
    pub seq: u64,
    /// The body as JSON, without what signing fills in.
    pub draft_json: String,
}

/// A signed receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptRow {
    /// Issue order (0 before it is stored).
    pub id: i64,
    /// The job.
    pub job_id: String,
    /// Position in the job's chain.
    pub seq: u64,
    /// `start`, `periodic` or `end`.
    pub kind: String,
    /// The body bytes, as signed.
    pub body: Vec<u8>,
    /// The identity key's signature.
    pub signature: Vec<u8>,
    /// Lowercase hex SHA-256 of the body.
    pub digest: String,
    /// The receipt quote covering it, once quoted.
    pub quote_seq: Option<u64>,
}

/// A receipt quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptQuoteRow {
    /// Position in the quote chain.
    pub seq: u64,
    /// Lowercase hex SHA-256 of the previous quote's attest.
    pub prev: String,
    /// The covered receipts' digests (lowercase hex), as a JSON list in issue order.
    pub receipts_json: String,
    /// `TPMS_ATTEST`.
    pub attest: Vec<u8>,
    /// The AK's signature.
    pub signature: Vec<u8>,
}

fn seq_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn receipt_row(r: &Row<'_>) -> rusqlite::Result<ReceiptRow> {
    Ok(ReceiptRow {
        id: r.get(0)?,
        job_id: r.get(1)?,
        seq: seq_of(r.get(2)?),
        kind: r.get(3)?,
        body: r.get(4)?,
        signature: r.get(5)?,
        digest: r.get(6)?,
        quote_seq: r.get::<_, Option<i64>>(7)?.map(seq_of),
    })
}

fn quote_row(r: &Row<'_>) -> rusqlite::Result<ReceiptQuoteRow> {
    Ok(ReceiptQuoteRow {
        seq: seq_of(r.get(0)?),
        prev: r.get(1)?,
        receipts_json: r.get(2)?,
        attest: r.get(3)?,
        signature: r.get(4)?,
    })
}

const RECEIPT_COLUMNS: &str = "id, job_id, seq, kind, body, signature, digest, quote_seq";

impl StateStore {
    /// Stores a draft (fails on a duplicate `(job_id, seq)` or an unknown job).
    pub fn receipt_draft_add(
        &mut self,
        job_id: &str,
        seq: u64,
        draft_json: &str,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO receipt_drafts (job_id, seq, draft_json) VALUES (?1, ?2, ?3)",
                params![job_id, int(seq), draft_json],
            )
            .map(|_| ())
            .map_err(self.err("insert receipt draft"))
    }

    /// Every draft, in issue order.
    pub fn receipt_drafts(&self) -> Result<Vec<ReceiptDraftRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, job_id, seq, draft_json FROM receipt_drafts ORDER BY id")
            .map_err(self.err("query receipt drafts"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ReceiptDraftRow {
                    id: r.get(0)?,
                    job_id: r.get(1)?,
                    seq: seq_of(r.get(2)?),
                    draft_json: r.get(3)?,
                })
            })
            .map_err(self.err("query receipt drafts"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("read receipt draft"))
    }

    /// The newest draft or receipt of every job that has one: `(job_id, seq, JSON body)`
    /// (the draft's JSON, or the signed body), for picking a chain up after a restart.
    pub fn receipt_heads(&self) -> Result<Vec<(String, u64, String)>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT job_id, seq, doc FROM (
                    SELECT job_id, seq, draft_json AS doc FROM receipt_drafts
                    UNION ALL
                    SELECT job_id, seq, CAST(body AS TEXT) AS doc FROM receipts
                 ) AS all_receipts
                 WHERE seq = (
                    SELECT max(seq) FROM (
                        SELECT job_id AS j, seq FROM receipt_drafts
                        UNION ALL
                        SELECT job_id AS j, seq FROM receipts
                    ) WHERE j = all_receipts.job_id
                 )",
            )
            .map_err(self.err("query receipt heads"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, seq_of(r.get(1)?), r.get(2)?)))
            .map_err(self.err("query receipt heads"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("read receipt head"))
    }

    /// The newest signed receipt of a job.
    pub fn receipt_last(&self, job_id: &str) -> Result<Option<ReceiptRow>, StateError> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {RECEIPT_COLUMNS} FROM receipts WHERE job_id = ?1 \
                     ORDER BY seq DESC LIMIT 1"
                ),
                [job_id],
                receipt_row,
            )
            .optional()
            .map_err(self.err("read last receipt"))
    }

    /// Replaces draft `draft_id` by the signed `receipt`, in one transaction.
    pub fn receipt_sign(&mut self, draft_id: i64, receipt: &ReceiptRow) -> Result<i64, StateError> {
        let e = |what| sqlite_err(&self.path, what);
        let tx = self.conn.transaction().map_err(e("begin receipt"))?;
        tx.execute(
            "INSERT INTO receipts (job_id, seq, kind, body, signature, digest)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                receipt.job_id,
                int(receipt.seq),
                receipt.kind,
                receipt.body,
                receipt.signature,
                receipt.digest
            ],
        )
        .map_err(e("insert receipt"))?;
        let id = tx.last_insert_rowid();
        tx.execute("DELETE FROM receipt_drafts WHERE id = ?1", [draft_id])
            .map_err(e("delete receipt draft"))?;
        tx.commit().map_err(e("commit receipt"))?;
        Ok(id)
    }

    /// A job's signed receipts, in chain order.
    pub fn receipts_of(&self, job_id: &str) -> Result<Vec<ReceiptRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {RECEIPT_COLUMNS} FROM receipts WHERE job_id = ?1 ORDER BY seq"
            ))
            .map_err(self.err("query receipts"))?;
        let rows = stmt
            .query_map([job_id], receipt_row)
            .map_err(self.err("query receipts"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("read receipt"))
    }

    /// Signed receipts no quote covers yet, in issue order: `(id, digest)`.
    pub fn receipts_unquoted(&self) -> Result<Vec<(i64, String)>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, digest FROM receipts WHERE quote_seq IS NULL ORDER BY id")
            .map_err(self.err("query unquoted receipts"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.err("query unquoted receipts"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("read unquoted receipt"))
    }

    /// The newest receipt quote.
    pub fn receipt_quote_last(&self) -> Result<Option<ReceiptQuoteRow>, StateError> {
        self.conn
            .query_row(
                "SELECT seq, prev, receipts_json, attest, signature FROM receipt_quotes
                 ORDER BY seq DESC LIMIT 1",
                [],
                quote_row,
            )
            .optional()
            .map_err(self.err("read last receipt quote"))
    }

    /// Stores a quote and marks the receipts `receipt_ids` as covered by it, then deletes
    /// older quotes no receipt refers to any more; one transaction.
    pub fn receipt_quote_add(
        &mut self,
        quote: &ReceiptQuoteRow,
        receipt_ids: &[i64],
    ) -> Result<(), StateError> {
        let e = |what| sqlite_err(&self.path, what);
        let tx = self.conn.transaction().map_err(e("begin receipt quote"))?;
        tx.execute(
            "INSERT INTO receipt_quotes (seq, prev, receipts_json, attest, signature)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                int(quote.seq),
                quote.prev,
                quote.receipts_json,
                quote.attest,
                quote.signature
            ],
        )
        .map_err(e("insert receipt quote"))?;
        {
            let mut stmt = tx
                .prepare_cached("UPDATE receipts SET quote_seq = ?1 WHERE id = ?2")
                .map_err(e("prepare receipt quote mark"))?;
            for id in receipt_ids {
                stmt.execute(params![int(quote.seq), id])
                    .map_err(e("mark quoted receipt"))?;
            }
        }
        tx.execute(
            "DELETE FROM receipt_quotes WHERE seq < ?1
             AND seq NOT IN (SELECT quote_seq FROM receipts WHERE quote_seq IS NOT NULL)",
            [int(quote.seq)],
        )
        .map_err(e("delete unreferenced receipt quotes"))?;
        tx.commit().map_err(e("commit receipt quote"))
    }

    /// The quotes covering a job's receipts, in quote-chain order.
    pub fn receipt_quotes_of(&self, job_id: &str) -> Result<Vec<ReceiptQuoteRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT seq, prev, receipts_json, attest, signature FROM receipt_quotes
                 WHERE seq IN (SELECT quote_seq FROM receipts WHERE job_id = ?1)
                 ORDER BY seq",
            )
            .map_err(self.err("query receipt quotes"))?;
        let rows = stmt
            .query_map([job_id], quote_row)
            .map_err(self.err("query receipt quotes"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("read receipt quote"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::JobRow;
    use super::*;

    fn store_with_job(dir: &std::path::Path, id: &str) -> StateStore {
        let mut s = StateStore::open(dir).unwrap();
        let row = JobRow {
            job_id: id.into(),
            state: "running".into(),
            spec_json: "{}".into(),
            record_json: "{}".into(),
        };
        s.job_insert(&row, 1).unwrap();
        s
    }

    fn receipt(job: &str, seq: u64) -> ReceiptRow {
        ReceiptRow {
            id: 0,
            job_id: job.into(),
            seq,
            kind: "periodic".into(),
            body: format!("{{\"seq\":{seq}}}").into_bytes(),
            signature: vec![1],
            digest: format!("d{seq}"),
            quote_seq: None,
        }
    }

    #[test]
    fn drafts_become_receipts_get_quoted_and_go_with_their_job() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store_with_job(dir.path(), "j");
        s.receipt_draft_add("j", 0, "{\"seq\":0}").unwrap();
        s.receipt_draft_add("j", 1, "{\"seq\":1}").unwrap();
        assert!(s.receipt_draft_add("j", 1, "{}").is_err(), "duplicate seq");
        assert!(s.receipt_draft_add("nope", 0, "{}").is_err(), "unknown job");
        let drafts = s.receipt_drafts().unwrap();
        assert_eq!(drafts.iter().map(|d| d.seq).collect::<Vec<_>>(), [0, 1]);
        let first = s.receipt_sign(drafts[0].id, &receipt("j", 0)).unwrap();
        assert_eq!(s.receipt_drafts().unwrap().len(), 1);
        let heads = s.receipt_heads().unwrap();
        assert_eq!(heads, [("j".to_owned(), 1, "{\"seq\":1}".to_owned())]);
        assert_eq!(s.receipt_last("j").unwrap().unwrap().seq, 0);
        assert_eq!(s.receipts_unquoted().unwrap(), [(first, "d0".to_owned())]);
        let quote = ReceiptQuoteRow {
            seq: 0,
            prev: "00".into(),
            receipts_json: "[\"d0\"]".into(),
            attest: vec![2],
            signature: vec![3],
        };
        s.receipt_quote_add(&quote, &[first]).unwrap();
        assert!(s.receipts_unquoted().unwrap().is_empty());
        assert_eq!(
            s.receipt_quotes_of("j").unwrap(),
            std::slice::from_ref(&quote)
        );
        assert_eq!(s.receipt_quote_last().unwrap(), Some(quote.clone()));
        s.jobs_delete(&["j"]).unwrap();
        assert!(s.receipts_of("j").unwrap().is_empty());
        assert!(s.receipt_drafts().unwrap().is_empty());
        // The newest quote stays (the next one's prev); an older unreferenced one goes.
        let next = ReceiptQuoteRow { seq: 1, ..quote };
        s.receipt_quote_add(&next, &[]).unwrap();
        assert_eq!(s.receipt_quote_last().unwrap().unwrap().seq, 1);
        let n: i64 = s
            .conn
            .query_row("SELECT count(*) FROM receipt_quotes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }
}

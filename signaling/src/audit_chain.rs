//! The audit trail as a hash chain: each record carries the SHA-256 of the one before it and
//! of its own fields, so that a record changed, inserted or deleted inside the trail breaks
//! the chain from there on (`consult-server verify-audit` says where). The triggers already
//! refuse updates and deletes; the chain shows it when someone with the file removes them.
//! Records written before the chain existed are reported as such, not as breaks. Deleting the
//! newest records is not seen from inside: export the last hash now and then to anchor it.

use sha2::{Digest, Sha256};

/// The hash before the first chained record.
pub const GENESIS: [u8; 32] = [0; 32];

/// One stored record, as hashed: the detail as its stored JSON text.
pub struct Row<'a> {
    pub seq: i64,
    pub ts_ms: i64,
    pub room: &'a str,
    pub actor: Option<&'a str>,
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub detail: &'a str,
}

/// The hash of `row` chained after `prev` (fields length-prefixed: no two rows hash alike by
/// moving bytes between fields).
pub fn hash(prev: &[u8; 32], row: &Row<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(row.seq.to_le_bytes());
    h.update(row.ts_ms.to_le_bytes());
    for field in [
        Some(row.room),
        row.actor,
        Some(row.action),
        row.target,
        Some(row.detail),
    ] {
        match field {
            None => h.update([0u8]),
            Some(s) => {
                h.update([1u8]);
                h.update((s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
        }
    }
    h.finalize().into()
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The chain holds: `chained` records checked, after `unchained` written before it existed.
    Intact { chained: usize, unchained: usize },
    /// The chain breaks at record `seq`: changed, inserted, or the one before it deleted.
    Broken { seq: i64, reason: &'static str },
}

/// Check rows (oldest first) with their stored hashes (hex; `None`: written before the chain).
pub fn verify<'a>(rows: impl IntoIterator<Item = (Row<'a>, Option<&'a str>)>) -> Verdict {
    let mut prev = GENESIS;
    let mut chained = 0;
    let mut unchained = 0;
    for (row, stored) in rows {
        let Some(stored) = stored else {
            if chained > 0 {
                return Verdict::Broken {
                    seq: row.seq,
                    reason: "a record without a hash inside the chain (inserted)",
                };
            }
            unchained += 1;
            continue;
        };
        let expected = hash(&prev, &row);
        if hex::encode(expected) != stored {
            return Verdict::Broken {
                seq: row.seq,
                reason: "the record or the one before it was changed or deleted",
            };
        }
        prev = expected;
        chained += 1;
    }
    Verdict::Intact { chained, unchained }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, detail: &str) -> Row<'_> {
        Row {
            seq,
            ts_ms: 1000 + seq,
            room: "r",
            actor: Some("dr"),
            action: "join",
            target: None,
            detail,
        }
    }

    fn chain(details: &[&str]) -> Vec<String> {
        let mut prev = GENESIS;
        details
            .iter()
            .enumerate()
            .map(|(i, d)| {
                prev = hash(&prev, &row(i as i64 + 1, d));
                hex::encode(prev)
            })
            .collect()
    }

    #[test]
    fn a_change_or_a_deletion_breaks_the_chain_where_it_happened() {
        let details = ["{\"a\":1}", "{\"a\":2}", "{\"a\":3}"];
        let hashes = chain(&details);
        let rows = |d: [&'static str; 3]| {
            let hashes = hashes.clone();
            (0..3)
                .map(move |i| (row(i as i64 + 1, d[i]), Some(hashes[i].clone())))
                .collect::<Vec<_>>()
        };
        let intact = rows(details);
        assert_eq!(
            verify(intact.iter().map(|(r, h)| (Row { ..*r }, h.as_deref()))),
            Verdict::Intact {
                chained: 3,
                unchained: 0
            }
        );
        let changed = rows(["{\"a\":1}", "{\"a\":9}", "{\"a\":3}"]);
        assert!(matches!(
            verify(changed.iter().map(|(r, h)| (Row { ..*r }, h.as_deref()))),
            Verdict::Broken { seq: 2, .. }
        ));
        // The second record deleted: the third no longer follows the first.
        let deleted = [&intact[0], &intact[2]];
        assert!(matches!(
            verify(deleted.iter().map(|(r, h)| (Row { ..*r }, h.as_deref()))),
            Verdict::Broken { seq: 3, .. }
        ));
        // Records from before the chain, then the chain: intact.
        let before = [(row(0, "{}"), None)];
        let with_prefix = before
            .into_iter()
            .chain(intact.iter().map(|(r, h)| (Row { ..*r }, h.as_deref())));
        assert_eq!(
            verify(with_prefix),
            Verdict::Intact {
                chained: 3,
                unchained: 1
            }
        );
    }
}

//! `ums audit verify`: walks the hash chain (archives first, when given, then the table)
//! and names the first event that was edited, deleted, inserted or reordered. From
//! `keyed_from` on the links are HMACs under the chain key; the signed checkpoints kept
//! outside the database (`audit/checkpoint.rs`) must lie on the chain, so even a chain
//! recomputed in full by someone with the database (but not the key) is found out.

use std::fmt;
use std::path::Path;

use std::collections::BTreeMap;

use crate::audit::archive::read_archives;
use crate::audit::checkpoint;
use crate::audit::query::{EVENT_COLUMNS, EventRecord, EventRow};
use crate::audit::{ChainKey, GENESIS_HASH, is_keyed_at};
use crate::store::Store;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Events `from..=to` are missing before the event `next_id`.
    Deleted {
        from: i64,
        to: i64,
        next_id: Option<i64>,
    },
    /// The event does not follow the one before it: an event was inserted or the order changed.
    InsertedOrReordered { seq: i64, id: i64 },
    /// The event's content no longer matches its hash.
    Edited { seq: i64, id: i64 },
    /// The archives do not end where the table says archiving stopped.
    ArchiveIncomplete {
        expected_through: i64,
        found_through: i64,
    },
    /// A signed checkpoint names another hash at its seq than the chain has: the chain was
    /// rewritten from before that point.
    CheckpointMismatch { seq: i64 },
    /// A checkpoint is past the end of the chain: events were cut from its end.
    CheckpointBeyondHead { seq: i64, head: i64 },
    /// A checkpoint line whose signature does not hold (edited, or made without the key).
    CheckpointForged { line: usize },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Deleted { from, to, next_id } => match next_id {
                Some(id) => write!(
                    f,
                    "events seq {from}..={to} were deleted (before event id {id})"
                ),
                None => write!(
                    f,
                    "events seq {from}..={to} were deleted (at the end of the trail)"
                ),
            },
            Finding::InsertedOrReordered { seq, id } => {
                write!(
                    f,
                    "event seq {seq} (id {id}) does not follow the event before it: inserted or reordered"
                )
            }
            Finding::Edited { seq, id } => write!(f, "event seq {seq} (id {id}) was edited"),
            Finding::ArchiveIncomplete {
                expected_through,
                found_through,
            } => write!(
                f,
                "the archives end at seq {found_through} but the table says seq {expected_through} was archived"
            ),
            Finding::CheckpointMismatch { seq } => write!(
                f,
                "the chain at seq {seq} is not what the signed checkpoint recorded: rewritten"
            ),
            Finding::CheckpointBeyondHead { seq, head } => write!(
                f,
                "a signed checkpoint names seq {seq} but the chain ends at {head}: events were deleted"
            ),
            Finding::CheckpointForged { line } => write!(
                f,
                "checkpoint line {line} does not carry a valid signature: edited or forged"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub checked: u64,
    pub finding: Option<Finding>,
}

/// Checks one event against the running chain; returns the finding, if any.
pub struct ChainWalk {
    expected_seq: i64,
    running_hash: String,
    key: ChainKey,
    keyed_from: Option<i64>,
    /// Signed checkpoints still ahead of the walk: seq → hash.
    checkpoints: BTreeMap<i64, String>,
    pub checked: u64,
}

impl ChainWalk {
    pub fn new(
        expected_seq: i64,
        running_hash: String,
        key: ChainKey,
        keyed_from: Option<i64>,
    ) -> Self {
        ChainWalk {
            expected_seq,
            running_hash,
            key,
            keyed_from,
            checkpoints: BTreeMap::new(),
            checked: 0,
        }
    }

    fn expect_checkpoints(&mut self, checkpoints: BTreeMap<i64, String>) {
        self.checkpoints = checkpoints;
    }

    pub fn step(&mut self, row: &EventRow) -> Option<Finding> {
        let seq = row.event.seq;
        if seq > self.expected_seq {
            return Some(Finding::Deleted {
                from: self.expected_seq,
                to: seq - 1,
                next_id: Some(row.id),
            });
        }
        if seq < self.expected_seq || row.prev_hash != self.running_hash {
            return Some(Finding::InsertedOrReordered { seq, id: row.id });
        }
        let expected = if is_keyed_at(self.keyed_from, seq) {
            row.event.keyed_chain_hash(&row.prev_hash, &self.key)
        } else {
            Some(row.event.chain_hash(&row.prev_hash))
        };
        if expected.as_deref() != Some(row.hash.as_str()) {
            return Some(Finding::Edited { seq, id: row.id });
        }
        if let Some(recorded) = self.checkpoints.remove(&seq)
            && recorded != row.hash
        {
            return Some(Finding::CheckpointMismatch { seq });
        }
        self.running_hash = row.hash.clone();
        self.expected_seq += 1;
        self.checked += 1;
        None
    }
}

pub async fn verify(store: &Store, archive_dir: Option<&Path>) -> anyhow::Result<Report> {
    let mut connection = store.reports().await?;
    #[allow(clippy::type_complexity)]
    let (
        head_seq,
        head_hash,
        archived_through,
        archived_hash,
        keyed_from,
        retained_from,
        retained_hash,
    ): (i64, String, i64, String, Option<i64>, i64, String) = crate::with_db!(connection, |db| {
        sqlx::query_as(
            "SELECT seq, last_hash, archived_through, archived_hash, keyed_from, retained_from, retained_hash \
             FROM audit_chain WHERE id = 1",
        )
        .fetch_one(db)
        .await
    })?;
    let key = store.chain_key().clone();

    let checkpoints = match archive_dir {
        Some(directory) => match checkpoint::read(directory, &key)? {
            Ok(checkpoints) => checkpoints,
            Err(line) => {
                return Ok(Report {
                    checked: 0,
                    finding: Some(Finding::CheckpointForged { line }),
                });
            }
        },
        None => BTreeMap::new(),
    };
    if let Some((&seq, _)) = checkpoints.last_key_value()
        && seq > head_seq
    {
        return Ok(Report {
            checked: 0,
            finding: Some(Finding::CheckpointBeyondHead {
                seq,
                head: head_seq,
            }),
        });
    }

    let mut walk = match archive_dir {
        Some(directory) => {
            // Archives past their retention are gone: the chain is checked from the first
            // event kept, which must link to the hash recorded when the older ones left.
            let (first, first_prev) = if retained_from > 1 {
                (retained_from, retained_hash)
            } else {
                (1, GENESIS_HASH.to_string())
            };
            let mut walk = ChainWalk::new(first, first_prev, key, keyed_from);
            walk.expect_checkpoints(
                checkpoints
                    .into_iter()
                    .filter(|(seq, _)| *seq >= first)
                    .collect(),
            );
            for row in read_archives(directory)? {
                let row = row?;
                // A file past retention whose deletion was cut short: no longer vouched for.
                if row.event.seq < first {
                    continue;
                }
                if let Some(finding) = walk.step(&row) {
                    return Ok(Report {
                        checked: walk.checked,
                        finding: Some(finding),
                    });
                }
            }
            if walk.expected_seq - 1 != archived_through || walk.running_hash != archived_hash {
                let finding = Finding::ArchiveIncomplete {
                    expected_through: archived_through,
                    found_through: walk.expected_seq - 1,
                };
                return Ok(Report {
                    checked: walk.checked,
                    finding: Some(finding),
                });
            }
            walk
        }
        None => ChainWalk::new(archived_through + 1, archived_hash, key, keyed_from),
    };

    // Archived rows may wait for their partition to be dropped: the archive holds them.
    let sql = format!("SELECT {EVENT_COLUMNS} FROM audit_logs WHERE seq > $1 ORDER BY seq");
    let mut rows = crate::with_db!(connection, |db| sqlx::query_as::<_, EventRecord>(&sql)
        .bind(archived_through)
        .fetch(db));
    use futures_util::TryStreamExt;
    while let Some(row) = rows.try_next().await? {
        if let Some(finding) = walk.step(&EventRow::from(row)) {
            return Ok(Report {
                checked: walk.checked,
                finding: Some(finding),
            });
        }
    }
    // Events cut from the end leave the chain head pointing past the last row.
    let finding = (walk.expected_seq - 1 != head_seq || walk.running_hash != head_hash).then_some(
        Finding::Deleted {
            from: walk.expected_seq,
            to: head_seq,
            next_id: None,
        },
    );
    Ok(Report {
        checked: walk.checked,
        finding,
    })
}

//! Signed checkpoints of the chain head, kept outside the database: a line a checkpoint in
//! `audit-checkpoints.jsonl` of the archive directory, and the same in the log. Someone who
//! can write to the database can rewrite events and recompute every link after them only
//! with the chain key; even then (or with an unkeyed chain) the head they produce differs
//! from the checkpoints written before, which `ums audit verify --archive DIR` checks.
//! Checkpoints are signed under their own key derived from `UMS_SECRET_KEY`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::audit::ChainKey;
use crate::clock::{Millis, to_rfc3339};
use crate::store::Store;

pub const FILE_NAME: &str = "audit-checkpoints.jsonl";

#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint {
    seq: i64,
    hash: String,
    at: String,
    /// HMAC under the checkpoint key; empty when the service has no secret key.
    mac: String,
    /// The chain was re-linked from this seq on (its personal fields sealed,
    /// `audit::personal`): the checkpoints before this line at or past it named hashes the
    /// chain no longer has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    relinked_from: Option<i64>,
}

fn signature(key: &ChainKey, seq: i64, hash: &str, at: &str, relinked_from: Option<i64>) -> String {
    let seq = seq.to_string();
    let relinked = relinked_from.map(|from| format!("|relinked from {from}"));
    let mut parts: Vec<&[u8]> = vec![seq.as_bytes(), b"|", hash.as_bytes(), b"|", at.as_bytes()];
    if let Some(relinked) = &relinked {
        parts.push(relinked.as_bytes());
    }
    key.sign(true, &parts).unwrap_or_default()
}

/// Records the current head: in the log always, and in `directory` when there is one.
pub async fn write(store: &Store, directory: Option<&Path>, now: Millis) -> anyhow::Result<()> {
    write_checkpoint(store, directory, now, None).await
}

/// Records the head of a chain re-linked from `from` on, superseding the checkpoints before
/// it that name seqs from there.
pub async fn write_relinked(
    store: &Store,
    directory: Option<&Path>,
    now: Millis,
    from: i64,
) -> anyhow::Result<()> {
    write_checkpoint(store, directory, now, Some(from)).await
}

async fn write_checkpoint(
    store: &Store,
    directory: Option<&Path>,
    now: Millis,
    relinked_from: Option<i64>,
) -> anyhow::Result<()> {
    let (seq, hash): (i64, String) = {
        let mut connection = store.read().await?;
        crate::with_db!(connection, |db| sqlx::query_as(
            "SELECT seq, last_hash FROM audit_chain WHERE id = 1"
        )
        .fetch_one(db)
        .await)?
    };
    if seq == 0 {
        return Ok(());
    }
    let at = to_rfc3339(now);
    let mac = signature(store.chain_key(), seq, &hash, &at, relinked_from);
    tracing::info!(seq, hash = %hash, at = %at, mac = %mac, ?relinked_from, "audit checkpoint");
    let Some(directory) = directory else {
        return Ok(());
    };
    std::fs::create_dir_all(directory)
        .with_context(|| format!("creating {}", directory.display()))?;
    let path = directory.join(FILE_NAME);
    let mut line = serde_json::to_vec(&Checkpoint {
        seq,
        hash,
        at,
        mac,
        relinked_from,
    })?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(&line)?;
    file.sync_all()?;
    Ok(())
}

/// The checkpoints of `directory` (seq → hash), or the number of the first line whose
/// signature does not hold. No file: no checkpoints.
pub fn read(
    directory: &Path,
    key: &ChainKey,
) -> anyhow::Result<Result<BTreeMap<i64, String>, usize>> {
    let path = directory.join(FILE_NAME);
    if !path.exists() {
        return Ok(Ok(BTreeMap::new()));
    }
    let reader = BufReader::new(
        std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?,
    );
    let mut checkpoints = BTreeMap::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let Ok(checkpoint) = serde_json::from_str::<Checkpoint>(&line) else {
            return Ok(Err(index + 1));
        };
        let expected = signature(
            key,
            checkpoint.seq,
            &checkpoint.hash,
            &checkpoint.at,
            checkpoint.relinked_from,
        );
        if !bool::from(expected.as_bytes().ct_eq(checkpoint.mac.as_bytes())) {
            return Ok(Err(index + 1));
        }
        if let Some(from) = checkpoint.relinked_from {
            checkpoints.retain(|seq, _| *seq < from);
        }
        checkpoints.insert(checkpoint.seq, checkpoint.hash);
    }
    Ok(Ok(checkpoints))
}

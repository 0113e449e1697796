//! Retention: events move to archive files a whole month at a time, once the month is older
//! than the hot window (`audit-YYYY-MM.jsonl.gz`), keeping their chain fields so
//! `ums audit verify --archive DIR` checks them. The table keeps a watermark (the last archived
//! seq and its hash); the append-only triggers let only rows under the watermark be deleted.
//! On PostgreSQL the table is partitioned by month and an archived month leaves by dropping
//! its partition; on SQLite its rows are deleted. Login attempts and delivered outbox rows
//! expire after their own windows.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};

use crate::audit::StoredEvent;
use crate::audit::query::{EVENT_COLUMNS, EventRecord, EventRow};
use crate::clock::{Millis, Timestamp};
use crate::store::{Backend, Store};

/// One archived event: the stored row, chain fields included.
#[derive(Debug, Serialize, Deserialize)]
struct ArchivedEvent {
    id: i64,
    seq: i64,
    occurred_at: i64,
    action: String,
    success: bool,
    user_id: Option<i64>,
    actor_ip: Option<String>,
    user_agent: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    lab_id: Option<i64>,
    details: String,
    request_id: Option<String>,
    prev_hash: String,
    hash: String,
    /// Sealed personal fields (`audit/personal.rs`); absent in events archived before them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
}

impl From<&EventRow> for ArchivedEvent {
    fn from(row: &EventRow) -> Self {
        let event = &row.event;
        ArchivedEvent {
            id: row.id,
            seq: event.seq,
            occurred_at: event.occurred_at,
            action: event.action.clone(),
            success: event.success,
            user_id: event.user_id,
            actor_ip: event.actor_ip.clone(),
            user_agent: event.user_agent.clone(),
            resource_type: event.resource_type.clone(),
            resource_id: event.resource_id.clone(),
            lab_id: event.lab_id,
            details: event.details.clone(),
            request_id: event.request_id.clone(),
            prev_hash: row.prev_hash.clone(),
            hash: row.hash.clone(),
            subject_id: event.subject_id,
            sealed: event.sealed.clone(),
        }
    }
}

impl From<ArchivedEvent> for EventRow {
    fn from(archived: ArchivedEvent) -> Self {
        EventRow {
            id: archived.id,
            prev_hash: archived.prev_hash,
            hash: archived.hash,
            event: StoredEvent {
                seq: archived.seq,
                occurred_at: archived.occurred_at,
                action: archived.action,
                success: archived.success,
                user_id: archived.user_id,
                actor_ip: archived.actor_ip,
                user_agent: archived.user_agent,
                resource_type: archived.resource_type,
                resource_id: archived.resource_id,
                lab_id: archived.lab_id,
                details: archived.details,
                request_id: archived.request_id,
                subject_id: archived.subject_id,
                sealed: archived.sealed,
            },
            person_keys: (None, None),
            erased: false,
        }
    }
}

fn month_of(millis: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .format("%Y-%m")
        .to_string()
}

/// The start (00:00 UTC on the 1st) of the month holding `millis`.
pub fn month_start(millis: Millis) -> Millis {
    use chrono::{Datelike, TimeZone};
    let day = chrono::DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .date_naive();
    chrono::Utc
        .with_ymd_and_hms(day.year(), day.month(), 1, 0, 0, 0)
        .single()
        .map_or(millis, |start| start.timestamp_millis())
}

/// On PostgreSQL, makes sure the partitions of this month and the next exist (no-op on
/// SQLite). Run at start and hourly; an event of a month without one lands in the default
/// partition, so none is ever lost.
pub async fn prepare_partitions(store: &Store, now: Millis) -> anyhow::Result<()> {
    if store.backend() != Backend::Postgres {
        return Ok(());
    }
    // Each call commits on its own (no transaction around them): creating a partition locks
    // the whole table, and that lock must not outlive the statement.
    let mut connection = store.write().await?;
    for month in [now, month_start(now) + 32 * 86_400_000] {
        crate::execute!(
            connection,
            sqlx::query("SELECT audit_logs_ensure_month($1)").bind(Timestamp::from(month))
        )?;
    }
    Ok(())
}

fn archive_path(directory: &Path, month: &str) -> PathBuf {
    directory.join(format!("audit-{month}.jsonl.gz"))
}

/// The archive files of `directory`, oldest month first.
fn archive_files(directory: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !directory.exists() {
        return Ok(Vec::new());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory)
        .with_context(|| format!("reading {}", directory.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("audit-") && name.ends_with(".jsonl.gz"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Every archived event of `directory`, month by month, in chain order.
pub fn read_archives(
    directory: &Path,
) -> anyhow::Result<impl Iterator<Item = anyhow::Result<EventRow>>> {
    let files = archive_files(directory)?;
    let lines = files.into_iter().flat_map(|path| {
        let reader = File::open(&path)
            .map(|file| BufReader::new(MultiGzDecoder::new(file)))
            .with_context(|| format!("opening {}", path.display()));
        match reader {
            Ok(reader) => Box::new(reader.lines().map(move |line| {
                let line = line.with_context(|| format!("reading {}", path.display()))?;
                let archived: ArchivedEvent =
                    serde_json::from_str(&line).context("an archived event")?;
                Ok(EventRow::from(archived))
            })) as Box<dyn Iterator<Item = anyhow::Result<EventRow>>>,
            Err(error) => Box::new(std::iter::once(Err(error))),
        }
    });
    Ok(lines)
}

/// The last seq already in a month's archive file (0 if none), so a run that crashed after
/// writing the file but before moving the watermark does not archive events twice.
fn last_archived_seq(path: &Path) -> anyhow::Result<i64> {
    if !path.exists() {
        return Ok(0);
    }
    let reader = BufReader::new(MultiGzDecoder::new(File::open(path)?));
    let mut last = 0;
    for line in reader.lines() {
        let archived: ArchivedEvent = serde_json::from_str(&line?)?;
        last = last.max(archived.seq);
    }
    Ok(last)
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ArchiveReport {
    pub events: u64,
    pub files: Vec<PathBuf>,
    /// The PostgreSQL partitions dropped (months now held only by their archives).
    pub dropped_partitions: Vec<String>,
}

/// Moves the events of the months that ended before `cutoff` (a contiguous prefix of the
/// chain) to archives.
pub async fn archive(
    store: &Store,
    directory: &Path,
    cutoff: Millis,
) -> anyhow::Result<ArchiveReport> {
    let cutoff = month_start(cutoff);
    std::fs::create_dir_all(directory)
        .with_context(|| format!("creating {}", directory.display()))?;
    let mut connection = store.reports().await?;
    let archived_through: i64 = crate::with_db!(connection, |db| sqlx::query_scalar(
        "SELECT archived_through FROM audit_chain WHERE id = 1"
    )
    .fetch_one(db)
    .await)?;
    let sql = format!("SELECT {EVENT_COLUMNS} FROM audit_logs WHERE seq > $1 ORDER BY seq");
    let mut by_month: BTreeMap<String, Vec<EventRow>> = BTreeMap::new();
    let mut last: Option<(i64, String)> = None;
    {
        use futures_util::TryStreamExt;
        let mut rows = crate::with_db!(connection, |db| sqlx::query_as::<_, EventRecord>(&sql)
            .bind(archived_through)
            .fetch(db));
        while let Some(row) = rows.try_next().await? {
            let row = EventRow::from(row);
            if row.event.occurred_at >= cutoff {
                break;
            }
            last = Some((row.event.seq, row.hash.clone()));
            by_month
                .entry(month_of(row.event.occurred_at))
                .or_default()
                .push(row);
            // Bounded batches: a very old backlog is archived over several runs.
            if by_month.values().map(Vec::len).sum::<usize>() >= 100_000 {
                break;
            }
        }
    }
    drop(connection);
    let Some((last_seq, last_hash)) = last else {
        // A run that archived but could not drop its partitions tries again.
        let dropped_partitions = drop_archived_partitions(store, cutoff).await?;
        return Ok(ArchiveReport {
            dropped_partitions,
            ..ArchiveReport::default()
        });
    };
    let mut report = ArchiveReport::default();
    for (month, rows) in by_month {
        let path = archive_path(directory, &month);
        let already = last_archived_seq(&path)?;
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        for row in rows.iter().filter(|row| row.event.seq > already) {
            serde_json::to_writer(&mut encoder, &ArchivedEvent::from(row))?;
            encoder.write_all(b"\n")?;
            report.events += 1;
        }
        let member = encoder.finish()?;
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        file.write_all(&member)?;
        file.sync_all()?;
        report.files.push(path);
    }
    let mut transaction = store.begin().await?;
    crate::execute!(
        transaction,
        sqlx::query(
            "UPDATE audit_chain SET archived_through = $1, archived_hash = $2 WHERE id = 1"
        )
        .bind(last_seq)
        .bind(&last_hash)
    )?;
    // PostgreSQL: the months leave with their partitions below; only strays in the default
    // partition are deleted row by row.
    let delete = match store.backend() {
        Backend::Sqlite => "DELETE FROM audit_logs WHERE seq <= $1",
        Backend::Postgres => "DELETE FROM audit_logs_default WHERE seq <= $1",
    };
    crate::execute!(transaction, sqlx::query(delete).bind(last_seq))?;
    // The table no longer holds them: their address tags have nothing left to find.
    crate::execute!(
        transaction,
        sqlx::query("DELETE FROM audit_ip_index WHERE seq <= $1").bind(last_seq)
    )?;
    transaction.commit().await?;
    report.dropped_partitions = drop_archived_partitions(store, cutoff).await?;
    Ok(report)
}

/// Drops the PostgreSQL partitions of archived months that ended by `cutoff`. Dropping needs
/// a moment's exclusive lock on the table; rather than queue every audit write behind a long
/// export's read, it gives up after a few seconds and the next run tries again.
async fn drop_archived_partitions(store: &Store, cutoff: Millis) -> anyhow::Result<Vec<String>> {
    if store.backend() != Backend::Postgres {
        return Ok(Vec::new());
    }
    let mut transaction = store.begin().await?;
    crate::execute!(transaction, sqlx::query("SET LOCAL lock_timeout = '5s'"))?;
    let dropped = crate::with_db!(transaction, |db| sqlx::query_scalar::<_, String>(
        "SELECT audit_logs_drop_archived_months($1) AS name"
    )
    .bind(Timestamp::from(cutoff))
    .fetch_all(db)
    .await);
    match dropped {
        Ok(names) => {
            transaction.commit().await?;
            Ok(names)
        }
        Err(error) => {
            tracing::warn!(error = %error, "dropping archived audit partitions failed; will retry");
            Ok(Vec::new())
        }
    }
}

/// Deletes the archive files of months that ended before `before`
/// (`UMS_AUDIT_ARCHIVE_RETENTION`), oldest first, and records where the retained chain now
/// starts (`audit_chain.retained_from` and the hash it links to), so `ums audit verify`
/// checks the rest from there and still finds a file removed out of turn.
pub async fn delete_expired_archives(
    store: &Store,
    directory: &Path,
    before: Millis,
) -> anyhow::Result<Vec<PathBuf>> {
    let before = month_start(before);
    let archived_through: i64 = {
        let mut connection = store.read().await?;
        crate::with_db!(connection, |db| sqlx::query_scalar(
            "SELECT archived_through FROM audit_chain WHERE id = 1"
        )
        .fetch_one(db)
        .await)?
    };
    let mut files = archive_files(directory)?;
    files.retain(|path| month_of_file(path).is_some_and(|start| next_month(start) <= before));
    let mut last: Option<(i64, String)> = None;
    let mut deleted = Vec::new();
    for path in files {
        let mut file_last = None;
        let reader = BufReader::new(MultiGzDecoder::new(File::open(&path)?));
        for line in reader.lines() {
            let archived: ArchivedEvent = serde_json::from_str(&line?)?;
            file_last = Some((archived.seq, archived.hash));
        }
        // Only what the table no longer holds leaves.
        if file_last
            .as_ref()
            .is_some_and(|(seq, _)| *seq > archived_through)
        {
            break;
        }
        last = file_last.or(last);
        deleted.push(path);
    }
    let Some((seq, hash)) = last else {
        return Ok(Vec::new());
    };
    // The start moves first: a crash before the files go leaves them behind, and
    // verification passes over what lies before the start.
    let mut transaction = store.begin().await?;
    crate::execute!(
        transaction,
        sqlx::query("UPDATE audit_chain SET retained_from = $1, retained_hash = $2 WHERE id = 1 AND retained_from <= $1")
            .bind(seq + 1)
            .bind(&hash)
    )?;
    transaction.commit().await?;
    for path in &deleted {
        std::fs::remove_file(path).with_context(|| format!("deleting {}", path.display()))?;
    }
    Ok(deleted)
}

/// The start of the month an archive file holds, from its name.
fn month_of_file(path: &Path) -> Option<Millis> {
    let name = path.file_name()?.to_str()?;
    let month = name.strip_prefix("audit-")?.strip_suffix(".jsonl.gz")?;
    let date = chrono::NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

fn next_month(start: Millis) -> Millis {
    month_start(start + 32 * 86_400_000)
}

/// Deletes what is kept only for a while (README, "Retention"): login attempts, idle
/// throttles, delivered mail, sign-in challenges, lab invitations, ended sessions, emailed
/// links and devices long unseen, each past its window.
pub async fn expire(
    store: &Store,
    login_attempts_before: Millis,
    now: Millis,
) -> anyhow::Result<u64> {
    let mut transaction = store.begin().await?;
    let attempts =
        crate::security::attempts::expire(&mut transaction, login_attempts_before).await?;
    crate::security::lockout::expire_idle(&mut transaction, now).await?;
    crate::mail::outbox::expire_sent(&mut transaction, now).await?;
    crate::mfa::challenges::delete_expired(&mut transaction, now).await?;
    crate::labs::invitations::expire(&mut transaction, now).await?;
    crate::auth::sessions::expire(&mut transaction, now).await?;
    crate::auth::links::expire(&mut transaction, now).await?;
    crate::security::devices::expire(&mut transaction, now).await?;
    transaction.commit().await?;
    Ok(attempts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Millis {
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn months_start_on_the_first_at_midnight_utc() {
        let november = at("2026-11-01T00:00:00Z");
        assert_eq!(month_start(at("2026-11-29T06:04:45.123Z")), november);
        assert_eq!(month_start(november), november);
        assert_eq!(month_start(november - 1), at("2026-10-01T00:00:00Z"));
        assert_eq!(
            month_start(at("2028-02-29T23:59:59Z")),
            at("2028-02-01T00:00:00Z")
        );
        assert_eq!(month_of(november - 1), "2026-10");
    }
}

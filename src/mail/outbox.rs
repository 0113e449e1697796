//! The outbox worker: claims due messages, sends them over SMTP (or writes them to the log
//! when `UMS_SMTP_URL` is unset), retries with backoff capped at 60 seconds, and marks a
//! message failed, never dropped, after `UMS_MAIL_MAX_ATTEMPTS`.
//!
//! Claims are leases: a claimed row carries this worker's claim id and a lease end, and the
//! claiming UPDATE re-checks the row's status, so two instances never hold the same message.
//! A lease covers one send: it is renewed before each message of a batch, so a worker killed
//! mid-batch leaves its messages to the others within `LEASE`, not a batch's worth of
//! timeouts. A worker killed between the SMTP server's acceptance and the row's update makes
//! the message go out twice; both copies carry the row's own Message-ID, so the recipient's
//! mail client shows one. On shutdown, unsent claims go back to the queue.

use std::time::Duration;

use anyhow::Context;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;
use serde::Serialize;
use tokio::sync::watch;

use crate::clock::{Millis, Timestamp};
use crate::config::Config;
use crate::mail::RenderedEmail;
use crate::state::AppState;

const BATCH: i64 = 10;
/// Longer than one send may take (`SEND_TIMEOUT`), with a margin for the database.
const LEASE: Millis = 30_000;
const SEND_TIMEOUT: Duration = Duration::from_secs(20);

pub enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// No SMTP server configured: messages go to the log (development only).
    Log,
}

impl Transport {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let Some(url) = &config.smtp_url else {
            return Ok(Transport::Log);
        };
        let mut url = url.expose_secret().to_string();
        // smtp:// upgrades with STARTTLS when the server offers it; smtps:// is TLS from the start.
        if url.starts_with("smtp://") && !url.contains("tls=") {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str("tls=opportunistic");
        }
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&url)
            .map_err(|_| anyhow::anyhow!("invalid UMS_SMTP_URL"))?
            .timeout(Some(SEND_TIMEOUT))
            .build();
        Ok(Transport::Smtp(transport))
    }
}

/// Delay before attempt `attempts + 1`: 1 s, 2 s, 4 s, ... capped at 60 s.
pub fn backoff(attempts: i64) -> Millis {
    let exponent = attempts.clamp(1, 7) - 1;
    (1000i64 << exponent).min(60_000)
}

#[derive(sqlx::FromRow)]
struct Claimed {
    id: i64,
    recipient: String,
    body: Option<String>,
    attempts: i64,
    created_at: Timestamp,
}

impl Claimed {
    /// The same for every attempt at this message: a resent copy is recognisably the same.
    fn message_id(&self, from: &Mailbox) -> String {
        format!(
            "<ums.{}.{}@{}>",
            self.id,
            self.created_at.millis(),
            from.email.domain()
        )
    }
}

/// Runs until `shutdown` turns true, then hands unsent claims back to the queue.
pub async fn run(state: AppState, transport: Transport, mut shutdown: watch::Receiver<bool>) {
    let claim = crate::security::secrets::random_token();
    let poll = state.config.mail_poll_interval;
    loop {
        if *shutdown.borrow() {
            break;
        }
        if let Err(error) = deliver_due(&state, &transport, &claim, &shutdown).await {
            tracing::warn!(error = %error, "email outbox pass failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.changed() => {}
        }
    }
    if let Err(error) = release(&state, &claim).await {
        tracing::warn!(error = %error, "returning claimed emails to the outbox failed");
    }
}

async fn deliver_due(
    state: &AppState,
    transport: &Transport,
    claim: &str,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        let batch = claim_batch(state, claim).await?;
        if batch.is_empty() {
            return Ok(());
        }
        for message in batch {
            if *shutdown.borrow() {
                return Ok(());
            }
            if !renew_lease(state, claim, &message).await? {
                continue;
            }
            let outcome = match &message.body {
                Some(sealed) => match state.outbox.open(sealed) {
                    Ok(email) => send(state, transport, &message, &email).await,
                    Err(error) => Err(error.context("opening the stored message")),
                },
                None => Err(anyhow::anyhow!("the message has no body")),
            };
            settle(state, claim, &message, outcome).await?;
        }
    }
}

async fn claim_batch(state: &AppState, claim: &str) -> anyhow::Result<Vec<Claimed>> {
    let now = state.now();
    let due = "(status = 'queued' AND next_attempt_at <= $1) OR (status = 'sending' AND lease_until < $1)";
    let sql = format!(
        "UPDATE email_outbox SET status = 'sending', claim = $2, lease_until = $3, attempts = attempts + 1 \
         WHERE id IN (SELECT id FROM email_outbox WHERE {due} ORDER BY id LIMIT $4) AND ({due}) \
         RETURNING id, recipient, body, attempts, created_at"
    );
    let mut transaction = state.store.begin().await?;
    let mut claimed = crate::with_db!(transaction, |db| sqlx::query_as::<_, Claimed>(&sql)
        .bind(Timestamp::from(now))
        .bind(claim)
        .bind(Timestamp::from(now + LEASE))
        .bind(BATCH)
        .fetch_all(db)
        .await)?;
    transaction.commit().await?;
    claimed.sort_by_key(|message| message.id);
    Ok(claimed)
}

/// Extends this worker's lease on `message` before it is sent; false when the lease was lost
/// (the worker stalled past it and another took the message).
async fn renew_lease(state: &AppState, claim: &str, message: &Claimed) -> anyhow::Result<bool> {
    let mut connection = state.store.write().await?;
    let renewed = crate::execute!(
        connection,
        sqlx::query(
            "UPDATE email_outbox SET lease_until = $3 WHERE id = $1 AND claim = $2 AND status = 'sending'"
        )
        .bind(message.id)
        .bind(claim)
        .bind(Timestamp::from(state.now() + LEASE))
    )?;
    Ok(renewed == 1)
}

async fn send(
    state: &AppState,
    transport: &Transport,
    message: &Claimed,
    email: &RenderedEmail,
) -> anyhow::Result<()> {
    let recipient = message.recipient.as_str();
    match transport {
        Transport::Log => {
            tracing::warn!(
                to = recipient,
                subject = %email.subject,
                body = %email.text,
                "UMS_SMTP_URL is unset: email written to the log instead of sent (development only)"
            );
            Ok(())
        }
        Transport::Smtp(smtp) => {
            let from: Mailbox = state.config.mail_from.parse().context("UMS_MAIL_FROM")?;
            let to: Mailbox = recipient.parse().context("recipient address")?;
            let message = Message::builder()
                .message_id(Some(message.message_id(&from)))
                .from(from)
                .to(to)
                .subject(&email.subject)
                .multipart(MultiPart::alternative_plain_html(
                    email.text.clone(),
                    email.html.clone(),
                ))
                .context("building the message")?;
            tokio::time::timeout(SEND_TIMEOUT, smtp.send(message))
                .await
                .context("SMTP timed out")?
                .context("SMTP refused or unreachable")?;
            Ok(())
        }
    }
}

async fn settle(
    state: &AppState,
    claim: &str,
    message: &Claimed,
    outcome: anyhow::Result<()>,
) -> anyhow::Result<()> {
    let now = state.now();
    let mut transaction = state.store.begin().await?;
    match outcome {
        Ok(()) => {
            metrics::counter!("ums_emails_total", "result" => "sent").increment(1);
            // The body (which may hold a reset link) is erased once delivered.
            crate::execute!(transaction, sqlx::query(
                "UPDATE email_outbox SET status = 'sent', sent_at = $3, body = NULL, claim = NULL, \
                 lease_until = NULL, last_error = NULL WHERE id = $1 AND claim = $2",
            )
            .bind(message.id)
            .bind(claim)
            .bind(Timestamp::from(now))
            )?;
        }
        Err(error) => {
            let failed = message.attempts >= i64::from(state.config.mail_max_attempts);
            let result = if failed { "failed" } else { "retried" };
            metrics::counter!("ums_emails_total", "result" => result).increment(1);
            tracing::warn!(email_id = message.id, attempts = message.attempts, failed, error = %format!("{error:#}"), "email not sent");
            crate::execute!(transaction, sqlx::query(
                "UPDATE email_outbox SET status = $3, next_attempt_at = $4, last_error = $5, claim = NULL, \
                 lease_until = NULL WHERE id = $1 AND claim = $2",
            )
            .bind(message.id)
            .bind(claim)
            .bind(if failed { "failed" } else { "queued" })
            .bind(Timestamp::from(now + backoff(message.attempts)))
            .bind(format!("{error:#}").chars().take(500).collect::<String>())
            )?;
        }
    }
    transaction.commit().await?;
    Ok(())
}

async fn release(state: &AppState, claim: &str) -> anyhow::Result<()> {
    let mut transaction = state.store.begin().await?;
    crate::execute!(
        transaction,
        sqlx::query(
            "UPDATE email_outbox SET status = 'queued', claim = NULL, lease_until = NULL, \
         attempts = attempts - 1 WHERE claim = $1 AND status = 'sending'",
        )
        .bind(claim)
    )?;
    transaction.commit().await?;
    Ok(())
}

/// Deletes delivered messages (their bodies are already erased) after thirty days.
pub async fn expire_sent(
    connection: &mut crate::store::Connection,
    now: Millis,
) -> Result<(), crate::error::AppError> {
    crate::execute!(
        connection,
        sqlx::query("DELETE FROM email_outbox WHERE status = 'sent' AND sent_at < $1")
            .bind(Timestamp::from(now - 30 * 86_400_000))
    )?;
    Ok(())
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutboxCounts {
    pub queued: i64,
    pub sending: i64,
    pub sent: i64,
    pub failed: i64,
}

/// How many messages are in each state (for `/metrics` and operators).
pub async fn counts(state: &AppState) -> anyhow::Result<OutboxCounts> {
    let mut connection = state.store.read().await?;
    let rows: Vec<(String, i64)> = crate::with_db!(connection, |db| sqlx::query_as(
        "SELECT status, COUNT(*) AS n FROM email_outbox GROUP BY status"
    )
    .fetch_all(db)
    .await)?;
    let mut counts = OutboxCounts::default();
    for (status, n) in rows {
        match status.as_str() {
            "queued" => counts.queued = n,
            "sending" => counts.sending = n,
            "sent" => counts.sent = n,
            "failed" => counts.failed = n,
            _ => {}
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped_at_a_minute() {
        let delays: Vec<_> = (1..=9).map(backoff).collect();
        assert_eq!(
            delays,
            [
                1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000, 60_000
            ]
        );
    }
}

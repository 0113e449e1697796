//! The cache of the hot path: the account behind a live session (the `sessions` row joined
//! to its `users` row), which every authenticated request needs, and the account's labs
//! (its list for `/me`, and its membership of a lab for that lab's routes). It is exact, not
//! merely short-lived:
//!
//! - This instance's writes invalidate it when they commit. A store function that writes a
//!   session or an account says whose (`AsDb::changed`); a transaction keeps the names and
//!   drops them from the cache once it has committed, a plain connection at once.
//! - Other instances' writes (PostgreSQL) reach it through `LISTEN ums_auth`: triggers on
//!   `users`, `sessions`, `lab_memberships` and `labs` notify the id of every account they
//!   concern (migration 15), whoever writes, the command line included.
//! - A read that began before an invalidation never fills the cache (the epoch), so a value
//!   read before a commit cannot come back after it.
//! - On PostgreSQL it serves only while the notification channel is up; when it drops, the
//!   cache is emptied and bypassed until the channel is back.
//!
//! It is bounded: at most `capacity` accounts; a full cache forgets an arbitrary eighth.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::clock::Millis;
use crate::labs::{Lab, LabRole};
use crate::users::{Membership, User};

pub struct AuthCache {
    accounts: Mutex<HashMap<i64, Account>>,
    epoch: AtomicU64,
    hits: AtomicU64,
    lab_hits: AtomicU64,
    serving: AtomicBool,
    capacity: usize,
}

/// An account, its sessions known to be open (each with its expiry), and what is known of
/// its labs.
struct Account {
    user: User,
    sessions: HashMap<String, Millis>,
    read_at: Millis,
    labs: Option<Vec<Membership>>,
    /// Per lab: the lab and the account's role, or `None` when it is no member.
    memberships: HashMap<i64, Option<(Lab, LabRole)>>,
}

impl Account {
    fn new(user: &User, now: Millis) -> Self {
        Account {
            user: user.clone(),
            sessions: HashMap::new(),
            read_at: now,
            labs: None,
            memberships: HashMap::new(),
        }
    }

    fn is_fresh(&self, now: Millis) -> bool {
        now < self.read_at + MAX_AGE
    }
}

/// Labs whose membership is kept per account at most.
const LABS_PER_ACCOUNT: usize = 64;

/// How long an account is served before it is read again, notified or not: the bound on a
/// change no notification told of (on SQLite, a command run beside the server).
const MAX_AGE: Millis = 60_000;

/// Sessions cached per account at most (an account with more is read each time for the rest).
const SESSIONS_PER_ACCOUNT: usize = 64;

impl AuthCache {
    /// `serving`: whether it may serve from the start (SQLite, where this process is the only
    /// writer); PostgreSQL's starts off until its channel listens.
    pub fn new(capacity: usize, serving: bool) -> Self {
        AuthCache {
            accounts: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            lab_hits: AtomicU64::new(0),
            serving: AtomicBool::new(serving),
            capacity,
        }
    }

    /// Taken before a read whose result may fill the cache.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The account behind `session_id`, if both are cached and the session is open at `now`.
    pub fn get(&self, user_id: i64, session_id: &str, now: Millis) -> Option<User> {
        if !self.serving.load(Ordering::Acquire) {
            return None;
        }
        let accounts = self
            .accounts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let account = accounts.get(&user_id)?;
        let expires_at = *account.sessions.get(session_id)?;
        let fresh = now < expires_at && account.is_fresh(now);
        fresh.then(|| {
            self.hits.fetch_add(1, Ordering::Relaxed);
            account.user.clone()
        })
    }

    /// Sessions' accounts answered from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Labs and memberships answered from the cache so far.
    pub fn lab_hits(&self) -> u64 {
        self.lab_hits.load(Ordering::Relaxed)
    }

    /// Remembers what a read that began at `epoch` found, unless something was invalidated
    /// since (the read may predate that write's commit).
    pub fn fill(&self, epoch: u64, user: &User, session_id: &str, expires_at: Millis, now: Millis) {
        if self.capacity == 0 {
            return;
        }
        let Some(mut accounts) = self.serving_accounts() else {
            return;
        };
        // Checked under the lock that `invalidate` bumps the epoch under.
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if accounts.len() >= self.capacity && !accounts.contains_key(&user.id) {
            let forget: Vec<i64> = accounts
                .keys()
                .take((self.capacity / 8).max(1))
                .copied()
                .collect();
            for id in forget {
                accounts.remove(&id);
            }
        }
        let account = accounts
            .entry(user.id)
            .or_insert_with(|| Account::new(user, now));
        if !account.is_fresh(now) {
            *account = Account::new(user, now);
        }
        if account.sessions.len() < SESSIONS_PER_ACCOUNT {
            account.sessions.insert(session_id.to_string(), expires_at);
        }
    }

    /// The labs of a cached account (`/me`).
    pub fn labs(&self, user_id: i64, now: Millis) -> Option<Vec<Membership>> {
        let accounts = self.serving_accounts()?;
        let account = accounts
            .get(&user_id)
            .filter(|account| account.is_fresh(now))?;
        let labs = account.labs.clone();
        if labs.is_some() {
            self.lab_hits.fetch_add(1, Ordering::Relaxed);
        }
        labs
    }

    /// Remembers a cached account's labs, read since `epoch`.
    pub fn fill_labs(&self, epoch: u64, user_id: i64, labs: &[Membership]) {
        self.fill_account(epoch, user_id, |account| {
            account.labs = Some(labs.to_vec());
        });
    }

    /// A cached account's membership of lab `lab_id`: `Some(None)` when it is known to be no
    /// member, `None` when nothing is known.
    pub fn membership(
        &self,
        user_id: i64,
        lab_id: i64,
        now: Millis,
    ) -> Option<Option<(Lab, LabRole)>> {
        let accounts = self.serving_accounts()?;
        let account = accounts
            .get(&user_id)
            .filter(|account| account.is_fresh(now))?;
        let found = account.memberships.get(&lab_id).cloned();
        if found.is_some() {
            self.lab_hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Remembers a cached account's membership of a lab, read since `epoch`.
    pub fn fill_membership(
        &self,
        epoch: u64,
        user_id: i64,
        lab_id: i64,
        found: Option<(Lab, LabRole)>,
    ) {
        self.fill_account(epoch, user_id, |account| {
            if account.memberships.len() < LABS_PER_ACCOUNT {
                account.memberships.insert(lab_id, found);
            }
        });
    }

    fn serving_accounts(&self) -> Option<std::sync::MutexGuard<'_, HashMap<i64, Account>>> {
        if !self.serving.load(Ordering::Acquire) {
            return None;
        }
        Some(
            self.accounts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Adds to an account already cached (its session was looked up first), unless something
    /// was invalidated since `epoch`.
    fn fill_account(&self, epoch: u64, user_id: i64, fill: impl FnOnce(&mut Account)) {
        let Some(mut accounts) = self.serving_accounts() else {
            return;
        };
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if let Some(account) = accounts.get_mut(&user_id) {
            fill(account);
        }
    }

    /// Forgets an account and its sessions: something about them changed.
    pub fn invalidate(&self, user_id: i64) {
        let mut accounts = self
            .accounts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        accounts.remove(&user_id);
    }

    /// Forgets everything, and serves (or not) from now on.
    pub fn reset(&self, serving: bool) {
        let mut accounts = self
            .accounts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        accounts.clear();
        self.serving.store(serving, Ordering::Release);
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    /// Accounts cached now (a gauge).
    pub fn len(&self) -> usize {
        self.accounts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps the cache in step with every other writer (PostgreSQL): `LISTEN ums_auth`, and each
/// notification forgets its account. The cache serves only while the channel listens: it is
/// emptied and turned off when the connection drops (notifications sent meanwhile are lost),
/// and turned on, empty, once listening again. On SQLite there is nothing to listen to.
pub async fn listen(store: super::Store) {
    let Some(pool) = store.postgres_pool() else {
        return;
    };
    let cache = store.auth_cache().clone();
    loop {
        let listener = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen("ums_auth").await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = match listener.await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(error = %error, "the auth cache cannot listen; it stays off");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        cache.reset(true);
        tracing::debug!("the auth cache listens for changes");
        // `try_recv` answers None when the connection was lost.
        while let Ok(Some(notification)) = listener.try_recv().await {
            match notification.payload().parse::<i64>() {
                Ok(user_id) => cache.invalidate(user_id),
                Err(_) => cache.reset(true),
            }
        }
        cache.reset(false);
        tracing::warn!(
            "the auth cache lost its notification channel; it is off until it listens again"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: i64) -> User {
        User {
            id,
            username: format!("user{id}"),
            email: format!("user{id}@lab.org"),
            password_hash: String::new(),
            first_name: String::new(),
            last_name: String::new(),
            is_active: true,
            is_admin: false,
            email_verified: true,
            failed_login_count: 0,
            locked_until: None,
            last_login_at: None,
            password_changed_at: None,
            mfa_enabled: false,
            new_login_alerts: true,
            password_reset_required: false,
            created_at: crate::clock::Timestamp::from(0),
            updated_at: crate::clock::Timestamp::from(0),
        }
    }

    #[test]
    fn a_cached_session_is_served_until_it_expires_or_its_account_changes() {
        let cache = AuthCache::new(100, true);
        let epoch = cache.epoch();
        cache.fill(epoch, &user(1), "s1", 1_000, 0);
        assert_eq!(cache.get(1, "s1", 999).map(|user| user.id), Some(1));
        assert!(cache.get(1, "s1", 1_000).is_none(), "expired");
        assert!(cache.get(1, "s2", 0).is_none(), "another session");
        assert!(cache.get(2, "s1", 0).is_none(), "another account");
        cache.invalidate(1);
        assert!(cache.get(1, "s1", 0).is_none());
        // Read again after a minute, whatever was (not) notified.
        cache.fill(cache.epoch(), &user(1), "s1", 120_000, 0);
        assert!(cache.get(1, "s1", 59_999).is_some());
        assert!(cache.get(1, "s1", 60_000).is_none());
    }

    #[test]
    fn a_read_that_began_before_an_invalidation_does_not_fill() {
        let cache = AuthCache::new(100, true);
        let before = cache.epoch();
        cache.invalidate(7);
        cache.fill(before, &user(1), "s1", 1_000, 0);
        assert!(cache.get(1, "s1", 0).is_none());
        cache.fill(cache.epoch(), &user(1), "s1", 1_000, 0);
        assert!(cache.get(1, "s1", 0).is_some());
    }

    #[test]
    fn an_accounts_labs_are_kept_with_it_and_forgotten_with_it() {
        let cache = AuthCache::new(100, true);
        let lab = Membership {
            id: 3,
            code: "GEN".into(),
            name: "Genomics".into(),
            role: "member".into(),
            is_active: true,
        };
        // Nothing is kept for an account that is not cached.
        cache.fill_labs(cache.epoch(), 1, std::slice::from_ref(&lab));
        assert!(cache.labs(1, 0).is_none());
        cache.fill(cache.epoch(), &user(1), "s1", 1_000, 0);
        let before = cache.epoch();
        cache.fill_labs(before, 1, std::slice::from_ref(&lab));
        cache.fill_membership(before, 1, 9, None);
        assert_eq!(cache.labs(1, 0).map(|labs| labs[0].id), Some(3));
        assert!(matches!(cache.membership(1, 9, 0), Some(None)));
        assert!(cache.membership(1, 3, 0).is_none(), "not asked yet");
        cache.invalidate(1);
        assert!(cache.labs(1, 0).is_none() && cache.membership(1, 9, 0).is_none());
    }

    #[test]
    fn it_stays_within_its_capacity_and_serves_nothing_while_off() {
        let cache = AuthCache::new(16, true);
        for id in 0..1_000 {
            cache.fill(cache.epoch(), &user(id), "s", 1_000, 0);
            assert!(cache.len() <= 16);
        }
        cache.reset(false);
        cache.fill(cache.epoch(), &user(1), "s", 1_000, 0);
        assert!(cache.is_empty() && cache.get(1, "s", 0).is_none());
    }
}

//! A fixed pool of password-hashing threads, one per core.
//!
//! Argon2id allocates 19 MiB per hash. On the general blocking pool, hashes land on
//! ever-changing threads and the allocator keeps a 19 MiB block in each thread's arena,
//! which grew the process to hundreds of MiB after a few thousand logins (bench/README.md).
//! A few long-lived threads reuse their blocks: memory stays at about cores × 19 MiB, and
//! no more hashes run at once than there are cores to run them. The working memory itself
//! is kept per thread in `password.rs`; a thread that had no job for half a minute gives
//! it back, so an idle service does not hold cores × 19 MiB.
//!
//! The queue is bounded: past `UMS_HASH_QUEUE_LIMIT` waiting jobs a new one is refused at
//! once (the caller answers 503 with `Retry-After`) rather than queue CPU work for minutes.
//! A job whose caller has gone (the client hung up) is dropped unrun.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::auth::password::{PasswordHasherConfig, THREAD_PREFIX};

type Job = Box<dyn FnOnce(&PasswordHasherConfig) + Send>;

/// How long a hashing thread keeps its working memory without a job.
const KEEP_MEMORY_IDLE: Duration = Duration::from_secs(30);

/// The jobs waiting for a thread; every thread waits on the condition variable at once, so
/// each one notices its own idleness.
struct Queue {
    state: Mutex<QueueState>,
    work: Condvar,
}

struct QueueState {
    jobs: VecDeque<Job>,
    open: bool,
    limit: usize,
}

/// Why a job was not run.
#[derive(Debug, thiserror::Error)]
pub enum HashPoolError {
    #[error("the password hashing queue is full")]
    Full,
    #[error("the hashing threads have stopped")]
    Stopped,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Closes the queue when the last `HashPool` handle goes: the threads finish and exit.
struct Closer(Arc<Queue>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.lock().open = false;
        self.0.work.notify_all();
    }
}

#[derive(Clone)]
pub struct HashPool {
    handle: Arc<Closer>,
    /// Jobs run to the end by this pool (the metric counts every pool of the process).
    jobs_run: Arc<std::sync::atomic::AtomicU64>,
}

impl HashPool {
    pub fn start(
        hasher: PasswordHasherConfig,
        threads: usize,
        queue_limit: usize,
    ) -> anyhow::Result<Self> {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                open: true,
                limit: queue_limit.max(1),
            }),
            work: Condvar::new(),
        });
        for index in 0..threads.max(1) {
            let queue = queue.clone();
            let hasher = hasher.clone();
            std::thread::Builder::new()
                .name(format!("{THREAD_PREFIX}{index}"))
                .spawn(move || work(&queue, &hasher))?;
        }
        Ok(HashPool {
            handle: Arc::new(Closer(queue)),
            jobs_run: Arc::default(),
        })
    }

    /// How many jobs this pool has run.
    pub fn jobs_run(&self) -> u64 {
        self.jobs_run.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `work` on a hashing thread and waits for its result without blocking the runtime.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&PasswordHasherConfig) -> T + Send + 'static,
    ) -> Result<T, HashPoolError> {
        let (done, result) = oneshot::channel();
        let queue = &self.handle.0;
        let jobs_run = self.jobs_run.clone();
        {
            let mut state = queue.lock();
            if !state.open {
                return Err(HashPoolError::Stopped);
            }
            if state.jobs.len() >= state.limit {
                metrics::counter!("ums_password_hash_jobs_total", "outcome" => "refused")
                    .increment(1);
                return Err(HashPoolError::Full);
            }
            state.jobs.push_back(Box::new(move |hasher| {
                // The caller went away while this waited (its client hung up): nobody
                // would read the answer, so the CPU is not spent on it.
                if done.is_closed() {
                    metrics::counter!("ums_password_hash_jobs_total", "outcome" => "abandoned")
                        .increment(1);
                    return;
                }
                metrics::counter!("ums_password_hash_jobs_total", "outcome" => "run").increment(1);
                jobs_run.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = done.send(work(hasher));
            }));
        }
        queue.work.notify_one();
        result.await.map_err(|_| HashPoolError::Stopped)
    }
}

/// One hashing thread: jobs in arrival order until the queue closes.
fn work(queue: &Queue, hasher: &PasswordHasherConfig) {
    let mut state = queue.lock();
    loop {
        if let Some(job) = state.jobs.pop_front() {
            drop(state);
            job(hasher);
            state = queue.lock();
            continue;
        }
        if !state.open {
            return;
        }
        let (guard, wait) = queue
            .work
            .wait_timeout(state, KEEP_MEMORY_IDLE)
            .unwrap_or_else(PoisonError::into_inner);
        state = guard;
        if wait.timed_out() && state.jobs.is_empty() {
            crate::auth::password::release_working_memory();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HashCost;

    #[tokio::test]
    async fn jobs_run_on_the_named_threads_and_all_finish() {
        let hasher = PasswordHasherConfig::new(HashCost {
            memory_kib: 8,
            iterations: 1,
        })
        .unwrap();
        let pool = HashPool::start(hasher, 2, 16).unwrap();
        let names = futures_util::future::join_all((0..8).map(|_| {
            pool.run(|_| {
                std::thread::current()
                    .name()
                    .unwrap_or_default()
                    .to_string()
            })
        }))
        .await;
        assert_eq!(names.len(), 8);
        assert!(
            names
                .iter()
                .all(|name| name.as_ref().unwrap().starts_with(THREAD_PREFIX)),
            "{names:?}"
        );
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_an_abandoned_job_is_not_run() {
        let hasher = PasswordHasherConfig::new(HashCost {
            memory_kib: 8,
            iterations: 1,
        })
        .unwrap();
        let pool = HashPool::start(hasher, 1, 1).unwrap();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel::<()>();
        // The one thread is busy until released...
        let busy = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.run(move |_| {
                    let _ = started.send(());
                    held.recv().is_ok()
                })
                .await
            }
        });
        while running.try_recv().is_err() {
            tokio::task::yield_now().await;
        }
        // ...one job may wait, whose caller then gives up...
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiting = tokio::spawn({
            let (pool, ran) = (pool.clone(), ran.clone());
            async move {
                pool.run(move |_| ran.store(true, std::sync::atomic::Ordering::SeqCst))
                    .await
            }
        });
        while pool.handle.0.lock().jobs.is_empty() {
            tokio::task::yield_now().await;
        }
        // ...and the next is refused at once.
        assert!(matches!(pool.run(|_| ()).await, Err(HashPoolError::Full)));
        waiting.abort();
        let _ = waiting.await;
        release.send(()).unwrap();
        assert!(busy.await.unwrap().unwrap());
        // The queue drains; the abandoned job was skipped, not run.
        while !pool.handle.0.lock().jobs.is_empty() {
            tokio::task::yield_now().await;
        }
        assert!(pool.run(|_| ()).await.is_ok());
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }
}

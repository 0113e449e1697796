//! A fixed pool of password-hashing threads, one per core.
//!
//! Argon2id allocates 19 MiB per hash. On the general blocking pool, hashes land on
//! ever-changing threads and the allocator keeps a 19 MiB block in each thread's arena,
//! which grew the process to hundreds of MiB after a few thousand logins (bench/README.md).
//! A few long-lived threads reuse their blocks: memory stays at about cores × 19 MiB, and
//! no more hashes run at once than there are cores to run them. (The working memory itself
//! is reused per thread in `password.rs`, and given back after half a minute without work;
//! the threads take turns waiting, so all have given it back after threads × 30 s.)

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::auth::password::PasswordHasherConfig;

type Job = Box<dyn FnOnce(&PasswordHasherConfig) + Send>;

/// Names of the hashing threads (the password module keeps working memory only on them).
pub const THREAD_PREFIX: &str = "ums-hash-";

/// How long a hashing thread keeps its working memory without a job.
const KEEP_MEMORY_IDLE: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct HashPool {
    jobs: mpsc::Sender<Job>,
}

impl HashPool {
    pub fn start(hasher: PasswordHasherConfig, threads: usize) -> anyhow::Result<Self> {
        let (jobs, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads.max(1) {
            let receiver = receiver.clone();
            let hasher = hasher.clone();
            std::thread::Builder::new()
                .name(format!("{THREAD_PREFIX}{index}"))
                .spawn(move || {
                    loop {
                        let job = match receiver.lock() {
                            Ok(receiver) => receiver.recv_timeout(KEEP_MEMORY_IDLE),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(&hasher),
                            Err(mpsc::RecvTimeoutError::Timeout) => {
                                crate::auth::password::release_working_memory();
                            }
                            // Every sender is gone: the service is shutting down.
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                    }
                })?;
        }
        Ok(HashPool { jobs })
    }

    /// Runs `work` on a hashing thread and waits for its result without blocking the runtime.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&PasswordHasherConfig) -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Box::new(move |hasher| {
                let _ = done.send(work(hasher));
            }))
            .map_err(|_| anyhow::anyhow!("the hashing threads have stopped"))?;
        Ok(result.await?)
    }
}

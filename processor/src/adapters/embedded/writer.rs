//! The one writer of the database: write transactions are serialized by redb anyway, and one
//! costs far more than a write in it, so whatever waits is written together in one
//! transaction (a group commit), flushed to disk once if any of it asks to be durable.

use std::any::Any;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Durability, WriteTransaction};

use super::database::Database;
use super::{storage, EmbeddedError};

/// Writes that wait together are applied in one transaction, at most this many.
const GROUP: usize = 256;

type Work = Box<dyn FnOnce(&WriteTransaction) -> Result<Box<dyn Any + Send>, EmbeddedError> + Send>;

struct Job {
    work: Work,
    /// Flushed to disk before the reply (else persisted by the next durable commit).
    durable: bool,
    reply: tokio::sync::oneshot::Sender<Result<Box<dyn Any + Send>, String>>,
}

/// A handle on the writer thread; the last one dropped stops it and waits for it, so that
/// the database is closed when the handles are gone.
#[derive(Clone)]
pub(super) struct Writer {
    thread: Arc<Thread>,
}

struct Thread {
    jobs: Option<Sender<Job>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Thread {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Writer {
    pub(super) fn start(db: Arc<Database>) -> Writer {
        let (jobs, waiting) = channel();
        let handle = std::thread::Builder::new()
            .name("txflow-db-writer".to_owned())
            .spawn(move || run(&db, waiting))
            .expect("a thread for the database writer");
        Writer {
            thread: Arc::new(Thread {
                jobs: Some(jobs),
                handle: Some(handle),
            }),
        }
    }

    /// Runs `work` in a write transaction and returns what it returned once that
    /// transaction committed (durably if `durable`). An `Err` of the work, or a failed
    /// commit, writes nothing of it.
    pub(super) async fn write<T: Send + 'static>(
        &self,
        durable: bool,
        work: impl FnOnce(&WriteTransaction) -> Result<T, EmbeddedError> + Send + 'static,
    ) -> Result<T, EmbeddedError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            work: Box::new(move |txn| work(txn).map(|t| Box::new(t) as Box<dyn Any + Send>)),
            durable,
            reply,
        };
        let gone = || EmbeddedError::Storage("the database writer stopped".to_owned());
        let jobs = self.thread.jobs.as_ref().ok_or_else(gone)?;
        jobs.send(job).map_err(|_| gone())?;
        let done = answer.await.map_err(|_| gone())?;
        let value = done.map_err(EmbeddedError::Storage)?;
        Ok(*value
            .downcast::<T>()
            .expect("the writer answers with the work's own type"))
    }
}

fn run(db: &Database, jobs: Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let durable = group.iter().any(|job| job.durable);
        let (works, replies): (Vec<Work>, Vec<_>) =
            group.into_iter().map(|job| (job.work, job.reply)).unzip();
        let outcome = (|| {
            let mut txn = db.begin_write()?;
            if !durable {
                txn.set_durability(Durability::None);
            }
            let mut values = Vec::with_capacity(works.len());
            for work in works {
                values.push(work(&txn)?);
            }
            txn.commit().map_err(storage)?;
            Ok::<_, EmbeddedError>(values)
        })();
        match outcome {
            Ok(values) => {
                for (reply, value) in replies.into_iter().zip(values) {
                    let _ = reply.send(Ok(value));
                }
            }
            // One failing write undoes the group's transaction: every job of it fails.
            Err(e) => {
                // Each caller wraps it as a storage error again.
                let message = match e {
                    EmbeddedError::Storage(message) => message,
                    other => other.to_string(),
                };
                for reply in replies {
                    let _ = reply.send(Err(message.clone()));
                }
                if db.refuses_writes() {
                    reopen(db, &jobs, &message);
                }
            }
        }
    }
}

/// Closes the database and opens it again, as `redb` asks after an I/O error; each attempt
/// waits longer, up to 5 s, and what is asked meanwhile fails at once rather than waiting.
fn reopen(db: &Database, jobs: &Receiver<Job>, error: &str) {
    tracing::error!(
        "the embedded database refuses writes after an I/O error ({error}): reopening it"
    );
    db.close(error);
    let mut pause = Duration::from_millis(100);
    let mut attempts = 0u32;
    loop {
        match db.reopen() {
            Ok(()) => {
                tracing::warn!(attempts, "the embedded database is open again");
                return;
            }
            Err(e) => {
                attempts += 1;
                if attempts.is_power_of_two() {
                    tracing::warn!(
                        attempts,
                        "the embedded database cannot be reopened yet: {e}"
                    );
                }
            }
        }
        let until = Instant::now() + pause;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match jobs.recv_timeout(left) {
                Ok(job) => {
                    let _ = job.reply.send(Err(format!(
                        "the embedded database is being reopened after an I/O error ({error})"
                    )));
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

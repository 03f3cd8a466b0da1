//! A fixed-size pool of request workers.
//!
//! The vring threads only pop descriptor chains and queue them here, so one slow request (an
//! `fsync` on slow storage, a blocking `SETLKW`) occupies one worker instead of its whole queue.
//! The number of jobs in flight is bounded by the guest: it can never have more chains
//! outstanding than the sum of its queue sizes.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// How long [`Pool::shutdown`] waits for requests still running (a `SETLKW` can wait forever).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Worker threads fed from one shared channel.
pub(crate) struct Pool {
    tx: Mutex<Option<Sender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Number of workers still running, to wait for them with a deadline.
    alive: Arc<(Mutex<usize>, Condvar)>,
}

/// Decrements the live-worker count when a worker ends, however it ends.
struct Alive(Arc<(Mutex<usize>, Condvar)>);

impl Drop for Alive {
    fn drop(&mut self) {
        let (count, cv) = &*self.0;
        *count.lock() -= 1;
        cv.notify_all();
    }
}

impl Pool {
    /// Starts `size` workers (`size >= 1`).
    pub(crate) fn new(size: usize) -> std::io::Result<Pool> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let alive = Arc::new((Mutex::new(0usize), Condvar::new()));
        let mut workers = Vec::with_capacity(size);
        for i in 0..size {
            let rx = Arc::clone(&rx);
            *alive.0.lock() += 1;
            let guard = Alive(Arc::clone(&alive));
            let spawned = std::thread::Builder::new()
                .name(format!("boxfs-worker-{i}"))
                .spawn(move || {
                    let _alive = guard;
                    worker(&rx)
                });
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => {
                    drop(tx);
                    for h in workers {
                        let _ = h.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Pool {
            tx: Mutex::new(Some(tx)),
            workers: Mutex::new(workers),
            alive,
        })
    }

    /// Queues a job; returns it back if the pool is shut down.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
        match self.tx.lock().as_ref() {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// Lets the workers finish the queued jobs and joins them. Workers still busy after
    /// [`SHUTDOWN_GRACE`] (a request blocked in the filesystem) are left to finish on their own.
    pub(crate) fn shutdown(&self) {
        self.tx.lock().take();
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let (count, cv) = &*self.alive;
        let mut n = count.lock();
        while *n > 0 {
            if cv.wait_until(&mut n, deadline).timed_out() {
                break;
            }
        }
        let busy = *n;
        drop(n);
        let workers = std::mem::take(&mut *self.workers.lock());
        if busy > 0 {
            tracing::warn!(
                busy,
                "request workers still busy at shutdown; not waiting for them"
            );
            return;
        }
        for h in workers {
            let _ = h.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    loop {
        // Hold the lock only while waiting for the next job, never while running it.
        let job = rx.lock().recv();
        match job {
            Ok(job) => {
                // Requests catch their own panics; this keeps the worker alive regardless.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    tracing::error!("a request worker job panicked");
                }
            }
            Err(_) => return,
        }
    }
}

//! Which jobs have a notification still running.
//!
//! A message's email and webhook run in a task that outlives an attempt the worker abandoned
//! (see `handler`). When that attempt was the last, the worker gives the message up while the
//! task may still be delivering: the give-up waits here for the job's tasks to end, so that what
//! they did (delivered, or failed) is what the job shows, never a `failed` written under a
//! delivery that then succeeds; and a message whose notification they finished is acked, not
//! dead-lettered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// Tasks running per job id.
#[derive(Default)]
pub struct Running {
    jobs: Mutex<HashMap<String, usize>>,
    ended: Notify,
}

impl Running {
    /// Counts a task for `job_id` until the guard is dropped (its end, a panic or an abort).
    pub fn enter(self: &Arc<Self>, job_id: &str) -> Entered {
        *self
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(job_id.to_owned())
            .or_default() += 1;
        Entered {
            running: Arc::clone(self),
            job_id: job_id.to_owned(),
        }
    }

    /// Whether a task for `job_id` is running.
    pub fn busy(&self, job_id: &str) -> bool {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(job_id)
    }

    /// Returns once no task for `job_id` runs (at once if none does).
    pub async fn idle(&self, job_id: &str) {
        loop {
            // Registered before the check, so an end between the two is not missed.
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if !self.busy(job_id) {
                return;
            }
            ended.await;
        }
    }
}

/// A running task of a job; see [`Running::enter`].
pub struct Entered {
    running: Arc<Running>,
    job_id: String,
}

impl Drop for Entered {
    fn drop(&mut self) {
        {
            let mut jobs = self
                .running
                .jobs
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = jobs.get_mut(&self.job_id) {
                *count -= 1;
                if *count == 0 {
                    jobs.remove(&self.job_id);
                }
            }
        }
        self.running.ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn idle_waits_for_every_task_of_its_job_and_only_its_job() {
        let running = Arc::new(Running::default());
        running.idle("a").await; // nothing runs: at once
        let first = running.enter("a");
        let second = running.enter("a");
        let other = running.enter("b");
        let waiting = tokio::spawn({
            let running = Arc::clone(&running);
            async move { running.idle("a").await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(first);
        drop(other);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "one task of job a still runs");
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("idle once both ended")
            .unwrap();
        assert!(!running.busy("a") && !running.busy("b"));
        assert!(running.jobs.lock().unwrap().is_empty(), "no entry is left");
    }

    #[tokio::test]
    async fn an_aborted_task_counts_as_ended() {
        let running = Arc::new(Running::default());
        let entered = running.enter("a");
        let task = tokio::spawn(async move {
            let _entered = entered;
            std::future::pending::<()>().await;
        });
        assert!(running.busy("a"));
        task.abort();
        let _ = task.await;
        tokio::time::timeout(Duration::from_secs(5), running.idle("a"))
            .await
            .expect("idle after the abort");
    }
}

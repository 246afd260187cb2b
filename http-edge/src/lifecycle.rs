//! How a service stops: it learns it must (SIGTERM, what orchestrators send, or Ctrl-C), and its
//! background tasks stop together within a grace ([`Tasks`]).

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Resolves on SIGTERM or Ctrl-C. If a signal cannot be listened for, that one never fires
/// (logged), so the service keeps running rather than stopping at once.
pub async fn terminate_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// A service's background tasks, stopped together: cancelled at once, given until a deadline to
/// finish, then aborted. A task is told to stop through its [`CancellationToken`]; one that
/// ignores it only delays the stop until the deadline.
#[derive(Debug, Default)]
pub struct Tasks {
    stop: CancellationToken,
    running: Vec<(&'static str, JoinHandle<()>)>,
}

impl Tasks {
    /// The token every task of the set watches; cancelling it asks them all to stop.
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs `task` on the current runtime, handing it the set's token.
    pub fn spawn<F>(&mut self, name: &'static str, task: impl FnOnce(CancellationToken) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(task(self.token()));
        self.running.push((name, handle));
    }

    /// Cancels every task and waits for each until `deadline`; aborts those still running then.
    pub async fn stop(self, deadline: tokio::time::Instant) {
        self.stop.cancel();
        for (name, mut handle) in self.running {
            match tokio::time::timeout_at(deadline, &mut handle).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) if error.is_panic() => {
                    tracing::error!(task = name, "a background task panicked");
                }
                Ok(Err(_)) => {}
                Err(_) => {
                    tracing::warn!(
                        task = name,
                        "a background task did not stop in time; aborted"
                    );
                    handle.abort();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;
    use tokio::time::Instant;

    use super::Tasks;

    /// Says when the task holding it ends, finished or aborted.
    struct Ended(Option<oneshot::Sender<()>>);

    impl Drop for Ended {
        fn drop(&mut self) {
            if let Some(sender) = self.0.take() {
                let _ = sender.send(());
            }
        }
    }

    /// A task that honours its token stops at once; one that ignores it is aborted at the
    /// deadline rather than waited for.
    #[tokio::test]
    async fn a_stop_cancels_then_aborts_at_the_deadline() {
        let mut tasks = Tasks::default();
        let (polite_done, polite) = oneshot::channel();
        tasks.spawn("polite", |token| async move {
            token.cancelled().await;
            let _ = polite_done.send(());
        });
        let (stubborn_ended, stubborn) = oneshot::channel();
        tasks.spawn("stubborn", |_| async move {
            let _ended = Ended(Some(stubborn_ended));
            std::future::pending::<()>().await;
        });
        let deadline = Instant::now() + Duration::from_millis(200);
        tasks.stop(deadline).await;
        assert!(polite.await.is_ok(), "the polite task saw the cancellation");
        assert!(
            Instant::now() >= deadline,
            "the stubborn task had until the deadline"
        );
        assert!(stubborn.await.is_ok(), "the stubborn task was aborted");
    }
}

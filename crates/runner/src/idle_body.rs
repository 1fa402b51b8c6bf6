//! A request body that gives up on a client that stops sending: once the guest has waited
//! `idle` for the next piece, reading fails with `ConnectionReadTimeout`, so a client that
//! pauses mid-body cannot hold an instance (and its memory) for ever.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::Error;

pub struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    /// Armed when the guest starts waiting; only the time spent waiting on the client counts.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            deadline: None,
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Error>,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.deadline = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let deadline = this.deadline.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + idle))
                });
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::info!(
                            ?idle,
                            "the client sent nothing more of its body; giving up"
                        );
                        Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc::Receiver;

    /// A body whose pieces come from a channel, as a client sends them.
    struct Channel(Receiver<Bytes>);

    impl Body for Channel {
        type Data = Bytes;
        type Error = Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
            self.0
                .poll_recv(cx)
                .map(|piece| piece.map(|b| Ok(Frame::data(b))))
        }
    }

    fn body(rx: Receiver<Bytes>, idle: Duration) -> IdleTimeout<Channel> {
        IdleTimeout::new(Channel(rx), idle)
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_keeps_sending_is_never_cut_off() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(900)).await;
                let _ = tx.send(Bytes::from_static(b"x")).await;
            }
        });
        let collected = body(rx, Duration::from_secs(1)).collect().await.unwrap();
        assert_eq!(collected.to_bytes().len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_is_cut_off_after_the_idle_time() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(Bytes::from_static(b"x")).await.unwrap();
        let mut body = body(rx, Duration::from_secs(1));
        assert!(body.frame().await.unwrap().is_ok());
        let started = Instant::now();
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(matches!(error, Error::ConnectionReadTimeout));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        drop(tx);
    }
}

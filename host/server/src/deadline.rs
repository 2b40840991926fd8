//! A deadline on reading a request's body: a client that sends its headers and then drips its
//! body — one byte now and then, which a per-read timeout never catches — holds a connection
//! slot for as long as it likes, and some routes must read a body before they can check who
//! sent it (Slack's signed interactions, the page's sign-in). The whole body must arrive within
//! [`BODY_DEADLINE`] of the request; past it, reading the body fails and the request is
//! refused. The body is wrapped, not read: a route that checks its token first still does so
//! before a byte of the body is read.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// How long a client has to send a whole request body.
pub const BODY_DEADLINE: Duration = Duration::from_secs(30);

/// The middleware: every request's body gets the deadline, counted from now.
pub async fn body_deadline(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let timed = Deadlined::new(body, BODY_DEADLINE);
    next.run(Request::from_parts(parts, Body::new(timed))).await
}

struct Deadlined {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    within: Duration,
}

impl Deadlined {
    fn new(inner: Body, within: Duration) -> Self {
        Deadlined {
            inner,
            sleep: Box::pin(tokio::time::sleep(within)),
            within,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} ms", .0.as_millis())]
struct TooSlow(Duration);

impl http_body::Body for Deadlined {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        // What has arrived is taken first; only a read that would wait meets the deadline.
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => {}
            ready => return ready,
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(TooSlow(self.within))))),
            Poll::Pending => Poll::Pending,
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

    #[tokio::test]
    async fn a_body_that_drips_past_the_deadline_is_refused_and_a_prompt_one_is_whole() {
        let within = Duration::from_millis(200);
        let whole = Deadlined::new(Body::from("token=abc"), within);
        let bytes = whole.collect().await.expect("read").to_bytes();
        assert_eq!(&bytes[..], b"token=abc");

        // One byte, then nothing more: the read fails at the deadline, it does not wait.
        let (tx, body) = {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
            (tx, Body::from_stream(stream))
        };
        tx.send(Ok(Bytes::from_static(b"t"))).await.expect("send");
        let dripping = Deadlined::new(body, within);
        let started = std::time::Instant::now();
        let read = dripping.collect().await;
        assert!(started.elapsed() >= within);
        let err = read.expect_err("refused at the deadline").to_string();
        assert!(err.contains("did not arrive"), "{err}");
        // The sender never finished: the deadline, not the end of the body, ended the read.
        drop(tx);
    }
}

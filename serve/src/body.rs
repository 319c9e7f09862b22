//! Reading a request body with both bounds a request head has: a size and a time. The
//! header timeout ends at the head; without this, a client with a credential could send
//! its body a byte a minute, stay "in a request" (never idle, never evicted) and hold its
//! connection for good.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::{body::Body, StatusCode};

/// How long a whole request body may take to arrive: the header timeout's default.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    TooLarge { max: usize },
    TooSlow { within: Duration },
    Read(String),
}

impl BodyError {
    /// 413, 408 or 400.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TooSlow { .. } => StatusCode::REQUEST_TIMEOUT,
            BodyError::Read(_) => StatusCode::BAD_REQUEST,
        }
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge { max } => write!(f, "the body may be at most {max} bytes"),
            BodyError::TooSlow { within } => {
                write!(f, "the body did not arrive within {} s", within.as_secs())
            }
            BodyError::Read(e) => write!(f, "reading the body: {e}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// The whole body, if it is at most `max` bytes and arrives within `within`.
pub async fn read_body<B>(body: B, max: usize, within: Duration) -> Result<Bytes, BodyError>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tokio::time::timeout(within, Limited::new(body, max).collect()).await {
        Err(_) => Err(BodyError::TooSlow { within }),
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge { max }),
        Ok(Err(e)) => Err(BodyError::Read(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::Full;
    use hyper::body::Frame;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_body_is_read_whole_or_refused_for_size_or_time() {
        let small = Full::new(Bytes::from_static(b"{}"));
        assert_eq!(read_body(small, 8, BODY_TIMEOUT).await.unwrap(), "{}");
        let big = Full::new(Bytes::from(vec![b'x'; 9]));
        let err = read_body(big, 8, BODY_TIMEOUT).await.unwrap_err();
        assert_eq!(err, BodyError::TooLarge { max: 8 });
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // One byte, then nothing: a trickle that never ends.
        let trickle = Trickle(false);
        let err = read_body(trickle, 8, BODY_TIMEOUT).await.unwrap_err();
        assert_eq!(
            err,
            BodyError::TooSlow {
                within: BODY_TIMEOUT
            }
        );
        assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(err.to_string(), "the body did not arrive within 10 s");
    }

    /// A body that sends one byte and then nothing, for ever.
    struct Trickle(bool);

    impl hyper::body::Body for Trickle {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if std::mem::replace(&mut self.0, true) {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{")))))
            }
        }
    }
}

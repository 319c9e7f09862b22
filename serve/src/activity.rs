//! What "idle" means for a connection: no request in the handler, and no byte read or
//! written, for the idle timeout. The stream wrapper [`Tracked`] notes each read or write
//! that moved bytes; [`InFlight`] marks a request in the handler; [`idle`] resolves once
//! both have been quiet for the timeout. The connection table reads the same state to pick
//! which connection to close when the cap is reached.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
    time::Instant,
};

/// One connection's activity, shared by its stream, its requests, its task and the table.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// When the connection was accepted; `last_io_ms` counts from here.
    opened: Instant,
    /// Milliseconds after `opened` of the last read or write that moved bytes (or of the
    /// end of the last request).
    last_io_ms: AtomicU64,
    /// Requests in the handler (0 or 1 on HTTP/1.1).
    in_flight: AtomicU32,
    /// Woken when the table closes this connection to make room for a new one.
    evict: Notify,
    /// Woken once the connection's task has ended and its stream is closed.
    closed: Notify,
}

impl ConnState {
    pub(crate) fn new(now: Instant) -> Self {
        ConnState {
            opened: now,
            last_io_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            evict: Notify::new(),
            closed: Notify::new(),
        }
    }

    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_io_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// When bytes last moved (or a request ended).
    pub(crate) fn last_io(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_io_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    /// Tells the connection's task to close (a stored permit if it is not waiting yet).
    pub(crate) fn evict(&self) {
        self.evict.notify_one();
    }

    /// Resolves once the table evicted this connection.
    pub(crate) async fn evicted(&self) {
        self.evict.notified().await
    }

    /// Marks the connection closed (its stream dropped); called once, by its table entry.
    pub(crate) fn mark_closed(&self) {
        self.closed.notify_one();
    }

    /// Resolves once the connection is closed (a stored permit if it already is).
    pub(crate) async fn closed(&self) {
        self.closed.notified().await
    }
}

/// Marks a request in the handler for as long as it lives; its end counts as activity, so
/// the idle time starts when the reply is handed to hyper.
pub(crate) struct InFlight(Arc<ConnState>);

impl InFlight {
    pub(crate) fn enter(state: &Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves when the connection has been idle (see the module docs) for `timeout`.
pub(crate) async fn idle(state: &ConnState, timeout: Duration) {
    loop {
        let due = state.last_io() + timeout;
        if state.busy() {
            // A request in the handler is never idle; look again a timeout later.
            tokio::time::sleep(timeout).await;
        } else if Instant::now() >= due {
            return;
        } else {
            tokio::time::sleep_until(due).await;
        }
    }
}

/// An accepted stream that notes its activity in the connection's state: what an
/// [`Upgrade`](crate::Upgrade) (TLS) receives.
#[derive(Debug)]
pub struct Tracked<Io> {
    io: Io,
    state: Arc<ConnState>,
}

impl<Io> Tracked<Io> {
    pub(crate) fn new(io: Io, state: Arc<ConnState>) -> Self {
        Tracked { io, state }
    }

    pub(crate) fn state(&self) -> &Arc<ConnState> {
        &self.state
    }

    /// The stream as accepted (a TLS acceptor may need its socket options).
    pub fn get_ref(&self) -> &Io {
        &self.io
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Tracked<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.touch();
        }
        polled
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Tracked<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.state.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.state.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

//! The node's listening socket as axum serves it: every accepted connection gets
//! `TCP_NODELAY`, and an HTTP/2 connection is written without vectored I/O and one turn late.
//!
//! Why no vectored writes for HTTP/2: the h2 crate (hyper's HTTP/2) keeps a DATA frame of 256
//! bytes or more out of its 16 KiB write buffer when the socket takes vectored writes, and must
//! flush it before it can buffer the next frame. A transfer's answer is about 400 bytes, so
//! every answer on a connection cost its own `writev`: measured 1.00 per request at 35k/s over
//! HTTP/2. Without vectored writes the threshold is 1 KiB and answers are copied into the
//! buffer, so one write can carry several.
//!
//! Why one turn late: the engine answers a batch of requests at once, and each answer wakes
//! its handler task. Tokio runs the connection task right after the handler that woke it (the
//! worker's LIFO slot), so the connection wrote each answer before the next handler had run:
//! 0.82 `sendto` per request at 35k/s. So the first attempt to write after a write returns
//! `Pending` and wakes the task at once. Tokio puts a task that woke itself at the back of
//! the worker's queue: the handlers already queued run first, and the next attempt writes
//! their answers too (0.29 `sendto` per request at 35k/s). The wait is one pass over the
//! tasks that were ready anyway, and never more than one per write.
//!
//! Why only for HTTP/2: without vectored writes hyper's HTTP/1.1 copies each body into the
//! connection's write buffer, which keeps the capacity of the largest answer it ever sent
//! (a batch answer is hundreds of KiB) for as long as the connection lives, with no fewer
//! writes to show for it. Which protocol a connection speaks is known from its first bytes
//! (the HTTP/2 client preface), and hyper reads them before it looks at the socket's write
//! support.
//!
//! Why `TCP_NODELAY`: with Nagle's algorithm a connection that carries many answers at once
//! (HTTP/2) holds a small write until the previous one is acknowledged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How long the accept loop pauses after an error that is not about one connection (out of
/// file descriptors, say), so that it does not spin while the cause lasts.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A `TcpListener` whose connections are [`Connection`]s.
pub struct GatewayListener(pub TcpListener);

impl axum::serve::Listener for GatewayListener {
    type Io = Connection;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Connection, std::net::SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok((stream, address)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, %address, "cannot set TCP_NODELAY");
                    }
                    return (Connection::new(stream), address);
                }
                // The peer gave up before we accepted it: nothing to wait for.
                Err(error) if is_connection_error(&error) => {}
                Err(error) => {
                    tracing::error!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.local_addr()
    }
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// What every HTTP/2 connection sends first (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An accepted TCP connection that reports vectored-write support only until its first bytes
/// show it speaks HTTP/2 (see the module docs).
pub struct Connection {
    stream: TcpStream,
    /// Whether any bytes have been read yet.
    heard: bool,
    /// Whether the first bytes read were (the start of) the HTTP/2 preface.
    http2: bool,
    /// Whether an HTTP/2 write has already waited its turn (see the module docs).
    write_waited: bool,
}

impl Connection {
    fn new(stream: TcpStream) -> Connection {
        Connection {
            stream,
            heard: false,
            http2: false,
            write_waited: false,
        }
    }
}

impl Connection {
    /// Whether this write attempt waits one turn: on HTTP/2 the first attempt after a write
    /// does, and asks to be polled again at once (see the module docs).
    fn waits_its_turn(&mut self, context: &mut Context<'_>) -> bool {
        if !self.http2 || self.write_waited {
            self.write_waited = false;
            return false;
        }
        self.write_waited = true;
        context.waker().wake_by_ref();
        true
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buffer.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(context, buffer);
        if !self.heard && buffer.filled().len() > before {
            let first = &buffer.filled()[before..];
            self.heard = true;
            self.http2 = HTTP2_PREFACE.starts_with(first) || first.starts_with(HTTP2_PREFACE);
        }
        read
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.waits_its_turn(context) {
            return Poll::Pending;
        }
        Pin::new(&mut self.stream).poll_write(context, bytes)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.waits_its_turn(context) {
            return Poll::Pending;
        }
        Pin::new(&mut self.stream).poll_write_vectored(context, buffers)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }

    fn is_write_vectored(&self) -> bool {
        !self.http2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn accept_one() -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let mut listener = GatewayListener(listener);
        assert_eq!(listener.local_addr().expect("address"), address);
        let client = TcpStream::connect(address).await.expect("connect");
        let (connection, peer) = listener.accept().await;
        assert_eq!(peer, client.local_addr().expect("client address"));
        (connection, client)
    }

    #[tokio::test]
    async fn an_http1_connection_has_nodelay_and_keeps_vectored_writes() {
        let (mut connection, mut client) = accept_one().await;
        assert!(connection.stream.nodelay().expect("nodelay"));
        client
            .write_all(b"POST /v1/transfers HTTP/1.1\r\n")
            .await
            .expect("write");
        let mut request = [0; 4];
        connection.read_exact(&mut request).await.expect("read");
        assert_eq!(&request, b"POST");
        assert!(connection.is_write_vectored());
        // Bytes pass both ways unchanged.
        connection.write_all(b"answer").await.expect("write");
        let mut answer = [0; 6];
        client.read_exact(&mut answer).await.expect("read");
        assert_eq!(&answer, b"answer");
        connection.shutdown().await.expect("shutdown");
        assert_eq!(client.read(&mut answer).await.expect("read"), 0);
    }

    #[tokio::test]
    async fn an_http2_connection_drops_vectored_writes_once_its_preface_is_read() {
        for first in [HTTP2_PREFACE, &HTTP2_PREFACE[..3]] {
            let (mut connection, mut client) = accept_one().await;
            assert!(connection.stream.nodelay().expect("nodelay"));
            assert!(connection.is_write_vectored(), "nothing read yet");
            client.write_all(first).await.expect("write");
            let mut read = vec![0; first.len()];
            connection.read_exact(&mut read).await.expect("read");
            assert_eq!(read, first);
            assert!(!connection.is_write_vectored());
            // Later bytes do not change the verdict.
            client.write_all(b"GET / HTTP/1.1").await.expect("write");
            connection.read_exact(&mut [0; 3]).await.expect("read");
            assert!(!connection.is_write_vectored());
            let sent = connection
                .write_vectored(&[io::IoSlice::new(b"an"), io::IoSlice::new(b"swer")])
                .await
                .expect("write");
            let mut answer = vec![0; sent];
            client.read_exact(&mut answer).await.expect("read");
            assert_eq!(answer, &b"answer"[..sent]);
        }
    }

    /// Counts its wakes.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn an_http2_write_waits_one_turn_and_an_http1_write_none() {
        // Proves the HTTP/2 write deferral: the first attempt after a write is Pending and
        // wakes the task at once, the next one writes; HTTP/1.1 writes at the first attempt.
        let wakes = std::sync::Arc::new(Wakes(std::sync::atomic::AtomicUsize::new(0)));
        let waker = std::task::Waker::from(std::sync::Arc::clone(&wakes));
        let mut context = Context::from_waker(&waker);
        let woken = || wakes.0.load(std::sync::atomic::Ordering::SeqCst);
        for (first, waits) in [(HTTP2_PREFACE, true), (&b"GET / HTTP/1.1\r\n"[..], false)] {
            let (mut connection, mut client) = accept_one().await;
            client.write_all(first).await.expect("write");
            connection
                .read_exact(&mut vec![0; first.len()])
                .await
                .expect("read");
            for answer in [&b"first"[..], b"second"] {
                let before = woken();
                let mut write = Pin::new(&mut connection).poll_write(&mut context, answer);
                if waits {
                    assert!(write.is_pending(), "the first attempt waits");
                    assert_eq!(woken(), before + 1, "and asks to be polled again");
                    write = Pin::new(&mut connection).poll_write(&mut context, answer);
                }
                assert_eq!(woken(), before + usize::from(waits));
                let Poll::Ready(Ok(sent)) = write else {
                    panic!("the second attempt writes: {write:?}")
                };
                assert_eq!(sent, answer.len());
                let mut read = vec![0; sent];
                client.read_exact(&mut read).await.expect("read");
                assert_eq!(read, answer);
            }
        }
    }
}

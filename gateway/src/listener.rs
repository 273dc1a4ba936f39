//! The node's listening socket: it accepts connections, tells HTTP/2 from HTTP/1.1 by their
//! first bytes, and serves each one until the node stops.
//!
//! - HTTP/2 (h2c with prior knowledge: the connection opens with the client preface) is
//!   served by the node's own server, http2.rs.
//! - Anything else is HTTP/1.1, served by hyper. The bytes read to tell the two apart are
//!   handed back to it first.
//! - Every connection gets `TCP_NODELAY`: with Nagle's algorithm, a connection that carries
//!   many answers at once would hold a small write until the previous one is acknowledged.
//! - A connection must show its protocol within [`FIRST_BYTES_TIMEOUT`]. An HTTP/1.1
//!   connection must send each request's head within the same time.
//! - To stop, the loop stops accepting. It then asks every connection to finish: HTTP/2 sends
//!   GOAWAY, and HTTP/1.1 closes after the answer in progress. After `drain_timeout` it
//!   closes whatever is left.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::h2frame::PREFACE;
use crate::http2::BodyLimits;

/// How long the accept loop pauses after an error that is not about one connection (out of
/// file descriptors, say), so that it does not spin while the cause lasts.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// How long a new connection may take to show its protocol, and an HTTP/1.1 connection to
/// send a request's head.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a connection's first read takes in (an HTTP/2 client often sends its preface,
/// SETTINGS and first requests together).
const FIRST_READ_BYTES: usize = 16 << 10;

/// Serves `router` on `listener` until `stop` resolves, then lets the connections finish for
/// at most `drain_timeout`. `body_limits` are the router's request-body limits, which the
/// HTTP/2 server enforces as bodies arrive.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    body_limits: BodyLimits,
    drain_timeout: Duration,
    stop: impl Future<Output = ()>,
) {
    let (stopping, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, address)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, %address, "cannot set TCP_NODELAY");
                    }
                    connections.spawn(connection(
                        stream,
                        router.clone(),
                        body_limits,
                        stopped.clone(),
                    ));
                }
                // The peer gave up before we accepted it: nothing to wait for.
                Err(error) if is_connection_error(&error) => {}
                Err(error) => {
                    tracing::error!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            // Reaps the tasks of connections that ended.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut stop => break,
        }
    }
    drop(listener);
    let _ = stopping.send(true);
    let drained = tokio::time::timeout(drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "connections still open after the drain time: closing them"
        );
        connections.shutdown().await;
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

/// Resolves once the node is stopping.
async fn stopping(mut stopped: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// One connection, from its first bytes to its end.
async fn connection(
    stream: TcpStream,
    router: Router,
    body_limits: BodyLimits,
    stopped: watch::Receiver<bool>,
) {
    let first = tokio::select! {
        first = tokio::time::timeout(FIRST_BYTES_TIMEOUT, first_bytes(&stream)) => first,
        () = stopping(stopped.clone()) => return,
    };
    let first = match first {
        Ok(Ok(first)) if !first.is_empty() => first,
        // Closed, failed, or silent too long.
        _ => return,
    };
    if first.starts_with(PREFACE) {
        let served = crate::http2::serve(stream, first, router, body_limits, stopping(stopped));
        if let Err(error) = served.await {
            tracing::debug!(%error, "HTTP/2 connection failed");
        }
        return;
    }
    let io = TokioIo::new(Replayed {
        first,
        at: 0,
        stream,
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(FIRST_BYTES_TIMEOUT)
        .serve_connection(io, TowerToHyperService::new(router));
    tokio::pin!(served);
    let result = tokio::select! {
        result = served.as_mut() => result,
        () = stopping(stopped) => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "HTTP/1.1 connection failed");
    }
}

/// Reads until the bytes show whether the connection opens with the HTTP/2 preface: all of
/// it, or bytes that differ from it. Empty if the peer closed first.
async fn first_bytes(stream: &TcpStream) -> io::Result<Vec<u8>> {
    let mut first = vec![0; FIRST_READ_BYTES];
    let mut length = 0;
    loop {
        stream.readable().await?;
        match stream.try_read(&mut first[length..]) {
            Ok(0) => return Ok(Vec::new()),
            Ok(n) => length += n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }
        if length >= PREFACE.len() || !PREFACE.starts_with(&first[..length]) {
            first.truncate(length);
            return Ok(first);
        }
    }
}

/// A connection whose first bytes were read already: reads give them back first.
struct Replayed {
    first: Vec<u8>,
    at: usize,
    stream: TcpStream,
}

impl AsyncRead for Replayed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.first.len() {
            let n = buffer.remaining().min(self.first.len() - self.at);
            let at = self.at;
            buffer.put_slice(&self.first[at..at + n]);
            self.at += n;
            if self.at == self.first.len() {
                self.first = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(context, buffer)
    }
}

impl AsyncWrite for Replayed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(context, bytes)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(context, buffers)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

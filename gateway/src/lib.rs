//! PayU Core's node: the `payu` binary. HTTP requests are authenticated and validated by the
//! gateway (axum), published into a bounded multi-producer ring (the disruptor crate), applied
//! by the one engine thread, journaled with group commit, and answered only once durable. A read
//! model tails the journal to serve queries (CQRS).

pub mod api;
pub mod auth;
pub mod client;
pub mod config;
pub mod h2frame;
pub mod hpack;
pub mod http2;
pub mod listener;
pub mod metrics;
pub mod node;
pub mod pipeline;
pub mod ratelimit;
pub mod readmodel;
pub mod tools;
pub mod wire;

//! Load generation and measurement for a Server-Sent Events hub: what `sluice bench hub`
//! (and `gateway`, `durable`, `soak`) runs.
//!
//! ```no_run
//! use std::time::Duration;
//! use sluice_loadgen::hub::{HubBench, ServerTarget};
//!
//! # async fn run() -> Result<(), sluice_loadgen::Error> {
//! let bench = HubBench {
//!     server: ServerTarget::Url("http://127.0.0.1:8080/.well-known/mercure".parse().unwrap()),
//!     subscribers: 1_000,
//!     rates: vec![10.0, 100.0],
//!     step_duration: Duration::from_secs(10),
//!     publish_token: Some("…a publisher JWT…".into()),
//!     ..HubBench::new(std::env::current_exe()?, vec!["bench".into(), "hub-worker".into()])
//! };
//! let results = bench.run().await?;
//! println!("{}", sluice_loadgen::hub::summary(&results));
//! # Ok(()) }
//! ```
//!
//! The pieces, each usable alone:
//!
//! - [`chunked`]: an incremental `Transfer-Encoding: chunked` decoder.
//! - [`stats`]: latency histograms (HDR) and the reports workers send, mergeable exactly.
//! - [`procfs`]: CPU time and RSS of a process from `/proc`.
//! - [`process`]: starting the measured servers, pinned to CPUs.
//! - [`floor`]: the least a hub can do per delivery, measured like a peer for the floor.
//! - [`protocol`]: how a Mercure hub, Nchan and a Durable Streams server are subscribed
//!   (read) and published (appended) to.
//! - [`publisher`]: publishes at a set rate, each update stamped with its send time.
//! - [`worker`]: a process holding thousands of lean subscribers on one thread.
//! - [`gateway`]: `sluice bench gateway`: streamed answers through a gateway against straight
//!   from its upstream.
//! - [`hub`]: the coordinator: starts (or finds) the server, spreads subscribers over
//!   worker processes, steps through publish rates, prints progress and a summary.
//! - [`durable`]: `sluice bench durable`: a Durable Streams server's appends/s, read-to-live
//!   latency with many SSE readers of one stream, and memory per idle reader.
//! - [`soak`]: `sluice bench soak`: a long churning load, the server's memory and open files
//!   sampled throughout.
//!
//! Why subscribers are spread over processes: one process may hold at most 20,000 open files
//! on the machines Sluice is measured on, a hard limit. Why they are raw HTTP/1.1 clients:
//! at thousands per process, a general client's per-connection buffers and tasks would be
//! what is measured.

pub mod chunked;
pub mod durable;
pub mod floor;
pub mod gateway;
pub mod hub;
pub mod process;
pub mod procfs;
pub mod protocol;
pub mod publisher;
pub mod soak;
mod stamp;
pub mod stats;
mod subscriber;
pub mod worker;

pub use stamp::{now_nanos, parse_stamp, stamped_data};

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The settings are inconsistent or name a target that is not allowed.
    #[error("{0}")]
    Config(String),
    /// A local I/O failure (spawning, pipes).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The server could not be started or reached.
    #[error("server: {0}")]
    Server(String),
    /// A worker process failed or spoke nonsense.
    #[error("worker: {0}")]
    Worker(String),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// Stopped by Ctrl-C.
    #[error("interrupted")]
    Interrupted,
}

/// Raises this process's soft open-file limit to its hard limit (children inherit it).
/// Returns the soft limit now in force.
pub fn raise_open_file_limit() -> u64 {
    let hard = rlimit::Resource::NOFILE.get().map_or(0, |(_, hard)| hard);
    rlimit::increase_nofile_limit(hard).unwrap_or(0)
}

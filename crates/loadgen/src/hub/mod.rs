//! The hub benchmark's coordinator.
//!
//! 1. Starts the server (pinned to its CPUs) or takes the URL of a running one; only
//!    loopback targets are accepted.
//! 2. Reads the server's RSS with no subscriber, spreads the subscribers over worker
//!    processes (pinned to the load generator's CPUs), waits until all are connected and
//!    reads the RSS again: the difference over N is the memory of an idle subscriber.
//! 3. For each publish rate, publishes for a step's duration, every update stamped with its
//!    send time and step number, and measures deliveries, publish→receive latency (HDR),
//!    the server's and the load generator's CPU, and errors.
//! 4. Optionally, a connect storm (before the publish steps): one update reaches everyone,
//!    every subscriber drops its stream, more updates are published, then all reconnect at
//!    once with the last event id they saw; measured: how long until all are connected again
//!    and until all have the updates they missed.
//! 5. Stops the workers (and the server it started), waits for stragglers, and returns the
//!    results; [`summary`] renders them as Markdown tables.
//!
//! The hub may be a Mercure hub (Sluice), Nchan, or a Durable Streams server whose readers
//! tail one stream over SSE ([`HubProtocol`](crate::protocol::HubProtocol)); subscribers may
//! share one topic (fan-out) or, on a hub, be spread over many (one subscriber per topic,
//! updates published to each topic in turn).
//!
//! Everything is bounded: connecting has a deadline, steps have a duration, workers exit by
//! themselves after the planned run plus a margin, and children are killed if the
//! coordinator stops early (Ctrl-C included).
//!
//! One file per job: [`HubBench`] and its checks (`config`), the run from start to stop
//! (`run`), the server measured (`server`), the connect storm (`storm`), the worker processes (`workers`), sampling and
//! progress (`monitor`), what a run measured ([`HubResults`], `results`) and its Markdown
//! ([`summary`]).

mod config;
mod monitor;
mod results;
mod run;
mod server;
mod storm;
mod summary;
mod workers;

pub use config::{HubBench, Pinning, SUBSCRIBERS_PER_PROCESS, ServerTarget, StormPlan};
pub use results::{ConnectResult, HubResults, IdleResult, Machine, StepResult, StormResult};
pub use summary::summary;

pub(crate) use config::loopback_addr;
pub(crate) use results::read_loadavg;
pub(crate) use server::{RunningServer, prepare};

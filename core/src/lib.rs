//! haul-core: the pure decision-making core of haul.
//!
//! Everything here is deterministic and free of I/O: no sockets, files, clocks, threads or OS
//! randomness. The [`Engine`] consumes inputs (I/O completions and clock ticks) and emits
//! outputs (I/O requests and events); runtimes (`haul-blocking`, and the async and simulated
//! ones) execute the requests. See [`engine`] for the call contract.
//!
//! Modules:
//! - [`http`]: HTTP/1.1 client codec on httparse (request writer, head parser, body framing).
//! - [`engine`]: the job state machines and the call contract.
//! - [`io`]: the I/O vocabulary shared with runtimes.
//! - [`download`]: what a caller asks for and gets back.
//! - [`resume`]: the state file that makes resume safe.
//! - [`config`], [`error`], [`time`], [`rng`]: settings, typed errors, time and jitter.
//! - [`writeback`]: whether one `syncfs` makes a runtime's batch of files durable.
//! - [`working_name`]: the names of haul's working files beside a file someone named.
#![forbid(unsafe_code)]

pub mod config;
pub mod download;
pub mod engine;
pub mod error;
pub mod http;
pub mod io;
pub mod policy;
pub mod proxy;
pub mod resume;
pub mod rng;
pub mod sched;
pub mod time;
pub mod working_name;
pub mod writeback;

pub use config::{Config, ConfigError, LowSpeedLimit, RetryPolicy};
pub use download::{
    managed_header, ChecksumAlgorithm, Delivery, Destination, Download, ExpectedChecksum, Outcome,
    MAX_SEGMENTS,
};
pub use engine::{CancelMode, Engine, Event, Input, JobId, Output, FINISHED_KEPT};
pub use error::{DownloadError, ErrorClass, TimeoutKind};
pub use io::{AfterClose, ConnId, FileId, IoErrorKind, IoFailure, IoId, IoOp, IoRequest, IoResult};
pub use proxy::{ProxyConfig, ProxyHop};
pub use sched::{Priority, RateSchedule, ScheduleError};
pub use time::Instant;
#[cfg(test)]
mod engine_checksum_tests;
#[cfg(test)]
mod engine_policy_tests;
#[cfg(test)]
mod engine_sched_tests;
#[cfg(test)]
mod engine_tests;

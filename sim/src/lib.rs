//! haul-sim: a deterministic simulator that runs the real haul engine against a virtual
//! world and checks its invariants at every step.
//!
//! What it owns:
//! - [`scenario`]: runs as data: a root seed, a workload and a fault plan (a `Vec<Fault>`),
//!   generated from a seed and shrunk by quickcheck;
//! - [`world`]: the runtime: a discrete-event queue ordered by (time, sequence), virtual
//!   connections, the engine's call contract, crashes and restarts, the safety and
//!   liveness phases, and the invariants;
//! - [`origin`]: virtual HTTP/1.1 origins (representations, `ETag`/`Last-Modified`,
//!   `Range`/`If-Range`, redirects, mirrors, response faults, garbage);
//! - [`resilience`]: checkers for the engine's circuit breakers, backoff, failover and
//!   retry budget, fed by what the world observes;
//! - [`disk`]: a virtual disk with volatile and durable images and directory-sync semantics;
//! - [`swarm`]: many seeds in parallel, fault and feature coverage, shrinking;
//! - [`seed`], [`trace`]: sub-seeds and the replayable trace.
//!
//! What it does not own: the engine (haul-core, used unchanged through its public API) and
//! real I/O (none happens here: no sockets, files, clocks or OS randomness).
//!
//! The binary `haul-sim` replays a seed (`--seed N`, printing the trace) or runs a swarm
//! (`--seeds COUNT [--from S]`).
#![forbid(unsafe_code)]

pub mod disk;
pub mod origin;
pub mod resilience;
pub mod scenario;
pub mod seed;
pub mod swarm;
pub mod trace;
pub mod world;

pub use scenario::{Fault, FaultKind, MirrorPlan, PlantedBug, Scenario};
pub use swarm::{run_swarm, shrink, SwarmReport};
pub use world::{run_scenario, Feature, Invariant, RunOptions, RunReport, Violation};

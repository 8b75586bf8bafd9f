//! Swarms: many seeds run in parallel, with the failures, fault and feature coverage,
//! simulated time and speed summed up; and shrinking of a failing scenario to the smallest that still fails.
//!
//! Owns only orchestration; a single run is [`crate::world::run_scenario`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::scenario::{FaultKind, PlantedBug, Scenario};
use crate::world::{run_scenario, Feature, RunOptions, RunReport, Violation};

/// What a swarm found.
#[derive(Debug, Clone, Default)]
pub struct SwarmReport {
    /// Seeds run.
    pub runs: u64,
    /// Failing seeds with their first violation, in seed order.
    pub failures: Vec<(u64, Violation)>,
    /// Faults fired across all runs, by kind.
    pub fired: BTreeMap<FaultKind, u64>,
    /// Resilience features exercised across all runs.
    pub features: BTreeMap<Feature, u64>,
    /// Simulated time across all runs.
    pub simulated: Duration,
    /// Steps across all runs.
    pub steps: u64,
    /// Commits across all runs.
    pub commits: u64,
    /// Crashes across all runs.
    pub crashes: u64,
}

impl SwarmReport {
    /// Fault kinds that never fired.
    pub fn missing_kinds(&self) -> Vec<FaultKind> {
        FaultKind::ALL
            .iter()
            .copied()
            .filter(|k| self.fired.get(k).copied().unwrap_or(0) == 0)
            .collect()
    }

    /// Required features no run exercised.
    pub fn missing_features(&self) -> Vec<Feature> {
        Feature::REQUIRED
            .iter()
            .copied()
            .filter(|f| self.features.get(f).copied().unwrap_or(0) == 0)
            .collect()
    }

    fn add(&mut self, r: &RunReport) {
        self.runs += 1;
        if let Some(v) = r.violations.first() {
            self.failures.push((r.seed, v.clone()));
        }
        for (k, n) in &r.fired {
            *self.fired.entry(*k).or_default() += u64::from(*n);
        }
        for (f, n) in &r.features {
            *self.features.entry(*f).or_default() += u64::from(*n);
        }
        self.simulated += r.simulated;
        self.steps += r.steps;
        self.commits += u64::from(r.commits);
        self.crashes += u64::from(r.crashes);
    }
}

/// Run seeds `from..from + count` (each with `bug` planted) on `threads` threads.
pub fn run_swarm(from: u64, count: u64, threads: usize, bug: Option<PlantedBug>) -> SwarmReport {
    let next = AtomicU64::new(from);
    let end = from.saturating_add(count);
    let total = Mutex::new(SwarmReport::default());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut mine = SwarmReport::default();
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    let sc = Scenario::generate(seed).with_bug(bug);
                    mine.add(&run_scenario(&sc, RunOptions::default()));
                }
                let mut t = total
                    .lock()
                    .expect("no thread panics while holding the lock");
                t.runs += mine.runs;
                t.failures.extend(mine.failures);
                for (k, n) in mine.fired {
                    *t.fired.entry(k).or_default() += n;
                }
                for (f, n) in mine.features {
                    *t.features.entry(f).or_default() += n;
                }
                t.simulated += mine.simulated;
                t.steps += mine.steps;
                t.commits += mine.commits;
                t.crashes += mine.crashes;
            });
        }
    });
    let mut report = total.into_inner().expect("threads finished");
    report.failures.sort_by_key(|(seed, _)| *seed);
    report
}

/// Shrink a failing scenario: repeatedly take the first smaller candidate that still
/// fails, until none does. Returns the smallest failing scenario and its report.
pub fn shrink(sc: &Scenario, fails: impl Fn(&RunReport) -> bool) -> (Scenario, RunReport) {
    let mut best = sc.clone();
    let mut report = run_scenario(&best, RunOptions::default());
    assert!(fails(&report), "shrink needs a failing scenario");
    'outer: loop {
        for candidate in best.shrink_candidates() {
            let r = run_scenario(&candidate, RunOptions::default());
            if fails(&r) {
                best = candidate;
                report = r;
                continue 'outer;
            }
        }
        return (best, report);
    }
}

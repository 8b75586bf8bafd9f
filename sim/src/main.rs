//! `haul-sim`: replay one seed with its trace, or run a swarm of seeds.
//!
//! ```text
//! haul-sim --seed N [--plant-bug NAME] [--quiet]
//! haul-sim --seeds COUNT [--from S] [--jobs J] [--plant-bug NAME]
//! haul-sim --shrink N [--plant-bug NAME]
//! ```
//! Exit status: 0 clean, 1 an invariant broke (or replays differ, or, in a swarm of at least
//! 1000 seeds, a fault kind never fired or a required resilience feature never happened),
//! 2 usage error.

use std::process::ExitCode;
use std::time::Instant as WallClock;

use haul_sim::{run_scenario, run_swarm, shrink, Feature, PlantedBug, RunOptions, Scenario};

const USAGE: &str = "usage:
  haul-sim --seed N [--plant-bug NAME] [--quiet]     replay one seed, print its trace
  haul-sim --seeds COUNT [--from S] [--jobs J] [--plant-bug NAME]
                                                     run a swarm, print failing seeds
  haul-sim --shrink N [--plant-bug NAME]             shrink a failing seed's plan
planted bugs: disk-reorders-sync, origin-splices-ranges";

enum Mode {
    Replay(u64),
    Swarm { count: u64, from: u64 },
    Shrink(u64),
}

struct Args {
    mode: Mode,
    bug: Option<PlantedBug>,
    jobs: usize,
    quiet: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut seed, mut seeds, mut from, mut shrink_seed) = (None, None, 0u64, None);
    let mut bug = None;
    let mut quiet = false;
    let mut jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let num = |v: Option<String>, flag: &str| -> Result<u64, String> {
        v.ok_or(format!("{flag} needs a value"))?
            .parse::<u64>()
            .map_err(|e| format!("{flag}: {e}"))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seed" => seed = Some(num(args.next(), "--seed")?),
            "--seeds" => seeds = Some(num(args.next(), "--seeds")?),
            "--from" => from = num(args.next(), "--from")?,
            "--jobs" => jobs = num(args.next(), "--jobs")? as usize,
            "--shrink" => shrink_seed = Some(num(args.next(), "--shrink")?),
            "--quiet" => quiet = true,
            "--plant-bug" => {
                let name = args.next().ok_or("--plant-bug needs a name")?;
                bug = Some(PlantedBug::parse(&name).ok_or(format!("unknown bug {name:?}"))?);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let mode = match (seed, seeds, shrink_seed) {
        (Some(s), None, None) => Mode::Replay(s),
        (None, Some(count), None) => Mode::Swarm { count, from },
        (None, None, Some(s)) => Mode::Shrink(s),
        _ => return Err("give exactly one of --seed, --seeds, --shrink".into()),
    };
    Ok(Args {
        mode,
        bug,
        jobs,
        quiet,
    })
}

fn bug_flag(bug: Option<PlantedBug>) -> String {
    bug.map(|b| format!(" --plant-bug {}", b.name()))
        .unwrap_or_default()
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("haul-sim: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match args.mode {
        Mode::Replay(seed) => replay(seed, args.bug, args.quiet),
        Mode::Swarm { count, from } => swarm(count, from, args.jobs, args.bug),
        Mode::Shrink(seed) => shrink_seed(seed, args.bug),
    }
}

fn replay(seed: u64, bug: Option<PlantedBug>, quiet: bool) -> ExitCode {
    let sc = Scenario::generate(seed).with_bug(bug);
    let opts = RunOptions {
        trace: true,
        ..RunOptions::default()
    };
    let first = run_scenario(&sc, opts);
    let second = run_scenario(&sc, opts);
    if !quiet {
        for line in &first.trace {
            println!("{line}");
        }
    }
    let (h1, h2) = (
        first.trace_hash.clone().unwrap_or_default(),
        second.trace_hash.clone().unwrap_or_default(),
    );
    println!(
        "seed {seed}: {} steps, {:.3} simulated s, {} commits, {} crashes, trace sha256 {h1}",
        first.steps,
        first.simulated.as_secs_f64(),
        first.commits,
        first.crashes
    );
    let mut ok = true;
    if h1 != h2 {
        println!("NONDETERMINISTIC: a second replay hashed {h2}");
        ok = false;
    }
    for v in &first.violations {
        println!("VIOLATION {v}");
        ok = false;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn swarm(count: u64, from: u64, jobs: usize, bug: Option<PlantedBug>) -> ExitCode {
    let started = WallClock::now();
    let r = run_swarm(from, count, jobs, bug);
    let wall = started.elapsed();
    for (seed, v) in &r.failures {
        println!("FAIL seed {seed}: {v}");
        println!("  replay: haul-sim --seed {seed}{}", bug_flag(bug));
    }
    let sim = r.simulated.as_secs_f64();
    println!(
        "{} seeds ({}..{}) in {:.2} s wall on {jobs} threads: {} failing, {} commits, {} crashes, \
         {} steps, {:.0} simulated s ({:.0} simulated s per wall s)",
        r.runs,
        from,
        from + count,
        wall.as_secs_f64(),
        r.failures.len(),
        r.commits,
        r.crashes,
        r.steps,
        sim,
        sim / wall.as_secs_f64().max(1e-9)
    );
    let fired: Vec<String> = r
        .fired
        .iter()
        .map(|(k, n)| format!("{}={n}", k.name()))
        .collect();
    println!("faults fired: {}", fired.join(" "));
    let features: Vec<String> = Feature::ALL
        .iter()
        .map(|f| format!("{}={}", f.name(), r.features.get(f).copied().unwrap_or(0)))
        .collect();
    println!("features: {}", features.join(" "));
    let mut ok = r.failures.is_empty();
    let missing = r.missing_features();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|f| f.name()).collect();
        println!("features that never happened: {}", names.join(" "));
        if count >= 1000 {
            ok = false;
        }
    }
    let missing = r.missing_kinds();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|k| k.name()).collect();
        println!("fault kinds that never fired: {}", names.join(" "));
        if count >= 1000 {
            ok = false;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn shrink_seed(seed: u64, bug: Option<PlantedBug>) -> ExitCode {
    let sc = Scenario::generate(seed).with_bug(bug);
    let first = run_scenario(&sc, RunOptions::default());
    let Some(v) = first.violations.first().cloned() else {
        println!("seed {seed} passes; nothing to shrink");
        return ExitCode::SUCCESS;
    };
    println!("seed {seed} fails: {v}");
    let invariant = v.invariant;
    let (small, report) = shrink(&sc, |r| {
        r.violations
            .first()
            .is_some_and(|x| x.invariant == invariant)
    });
    print!("smallest failing plan:\n{small}");
    if let Some(v) = report.violations.first() {
        println!("fails with: {v}");
    }
    ExitCode::from(1)
}

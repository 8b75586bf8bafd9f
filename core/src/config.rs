//! Engine configuration: timeouts, limits and retry policy, with validated defaults.
//!
//! One struct holds every knob so the CLI, the library clients and the simulator configure the
//! engine the same way. [`Config::validate`] rejects settings that cannot work (a zero
//! timeout, a backoff cap below its base) with a message naming the field.

use std::time::Duration;

/// Minimum throughput over a window; slower transfers are aborted (curl's `--speed-limit`
/// with `--speed-time`, cargo's low-speed limit). Catches trickles an idle timeout misses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowSpeedLimit {
    /// Bytes per second below which the transfer is too slow.
    pub bytes_per_sec: u64,
    /// The window over which the rate is measured.
    pub window: Duration,
}

/// Retries with exponential backoff and jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = never retry).
    pub max_attempts: u32,
    /// Delay before the first retry; doubled for each further retry.
    pub base_delay: Duration,
    /// Largest delay between two attempts.
    pub max_delay: Duration,
    /// No retry starts later than this after the job's first attempt.
    pub max_elapsed: Duration,
    /// Retries per minute across the whole engine (a token bucket with this many tokens
    /// that refills over a minute): a retry that finds it empty waits for a token, so many
    /// failing downloads cannot turn into a retry storm.
    pub budget_per_minute: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(32),
            max_elapsed: Duration::from_secs(300),
            budget_per_minute: 120,
        }
    }
}

impl RetryPolicy {
    /// The exponential delay of the `n`-th backoff (0 for the first), before jitter: the
    /// longest that backoff may be.
    pub fn delay_cap(&self, n: u32) -> Duration {
        self.base_delay
            .saturating_mul(1u32 << n.min(20))
            .min(self.max_delay)
    }

    /// The longest `retries` backoffs take, from the `from`-th on (see
    /// [`RetryPolicy::delay_cap`]): how long a download's own retries may keep it waiting.
    pub fn backoffs_total(&self, from: u32, retries: u32) -> Duration {
        let mut total = Duration::ZERO;
        for k in 0..retries {
            let delay = self.delay_cap(from.saturating_add(k));
            if delay == self.max_delay {
                // Every later one is the cap too.
                return total.saturating_add(delay.saturating_mul(retries - k));
            }
            total = total.saturating_add(delay);
        }
        total
    }
}

/// Engine-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Sent as `User-Agent` unless a download sets its own.
    pub user_agent: String,
    /// Limit to establish a connection (DNS and TLS included).
    pub connect_timeout: Duration,
    /// Limit from sending the request to the end of the response head.
    pub head_timeout: Duration,
    /// Limit without receiving a single byte.
    pub idle_timeout: Duration,
    /// Optional minimum rate.
    pub low_speed: Option<LowSpeedLimit>,
    /// Redirects followed at most.
    pub max_redirects: u32,
    /// Largest response head accepted.
    pub max_head_bytes: usize,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Circuit breaker per origin (scheme, host, port), shared by every download.
    pub breaker: crate::policy::BreakerConfig,
    /// Written-but-unsynced bytes after which the partial file is synced and its state file
    /// updated (the durable resume point advances).
    pub checkpoint_bytes: u64,
    /// Longest time between two checkpoints while data flows.
    pub checkpoint_interval: Duration,
    /// A download whose length is known to be at most this many bytes is written to an
    /// unnamed file ([`crate::IoOp::OpenUnnamed`]) that gets its name only at the commit: no
    /// partial to create and rename (the two directory operations a small file costs), no
    /// checkpoint, and nothing left behind by a crash; it cannot be resumed or kept when
    /// cancelled. 0: every download uses a named partial.
    pub unnamed_max: u64,
    /// The executor hashes unnamed files (see [`Config::unnamed_max`]) as they are written
    /// and the engine asks it for the digest before the commit ([`crate::IoOp::Digest`])
    /// instead of hashing their bytes itself: the hashing of many small downloads leaves the
    /// thread that drives the engine. The verification is the same (the engine compares the
    /// digest with the expected SHA-256 before anything is committed). A runtime whose
    /// executor supports it turns it on; off by default.
    pub executor_digests: bool,
    /// Bytes handed to file writes and not yet completed, above which the engine stops
    /// reading from the network (backpressure keeps memory constant).
    pub max_write_backlog: u64,
    /// Idle keep-alive connections are closed after this long.
    pub idle_connection_timeout: Duration,
    /// Seed for jitter; runtimes take it from the OS, the simulator from its run seed.
    pub seed: u64,
    /// Jobs transferring at once; more wait in the priority queue.
    pub max_active_jobs: usize,
    /// Jobs committing (syncing and renaming their file) at once. A committing job leaves
    /// its transfer slot to the next download; this bound holds new jobs back when the disk
    /// falls behind. Large, so a runtime that makes commits durable in groups gets large
    /// groups: with 16 commits in flight, a run of small files was paced by one device flush
    /// per 16 files.
    pub max_committing_jobs: usize,
    /// Connections open to one origin (scheme, host, port) at once.
    pub max_connections_per_origin: usize,
    /// Connections open in total.
    pub max_connections: usize,
    /// Global rate limit in bytes per second (None: unlimited).
    pub rate_limit: Option<u64>,
    /// Proxies (none by default; the CLI reads the conventional environment variables).
    pub proxy: crate::proxy::ProxyConfig,
    /// Extra trusted root certificates (PEM or DER), on top of the built-in web roots.
    pub extra_root_certs: Vec<Vec<u8>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            user_agent: concat!("haul/", env!("CARGO_PKG_VERSION")).to_string(),
            connect_timeout: Duration::from_secs(15),
            head_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            low_speed: Some(LowSpeedLimit {
                bytes_per_sec: 1024,
                window: Duration::from_secs(60),
            }),
            max_redirects: 10,
            max_head_bytes: 64 * 1024,
            retry: RetryPolicy::default(),
            breaker: crate::policy::BreakerConfig::default(),
            checkpoint_bytes: 64 * 1024 * 1024,
            checkpoint_interval: Duration::from_secs(5),
            unnamed_max: 1024 * 1024,
            executor_digests: false,
            max_write_backlog: 8 * 1024 * 1024,
            idle_connection_timeout: Duration::from_secs(30),
            seed: 0x6861_756c,
            max_active_jobs: 16,
            max_committing_jobs: 256,
            max_connections_per_origin: 16,
            max_connections: 64,
            rate_limit: None,
            proxy: crate::proxy::ProxyConfig::default(),
            extra_root_certs: Vec::new(),
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config: {field}: {reason}")]
pub struct ConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl Config {
    /// Checks that every setting can work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let nonzero = |field: &'static str, d: Duration| {
            if d.is_zero() {
                Err(ConfigError {
                    field,
                    reason: "must be greater than zero".into(),
                })
            } else {
                Ok(())
            }
        };
        nonzero("connect_timeout", self.connect_timeout)?;
        nonzero("head_timeout", self.head_timeout)?;
        nonzero("idle_timeout", self.idle_timeout)?;
        nonzero("checkpoint_interval", self.checkpoint_interval)?;
        nonzero("idle_connection_timeout", self.idle_connection_timeout)?;
        if let Some(ls) = self.low_speed {
            nonzero("low_speed.window", ls.window)?;
        }
        if self.retry.max_attempts == 0 {
            return Err(ConfigError {
                field: "retry.max_attempts",
                reason: "must be at least 1 (the first attempt)".into(),
            });
        }
        if self.retry.max_delay < self.retry.base_delay {
            return Err(ConfigError {
                field: "retry.max_delay",
                reason: format!(
                    "{:?} is below retry.base_delay {:?}",
                    self.retry.max_delay, self.retry.base_delay
                ),
            });
        }
        if self.retry.budget_per_minute == 0 {
            return Err(ConfigError {
                field: "retry.budget_per_minute",
                reason: "must be at least 1".into(),
            });
        }
        let b = &self.breaker;
        if b.failure_threshold == 0 {
            return Err(ConfigError {
                field: "breaker.failure_threshold",
                reason: "must be at least 1".into(),
            });
        }
        if b.success_threshold == 0 {
            return Err(ConfigError {
                field: "breaker.success_threshold",
                reason: "must be at least 1".into(),
            });
        }
        nonzero("breaker.cooldown", b.cooldown)?;
        if b.max_cooldown < b.cooldown {
            return Err(ConfigError {
                field: "breaker.max_cooldown",
                reason: format!(
                    "{:?} is below breaker.cooldown {:?}",
                    b.max_cooldown, b.cooldown
                ),
            });
        }
        if self.max_head_bytes < 1024 {
            return Err(ConfigError {
                field: "max_head_bytes",
                reason: "must be at least 1024".into(),
            });
        }
        if self.max_write_backlog < 64 * 1024 {
            return Err(ConfigError {
                field: "max_write_backlog",
                reason: "must be at least 64 KiB".into(),
            });
        }
        for (field, v) in [
            ("max_active_jobs", self.max_active_jobs),
            ("max_committing_jobs", self.max_committing_jobs),
            (
                "max_connections_per_origin",
                self.max_connections_per_origin,
            ),
            ("max_connections", self.max_connections),
        ] {
            if v == 0 {
                return Err(ConfigError {
                    field,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if self.rate_limit == Some(0) {
            return Err(ConfigError {
                field: "rate_limit",
                reason: "must be positive (None means unlimited)".into(),
            });
        }
        if self.checkpoint_bytes == 0 {
            return Err(ConfigError {
                field: "checkpoint_bytes",
                reason: "must be greater than zero".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoffs_total_adds_the_longest_delays_of_the_retries_left() {
        let policy = RetryPolicy::default();
        // The default retries: 1 + 2 + 4 + 8 + 16 s.
        assert_eq!(policy.backoffs_total(0, 5), Duration::from_secs(31));
        // Two taken: 4 + 8 + 16.
        assert_eq!(policy.backoffs_total(2, 3), Duration::from_secs(28));
        // Past the cap every backoff is `max_delay`: 1 + 2 + 4 + 8 + 16 + 32 * 15.
        assert_eq!(policy.backoffs_total(0, 20), Duration::from_secs(511));
        assert_eq!(policy.backoffs_total(40, 2), Duration::from_secs(64));
        assert_eq!(policy.backoffs_total(3, 0), Duration::ZERO);
        // No overflow, however many retries.
        assert!(policy.backoffs_total(0, u32::MAX) > Duration::from_secs(1 << 36));
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn zero_timeout_is_rejected_by_name() {
        let c = Config {
            idle_timeout: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "idle_timeout");
    }

    #[test]
    fn breaker_settings_that_cannot_work_are_rejected_by_name() {
        let mut c = Config::default();
        c.breaker.failure_threshold = 0;
        assert_eq!(c.validate().unwrap_err().field, "breaker.failure_threshold");
        let mut c = Config::default();
        c.breaker.cooldown = Duration::ZERO;
        assert_eq!(c.validate().unwrap_err().field, "breaker.cooldown");
        let mut c = Config::default();
        c.breaker.max_cooldown = Duration::from_secs(1);
        assert_eq!(c.validate().unwrap_err().field, "breaker.max_cooldown");
        let mut c = Config::default();
        c.retry.budget_per_minute = 0;
        assert_eq!(c.validate().unwrap_err().field, "retry.budget_per_minute");
    }

    #[test]
    fn backoff_cap_below_base_is_rejected() {
        let mut c = Config::default();
        c.retry.max_delay = Duration::from_millis(10);
        assert_eq!(c.validate().unwrap_err().field, "retry.max_delay");
    }
}

//! haul-tests: scenario tests against real HTTP servers on 127.0.0.1.
//!
//! Each scenario is written once, generic over [`Runtime`], and instantiated for every
//! runtime by [`scenarios!`], so no runtime can silently lag behind. Servers are
//! `haul_origin::Origin` instances (axum + hyper) on ephemeral loopback ports.

pub mod async_scenarios;
pub mod scenarios;
pub mod secure;

use std::path::{Path, PathBuf};
use std::time::Duration;

use haul_core::{Config, Download, DownloadError, Event, Outcome};
use sha2::{Digest, Sha256};

/// What a scenario needs from a runtime: run one download to its end.
pub trait Runtime {
    /// A runtime configured with `config`.
    fn with_config(config: Config) -> Self;
    /// Download, collecting events.
    fn download(&self, d: Download, events: &mut Vec<Event>) -> Result<Outcome, DownloadError>;
}

/// A runtime that submits several downloads as one batch (priorities and `after_index`
/// apply across the batch).
pub trait BatchRuntime: Runtime {
    /// Download several at once.
    fn download_many(
        &self,
        ds: Vec<Download>,
        events: &mut Vec<Event>,
    ) -> Vec<Result<Outcome, DownloadError>>;
}

/// The blocking runtime.
pub struct Blocking(haul_blocking::Client);

impl Runtime for Blocking {
    fn with_config(config: Config) -> Self {
        Blocking(haul_blocking::Client::new(config).expect("valid config"))
    }
    fn download(&self, d: Download, events: &mut Vec<Event>) -> Result<Outcome, DownloadError> {
        self.0.download(d, |e| events.push(e.clone()))
    }
}

impl BatchRuntime for Blocking {
    fn download_many(
        &self,
        ds: Vec<Download>,
        events: &mut Vec<Event>,
    ) -> Vec<Result<Outcome, DownloadError>> {
        self.0.download_many(ds, |e| events.push(e.clone()))
    }
}

/// The tokio runtime: a multi-threaded tokio runtime per scenario; events come from the
/// transfer's stream.
pub struct Tokio {
    runtime: tokio::runtime::Runtime,
    client: haul_tokio::Client,
}

impl Runtime for Tokio {
    fn with_config(config: Config) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let client = runtime
            .block_on(async { haul_tokio::Client::new(config) })
            .expect("valid config");
        Tokio { runtime, client }
    }
    fn download(&self, d: Download, events: &mut Vec<Event>) -> Result<Outcome, DownloadError> {
        self.runtime
            .block_on(collect_events(self.client.start(d), events))
    }
}

impl BatchRuntime for Tokio {
    fn download_many(
        &self,
        ds: Vec<Download>,
        events: &mut Vec<Event>,
    ) -> Vec<Result<Outcome, DownloadError>> {
        self.runtime
            .block_on(collect_all(self.client.start_many(ds), events))
    }
}

/// The smol runtime (smol's global executor); events come from the transfer's stream.
pub struct Smol(haul_smol::Client);

impl Runtime for Smol {
    fn with_config(config: Config) -> Self {
        Smol(haul_smol::Client::new(config).expect("valid config"))
    }
    fn download(&self, d: Download, events: &mut Vec<Event>) -> Result<Outcome, DownloadError> {
        smol::block_on(collect_events(self.0.start(d), events))
    }
}

impl BatchRuntime for Smol {
    fn download_many(
        &self,
        ds: Vec<Download>,
        events: &mut Vec<Event>,
    ) -> Vec<Result<Outcome, DownloadError>> {
        smol::block_on(collect_all(self.0.start_many(ds), events))
    }
}

/// Drain each transfer of a batch in turn (the others keep running meanwhile).
async fn collect_all(
    transfers: Vec<haul_async::Transfer>,
    events: &mut Vec<Event>,
) -> Vec<Result<Outcome, DownloadError>> {
    let mut results = Vec::with_capacity(transfers.len());
    for t in transfers {
        results.push(collect_events(t, events).await);
    }
    results
}

/// Drain an async transfer's event stream into `events`, then take its result.
async fn collect_events<T>(mut transfer: T, events: &mut Vec<Event>) -> T::Output
where
    T: futures_util::Stream<Item = Event> + std::future::IntoFuture + Unpin,
{
    use futures_util::StreamExt;
    while let Some(ev) = transfer.next().await {
        events.push(ev);
    }
    transfer.await
}

/// A config with short timeouts and backoff so failure scenarios run in well under a second.
pub fn fast_config() -> Config {
    let mut c = Config {
        connect_timeout: Duration::from_secs(5),
        head_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    c.retry.base_delay = Duration::from_millis(20);
    c.retry.max_delay = Duration::from_millis(100);
    c.retry.max_attempts = 4;
    c
}

/// Deterministic pseudo-random bytes.
pub fn body(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(seed.to_le_bytes());
        h.update(i.to_le_bytes());
        out.extend_from_slice(&h.finalize());
        i += 1;
    }
    out.truncate(len);
    out
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Names of the entries in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `dest` with `suffix` appended to its file name.
pub fn with_suffix(dest: &Path, suffix: &str) -> PathBuf {
    let mut n = dest.file_name().expect("file name").to_os_string();
    n.push(suffix);
    dest.with_file_name(n)
}

/// Instantiate every scenario in [`scenarios`](mod@scenarios) as a `#[test]` for the runtime type `$rt`.
#[macro_export]
macro_rules! scenarios {
    ($rt:ty; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::scenarios::$name::<$rt>();
            }
        )*
    };
}

/// The list of scenario names, for [`scenarios!`].
#[macro_export]
macro_rules! all_scenarios {
    ($rt:ty) => {
        $crate::scenarios!($rt;
            plain_download_commits_exact_bytes,
            sha256_match_commits,
            sha256_mismatch_leaves_nothing_at_destination,
            wrong_expected_size_fails_before_commit,
            max_size_guard_stops_a_server_that_sends_more,
            chunked_response_is_decoded,
            close_delimited_response_is_complete_at_close,
            redirect_chain_is_followed,
            redirect_loop_is_an_error,
            authorization_is_not_forwarded_to_another_origin,
            authorization_is_kept_on_same_origin_redirect,
            interrupted_download_resumes_with_range_in_a_new_run,
            server_ignoring_range_yields_a_correct_file,
            a_destination_under_a_regular_file_fails_at_once_with_local_io,
            a_destination_that_is_a_directory_is_refused_before_any_request,
            small_downloads_are_named_only_at_their_destination,
            truncated_body_is_an_error_not_a_success,
            truncated_body_is_resumed_by_retries,
            stalled_server_trips_the_idle_timeout,
            not_found_is_a_status_error_without_retries,
            origin_that_fails_then_recovers_is_retried,
            changed_representation_between_runs_restarts_from_zero,
            sequential_downloads_reuse_one_connection,
            input_on_an_idle_connection_is_not_taken_for_the_next_response,
            content_disposition_names_the_file_in_a_directory,
            destination_that_already_verifies_is_not_downloaded_again,
            segmented_download_reassembles_the_exact_bytes,
            segmented_download_survives_a_segment_connection_dying,
            a_server_capping_range_replies_is_downloaded_on_one_connection,
            failing_origin_opens_its_breaker_and_a_probe_closes_it_after_recovery,
            an_origin_still_down_after_a_cooldown_ends_its_downloads_after_one_probe,
            backoff_delays_grow_exponentially_with_jitter,
            a_mirror_serves_while_the_primary_is_down,
            a_mirror_with_other_bytes_is_left_for_one_with_the_right_ones,
        );
    };
}

/// Scenarios that need a [`BatchRuntime`].
#[macro_export]
macro_rules! batch_scenarios {
    ($rt:ty) => {
        $crate::scenarios!($rt;
            priority_order_is_respected_when_slots_are_scarce,
            a_long_batch_keeps_its_order_and_an_urgent_download_at_its_end_goes_first,
            dependent_job_waits_for_its_dependency,
            dependent_job_fails_clearly_when_its_dependency_fails,
            same_url_twice_makes_one_request,
        );
    };
}

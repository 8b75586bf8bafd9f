//! The `haul` command.
//!
//! Subcommands: `get` (verified, resumable downloads: mirrors, segments, input lists, rate
//! limits), `demo` (the main job on a fresh machine: a built-in local origin, downloads with
//! verification, an asset install and update), `extract` and `hash` (safe zip extraction,
//! the hashing path), `vsix` (editor extensions), `assets` (game asset catalogs), `load` and
//! `cache` (signed modules in a content-addressed store).

use std::io::Write;

mod assets;
mod cache;
mod demo;
mod demo_assets;
mod exit;
mod extract;
mod get;
mod inputfile;
mod load;
mod progress;
mod signals;
mod units;
mod vsix;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

const AFTER_HELP: &str = "EXAMPLES:
  haul demo
  haul get https://example.org/big.iso --sha256 <hex>
  haul get http://host/file.bin -o /tmp/file.bin --size 1048576
  haul get http://host/a http://host/b -d downloads/

Interrupted downloads resume when the same command runs again: haul keeps
<dest>.haul-part and <dest>.haul-state beside the destination and continues
with an HTTP Range request only if the server still has the same bytes.

";

#[derive(Parser, Debug)]
#[command(
    name = "haul",
    version,
    about = "Fetch bytes over HTTP through failures, prove they are the right bytes, and put them in place atomically.",
    after_help = format!("{AFTER_HELP}{}", exit::TABLE),
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Download files, verified (size, sha256 or another checksum) and committed atomically;
    /// resumable.
    Get(get::GetArgs),
    /// Start a built-in local origin and download generated assets from it.
    Demo(demo::DemoArgs),
    /// Load an app's signed modules (Zipline-style manifest) into a content-addressed cache.
    Load(load::LoadArgs),
    /// Look at and maintain a module cache: ls, prune, verify, pins.
    Cache(cache::CacheArgs),
    /// Install, inspect, uninstall and list VS Code extensions (.vsix).
    Vsix(vsix::VsixArgs),
    /// Asset catalogs: repositories, states, installs and updates of game assets.
    Assets(assets::AssetsArgs),
    /// Extract any zip safely into a directory, replacing it as a whole.
    Extract(extract::ExtractArgs),
    /// Print the SHA-256 of files like sha256sum (`HEX  FILE`).
    Hash(extract::HashArgs),
}

/// mimalloc for the command: its per-thread heaps take the buffers the network thread
/// allocates and the digest and file threads free without the cross-thread arena locking of
/// the system allocator. 2,000 small downloads: about 6% less CPU and wall time; a cold load
/// of 500 modules about 2% (interleaved A/B on this project's 2-core machine). The library
/// crates leave the allocator to the application that embeds them. See also
/// [`small_pages_only`].
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. mimalloc asks for them on its arenas
/// (`MADV_HUGEPAGE`), so the first touch of any of its memory zeroes a whole 2 MiB page: a
/// cold load of 500 modules kept 45 MB resident, 22 MB with this (wall and CPU time the same
/// within noise). haul's heap is small and short-lived; it gains nothing from huge pages. A
/// refusal (an old kernel) changes nothing else.
fn small_pages_only() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

fn main() {
    small_pages_only();
    let parsed = Cli::command().try_get_matches().and_then(|matches| {
        Cli::from_arg_matches(&matches)
            .map(|cli| (cli, quiet(&matches)))
            .map_err(|e| e.format(&mut Cli::command()))
    });
    // Warnings (a server that compressed anyway, a store another process holds, a leftover
    // of a crashed install removed) go to stderr; with --quiet only errors do. Colours only
    // on a terminal: a log file or a pipe gets plain text.
    let level = match &parsed {
        Ok((_, true)) => "error",
        _ => "warn",
    };
    // A user reads `WARN not retrying: ...`; the time and the module that logged it are for
    // whoever asked for logs with HAUL_LOG.
    let debugging = std::env::var_os("HAUL_LOG").is_some();
    // The engine's job number (`job=job#3`) means nothing to a user, who is told the file
    // (`path=`) instead; it stays for whoever asked for logs.
    // Values may hold text a server chose (a header's value): control characters are
    // escaped, as tracing's own formatter does, so none reaches the terminal. Fields of
    // records from the `log` crate (`log.target`, ...) are left out, as it leaves them out.
    let fields = tracing_subscriber::fmt::format::debug_fn(move |w, field, value| {
        let raw = format!("{value:?}");
        let text = escape_controls(&raw);
        match field.name() {
            "message" => write!(w, "{text}"),
            "job" if !debugging => Ok(()),
            name if name.starts_with("log.") => Ok(()),
            name => write!(w, " {name}={text}"),
        }
    });
    let logs = tracing_subscriber::fmt()
        .fmt_fields(fields)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HAUL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(debugging);
    let _ = if debugging {
        logs.try_init()
    } else {
        logs.without_time().try_init()
    };
    let cli = match parsed {
        Ok((c, _)) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            let about_json = e.kind() == clap::error::ErrorKind::UnknownArgument
                && e.to_string().contains("'--json'");
            if code == exit::USAGE && json_requested() && !about_json {
                // As the commands' own refusals: a consumer of the JSON lines learns why
                // there are none. The message without the usage and help hint that follow it.
                let rendered = e.render().to_string();
                let msg = rendered
                    .split("\n\n")
                    .next()
                    .unwrap_or_default()
                    .lines()
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" ");
                let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
                let line = serde_json::json!({"event": "error", "error": msg, "exit_code": code});
                // A closed stdout (`| true`) loses the line, not the exit code.
                let _ = writeln!(std::io::stdout(), "{line}");
            }
            std::process::exit(code);
        }
    };
    quiet_on_closed_stdout();
    let code = match cli.command {
        Command::Get(args) => get::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Load(args) => load::run(args),
        Command::Cache(args) => cache::run(args),
        Command::Vsix(args) => vsix::run(args),
        Command::Assets(args) => assets::run(args),
        Command::Extract(args) => extract::run_extract(args),
        Command::Hash(args) => extract::run_hash(args),
    };
    tracing::debug!("exiting");
    std::process::exit(exit::as_exited(code));
}

/// Whether `--json` is among the arguments (before any `--`), for a command line clap
/// refused: it is then asked for even though it was not parsed.
fn json_requested() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// Whether the (sub)command that runs was given `--quiet` (or `-q`, alone or among other
/// short flags).
fn quiet(matches: &clap::ArgMatches) -> bool {
    let mut at = Some(matches);
    while let Some(m) = at {
        if let Ok(Some(true)) = m.try_get_one::<bool>("quiet") {
            return true;
        }
        at = m.subcommand().map(|(_, sub)| sub);
    }
    false
}

/// Output piped into a reader that stopped (`haul cache ls | head`) ends the command the
/// way other Unix tools end, silently with 128 + SIGPIPE, instead of a panic report.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// Writes `line` to stderr, its control characters escaped (see [`escape_controls`]): a name
/// from a list, the command line or a server must not drive the terminal (`out=` holding
/// `ESC ]0;...BEL` set its title).
pub(crate) fn say(line: impl std::fmt::Display) {
    eprintln!("{}", escape_controls(&line.to_string()));
}

/// `text` with its control characters (ESC, the C1 controls, DEL, line breaks...) written as
/// escapes (`\u{1b}`): a log line shows text a server chose, which must not move the
/// cursor, recolour the terminal or fake a line of its own.
pub(crate) fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    // The controls, and the bidirectional formatting characters, which reorder what
    // follows them on the line.
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| match hidden(c) {
            true => c.escape_unicode().to_string(),
            false => c.to_string(),
        })
        .collect::<String>()
        .into()
}

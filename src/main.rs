//! `switchboard`: parse the configuration, start the broker, wait.
//!
//! Output: stdout gets what a person (or a script) needs to use the broker —
//! where it listens, which channels are on, generated tokens; stderr gets the
//! logs and start-up errors.

use std::io::IsTerminal;

use switchboard::config::{Args, Config, LogFormat};

/// Per-thread heaps and size classes: a round trip allocates and frees a few
/// dozen small blocks (frames, envelopes, queue nodes), where glibc malloc
/// spent about 8 % of the broker's CPU (docs/performance.md, per-core figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let config = match Config::load(Args::from_command_line()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard: {e}");
            std::process::exit(2);
        }
    };
    init_logs(config.log_format);
    ignore_file_size_signal();
    if !config.transparent_huge_pages {
        no_transparent_huge_pages();
    }
    if let Err(e) = switchboard::server::run(config) {
        eprintln!("switchboard: {e}");
        std::process::exit(1);
    }
}

/// A write past the file size limit (`ulimit -f`, RLIMIT_FSIZE) kills the
/// process with SIGXFSZ by default. Ignored, the write fails with `EFBIG`
/// instead, which the journal treats like a full disk: it refuses new
/// changes with `unavailable` and retries until the limit allows the write.
fn ignore_file_size_signal() {
    #[cfg(unix)]
    // SAFETY: sets the disposition of one signal to "ignore" before any
    // other thread of the broker starts; no handler code is installed.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// The heap in 4 KiB pages (`transparent_huge_pages = false`, the default).
/// With transparent huge pages the kernel backs the allocator's arenas with
/// 2 MiB pages, each zeroed whole at its first touch: the broker's heap is
/// many small objects (messages, frames, envelopes) spread over those arenas,
/// and under load zeroing pages took about 6 % of its CPU (`clear_page` in a
/// profile, `docs/performance.md`), against 0.1 % without. The kernel checks
/// the flag at each page fault, so memory mapped before this call is covered
/// too.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes one flag of
    // this process's memory map; no pointer is passed.
    unsafe {
        if libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "could not turn transparent huge pages off; the broker runs with them"
            );
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: the broker's info,
/// and warnings and errors of the HTTP server, among them a failing `accept`
/// such as "Too many open files"). Text is coloured only when
/// stderr is a terminal (and `NO_COLOR` is unset), so a file or a pipe gets
/// no escape codes; JSON is one object per line. A line stderr does not
/// take (a full disk) is lost without a word.
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        "switchboard=info,actix_web=warn,actix_server=warn,actix_http=warn".into()
    });
    // A log line that cannot be written (stderr a file on a full disk) is
    // dropped: the default reports it with `eprintln!`, which panics when
    // stderr fails, and would kill the thread that logged, the journal's
    // writer among them, just as the disk fills.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            logs.with_ansi(std::io::stderr().is_terminal() && !no_color)
                .init()
        }
        LogFormat::Json => logs.with_ansi(false).json().init(),
    }
}

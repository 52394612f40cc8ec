//! Command line: one file per subcommand; the doc comments are the help.

mod abort;
mod bench_probe;
mod check;
mod doctor;
mod generate;
mod live;
mod status;
mod swap;
mod test_busy_bpf;
mod watch;

use clap::{Parser, Subcommand};

/// Writes a line to stdout. A reader that went away (`loopswap status |
/// head -1`) is an error the caller returns, so a watch detaches its probes
/// on the way out; `main` exits quietly on it, as a process killed by
/// SIGPIPE would.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(anyhow::Error::from)
    }};
}
pub(crate) use outln;

/// Whether an error is stdout's reader having gone away.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Replace a running kernel module without stopping the devices it serves.
#[derive(Debug, Parser)]
#[command(
    name = "loopswap",
    version,
    about,
    long_about = None,
    after_help = "Examples:\n  loopswap watch --once lswloop_v1\n  loopswap swap lswloop0 --to /modules/lswloop_v2.ko\n  loopswap status"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show, live, how many threads are executing inside a module's functions.
    Watch(watch::WatchArgs),
    /// Hot-swap the implementation of running instances, state and all.
    Swap(swap::SwapArgs),
    /// Show implementations, instances and swaps in progress.
    Status(status::StatusArgs),
    /// Force-abort the swap in progress on an instance (any controller's).
    Abort(abort::AbortArgs),
    /// Tell, changing nothing, whether a swap would be attempted.
    Check(check::CheckArgs),
    /// Check what this host offers of what loopswap needs, with fixes.
    Doctor(doctor::DoctorArgs),
    #[command(hide = true)]
    BenchProbe(bench_probe::BenchProbeArgs),
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
    #[command(hide = true)]
    TestBusyBpf(test_busy_bpf::TestBusyBpfArgs),
}

impl Command {
    pub fn execute(&self) -> anyhow::Result<()> {
        match self {
            Command::Watch(args) => args.execute(),
            Command::Swap(args) => args.execute(),
            Command::Status(args) => args.execute(),
            Command::Abort(args) => args.execute(),
            Command::Doctor(args) => args.execute(),
            Command::Check(args) => args.execute(),
            Command::BenchProbe(args) => args.execute(),
            Command::Generate(args) => args.execute(),
            Command::TestBusyBpf(args) => args.execute(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn watch_arguments_parse() {
        let cli = Cli::try_parse_from([
            "loopswap",
            "watch",
            "--once",
            "--json",
            "--interval",
            "500ms",
            "m",
        ])
        .unwrap();
        let Command::Watch(args) = cli.command else {
            panic!("not watch")
        };
        assert_eq!(args.module, "m");
        assert!(args.once && args.json && !args.exported_only);
        assert_eq!(args.interval, std::time::Duration::from_millis(500));
    }

    #[test]
    fn swap_arguments_parse() {
        let cli = Cli::try_parse_from(["loopswap", "swap", "lswloop0", "--to", "v2.ko", "--timeout", "2s"])
            .unwrap();
        let Command::Swap(args) = cli.command else {
            panic!("not swap")
        };
        assert_eq!(args.instances, ["lswloop0"]);
        assert_eq!(args.to, "v2.ko");
        assert_eq!(args.timeout, std::time::Duration::from_secs(2));
        assert!(
            Cli::try_parse_from(["loopswap", "swap", "lswloop0"]).is_err(),
            "--to is required"
        );
    }

    #[test]
    fn bad_watch_arguments_are_usage_errors() {
        for argv in [
            &["loopswap", "watch"][..],
            &["loopswap", "watch", "--interval", "fast", "m"],
            &["loopswap", "watch", "--max-active", "-1", "m"],
            &["loopswap", "watch", "--bogus", "m"],
        ] {
            let err = Cli::try_parse_from(argv).unwrap_err();
            // clap exits with status 2 for usage errors, like loopswap's own.
            assert_eq!(err.exit_code(), 2, "{argv:?}");
        }
    }
}

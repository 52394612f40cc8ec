//! `cargo xtask`: build loopswap and run it in a VM on Debian's 6.12 kernel.

mod bench;
mod demo;
mod plot;

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use xtask::{build, paths, run, setup, vm};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Build loopswap and run it in a qemu VM")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what is missing (Debian packages, the pinned eBPF nightly
    /// with rust-src, the musl target, bpf-linker, Debian's 6.12 kernel and
    /// headers) and check that the nightly's LLVM is bpf-linker's. Idempotent.
    Setup,
    /// Set up, then build loopswap (static), the kernel modules and the
    /// base initramfs; only what changed is rebuilt.
    Build,
    /// The demo: build everything, boot the VM, and watch loopswap count
    /// threads inside a module, including those that entered before it.
    Run,
    /// Run COMMAND in the VM (under /bin/sh -c, in /add) with loopswap,
    /// busybox, fio, mkfs.ext4/fsck.ext4, insmod/rmmod on PATH and the
    /// project's modules in /modules; its exit status becomes ours.
    Vm {
        /// A host file to place in the guest at /add/<file name>.
        #[arg(long = "add", value_name = "PATH")]
        adds: Vec<PathBuf>,
        /// Seconds before the VM is killed.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print the guest kernel's Kbuild directory, for
    /// `make -C "$(cargo xtask kdir)" M=DIR modules`.
    Kdir,
    /// Benchmarks, measured side by side in one VM run.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
    /// The test suite: host unit tests, then the VM tests (tests/).
    Test,
    /// Man pages and bash/zsh/fish completions, generated from loopswap's
    /// option definitions, into target/share/{man1,completions}.
    Man,
    /// Many v1<->v2 swaps under load (ext4 and raw fio with verification,
    /// idle devices with known data) with faults injected at random phases:
    /// controller SIGKILL and SIGSTOP, failing transformer, failing
    /// allocation, failing init, device removal, stalled requests. Fails
    /// unless nothing was lost or leaked; writes target/soak/soak.json.
    Soak {
        /// Swaps to run (every fault kind at least once).
        #[arg(long, default_value_t = 500)]
        swaps: usize,
        /// Devices under load or holding data (at least 4).
        #[arg(long, default_value_t = 4)]
        devices: usize,
        /// Seed of the plan, to replay a run (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
    },
}

/// Errors print as one line with their causes (`{:#}`), whatever
/// RUST_BACKTRACE says: a backtrace of xtask helps nobody fix a setup step.
fn main() -> std::process::ExitCode {
    match run_task(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Setup => setup::ensure_all(),
        Task::Build => build::all(),
        Task::Run => {
            build::all()?;
            demo::run()
        }
        Task::Vm {
            adds,
            timeout,
            command,
        } => {
            build::all()?;
            let mut request = vm::VmRequest::new(command.join(" "));
            request.adds = adds;
            request.timeout = Duration::from_secs(timeout);
            request.echo = true;
            let outcome = vm::run(&request)?;
            if outcome.timed_out || !outcome.kernel_problems.is_empty() || outcome.exit_code.is_none() {
                outcome.check()?;
            }
            std::process::exit(outcome.exit_code.unwrap_or(1));
        }
        Task::Kdir => {
            setup::ensure_all()?;
            println!("{}", paths::kdir().display());
            Ok(())
        }
        Task::Bench { which } => {
            build::all()?;
            bench::run(which)
        }
        Task::Man => {
            setup::ensure_all()?;
            build::loopswap()?;
            let out = paths::target().join("share");
            run(Command::new(paths::loopswap_binary())
                .arg("generate")
                .arg("--out")
                .arg(&out))
        }
        Task::Soak { swaps, devices, seed } => {
            build::all()?;
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |since| since.as_secs())
            });
            eprintln!("soak: {swaps} swaps on {devices} devices, seed {seed}");
            let summary = xtask::soak::run(&xtask::soak::SoakOptions { swaps, devices, seed })?;
            print!("{}", summary.table);
            let path = xtask::soak::json_path();
            std::fs::create_dir_all(path.parent().expect("a file in a folder"))?;
            std::fs::write(&path, serde_json::to_string_pretty(&summary.json)?)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("written to {}", path.display());
            Ok(())
        }
        Task::Test => {
            build::all()?;
            let cargo = || {
                let mut command = Command::new(env!("CARGO"));
                command
                    .current_dir(paths::workspace())
                    .env("PATH", setup::path_with_tools());
                command
            };
            run(cargo().args([
                "test",
                "--workspace",
                "--exclude",
                "tests",
                "--exclude",
                "loopswap-ebpf",
            ]))
            .context("host tests")?;
            // One VM at a time: each already uses both cores.
            run(cargo().args(["test", "--package", "tests", "--", "--test-threads=1"])).context("VM tests")
        }
    }
}

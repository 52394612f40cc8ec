//! The machinery behind `cargo xtask`: installing what is missing, building
//! the guest's pieces, and running commands in a qemu VM on Debian's kernel.
//! The `tests` crate uses the same VM runner.

pub mod build;
pub mod initramfs;
pub mod paths;
pub mod setup;
pub mod soak;
pub mod vm;

use std::process::Command;

use anyhow::{Context as _, bail};

/// Runs `command`, failing with its name and status if it fails.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

/// Runs `command` and returns its stdout.
pub fn output(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

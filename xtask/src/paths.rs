//! Where everything lives. All caches are under `target/`.

use std::path::PathBuf;

/// Debian's 6.12 kernel: a real distribution kernel with kprobes, BTF and
/// modules, for the same userland as these machines.
pub const KERNEL_RELEASE: &str = "6.12.117+deb12-amd64";
pub const KERNEL_PACKAGES: [&str; 4] = [
    "linux-image-6.12.117+deb12-amd64-unsigned",
    "linux-headers-6.12.117+deb12-amd64",
    "linux-headers-6.12.117+deb12-common",
    "linux-kbuild-6.12.117+deb12",
];

/// The guest binaries' target: static, so the initramfs needs no libc.
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-musl";

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

pub fn target() -> PathBuf {
    workspace().join("target")
}

/// bpf-linker and other host tools built by `setup`.
pub fn tools_bin() -> PathBuf {
    target().join("tools").join("bin")
}

/// Debian's kernel packages, unpacked.
pub fn guest_root() -> PathBuf {
    target().join("guest").join("root")
}

pub fn vmlinuz() -> PathBuf {
    guest_root()
        .join("boot")
        .join(format!("vmlinuz-{KERNEL_RELEASE}"))
}

/// The Kbuild directory for out-of-tree modules (`make -C KDIR M=... modules`).
pub fn kdir() -> PathBuf {
    guest_root()
        .join("usr/src")
        .join(format!("linux-headers-{KERNEL_RELEASE}"))
}

/// The guest kernel's own modules (ext4 and friends).
pub fn guest_modules() -> PathBuf {
    guest_root().join("lib/modules").join(KERNEL_RELEASE)
}

/// The initramfs part that changes only with the host's packages.
pub fn base_initramfs() -> PathBuf {
    target().join("guest").join("base.cpio")
}

/// Where the project's kernel modules are built (a copy of `kernel/`, so the
/// source folder stays free of build products).
pub fn module_build() -> PathBuf {
    target().join("kernel")
}

pub fn loopswap_binary() -> PathBuf {
    target().join(GUEST_TARGET).join("release").join("loopswap")
}

/// The guest's pseudo-terminal driver for the live view's test (tests/pty-run).
pub fn pty_run_binary() -> PathBuf {
    target().join(GUEST_TARGET).join("release").join("pty-run")
}

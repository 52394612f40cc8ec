use std::path::PathBuf;

/// What can go wrong while watching a module. Each message is one line that
/// names the thing and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loopswap must run as root: it loads eBPF programs and creates kprobes (try: sudo loopswap ...)")]
    NotRoot,
    #[error(
        "running as root of a user namespace (uid_map {0:?}), which cannot read kernel \
         addresses, create kprobes or load kprobe programs: run it as root of the host (outside \
         the container or unshare)"
    )]
    UserNamespace(String),
    #[error("module {module} is not loaded (see /proc/modules; load it with insmod or modprobe first)")]
    ModuleNotLoaded { module: String },
    #[error("{module} is built into the kernel, not a loadable module: there is no module text to watch")]
    BuiltIn { module: String },
    #[error("module {module} is {state}, not live: wait until it has finished loading or unloading")]
    ModuleNotLive { module: String, state: String },
    #[error("module {module} has no {what} functions in /proc/kallsyms{hint}")]
    NoFunctions {
        module: String,
        what: &'static str,
        hint: &'static str,
    },
    #[error("/proc/kallsyms shows zeroed addresses: run as root with kernel.kptr_restrict < 2")]
    HiddenAddresses,
    #[error(
        "module {module} has {count} functions, more than the {max} one watch can probe; use --exported-only"
    )]
    TooManyFunctions { module: String, count: usize, max: u32 },
    #[error("module {module} was unloaded while being watched; its probes are detached")]
    UnloadedUnderWatch { module: String },
    #[error(
        "watching {module} takes {needed} file descriptors (2 per function) but the limit is {limit}: \
         raise it (ulimit -n, or LimitNOFILE=) or use --exported-only"
    )]
    TooFewFileDescriptors { module: String, needed: u64, limit: u64 },
    #[error("tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)")]
    NoTracefs,
    #[error(
        "tracefs is mounted at {} but not accessible here ({cause}): loopswap needs root in the \
         initial user namespace (a container or user namespace cannot create kprobes)",
        path.display()
    )]
    TracefsInaccessible { path: PathBuf, cause: std::io::Error },
    #[error("cannot probe {module}:{function}: {cause}")]
    Probe {
        module: String,
        function: String,
        cause: std::io::Error,
    },
    #[error("--max-active {0} is out of range: a kretprobe takes 1 to 4096")]
    MaxActive(u32),
    #[error(
        "the swap core is not loaded: {} is missing (insmod lsw_core.ko)",
        crate::control::CONTROL_PATH
    )]
    NoCore,
    /// `errno`: the error the core's write returned, if it refused so.
    #[error("the swap core refused `{command}`: {reason}")]
    Core {
        command: String,
        reason: String,
        errno: Option<i32>,
    },
    #[error("{}: {why}", path.display())]
    BadModuleFile { path: PathBuf, why: String },
    #[error("{}: the kernel did not load it: {cause} (its init failed or the kernel refused it; dmesg says why)", path.display())]
    ModuleLoad { path: PathBuf, cause: std::io::Error },
    #[error("{0}")]
    Usage(String),
    /// `check` or `swap --dry-run`: not every swap would be attempted.
    #[error("{0}")]
    WouldNotSwap(String),
    /// The host lacks a facility loopswap needs.
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    SwapFailed(String),
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("reading /proc: {0}")]
    Proc(#[from] procfs::ProcError),
    #[error("eBPF: {0}")]
    Ebpf(#[from] aya::EbpfError),
    #[error("eBPF program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("eBPF map: {0}")]
    Map(#[from] aya::maps::MapError),
}

impl Error {
    /// Exit status for this error: 2 when the user asked for something that
    /// cannot be (wrong module, not root), 1 when the system failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NotRoot
            | Error::UserNamespace(_)
            | Error::ModuleNotLoaded { .. }
            | Error::BuiltIn { .. }
            | Error::ModuleNotLive { .. }
            | Error::NoFunctions { .. }
            | Error::HiddenAddresses
            | Error::TooManyFunctions { .. }
            | Error::TooFewFileDescriptors { .. }
            | Error::MaxActive(_)
            | Error::NoCore
            | Error::BadModuleFile { .. }
            | Error::Usage(_) => 2,
            _ => 1,
        }
    }
}

//! `loopswap swap`: K42's hot swap, per instance, with the eBPF counters
//! deciding when the old implementation is quiescent.
//!
//! For each instance: close its gate (new calls wait, they do not fail) →
//! let the old implementation quiesce its own asynchronous work → wait,
//! woken by the probes each time a thread leaves, until no frame of the old
//! module serves the instance (and no frame serves an unknown instance) →
//! confirm on the kernel stacks that every thread still inside the old
//! module is one the probes attribute to another instance → transfer the
//! state → switch and open the gate. Any failure aborts: the gate reopens
//! on the old implementation, its state untouched.

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use nix::errno::Errno;
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use crate::{
    Error,
    control::{self, Control, CoreState, Instance},
    counters::{ModuleWatch, StackCheck, WatchOptions},
    kallsyms::Scope,
    kmod, module,
    realtime::RealtimeSection,
    snapshot::FunctionCount,
    stacks::{self, TaskId},
    time_in_flight::Estimate,
};

/// What to swap to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A `.ko` file, loaded if its module is not loaded yet.
    ModuleFile(PathBuf),
    /// An implementation already registered with the core.
    Implementation(String),
}

impl SwapOptions {
    fn to_display(&self) -> String {
        match &self.to {
            Target::ModuleFile(path) => path.display().to_string(),
            Target::Implementation(name) => name.clone(),
        }
    }
}

impl Target {
    pub fn parse(text: &str) -> Self {
        if text.ends_with(".ko") || text.contains('/') {
            Target::ModuleFile(PathBuf::from(text))
        } else {
            Target::Implementation(text.to_owned())
        }
    }
}

#[derive(Clone, Debug)]
pub struct SwapOptions {
    pub instances: Vec<String>,
    pub all: bool,
    pub to: Target,
    /// Per instance, from closing its gate to giving up.
    pub timeout: Duration,
    pub keep_old: bool,
    /// Close the gate at once, even when quiescence is estimated to take
    /// longer than `timeout`, and without the wait of `wait_out`.
    pub force_wait: bool,
    /// Before the gate closes, wait (gate open, up to `timeout`) while a
    /// thread counted against the instance is overdue (inside longer than
    /// every call of its function seen returning) and inside longer than
    /// this, or was found inside at attach (see `wait_out_reason`).
    pub wait_out: Duration,
    /// For tests: stop (sleep) after this phase of the first instance,
    /// `PHASE` for good or `PHASE:DURATION` for that long.
    pub pause_after: Option<String>,
    /// For benchmarks: hold the gate at the thread's own priority instead
    /// of real-time (see [`RealtimeSection`]).
    pub ordinary_priority: bool,
    /// The longest pause before the gate closes ([`PRE_GATE_PAUSE`]; 0 for
    /// benchmarks' control).
    pub pre_gate_pause: Duration,
}

/// The longest pause before a gate closes. The steps before it (the
/// attach, the estimate, the stack scan, the rehearsed look) take CPU the
/// workload would have had, and on a loaded machine its threads are still
/// catching up when they end: closing the gate at once holds calls while
/// they do, and the drain waits for the calls they delayed. A pause as long
/// as those steps took, up to this, lets them run first. Measured in one VM
/// run under the bench's fio (40 swaps each, alternated): blackout median
/// / p90 2.0 / 5.8 ms against 3.8 / 9.1 ms without.
pub const PRE_GATE_PAUSE: Duration = Duration::from_millis(25);

#[derive(Clone, Debug, Serialize)]
pub struct PhaseTime {
    pub phase: &'static str,
    pub micros: u64,
}

/// A thread that kept an instance from quiescing.
#[derive(Clone, Debug, Serialize)]
pub struct Holder {
    pub tid: i32,
    pub comm: String,
    pub stack: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct InstanceReport {
    pub id: u32,
    pub name: String,
    pub from: String,
    pub to: String,
    /// The gate closed (`begin` was accepted); if not, nothing changed.
    pub gated: bool,
    pub committed: bool,
    pub phases: Vec<PhaseTime>,
    /// Gate closed → gate open, measured by the core.
    pub blackout_us: Option<u64>,
    /// When the gate closed (the core accepted `begin`), in µs since the
    /// Unix epoch: to line the blackout up with other logs (fio's, the
    /// kernel's).
    pub gate_closed_unix_us: Option<u64>,
    /// Calls that waited at the gate during the swap.
    pub held_calls: Option<u64>,
    /// Calls inside (or bouncing off the gate) just after it closed: what
    /// the drain waited for.
    pub inflight_at_gate: Option<u64>,
    /// The controller held the gate at real-time priority (see
    /// [`RealtimeSection`]); false if the gate never closed, or the
    /// kernel refused it (the progress line says why).
    pub realtime_gate: bool,
    pub error: Option<String>,
    /// Before the gate closed: when the instance would likely be quiescent.
    pub quiescent_in: Option<Estimate>,
    /// The last check of the counters against the kernel stacks.
    pub stack_check: Option<StackCheck>,
    /// On failure: functions with threads in flight, and those threads.
    pub busy_functions: Vec<FunctionCount>,
    pub holders: Vec<Holder>,
    /// The thread the swap first waited for with the gate open
    /// (`--wait-out`), if it waited.
    pub waited_out: Option<String>,
    /// Attempts at this instance: more than one after probe misses.
    pub attempts: u32,
    /// Runs of the counting program the kernel skipped in earlier
    /// attempts, made harmless without a new attach (a grace period and a
    /// stack scan) rather than by fresh counters.
    pub skipped_runs_absorbed: u64,
    /// Aborted because probe events were missed (retried).
    #[serde(skip)]
    pub unprovable: bool,
}

/// Attempts per instance when probe misses make quiescence unprovable.
const MISS_ATTEMPTS: u32 = 4;

#[derive(Clone, Debug, Serialize)]
pub struct SwapReport {
    pub to: String,
    /// The module this swap loaded, if it did.
    pub loaded: Option<String>,
    /// Modules unloaded after the swap because nothing used them any more.
    pub unloaded: Vec<String>,
    pub instances: Vec<InstanceReport>,
    /// SIGINT or SIGTERM ended the swap early.
    pub interrupted: bool,
    /// When the swap started, in µs since the Unix epoch: with `micros`,
    /// the span of the whole swap (attach included, and detach unless
    /// `--keep-old` left it for after the report) against other logs.
    pub started_unix_us: u64,
    pub micros: u64,
}

impl SwapReport {
    pub fn succeeded(&self) -> bool {
        !self.interrupted && self.instances.iter().all(|instance| instance.committed)
    }

    pub fn to_table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for instance in &self.instances {
            let _ = writeln!(
                out,
                "{} (instance {}): {} -> {}: {}",
                instance.name,
                instance.id,
                instance.from,
                instance.to,
                match (instance.committed, instance.gated) {
                    (true, _) => "committed",
                    (false, true) => "ABORTED, old implementation resumed",
                    (false, false) => "REFUSED before the gate closed, nothing changed",
                }
            );
            let phases: Vec<String> = instance
                .phases
                .iter()
                .map(|phase| format!("{} {:.3} ms", phase.phase, phase.micros as f64 / 1000.0))
                .collect();
            let _ = writeln!(out, "  phases: {}", phases.join(" | "));
            if let Some(estimate) = &instance.quiescent_in {
                let _ = writeln!(
                    out,
                    "  quiescence estimated before the gate: {}",
                    estimate.describe()
                );
            }
            if let Some(blackout) = instance.blackout_us {
                let _ = writeln!(
                    out,
                    "  blackout (gate closed -> open): {blackout} us, {} calls held at the gate{}",
                    instance.held_calls.unwrap_or(0),
                    if instance.realtime_gate {
                        ""
                    } else {
                        " (held at ordinary priority)"
                    }
                );
            }
            if instance.attempts > 1 {
                let _ = writeln!(
                    out,
                    "  attempts: {} (after probe misses; {} skipped runs absorbed without a new attach)",
                    instance.attempts, instance.skipped_runs_absorbed
                );
            }
            if let Some(error) = &instance.error {
                let _ = writeln!(out, "  error: {error}");
            }
            for function in &instance.busy_functions {
                let _ = writeln!(out, "  in flight: {} x{}", function.name, function.inflight);
            }
            for holder in &instance.holders {
                let _ = writeln!(out, "  thread {} ({}):", holder.tid, holder.comm);
                for frame in &holder.stack {
                    let _ = writeln!(out, "      {frame}");
                }
            }
        }
        if let Some(loaded) = &self.loaded {
            let _ = writeln!(out, "loaded {loaded}");
        }
        for module in &self.unloaded {
            let _ = writeln!(out, "unloaded {module}");
        }
        let _ = writeln!(out, "total {:.3} ms", self.micros as f64 / 1000.0);
        out
    }
}

/// Reports phases as they happen (lines of a gated phase once the gate is open).
pub type Progress<'a> = &'a mut dyn FnMut(&str);

/// Now, in µs since the Unix epoch.
fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}

fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

/// Usage errors that need no look at the system: found before anything.
pub fn check_usage(options: &SwapOptions) -> Result<(), Error> {
    if options.all && !options.instances.is_empty() {
        return Err(Error::Usage("name instances or give --all, not both".into()));
    }
    if !options.all && options.instances.is_empty() {
        return Err(Error::Usage(
            "name at least one instance (e.g. lswloop0), or give --all".into(),
        ));
    }
    if options.timeout.is_zero() || options.timeout > MAX_TIMEOUT {
        return Err(Error::Usage(format!(
            "--timeout {:?} is out of range: 1ms to {}s (callers wait at the gate meanwhile)",
            options.timeout,
            MAX_TIMEOUT.as_secs()
        )));
    }
    Ok(())
}

/// Resolves the instances to swap; refuses before anything changes. With
/// `class` unknown (NEW not loaded yet), only names are checked.
fn resolve_instances(
    state: &CoreState,
    options: &SwapOptions,
    to: &str,
    class: Option<&str>,
) -> Result<Vec<Instance>, Error> {
    check_usage(options)?;
    let mut chosen: Vec<Instance> = Vec::new();
    if options.all {
        chosen.extend(
            state
                .instances
                .iter()
                .filter(|instance| {
                    instance.implementation != to && class.is_none_or(|class| instance.class == class)
                })
                .cloned(),
        );
        if chosen.is_empty() {
            return Err(Error::Usage(format!("--all: no instance runs anything but {to}")));
        }
    } else {
        for name in &options.instances {
            let instance = state.instance(name).ok_or_else(|| {
                Error::Usage(format!("no instance named {name} (loopswap status lists them)"))
            })?;
            if instance.implementation == to {
                return Err(Error::Usage(format!("{name} already runs {to}")));
            }
            if let Some(class) = class
                && instance.class != class
            {
                return Err(Error::Usage(format!(
                    "{name} is a {} instance, {to} implements {class}",
                    instance.class
                )));
            }
            if !chosen.iter().any(|c| c.id == instance.id) {
                chosen.push(instance.clone());
            }
        }
    }
    for instance in &chosen {
        if let Some(swap) = &instance.swap {
            return Err(Error::Usage(format!(
                "{} is being swapped by another controller ({swap}); wait for it or `loopswap abort {}`",
                instance.name, instance.name
            )));
        }
    }
    Ok(chosen)
}

/// Longest `--timeout`: the core bounds a swap's deadline at 60 s (callers
/// wait at the gate in D state), and adds [`KERNEL_DEADLINE_MARGIN`].
pub const MAX_TIMEOUT: Duration = Duration::from_secs(59);

/// The core's own deadline for a swap is the controller's timeout plus this:
/// the controller aborts first with a full report; the core aborts if the
/// controller stopped (SIGSTOP, a debugger) or hung.
pub const KERNEL_DEADLINE_MARGIN: Duration = Duration::from_secs(1);

static CANCELLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_cancel_signal(_: libc::c_int) {
    CANCELLED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM end a swap cleanly: the instance in progress is
/// aborted, nothing further starts, a NEW this swap loaded is unloaded and
/// the probes detach. No SA_RESTART: a blocked `drain` returns at once.
pub fn install_signal_handlers() -> Result<(), Error> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_cancel_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(signal, &action) }.map_err(|errno| Error::Io {
            path: "sigaction".into(),
            cause: std::io::Error::from_raw_os_error(errno as i32),
        })?;
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived (see [`install_signal_handlers`]).
pub fn cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

/// Keeps the controller's memory resident: a page fault while a gate is
/// closed must not need I/O that could wait at that gate. Once per process
/// (`MCL_FUTURE` keeps every later mapping locked; each call would walk
/// and populate the whole address space again).
fn lock_memory() -> Result<(), Error> {
    use nix::sys::mman::{MlockAllFlags, mlockall};
    static LOCKED: AtomicBool = AtomicBool::new(false);
    if LOCKED.load(Ordering::SeqCst) {
        return Ok(());
    }
    mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE).map_err(|errno| Error::Io {
        path: "mlockall".into(),
        cause: std::io::Error::from_raw_os_error(errno as i32),
    })?;
    LOCKED.store(true, Ordering::SeqCst);
    Ok(())
}

/// The whole swap. Refusals before any change are errors; a swap that had
/// to be aborted is a report with `committed: false`.
pub async fn run(options: &SwapOptions, progress: Progress<'_>) -> Result<(SwapReport, Attached), Error> {
    let started = Instant::now();
    let started_unix_us = unix_us();
    check_usage(options)?;
    module::check_root()?;
    let module_file = match &options.to {
        Target::ModuleFile(path) => Some(kmod::ModuleFile::open(path)?),
        Target::Implementation(_) => None,
    };
    let to = match (&options.to, &module_file) {
        (_, Some(file)) => file.name.clone(),
        (Target::Implementation(name), None) => name.clone(),
        (Target::ModuleFile(_), None) => unreachable!("opened above"),
    };
    let mut control = Control::open()?;
    let state = control.list()?;
    let registered_class = state
        .implementation(&to)
        .map(|implementation| implementation.class.clone());
    if registered_class.is_none() && module_file.is_none() {
        return Err(Error::Usage(format!(
            "no implementation named {to} is registered (loopswap status lists them; or pass its .ko)"
        )));
    }
    // Every input error before anything is loaded or attached.
    resolve_instances(&state, options, &to, registered_class.as_deref())?;

    let mut loaded = None;
    if let (None, Some(file)) = (&registered_class, &module_file) {
        if kmod::is_loaded(&to)? {
            return Err(Error::Usage(format!(
                "module {to} is loaded but registered no lsw implementation named {to}"
            )));
        }
        let at = Instant::now();
        file.load()?;
        progress(&format!(
            "load {} ({:.3} ms)",
            options.to_display(),
            micros(at) as f64 / 1000.0
        ));
        loaded = Some(to.clone());
    }
    let state = control.list()?;
    let unload_loaded = |why: &str, progress: Progress<'_>| {
        if let Some(module) = &loaded {
            match kmod::unload(module) {
                Ok(()) => progress(&format!("unload {module} ({why})")),
                Err(err) => progress(&format!("could not unload {module}: {err}")),
            }
        }
    };
    let targets = match state.implementation(&to) {
        None => {
            unload_loaded("it registered no implementation under its name", progress);
            return Err(Error::BadModuleFile {
                path: options.to_display().into(),
                why: format!("loaded as module {to} but registered no lsw implementation named {to}"),
            });
        }
        Some(implementation) => match resolve_instances(&state, options, &to, Some(&implementation.class)) {
            Ok(targets) => targets,
            Err(err) => {
                unload_loaded("the swap was refused", progress);
                return Err(err);
            }
        },
    };

    let mut reports = Vec::new();
    // One watch per old module, attached before its first instance's gate
    // closes and kept for the rest: the counters are per instance, so the
    // next instance of the same module needs no new probes.
    let mut watches: HashMap<String, Counters> = HashMap::new();
    let swapped: Result<(), Error> = async {
        for instance in &targets {
            if cancelled() {
                break;
            }
            let from_module = state
                .implementation(&instance.implementation)
                .map(|implementation| implementation.module.clone())
                .unwrap_or_else(|| instance.implementation.clone());
            let counters = watches.entry(from_module.clone()).or_default();
            let mut instance_move = Move {
                instance,
                from_module: &from_module,
                to: &to,
                waited_out_for: Duration::ZERO,
            };
            // A probe miss makes quiescence unprovable, not false: the swap was
            // aborted safely. Runs the kernel skipped are absorbed (a grace
            // period and a stack scan, as at attach) and the same probes go
            // on; any other miss needs a fresh attach, with clean counters.
            let mut attempts = 0;
            let mut absorbed = 0;
            let mut report = loop {
                attempts += 1;
                let mut report =
                    swap_one(&mut control, &mut instance_move, options, counters, progress).await?;
                report.attempts = attempts;
                report.skipped_runs_absorbed = absorbed;
                if report.committed || !report.unprovable || cancelled() || attempts == MISS_ATTEMPTS {
                    break report;
                }
                if let Some(skipped) = counters.absorb_skipped_runs() {
                    absorbed += skipped;
                    progress(&format!(
                        "{}: retrying with the same probes (the runs the kernel skipped were absorbed: \
                         a grace period, then every task's stack scanned)",
                        instance.name
                    ));
                } else {
                    progress(&format!("{}: retrying with fresh counters", instance.name));
                    *counters = Counters::default();
                }
            };
            if report.unprovable {
                *counters = Counters::default();
                if !report.committed
                    && !cancelled()
                    && let Some(error) = &mut report.error
                {
                    error.push_str(&unprovable_every_time(attempts));
                }
            }
            let committed = report.committed;
            reports.push(report);
            if !committed {
                break;
            }
        }
        Ok(())
    }
    .await;
    // Detach before unloading (a probed module cannot be unloaded); with
    // --keep-old nothing waits for the probes to go, and they go after
    // the report.
    let attached = if options.keep_old && swapped.is_ok() {
        Attached { _watches: watches }
    } else {
        drop(watches);
        Attached::default()
    };
    if let Err(err) = swapped {
        // Whatever it loaded goes too (the kernel refuses while an instance
        // already committed to it uses it).
        unload_loaded("the swap failed", progress);
        return Err(err);
    }

    let mut unloaded = Vec::new();
    let after = control.list()?;
    let in_use = |module: &str| {
        after.instances.iter().any(|instance| {
            after
                .implementation(&instance.implementation)
                .is_some_and(|implementation| implementation.module == module)
        })
    };
    let succeeded = !cancelled() && reports.iter().all(|report| report.committed);
    if let Some(module) = &loaded
        && !succeeded
        && !in_use(module)
        && kmod::unload(module).is_ok()
    {
        progress(&format!(
            "unload {module} (the swap that loaded it did not complete)"
        ));
        unloaded.push(module.clone());
    }
    if succeeded && !options.keep_old {
        let old: BTreeSet<String> = targets
            .iter()
            .filter_map(|instance| {
                state
                    .implementation(&instance.implementation)
                    .map(|i| i.module.clone())
            })
            .collect();
        for module in old {
            if !in_use(&module) {
                let at = Instant::now();
                match kmod::unload(&module) {
                    Ok(()) => {
                        progress(&format!("unload {module} ({:.3} ms)", micros(at) as f64 / 1000.0));
                        unloaded.push(module);
                    }
                    Err(err) => progress(&format!("could not unload {module}: {err}")),
                }
            }
        }
    }
    Ok((
        SwapReport {
            to,
            loaded,
            unloaded,
            instances: reports,
            interrupted: cancelled(),
            started_unix_us,
            micros: micros(started),
        },
        attached,
    ))
}

/// The probes a swap leaves attached after its report: with `--keep-old`
/// no unload waits for them, and their release (per kprobe.multi link an
/// ftrace update and an RCU-tasks grace period; about 0.3 s for the two
/// under emulation) does not delay the report. Released when dropped.
#[derive(Default)]
pub struct Attached {
    _watches: HashMap<String, Counters>,
}

/// The counters on one old module, with the ring buffer that wakes a
/// waiter when a thread leaves it. Empty until the first instance of that
/// module needs them.
#[derive(Default)]
struct Counters {
    attached: Option<(ModuleWatch, Option<LeftEvents>)>,
}

/// The ring buffer of "a thread left" events, pollable.
type LeftEvents = AsyncFd<RingBuf<MapData>>;

impl Counters {
    /// Absorbs the runs the kernel skipped since the last attempt
    /// (`ModuleWatch::absorb_skipped_runs`), and says how many; `None` when
    /// only fresh counters will do.
    fn absorb_skipped_runs(&mut self) -> Option<u64> {
        let (watch, _) = self.attached.as_mut()?;
        watch.absorb_skipped_runs().ok().flatten()
    }

    /// Attaches on first use. A refusal (a function no probe can see) is
    /// `Ok(Err(why))`: it refuses every instance of the module alike.
    fn get_or_attach(
        &mut self,
        module: &str,
    ) -> Result<Result<&mut (ModuleWatch, Option<LeftEvents>), String>, Error> {
        if self.attached.is_none() {
            let options_watch = WatchOptions {
                scope: Scope::AllText,
                attribute_instances: true,
                ..WatchOptions::default()
            };
            let mut watch = ModuleWatch::attach(module, &options_watch)?;
            let blind = watch.blind_functions();
            if !blind.is_empty() {
                return Ok(Err(format!(
                    "refused before the gate closed: {module} has functions no probe can see ({}), \
                     so quiescence cannot be proven",
                    blind.join(", ")
                )));
            }
            // With the attach, not just before the gate closes.
            watch.prepare_stack_check();
            let left = match watch.take_left_events()? {
                // SAFETY: the ring buffer owns its map fd, open and unchanged
                // for as long as it lives inside the AsyncFd.
                Some(ring) => Some(
                    unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }.map_err(
                        |err| Error::Io {
                            path: "ring buffer".into(),
                            cause: err.into(),
                        },
                    )?,
                ),
                None => None,
            };
            self.attached = Some((watch, left));
        }
        Ok(Ok(self.attached.as_mut().expect("attached above")))
    }
}

/// Why waiting for quiescence ended without it.
enum NotQuiescent {
    TimedOut,
    Missed(u64),
    Cancelled,
    Failed(Error),
}

/// Phase times of one instance; while its gate is closed the lines are
/// kept, not printed: the controller never writes to a terminal or file
/// (which could live on the gated device) while callers wait.
struct Phases<'a> {
    instance: String,
    pause_after: Option<String>,
    held_back: Vec<String>,
    gated: bool,
    progress: Progress<'a>,
}

impl Phases<'_> {
    fn record(&mut self, report: &mut InstanceReport, name: &'static str, at: Instant) {
        let micros = micros(at);
        let line = format!("{}: {name} ({:.3} ms)", self.instance, micros as f64 / 1000.0);
        report.phases.push(PhaseTime { phase: name, micros });
        self.say(line);
        let Some(pause) = self.pause_after.as_deref() else {
            return;
        };
        let (phase, duration) = match pause.split_once(':') {
            Some((phase, duration)) => (phase, humantime::parse_duration(duration).ok()),
            None => (pause, None),
        };
        if phase == name {
            eprintln!("pausing after {name} (--test-pause-after)");
            match duration {
                Some(duration) => std::thread::sleep(duration),
                None => loop {
                    std::thread::sleep(Duration::from_secs(3600));
                },
            }
        }
    }

    fn say(&mut self, line: String) {
        if self.gated {
            self.held_back.push(line);
        } else {
            (self.progress)(&line);
        }
    }

    fn gate_open(&mut self) {
        self.gated = false;
        for line in std::mem::take(&mut self.held_back) {
            (self.progress)(&line);
        }
    }
}

/// One instance's move from its module to `to`, and what the attempts at
/// it share.
struct Move<'a> {
    instance: &'a Instance,
    from_module: &'a str,
    to: &'a str,
    /// How long the attempts so far waited with the gate open: an attempt
    /// retried after probe misses waits only for what is left of
    /// `--timeout`, which so bounds the instance's whole wait with the gate
    /// open, not each attempt's.
    waited_out_for: Duration,
}

async fn swap_one(
    control: &mut Control,
    instance_move: &mut Move<'_>,
    options: &SwapOptions,
    counters: &mut Counters,
    progress: Progress<'_>,
) -> Result<InstanceReport, Error> {
    let Move {
        instance,
        from_module,
        to,
        ..
    } = *instance_move;
    let id = instance.id;
    let mut report = InstanceReport {
        id,
        name: instance.name.clone(),
        from: instance.implementation.clone(),
        to: to.to_owned(),
        gated: false,
        committed: false,
        phases: Vec::new(),
        blackout_us: None,
        held_calls: None,
        inflight_at_gate: None,
        realtime_gate: false,
        error: None,
        quiescent_in: None,
        gate_closed_unix_us: None,
        stack_check: None,
        busy_functions: Vec::new(),
        holders: Vec::new(),
        waited_out: None,
        attempts: 1,
        skipped_runs_absorbed: 0,
        unprovable: false,
    };
    let mut phases = Phases {
        instance: instance.name.clone(),
        pause_after: options.pause_after.clone(),
        held_back: Vec::new(),
        gated: false,
        progress,
    };

    // Counters first, so the stacks seed them before the gate closes.
    let at = Instant::now();
    let started = at;
    let first_use = counters.attached.is_none();
    let (watch, left) = match counters.get_or_attach(from_module)? {
        Ok(attached) => attached,
        Err(refusal) => {
            report.error = Some(refusal);
            return Ok(report);
        }
    };
    control.move_above_other_descriptors()?;
    // Locked only now, after the first attach and before any gate closes:
    // locked from the start, every mapping the attach makes (each thread's
    // stack, each buffer) was faulted in whole as it was made, tens of
    // milliseconds under emulation.
    lock_memory()?;
    if first_use {
        phases.record(&mut report, "attach", at);
    }
    if cancelled() {
        report.error = Some(INTERRUPTED_BEFORE_GATE.into());
        return Ok(report);
    }
    // How long the threads inside now will likely stay, from how long
    // calls of their functions have stayed: a wait that would time out
    // anyway is refused before any caller waits at the gate.
    let estimate = watch.estimate(Some(id))?;
    if !take_estimate(&mut phases, &mut report, &estimate, options, "estimated") {
        return Ok(report);
    }
    // A call inside far longer than usual, or one inside since before
    // attach, would set the blackout: wait for it to leave while callers
    // still pass, then estimate again.
    let waited_for = if options.force_wait {
        None
    } else {
        wait_out_reason(&estimate, options)
    };
    if let Some(who) = waited_for {
        let at = Instant::now();
        let left = options.timeout.saturating_sub(instance_move.waited_out_for);
        // Whole milliseconds: what a retry has left is no round figure.
        let left_ms = Duration::new(left.as_secs(), left.subsec_millis() * 1_000_000);
        phases.say(format!(
            "{}: waiting with the gate open (up to {}) for {who}",
            instance.name,
            humantime::format_duration(left_ms),
        ));
        report.waited_out = Some(who);
        let waited = wait_out(watch, id, options, at + left).await;
        instance_move.waited_out_for += at.elapsed();
        match waited? {
            WaitOut::Clear(estimate) => {
                phases.record(&mut report, "wait out", at);
                if !take_estimate(&mut phases, &mut report, &estimate, options, "estimated again") {
                    return Ok(report);
                }
            }
            WaitOut::StillInside(who) => {
                report.error = Some(format!(
                    "refused before the gate closed: {who} was still inside after waiting {} with the \
                     gate open; run the swap again later, or pass --force-wait to close the gate at \
                     once and wait for it with callers held",
                    humantime::format_duration(options.timeout)
                ));
                return Ok(report);
            }
            WaitOut::Missed(missed) => {
                refuse_for_misses(&mut report, missed, watch);
                return Ok(report);
            }
            WaitOut::Cancelled => {
                report.error = Some(INTERRUPTED_BEFORE_GATE.into());
                return Ok(report);
            }
        }
    }

    // Threads whose stacks could not be read at attach (they were on a
    // CPU) are read again now, not while the gate is closed.
    watch.settle(PRE_GATE_SETTLE);
    if cancelled() {
        report.error = Some(INTERRUPTED_BEFORE_GATE.into());
        return Ok(report);
    }
    // The full stack scan, before the gate closes: the check inside the
    // blackout then reads only the tasks that ran since.
    if let Err(err) = watch.begin_stack_check() {
        report.error = Some(format!("refused before the gate closed: {err}"));
        return Ok(report);
    }
    // Each part of the look the wait inside the gate takes, taken once now
    // with its answer dropped (threads are still welcome inside): code a
    // process runs for the first time costs more than it will the second
    // time, 0.65–1.5 ms more for this look under emulation, where each new
    // process's code is translated anew; paid here, it is not paid with
    // callers held. It changes only what the estimate and the settle
    // already change before the gate (seeded threads seen gone, stacks
    // read since), and the wait inside the gate decides on looks of its
    // own. A miss since attach makes quiescence unprovable whatever
    // happens next, and a failure would recur inside: found now, they
    // refuse the swap before its gate closes (a miss is retried, its
    // skipped runs absorbed or with fresh counters, at no blackout).
    match look(watch, id, Parts::Every) {
        // A look neither waits nor is interrupted.
        Ok(_) | Err(NotQuiescent::TimedOut | NotQuiescent::Cancelled) => {}
        Err(NotQuiescent::Missed(missed)) => {
            refuse_for_misses(&mut report, missed, watch);
            let _ = watch.end_stack_check();
            return Ok(report);
        }
        Err(NotQuiescent::Failed(err)) => {
            report.error = Some(format!("refused before the gate closed: {err}"));
            let _ = watch.end_stack_check();
            return Ok(report);
        }
    }

    // The workload catches up on what the steps since this instance's
    // start took from it (see PRE_GATE_PAUSE).
    let pause = options.pre_gate_pause.min(started.elapsed());
    if !pause.is_zero() {
        let at = Instant::now();
        tokio::time::sleep(pause).await;
        phases.record(&mut report, "pause", at);
    }
    if cancelled() {
        report.error = Some(INTERRUPTED_BEFORE_GATE.into());
        let _ = watch.end_stack_check();
        return Ok(report);
    }
    // From here on, any failure aborts (and so does our exit: the core
    // aborts a swap whose handle closes, or whose deadline passes). Until
    // the gate opens again, the workload it holds up must not preempt us.
    let entered = if options.ordinary_priority {
        Ok(RealtimeSection::ordinary())
    } else {
        RealtimeSection::enter()
    };
    let mut realtime = match entered {
        Ok(section) => Some(section),
        Err(err) => {
            (phases.progress)(&format!(
                "{}: the gate is held at ordinary priority (real-time refused: {err})",
                instance.name
            ));
            None
        }
    };
    let at = Instant::now();
    let kernel_deadline = options.timeout + KERNEL_DEADLINE_MARGIN;
    match control.command(&format!(
        "begin {id} {} {to} {}",
        instance.implementation,
        kernel_deadline.as_millis()
    )) {
        Ok(reply) => {
            report.inflight_at_gate = control::reply_value(&reply, "inflight");
        }
        Err(err) => {
            report.error = Some(format!("refused before the gate closed: {err}"));
            let _ = watch.end_stack_check();
            return Ok(report);
        }
    }
    report.gated = true;
    report.realtime_gate = realtime.as_ref().is_some_and(RealtimeSection::is_realtime);
    report.gate_closed_unix_us = Some(unix_us());
    phases.gated = true;
    phases.record(&mut report, "gate", at);
    let deadline = Instant::now() + options.timeout;
    // Set once the wait proved quiescence: a failure after it (NEW refused
    // the state, or the commit failed) was held up by no thread, so the
    // gate reopens without looking for one.
    let mut quiescent = false;

    let outcome: Result<(), String> = async {
        let at = Instant::now();
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .max(1);
        control
            .command(&format!("drain {id} {remaining}"))
            .map_err(|err| {
                if cancelled() {
                    interrupted()
                } else {
                    format!(
                        "{from_module} did not become quiescent for {} within {:?}: {err}",
                        instance.name, options.timeout
                    )
                }
            })?;
        phases.record(&mut report, "drain", at);

        let at = Instant::now();
        control
            .command(&format!("quiesce {id}"))
            .map_err(|err| err.to_string())?;
        phases.record(&mut report, "quiesce", at);

        let at = Instant::now();
        match wait_quiescent(watch, left, id, deadline).await {
            Ok(()) => {}
            Err(NotQuiescent::TimedOut) => {
                let unresolved = watch.unresolved_tasks();
                return Err(if unresolved.is_empty() {
                    format!(
                        "{} did not become quiescent for {} within {:?}",
                        from_module, instance.name, options.timeout
                    )
                } else {
                    format!(
                        "cannot prove quiescence of {} for {} within {:?}: the kernel stacks of \
                         threads {unresolved:?} could not be read (they were on a CPU at every read)",
                        from_module, instance.name, options.timeout
                    )
                });
            }
            Err(NotQuiescent::Missed(missed)) => {
                report.unprovable = true;
                return Err(missed_reason(missed, watch));
            }
            Err(NotQuiescent::Cancelled) => return Err(interrupted()),
            Err(NotQuiescent::Failed(err)) => return Err(err.to_string()),
        }
        phases.record(&mut report, "wait+confirm", at);
        report.stack_check = watch.last_stack_check();
        quiescent = true;

        let at = Instant::now();
        control.command(&format!("transfer {id}")).map_err(|err| {
            // The core's tripwire: a thread is still inside the old state,
            // so the proof was wrong (a path into the state no probe saw),
            // and who is inside is what the report must say.
            if matches!(err, Error::Core { errno: Some(errno), .. } if errno == Errno::EBUSY as i32) {
                quiescent = false;
            }
            err.to_string()
        })?;
        phases.record(&mut report, "transfer", at);
        Ok(())
    }
    .await;

    match outcome {
        Ok(()) => {
            let at = Instant::now();
            match control.command(&format!("commit {id}")) {
                Ok(reply) => {
                    report.blackout_us = control::reply_value(&reply, "blackout_us");
                    report.held_calls = control::reply_value(&reply, "held");
                    report.committed = true;
                    leave_realtime(realtime.take(), &mut phases);
                    phases.gate_open();
                    phases.record(&mut report, "commit", at);
                }
                Err(err) => abort(control, &mut report, err.to_string()),
            }
        }
        Err(reason) => {
            if !quiescent {
                who_held_it_up(&mut report, watch, from_module);
            }
            abort(control, &mut report, reason);
        }
    }
    leave_realtime(realtime.take(), &mut phases);
    phases.gate_open();
    if let Err(err) = watch.end_stack_check() {
        (phases.progress)(&format!("{}: the switch watch stays on: {err}", instance.name));
    }
    if let Some(error) = &report.error {
        (phases.progress)(&format!("{}: aborted: {error}", instance.name));
    }
    Ok(report)
}

/// Ends the gate's real-time section (the gate is open again), saying so
/// if the thread's priority could not be restored.
fn leave_realtime(section: Option<RealtimeSection>, phases: &mut Phases<'_>) {
    if let Some(section) = section
        && let Err(err) = section.leave()
    {
        (phases.progress)(&format!("{}: after the gate: {err}", phases.instance));
    }
}

/// Says and reports an estimate; `false`, with the refusal in the report,
/// when it exceeds `--timeout`.
fn take_estimate(
    phases: &mut Phases<'_>,
    report: &mut InstanceReport,
    estimate: &Estimate,
    options: &SwapOptions,
    how: &str,
) -> bool {
    phases.say(format!(
        "{}: quiescent in {} ({how})",
        report.name,
        estimate.describe()
    ));
    report.quiescent_in = Some(estimate.clone());
    report.error = too_long(estimate, options);
    report.error.is_none()
}

/// The refusal of a swap whose quiescence is estimated beyond `--timeout`
/// (unless `--force-wait`): callers would wait at the gate for a wait
/// already expected to time out.
fn too_long(estimate: &Estimate, options: &SwapOptions) -> Option<String> {
    (u128::from(estimate.ns) > options.timeout.as_nanos() && !options.force_wait).then(|| {
        format!(
            "refused before the gate closed: quiescence is estimated in {}, beyond --timeout {}; \
             pass --force-wait to close the gate anyway",
            estimate.describe(),
            humantime::format_duration(options.timeout)
        )
    })
}

/// The thread a swap waits for with its gate open, if any, described: one
/// in an entry point, overdue and inside longer than `--wait-out`, or found
/// inside one at attach.
fn wait_out_reason(estimate: &Estimate, options: &SwapOptions) -> Option<String> {
    estimate
        .overdue
        .as_ref()
        .filter(|overdue| u128::from(overdue.age_ns) > options.wait_out.as_nanos())
        .map(|overdue| overdue.who.clone())
        .or_else(|| estimate.inside_since_attach.clone())
}

/// How a wait with the gate open ended.
enum WaitOut {
    /// Nothing left to wait for: the estimate now.
    Clear(Estimate),
    /// At the deadline, this thread was still inside.
    StillInside(String),
    /// Probe events were missed meanwhile: quiescence is unprovable.
    Missed(u64),
    /// SIGINT or SIGTERM.
    Cancelled,
}

/// Waits, gate open, until no thread to wait out ([`wait_out_reason`])
/// counts against `instance`, or a probe event is missed, or `deadline`.
/// Looks every 100 ms, not at each thread leaving: under load threads
/// leave all the time, and a look may run the frame listing, during which
/// the probes skip the module's calls on that CPU (misses).
async fn wait_out(
    watch: &mut ModuleWatch,
    instance: u32,
    options: &SwapOptions,
    deadline: Instant,
) -> Result<WaitOut, Error> {
    loop {
        if cancelled() {
            return Ok(WaitOut::Cancelled);
        }
        let now = Instant::now();
        tokio::time::sleep(deadline.saturating_duration_since(now).min(WAIT_OUT_POLL)).await;
        let missed = watch.missed()?;
        if missed > 0 {
            return Ok(WaitOut::Missed(missed));
        }
        let estimate = watch.estimate(Some(instance))?;
        match wait_out_reason(&estimate, options) {
            None => return Ok(WaitOut::Clear(estimate)),
            Some(who) if Instant::now() >= deadline => return Ok(WaitOut::StillInside(who)),
            Some(_) => {}
        }
    }
}

/// How often a swap waiting with the gate open looks again.
const WAIT_OUT_POLL: Duration = Duration::from_millis(100);

/// How long a swap retries, before its gate closes, the stacks that could
/// not be read at attach; what is still unread is retried in the wait.
const PRE_GATE_SETTLE: Duration = Duration::from_millis(100);

/// Why a swap with missed probe events cannot go on, naming the misses.
fn missed_reason(missed: u64, watch: &ModuleWatch) -> String {
    format!(
        "{missed} probe events were missed ({}): quiescence cannot be proven",
        watch.describe_missed()
    )
}

/// Refuses an instance, before its gate closes, for probe misses: it is
/// retried (see `absorb_skipped_runs`).
fn refuse_for_misses(report: &mut InstanceReport, missed: u64, watch: &ModuleWatch) {
    report.unprovable = true;
    report.error = Some(format!(
        "refused before the gate closed: {}",
        missed_reason(missed, watch)
    ));
}

/// What a swap refused for misses at every attempt adds to its reason:
/// that each attempt was refused, and what to do about it.
fn unprovable_every_time(attempts: u32) -> String {
    format!(
        " (refused so in each of {attempts} attempts, each after the runs skipped before it were absorbed \
         or with fresh counters; the instance is unchanged: run the swap again, at a quieter moment if \
         it keeps failing: the kernel skips a probe run when one of the module's timers fires inside \
         another BPF program's run or a BPF syscall on that CPU, most often under load)"
    )
}

/// Why an instance was not swapped when SIGINT or SIGTERM came before its
/// gate closed.
const INTERRUPTED_BEFORE_GATE: &str = "interrupted before the gate closed";

fn interrupted() -> String {
    "interrupted by SIGINT or SIGTERM".into()
}

/// Who held quiescence up, read before the gate reopens (after it, new
/// calls would blur the picture): the functions with frames in flight, and
/// the threads whose kernel stacks show a frame of the module. Stacks are
/// read from `/proc` only for the tasks the stack check finds inside or
/// cannot unwind (during a swap, those the switch program noted), so
/// callers wait no longer at the gate on a system of many tasks. With
/// frames counted and no listing made yet, the snapshot verifies the
/// listing iterator while the gate is closed (a millisecond or two, tens
/// under emulation): only after a wait that failed, which mostly lasted
/// --timeout.
fn who_held_it_up(report: &mut InstanceReport, watch: &mut ModuleWatch, module: &str) {
    if let Ok(snapshot) = watch.snapshot() {
        report.busy_functions = snapshot
            .functions
            .into_iter()
            .filter(|function| function.inflight > 0)
            .collect();
    }
    // If the stack check itself failed, every task's stack instead.
    let (inside, unreadable) = match watch.tasks_maybe_inside() {
        Ok((tasks, _)) => tasks,
        Err(_) => match stacks::scan_module(module) {
            Ok((inside, unknown)) => (inside.into_keys().collect(), unknown),
            Err(_) => return,
        },
    };
    let tasks: BTreeSet<TaskId> = inside.into_iter().chain(unreadable).collect();
    report.holders = tasks
        .into_iter()
        .filter_map(|(pid, tid)| {
            let stack = stacks::text_if_inside(pid, tid, module)?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
            Some(Holder {
                tid,
                comm: comm.trim().to_owned(),
                stack,
            })
        })
        .collect();
}

fn abort(control: &mut Control, report: &mut InstanceReport, reason: String) {
    match control.command(&format!("abort {}", report.id)) {
        Ok(reply) => {
            report.blackout_us = control::reply_value(&reply, "blackout_us");
            report.held_calls = control::reply_value(&reply, "held");
            report.error = Some(reason);
        }
        // The core had aborted it already (deadline, forced abort, device
        // removed): say so, with the core's reason.
        Err(err) => report.error = Some(format!("{reason}; {err}")),
    }
}

/// Which parts of a look run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parts {
    /// The stacks are read only if the counters say quiescent (the wait).
    UntilOneSaysNo,
    /// Every part, whatever the counters say (the rehearsal before the
    /// gate closes).
    Every,
}

/// One look: no missed event, no frame of the old module counting against
/// `instance`, no thread's stack unread, and the stacks confirming the
/// counters. Never inlined: one copy of this code, so that the rehearsal
/// before the gate runs the very code the wait inside it runs.
#[inline(never)]
fn look(watch: &mut ModuleWatch, instance: u32, parts: Parts) -> Result<bool, NotQuiescent> {
    let (busy, missed) = watch.quiescence(instance).map_err(NotQuiescent::Failed)?;
    if missed > 0 {
        return Err(NotQuiescent::Missed(missed));
    }
    let counted_out = busy == 0 && watch.unresolved_tasks().is_empty();
    if !counted_out && parts == Parts::UntilOneSaysNo {
        return Ok(false);
    }
    let confirmed = watch.confirmed_by_stacks().map_err(NotQuiescent::Failed)?;
    Ok(counted_out && confirmed)
}

/// Waits until no frame of the old module serves `instance` (nor an
/// unknown instance), every thread that was inside before attach has been
/// accounted for, and the kernel stacks agree. Woken by the probes each
/// time a thread leaves a function; re-checked every 20 ms for the threads
/// found on stacks at attach, whose leaving no probe sees.
async fn wait_quiescent(
    watch: &mut ModuleWatch,
    left: &mut Option<LeftEvents>,
    instance: u32,
    deadline: Instant,
) -> Result<(), NotQuiescent> {
    loop {
        if cancelled() {
            return Err(NotQuiescent::Cancelled);
        }
        if look(watch, instance, Parts::UntilOneSaysNo)? {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(NotQuiescent::TimedOut);
        }
        let wait = (deadline - now).min(Duration::from_millis(20));
        match left {
            // Woken only by a frame that counted for this instance leaving:
            // under `--all` or beside busy sibling devices, frames of other
            // instances leave all the time, and a look at each would keep
            // a CPU busy, at real-time priority, for the whole wait.
            Some(fd) => {
                let _ = tokio::time::timeout(wait, async {
                    while let Ok(mut guard) = fd.readable_mut().await {
                        let mut counted = false;
                        while let Some(record) = guard.get_inner_mut().next() {
                            counted |= left_counts_for(&record, instance);
                        }
                        guard.clear_ready();
                        if counted {
                            break;
                        }
                    }
                })
                .await;
            }
            None => tokio::time::sleep(wait).await,
        }
    }
}

/// Whether a "left" record (the instance the frame served) is of a frame
/// that counted for `instance`: its own, or one counted against every
/// instance (no instance, several, or an id past the counted ones).
fn left_counts_for(record: &[u8], instance: u32) -> bool {
    match record.get(..4) {
        Some(bytes) => {
            let served = u32::from_ne_bytes(bytes.try_into().expect("4 bytes"));
            served == instance || loopswap_common::frames_slot(served) == 0
        }
        // Not one the probes write: look, rather than miss a leave.
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> CoreState {
        control::parse_list(
            "class lswloop
impl lswloop_v1 class=lswloop version=1 state_version=1 module=lswloop_v1
impl lswloop_v2 class=lswloop version=2 state_version=2 module=lswloop_v2
instance 0 name=lswloop0 class=lswloop impl=lswloop_v1 gate=open held=0 swap=none
instance 1 name=lswloop1 class=lswloop impl=lswloop_v1 gate=open held=0 swap=none
instance 2 name=lswloop2 class=lswloop impl=lswloop_v2 gate=open held=0 swap=none
",
        )
    }

    fn options(instances: &[&str], all: bool) -> SwapOptions {
        SwapOptions {
            instances: instances.iter().map(|s| s.to_string()).collect(),
            all,
            to: Target::Implementation("lswloop_v2".into()),
            timeout: Duration::from_secs(1),
            keep_old: false,
            force_wait: false,
            wait_out: Duration::from_millis(10),
            pause_after: None,
            ordinary_priority: false,
            pre_gate_pause: PRE_GATE_PAUSE,
        }
    }

    #[test]
    fn a_leave_wakes_the_wait_only_if_the_frame_counted_for_its_instance() {
        let record = |served: u32| served.to_ne_bytes();
        assert!(left_counts_for(&record(3), 3), "its own instance");
        assert!(!left_counts_for(&record(4), 3), "a sibling instance");
        for shared in [
            loopswap_common::NO_INSTANCE,
            loopswap_common::MIXED_INSTANCES,
            loopswap_common::MAX_COUNTED_INSTANCES,
        ] {
            assert!(
                left_counts_for(&record(shared), 3),
                "{shared} counts for every instance"
            );
        }
        assert!(left_counts_for(&[0, 0], 3), "a short record is looked at");
    }

    #[test]
    fn an_overdue_thread_past_wait_out_or_one_inside_since_attach_is_waited_for() {
        let options = options(&["lswloop0"], false);
        let mut estimate = Estimate::default();
        assert_eq!(wait_out_reason(&estimate, &options), None, "nothing overdue");
        estimate.add_overdue(5_000_000, || "f: thread 7 inside for 5.0 ms".into());
        assert_eq!(
            wait_out_reason(&estimate, &options),
            None,
            "overdue, but within --wait-out"
        );
        estimate.inside_since_attach = Some("f: thread 9 inside since before attach, at least 1.0 ms".into());
        assert_eq!(
            wait_out_reason(&estimate, &options).as_deref(),
            Some("f: thread 9 inside since before attach, at least 1.0 ms")
        );
        estimate.add_overdue(1_500_000_000, || "f: thread 8 inside for 1.50 s".into());
        assert_eq!(
            wait_out_reason(&estimate, &options).as_deref(),
            Some("f: thread 8 inside for 1.50 s"),
            "the overdue thread first"
        );
    }

    #[test]
    fn an_estimate_beyond_the_timeout_is_refused_unless_forced() {
        let mut options = options(&["lswloop0"], false);
        let mut estimate = Estimate::default();
        estimate.add(999_000_000, || "f: thread 7 inside for 1.0 ms".into());
        assert_eq!(too_long(&estimate, &options), None);
        estimate.add(1_200_000_000, || "f: thread 7 inside for 1.20 s".into());
        let refusal = too_long(&estimate, &options).unwrap();
        assert!(refusal.contains("beyond --timeout 1s"), "{refusal}");
        assert!(refusal.contains("pass --force-wait"), "{refusal}");
        options.force_wait = true;
        assert_eq!(too_long(&estimate, &options), None);
    }

    #[test]
    fn a_swap_refused_for_misses_every_time_says_so_and_what_to_do() {
        let said = unprovable_every_time(MISS_ATTEMPTS);
        assert!(said.contains("each of 4 attempts"), "{said}");
        assert!(said.contains("run the swap again"), "{said}");
        assert!(!said.contains('\n'), "{said}");
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            Target::parse("lswloop_v2"),
            Target::Implementation("lswloop_v2".into())
        );
        assert_eq!(
            Target::parse("/m/lswloop_v2.ko"),
            Target::ModuleFile("/m/lswloop_v2.ko".into())
        );
    }

    #[test]
    fn instances_resolve_by_name_or_id() {
        let chosen = resolve_instances(
            &state(),
            &options(&["lswloop0", "1", "lswloop0"], false),
            "lswloop_v2",
            Some("lswloop"),
        );
        let ids: Vec<u32> = chosen.unwrap().iter().map(|i| i.id).collect();
        assert_eq!(ids, [0, 1]);
    }

    #[test]
    fn all_takes_every_instance_not_on_the_target() {
        let chosen = resolve_instances(&state(), &options(&[], true), "lswloop_v2", Some("lswloop")).unwrap();
        assert_eq!(chosen.len(), 2);
    }

    #[test]
    fn bad_instance_lists_are_refused() {
        for (names, all, expected) in [
            (&["lswloop9"][..], false, "no instance named lswloop9"),
            (&["lswloop2"][..], false, "already runs lswloop_v2"),
            (&[][..], false, "name at least one instance"),
            (&["lswloop0"][..], true, "not both"),
        ] {
            let err = resolve_instances(&state(), &options(names, all), "lswloop_v2", None).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
            assert_eq!(err.exit_code(), 2);
        }
    }
}

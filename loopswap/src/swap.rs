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
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use loopswap_common::MIXED_INSTANCES;
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use crate::{
    Error,
    control::{self, Control, CoreState, Instance},
    counters::{ModuleWatch, WatchOptions},
    kallsyms::Scope,
    kmod, module,
    snapshot::FunctionCount,
    stacks,
};

/// What to swap to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A `.ko` file, loaded if its module is not loaded yet.
    ModuleFile(PathBuf),
    /// An implementation already registered with the core.
    Implementation(String),
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
    /// For tests: stop (sleep) after this phase of the first instance.
    pub pause_after: Option<String>,
}

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
    pub committed: bool,
    pub phases: Vec<PhaseTime>,
    /// Gate closed → gate open, measured by the core.
    pub blackout_us: Option<u64>,
    /// Calls that waited at the gate during the swap.
    pub held_calls: Option<u64>,
    pub error: Option<String>,
    /// On failure: functions with threads in flight, and those threads.
    pub busy_functions: Vec<FunctionCount>,
    pub holders: Vec<Holder>,
    /// Aborted because probe events were missed (retried).
    #[serde(skip)]
    pub unprovable: bool,
}

/// Attempts per instance when probe misses make quiescence unprovable.
const MISS_ATTEMPTS: u32 = 3;

#[derive(Clone, Debug, Serialize)]
pub struct SwapReport {
    pub to: String,
    /// The module this swap loaded, if it did.
    pub loaded: Option<String>,
    /// Modules unloaded after the swap because nothing used them any more.
    pub unloaded: Vec<String>,
    pub instances: Vec<InstanceReport>,
    pub micros: u64,
}

impl SwapReport {
    pub fn succeeded(&self) -> bool {
        self.instances.iter().all(|instance| instance.committed)
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
                if instance.committed {
                    "committed"
                } else {
                    "ABORTED, old implementation resumed"
                }
            );
            let phases: Vec<String> = instance
                .phases
                .iter()
                .map(|phase| format!("{} {:.3} ms", phase.phase, phase.micros as f64 / 1000.0))
                .collect();
            let _ = writeln!(out, "  phases: {}", phases.join(" | "));
            if let Some(blackout) = instance.blackout_us {
                let _ = writeln!(
                    out,
                    "  blackout (gate closed -> open): {blackout} us, {} calls held at the gate",
                    instance.held_calls.unwrap_or(0)
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

/// Reports phases as they happen.
pub type Progress<'a> = &'a mut dyn FnMut(&str);

fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

/// Resolves the instances to swap; refuses before anything changes.
fn resolve_instances(state: &CoreState, options: &SwapOptions, to: &str) -> Result<Vec<Instance>, Error> {
    if options.all && !options.instances.is_empty() {
        return Err(Error::Usage("name instances or give --all, not both".into()));
    }
    let class = state
        .implementation(to)
        .map(|implementation| implementation.class.clone());
    let mut chosen: Vec<Instance> = Vec::new();
    if options.all {
        chosen.extend(
            state
                .instances
                .iter()
                .filter(|instance| instance.implementation != to && Some(&instance.class) == class.as_ref())
                .cloned(),
        );
        if chosen.is_empty() {
            return Err(Error::Usage(format!("--all: no instance runs anything but {to}")));
        }
    } else {
        if options.instances.is_empty() {
            return Err(Error::Usage(
                "name at least one instance (e.g. lswloop0), or give --all".into(),
            ));
        }
        for name in &options.instances {
            let instance = state.instance(name).ok_or_else(|| {
                Error::Usage(format!("no instance named {name} (loopswap status lists them)"))
            })?;
            if instance.implementation == to {
                return Err(Error::Usage(format!("{name} already runs {to}")));
            }
            if !chosen.iter().any(|c| c.id == instance.id) {
                chosen.push(instance.clone());
            }
        }
    }
    for instance in &chosen {
        if let Some(swap) = &instance.swap {
            return Err(Error::Usage(format!(
                "{} is being swapped by another controller ({swap}); wait for it",
                instance.name
            )));
        }
    }
    Ok(chosen)
}

/// The whole swap. Refusals before any change are errors; a swap that had
/// to be aborted is a report with `committed: false`.
pub async fn run(options: &SwapOptions, progress: Progress<'_>) -> Result<SwapReport, Error> {
    let started = Instant::now();
    module::check_root()?;
    let mut control = Control::open()?;
    let state = control.list()?;

    let (to, file) = match &options.to {
        Target::ModuleFile(path) => {
            if !path.is_file() {
                return Err(Error::Usage(format!("--to {}: no such file", path.display())));
            }
            (kmod::module_name_of(path)?, Some(path.clone()))
        }
        Target::Implementation(name) => (name.clone(), None),
    };
    if state.implementation(&to).is_none() && file.is_none() {
        return Err(Error::Usage(format!(
            "no implementation named {to} is registered (loopswap status lists them; or pass its .ko)"
        )));
    }
    if state.implementation(&to).is_some() {
        resolve_instances(&state, options, &to)?;
    } else if !options.all {
        // Check the names before loading anything.
        for name in &options.instances {
            if state.instance(name).is_none() {
                return Err(Error::Usage(format!(
                    "no instance named {name} (loopswap status lists them)"
                )));
            }
        }
        if options.instances.is_empty() {
            return Err(Error::Usage(
                "name at least one instance (e.g. lswloop0), or give --all".into(),
            ));
        }
    }

    let mut loaded = None;
    if state.implementation(&to).is_none() {
        let path = file.as_ref().expect("checked above");
        if kmod::is_loaded(&to)? {
            return Err(Error::Usage(format!(
                "module {to} is loaded but registered no lsw implementation"
            )));
        }
        let at = Instant::now();
        kmod::load(path)?;
        progress(&format!(
            "load {} ({:.3} ms)",
            path.display(),
            micros(at) as f64 / 1000.0
        ));
        loaded = Some(to.clone());
    }
    let state = control.list()?;
    let targets = match (state.implementation(&to), resolve_instances(&state, options, &to)) {
        (Some(_), Ok(targets)) => targets,
        (implementation, resolved) => {
            if let Some(module) = &loaded {
                let _ = kmod::unload(module);
            }
            return Err(match (implementation, resolved) {
                (None, _) => Error::Usage(format!(
                    "{to}.ko loaded but registered no lsw implementation named {to}"
                )),
                (_, Err(err)) => err,
                _ => unreachable!(),
            });
        }
    };

    let mut reports = Vec::new();
    for instance in &targets {
        let from_module = state
            .implementation(&instance.implementation)
            .map(|implementation| implementation.module.clone())
            .unwrap_or_else(|| instance.implementation.clone());
        // A probe miss makes quiescence unprovable, not false: the swap was
        // aborted safely, and a fresh attach starts with clean counters.
        let mut report = swap_one(&mut control, instance, &from_module, &to, options, progress).await?;
        for _ in 1..MISS_ATTEMPTS {
            if report.committed || !report.unprovable {
                break;
            }
            progress(&format!("{}: retrying with fresh counters", instance.name));
            report = swap_one(&mut control, instance, &from_module, &to, options, progress).await?;
        }
        let committed = report.committed;
        reports.push(report);
        if !committed {
            break;
        }
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
    let succeeded = reports.iter().all(|report| report.committed);
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
    Ok(SwapReport {
        to,
        loaded,
        unloaded,
        instances: reports,
        micros: micros(started),
    })
}

/// Why waiting for quiescence ended without it.
enum NotQuiescent {
    TimedOut,
    Missed(u64),
    Failed(Error),
}

async fn swap_one(
    control: &mut Control,
    instance: &Instance,
    from_module: &str,
    to: &str,
    options: &SwapOptions,
    progress: Progress<'_>,
) -> Result<InstanceReport, Error> {
    let id = instance.id;
    let mut report = InstanceReport {
        id,
        name: instance.name.clone(),
        from: instance.implementation.clone(),
        to: to.to_owned(),
        committed: false,
        phases: Vec::new(),
        blackout_us: None,
        held_calls: None,
        error: None,
        busy_functions: Vec::new(),
        holders: Vec::new(),
        unprovable: false,
    };
    let phase = |report: &mut InstanceReport, name: &'static str, at: Instant, progress: Progress<'_>| {
        let micros = micros(at);
        progress(&format!(
            "{}: {name} ({:.3} ms)",
            instance.name,
            micros as f64 / 1000.0
        ));
        report.phases.push(PhaseTime { phase: name, micros });
        if options.pause_after.as_deref() == Some(name) {
            progress(&format!("pausing after {name} (--test-pause-after)"));
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    };

    // Counters first, so the stacks seed them before the gate closes.
    let at = Instant::now();
    let options_watch = WatchOptions {
        scope: Scope::AllText,
        attribute_instances: true,
        ..WatchOptions::default()
    };
    let mut watch = ModuleWatch::attach(from_module, &options_watch)?;
    let mut left = match watch.take_left_events() {
        // SAFETY: the ring buffer owns its map fd, open and unchanged for
        // as long as it lives inside the AsyncFd.
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
    phase(&mut report, "attach", at, progress);

    // From here on, any failure aborts (and so does our exit: the core
    // aborts a swap whose handle closes).
    let at = Instant::now();
    if let Err(err) = control.command(&format!("begin {id} {to}")) {
        report.error = Some(err.to_string());
        return Ok(report);
    }
    phase(&mut report, "gate", at, progress);
    let deadline = Instant::now() + options.timeout;

    let outcome: Result<(), String> = async {
        let at = Instant::now();
        control
            .command(&format!("quiesce {id}"))
            .map_err(|err| err.to_string())?;
        phase(&mut report, "quiesce", at, progress);

        let at = Instant::now();
        match wait_quiescent(&mut watch, &mut left, id, deadline).await {
            Ok(()) => {}
            Err(NotQuiescent::TimedOut) => {
                return Err(format!(
                    "{} did not become quiescent for {} within {:?}",
                    from_module, instance.name, options.timeout
                ));
            }
            Err(NotQuiescent::Missed(missed)) => {
                report.unprovable = true;
                return Err(format!(
                    "{missed} probe events were missed: quiescence cannot be proven"
                ));
            }
            Err(NotQuiescent::Failed(err)) => return Err(err.to_string()),
        }
        phase(&mut report, "wait+confirm", at, progress);

        let at = Instant::now();
        control
            .command(&format!("transfer {id}"))
            .map_err(|err| err.to_string())?;
        phase(&mut report, "transfer", at, progress);
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
                    phase(&mut report, "commit", at, progress);
                }
                Err(err) => abort(
                    control,
                    &mut report,
                    err.to_string(),
                    &mut watch,
                    from_module,
                    progress,
                ),
            }
        }
        Err(reason) => abort(control, &mut report, reason, &mut watch, from_module, progress),
    }
    Ok(report)
}

fn abort(
    control: &mut Control,
    report: &mut InstanceReport,
    reason: String,
    watch: &mut ModuleWatch,
    module: &str,
    progress: Progress<'_>,
) {
    // Who held quiescence up, read before the gate reopens.
    if let Ok(snapshot) = watch.snapshot() {
        report.busy_functions = snapshot
            .functions
            .into_iter()
            .filter(|function| function.inflight > 0)
            .collect();
    }
    if let Ok(tasks) = stacks::tasks_in_module(module) {
        report.holders = tasks
            .into_keys()
            .map(|(pid, tid)| Holder {
                tid,
                comm: std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
                stack: std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stack"))
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_owned)
                    .collect(),
            })
            .collect();
    }
    progress(&format!("{}: aborting: {reason}", report.name));
    match control.command(&format!("abort {}", report.id)) {
        Ok(reply) => {
            report.blackout_us = control::reply_value(&reply, "blackout_us");
            report.held_calls = control::reply_value(&reply, "held");
        }
        Err(err) => progress(&format!("{}: abort failed: {err}", report.name)),
    }
    report.error = Some(reason);
}

/// Waits until no frame of the old module serves `instance` (nor an
/// unknown instance), confirmed on the kernel stacks. Woken by the probes
/// each time a thread leaves a function; re-checked every 20 ms for the
/// threads found on stacks at attach, whose leaving no probe sees.
async fn wait_quiescent(
    watch: &mut ModuleWatch,
    left: &mut Option<AsyncFd<RingBuf<MapData>>>,
    instance: u32,
    deadline: Instant,
) -> Result<(), NotQuiescent> {
    loop {
        let (busy, missed) = watch.quiescence(instance).map_err(NotQuiescent::Failed)?;
        if missed > 0 {
            return Err(NotQuiescent::Missed(missed));
        }
        if busy == 0 && confirmed_by_stacks(watch, instance).map_err(NotQuiescent::Failed)? {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(NotQuiescent::TimedOut);
        }
        let wait = (deadline - now).min(Duration::from_millis(20));
        match left {
            Some(fd) => {
                let _ = tokio::time::timeout(wait, async {
                    if let Ok(mut guard) = fd.readable_mut().await {
                        while guard.get_inner_mut().next().is_some() {}
                        guard.clear_ready();
                    }
                })
                .await;
            }
            None => tokio::time::sleep(wait).await,
        }
    }
}

/// The second, independent signal: every task whose kernel stack holds a
/// frame of the old module must be one the probes attribute wholly to
/// other instances.
fn confirmed_by_stacks(watch: &ModuleWatch, instance: u32) -> Result<bool, Error> {
    let tasks = stacks::tasks_in_module(watch.module())?;
    if tasks.is_empty() {
        return Ok(true);
    }
    let tracked = watch.threads_inside()?;
    Ok(tasks.keys().all(|(_, tid)| {
        tracked.get(&(*tid as u32)).is_some_and(|serving| {
            !serving.is_empty() && !serving.contains(&instance) && !serving.contains(&MIXED_INSTANCES)
        })
    }))
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
            pause_after: None,
        }
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
        );
        let ids: Vec<u32> = chosen.unwrap().iter().map(|i| i.id).collect();
        assert_eq!(ids, [0, 1]);
    }

    #[test]
    fn all_takes_every_instance_not_on_the_target() {
        let chosen = resolve_instances(&state(), &options(&[], true), "lswloop_v2").unwrap();
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
            let err = resolve_instances(&state(), &options(names, all), "lswloop_v2").unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
            assert_eq!(err.exit_code(), 2);
        }
    }
}

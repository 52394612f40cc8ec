//! Exact in-flight counts for one module: eBPF entry/return counters, seeded
//! from kernel stacks for the threads that were inside before attach.
//!
//! Why both: an entry/return probe pair sees only threads that enter after
//! it is attached. A thread already inside is found on its kernel stack at
//! attach time and followed there until it leaves; its count can only fall,
//! because every later entry is counted by the probes instead.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::PathBuf,
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray},
    programs::KProbe,
};
use loopswap_common::{
    FUNCTION_INSTANCE_ENTRY, FunctionInfo, InflightKey, InflightValue, MAX_FUNCTIONS, NO_INSTANCE, event,
};

use crate::{
    Error,
    kallsyms::{self, Function, Scope},
    module,
    snapshot::{FunctionCount, Snapshot},
    stacks::{self, TaskId},
    tracefs::{self, AttachedProbe, ProbeKind},
};

/// How to watch.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    pub scope: Scope,
    /// kretprobe `maxactive`: concurrent calls per function whose returns
    /// can be followed. Past it, returns are missed (and reported).
    pub max_active: u32,
    /// Treat the module's exported functions as lsw instance entry points
    /// (first argument: `struct lsw_instance *`) and attribute frames to
    /// instances. See kernel/lsw_core.h.
    pub attribute_instances: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            scope: Scope::AllText,
            max_active: 1024,
            attribute_instances: false,
        }
    }
}

/// Probes attached to one module; detached on drop.
pub struct ModuleWatch {
    // Field order is drop order: probes go before the programs they run.
    probes: Vec<AttachedProbe>,
    module: String,
    functions: Vec<Function>,
    /// Functions kprobes refuse (notrace, e.g. `__exit`): not counted.
    unprobed: Vec<String>,
    index_by_name: HashMap<String, u32>,
    inflight: BpfHashMap<MapData, InflightKey, InflightValue>,
    left: Option<aya::maps::RingBuf<MapData>>,
    calls: PerCpuArray<MapData, u64>,
    events: PerCpuArray<MapData, u64>,
    tracefs: PathBuf,
    /// Frames per function of threads that were inside before attach and
    /// have not left yet.
    seeded: BTreeMap<TaskId, BTreeMap<u32, u64>>,
    ebpf: Ebpf,
}

const PROGRAMS: [&str; 2] = ["lsw_enter", "lsw_exit"];

impl ModuleWatch {
    /// Checks the module, attaches return probes then entry probes to its
    /// functions, and seeds the counts from kernel stacks.
    pub fn attach(module: &str, options: &WatchOptions) -> Result<Self, Error> {
        let module = kallsyms::normalize_module_name(module);
        if !(1..=tracefs::MAX_ACTIVE_LIMIT).contains(&options.max_active) {
            return Err(Error::MaxActive(options.max_active));
        }
        module::check_root()?;
        module::check_live(&module)?;
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").map_err(|cause| Error::Io {
            path: "/proc/kallsyms".into(),
            cause,
        })?;
        let tracefs = tracefs::root()?;
        let traceable = tracefs::traceable_functions(&tracefs, &module)?;
        let (functions, unprobed): (Vec<Function>, Vec<Function>) =
            kallsyms::module_functions(&kallsyms, &module, options.scope)
                .into_iter()
                .partition(|function| function.names.iter().any(|name| traceable.contains(name)));
        if functions.is_empty() {
            let (what, hint) = match options.scope {
                Scope::AllText => ("text", ""),
                Scope::ExportedOnly => ("exported", "; drop --exported-only to watch all its text"),
            };
            return Err(Error::NoFunctions { module, what, hint });
        }
        if functions.iter().all(|function| function.address == 0) {
            return Err(Error::HiddenAddresses);
        }
        if functions.len() > MAX_FUNCTIONS as usize {
            return Err(Error::TooManyFunctions {
                module,
                count: functions.len(),
                max: MAX_FUNCTIONS,
            });
        }
        tracefs::remove_stale_events(&tracefs)?;

        let mut ebpf = load_object()?;
        let mut func_by_addr: BpfHashMap<MapData, u64, FunctionInfo> =
            BpfHashMap::try_from(take_map(&mut ebpf, "FUNC_BY_ADDR")?)?;
        for (index, function) in functions.iter().enumerate() {
            let flags = if options.attribute_instances && function.exported {
                FUNCTION_INSTANCE_ENTRY
            } else {
                0
            };
            let info = FunctionInfo {
                index: index as u32,
                flags,
            };
            // With IBT the probed address may be reported past the ENDBR.
            for address in [function.address, function.address + 4] {
                func_by_addr.insert(address, info, 0)?;
            }
        }
        for name in PROGRAMS {
            let program: &mut KProbe = ebpf
                .program_mut(name)
                .ok_or_else(|| aya::programs::ProgramError::UnexpectedProgramType)?
                .try_into()?;
            program.load()?;
        }
        let mut watch = Self {
            probes: Vec::with_capacity(2 * functions.len()),
            inflight: BpfHashMap::try_from(take_map(&mut ebpf, "INFLIGHT")?)?,
            left: Some(aya::maps::RingBuf::try_from(take_map(&mut ebpf, "LEFT")?)?),
            calls: PerCpuArray::try_from(take_map(&mut ebpf, "CALLS")?)?,
            events: PerCpuArray::try_from(take_map(&mut ebpf, "EVENTS")?)?,
            index_by_name: functions
                .iter()
                .enumerate()
                .flat_map(|(index, f)| f.names.iter().map(move |name| (name.clone(), index as u32)))
                .collect(),
            module,
            functions,
            unprobed: unprobed.into_iter().map(|function| function.name).collect(),
            tracefs,
            seeded: BTreeMap::new(),
            ebpf,
        };
        // Returns first: a thread entering between the two attaches then
        // has a return but no entry (ignored, and found on its stack below),
        // never an entry without a return (which would stick above zero).
        watch.attach_all(ProbeKind::Return {
            max_active: options.max_active,
        })?;
        watch.attach_all(ProbeKind::Entry)?;
        watch.seed()?;
        Ok(watch)
    }

    fn program_fd(&self, kind: ProbeKind) -> Result<BorrowedFd<'_>, Error> {
        let name = match kind {
            ProbeKind::Entry => PROGRAMS[0],
            ProbeKind::Return { .. } => PROGRAMS[1],
        };
        let program: &KProbe = self
            .ebpf
            .program(name)
            .ok_or(aya::programs::ProgramError::UnexpectedProgramType)?
            .try_into()?;
        Ok(program.fd()?.as_fd())
    }

    fn attach_all(&mut self, kind: ProbeKind) -> Result<(), Error> {
        let tag = match kind {
            ProbeKind::Entry => 'e',
            ProbeKind::Return { .. } => 'r',
        };
        let pid = std::process::id();
        let mut attached = Vec::with_capacity(self.functions.len());
        {
            let program = self.program_fd(kind)?;
            for (index, function) in self.functions.iter().enumerate() {
                let event = format!("lsw{pid}_{tag}{index}");
                attached.push(AttachedProbe::attach(
                    &self.tracefs,
                    &event,
                    kind,
                    &self.module,
                    &function.name,
                    program,
                )?);
            }
        }
        self.probes.extend(attached);
        Ok(())
    }

    /// Frames of each function on a stack, by function index.
    fn count_frames(&self, frames: &[stacks::Frame]) -> BTreeMap<u32, u64> {
        let mut counts = BTreeMap::new();
        for frame in frames {
            if let Some(index) = self.index_by_name.get(&frame.function) {
                *counts.entry(*index).or_default() += 1;
            }
        }
        counts
    }

    fn tracked(&self, tid: i32, funcs: impl Iterator<Item = u32>) -> BTreeMap<u32, u64> {
        funcs
            .map(|func| {
                let key = InflightKey {
                    tid: tid as u32,
                    func,
                };
                (
                    func,
                    self.inflight
                        .get(&key, 0)
                        .map_or(0, |value| u64::from(value.depth)),
                )
            })
            .collect()
    }

    /// Frames on `task`'s stack that the probes have not seen enter, read
    /// so that no probe event happens in between (else retried); `None` if
    /// the task is gone.
    fn untracked_frames(&self, (pid, tid): TaskId) -> Option<BTreeMap<u32, u64>> {
        let all = || 0..self.functions.len() as u32;
        let mut attempts = 0;
        loop {
            let before = self.tracked(tid, all());
            let frames = stacks::read(pid, tid)?;
            let after = self.tracked(tid, all());
            attempts += 1;
            if before == after || attempts == 10 {
                let stack = self.count_frames(&frames);
                return Some(
                    stack
                        .into_iter()
                        .map(|(func, n)| (func, n.saturating_sub(after.get(&func).copied().unwrap_or(0))))
                        .filter(|(_, n)| *n > 0)
                        .collect(),
                );
            }
        }
    }

    fn seed(&mut self) -> Result<(), Error> {
        for task in stacks::tasks_in_module(&self.module)?.into_keys() {
            if let Some(untracked) = self.untracked_frames(task)
                && !untracked.is_empty()
            {
                self.seeded.insert(task, untracked);
            }
        }
        Ok(())
    }

    /// Follows the seeded threads: a seeded frame can only leave, never
    /// come back (new entries are counted by the probes), so the count is
    /// the minimum of what was seen and what is on the stack now.
    fn refresh_seeded(&mut self) {
        let tasks: Vec<TaskId> = self.seeded.keys().copied().collect();
        for task in tasks {
            let now = self.untracked_frames(task).unwrap_or_default();
            let counts = self.seeded.get_mut(&task).expect("key from the map");
            counts.retain(|func, count| {
                *count = (*count).min(now.get(func).copied().unwrap_or(0));
                *count > 0
            });
            if counts.is_empty() {
                self.seeded.remove(&task);
            }
        }
    }

    fn sum_per_cpu(map: &PerCpuArray<MapData, u64>, index: u32) -> Result<u64, Error> {
        Ok(map.get(&index, 0)?.iter().sum())
    }

    /// Every tracked (thread, function) pair with its frames now.
    fn tracked_entries(&self) -> Result<Vec<(InflightKey, InflightValue)>, Error> {
        let mut entries = Vec::new();
        for entry in self.inflight.iter() {
            match entry {
                Ok(entry) => entries.push(entry),
                // The entry left between listing its key and reading it.
                Err(MapError::KeyNotFound) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Ok(entries)
    }

    /// The counts now.
    pub fn snapshot(&mut self) -> Result<Snapshot, Error> {
        self.refresh_seeded();
        let entries = self.tracked_entries()?;
        let mut inflight = vec![0u64; self.functions.len()];
        let mut threads = BTreeSet::new();
        for (key, value) in &entries {
            if let Some(slot) = inflight.get_mut(key.func as usize) {
                *slot += u64::from(value.depth);
            }
            threads.insert(key.tid);
        }
        let mut seeded = 0;
        for ((_, tid), counts) in &self.seeded {
            for (func, count) in counts {
                inflight[*func as usize] += count;
                seeded += count;
            }
            threads.insert(*tid as u32);
        }
        let (instances, unattributed) = self.attribute(&entries);
        let mut functions = Vec::with_capacity(self.functions.len());
        for (index, function) in self.functions.iter().enumerate() {
            functions.push(FunctionCount {
                name: function.name.clone(),
                inflight: inflight[index],
                calls: Self::sum_per_cpu(&self.calls, index as u32)?,
            });
        }
        Ok(Snapshot {
            module: self.module.clone(),
            inflight: inflight.iter().sum(),
            threads: threads.len() as u64,
            missed: self.missed()?,
            seeded,
            functions,
            unprobed: self.unprobed.clone(),
            instances: instances
                .into_iter()
                .map(|(id, inflight)| crate::snapshot::InstanceCount { id, inflight })
                .collect(),
            unattributed,
        })
    }

    /// What keeps `instance` from quiescence, cheaply (no per-function
    /// call counts): frames of threads serving it or an unknown instance,
    /// and missed events.
    pub fn quiescence(&mut self, instance: u32) -> Result<(u64, u64), Error> {
        self.refresh_seeded();
        let (per_instance, unattributed) = self.attribute(&self.tracked_entries()?);
        Ok((
            unattributed + per_instance.get(&instance).copied().unwrap_or(0),
            self.missed()?,
        ))
    }

    /// Frames per thread, attributed to the instances its entry frames
    /// serve; a thread serving no known instance (a kthread, a timer, or a
    /// thread found on the stacks at attach, whose arguments stacks do not
    /// show) could serve any: its frames are unattributed.
    fn attribute(&self, entries: &[(InflightKey, InflightValue)]) -> (BTreeMap<u32, u64>, u64) {
        let mut per_thread: BTreeMap<u32, (u64, BTreeSet<u32>)> = BTreeMap::new();
        for (key, value) in entries {
            let thread = per_thread.entry(key.tid).or_default();
            thread.0 += u64::from(value.depth);
            if value.instance != NO_INSTANCE {
                thread.1.insert(value.instance);
            }
        }
        for ((_, tid), counts) in &self.seeded {
            per_thread.entry(*tid as u32).or_default().0 += counts.values().sum::<u64>();
        }
        let mut instances: BTreeMap<u32, u64> = BTreeMap::new();
        let mut unattributed = 0;
        for (frames, serving) in per_thread.values() {
            if serving.is_empty() || serving.contains(&loopswap_common::MIXED_INSTANCES) {
                unattributed += frames;
            } else {
                for instance in serving {
                    *instances.entry(*instance).or_default() += frames;
                }
            }
        }
        (instances, unattributed)
    }

    /// Threads the probes see inside this module now, each with the lsw
    /// instances its entry frames serve (empty: no known instance).
    pub fn threads_inside(&self) -> Result<BTreeMap<u32, BTreeSet<u32>>, Error> {
        let mut threads: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for (key, value) in self.tracked_entries()? {
            let serving = threads.entry(key.tid).or_default();
            if value.instance != NO_INSTANCE {
                serving.insert(value.instance);
            }
        }
        Ok(threads)
    }

    /// Takes the ring buffer that receives a record each time a thread
    /// leaves a function entirely (for event-driven waiting).
    pub fn take_left_events(&mut self) -> Option<aya::maps::RingBuf<MapData>> {
        self.left.take()
    }

    /// Every event that could make a count wrong: kprobe misses (including
    /// kretprobe returns past `maxactive`), programs skipped because another
    /// BPF program was running on the CPU, and map-full / unknown-address
    /// events of our own.
    fn missed(&self) -> Result<u64, Error> {
        let profile = tracefs::misses(&self.tracefs)?;
        let probe_misses: u64 = self.probes.iter().filter_map(|p| profile.get(p.event())).sum();
        let mut recursion = 0;
        for kind in [ProbeKind::Entry, ProbeKind::Return { max_active: 1 }] {
            recursion += recursion_misses(self.program_fd(kind)?)?;
        }
        Ok(probe_misses
            + recursion
            + Self::sum_per_cpu(&self.events, event::INFLIGHT_MAP_FULL)?
            + Self::sum_per_cpu(&self.events, event::UNKNOWN_ADDRESS)?)
    }

    pub fn module(&self) -> &str {
        &self.module
    }

    pub fn functions(&self) -> &[Function] {
        &self.functions
    }
}

/// The eBPF object built by build.rs, loaded (maps created, programs not).
pub fn load_object() -> Result<Ebpf, Error> {
    Ok(Ebpf::load(aya::include_bytes_aligned!(concat!(
        env!("OUT_DIR"),
        "/loopswap"
    )))?)
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map, Error> {
    ebpf.take_map(name).ok_or_else(|| {
        Error::Map(MapError::InvalidName {
            name: name.to_owned(),
        })
    })
}

/// `bpf_prog_info.recursion_misses` (Linux 5.12+), which aya 0.14's
/// `ProgramInfo` does not expose: runs of the program the kernel skipped
/// because another BPF program was already running on that CPU.
fn recursion_misses(program: BorrowedFd<'_>) -> Result<u64, Error> {
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: bpf_prog_info is plain old data; zero is a valid value.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoByFd {
        bpf_fd: program.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: &raw mut info as u64,
    };
    // SAFETY: attr points at a live bpf_prog_info of the size given.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            aya_obj::generated::bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_int,
            &raw mut attr,
            std::mem::size_of::<InfoByFd>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(Error::Io {
            path: "bpf(BPF_OBJ_GET_INFO_BY_FD)".into(),
            cause: std::io::Error::last_os_error(),
        });
    }
    Ok(info.recursion_misses)
}

//! Exact in-flight counts for one module: eBPF entry/return counters, seeded
//! from kernel stacks for the threads that were inside before attach.
//!
//! Why both: an entry/return probe pair sees only threads that enter after
//! it is attached. A thread already inside is found on its kernel stack at
//! attach time and followed there until it leaves; its count can only fall,
//! because every later entry is counted by the probes instead.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    os::fd::AsFd as _,
    path::PathBuf,
};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues};
use loopswap_common::{
    CONFIG_NOTIFY_LEFT, CONFIG_SLOT_BASE, CONFIG_TIME_IN_FLIGHT, FUNCTION_INSTANCE_ENTRY, FUNCTION_KNOWN,
    FUNCTION_SLOT_SHIFT, FrameRecord, FunctionInfo, IDLE_TID_FLAG, InflightKey, InflightValue,
    MAX_COUNTED_INSTANCES, MAX_FUNCTION_SLOTS, MAX_FUNCTIONS, MAX_TIMED_INSTANCES, MIXED_INSTANCES,
    NO_INSTANCE, SCAN_IN_MODULE, SCAN_NIVCSW_OFFSET, SCAN_NVCSW_OFFSET, SCAN_ON_CPU_OFFSET, SCAN_PID_OFFSET,
    SCAN_SKIP_ENABLED, SCAN_START_TIME_OFFSET, SCAN_STATE_OFFSET, SCAN_TEXT_END, SCAN_TEXT_START,
    SCAN_TGID_OFFSET, SCAN_UNREADABLE, SCAN_WATCH_SWITCHES, SWITCH_MAX_FRAMES, ScanRecord, TICK_FUNCTION,
    TaskFrames, TimeHistogram, event, frames_slot, live,
};

use crate::{
    Error,
    kallsyms::{self, Function, Scope},
    module,
    raw_bpf::{
        self, KprobeLink, LoadAs, LoadedObject, MappedCounts, MultiLink, RawTracepointLink, TaskIterator,
    },
    snapshot::{FunctionCount, InstanceCount, Snapshot},
    stacks::{self, Stack, TaskId},
    time_in_flight::{self, Estimate, TimeSummary},
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
    /// Stamp entries and keep time-in-flight histograms (off only to
    /// measure what they cost).
    pub time_in_flight: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            scope: Scope::AllText,
            max_active: 1024,
            attribute_instances: false,
            time_in_flight: true,
        }
    }
}

/// Probes attached to one module; detached on drop.
pub struct ModuleWatch {
    // Field order is drop order: probes go before the programs they run.
    /// The entry and return links, when kprobe.multi is available.
    links: Vec<MultiLink>,
    /// Otherwise one tracefs kprobe event per function and direction...
    probes: Vec<AttachedProbe>,
    /// ...running these programs (entry, return).
    probe_programs: Vec<std::os::fd::OwnedFd>,
    /// The tick program (see `attach_tick`), when a task needs it.
    tick: Option<KprobeLink>,
    /// Why the tick program could not be attached, if it could not.
    tick_refused: Option<String>,
    module: String,
    functions: Vec<Function>,
    /// Functions the kernel refused a probe on: not counted.
    unprobed: Vec<Function>,
    /// Function name (any alias) → the first function index with it.
    index_by_name: HashMap<String, u32>,
    /// Per function index: the index its stack frames are counted under.
    representative: Vec<u32>,
    /// Each thread's frames inside the module (`TASK_FRAMES`, task-local
    /// storage), read for one thread by its pidfd...
    task_frames: std::os::fd::OwnedFd,
    /// ...and for every thread by this iterator (`lsw_list_frames`),
    /// loaded when first needed: a swap of an idle instance never lists
    /// frames (nothing is counted), and verifying the iterator took about
    /// 25 ms of every attach under emulation...
    frame_listing: Option<TaskIterator>,
    /// ...attached to this BTF id (`bpf_iter_task`)...
    listing_btf_id: u32,
    /// ...or why it could not be loaded (not tried again).
    listing_refused: Option<String>,
    /// The frames of interrupts on the idle tasks, per CPU.
    idle_frames: PerCpuArray<MapData, TaskFrames>,
    /// Frames by the instance they serve (`frames_slot`), mapped.
    frames_by_instance: MappedCounts,
    left: Option<aya::maps::RingBuf<MapData>>,
    calls: PerCpuArray<MapData, u64>,
    events: PerCpuArray<MapData, u64>,
    /// Live entry counts of `SWITCHED_INSIDE` (see `loopswap_common::live`).
    live: aya::maps::Array<MapData, u64>,
    counter_config: aya::maps::Array<MapData, u64>,
    time_by_function: PerCpuArray<MapData, TimeHistogram>,
    time_by_instance: PerCpuHashMap<MapData, u32, TimeHistogram>,
    /// CLOCK_MONOTONIC when every probe was armed: a thread found on its
    /// stack (seeded) entered before, so it has been inside since at least.
    armed_ns: u64,
    /// CLOCK_MONOTONIC at the latest stack seed after skipped runs were
    /// absorbed (`absorb_skipped_runs`), if any: frames it seeded entered
    /// before then.
    reseeded_ns: Option<u64>,
    /// Missed events absorbed so far, all kinds and the skipped runs of the
    /// counting program among them: `missed` counts from there.
    absorbed_misses: (u64, u64),
    tracefs: PathBuf,
    /// Frames per function of threads that were inside before attach and
    /// have not left yet.
    seeded: BTreeMap<TaskId, BTreeMap<u32, u64>>,
    /// Tasks whose kernel stack has not been readable since attach (they
    /// were on a CPU at every read): what they hold is unknown.
    unresolved: BTreeSet<TaskId>,
    /// Threads with unreadable stacks → 1 once a tick saw them in user mode.
    user_ticks: BpfHashMap<MapData, u32, u32>,
    /// Why kprobe.multi could not be used, if it could not.
    multi_refused: Option<String>,
    /// The kfuncs of kprobe.session programs, if the kernel has them
    /// (Linux 6.10+: a kprobe.session link can be made).
    session_kfuncs: Option<raw_bpf::SessionKfuncs>,
    /// Why a kprobe.session link could not be made, if it could not (the
    /// two kprobe.multi links serve instead).
    session_refused: Option<String>,
    /// Concurrent calls whose returns must be followable (see attach_multi).
    max_active: u32,
    /// The task iterator (`lsw_scan_tasks`) that finds the tasks to read
    /// stacks of; without it every task's `/proc` stack is read.
    task_scan: Option<TaskIterator>,
    /// Why there is no task iterator, if there is none.
    task_scan_refused: Option<String>,
    scan_config: aya::maps::Array<MapData, u64>,
    /// The switch program's maps, once a swap attached it.
    switches: Option<SwitchMaps>,
    /// Why the switch program could not be attached, if it could not.
    switches_refused: Option<String>,
    /// Between `begin_stack_check` and `end_stack_check`.
    narrow_check: Option<NarrowCheck>,
    /// How the last stack check went.
    last_stack_check: Option<StackCheck>,
    /// The maps no field holds yet, and the programs.
    object: LoadedObject,
}

/// How a stack check chose the tasks it read, and how many it read.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StackCheck {
    /// `"switched"`: the tasks noted by the switch program (those the scan
    /// before the gate closed found inside or could not unwind, and those
    /// that stopped running since with a frame of the module or an
    /// unreadable stack, less those that stopped clean since); `"all"`: every task
    /// (outside a swap, without the switch program, or when it skipped a
    /// run, lost a record or its map could not be read whole).
    pub scope: &'static str,
    /// Tasks it read from `/proc`: found with a frame of the module, or
    /// with a stack the scan or the switch program could not unwind.
    pub tasks_read: usize,
}

/// The map `lsw_switch` fills while a swap watches context switches.
struct SwitchMaps {
    inside: BpfHashMap<MapData, u32, ScanRecord>,
    /// Entries this process removed from `inside`, and entries it added:
    /// the switch program's live count does not know of them.
    removed_here: u64,
    added_here: u64,
    /// The switch program, attached.
    link: RawTracepointLink,
}

impl SwitchMaps {
    /// Adds the tasks a scan found inside or could not unwind, as if each
    /// had just stopped running inside: the switch program removes a task
    /// the next time it stops running clean, so a task that has left the
    /// module since needs no read. Returns the tasks that could not be added
    /// (the map is full), which are read whatever happens.
    fn note_inside(&mut self, tasks: Vec<TaskId>) -> Vec<TaskId> {
        let mut not_added = Vec::new();
        for (pid, tid) in tasks {
            let record = ScanRecord {
                tid: tid as u32,
                pid: pid as u32,
                flags: SCAN_IN_MODULE,
                pad: 0,
            };
            match self.inside.insert(tid as u32, record, BPF_NOEXIST) {
                // Counted here: only this thread reads the count, later.
                Ok(()) => self.added_here += 1,
                // Present already: the program noted it inside meanwhile.
                Err(MapError::SyscallError(call)) if call.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(_) => not_added.push((pid, tid)),
            }
        }
        not_added
    }

    /// At least the number of entries now (0: none).
    fn noted(&self, live: &aya::maps::Array<MapData, u64>) -> Result<u64, Error> {
        Ok(live
            .get(&live::SWITCHED, 0)?
            .wrapping_add(self.added_here)
            .wrapping_sub(self.removed_here))
    }
}

/// The tasks the full scan before a swap's gate found inside or could not
/// unwind that could not be noted in the switch program's map (so are read
/// whatever happens), and the program's skipped runs and lost records then:
/// any more since, and the narrow check is not complete (a full scan
/// replaces it).
struct NarrowCheck {
    tasks: Vec<TaskId>,
    misses: u64,
    lost: u64,
}

const SWITCH_PROGRAM: &str = "lsw_switch";

/// `BPF_NOEXIST`: add a map entry only if its key is not there.
const BPF_NOEXIST: u64 = aya_obj::generated::BPF_NOEXIST as u64;

/// Reads of the switch program's map before the narrow check gives up for
/// a full scan (each read again because tasks were added meanwhile).
const NARROW_READ_ATTEMPTS: usize = 3;

/// `membarrier(2)`'s command that waits for an RCU grace period
/// (`MEMBARRIER_CMD_GLOBAL` in `linux/membarrier.h`).
const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;

/// Tasks found with a frame of the module, and tasks whose stacks could
/// not be unwound.
pub type TasksToCheck = (Vec<TaskId>, Vec<TaskId>);

const PROGRAMS: [&str; 2] = ["lsw_enter", "lsw_exit"];

/// Both in one program, for a kprobe.session link.
const SESSION_PROGRAM: &str = "lsw_session";

/// The task iterator that finds tasks inside the module.
const SCAN_PROGRAM: &str = "lsw_scan_tasks";

/// The task iterator that lists the frames the probes recorded.
const LISTING_PROGRAM: &str = "lsw_list_frames";

/// The maps sized for the module's functions: a time histogram per
/// function, the table from text slot to function, and the calls per
/// function (made for `MAX_FUNCTIONS`, its per-CPU memory took 15-30 ms
/// of every attach under emulation).
const SIZED_BY_FUNCTIONS: [&str; 3] = ["TIME_BY_FUNCTION", "FUNC_BY_SLOT", "CALLS"];

/// Most kernel memory the per-function time-in-flight histograms may take
/// (functions x CPUs x 328 bytes: 2,000 functions on 100 CPUs).
const TIME_MEMORY_LIMIT: usize = 64 << 20;

/// The `task_struct` members the task scan reads.
const TASK_MEMBERS: [&str; 7] = [
    "pid",
    "tgid",
    "nvcsw",
    "nivcsw",
    "__state",
    "on_cpu",
    "start_time",
];

/// Frames on a stack that the probes have not seen enter.
enum Untracked {
    Gone,
    Unknown,
    Frames(BTreeMap<u32, u64>),
}

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
        // The slow parts side by side: the object, parsed, with every map
        // whose size does not depend on the module's functions; and the
        // module's symbols (the kernel formats every symbol before them)
        // then the kernel's BTF, each usually from this boot's cache (see
        // `run_cache`), so in this thread (one thread made, not two).
        let (kallsyms, task_scan_btf, object) = std::thread::scope(|scope| {
            let object = scope.spawn(|| LoadedObject::begin(OBJECT, &SIZED_BY_FUNCTIONS));
            let kallsyms = kallsyms::module_symbols(&module).map_err(|cause| Error::Io {
                path: "/proc/kallsyms".into(),
                cause,
            });
            let btf = crate::btf::task_scan_btf(&TASK_MEMBERS);
            (kallsyms, btf, object.join().expect("loading does not panic"))
        });
        let kallsyms = kallsyms?;
        let tracefs = tracefs::root()?;
        let functions = kallsyms::module_functions(&kallsyms, &module, options.scope);
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

        // A histogram per function and CPU: past TIME_MEMORY_LIMIT (many
        // functions on many CPUs) time in flight is off, counting is not.
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        let histogram_bytes = functions.len() * cpus * std::mem::size_of::<TimeHistogram>();
        let time_in_flight = options.time_in_flight && histogram_bytes <= TIME_MEMORY_LIMIT;
        // No CO-RE relocation needs the kernel's BTF, which aya's loader
        // would parse (see raw_bpf); the task iterator's attach point comes
        // from the scan.
        let slots = function_slots(&functions);
        let sizes = [
            if time_in_flight { functions.len() as u32 } else { 1 },
            slots.as_ref().map_or(1, |(_, table)| table.len() as u32),
            functions.len() as u32,
        ];
        let sized: Vec<(&str, u32)> = SIZED_BY_FUNCTIONS.into_iter().zip(sizes).collect();
        let mut ebpf = object?.finish(&sized)?;
        let info = |index: usize| {
            let function = &functions[index];
            let flags = if options.attribute_instances && function.exported {
                FUNCTION_INSTANCE_ENTRY
            } else {
                0
            };
            FunctionInfo {
                index: index as u32,
                flags: flags | FUNCTION_KNOWN,
            }
        };
        let mut counter_config: aya::maps::Array<MapData, u64> =
            aya::maps::Array::try_from(ebpf.take_map("COUNTER_CONFIG")?)?;
        // Kept open until the probes' programs are loaded (they refer to
        // the maps by these descriptors).
        let mut func_by_slot = None;
        let mut func_by_addr = None;
        match &slots {
            Some((base, table)) => {
                let func_by_slot = func_by_slot.insert(aya::maps::Array::<MapData, FunctionInfo>::try_from(
                    ebpf.take_map("FUNC_BY_SLOT")?,
                )?);
                for (slot, index) in table.iter().enumerate() {
                    if let Some(index) = index {
                        func_by_slot.set(slot as u32, info(*index as usize), 0)?;
                    }
                }
                counter_config.set(CONFIG_SLOT_BASE, *base, 0)?;
            }
            None => {
                let func_by_addr = func_by_addr.insert(BpfHashMap::<MapData, u64, FunctionInfo>::try_from(
                    ebpf.take_map("FUNC_BY_ADDR")?,
                )?);
                for (index, function) in functions.iter().enumerate() {
                    // With IBT the probed address may be reported past the ENDBR.
                    for address in [function.address, function.address + 4] {
                        func_by_addr.insert(address, info(index), 0)?;
                    }
                }
            }
        }
        let scan_config: aya::maps::Array<MapData, u64> =
            aya::maps::Array::try_from(ebpf.take_map("SCAN_CONFIG")?)?;
        // Before any probe is armed, so that every stamp is consistent.
        counter_config.set(CONFIG_TIME_IN_FLIGHT, u64::from(time_in_flight), 0)?;
        let mut watch = Self {
            probe_programs: Vec::new(),
            tick: None,
            tick_refused: None,
            task_scan: None,
            task_scan_refused: None,
            scan_config,
            switches: None,
            switches_refused: None,
            narrow_check: None,
            last_stack_check: None,
            links: Vec::new(),
            probes: Vec::new(),
            task_frames: {
                let map = ebpf.take_map("TASK_FRAMES")?;
                raw_bpf::map_fd("TASK_FRAMES", &map)?
            },
            frame_listing: None,
            listing_btf_id: 0,
            listing_refused: None,
            idle_frames: PerCpuArray::try_from(ebpf.take_map("IDLE_FRAMES")?)?,
            frames_by_instance: MappedCounts::new(
                "FRAMES_BY_INSTANCE",
                &ebpf.take_map("FRAMES_BY_INSTANCE")?,
                MAX_COUNTED_INSTANCES as usize + 1,
            )?,
            left: Some(aya::maps::RingBuf::try_from(ebpf.take_map("LEFT")?)?),
            calls: PerCpuArray::try_from(ebpf.take_map("CALLS")?)?,
            events: PerCpuArray::try_from(ebpf.take_map("EVENTS")?)?,
            live: aya::maps::Array::try_from(ebpf.take_map("LIVE")?)?,
            time_by_function: PerCpuArray::try_from(ebpf.take_map("TIME_BY_FUNCTION")?)?,
            time_by_instance: PerCpuHashMap::try_from(ebpf.take_map("TIME_BY_INSTANCE")?)?,
            armed_ns: 0,
            reseeded_ns: None,
            absorbed_misses: (0, 0),
            counter_config,
            user_ticks: BpfHashMap::try_from(ebpf.take_map("USER_TICKS")?)?,
            representative: Vec::new(),
            index_by_name: HashMap::new(),
            module,
            functions,
            unprobed: Vec::new(),
            tracefs,
            seeded: BTreeMap::new(),
            unresolved: BTreeSet::new(),
            multi_refused: None,
            session_kfuncs: None,
            session_refused: None,
            max_active: options.max_active,
            object: ebpf,
        };
        // Stacks show names only: functions sharing a name (static helpers
        // of different files) are one group there, under its first index.
        for (index, function) in watch.functions.iter().enumerate() {
            for name in &function.names {
                watch.index_by_name.entry(name.clone()).or_insert(index as u32);
            }
        }
        watch.representative = watch
            .functions
            .iter()
            .map(|function| watch.index_by_name[&function.name])
            .collect();
        // Without the scan iterator (refused, or a nested pid namespace)
        // every task's /proc stack is read instead: slower, the same
        // answer. The scan iterator is verified beside arming the probes
        // (both take a CPU for milliseconds, tens under emulation, and
        // neither needs the other); the listing iterator at its first use.
        // The listing runs in this thread, holding the CPU's task storage
        // lock for a moment at each task: a probe that fires on that CPU
        // meanwhile, in an interrupt of this thread, could not make this
        // thread's storage (a frame not recorded, which stops a swap), so
        // it is made now. Best effort: without it such a frame is a
        // counted miss, which only retries a swap.
        let this_thread = nix::unistd::gettid().as_raw();
        let _ = raw_bpf::task_storage_insert(watch.task_frames.as_fd(), this_thread, &TaskFrames::ZERO);
        // The frame listing has no such fallback: the counters themselves
        // need the kernel's BTF (task-local storage).
        let task_scan_btf = task_scan_btf?;
        watch.session_kfuncs = task_scan_btf.session_kfuncs;
        watch.listing_btf_id = watch.configure_frame_listing(&task_scan_btf)?;
        let scan_btf_id = watch.configure_task_scan(&task_scan_btf);
        let programs = std::sync::Arc::clone(watch.object.programs());
        let (scan, armed) = std::thread::scope(|scope| {
            let scan = scope.spawn(move || {
                scan_btf_id.and_then(|btf_id| TaskIterator::load(&programs, SCAN_PROGRAM, btf_id))
            });
            let armed = watch.arm(options.max_active);
            (scan.join().expect("loading does not panic"), armed)
        });
        match scan {
            Ok(iterator) => watch.task_scan = Some(iterator),
            Err(why) => watch.task_scan_refused = Some(why.to_string()),
        }
        armed?;
        if options.attribute_instances {
            watch.time_instances();
        }
        watch.armed_ns = time_in_flight::monotonic_ns();
        watch.seed()?;
        // The tick program serves only threads seeded or unresolved now
        // (no later stack read adds one): most attaches need no kprobe on
        // the tick path, which costs about 100 ms to arm and 70 ms to
        // remove under emulation. Armed after the seed's reads, it can only have missed
        // user-mode ticks, which proves less, never more.
        // Without it (a kernel without the kprobe PMU) such a thread stays
        // unknown until a stack read succeeds: slower, as safe.
        if (!watch.seeded.is_empty() || !watch.unresolved.is_empty())
            && let Err(why) = watch.attach_tick()
        {
            watch.tick_refused = Some(why.to_string());
        }
        drop((func_by_slot, func_by_addr));
        Ok(watch)
    }

    /// The counting programs on every function: one
    /// link per direction for all functions; per-function tracefs probes
    /// where kprobe.multi is missing (no CONFIG_FPROBE) or refuses a
    /// function (it needs every one to be ftrace-able), so that each
    /// refused function is named.
    fn arm(&mut self, max_active: u32) -> Result<(), Error> {
        if let Err(multi) = self.attach_multi() {
            self.multi_refused = Some(multi.to_string());
            ensure_file_descriptors(&self.module, self.functions.len())?;
            // Loaded only here: kprobe.multi loads its own copies.
            self.probe_programs = PROGRAMS
                .iter()
                .map(|name| self.object.programs().load(name, LoadAs::Kprobe))
                .collect::<Result<_, _>>()?;
            self.attach_all(max_active)?;
        }
        Ok(())
    }

    /// Tells the frame listing where a task keeps its id; returns the BTF
    /// id it attaches to.
    fn configure_frame_listing(&mut self, btf: &crate::btf::TaskScanBtf) -> Result<u32, Error> {
        let missing = |what: &str| Error::Io {
            path: "/sys/kernel/btf/vmlinux".into(),
            cause: std::io::Error::other(format!(
                "no {what} in the kernel's BTF: loopswap's counters need a kernel with BTF \
                 (CONFIG_DEBUG_INFO_BTF) and BPF task iterators"
            )),
        };
        let btf_id = btf.iter_task_id.ok_or_else(|| missing("bpf_iter_task"))?;
        let pid = btf
            .task_offsets
            .get("pid")
            .ok_or_else(|| missing("task_struct.pid"))?;
        self.scan_config.set(SCAN_PID_OFFSET, *pid, 0)?;
        Ok(btf_id)
    }

    /// Tells the task iterator the module's text range and where a task
    /// keeps its ids; returns the BTF id it attaches to. The range runs
    /// from the lowest function to 64 KiB past the highest: wider than the
    /// module is harmless (a task found is then checked on its `/proc`
    /// stack, by name and module).
    fn configure_task_scan(&mut self, btf: &crate::btf::TaskScanBtf) -> Result<u32, Error> {
        let offsets = &btf.task_offsets;
        let Some(btf_id) = btf.iter_task_id else {
            return Err(Error::Io {
                path: "/sys/kernel/btf/vmlinux".into(),
                cause: std::io::Error::other("no bpf_iter_task in the kernel's BTF"),
            });
        };
        let (Some(pid), Some(tgid)) = (offsets.get("pid"), offsets.get("tgid")) else {
            return Err(Error::Io {
                path: "/sys/kernel/btf/vmlinux".into(),
                cause: std::io::Error::other("no task_struct.pid and .tgid in the kernel's BTF"),
            });
        };
        if !in_initial_pid_namespace() {
            return Err(Error::Io {
                path: "/proc/self/status".into(),
                cause: std::io::Error::other(
                    "a nested pid namespace: the task scan's ids would not match /proc",
                ),
            });
        }
        // Every address that could be the module's: its symbols and its
        // memory. Wider is harmless (a task found is then checked on its
        // /proc stack by name and module).
        let mut start = self.functions.iter().map(|f| f.address).min().unwrap_or(0);
        let mut end = self.functions.iter().map(|f| f.address).max().unwrap_or(0) + 64 * 1024;
        if let Some((base, size)) = module::memory(&self.module) {
            start = start.min(base);
            end = end.max(base + size);
        }
        let mut slots = vec![
            (SCAN_TEXT_START, start),
            (SCAN_TEXT_END, end),
            (SCAN_PID_OFFSET, *pid),
            (SCAN_TGID_OFFSET, *tgid),
        ];
        // Skipping tasks that have not run needs all five; without them
        // every task is unwound on every scan.
        let still =
            ["nvcsw", "nivcsw", "__state", "on_cpu", "start_time"].map(|name| offsets.get(name).copied());
        if let [
            Some(nvcsw),
            Some(nivcsw),
            Some(state),
            Some(on_cpu),
            Some(start_time),
        ] = still
        {
            slots.extend([
                (SCAN_NVCSW_OFFSET, nvcsw),
                (SCAN_NIVCSW_OFFSET, nivcsw),
                (SCAN_STATE_OFFSET, state),
                (SCAN_ON_CPU_OFFSET, on_cpu),
                (SCAN_START_TIME_OFFSET, start_time),
                (SCAN_SKIP_ENABLED, 1),
            ]);
        }
        for (slot, value) in slots {
            self.scan_config.set(slot, value, 0)?;
        }
        Ok(btf_id)
    }

    /// One pass of the task iterator: tasks with a return address in the
    /// module's text, and tasks whose stacks could not be unwound.
    fn scan_tasks(&mut self) -> Result<(Vec<TaskId>, Vec<TaskId>), Error> {
        let Some(iterator) = &self.task_scan else {
            return Ok((Vec::new(), Vec::new()));
        };
        let bytes = iterator.run()?;
        let (mut inside, mut unreadable) = (Vec::new(), Vec::new());
        for record in bytes.chunks_exact(std::mem::size_of::<ScanRecord>()) {
            let word = |i: usize| u32::from_ne_bytes(record[4 * i..4 * i + 4].try_into().expect("4 bytes"));
            let (tid, pid, flags) = (word(0) as i32, word(1) as i32, word(2));
            if flags & SCAN_IN_MODULE != 0 {
                inside.push((pid, tid));
            } else if flags & SCAN_UNREADABLE != 0 {
                unreadable.push((pid, tid));
            }
        }
        Ok((inside, unreadable))
    }

    /// Tasks whose stacks hold a frame of the module, and tasks whose stacks
    /// cannot be read now: from the task iterator, or from every `/proc`
    /// stack where the iterator is not available.
    fn tasks_to_check(&mut self) -> Result<TasksToCheck, Error> {
        let (tasks, scope) = self.tasks_maybe_inside()?;
        self.last_stack_check = Some(StackCheck { scope, tasks_read: 0 });
        Ok(tasks)
    }

    /// The tasks that may hold a frame of the module, as the stack check
    /// finds them (see `tasks_to_check`), and the check's scope: during a
    /// swap only the tasks the switch program noted, however many tasks
    /// the system has.
    pub fn tasks_maybe_inside(&mut self) -> Result<(TasksToCheck, &'static str), Error> {
        if let Some(tasks) = self.narrow_tasks()? {
            return Ok((tasks, "switched"));
        }
        let tasks = if self.task_scan.is_some() {
            self.scan_tasks()?
        } else {
            let (inside, unknown) = stacks::scan_module(&self.module)?;
            (inside.into_keys().collect(), unknown)
        };
        Ok((tasks, "all"))
    }

    /// Before a swap closes its gate: from now on the switch program notes
    /// every task that stops running with a frame of the module on its
    /// stack (and forgets one that stops clean), then one full scan reads
    /// every task, and the tasks it found inside or could not unwind are
    /// noted too. Until
    /// `end_stack_check`, a task not running now that is not noted has a
    /// clean stack, so the stack check reads only the noted tasks, however
    /// many tasks the system has. Without the task iterator, or if the
    /// switch program cannot be attached, nothing changes: every check
    /// scans every task.
    pub fn begin_stack_check(&mut self) -> Result<(), Error> {
        self.end_stack_check()?;
        if self.task_scan.is_none() {
            return Ok(());
        }
        self.prepare_stack_check();
        let Some(switches) = &mut self.switches else {
            return Ok(());
        };
        // Left from an earlier swap (written while the watch was off).
        let stale: Vec<u32> = switches.inside.keys().filter_map(Result::ok).collect();
        for tid in stale {
            match switches.inside.remove(&tid) {
                // Removed here, not by the program (which counts its own).
                Ok(()) => switches.removed_here += 1,
                Err(MapError::KeyNotFound) => {}
                Err(err) => return Err(err.into()),
            }
        }
        let misses = self.switch_misses()?;
        let lost = Self::sum_per_cpu(&self.events, event::SWITCH_LOST)?;
        self.scan_config.set(SCAN_WATCH_SWITCHES, 1, 0)?;
        let (inside, unreadable) = match self.scan_tasks() {
            Ok(tasks) => tasks,
            Err(err) => {
                self.scan_config.set(SCAN_WATCH_SWITCHES, 0, 0)?;
                return Err(err);
            }
        };
        // A task the scan could not unwind is noted too: it may have been
        // between a switch the program ran before the flag was on and the
        // end of that switch, and so asleep, inside, without a note. One
        // that stops running clean from now on is forgotten.
        let tasks: Vec<TaskId> = inside.into_iter().chain(unreadable).collect();
        let not_added = match &mut self.switches {
            Some(switches) => switches.note_inside(tasks),
            None => tasks,
        };
        self.narrow_check = Some(NarrowCheck {
            tasks: not_added,
            misses,
            lost,
        });
        Ok(())
    }

    /// Attaches the switch program `begin_stack_check` turns on, if it is
    /// not attached yet (a refusal is kept: the checks then scan every
    /// task). Its attach enables the `sched_switch` tracepoint, a text
    /// patch: 46–103 ms under fio on the test VM, during which the workload
    /// stalls. Called with the counters' own attach, that stall is not
    /// just before a gate closes.
    pub fn prepare_stack_check(&mut self) {
        if self.task_scan.is_some() && self.switches.is_none() && self.switches_refused.is_none() {
            match self.attach_switch() {
                Ok(maps) => self.switches = Some(maps),
                Err(why) => self.switches_refused = Some(why.to_string()),
            }
        }
    }

    /// How the last stack check chose its tasks, and how many it read.
    pub fn last_stack_check(&self) -> Option<StackCheck> {
        self.last_stack_check.clone()
    }

    /// After the swap of an instance: every check scans every task again.
    pub fn end_stack_check(&mut self) -> Result<(), Error> {
        if self.narrow_check.take().is_some() {
            self.scan_config.set(SCAN_WATCH_SWITCHES, 0, 0)?;
        }
        Ok(())
    }

    /// The sched_switch program, off until `begin_stack_check`.
    fn attach_switch(&mut self) -> Result<SwitchMaps, Error> {
        // The kernel cuts the program's stacks at this depth: shallower than
        // its buffer, a deep stack would pass for a short one.
        const DEPTH: &str = "/proc/sys/kernel/perf_event_max_stack";
        let depth: usize = std::fs::read_to_string(DEPTH)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        if depth < SWITCH_MAX_FRAMES {
            return Err(Error::Io {
                path: DEPTH.into(),
                cause: std::io::Error::other(format!(
                    "{depth} frames, below the {SWITCH_MAX_FRAMES} the switch program reads"
                )),
            });
        }
        Ok(SwitchMaps {
            inside: BpfHashMap::try_from(self.object.take_map("SWITCHED_INSIDE")?)?,
            removed_here: 0,
            added_here: 0,
            link: RawTracepointLink::attach(self.object.programs(), SWITCH_PROGRAM, c"sched_switch")?,
        })
    }

    /// Runs of the switch program the kernel skipped (another BPF program
    /// was running on that CPU): a task may have stopped unnoted.
    fn switch_misses(&self) -> Result<u64, Error> {
        self.switches
            .as_ref()
            .map_or(Ok(0), |switches| switches.link.misses())
    }

    /// The narrow check's tasks: those noted in the switch program's map
    /// (see `begin_stack_check`) and those that could not be, all as tasks
    /// to read once (see
    /// `confirmed_by_stacks`); `None` (scan every task) outside a swap, if
    /// the switch program skipped a run or lost a record since that scan,
    /// or if tasks kept being added while the map was read.
    fn narrow_tasks(&self) -> Result<Option<TasksToCheck>, Error> {
        let (Some(check), Some(switches)) = (&self.narrow_check, &self.switches) else {
            return Ok(None);
        };
        let complete = || -> Result<bool, Error> {
            Ok(self.switch_misses()? == check.misses
                && Self::sum_per_cpu(&self.events, event::SWITCH_LOST)? == check.lost)
        };
        // Nothing noted now (the count is never below the entries): no walk.
        let noted = switches.noted(&self.live)?;
        if noted == 0 {
            return Ok(complete()?.then(|| (Vec::new(), check.tasks.clone())));
        }
        for _ in 0..NARROW_READ_ATTEMPTS {
            let inserts = Self::sum_per_cpu(&self.events, event::SWITCH_INSERTS)?;
            let mut tasks: BTreeSet<TaskId> = check.tasks.iter().copied().collect();
            for entry in switches.inside.iter() {
                match entry {
                    Ok((_, record)) => {
                        tasks.insert((record.pid as i32, record.tid as i32));
                    }
                    // It ran again and stopped clean meanwhile.
                    Err(MapError::KeyNotFound) => continue,
                    // The walk is not complete: walk every task instead.
                    Err(_) => return Ok(None),
                }
            }
            // Read after the map: a run skipped, a record lost or a task
            // added while it was read counts too (entries are updated in
            // place, so one added is the only one a walk can miss).
            if !complete()? {
                return Ok(None);
            }
            if Self::sum_per_cpu(&self.events, event::SWITCH_INSERTS)? == inserts {
                return Ok(Some((Vec::new(), tasks.into_iter().collect())));
            }
        }
        Ok(None)
    }

    /// A thread on a CPU cannot have its stack read, but a timer tick that
    /// finds it in user mode proves it holds no kernel frame: the tick
    /// program marks such threads (see `resolve`). Detached with `tick`.
    fn attach_tick(&mut self) -> Result<(), Error> {
        self.tick = Some(KprobeLink::attach(
            self.object.programs(),
            "lsw_tick",
            TICK_FUNCTION,
        )?);
        Ok(())
    }

    /// kprobe.multi links on every function: returns first, for the reason
    /// `attach_all` gives.
    fn attach_multi(&mut self) -> Result<(), Error> {
        // Before 6.7 a kprobe.multi link reports no misses (neither returns
        // lost past fprobe's pool nor skipped runs): a count could be wrong
        // without anyone knowing. Those kernels get the tracefs probes.
        let kernel = module::kernel_version();
        if kernel < (6, 7) {
            return Err(Error::Io {
                path: "kprobe.multi".into(),
                cause: std::io::Error::other(format!(
                    "Linux {}.{} reports no kprobe.multi misses (6.7 does)",
                    kernel.0, kernel.1
                )),
            });
        }
        // The exit function is not ftrace-able (and runs only while the
        // module unloads): left out, it stays listed as not probed.
        let (exits, probed): (Vec<&Function>, Vec<&Function>) = self
            .functions
            .iter()
            .partition(|function| function.is_module_exit());
        let addresses: Vec<u64> = probed.iter().map(|function| function.address).collect();
        let exits: Vec<Function> = exits.into_iter().cloned().collect();
        // fprobe follows at most (addresses × CPUs × 2) returns at once,
        // shared by all functions; past that a return is missed (and
        // counted as missed). Listing each address several times grows the
        // pool to at least `max_active`, as a kretprobe's maxactive would.
        let cpus = usize::try_from(
            nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_CONF)
                .ok()
                .flatten()
                .unwrap_or(1),
        )
        .unwrap_or(1)
        .max(1);
        let per_copy = addresses.len() * cpus * 2;
        // From 6.14 fprobe runs on the function graph tracer: no pool to
        // grow, and a repeated address would run the return program once
        // per copy. Only the rethook-based fprobe (before 6.14) is padded.
        let copies = if kernel < (6, 14) {
            (self.max_active as usize).div_ceil(per_copy.max(1)).max(1)
        } else {
            1
        };
        let padded: Vec<u64> = addresses
            .iter()
            .copied()
            .cycle()
            .take(addresses.len() * copies)
            .collect();
        let programs = self.object.programs();
        // One kprobe.session link if the kernel has them: one ftrace update
        // each way, and one ftrace callback per call instead of two.
        if let Some(kfuncs) = self.session_kfuncs {
            let session = match MultiLink::attach_session(programs, SESSION_PROGRAM, &padded, kfuncs) {
                Err(_) if copies > 1 => {
                    MultiLink::attach_session(programs, SESSION_PROGRAM, &addresses, kfuncs)
                }
                attached => attached,
            };
            match session {
                Ok(link) => {
                    self.links = vec![link];
                    self.unprobed = exits;
                    return Ok(());
                }
                Err(why) => self.session_refused = Some(why.to_string()),
            }
        } else {
            self.session_refused =
                Some("no bpf_session_is_return in the kernel's BTF (Linux 6.10 has it)".into());
        }
        let returns = match MultiLink::attach(programs, PROGRAMS[1], &padded, true) {
            Ok(link) => link,
            // A kernel that refuses repeated addresses: the smaller pool.
            Err(_) if copies > 1 => MultiLink::attach(programs, PROGRAMS[1], &addresses, true)?,
            Err(err) => return Err(err),
        };
        let entries = MultiLink::attach(programs, PROGRAMS[0], &addresses, false)?;
        self.links = vec![entries, returns];
        self.unprobed = exits;
        Ok(())
    }

    /// How the functions are probed, for reports.
    pub fn mechanism(&self) -> String {
        let probes = match (&self.multi_refused, &self.session_refused) {
            (None, None) => "kprobe.session".into(),
            (None, Some(why)) => format!("kprobe.multi (kprobe.session refused: {why})"),
            (Some(why), _) => format!("tracefs kprobes (kprobe.multi refused: {why})"),
        };
        let probes = match &self.task_scan_refused {
            None => probes,
            Some(why) => format!("{probes}; every /proc stack read (no task iterator: {why})"),
        };
        let probes = match &self.tick_refused {
            None => probes,
            Some(why) => {
                format!("{probes}; running threads known only from their stacks (no tick program: {why})")
            }
        };
        match &self.switches_refused {
            None => probes,
            Some(why) => format!(
                "{probes}; every task scanned in a swap's stack check (no sched_switch program: {why})"
            ),
        }
    }

    /// A return probe then an entry probe on every function. Returns first:
    /// a thread entering between the two has a return but no entry
    /// (ignored, and found on its stack when seeding), never an entry
    /// without a return (which would stick above zero). A function the
    /// kernel refuses to probe is listed in `unprobed`, never dropped.
    fn attach_all(&mut self, max_active: u32) -> Result<(), Error> {
        let pid = std::process::id();
        let mut attached = Vec::with_capacity(2 * self.functions.len());
        let mut unprobed = Vec::new();
        {
            let [entries, returns] = [0, 1].map(|index| self.probe_programs[index].as_fd());
            for (index, function) in self.functions.iter().enumerate() {
                let target = (self.module.as_str(), function.name.as_str(), function.address);
                let pair = AttachedProbe::attach(
                    &self.tracefs,
                    &format!("lsw{pid}_r{index}"),
                    ProbeKind::Return { max_active },
                    target,
                    returns,
                )
                .and_then(|ret| {
                    let entry = AttachedProbe::attach(
                        &self.tracefs,
                        &format!("lsw{pid}_e{index}"),
                        ProbeKind::Entry,
                        target,
                        entries,
                    )?;
                    Ok([ret, entry])
                });
                match pair {
                    Ok(pair) => attached.extend(pair),
                    Err(Error::Probe { .. }) => unprobed.push(function.clone()),
                    Err(err) => return Err(err),
                }
            }
        }
        let none_probed = unprobed.len() == self.functions.len();
        self.probes.extend(attached);
        self.unprobed = unprobed;
        if none_probed {
            return Err(Error::NoFunctions {
                module: self.module.clone(),
                what: "probeable",
                hint: "",
            });
        }
        Ok(())
    }

    /// Frames of each function on a stack, by representative index.
    fn count_frames(&self, frames: &[stacks::Frame]) -> BTreeMap<u32, u64> {
        let mut counts = BTreeMap::new();
        for frame in frames {
            if let Some(index) = self.index_by_name.get(&frame.function) {
                *counts.entry(*index).or_default() += 1;
            }
        }
        counts
    }

    /// Frames the probes track for `tid`, by representative index (as
    /// stacks show them).
    fn tracked(&self, tid: i32, funcs: impl Iterator<Item = u32>) -> BTreeMap<u32, u64> {
        let mut tracked = BTreeMap::new();
        // A thread gone, or never counted, has no frames; an error reads
        // as none too, which makes the stack's frames count as untracked
        // (seeded): more, never fewer.
        let frames = raw_bpf::task_storage_lookup::<TaskFrames>(self.task_frames.as_fd(), tid)
            .ok()
            .flatten();
        for func in funcs {
            let depth: u64 = frames
                .iter()
                .flat_map(|frames| &frames.frames)
                .filter(|frame| frame.value.depth > 0 && frame.func == func)
                .map(|frame| u64::from(frame.value.depth))
                .sum();
            *tracked.entry(self.representative[func as usize]).or_default() += depth;
        }
        tracked
    }

    /// Frames on `task`'s stack that the probes have not seen enter, read
    /// so that no probe event of that thread happens in between. `Unknown`
    /// when the stack cannot be read or the thread never held still.
    fn untracked_frames(&self, (pid, tid): TaskId) -> Untracked {
        let all = || 0..self.functions.len() as u32;
        for _ in 0..10 {
            let before = self.tracked(tid, all());
            let frames = match stacks::read(pid, tid) {
                Stack::Gone => return Untracked::Gone,
                Stack::Unknown => return Untracked::Unknown,
                Stack::Frames(frames) => frames,
            };
            let after = self.tracked(tid, all());
            if before == after {
                let stack = self.count_frames(&frames);
                return Untracked::Frames(
                    stack
                        .into_iter()
                        .map(|(func, n)| (func, n.saturating_sub(after.get(&func).copied().unwrap_or(0))))
                        .filter(|(_, n)| *n > 0)
                        .collect(),
                );
            }
        }
        Untracked::Unknown
    }

    /// Threads inside before attach: probes never see them enter, so their
    /// frames come from their stacks. A stack that cannot be read yet is
    /// `unresolved` until it can.
    fn seed(&mut self) -> Result<(), Error> {
        let (inside, unknown) = self.tasks_to_check()?;
        // Each read again on its own `/proc` stack: still unreadable, it
        // stays unresolved; gone, it is forgotten.
        for task in inside.into_iter().chain(unknown) {
            self.resolve(task);
        }
        Ok(())
    }

    /// What `task` holds that the probes have not seen enter, keeping the
    /// tick program's watch on it in step: a thread seen in user mode since
    /// its stack became unreadable holds no frame from before attach any
    /// more (it left them all to get there, and every later entry is
    /// tracked), so it needs no stack read; one whose stack cannot be read
    /// now is watched for that.
    fn untracked_now(&mut self, task: TaskId) -> Untracked {
        let outcome = if self.seen_in_user_mode(task) {
            Untracked::Frames(BTreeMap::new())
        } else {
            self.untracked_frames(task)
        };
        match outcome {
            Untracked::Unknown => self.follow_unread(task),
            Untracked::Gone | Untracked::Frames(_) => self.forget_unread(task),
        }
        outcome
    }

    /// Reads `task`'s stack once more; what it holds untracked is seeded.
    /// Frames still on it were there at attach or were entered later (and
    /// are then tracked and subtracted), so one good read bounds the seed.
    fn resolve(&mut self, task: TaskId) {
        match self.untracked_now(task) {
            Untracked::Gone => {
                self.unresolved.remove(&task);
            }
            Untracked::Unknown => {
                self.unresolved.insert(task);
            }
            Untracked::Frames(frames) => {
                self.unresolved.remove(&task);
                if !frames.is_empty() {
                    self.seeded.insert(task, frames);
                }
            }
        }
    }

    /// Asks the tick program to watch for `task` in user mode.
    fn follow_unread(&mut self, (_, tid): TaskId) {
        if self.user_ticks.get(&(tid as u32), 0).is_err() {
            // A full map only means this thread waits for a stack read.
            let _ = self.user_ticks.insert(tid as u32, 0, 0);
        }
    }

    fn forget_unread(&mut self, (_, tid): TaskId) {
        let _ = self.user_ticks.remove(&(tid as u32));
    }

    fn seen_in_user_mode(&self, (_, tid): TaskId) -> bool {
        self.user_ticks.get(&(tid as u32), 0).is_ok_and(|seen| seen != 0)
    }

    /// Follows the seeded threads: a seeded frame can only leave, never
    /// come back (new entries are counted by the probes), so the count is
    /// the minimum of what was seen and what is on the stack now; a stack
    /// that cannot be read now changes nothing. Retries unresolved tasks.
    fn refresh_seeded(&mut self) {
        let tasks: Vec<TaskId> = self.seeded.keys().copied().collect();
        for task in tasks {
            let now = match self.untracked_now(task) {
                Untracked::Unknown => continue,
                Untracked::Gone => BTreeMap::new(),
                Untracked::Frames(frames) => frames,
            };
            let counts = self.seeded.get_mut(&task).expect("key from the map");
            counts.retain(|func, count| {
                *count = (*count).min(now.get(func).copied().unwrap_or(0));
                *count > 0
            });
            if counts.is_empty() {
                self.seeded.remove(&task);
            }
        }
        let unresolved: Vec<TaskId> = self.unresolved.iter().copied().collect();
        for task in unresolved {
            self.resolve(task);
        }
    }

    /// Retries unreadable stacks until every task is accounted for or
    /// `within` has passed (a thread on a CPU is read once it sleeps or is
    /// preempted); what is left stays `unknown` in snapshots.
    pub fn settle(&mut self, within: std::time::Duration) {
        let until = std::time::Instant::now() + within;
        while !self.unresolved.is_empty() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(20));
            self.refresh_seeded();
        }
    }

    /// Tasks whose stacks have not been readable since attach: until they
    /// are, nobody knows whether they are inside the module.
    pub fn unresolved_tasks(&self) -> Vec<i32> {
        self.unresolved.iter().map(|(_, tid)| *tid).collect()
    }

    /// The independent check: on every kernel stack that can be read, each
    /// function of the module has no more frames than the counters hold for
    /// that thread (probe-tracked plus seeded). A thread whose stack shows
    /// frames the counters do not know vetoes quiescence.
    pub fn confirmed_by_stacks(&mut self) -> Result<bool, Error> {
        let (inside, unreadable) = self.tasks_to_check()?;
        // A stack the scan could not unwind (its task was on a CPU) is read
        // once from /proc: still unreadable, or readable with no frame of
        // the module, it holds nothing the counters miss (the probes' view
        // stands, as for any running thread); only a stack that shows a
        // frame of the module is compared with the counters. The narrow
        // check's tasks are all read this way: each was inside, or could
        // not be unwound, when last seen, and whether it is on a CPU now is
        // what this read tells, as a scan now would.
        if let Some(check) = &mut self.last_stack_check {
            check.tasks_read = inside.len() + unreadable.len();
        }
        let unreadable = unreadable.into_iter().filter(|(pid, tid)| {
            matches!(stacks::read_once(*pid, *tid), Stack::Frames(frames) if !self.count_frames(&frames).is_empty())
        });
        let unreadable: Vec<TaskId> = unreadable.collect();
        // Each was seen inside just now: one that cannot be compared vetoes.
        for task in inside.into_iter().chain(unreadable) {
            let untracked = match self.untracked_frames(task) {
                Untracked::Gone => continue,
                Untracked::Unknown => return Ok(false),
                Untracked::Frames(frames) => frames,
            };
            let seeded = self.seeded.get(&task);
            let known = |func: &u32| seeded.and_then(|counts| counts.get(func)).copied().unwrap_or(0);
            if untracked.iter().any(|(func, frames)| *frames > known(func)) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Functions that could run unseen: probes refused, and not the
    /// module's exit function (which runs only while it unloads).
    pub fn blind_functions(&self) -> Vec<String> {
        self.unprobed
            .iter()
            .filter(|function| !function.is_module_exit())
            .map(|function| function.name.clone())
            .collect()
    }

    fn sum_per_cpu(map: &PerCpuArray<MapData, u64>, index: u32) -> Result<u64, Error> {
        Ok(map.get(&index, 0)?.iter().sum())
    }

    /// Every tracked (thread, function) pair with its frames now: the
    /// frame listing's, and the idle tasks' per CPU. With none counted
    /// (the counts are never below the frames recorded) nothing is
    /// listed: the listing visits every task, and while a map syscall
    /// runs the probes skip any call of the module made on that CPU (an
    /// interrupt's: the v2 sampler timer's), a miss that fails the swap.
    fn tracked_entries(&mut self) -> Result<Vec<(InflightKey, InflightValue)>, Error> {
        let mut entries = Vec::new();
        if self.frames_by_instance.all().all(|count| count == 0) {
            return Ok(entries);
        }
        let bytes = self.frame_listing()?.run()?;
        for record in bytes.chunks_exact(std::mem::size_of::<FrameRecord>()) {
            // SAFETY: FrameRecord is plain old data of exactly this size;
            // the read is unaligned.
            let record: FrameRecord = unsafe { record.as_ptr().cast::<FrameRecord>().read_unaligned() };
            entries.push((record.key, record.value));
        }
        for (cpu, frames) in self.idle_frames.get(&0, 0)?.iter().enumerate() {
            for frame in frames.frames.iter().filter(|frame| frame.value.depth > 0) {
                let key = InflightKey {
                    tid: IDLE_TID_FLAG | cpu as u32,
                    func: frame.func,
                };
                entries.push((key, frame.value));
            }
        }
        Ok(entries)
    }

    /// The frame listing, loaded at its first use (a refusal is kept and
    /// given again, not retried).
    fn frame_listing(&mut self) -> Result<&TaskIterator, Error> {
        if self.frame_listing.is_none() {
            if let Some(why) = &self.listing_refused {
                return Err(Error::Io {
                    path: LISTING_PROGRAM.into(),
                    cause: std::io::Error::other(why.clone()),
                });
            }
            match TaskIterator::load(self.object.programs(), LISTING_PROGRAM, self.listing_btf_id) {
                Ok(listing) => self.frame_listing = Some(listing),
                Err(err) => {
                    self.listing_refused = Some(err.to_string());
                    return Err(err);
                }
            }
        }
        Ok(self.frame_listing.as_ref().expect("loaded above"))
    }

    /// The counts now.
    pub fn snapshot(&mut self) -> Result<Snapshot, Error> {
        self.refresh_seeded();
        let entries = self.tracked_entries()?;
        let now = time_in_flight::monotonic_ns();
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
        let mut histograms = vec![TimeHistogram::ZERO; self.functions.len()];
        let mut functions = Vec::with_capacity(self.functions.len());
        for (index, function) in self.functions.iter().enumerate() {
            let calls = Self::sum_per_cpu(&self.calls, index as u32)?;
            // Idle functions have empty histograms: one read fewer each.
            if calls > 0 {
                histograms[index] = self.function_histogram(index as u32)?;
            }
            functions.push(FunctionCount {
                name: function.name.clone(),
                inflight: inflight[index],
                calls,
                time_in_flight: TimeSummary::of(&histograms[index]),
            });
        }
        let (per_instance, unattributed) = attribute(&entries, seeded);
        let mut instance_times = BTreeMap::new();
        for entry in self.time_by_instance.iter() {
            let (id, per_cpu) = match entry {
                Ok(entry) => entry,
                Err(MapError::KeyNotFound) => continue,
                Err(err) => return Err(err.into()),
            };
            // Every instance the core listed has an entry: only those that
            // served a call are reported.
            let histogram = time_in_flight::sum(&per_cpu);
            if histogram.buckets.iter().any(|count| *count > 0) {
                instance_times.insert(id, histogram);
            }
        }
        let ids: BTreeSet<u32> = per_instance
            .keys()
            .chain(instance_times.keys())
            .copied()
            .collect();
        let instances = ids
            .into_iter()
            .map(|id| InstanceCount {
                id,
                inflight: per_instance.get(&id).copied().unwrap_or(0),
                time_in_flight: instance_times.get(&id).and_then(TimeSummary::of),
                quiescent_in: self.estimate_from(&entries, &histograms, Some(id), now),
            })
            .collect();
        Ok(Snapshot {
            module: self.module.clone(),
            inflight: inflight.iter().sum(),
            threads: threads.len() as u64,
            missed: self.missed()?,
            seeded,
            functions,
            unprobed: self
                .unprobed
                .iter()
                .map(|function| function.name.clone())
                .collect(),
            unknown: self.unresolved_tasks(),
            quiescent_in: self.estimate_from(&entries, &histograms, None, now),
            instances,
            unattributed,
        })
    }

    /// Gives each instance the swap core lists a time-in-flight histogram
    /// (the probes only update entries, never create them). Without the
    /// core's list, instances are not timed; functions still are.
    fn time_instances(&mut self) {
        let Ok(state) = crate::control::Control::open().and_then(|mut control| control.list()) else {
            return;
        };
        let Ok(cpus) = aya::util::nr_cpus() else { return };
        for instance in state.instances.iter().take(MAX_TIMED_INSTANCES as usize) {
            let Ok(zeros) = PerCpuValues::try_from(vec![TimeHistogram::ZERO; cpus]) else {
                return;
            };
            // A full map only leaves that instance untimed.
            let _ = self.time_by_instance.insert(instance.id, zeros, 0);
        }
    }

    /// One function's time-in-flight histogram, summed over CPUs.
    fn function_histogram(&self, index: u32) -> Result<TimeHistogram, Error> {
        Ok(time_in_flight::sum(&self.time_by_function.get(&index, 0)?))
    }

    /// When `instance` (or, with `None`, the whole module) will likely be
    /// quiescent, from the frames in flight now and how long calls of
    /// their functions have stayed inside.
    pub fn estimate(&mut self, instance: Option<u32>) -> Result<Estimate, Error> {
        self.refresh_seeded();
        let entries = self.tracked_entries()?;
        let now = time_in_flight::monotonic_ns();
        let mut histograms = vec![TimeHistogram::ZERO; self.functions.len()];
        let busy: BTreeSet<u32> = entries
            .iter()
            .map(|(key, _)| key.func)
            .chain(self.seeded.values().flat_map(|counts| counts.keys().copied()))
            .collect();
        for func in busy {
            if let Some(slot) = histograms.get_mut(func as usize) {
                *slot = self.function_histogram(func)?;
            }
        }
        Ok(self.estimate_from(&entries, &histograms, instance, now))
    }

    /// See [`Self::estimate`]: every frame that counts against `instance`
    /// (attributed to it, or to no known instance, or seeded), each with
    /// its age and its function's histogram.
    fn estimate_from(
        &self,
        entries: &[(InflightKey, InflightValue)],
        histograms: &[TimeHistogram],
        instance: Option<u32>,
        now: u64,
    ) -> Estimate {
        let mut estimate = Estimate {
            unknown: !self.unresolved.is_empty(),
            ..Estimate::default()
        };
        let name = |func: u32| {
            self.functions
                .get(func as usize)
                .map_or("?", |function| function.name.as_str())
        };
        let histogram = |func: u32| histograms.get(func as usize).unwrap_or(&TimeHistogram::ZERO);
        // Only a call that came through the gate is waited out with the
        // gate open: the module's own threads, timers and work (in its
        // other functions) are what `quiesce` stops once the gate closes.
        let entry = |func: u32| {
            self.functions
                .get(func as usize)
                .is_some_and(|function| function.exported)
        };
        for (key, value) in entries {
            let counts = match (instance, value.instance) {
                (None, _) | (_, NO_INSTANCE | MIXED_INSTANCES) => true,
                (Some(id), serving) => id == serving,
            };
            if !counts {
                continue;
            }
            if value.entered_ns == 0 {
                // Entered while time in flight was off: its age is unknown.
                estimate.unknown = true;
                continue;
            }
            let age = now.saturating_sub(value.entered_ns);
            let who = || {
                format!(
                    "{}: thread {} inside for {}",
                    name(key.func),
                    key.tid & !loopswap_common::IDLE_TID_FLAG,
                    time_in_flight::format_ns(age)
                )
            };
            estimate.add(time_in_flight::remaining_ns(histogram(key.func), age), who);
            if entry(key.func) && time_in_flight::overdue(histogram(key.func), age) {
                estimate.add_overdue(age, who);
            }
        }
        // Seeded frames entered before the probes were armed, when is
        // unknown: only calls of their function that outlived the time
        // since then say something; never "as long again", which would
        // measure the attach, not the thread. After a rescan (skipped runs
        // absorbed) a seeded frame is known to be only as old as that.
        let (since, seeded_ns) = match self.reseeded_ns {
            Some(ns) => ("since before a rescan", ns),
            None => ("since before attach", self.armed_ns),
        };
        let age = now.saturating_sub(seeded_ns);
        for ((_, tid), counts) in &self.seeded {
            for func in counts.keys() {
                estimate.unknown = true;
                let histogram = histogram(*func);
                let who = || {
                    format!(
                        "{}: thread {tid} inside {since}, at least {}",
                        name(*func),
                        time_in_flight::format_ns(age)
                    )
                };
                if histogram.max_ns > age {
                    estimate.add(time_in_flight::remaining_ns(histogram, age), who);
                }
                // A call through the gate, inside since before attach, holds
                // every instance's wait inside the gate until it leaves
                // (its instance is unknown), however little is known of
                // its function: waited for with the gate open, it holds
                // no caller.
                if entry(*func) && estimate.inside_since_attach.is_none() {
                    estimate.inside_since_attach = Some(who());
                }
            }
        }
        estimate
    }

    /// What keeps `instance` from quiescence, cheaply (no per-function
    /// call counts): frames of threads serving it or an unknown instance,
    /// and missed events.
    pub fn quiescence(&mut self, instance: u32) -> Result<(u64, u64), Error> {
        self.refresh_seeded();
        let seeded = self.seeded.values().flat_map(BTreeMap::values).sum();
        Ok((
            blocking_frames(
                |slot| self.frames_by_instance.get(slot as usize),
                instance,
                seeded,
            ),
            self.missed()?,
        ))
    }

    /// Takes the ring buffer that receives a record each time a thread
    /// leaves a function entirely (for event-driven waiting), and has the
    /// probes write those records from now on (until then they save the
    /// work: a watch never reads them).
    pub fn take_left_events(&mut self) -> Result<Option<aya::maps::RingBuf<MapData>>, Error> {
        let ring = self.left.take();
        if ring.is_some() {
            self.counter_config.set(CONFIG_NOTIFY_LEFT, 1, 0)?;
        }
        Ok(ring)
    }

    /// Every event that could make a count wrong: kprobe misses (including
    /// kretprobe returns past `maxactive`), programs skipped because another
    /// BPF program was running on the CPU, and map-full / unknown-address
    /// events of our own; since the last `absorb_skipped_runs`.
    pub fn missed(&self) -> Result<u64, Error> {
        Ok(self.miss_totals()?.0.saturating_sub(self.absorbed_misses.0))
    }

    /// Every miss since attach, and the session link's skipped runs among
    /// them (0 without one such link), from one read of each counter.
    fn miss_totals(&self) -> Result<(u64, u64), Error> {
        let mut probe_misses = 0;
        let mut recursion = 0;
        // The tracefs fallback: its probes' misses, and its programs'.
        if !self.probes.is_empty() {
            let profile = tracefs::misses(&self.tracefs)?;
            probe_misses = self.probes.iter().filter_map(|p| profile.get(p.event())).sum();
            for program in &self.probe_programs {
                recursion += raw_bpf::recursion_misses(program.as_fd())?;
            }
        }
        let mut skipped = 0;
        for link in &self.links {
            let (hooks, programs) = link.missed_by_kind()?;
            recursion += hooks + programs;
            if self.links.len() == 1 {
                skipped = programs;
            }
        }
        let total = probe_misses
            + recursion
            + Self::sum_per_cpu(&self.events, event::FRAMES_NOT_RECORDED)?
            + Self::sum_per_cpu(&self.events, event::UNKNOWN_ADDRESS)?;
        Ok((total, skipped))
    }

    /// Makes the counting program's skipped runs since the last call
    /// harmless instead of fatal, counts misses from now on, and says how
    /// many it absorbed; `None` (nothing changed) when the misses include
    /// any other kind, or the probes are not one kprobe.session link: then
    /// only fresh counters can be trusted.
    ///
    /// The kernel skips a run while the CPU is inside a kprobe-type BPF
    /// program or a BPF map syscall (`bpf_prog_active`): an interrupt on
    /// top of one, or a task running while such a syscall sleeps or is
    /// preempted on that CPU. Before Linux 6.14 a skipped entry's return
    /// still runs (later kernels skip it too), so such a call is unseen,
    /// or seen only leaving, which takes a frame of the same function off
    /// the thread's count. Either way the thread may hold more frames than
    /// counted, which is what the stack scan at attach makes up for, and
    /// is redone here (a frame taken off after the scan lowers the count
    /// and the stack's excess alike: the seed stays). A grace period (`membarrier`'s
    /// global command waits for one) ends every interrupt running when
    /// the misses were read; then every thread's user-mode mark is cleared
    /// (a mark from before a skipped entry proves nothing about it), and a
    /// stack scan of every task seeds what each holds beyond its counted
    /// frames, leaving tasks on a CPU unresolved until their stacks are
    /// read. A frame counted whose return was skipped stays counted: late,
    /// never unsafe. Runs skipped from here on are misses again.
    pub fn absorb_skipped_runs(&mut self) -> Result<Option<u64>, Error> {
        if self.links.len() != 1 || !self.probes.is_empty() {
            return Ok(None);
        }
        let (absorbed_total, absorbed_skipped) = self.absorbed_misses;
        let (total, skipped) = self.miss_totals()?;
        let new_skips = skipped.saturating_sub(absorbed_skipped);
        if total.saturating_sub(absorbed_total) != new_skips {
            return Ok(None);
        }
        // SAFETY: a syscall without pointers.
        if unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) } != 0 {
            // nohz_full CPUs refuse the global command.
            return Ok(None);
        }
        self.end_stack_check()?;
        let marked: Vec<u32> = self.user_ticks.keys().filter_map(Result::ok).collect();
        for tid in marked {
            self.user_ticks.insert(tid, 0, 0)?;
        }
        self.reseeded_ns = Some(time_in_flight::monotonic_ns());
        self.seed()?;
        if (!self.seeded.is_empty() || !self.unresolved.is_empty())
            && self.tick.is_none()
            && self.tick_refused.is_none()
            && let Err(why) = self.attach_tick()
        {
            self.tick_refused = Some(why.to_string());
        }
        self.absorbed_misses = (total, skipped);
        Ok(Some(new_skips))
    }

    /// What the missed events were, for the report of a swap they stopped.
    pub fn describe_missed(&self) -> String {
        let mut parts = Vec::new();
        let directions: &[&str] = if self.links.len() == 1 {
            &["entry or return"]
        } else {
            &["entry", "return"]
        };
        for (link, direction) in self.links.iter().zip(directions) {
            if let Ok((hooks, programs)) = link.missed_by_kind() {
                // Absorbed skips are counted only with one link.
                let programs = programs.saturating_sub(self.absorbed_misses.1);
                if hooks > 0 {
                    parts.push(format!("{hooks} {direction} hooks fprobe could not follow"));
                }
                if programs > 0 {
                    parts.push(format!(
                        "{programs} {direction} runs skipped (the CPU was in another BPF program or a BPF syscall)"
                    ));
                }
            }
        }
        if !self.probes.is_empty() {
            parts.push("tracefs probe or program misses".into());
        }
        for (slot, what) in [
            (
                event::FRAMES_NOT_RECORDED,
                "frames not recorded (a thread inside too many functions at once, or no task storage)",
            ),
            (event::UNKNOWN_ADDRESS, "probes at an unknown address"),
        ] {
            if let Ok(count) = Self::sum_per_cpu(&self.events, slot)
                && count > 0
            {
                parts.push(format!("{count} {what}"));
            }
        }
        parts.join(", ")
    }

    pub fn module(&self) -> &str {
        &self.module
    }

    /// Fails once the watched module is no longer loaded and live (its
    /// probes are gone with it; counts would only be zeros).
    pub fn check_still_loaded(&self) -> Result<(), Error> {
        match module::check_live(&self.module) {
            Ok(()) => Ok(()),
            Err(Error::ModuleNotLoaded { .. } | Error::ModuleNotLive { .. }) => {
                Err(Error::UnloadedUnderWatch {
                    module: self.module.clone(),
                })
            }
            Err(err) => Err(err),
        }
    }

    pub fn functions(&self) -> &[Function] {
        &self.functions
    }
}

/// Frames that keep `instance` from quiescence, from the probes' counts by
/// `frames_slot` (`count`) and the frames seeded from stacks: its own, and
/// every frame that could serve any instance. Only a frame of an instance
/// entry point (an exported function, whose first argument names the
/// instance) is counted for that instance alone; every other frame —
/// helpers, timers, work items, interrupt context on top of some thread,
/// nested frames of mixed instances, instances past the counters' table,
/// and the `seeded` frames found on stacks at attach (whose arguments
/// stacks do not show) — counts against every instance. A count read
/// "negative" (it never is: each is raised before its frames are recorded
/// and lowered after) would block too.
///
/// The instance's own count is read first, then slot 0: a frame that
/// becomes mixed is added to slot 0 before it leaves its instance's count,
/// so a reader that sees it gone from the one sees it in the other (the
/// reads are acquire loads). Read the other way round, it could be in
/// neither.
fn blocking_frames(count: impl Fn(u32) -> u64, instance: u32, seeded: u64) -> u64 {
    let own = match frames_slot(instance) {
        0 => 0,
        slot => count(slot),
    };
    let unattributed = count(0);
    unattributed.saturating_add(own).saturating_add(seeded)
}

/// Frames per instance, and frames that could serve any instance, as the
/// listing `entries` and the `seeded` frames show them (for display: the
/// quiescence of a swap reads the probes' counts, see [`blocking_frames`]).
fn attribute(entries: &[(InflightKey, InflightValue)], seeded: u64) -> (BTreeMap<u32, u64>, u64) {
    let mut instances: BTreeMap<u32, u64> = BTreeMap::new();
    let mut unattributed = seeded;
    for (_, value) in entries {
        if frames_slot(value.instance) == 0 {
            unattributed += u64::from(value.depth);
        } else {
            *instances.entry(value.instance).or_default() += u64::from(value.depth);
        }
    }
    (instances, unattributed)
}

/// The probes' table by 16-byte slot of text: the base address (the
/// lowest function's, rounded down to a slot) and, per slot, the index of
/// the function whose entry (or entry + 4, past an ENDBR, as the probes may
/// report it) lies in it. `None` when two functions share a slot or the
/// functions span more than `MAX_FUNCTION_SLOTS` slots: the probes then
/// hash the exact address.
fn function_slots(functions: &[Function]) -> Option<(u64, Vec<Option<u32>>)> {
    let lowest = functions.iter().map(|function| function.address).min()?;
    let base = lowest & !((1u64 << FUNCTION_SLOT_SHIFT) - 1);
    if base == 0 {
        return None;
    }
    let mut table: Vec<Option<u32>> = Vec::new();
    for (index, function) in functions.iter().enumerate() {
        for address in [function.address, function.address + 4] {
            let slot = usize::try_from((address - base) >> FUNCTION_SLOT_SHIFT).ok()?;
            if slot >= MAX_FUNCTION_SLOTS as usize {
                return None;
            }
            if table.len() <= slot {
                table.resize(slot + 1, None);
            }
            match table[slot] {
                Some(other) if other != index as u32 => return None,
                _ => table[slot] = Some(index as u32),
            }
        }
    }
    Some((base, table))
}

/// Each probed function holds two perf event descriptors: raise
/// RLIMIT_NOFILE as far as needed (root may raise the hard limit too, up to
/// `fs.nr_open`), or refuse up front, with nothing attached.
fn ensure_file_descriptors(module: &str, functions: usize) -> Result<(), Error> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    // Two per function, plus maps, programs, tracefs files and stdio.
    let needed = 2 * functions as u64 + 64;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|errno| Error::Io {
        path: "getrlimit(RLIMIT_NOFILE)".into(),
        cause: std::io::Error::from_raw_os_error(errno as i32),
    })?;
    if soft >= needed {
        return Ok(());
    }
    setrlimit(Resource::RLIMIT_NOFILE, needed, hard.max(needed)).map_err(|_| Error::TooFewFileDescriptors {
        module: module.to_owned(),
        needed,
        limit: hard,
    })
}

/// Whether this process sees pids as the kernel does: the task iterator
/// reports init-namespace ids, which /proc of a nested pid namespace
/// would not know.
fn in_initial_pid_namespace() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("NSpid:"))
                .map(|ids| ids.split_whitespace().count() == 1)
        })
        .unwrap_or(false)
}

/// The eBPF object built by build.rs (without its DWARF).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/loopswap.stripped"));

#[cfg(test)]
mod tests {
    fn functions_at(addresses: &[u64]) -> Vec<Function> {
        addresses
            .iter()
            .map(|address| Function {
                name: format!("f{address:x}"),
                names: vec![format!("f{address:x}")],
                address: *address,
                exported: false,
            })
            .collect()
    }

    #[test]
    fn functions_get_a_slot_each_or_the_hash() {
        let base = 0xffff_ffff_c000_0000;
        let (found, table) = function_slots(&functions_at(&[base + 0x40, base + 0x10, base + 0x8c])).unwrap();
        assert_eq!(found, base + 0x10);
        // entry and entry + 4 (past an ENDBR) both find the function.
        assert_eq!(table[0], Some(1));
        assert_eq!(table[3], Some(0));
        assert_eq!(table[(0x8c - 0x10) >> 4], Some(2));
        assert_eq!(table[(0x90 - 0x10) >> 4], Some(2));
        assert_eq!(table.len(), ((0x90 - 0x10) >> 4) + 1);
        assert_eq!(table.iter().flatten().count(), 4);
        // Two functions in one slot, or text too wide: hash instead.
        assert!(function_slots(&functions_at(&[base, base + 8])).is_none());
        assert!(function_slots(&functions_at(&[base, base + 16 * u64::from(MAX_FUNCTION_SLOTS)])).is_none());
        assert!(function_slots(&[]).is_none());
    }

    use super::*;

    #[test]
    fn only_entry_frames_are_attributed_to_their_instance() {
        // As the probes count: instance 0 has one entry frame, instance 1
        // one; a timer (no instance argument) and two nested frames of
        // mixed instances count in slot 0.
        let mut counts = vec![0u64; MAX_COUNTED_INSTANCES as usize + 1];
        counts[frames_slot(0) as usize] = 1;
        counts[frames_slot(1) as usize] = 1;
        counts[frames_slot(NO_INSTANCE) as usize] += 1;
        counts[frames_slot(MIXED_INSTANCES) as usize] += 2;
        let count = |slot: u32| counts[slot as usize];
        // The timer, the mixed frames and two seeded frames block everyone.
        assert_eq!(blocking_frames(count, 1, 2), 1 + 3 + 2);
        assert_eq!(blocking_frames(count, 0, 0), 1 + 3);
        assert_eq!(blocking_frames(count, 7, 0), 3);
        // An id past the table has no count of its own: slot 0 holds its
        // frames, and blocks it.
        assert_eq!(blocking_frames(count, MAX_COUNTED_INSTANCES + 5, 0), 3);
        // A count that would read negative blocks.
        counts[0] = u64::MAX;
        assert_eq!(blocking_frames(|slot: u32| counts[slot as usize], 1, 0), u64::MAX);
    }
}

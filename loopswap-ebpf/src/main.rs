//! Entry/exit counters for every probed function of one kernel module.
//!
//! `lsw_enter` runs on a kprobe at a function's entry and `lsw_exit` on a
//! kretprobe at its return; both find the function from the probed address
//! (`bpf_get_func_ip`), so one program pair serves every function. Each
//! thread's frames are kept in the thread's own task-local storage, and a
//! count of frames per instance beside them.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![feature(asm_experimental_arch)]
#![allow(internal_features)]

use aya_ebpf::{
    EbpfContext as _,
    bindings::task_struct,
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, BPF_NOEXIST},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_task_btf, bpf_get_func_ip, bpf_get_stack, bpf_get_task_stack, bpf_seq_write,
            bpf_task_storage_get,
        },
    },
    macros::{btf_map, kprobe, kretprobe, map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
};
use loopswap_common::{
    CONFIG_NOTIFY_LEFT, CONFIG_SLOT_BASE, CONFIG_TIME_IN_FLIGHT, COUNTER_CONFIG_SLOTS, FRAMES_PER_TASK,
    FUNCTION_INSTANCE_ENTRY, FUNCTION_KNOWN, FUNCTION_SLOT_SHIFT, FrameRecord, FunctionInfo, IDLE_TID_FLAG,
    InflightKey, InflightValue, KFUNC_SESSION_IS_RETURN, MAX_COUNTED_INSTANCES, MAX_FUNCTION_SLOTS,
    MAX_FUNCTIONS, MAX_TIMED_INSTANCES, MAX_UNREAD_THREADS, MIXED_INSTANCES, NO_INSTANCE, SCAN_CONFIG_SLOTS,
    SCAN_IN_MODULE, SCAN_MAX_CLEAN, SCAN_MAX_FRAMES, SCAN_NIVCSW_OFFSET, SCAN_NVCSW_OFFSET,
    SCAN_ON_CPU_OFFSET, SCAN_PID_OFFSET, SCAN_SKIP_ENABLED, SCAN_START_TIME_OFFSET, SCAN_STATE_OFFSET,
    SCAN_TEXT_END, SCAN_TEXT_START, SCAN_TGID_OFFSET, SCAN_UNREADABLE, SCAN_WATCH_SWITCHES,
    SWITCH_MAX_FRAMES, SWITCH_MAX_INSIDE, ScanRecord, TaskFrame, TaskFrames, TimeHistogram, event,
    frames_slot, live, time_bucket,
};

// Hash maps that only userspace, a scan or the switch program fill
// (FUNC_BY_ADDR, USER_TICKS, SCAN_CLEAN, SWITCHED_INSIDE) are allocated as
// they fill (`BPF_F_NO_PREALLOC`): preallocated, these four held about 7 MB
// of kernel memory for every watch, used or not. A failed insert is safe in
// each (see where each is written). The counting itself inserts into no
// hash map: a thread's frames live in its task-local storage.

/// Function entry address (and entry+4 past an ENDBR) → function index.
#[map]
static FUNC_BY_ADDR: HashMap<u64, FunctionInfo> =
    HashMap::with_max_entries(2 * MAX_FUNCTIONS, BPF_F_NO_PREALLOC);
/// The same, by 16-byte slot of the module's text from
/// `COUNTER_CONFIG[CONFIG_SLOT_BASE]`: an array lookup instead of a hash
/// (userspace sizes it to the module's text at load).
#[map]
static FUNC_BY_SLOT: Array<FunctionInfo> = Array::with_max_entries(MAX_FUNCTION_SLOTS, 0);

/// A task-local storage map (`BPF_MAP_TYPE_TASK_STORAGE`), defined in the
/// BTF form the kernel requires of it (aya-ebpf 0.2 has no such type): the
/// loader reads its type, key, value and flags from these fields' types.
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; aya_ebpf::bindings::bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are placeholders the loader reads as BTF; nothing
// dereferences them.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    /// `task`'s value, made (zeroed) first if `create` and it has none.
    ///
    /// # Safety
    /// `task` is a task pointer the verifier knows as one.
    #[inline(always)]
    unsafe fn get(&self, task: *mut task_struct, create: bool) -> *mut T {
        let flags = if create {
            u64::from(BPF_LOCAL_STORAGE_GET_F_CREATE)
        } else {
            0
        };
        // SAFETY: a map of this object and a task pointer (see above).
        unsafe {
            bpf_task_storage_get(
                core::ptr::from_ref(self).cast_mut().cast(),
                task,
                core::ptr::null_mut(),
                flags,
            )
        }
        .cast()
    }
}

/// Each thread's frames inside the module, stored with the thread itself:
/// finding them is a pointer walk from the task, not a hash lookup, and
/// entering or leaving a function inserts and deletes nothing (a thread's
/// value is made at its first call and freed with the thread, or the map).
#[btf_map]
static TASK_FRAMES: TaskStorage<TaskFrames> = TaskStorage::new();

/// The frames of interrupts that run on the idle task (pid 0 on every CPU,
/// which the task iterator does not visit), per CPU.
#[map]
static IDLE_FRAMES: PerCpuArray<TaskFrames> = PerCpuArray::with_max_entries(1, 0);

/// Frames inside the module by the instance they serve (`frames_slot`):
/// the count a swap's quiescence reads, without listing threads. Changed
/// with atomic adds, before a frame is recorded and after it is cleared,
/// so that it is never below the frames recorded; userspace maps it
/// (`BPF_F_MMAPABLE`) and reads it with no syscall.
#[map]
static FRAMES_BY_INSTANCE: Array<u64> = Array::with_max_entries(MAX_COUNTED_INSTANCES + 1, BPF_F_MMAPABLE);

/// One record (the instance id) each time a thread leaves a function
/// entirely: wakes a controller waiting for quiescence without polling.
#[map]
static LEFT: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Calls per function since attach.
#[map]
static CALLS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_FUNCTIONS, 0);

/// Settings of the counters, see `loopswap_common::CONFIG_*`.
#[map]
static COUNTER_CONFIG: Array<u64> = Array::with_max_entries(COUNTER_CONFIG_SLOTS, 0);

/// Time in flight per function (userspace sizes it to the module's
/// functions at load, so it costs memory for those only).
#[map]
static TIME_BY_FUNCTION: PerCpuArray<TimeHistogram> = PerCpuArray::with_max_entries(MAX_FUNCTIONS, 0);

/// Time in flight per instance (outermost frames of instance entry points
/// only). Preallocated (run-time allocation in tracing programs WARNs
/// before Linux 6.1) for a few hundred instances, so that its per-CPU
/// memory stays small. Userspace inserts the ids the swap core lists; an id
/// read from a first argument that is not a listed instance finds no entry
/// and is not recorded.
#[map]
static TIME_BY_INSTANCE: PerCpuHashMap<u32, TimeHistogram> =
    PerCpuHashMap::with_max_entries(MAX_TIMED_INSTANCES, 0);

/// Special events, see `loopswap_common::event`.
#[map]
static EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(event::COUNT, 0);

/// Live entry counts (see `loopswap_common::live`), shared by all CPUs.
#[map]
static LIVE: Array<u64> = Array::with_max_entries(live::COUNT, 0);

/// Adds `delta` (wrapping: -1 as `u64::MAX`) to a shared count with one
/// atomic add (the BPF target has no `AtomicU64::fetch_add`).
#[inline(always)]
fn count_add(counts: &Array<u64>, slot: u32, delta: u64) {
    if let Some(count) = counts.get_ptr_mut(slot) {
        // SAFETY: an 8-byte aligned map value that lives as long as the map;
        // every writer uses atomic adds.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                count, delta,
            )
        };
    }
}

#[inline(always)]
fn live_add(slot: u32, delta: u64) {
    count_add(&LIVE, slot, delta);
}

/// Adds `delta` frames to those serving `instance`.
#[inline(always)]
fn frames_add(instance: u32, delta: u64) {
    count_add(&FRAMES_BY_INSTANCE, frames_slot(instance), delta);
}

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; BPF programs do not nest on one CPU.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn config_on(slot: u32) -> bool {
    COUNTER_CONFIG.get(slot).is_some_and(|on| *on != 0)
}

#[inline(always)]
fn add_time(histogram: *mut TimeHistogram, ns: u64) {
    let bucket = time_bucket(ns);
    // SAFETY: a per-CPU value; BPF programs do not nest on one CPU. The
    // bound check is repeated for the verifier.
    unsafe {
        if bucket < (*histogram).buckets.len() {
            (*histogram).buckets[bucket] += 1;
        }
        if ns > (*histogram).max_ns {
            (*histogram).max_ns = ns;
        }
    }
}

/// Adds the time one outermost frame stayed inside to its function's and
/// its instance's histograms.
#[inline(always)]
fn record_time(func: u32, instance: u32, ns: u64) {
    if let Some(histogram) = TIME_BY_FUNCTION.get_ptr_mut(func) {
        add_time(histogram, ns);
    }
    if instance == NO_INSTANCE || instance == MIXED_INSTANCES {
        return;
    }
    if let Some(histogram) = TIME_BY_INSTANCE.get_ptr_mut(instance) {
        add_time(histogram, ns);
    }
}

/// The probed function (looked up by its address's slot, or by hash) and
/// the current thread's key for it. (kprobe.multi attach cookies would
/// save the lookup, but the kernel finds a cookie by a binary search with
/// an indirect compare per step: measured slower than the hash lookup.)
#[inline(always)]
fn current_key(ctx: *mut core::ffi::c_void) -> Option<(InflightKey, u32)> {
    // SAFETY: valid in kprobe programs (Linux 5.15+); in a return probe it
    // gives the probed function's entry.
    let ip = unsafe { bpf_get_func_ip(ctx) };
    // SAFETY: a plain map lookup of a u64 key.
    let base = COUNTER_CONFIG.get(CONFIG_SLOT_BASE).copied().unwrap_or(0);
    let info = if base != 0 {
        let slot = ip.wrapping_sub(base) >> FUNCTION_SLOT_SHIFT;
        if slot < u64::from(MAX_FUNCTION_SLOTS) {
            FUNC_BY_SLOT
                .get(slot as u32)
                .copied()
                .filter(|info| info.flags & FUNCTION_KNOWN != 0)
        } else {
            None
        }
    } else {
        // SAFETY: a plain map lookup of a u64 key.
        unsafe { FUNC_BY_ADDR.get(ip) }.copied()
    };
    let Some(info) = info else {
        bump(&EVENTS, event::UNKNOWN_ADDRESS);
        return None;
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    let tid = if tid == 0 {
        // SAFETY: helper without arguments.
        IDLE_TID_FLAG | unsafe { bpf_get_smp_processor_id() }
    } else {
        tid
    };
    Some((
        InflightKey {
            tid,
            func: info.index,
        },
        info.flags,
    ))
}

#[kprobe]
pub fn lsw_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx);
    0
}

#[kretprobe]
pub fn lsw_exit(ctx: RetProbeContext) -> u32 {
    exit(ctx.as_ptr());
    0
}

/// Entries and returns in one program on one kprobe.session link (Linux
/// 6.10+): one fprobe on the module's functions instead of two, so one
/// ftrace update to attach or detach, and each call passes one ftrace
/// callback instead of a list of two. The return part runs only for the
/// entries that recorded a frame. (Handing the return its frame's slot in
/// the session cookie measured no faster, and took a third longer to
/// verify.)
#[kprobe]
pub fn lsw_session(ctx: ProbeContext) -> u32 {
    // SAFETY: the kfunc of kprobe.session programs (see `kfunc`), passed
    // the context, which newer kernels' prototype takes and 6.12's
    // ignores.
    if unsafe { kfunc::<u64>(KFUNC_SESSION_IS_RETURN, ctx.as_ptr()) } & 0xff != 0 {
        exit(ctx.as_ptr());
        return 0;
    }
    // 0: run this program again at the function's return.
    if enter(&ctx) { 0 } else { 1 }
}

/// A kfunc called through a placeholder helper number `id` that the loader
/// rewrites into the kfunc's call (by its BTF id in the kernel's BTF):
/// neither aya-ebpf 0.2 nor bpf-linker can emit a kfunc call (aya#432,
/// bpf-linker#317).
///
/// # Safety
/// `id` is one of the `KFUNC_*` placeholders, the kfunc takes at most the
/// program's context, and `T` is (a widening of) what it returns; a `bool`
/// return defines only the low byte.
#[inline(always)]
unsafe fn kfunc<T>(id: u32, ctx: *mut core::ffi::c_void) -> T {
    // SAFETY: see above.
    let call: unsafe extern "C" fn(*mut core::ffi::c_void) -> T =
        unsafe { core::mem::transmute(id as usize) };
    // SAFETY: see above.
    unsafe { call(ctx) }
}

/// Counts the current thread into the probed function; whether a frame
/// was recorded (a return to match is expected).
#[inline(always)]
fn enter(ctx: &ProbeContext) -> bool {
    let Some((key, flags)) = current_key(ctx.as_ptr()) else {
        return false;
    };
    bump(&CALLS, key.func);
    let instance = if flags & FUNCTION_INSTANCE_ENTRY != 0 {
        // The first argument points at a struct lsw_instance; its first
        // field is the id.
        match ctx.arg::<*const u32>(0) {
            // SAFETY: bpf_probe_read_kernel checks the address.
            Some(ptr) => unsafe { bpf_probe_read_kernel(ptr) }.unwrap_or(NO_INSTANCE),
            None => NO_INSTANCE,
        }
    } else {
        NO_INSTANCE
    };
    let idle = key.tid & IDLE_TID_FLAG != 0;
    let Some(frames) = current_frames(idle, true) else {
        bump(&EVENTS, event::FRAMES_NOT_RECORDED);
        return false;
    };
    let (nested, free) = slots_of(frames, key.func);
    if let Some(frame) = frames.frames.get_mut(lowest_slot(nested)) {
        // A nested frame: its outermost frame keeps its entry time. Frames
        // of different instances count against every instance: added
        // there before they leave their instance's count.
        let (depth, serving) = (frame.value.depth, frame.value.instance);
        if serving != instance && serving != MIXED_INSTANCES {
            frames_add(MIXED_INSTANCES, u64::from(depth) + 1);
            frames_add(serving, u64::from(depth).wrapping_neg());
            frame.value.instance = MIXED_INSTANCES;
        } else {
            frames_add(serving, 1);
        }
        frame.value.depth = depth + 1;
        return true;
    }
    let Some(frame) = frames.frames.get_mut(lowest_slot(free)) else {
        bump(&EVENTS, event::FRAMES_NOT_RECORDED);
        return false;
    };
    // Counted before it can be seen; the depth, written last, makes the
    // slot a frame (a listing that reads it reads the rest as written).
    // Only an outermost frame is stamped: a nested one keeps its time.
    frames_add(instance, 1);
    frame.func = key.func;
    frame.value.instance = instance;
    frame.value.entered_ns = if config_on(CONFIG_TIME_IN_FLIGHT) {
        // SAFETY: helper without arguments.
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    };
    // SAFETY: a field of this thread's own frames.
    unsafe { core::ptr::write_volatile(&raw mut frame.value.depth, 1) };
    true
}

/// Counts the current thread out of the probed function (at its return),
/// finding the frame by the function's address.
#[inline(always)]
fn exit(ctx: *mut core::ffi::c_void) {
    match returning_frame(ctx) {
        Some(frame) => leave(frame),
        None => bump(&EVENTS, event::UNMATCHED_RETURN),
    }
}

/// The current thread's frame of the function returning (found by its
/// address).
#[inline(always)]
fn returning_frame(ctx: *mut core::ffi::c_void) -> Option<&'static mut TaskFrame> {
    let (key, _) = current_key(ctx)?;
    let frames = current_frames(key.tid & IDLE_TID_FLAG != 0, false)?;
    let (nested, _) = slots_of(frames, key.func);
    frames.frames.get_mut(lowest_slot(nested))
}

/// 1 if `x` is not 0, else 0, in instructions LLVM cannot see through: as
/// plain Rust it becomes a compare and a branch (BPF has no select).
#[inline(always)]
fn nonzero(x: u64) -> u64 {
    let mut bit = x;
    // SAFETY: register arithmetic only.
    unsafe {
        core::arch::asm!(
            "{0} = -{0}",
            "{0} |= {1}",
            "{0} >>= 63",
            inout(reg) bit,
            in(reg) x,
            options(pure, nomem, nostack),
        );
    }
    bit
}

/// Bit `i` set for each slot `i` holding frames of `func`, and for each
/// free slot, computed without branches: the verifier then walks the slots
/// once, where a branch per slot had it walk their combinations (13.5 ms
/// to verify the session program natively with 8 slots searched by
/// branches).
#[inline(always)]
fn slots_of(frames: &TaskFrames, func: u32) -> (u64, u64) {
    let (mut nested, mut free) = (0, 0);
    for (slot, frame) in frames.frames.iter().enumerate() {
        let used = nonzero(u64::from(frame.value.depth));
        let same = nonzero(u64::from(frame.func ^ func)) ^ 1;
        nested |= (used & same) << slot;
        free |= (used ^ 1) << slot;
    }
    (nested, free)
}

/// `x`, through an instruction LLVM cannot see through, so that it
/// cannot turn the arithmetic on it into compares and branches (or a table
/// lookup in a read-only map).
#[inline(always)]
fn opaque(x: u64) -> u64 {
    let mut value = x;
    // SAFETY: an empty instruction sequence on one register.
    unsafe { core::arch::asm!("/* {0} */", inout(reg) value, options(pure, nomem, nostack)) };
    value
}

/// The index of the lowest bit set in `slots`, without branches; 64 or
/// more when none is.
#[inline(always)]
fn lowest_slot(slots: u64) -> usize {
    let lowest = opaque(slots.isolate_lowest_one());
    let mut index = (nonzero(lowest) ^ 1) << 6;
    for slot in 1..FRAMES_PER_TASK as u64 {
        index += opaque((lowest >> slot) & 1) * slot;
    }
    index as usize
}

/// One frame of `frame`'s function leaves.
#[inline(always)]
fn leave(frame: &mut TaskFrame) {
    let depth = frame.value.depth;
    let instance = frame.value.instance;
    if depth > 1 {
        frame.value.depth = depth - 1;
        frames_add(instance, u64::MAX);
        return;
    }
    // Uncounted once it cannot be seen.
    // SAFETY: a field of this thread's own frames.
    unsafe { core::ptr::write_volatile(&raw mut frame.value.depth, 0) };
    frames_add(instance, u64::MAX);
    let entered_ns = frame.value.entered_ns;
    if entered_ns != 0 {
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        record_time(frame.func, instance, now.saturating_sub(entered_ns));
    }
    // A full ring only delays the waiter until its next poll.
    if config_on(CONFIG_NOTIFY_LEFT) {
        let _ = LEFT.output::<u32>(instance, 0);
    }
}

/// The current thread's frames (the idle task's are per CPU), made first
/// if `create` and it has none yet.
#[inline(always)]
fn current_frames(idle: bool, create: bool) -> Option<&'static mut TaskFrames> {
    let frames = if idle {
        IDLE_FRAMES.get_ptr_mut(0)?
    } else {
        // SAFETY: the helper's task is the one the verifier knows as one.
        unsafe { TASK_FRAMES.get(bpf_get_current_task_btf(), create) }
    };
    // SAFETY: a map value (this thread's, or this CPU's idle task's), which
    // only this thread writes; null checked.
    unsafe { frames.as_mut() }
}

/// Threads whose kernel stacks could not be read (they were on a CPU),
/// added by userspace with 0; set to 1 once a timer tick finds the thread
/// in user mode, where it holds no kernel frame at all.
#[map]
static USER_TICKS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_UNREAD_THREADS, BPF_F_NO_PREALLOC);

/// On `account_process_tick(p, user_tick)`, run by every timer tick in the
/// interrupted thread's context.
#[kprobe]
pub fn lsw_tick(ctx: ProbeContext) -> u32 {
    if ctx.arg::<i32>(1).unwrap_or(0) == 0 {
        return 0;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(seen) = USER_TICKS.get_ptr_mut(tid) {
        // SAFETY: a u32 slot of our own map; racing writers all write 1.
        unsafe { *seen = 1 };
    }
    0
}

/// Settings of the stack scan, written by userspace before each run:
/// `[text_start, text_end, offset of task_struct.pid, of task_struct.tgid]`.
#[map]
static SCAN_CONFIG: Array<u64> = Array::with_max_entries(SCAN_CONFIG_SLOTS, 0);

/// Tasks found clean (no frame of the module, stack readable, not running)
/// by a scan → [their context-switch count then, their start time] (the
/// start time tells a task from a later one that reuses its id).
#[map]
static SCAN_CLEAN: HashMap<u32, [u64; 2]> = HashMap::with_max_entries(SCAN_MAX_CLEAN, BPF_F_NO_PREALLOC);

/// One task's kernel stack, as `bpf_get_task_stack` writes it.
#[map]
static SCAN_STACK: PerCpuArray<[u64; SCAN_MAX_FRAMES]> = PerCpuArray::with_max_entries(1, 0);

/// What a stack of `bytes` bytes (as `bpf_get_task_stack` or
/// `bpf_get_stack` returned) shows: `SCAN_UNREADABLE` if nothing was read,
/// `SCAN_IN_MODULE` if a return address lies in the module's text (or, with
/// `full_is_inside`, if it fills the buffer), else 0.
///
/// # Safety
/// `stack` points at a per-CPU buffer of `N` frames.
#[inline(always)]
unsafe fn stack_flags<const N: usize>(stack: *const [u64; N], bytes: i64, full_is_inside: bool) -> u32 {
    if bytes <= 0 {
        return SCAN_UNREADABLE;
    }
    let frames = (bytes as usize / 8).min(N);
    if full_is_inside && frames == N {
        return SCAN_IN_MODULE;
    }
    let (start, end) = (config(SCAN_TEXT_START), config(SCAN_TEXT_END));
    let span = end.wrapping_sub(start);
    // Every frame is looked at, without branches: the verifier then walks
    // the loop once instead of one path per frame (9,360 instructions
    // processed for the scan by branches, a quarter of the attach's
    // verification). Frames past the unwound ones are masked out.
    let mut inside = 0;
    for i in 0..N {
        // SAFETY: i is within the buffer.
        let ip = unsafe { (*stack)[i] };
        let unwound = below(i as u64, frames as u64);
        inside |= unwound & below(ip.wrapping_sub(start), span);
    }
    if inside != 0 { SCAN_IN_MODULE } else { 0 }
}

/// 1 if `x < y` (unsigned), else 0, without branches (Hacker's Delight
/// 2-12: the borrow out of `x - y`), through `opaque` so that LLVM cannot
/// turn it back into a compare and a branch.
#[inline(always)]
fn below(x: u64, y: u64) -> u64 {
    let difference = opaque(x.wrapping_sub(y));
    ((!x & y) | (!(x ^ y) & difference)) >> 63
}

/// `struct bpf_iter_meta`: the iterator's output file comes first.
#[repr(C)]
struct IterMeta {
    seq: *mut aya_ebpf::bindings::seq_file,
}

#[inline(always)]
fn config(slot: u32) -> u64 {
    SCAN_CONFIG.get(slot).copied().unwrap_or(0)
}

/// A task iterator's context (`iter/task`): its output, the task, and the
/// task's address as a plain number (the verifier forbids variable offsets
/// on a typed task pointer, so fields are read through the number); `None`
/// past the last task.
#[inline(always)]
fn iterator_task(ctx: *const u64) -> Option<(*const IterMeta, *mut task_struct, u64)> {
    // SAFETY: the iterator's context is (meta, task), both kernel pointers
    // the verifier types from the attach point's BTF.
    let (meta, task) = unsafe { (*ctx as *const IterMeta, *ctx.add(1) as *mut task_struct) };
    if task.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address.
    let address: u64 = unsafe { bpf_probe_read_kernel(ctx.add(1)) }.unwrap_or(0);
    Some((meta, task, address))
}

/// The field of the task at `address` whose offset `SCAN_CONFIG[slot]`
/// holds.
#[inline(always)]
fn task_field<T>(address: u64, slot: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel((address + config(slot)) as *const T) }.ok()
}

/// Writes `record` to a task iterator's output.
#[inline(always)]
fn write_record<T>(meta: *const IterMeta, record: &T) {
    // SAFETY: meta and its seq come from the iterator's context; record is
    // a plain value of the size given.
    unsafe {
        bpf_seq_write(
            (*meta).seq,
            core::ptr::from_ref(record).cast(),
            core::mem::size_of::<T>() as u32,
        );
    }
}

/// A task iterator (`iter/task`): writes a [`ScanRecord`] for every task
/// whose kernel stack holds a return address in the module's text, and for
/// every task whose stack could not be unwound (running on a CPU), so that
/// userspace reads `/proc` stacks of those few tasks only, not of all.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
extern "C" fn lsw_scan_tasks(ctx: *const u64) -> i32 {
    let Some((meta, task, address)) = iterator_task(ctx) else {
        return 0;
    };
    let read = |slot: u32| task_field::<u32>(address, slot);
    let read_long = |slot: u32| task_field::<u64>(address, slot);
    let tid = read(SCAN_PID_OFFSET).unwrap_or(0);
    // A task that is not running and has not been switched out since a
    // scan found no frame of the module on its stack has not run since:
    // its stack is the one that scan unwound. Every switch away from a
    // task counts in nvcsw or nivcsw; a task that ran and is not running
    // now was switched away.
    let switches = if config(SCAN_SKIP_ENABLED) != 0 {
        match (
            read_long(SCAN_NVCSW_OFFSET),
            read_long(SCAN_NIVCSW_OFFSET),
            read(SCAN_STATE_OFFSET),
            read(SCAN_ON_CPU_OFFSET),
            read_long(SCAN_START_TIME_OFFSET),
        ) {
            (Some(voluntary), Some(involuntary), Some(state), Some(on_cpu), Some(start))
                if state != 0 && on_cpu == 0 =>
            {
                Some([voluntary.wrapping_add(involuntary), start])
            }
            _ => None,
        }
    } else {
        None
    };
    if let Some(switches) = switches {
        // SAFETY: a plain lookup of a u32 key.
        if unsafe { SCAN_CLEAN.get(tid) }.is_some_and(|seen| *seen == switches) {
            return 0;
        }
    }
    let Some(stack) = SCAN_STACK.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: a per-CPU buffer of the size given.
    let bytes = unsafe { bpf_get_task_stack(task, stack.cast(), (SCAN_MAX_FRAMES * 8) as u32, 0) };
    // SAFETY: the buffer bpf_get_task_stack just wrote.
    let flags = unsafe { stack_flags(stack, bytes, false) };
    match switches {
        // Clean and still: skip it next time unless it runs meanwhile. A
        // full map only means it is unwound again.
        Some(switches) if flags == 0 => {
            let _ = SCAN_CLEAN.insert(tid, switches, 0);
        }
        _ => {
            let _ = SCAN_CLEAN.remove(tid);
        }
    }
    if flags == 0 {
        return 0;
    }
    let record = ScanRecord {
        tid,
        pid: read(SCAN_TGID_OFFSET).unwrap_or(0),
        flags,
        pad: 0,
    };
    write_record(meta, &record);
    0
}

/// A task iterator (`iter/task`) that lists every frame the probes
/// recorded in tasks' storage, one [`FrameRecord`] each. (Frames of the
/// idle tasks, which it does not visit, userspace reads from
/// `IDLE_FRAMES`.)
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
extern "C" fn lsw_list_frames(ctx: *const u64) -> i32 {
    let Some((meta, task, address)) = iterator_task(ctx) else {
        return 0;
    };
    // SAFETY: a task the iterator gives; no storage is made.
    let Some(frames) = (unsafe { TASK_FRAMES.get(task, false).as_ref() }) else {
        return 0;
    };
    let tid = task_field::<u32>(address, SCAN_PID_OFFSET).unwrap_or(0);
    for frame in &frames.frames {
        // Read first: the rest of a slot is written before its depth.
        // SAFETY: a field of a map value.
        let depth = unsafe { core::ptr::read_volatile(&raw const frame.value.depth) };
        if depth == 0 {
            continue;
        }
        let record = FrameRecord {
            key: InflightKey {
                tid,
                func: frame.func,
            },
            value: InflightValue {
                depth,
                instance: frame.value.instance,
                entered_ns: frame.value.entered_ns,
            },
        };
        write_record(meta, &record);
    }
    0
}

/// Tasks switched out, while a swap watches switches, with a return
/// address in the module's text on their stacks (or a stack that could not
/// be read, or so deep that it may hide one): tid → record. A task switched
/// out clean is removed. With the full scan just before the swap's gate
/// closed, these are every task not on a CPU whose stack may hold a frame
/// of the module.
#[map]
static SWITCHED_INSIDE: HashMap<u32, ScanRecord> =
    HashMap::with_max_entries(SWITCH_MAX_INSIDE, BPF_F_NO_PREALLOC);

/// The switched-out task's kernel stack, as `bpf_get_stack` writes it.
#[map]
static SWITCH_STACK: PerCpuArray<[u64; SWITCH_MAX_FRAMES]> = PerCpuArray::with_max_entries(1, 0);

/// On `sched_switch(preempt, prev, next, prev_state)`, in `prev`'s context:
/// `prev` stops running with the stack read here until it runs again, so
/// the stack check during a swap's blackout reads only the tasks recorded
/// here instead of walking every task in the system.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn lsw_switch(ctx: RawTracePointContext) -> i32 {
    if config(SCAN_WATCH_SWITCHES) == 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    if tid == 0 {
        // The idle task: it never enters a module.
        return 0;
    }
    let Some(stack) = SWITCH_STACK.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: a per-CPU buffer of the size given.
    let bytes = unsafe { bpf_get_stack(ctx.as_ptr(), stack.cast(), (SWITCH_MAX_FRAMES * 8) as u32, 0) };
    // SAFETY: the buffer bpf_get_stack just wrote. A stack as deep as
    // the buffer may hide a frame of the module: it counts as inside.
    let flags = unsafe { stack_flags(stack, bytes, true) };
    if flags == 0 {
        if SWITCHED_INSIDE.remove(tid).is_ok() {
            live_add(live::SWITCHED, u64::MAX);
        }
        return 0;
    }
    // Updated in place when present: re-inserting would move the entry in
    // its bucket, where a walk of the map in progress could miss it.
    let record = ScanRecord {
        tid,
        pid: (pid_tgid >> 32) as u32,
        flags,
        pad: 0,
    };
    if let Some(entry) = SWITCHED_INSIDE.get_ptr_mut(tid) {
        // SAFETY: only this task's own switches write its entry.
        unsafe { *entry = record };
        return 0;
    }
    // Counted before the insert: a reader that finds the count unchanged
    // after its walk knows no entry was added since it began.
    bump(&EVENTS, event::SWITCH_INSERTS);
    live_add(live::SWITCHED, 1);
    if SWITCHED_INSIDE.insert(tid, record, BPF_NOEXIST as u64).is_err() {
        // Lost counted first: a reader that sees the count back down sees
        // the loss too.
        bump(&EVENTS, event::SWITCH_LOST);
        live_add(live::SWITCHED, u64::MAX);
    }
    0
}

/// The probe benchmark's baseline: the cost of a kprobe/kretprobe pair
/// running programs that do nothing (`loopswap bench-probe`).
#[kprobe]
pub fn lsw_noop_enter(_ctx: ProbeContext) -> u32 {
    0
}

#[kretprobe]
pub fn lsw_noop_exit(_ctx: RetProbeContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

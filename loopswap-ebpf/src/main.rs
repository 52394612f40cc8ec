//! Entry/exit counters for every probed function of one kernel module.
//!
//! `lsw_enter` runs on a kprobe at a function's entry and `lsw_exit` on a
//! kretprobe at its return; both find the function from the probed address
//! (`bpf_get_func_ip`), so one program pair serves every function.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

use aya_ebpf::{
    EbpfContext as _,
    bindings::task_struct,
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_get_func_ip, bpf_get_stack, bpf_get_task_stack, bpf_seq_write},
    },
    macros::{kprobe, kretprobe, map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
};
use loopswap_common::{
    CONFIG_NOTIFY_LEFT, CONFIG_SLOT_BASE, CONFIG_TIME_IN_FLIGHT, COUNTER_CONFIG_SLOTS,
    FUNCTION_INSTANCE_ENTRY, FUNCTION_KNOWN, FUNCTION_SLOT_SHIFT, FunctionInfo, IDLE_TID_FLAG, InflightKey,
    InflightValue, MAX_FUNCTION_SLOTS, MAX_FUNCTIONS, MAX_INFLIGHT_ENTRIES, MAX_TIMED_INSTANCES,
    MAX_UNREAD_THREADS, MIXED_INSTANCES, NO_INSTANCE, SCAN_CONFIG_SLOTS, SCAN_IN_MODULE, SCAN_MAX_CLEAN,
    SCAN_MAX_FRAMES, SCAN_NIVCSW_OFFSET, SCAN_NVCSW_OFFSET, SCAN_ON_CPU_OFFSET, SCAN_PID_OFFSET,
    SCAN_SKIP_ENABLED, SCAN_START_TIME_OFFSET, SCAN_STATE_OFFSET, SCAN_TEXT_END, SCAN_TEXT_START,
    SCAN_TGID_OFFSET, SCAN_UNREADABLE, SCAN_WATCH_SWITCHES, SWITCH_MAX_FRAMES, SWITCH_MAX_INSIDE, ScanRecord,
    TimeHistogram, event, live, time_bucket,
};

// Hash maps that only userspace, a scan or the switch program fill
// (FUNC_BY_ADDR, USER_TICKS, SCAN_CLEAN, SWITCHED_INSIDE) are allocated as
// they fill (`BPF_F_NO_PREALLOC`): preallocated, these four held about 7 MB
// of kernel memory for every watch, used or not. A failed insert is safe in
// each (see where each is written). The in-flight map, written on every
// call, stays preallocated.

/// Function entry address (and entry+4 past an ENDBR) → function index.
#[map]
static FUNC_BY_ADDR: HashMap<u64, FunctionInfo> =
    HashMap::with_max_entries(2 * MAX_FUNCTIONS, BPF_F_NO_PREALLOC);
/// The same, by 16-byte slot of the module's text from
/// `COUNTER_CONFIG[CONFIG_SLOT_BASE]`: an array lookup instead of a hash
/// (userspace sizes it to the module's text at load).
#[map]
static FUNC_BY_SLOT: Array<FunctionInfo> = Array::with_max_entries(MAX_FUNCTION_SLOTS, 0);

/// (thread, function) → frames of that function the thread is inside now.
#[map]
static INFLIGHT: HashMap<InflightKey, InflightValue> = HashMap::with_max_entries(MAX_INFLIGHT_ENTRIES, 0);

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

/// Adds `delta` (wrapping: -1 as `u64::MAX`) to a live count with one
/// atomic add (the BPF target has no `AtomicU64::fetch_add`).
#[inline(always)]
fn live_add(slot: u32, delta: u64) {
    if let Some(count) = LIVE.get_ptr_mut(slot) {
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
    let Some((key, flags)) = current_key(ctx.as_ptr()) else {
        return 0;
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
    // SAFETY: helper without arguments.
    let entered_ns = if config_on(CONFIG_TIME_IN_FLIGHT) {
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    };
    let value = InflightValue {
        depth: 1,
        instance,
        entered_ns,
    };
    // Insert first: the thread is rarely inside this function already, and
    // one hash operation is cheaper than a lookup then an insert. Counted
    // live before it can be seen, uncounted if it was not added.
    live_add(live::INFLIGHT, 1);
    if INFLIGHT.insert(key, value, BPF_NOEXIST as u64).is_err() {
        match INFLIGHT.get_ptr_mut(key) {
            // A nested frame: its outermost frame keeps its entry time.
            // SAFETY: only this thread writes its own key (see InflightKey).
            Some(value) => unsafe {
                (*value).depth += 1;
                if (*value).instance != instance {
                    (*value).instance = MIXED_INSTANCES;
                }
            },
            None => bump(&EVENTS, event::INFLIGHT_MAP_FULL),
        }
        // After the miss is counted: a reader that sees the count back
        // down sees the miss too.
        live_add(live::INFLIGHT, u64::MAX);
    }
    0
}

#[kretprobe]
pub fn lsw_exit(ctx: RetProbeContext) -> u32 {
    let Some((key, _)) = current_key(ctx.as_ptr()) else {
        return 0;
    };
    match INFLIGHT.get_ptr_mut(key) {
        Some(value) => {
            // SAFETY: only this thread writes its own key (see InflightKey).
            let (depth, instance, entered_ns) =
                unsafe { ((*value).depth, (*value).instance, (*value).entered_ns) };
            if depth <= 1 {
                // Uncounted once it cannot be seen.
                if INFLIGHT.remove(key).is_ok() {
                    live_add(live::INFLIGHT, u64::MAX);
                }
                if entered_ns != 0 {
                    // SAFETY: helper without arguments.
                    let now = unsafe { bpf_ktime_get_ns() };
                    record_time(key.func, instance, now.saturating_sub(entered_ns));
                }
                // A full ring only delays the waiter until its next poll.
                if config_on(CONFIG_NOTIFY_LEFT) {
                    let _ = LEFT.output::<u32>(instance, 0);
                }
            } else {
                unsafe { (*value).depth -= 1 };
            }
        }
        None => bump(&EVENTS, event::UNMATCHED_RETURN),
    }
    0
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
    for i in 0..N {
        if i >= frames {
            break;
        }
        // SAFETY: i is within the buffer.
        let ip = unsafe { (*stack)[i] };
        if ip >= start && ip < end {
            return SCAN_IN_MODULE;
        }
    }
    0
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

/// A task iterator (`iter/task`): writes a [`ScanRecord`] for every task
/// whose kernel stack holds a return address in the module's text, and for
/// every task whose stack could not be unwound (running on a CPU), so that
/// userspace reads `/proc` stacks of those few tasks only, not of all.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
extern "C" fn lsw_scan_tasks(ctx: *const u64) -> i32 {
    // SAFETY: the iterator's context is (meta, task), both kernel pointers
    // the verifier types from the attach point's BTF.
    let (meta, task) = unsafe { (*ctx as *const IterMeta, *ctx.add(1) as *mut task_struct) };
    if task.is_null() {
        return 0;
    }
    // The verifier forbids variable offsets on a typed task pointer: read
    // the pointer's value as a plain number, and fields through it.
    // SAFETY: bpf_probe_read_kernel checks every address.
    let address: u64 = unsafe { bpf_probe_read_kernel(ctx.add(1)) }.unwrap_or(0);
    let read = |slot: u32| -> Option<u32> {
        // SAFETY: as above.
        unsafe { bpf_probe_read_kernel((address + config(slot)) as *const u32) }.ok()
    };
    let read_long = |slot: u32| -> Option<u64> {
        // SAFETY: as above.
        unsafe { bpf_probe_read_kernel((address + config(slot)) as *const u64) }.ok()
    };
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
    // SAFETY: meta and its seq come from the iterator's context.
    unsafe {
        bpf_seq_write(
            (*meta).seq,
            (&raw const record).cast(),
            core::mem::size_of::<ScanRecord>() as u32,
        );
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

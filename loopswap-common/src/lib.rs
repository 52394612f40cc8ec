//! Types shared by the loopswap eBPF programs and the userspace controller.
//!
//! Every map key and value is `#[repr(C)]` with explicit fields only, so the
//! layout the kernel sees is the layout userspace reads: no implicit padding.
#![no_std]

/// Most functions one watch can probe; bounds the per-function arrays.
pub const MAX_FUNCTIONS: u32 = 4096;

/// Distinct functions one thread can be counted inside at once (nested
/// frames of one function share a slot). A thread nested deeper has its
/// extra frames counted as not recorded (`event::FRAMES_NOT_RECORDED`).
pub const FRAMES_PER_TASK: usize = 6;

/// Instances with a frame counter of their own in `FRAMES_BY_INSTANCE`
/// (ids below this; the swap core allocates the lowest free id). Frames of
/// any other id count against every instance.
pub const MAX_COUNTED_INSTANCES: u32 = 4095;

/// The `FRAMES_BY_INSTANCE` slot that counts frames serving `instance`:
/// slot 0 counts every frame that serves no known instance
/// ([`NO_INSTANCE`], [`MIXED_INSTANCES`], ids past the table).
#[inline(always)]
pub fn frames_slot(instance: u32) -> u32 {
    if instance < MAX_COUNTED_INSTANCES {
        instance + 1
    } else {
        0
    }
}

/// Most threads with unreadable stacks followed at once (`USER_TICKS`).
pub const MAX_UNREAD_THREADS: u32 = 16384;

/// The kernel function a timer tick calls with the interrupted task and
/// whether it was in user mode: `account_process_tick(p, user_tick)`.
pub const TICK_FUNCTION: &str = "account_process_tick";

/// One thread inside one probed function, as the frame listing names it.
///
/// Only the thread itself (on whichever CPU it runs) ever changes its own
/// frames, so the eBPF side needs no atomics on them. Interrupt context
/// that runs on the idle task (pid 0 on every CPU, which the task iterator
/// does not visit) keeps its frames per CPU and is listed as
/// [`IDLE_TID_FLAG`]` | cpu`, keeping that single-writer rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InflightKey {
    /// Kernel thread id (the task's pid), or `IDLE_TID_FLAG | cpu`.
    pub tid: u32,
    /// Index of the function in the watch's function table.
    pub func: u32,
}

/// The frames of one function that one thread is inside.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InflightValue {
    /// Frames of the function this thread is inside.
    pub depth: u32,
    /// The lsw instance id the outermost frame works for (read from its
    /// first argument) if the function is an instance entry point, else
    /// [`NO_INSTANCE`]; [`MIXED_INSTANCES`] if nested frames disagree.
    pub instance: u32,
    /// When the outermost frame entered (`bpf_ktime_get_ns`, i.e.
    /// CLOCK_MONOTONIC), or 0 when time in flight is not being measured.
    pub entered_ns: u64,
}

/// One slot of a thread's task-local frames (`TASK_FRAMES`): a function
/// and the frames of it the thread is inside (none when `value.depth` is
/// 0, and the slot is free).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskFrame {
    pub func: u32,
    pub pad: u32,
    pub value: InflightValue,
}

/// Every function one thread is inside: the value of `TASK_FRAMES` (and of
/// the per-CPU `IDLE_FRAMES`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskFrames {
    pub frames: [TaskFrame; FRAMES_PER_TASK],
}

impl TaskFrames {
    pub const ZERO: Self = Self {
        frames: [TaskFrame {
            func: 0,
            pad: 0,
            value: InflightValue {
                depth: 0,
                instance: 0,
                entered_ns: 0,
            },
        }; FRAMES_PER_TASK],
    };
}

/// One record of the frame listing (`lsw_list_frames`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRecord {
    pub key: InflightKey,
    pub value: InflightValue,
}

/// The helper number the eBPF programs call in place of the kfunc
/// `bpf_session_is_return()` (Linux 6.10); the loader rewrites each such
/// call into a call of the kfunc (no helper has a number anywhere near
/// it).
pub const KFUNC_SESSION_IS_RETURN: u32 = 0x7ff0_0001;

/// Buckets of a time-in-flight histogram: bucket `b` counts calls that
/// stayed inside for `[2^b, 2^(b+1))` ns (bucket 0 also counts 0 ns); the
/// last bucket also counts every longer call (2^39 ns is about 9 minutes).
pub const TIME_BUCKETS: usize = 40;

/// How long calls stayed inside a function (or served an instance): a log2
/// histogram of the outermost frames that returned, kept per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeHistogram {
    pub buckets: [u64; TIME_BUCKETS],
    /// The longest single call, in ns.
    pub max_ns: u64,
}

impl TimeHistogram {
    pub const ZERO: Self = Self {
        buckets: [0; TIME_BUCKETS],
        max_ns: 0,
    };
}

/// The histogram bucket of a duration: `floor(log2(ns))`, at most the last.
/// Written without loops or a count-leading-zeros instruction, which BPF
/// lacks.
#[inline(always)]
pub fn time_bucket(ns: u64) -> usize {
    let mut value = ns;
    let mut bucket = 0;
    for shift in [32u32, 16, 8, 4, 2, 1] {
        if value >> shift != 0 {
            value >>= shift;
            bucket += shift as usize;
        }
    }
    if bucket >= TIME_BUCKETS {
        TIME_BUCKETS - 1
    } else {
        bucket
    }
}

/// Slots of the `COUNTER_CONFIG` array, written by userspace at attach.
/// Non-zero: stamp entries and keep time-in-flight histograms.
pub const CONFIG_TIME_IN_FLIGHT: u32 = 0;
/// Non-zero: a waiter reads `LEFT`; write a record each time a thread
/// leaves the module (a watch has no waiter, and saves that work).
pub const CONFIG_NOTIFY_LEFT: u32 = 1;
/// Non-zero: the lowest function's address, rounded down to 16, and the
/// probes find functions in `FUNC_BY_SLOT` (one slot per 16 bytes of text
/// from there) instead of hashing the address in `FUNC_BY_ADDR`.
pub const CONFIG_SLOT_BASE: u32 = 2;
pub const COUNTER_CONFIG_SLOTS: u32 = 3;

/// Slots of `FUNC_BY_SLOT` at most: 1 MiB of module text. A module whose
/// functions span more, or whose functions share a 16-byte slot, is looked
/// up by hash instead.
pub const MAX_FUNCTION_SLOTS: u32 = 1 << 16;
/// log2 of the bytes of text per `FUNC_BY_SLOT` slot.
pub const FUNCTION_SLOT_SHIFT: u32 = 4;

/// Most instances with a time-in-flight histogram (preallocated per CPU:
/// 256 x 328 bytes, 84 KiB per CPU). Instances past it are not timed.
pub const MAX_TIMED_INSTANCES: u32 = 256;

/// The frame works for no known instance.
pub const NO_INSTANCE: u32 = u32::MAX;
/// Nested frames of one function work for different instances.
pub const MIXED_INSTANCES: u32 = u32::MAX - 1;

/// The value of the function table, keyed by entry address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunctionInfo {
    /// Index in the watch's function table.
    pub index: u32,
    /// `FUNCTION_*` flags.
    pub flags: u32,
}

/// The function is an instance entry point: its first argument points at a
/// `struct lsw_instance`, whose first field is the instance id.
pub const FUNCTION_INSTANCE_ENTRY: u32 = 1;
/// The `FUNC_BY_SLOT` slot holds a function (an empty slot is all zeros).
pub const FUNCTION_KNOWN: u32 = 2;

/// Marks an [`InflightKey::tid`] that stands for an idle task's interrupt
/// context on one CPU, not a real thread id.
pub const IDLE_TID_FLAG: u32 = 0x8000_0000;

/// Slots of the per-CPU `EVENTS` array: events the probes could not account
/// for, or accounted for specially. Userspace sums them over CPUs.
pub mod event {
    /// A frame could not be recorded: its thread was already inside
    /// `FRAMES_PER_TASK` other functions, or its task-local storage could
    /// not be made (no memory, or another BPF program using task storage
    /// on that CPU).
    pub const FRAMES_NOT_RECORDED: u32 = 0;
    /// A return arrived with no recorded entry: the thread entered between
    /// the return probe and the entry probe being attached. Such threads are
    /// found on the kernel stacks at attach time, so this is not a miss.
    pub const UNMATCHED_RETURN: u32 = 1;
    /// A probe fired at an address missing from the function table.
    pub const UNKNOWN_ADDRESS: u32 = 2;
    /// The switch program could not record a task it found inside the
    /// module (its map was full): the narrow stack check is not complete.
    pub const SWITCH_LOST: u32 = 3;
    /// Tasks the switch program set out to add to its map (counted before
    /// each insert): a walk of the map that saw this count change may have
    /// missed one, and is read again.
    pub const SWITCH_INSERTS: u32 = 4;
    /// Number of slots.
    pub const COUNT: u32 = 5;
}

/// Slots of the `LIVE` array: counts of map entries that the programs keep
/// with atomic adds, one before each insert they make and one after each
/// delete they make (and after a failed insert), so that the count is never
/// below the entries: with the entries userspace added and removed itself
/// accounted for, a count read as 0 proves the map held no entry at that
/// instant (the walk that would tell, a syscall per entry after a scan of
/// every bucket, is then skipped).
pub mod live {
    /// Entries the switch program added to `SWITCHED_INSIDE`, less those
    /// it removed; userspace adds the ones it added and subtracts the ones
    /// it removed (modulo 2^64: the raw slot may read "negative").
    pub const SWITCHED: u32 = 0;
    /// Number of slots.
    pub const COUNT: u32 = 1;
}

/// Frames of a kernel stack the task scan looks at: as many as
/// `/proc/PID/stack` shows.
pub const SCAN_MAX_FRAMES: usize = 64;

/// Slots of the `SCAN_CONFIG` array.
pub const SCAN_TEXT_START: u32 = 0;
pub const SCAN_TEXT_END: u32 = 1;
pub const SCAN_PID_OFFSET: u32 = 2;
pub const SCAN_TGID_OFFSET: u32 = 3;
/// Offsets of `task_struct.nvcsw`, `.nivcsw`, `.__state` and `.on_cpu`
/// (see `SCAN_START_TIME_OFFSET` too).
pub const SCAN_NVCSW_OFFSET: u32 = 4;
pub const SCAN_NIVCSW_OFFSET: u32 = 5;
pub const SCAN_STATE_OFFSET: u32 = 6;
pub const SCAN_ON_CPU_OFFSET: u32 = 7;
/// Non-zero: skip tasks that have not run since a scan found them clean.
pub const SCAN_SKIP_ENABLED: u32 = 8;
/// Offset of `task_struct.start_time`.
pub const SCAN_START_TIME_OFFSET: u32 = 9;
/// Non-zero while a swap watches context switches (`lsw_switch`): from
/// just before a full scan that precedes its gate until its stack check.
pub const SCAN_WATCH_SWITCHES: u32 = 10;
pub const SCAN_CONFIG_SLOTS: u32 = 11;

/// Most tasks the switch program remembers as switched out with a frame of
/// the module on their stacks (past it: `event::SWITCH_LOST`, and a full
/// scan instead).
pub const SWITCH_MAX_INSIDE: u32 = 16384;
/// Frames the switch program reads: as many as the kernel's callchains
/// give (`perf_event_max_stack`), since its own frames come first. A stack
/// this deep counts as inside (it may hide deeper frames).
pub const SWITCH_MAX_FRAMES: usize = 127;

/// Most tasks remembered as clean by the task scan (more are unwound each time).
pub const SCAN_MAX_CLEAN: u32 = 65536;

/// [`ScanRecord::flags`]: a return address in the module's text range.
pub const SCAN_IN_MODULE: u32 = 1;
/// [`ScanRecord::flags`]: the stack could not be unwound (the task was on a CPU).
pub const SCAN_UNREADABLE: u32 = 2;

/// One task found by the task scan (`lsw_scan_tasks`), as written to the
/// iterator's output.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanRecord {
    /// Thread id (the task's `pid`).
    pub tid: u32,
    /// Process id (the task's `tgid`).
    pub pid: u32,
    pub flags: u32,
    pub pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: two u32 fields, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::InflightKey {}
    // SAFETY: two u32 fields then a u64, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::InflightValue {}
    // SAFETY: u64 fields only, every bit pattern valid.
    unsafe impl aya::Pod for super::TimeHistogram {}
    // SAFETY: four u32 fields then a u64 (24 bytes), no padding, every bit
    // pattern valid.
    unsafe impl aya::Pod for super::TaskFrame {}
    // SAFETY: an array of TaskFrame, no padding.
    unsafe impl aya::Pod for super::TaskFrames {}
    // SAFETY: two u32, two u32 and a u64 (24 bytes), no padding.
    unsafe impl aya::Pod for super::FrameRecord {}
    // SAFETY: two u32 fields, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::FunctionInfo {}
    // SAFETY: four u32 fields, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::ScanRecord {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_key_has_no_padding() {
        assert_eq!(core::mem::size_of::<InflightKey>(), 8);
        assert_eq!(core::mem::align_of::<InflightKey>(), 4);
        assert_eq!(core::mem::size_of::<InflightValue>(), 16);
        assert_eq!(core::mem::size_of::<TimeHistogram>(), (TIME_BUCKETS + 1) * 8);
        assert_eq!(core::mem::size_of::<FunctionInfo>(), 8);
        assert_eq!(core::mem::size_of::<ScanRecord>(), 16);
        assert_eq!(core::mem::size_of::<TaskFrame>(), 24);
        assert_eq!(core::mem::size_of::<TaskFrames>(), 24 * FRAMES_PER_TASK);
        assert_eq!(core::mem::size_of::<FrameRecord>(), 24);
        assert_eq!(frames_slot(0), 1);
        assert_eq!(frames_slot(NO_INSTANCE), 0);
        assert_eq!(frames_slot(MIXED_INSTANCES), 0);
        assert_eq!(frames_slot(MAX_COUNTED_INSTANCES), 0);
    }

    #[test]
    fn time_buckets_are_floor_log2() {
        assert_eq!(time_bucket(0), 0);
        assert_eq!(time_bucket(1), 0);
        assert_eq!(time_bucket(2), 1);
        assert_eq!(time_bucket(3), 1);
        assert_eq!(time_bucket(1023), 9);
        assert_eq!(time_bucket(1024), 10);
        assert_eq!(time_bucket(1 << 39), 39);
        assert_eq!(time_bucket(u64::MAX), TIME_BUCKETS - 1);
    }
}

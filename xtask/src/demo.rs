//! `cargo xtask run`: the story a newcomer can follow, in the VM.

use xtask::vm;

/// Threads parked at module init, before any probe exists.
const DEMO: &str = r#"set -e
say() { echo; echo "=== $*"; }
say "guest kernel $(uname -r)"
say "insmod lsw_fixture: at init it parks 3 threads in lsw_fixture_hold_exported (exported), 2 in fixture_hold_indirect (static, called through an ops table), 2 work items in fixture_work_fn, and 300 threads in lsw_fixture_hold_crowd"
insmod /modules/lsw_fixture.ko park_exported=3 park_indirect=2 park_work=2 park_crowd=300
say "loopswap watch --once lsw_fixture: no probe saw those threads enter; loopswap finds them on their kernel stacks"
loopswap watch --once lsw_fixture | cat
say "loopswap watch --interval 1s lsw_fixture, left running; then 20 more threads enter lsw_fixture_hold_exported"
# (through cat: on a terminal loopswap would redraw the screen instead)
loopswap watch --interval 1s lsw_fixture | cat &
sleep 3
echo "park exported 20" > /sys/kernel/debug/lsw_fixture/control
sleep 3
say "releasing every parked thread: the counts fall to zero"
echo release > /sys/kernel/debug/lsw_fixture/control
sleep 3
kill -TERM $(pidof loopswap)
wait
say "after SIGTERM loopswap has detached: kprobe_events is empty"
cat /sys/kernel/tracing/kprobe_events
say "a final check, as JSON"
loopswap watch --once --json lsw_fixture | tee /tmp/final.json
grep -q '"inflight":0,"threads":0,"missed":0' /tmp/final.json
rmmod lsw_fixture
say "done: every count fell to 0, nothing missed, module unloaded"
"#;

pub fn run() -> anyhow::Result<()> {
    let mut request = vm::VmRequest::new(DEMO);
    request.echo = true;
    vm::run(&request)?.check()
}

//! `cargo xtask run`: the story a newcomer can follow, in the VM.

use xtask::vm;

/// Part 1: threads parked at module init, before any probe exists, counted
/// by `loopswap watch`. Part 2: ext4 on lswloop0 under fio, swapped
/// v1 -> v2 -> v1, data verified.
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
say "every count fell to 0, nothing missed, module unloaded"

say "PART 2: hot swap. Load the swap core, the lswloop class (the stable front owning the block devices) and its v1 implementation"
for m in /lib/modules/ext4/*.ko; do insmod $m; done
insmod /modules/lsw_core.ko
insmod /modules/lswloop.ko
insmod /modules/lswloop_v1.ko
truncate -s 256M /tmp/disk0.img
echo /tmp/disk0.img > /sys/kernel/lswloop/add
mkfs.ext4 -q /dev/lswloop0
mount -t ext4 /dev/lswloop0 /mnt
dd if=/dev/urandom of=/mnt/before bs=1M count=8 2>/dev/null
sync
md5sum /mnt/before | tee /tmp/before.md5
loopswap status
say "fio writes to ext4 on lswloop0 for 25 s (direct and buffered jobs, crc32c verification)"
fio --directory=/mnt --size=16M --bs=4k --rw=randwrite --verify=crc32c --verify_backlog=64 \
    --verify_fatal=1 --ioengine=psync --time_based --runtime=25 \
    --name=direct --direct=1 --name=buffered --direct=0 > /tmp/fio.txt 2>&1 &
fio=$!
sleep 2
say "loopswap watch --once lswloop_v1: threads inside v1 right now"
loopswap watch --once lswloop_v1 | cat
say "device state under v1:"
cat /sys/kernel/lswloop/devices
say "loopswap swap lswloop0 --to /modules/lswloop_v2.ko: v2 keeps an extent map and I/O statistics; its transformer converts v1's state"
loopswap swap lswloop0 --to /modules/lswloop_v2.ko
cat /sys/kernel/lswloop/devices
say "and back to v1, whose transformer converts v2's extent map back (it refuses maps it cannot represent)"
loopswap swap lswloop0 --to /modules/lswloop_v1.ko
cat /sys/kernel/lswloop/devices
say "waiting for fio to finish"
wait $fio
grep -E 'err=|WRITE:' /tmp/fio.txt
say "data written before the swaps, checked; then fsck after unmount"
md5sum -c /tmp/before.md5
umount /mnt
fsck.ext4 -fn /dev/lswloop0 | tail -1
say "done: two swaps under load, zero I/O errors, fio verification passed, filesystem clean"
"#;

pub fn run() -> anyhow::Result<()> {
    let mut request = vm::VmRequest::new(DEMO);
    request.echo = true;
    vm::run(&request)?.check()
}

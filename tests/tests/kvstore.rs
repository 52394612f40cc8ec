//! The second class: lswkv, a key/value store behind a character device
//! (kernel/lswkv*.c), with two implementations whose storage differs (a
//! flat table; a hash table with write counts). Swapped under load, it
//! shows that the core and the controller are not specific to block
//! devices: no write is lost or fails, the state is transformed both ways.

use tests::{json_in, run_ok, section};

#[test]
fn a_key_value_store_is_swapped_both_ways_under_writers_and_loses_nothing() {
    let outcome = run_ok(
        r#"set -e
insmod /modules/lsw_core.ko
insmod /modules/lswkv.ko
insmod /modules/lswkv_v1.ko
echo kv0 > /sys/kernel/lswkv/add
echo kv1 > /sys/kernel/lswkv/add
writer() {
    r=0
    while [ ! -e /tmp/stop ]; do
        r=$((r + 1)); i=0
        while [ $i -lt 40 ]; do
            echo "k$i=r$r" > /dev/$1 || echo "$1 round $r key $i" >> /tmp/failures
            i=$((i + 1))
        done
        echo $r > /tmp/done-$1
    done
}
writer kv0 &
writer kv1 &
sleep 1
echo '== check'; loopswap check /modules/lswkv_v2.ko kv0
n=0
for v in 2 1 2; do
    n=$((n + 1))
    echo "== swap$n"; loopswap swap kv0 --to /modules/lswkv_v$v.ko --json
done
echo '== swap4'; loopswap swap kv1 --to lswkv_v2 --json
touch /tmp/stop
wait
echo '== failures'; cat /tmp/failures 2>/dev/null || true
for store in kv0 kv1; do
    last=$(cat /tmp/done-$store)
    i=0; while [ $i -lt 40 ]; do echo "k$i=r$last"; i=$((i + 1)); done | sort > /tmp/want
    echo "== $store"
    if cat /dev/$store | sed 's/ writes=.*//' | sort | cmp -s - /tmp/want; then echo same; else echo DIFFERENT; cat /dev/$store; fi
    echo "== $store-writes"; grep -c ' writes=[1-9]' /dev/$store || true
done
# A listing of several pages, read in two parts with a write between them:
# one open file reads one listing.
echo kv2 > /sys/kernel/lswkv/add
i=0; while [ $i -lt 200 ]; do echo "key$i=value-$i-0123456789012345678901234567890123456789" > /dev/kv2; i=$((i + 1)); done
cat /dev/kv2 > /tmp/kv2-whole
exec 3< /dev/kv2
dd bs=100 count=1 <&3 > /tmp/kv2-one 2>/dev/null
echo key0=v > /dev/kv2
cat <&3 >> /tmp/kv2-one
exec 3<&-
echo '== kv2-lines'; wc -l < /tmp/kv2-whole
echo '== kv2-one-listing'; cmp /tmp/kv2-whole /tmp/kv2-one && echo same
echo '== modules'; cut -d' ' -f1 /proc/modules | grep lswkv_ || true
echo '== end'
"#,
    );
    let out = &outcome.output;
    let check = section(out, "check");
    assert!(
        check.iter().any(|line| line.contains("would be attempted")),
        "{out}"
    );
    for n in 1..=4 {
        let report = json_in(out, &format!("swap{n}"));
        assert_eq!(report["instances"][0]["committed"], true, "swap {n}: {report}");
    }
    assert_eq!(
        section(out, "failures"),
        Vec::<&str>::new(),
        "writes failed: {out}"
    );
    // Every key holds the value of the writer's last round: nothing lost.
    assert_eq!(section(out, "kv0"), ["same"], "{out}");
    assert_eq!(section(out, "kv1"), ["same"], "{out}");
    // Both end on v2, which counts writes per key: v1's table had none to
    // carry over, so the counts began at the swap and every key has some.
    assert_eq!(section(out, "kv0-writes"), ["40"], "{out}");
    assert_eq!(section(out, "kv1-writes"), ["40"], "{out}");
    assert_eq!(section(out, "kv2-lines"), ["200"], "{out}");
    assert_eq!(section(out, "kv2-one-listing"), ["same"], "{out}");
    // Nothing runs v1 any more: the swap unloaded it.
    assert_eq!(section(out, "modules"), ["lswkv_v2"], "{out}");
}

//! Member offsets of a kernel struct, from the kernel's BTF
//! (`/sys/kernel/btf/vmlinux`): the task scan reads `task_struct.pid` and
//! `.tgid` with `bpf_probe_read_kernel`, and aya 0.14 has no CO-RE field
//! relocation for Rust programs (nor a public BTF type API) to do it for us.
//! The format: a header, then type records, each followed by data whose
//! size depends on its kind (see the kernel's Documentation/bpf/btf.rst).

use std::collections::HashMap;

use crate::Error;

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_FUNC: u32 = 12;

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn string_at(strings: &[u8], offset: u32) -> Option<&str> {
    let rest = strings.get(offset as usize..)?;
    let end = rest.iter().position(|byte| *byte == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// Bytes of kind-specific data after a type record of `kind` with `vlen`.
fn extra_bytes(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        1 => 4,             // INT
        3 => 12,            // ARRAY
        4 | 5 => 12 * vlen, // STRUCT, UNION: members
        6 => 8 * vlen,      // ENUM
        13 => 8 * vlen,     // FUNC_PROTO: params
        14 => 4,            // VAR
        15 => 12 * vlen,    // DATASEC
        17 => 4,            // DECL_TAG
        19 => 12 * vlen,    // ENUM64
        2 | 7..=12 | 16 | 18 => 0,
        _ => return None,
    })
}

/// What one pass over a BTF blob found.
#[derive(Debug, Default)]
struct Found {
    members: Option<HashMap<String, u64>>,
    func_ids: HashMap<String, u32>,
}

/// One pass over `btf`: the offsets of `members` of the first struct named
/// `name`, and the type ids of the functions named in `funcs`.
fn scan(btf: &[u8], name: &str, members: &[&str], funcs: &[&str]) -> Option<Found> {
    if u16::from_le_bytes(btf.get(0..2)?.try_into().ok()?) != MAGIC {
        return None;
    }
    let header_len = u32_at(btf, 4)? as usize;
    let (type_off, type_len) = (u32_at(btf, 8)? as usize, u32_at(btf, 12)? as usize);
    let (str_off, str_len) = (u32_at(btf, 16)? as usize, u32_at(btf, 20)? as usize);
    let types = btf.get(header_len + type_off..header_len + type_off + type_len)?;
    let strings = btf.get(header_len + str_off..header_len + str_off + str_len)?;
    let mut found = Found::default();
    let mut at = 0;
    // Type ids count the records from 1 (0 is void).
    let mut id = 1;
    while at + 12 <= types.len() {
        let (name_off, info) = (u32_at(types, at)?, u32_at(types, at + 4)?);
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 == 1;
        let body = at + 12;
        if kind == KIND_STRUCT && found.members.is_none() && string_at(strings, name_off) == Some(name) {
            let mut offsets = HashMap::new();
            for member in 0..vlen {
                let record = body + 12 * member;
                let member_name = string_at(strings, u32_at(types, record)?)?;
                let bits = u32_at(types, record + 8)?;
                // With kind_flag the low 24 bits are the bit offset.
                let bits = if kind_flag { bits & 0x00ff_ffff } else { bits };
                if members.contains(&member_name) && bits % 8 == 0 {
                    offsets.insert(member_name.to_owned(), u64::from(bits / 8));
                }
            }
            found.members = Some(offsets);
        }
        if kind == KIND_FUNC
            && let Some(func) = string_at(strings, name_off)
            && funcs.contains(&func)
        {
            found.func_ids.entry(func.to_owned()).or_insert(id);
        }
        if found.members.is_some() && found.func_ids.len() == funcs.len() {
            break;
        }
        at = body + extra_bytes(kind, vlen)?;
        id += 1;
    }
    Some(found)
}

/// What the task scan needs from the running kernel's BTF, read once.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TaskScanBtf {
    /// Offsets of `task_struct` members by name; those the kernel does not
    /// have are missing.
    pub task_offsets: HashMap<String, u64>,
    /// The type id of `bpf_iter_task`, the attach point of a task iterator.
    pub iter_task_id: Option<u32>,
    /// The kfuncs a kprobe.session program calls (Linux 6.10+), if the
    /// kernel has them.
    pub session_kfuncs: Option<crate::raw_bpf::SessionKfuncs>,
}

const ITER_TASK: &str = "bpf_iter_task";
const SESSION_IS_RETURN: &str = "bpf_session_is_return";
/// The functions whose type ids the pass finds.
const FUNCS: [&str; 2] = [ITER_TASK, SESSION_IS_RETURN];

/// Reads `/sys/kernel/btf/vmlinux` for the task scan and the counters.
/// The kernel's BTF is this boot's, so what was found in it is cached
/// for the boot (see [`crate::run_cache`]): the pass over its 5 MB took
/// about 50 ms of every attach under emulation.
pub fn task_scan_btf(members: &[&str]) -> Result<TaskScanBtf, Error> {
    const PATH: &str = "/sys/kernel/btf/vmlinux";
    const CACHED_AS: (&str, &str) = ("btf", "vmlinux");
    let key = format!("task_struct {} funcs {}", members.join(","), FUNCS.join(","));
    if let Some(body) = crate::run_cache::read(CACHED_AS.0, CACHED_AS.1, &key)
        && let Ok(cached) = serde_json::from_str(&body)
    {
        return Ok(cached);
    }
    let btf = std::fs::read(PATH).map_err(|cause| Error::Io {
        path: PATH.into(),
        cause,
    })?;
    let found = scan(&btf, "task_struct", members, &FUNCS).unwrap_or_default();
    let id = |name: &str| found.func_ids.get(name).copied();
    let scanned = TaskScanBtf {
        task_offsets: found.members.clone().unwrap_or_default(),
        iter_task_id: id(ITER_TASK),
        session_kfuncs: id(SESSION_IS_RETURN).map(|is_return| crate::raw_bpf::SessionKfuncs { is_return }),
    };
    if let Ok(body) = serde_json::to_string(&scanned) {
        crate::run_cache::write(CACHED_AS.0, CACHED_AS.1, &key, &body);
    }
    Ok(scanned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: an INT, then struct task_struct { int state; int pid;
    /// int tgid; }, then a FUNC bpf_iter_task (type id 3).
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0task_struct\0state\0pid\0tgid\0bpf_iter_task\0";
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend(w.to_le_bytes()));
        push(&[1, 1 << 24, 4, 32]); // INT "int", size 4, 32 bits
        push(&[5, (KIND_STRUCT << 24) | 3, 12]); // STRUCT "task_struct", 3 members
        push(&[17, 1, 0]); // state at bit 0
        push(&[23, 1, 32]); // pid at bit 32
        push(&[27, 1, 64]); // tgid at bit 64
        push(&[32, KIND_FUNC << 24, 0]); // FUNC "bpf_iter_task"
        let mut blob = Vec::new();
        blob.extend(MAGIC.to_le_bytes());
        blob.extend([1u8, 0]);
        for word in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend(word.to_le_bytes());
        }
        blob.extend(&types);
        blob.extend(strings);
        blob
    }

    #[test]
    fn struct_member_offsets_are_found_past_other_types() {
        let offsets = scan(&sample(), "task_struct", &["pid", "tgid"], &[])
            .unwrap()
            .members
            .unwrap();
        assert_eq!(offsets.len(), 2);
        assert_eq!(offsets["pid"], 4);
        assert_eq!(offsets["tgid"], 8);
        let missing = scan(&sample(), "task_struct", &["nope"], &[])
            .unwrap()
            .members
            .unwrap();
        assert!(missing.is_empty());
        assert!(scan(b"garbage", "task_struct", &["pid"], &[]).is_none());
    }

    #[test]
    fn function_type_ids_count_records_from_one() {
        let found = scan(&sample(), "task_struct", &["pid"], &["bpf_iter_task", "absent"]).unwrap();
        assert_eq!(found.func_ids.get("bpf_iter_task"), Some(&3));
        assert_eq!(found.func_ids.get("absent"), None);
        assert_eq!(found.members.unwrap()["pid"], 4);
    }
}

//! Which functions make up a module's text, from `/proc/kallsyms`.

use std::collections::BTreeMap;

/// One function of a module, possibly known under several names (aliases
/// share an address, e.g. `cleanup_module` and the module's exit function).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// The name reported for the function.
    pub name: String,
    /// Every name kallsyms gives this address, `name` included, then the
    /// names of its cold parts (`NAME.cold`), which stacks show for frames
    /// executing in them.
    pub names: Vec<String>,
    /// Start address (kallsyms shows real addresses to root only).
    pub address: u64,
    /// Exported with `EXPORT_SYMBOL*` (a `__ksymtab_<name>` entry exists).
    pub exported: bool,
}

impl Function {
    /// The module's exit function (aliased `cleanup_module`): not
    /// ftrace-able, and run only while the module unloads.
    pub fn is_module_exit(&self) -> bool {
        self.names.iter().any(|name| name == "cleanup_module")
    }
}

/// Which functions of a module to count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every function in the module's text: threads enter modules through
    /// ops tables, kthreads, work items and timers, not only exports.
    AllText,
    /// Only functions exported with `EXPORT_SYMBOL*`.
    ExportedOnly,
}

/// One `/proc/kallsyms` line: `ffffffffc0a01000 t name\t[module]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol<'a> {
    pub address: u64,
    pub kind: char,
    pub name: &'a str,
    pub module: Option<&'a str>,
}

/// Parses one kallsyms line; `None` for anything malformed.
pub fn parse_line(line: &str) -> Option<Symbol<'_>> {
    let mut fields = line.split_whitespace();
    let address = u64::from_str_radix(fields.next()?, 16).ok()?;
    let kind = fields.next()?.chars().next()?;
    let name = fields.next()?;
    let module = match fields.next() {
        Some(module) => Some(module.strip_prefix('[')?.strip_suffix(']')?),
        None => None,
    };
    Some(Symbol {
        address,
        kind,
        name,
        module,
    })
}

/// Kernel-generated symbols that are not functions a thread can be in.
fn is_function_symbol(symbol: &Symbol<'_>) -> bool {
    matches!(symbol.kind, 't' | 'T')
        && !symbol.name.starts_with("__pfx_")
        && !symbol.name.starts_with("__cfi_")
        && !symbol.name.starts_with("__UNIQUE_ID")
}

/// The function a compiler-split cold part belongs to: `foo` for
/// `foo.cold`, `foo.cold.3` or `foo.isra.0.cold` -> `foo.isra.0`. A cold
/// part has no entry of its own (it is reached by a jump from its
/// function, so the function's probes already count a thread in it) and
/// cannot be probed: kprobe.multi would refuse the whole module for it.
fn cold_parent(name: &str) -> Option<&str> {
    let (parent, rest) = name.split_once(".cold")?;
    let suffix_ok = rest.is_empty()
        || rest
            .strip_prefix('.')
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
    (suffix_ok && !parent.is_empty()).then_some(parent)
}

/// The lines of `/proc/kallsyms` that belong to `module`, read from
/// `source`. The kernel lists every core symbol first (most of the file),
/// then each module's symbols together: only lines ending in the module's
/// tag are kept (the others are not parsed), and reading stops once the
/// module's block is over.
pub fn module_lines(mut source: impl std::io::Read, module: &str) -> std::io::Result<String> {
    let tag = format!("\t[{module}]");
    let mut kept = String::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 1 << 18];
    let mut in_block = false;
    loop {
        let read = source.read(&mut chunk)?;
        if read == 0 {
            break;
        }
        pending.extend_from_slice(&chunk[..read]);
        let Some(last_newline) = pending.iter().rposition(|byte| *byte == b'\n') else {
            continue;
        };
        for line in pending[..last_newline].split(|byte| *byte == b'\n') {
            if line.ends_with(tag.as_bytes()) {
                in_block = true;
                kept.push_str(&String::from_utf8_lossy(line));
                kept.push('\n');
            } else if in_block && line.ends_with(b"]") {
                // The next module's block: ours is complete.
                return Ok(kept);
            }
        }
        pending.drain(..=last_newline);
    }
    if pending.ends_with(tag.as_bytes()) {
        kept.push_str(&String::from_utf8_lossy(&pending));
    }
    Ok(kept)
}

/// What makes one loaded module's symbols what they are within a boot
/// (the cache adds the boot): the build (its GNU build id, unique per
/// build) and where its memory starts (every function's address is a
/// fixed offset from there in one build). `None` when any part is
/// unknown: then nothing is cached.
fn module_identity(module: &str) -> Option<String> {
    let note = std::fs::read(format!("/sys/module/{module}/notes/.note.gnu.build-id")).ok()?;
    let (base, size) = crate::module::memory(module)?;
    let build: String = note.iter().map(|byte| format!("{byte:02x}")).collect();
    Some(format!("{base:x} {size} {build}"))
}

/// Where [`module_symbols`] keeps what it read, under `/run/loopswap`.
const CACHE_KIND: &str = "symbols";

/// The `/proc/kallsyms` lines of `module` (see [`module_lines`]). Reading
/// them costs the kernel formatting every symbol of the kernel first, half
/// a second under emulation: they are cached (see [`crate::run_cache`]),
/// used only for the very same loaded module (same boot, build id and base
/// address).
pub fn module_symbols(module: &str) -> std::io::Result<String> {
    let identity = module_identity(module);
    let within_module = |lines: &str| {
        let Some((base, size)) = crate::module::memory(module) else {
            return false;
        };
        lines
            .lines()
            .filter_map(parse_line)
            .filter(|symbol| matches!(symbol.kind, 't' | 'T'))
            .all(|symbol| (base..base + size).contains(&symbol.address))
    };
    if let Some(identity) = &identity
        && let Some(lines) = crate::run_cache::read(CACHE_KIND, module, identity)
        && within_module(&lines)
    {
        return Ok(lines);
    }
    let lines = module_lines(std::fs::File::open("/proc/kallsyms")?, module)?;
    // Cached only if the module stayed the same while it was read (it could
    // have been reloaded meanwhile, elsewhere or as another build).
    if let Some(identity) = identity
        && module_identity(module).as_ref() == Some(&identity)
        && within_module(&lines)
        && !lines.is_empty()
    {
        crate::run_cache::write(CACHE_KIND, module, &identity, &lines);
    }
    Ok(lines)
}

/// Module names are shown with underscores; `modprobe` accepts dashes too.
pub fn normalize_module_name(module: &str) -> String {
    module.replace('-', "_")
}

/// The functions of `module` in `kallsyms`, one per address, in address
/// order. Aliases at one address are merged so no address is probed twice
/// (that would count every call twice).
pub fn module_functions(kallsyms: &str, module: &str, scope: Scope) -> Vec<Function> {
    let mut exported = std::collections::BTreeSet::new();
    let mut by_address: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    let mut cold_parts: Vec<(&str, &str, u64)> = Vec::new();
    for symbol in kallsyms.lines().filter_map(parse_line) {
        if symbol.module != Some(module) {
            continue;
        }
        if let Some(name) = symbol.name.strip_prefix("__ksymtab_") {
            exported.insert(name);
        } else if is_function_symbol(&symbol) {
            match cold_parent(symbol.name) {
                Some(parent) => cold_parts.push((parent, symbol.name, symbol.address)),
                None => by_address.entry(symbol.address).or_default().push(symbol.name),
            }
        }
    }
    // A cold part whose function is not in the module's text is kept as a
    // function of its own: refused a probe, it is listed as unprobed (and a
    // swap refuses), never silently dropped.
    cold_parts.retain(|(parent, cold, address)| {
        let has_parent = by_address.values().any(|names| names.contains(parent));
        if !has_parent {
            by_address.entry(*address).or_default().push(cold);
        }
        has_parent
    });
    let mut functions: Vec<Function> = by_address
        .into_iter()
        .map(|(address, mut names)| {
            names.sort_unstable();
            names.dedup();
            let is_exported = names.iter().any(|name| exported.contains(name));
            // Prefer the exported name, then any name but the generic
            // init_module/cleanup_module aliases.
            let name = names
                .iter()
                .find(|name| exported.contains(*name))
                .or_else(|| {
                    names
                        .iter()
                        .find(|name| !matches!(**name, "init_module" | "cleanup_module"))
                })
                .unwrap_or(&names[0])
                .to_string();
            Function {
                name,
                names: names.into_iter().map(str::to_owned).collect(),
                address,
                exported: is_exported,
            }
        })
        .filter(|function| scope == Scope::AllText || function.exported)
        .collect();
    for (parent, cold, _) in cold_parts {
        if let Some(function) = functions
            .iter_mut()
            .find(|function| function.names.iter().any(|name| name == parent))
        {
            function.names.push(cold.to_owned());
        }
    }
    functions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cold_parts_are_names_of_their_function_not_functions() {
        let text = "ffffffffc0002000 t m_fn\t[m]\n\
                    ffffffffc0002100 t m_fn.isra.0\t[m]\n\
                    ffffffffc0009000 t m_fn.cold\t[m]\n\
                    ffffffffc0009100 t m_fn.isra.0.cold\t[m]\n\
                    ffffffffc0009200 t orphan.cold\t[m]\n\
                    ffffffffc0009300 t m_fn.coldness\t[m]\n";
        let functions = module_functions(text, "m", Scope::AllText);
        let names: Vec<&Vec<String>> = functions.iter().map(|f| &f.names).collect();
        assert_eq!(
            names,
            [
                &vec!["m_fn".to_owned(), "m_fn.cold".to_owned()],
                &vec!["m_fn.isra.0".to_owned(), "m_fn.isra.0.cold".to_owned()],
                &vec!["orphan.cold".to_owned()],
                &vec!["m_fn.coldness".to_owned()],
            ]
        );
        assert_eq!(cold_parent("a.cold.12"), Some("a"));
        assert_eq!(cold_parent(".cold"), None);
    }

    #[test]
    fn only_the_module_block_is_kept_and_reading_stops_after_it() {
        let text = "ffffffff81000000 T _stext\n\
                    ffffffffc0001000 t a_fn\t[other]\n\
                    ffffffffc0002000 t m_one\t[m]\n\
                    ffffffffc0002100 T m_two\t[m]\n\
                    ffffffffc0002200 r __ksymtab_m_two\t[m]\n\
                    ffffffffc0003000 t z_fn\t[mm]\n\
                    ffffffffc0004000 t late\t[m]\n";
        // A reader that hands out 7 bytes at a time: lines cross reads.
        struct Trickle<'a>(&'a [u8]);
        impl std::io::Read for Trickle<'_> {
            fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(7).min(buffer.len());
                buffer[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let lines = module_lines(Trickle(text.as_bytes()), "m").unwrap();
        assert_eq!(lines.lines().count(), 3, "{lines}");
        assert!(lines.starts_with("ffffffffc0002000 t m_one\t[m]\n"));
        let functions = module_functions(&lines, "m", Scope::AllText);
        assert_eq!(functions.len(), 2);
        assert!(functions[1].exported);
    }

    const KALLSYMS: &str = "\
ffffffff81000000 T _stext
ffffffffc0a00000 t __pfx_fixture_hold_indirect\t[lsw_fixture]
ffffffffc0a00010 t fixture_hold_indirect\t[lsw_fixture]
ffffffffc0a00100 T lsw_fixture_hold_exported\t[lsw_fixture]
ffffffffc0a00200 t lsw_fixture_exit\t[lsw_fixture]
ffffffffc0a00200 T cleanup_module\t[lsw_fixture]
ffffffffc0a00300 t helper\t[other_mod]
ffffffffc0a05000 r __ksymtab_lsw_fixture_hold_exported\t[lsw_fixture]
ffffffffc0a06000 d some_data\t[lsw_fixture]
";

    #[test]
    fn parses_lines_with_and_without_module() {
        assert_eq!(
            parse_line("ffffffff81000000 T _stext"),
            Some(Symbol {
                address: 0xffffffff81000000,
                kind: 'T',
                name: "_stext",
                module: None
            })
        );
        assert_eq!(
            parse_line("ffffffffc0a00010 t fn\t[mod]"),
            Some(Symbol {
                address: 0xffffffffc0a00010,
                kind: 't',
                name: "fn",
                module: Some("mod")
            })
        );
        assert_eq!(parse_line("zz T x"), None);
        assert_eq!(parse_line("ffff t fn\tmod"), None);
    }

    #[test]
    fn all_text_merges_aliases_and_skips_padding_and_data() {
        let functions = module_functions(KALLSYMS, "lsw_fixture", Scope::AllText);
        let names: Vec<_> = functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "fixture_hold_indirect",
                "lsw_fixture_hold_exported",
                "lsw_fixture_exit"
            ]
        );
        assert_eq!(functions[2].names, ["cleanup_module", "lsw_fixture_exit"]);
        assert!(functions[1].exported);
        assert!(!functions[0].exported);
    }

    #[test]
    fn exported_only_keeps_ksymtab_functions() {
        let functions = module_functions(KALLSYMS, "lsw_fixture", Scope::ExportedOnly);
        assert_eq!(functions.len(), 1);
        assert_eq!(functions[0].name, "lsw_fixture_hold_exported");
        assert_eq!(functions[0].address, 0xffffffffc0a00100);
    }

    #[test]
    fn other_modules_are_not_mixed_in() {
        assert!(module_functions(KALLSYMS, "no_such", Scope::AllText).is_empty());
        assert_eq!(module_functions(KALLSYMS, "other_mod", Scope::AllText).len(), 1);
    }
}

//! Which functions make up a module's text, from `/proc/kallsyms`.

use std::collections::BTreeMap;

/// One function of a module, possibly known under several names (aliases
/// share an address, e.g. `cleanup_module` and the module's exit function).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// The name reported for the function.
    pub name: String,
    /// Every name kallsyms gives this address, `name` included.
    pub names: Vec<String>,
    /// Start address (kallsyms shows real addresses to root only).
    pub address: u64,
    /// Exported with `EXPORT_SYMBOL*` (a `__ksymtab_<name>` entry exists).
    pub exported: bool,
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
    for symbol in kallsyms.lines().filter_map(parse_line) {
        if symbol.module != Some(module) {
            continue;
        }
        if let Some(name) = symbol.name.strip_prefix("__ksymtab_") {
            exported.insert(name);
        } else if is_function_symbol(&symbol) {
            by_address.entry(symbol.address).or_default().push(symbol.name);
        }
    }
    by_address
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
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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

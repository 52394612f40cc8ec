//! `loopswap check` and `swap --dry-run`: whether a swap would be
//! attempted, changing nothing. NEW's facts come from its `.modinfo`
//! (`MODULE_INFO(lsw_...)`, see kernel/lsw_core.h) or, for a registered
//! implementation, from the core; the instances' from the core.

use serde::Serialize;

use crate::{
    Error,
    control::{Control, CoreState},
    kmod,
    swap::{SwapOptions, Target},
};

/// One fact about NEW, or one instance's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct Line {
    pub subject: String,
    pub ok: bool,
    pub says: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Preflight {
    pub new: Vec<Line>,
    pub instances: Vec<Line>,
}

impl Preflight {
    /// Every swap would be attempted.
    pub fn ready(&self) -> bool {
        self.new.iter().chain(&self.instances).all(|line| line.ok) && !self.instances.is_empty()
    }

    pub fn to_table(&self) -> String {
        self.new
            .iter()
            .chain(&self.instances)
            .map(|line| {
                format!(
                    "{:<12} {:<5} {}\n",
                    line.subject,
                    if line.ok { "ok" } else { "NO" },
                    line.says
                )
            })
            .collect()
    }
}

/// What NEW is, whichever way it was named.
struct New {
    name: String,
    class: Option<String>,
    /// State versions its transformer imports; `None`: not known here (the
    /// core asks it at `begin`, before the gate closes).
    imports: Option<Vec<u32>>,
}

fn line(subject: &str, ok: bool, says: impl Into<String>) -> Line {
    Line {
        subject: subject.to_owned(),
        ok,
        says: says.into(),
    }
}

fn parse_imports(list: &str) -> Option<Vec<u32>> {
    list.split(',')
        .map(|version| version.trim().parse().ok())
        .collect()
}

/// Facts of a `.ko`: name, vermagic against the running kernel, signature
/// against the kernel's policy, and the lsw facts.
fn module_file_facts(file: &kmod::ModuleFile, state: &CoreState, lines: &mut Vec<Line>) -> New {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let vermagic = file.info("vermagic").unwrap_or("");
    let built_for = vermagic.split_whitespace().next().unwrap_or("");
    // As the kernel's same_magic(): with symbol versions the release is
    // not compared (the versions of each symbol are, at load).
    let (vermagic_ok, says) = if built_for == release {
        (true, format!("built for {built_for}, the running kernel"))
    } else if file.symbol_versions {
        (
            true,
            format!(
                "built for {built_for:?}, running {release}: the kernel compares symbol versions at load"
            ),
        )
    } else {
        (
            false,
            format!(
                "built for {built_for:?}, the running kernel is {release}: the kernel would refuse to load it"
            ),
        )
    };
    lines.push(line("vermagic", vermagic_ok, says));
    let enforce = std::fs::read_to_string("/sys/module/module/parameters/sig_enforce")
        .map(|value| value.trim() == "Y")
        .unwrap_or(false);
    // Lockdown (integrity or confidentiality) refuses unsigned modules too.
    let locked_down = std::fs::read_to_string("/sys/kernel/security/lockdown")
        .map(|modes| !modes.contains("[none]"))
        .unwrap_or(false);
    lines.push(match (file.signed, enforce || locked_down) {
        (true, _) => line("signature", true, "signed (the kernel checks it at load)"),
        (false, true) => line(
            "signature",
            false,
            "unsigned, and the kernel requires signatures (module.sig_enforce=Y or lockdown): sign it with a key the kernel trusts",
        ),
        (false, false) => line("signature", true, "unsigned; the kernel does not require signatures (loading taints it)"),
    });
    let number = |key: &str| file.info(key).and_then(|value| value.parse::<u32>().ok());
    let class = file.info("lsw_class").map(str::to_owned);
    let (version, state_version) = (number("lsw_version"), number("lsw_state_version"));
    let imports = file.info("lsw_imports").and_then(parse_imports);
    match (&class, version, state_version, &imports) {
        (Some(class), Some(version), Some(state_version), Some(imports)) => {
            let registered = state.classes.iter().any(|c| c == class);
            lines.push(line(
                "class",
                registered,
                if registered {
                    format!(
                        "{class}, version {version}, state version {state_version}, imports state versions {imports:?}"
                    )
                } else {
                    format!("{class} is not registered: load its class module first (e.g. insmod {class}.ko)")
                },
            ));
        }
        _ => lines.push(line(
            "class",
            false,
            "no lsw facts in .modinfo (MODULE_INFO lsw_class etc., see kernel/lsw_core.h): not a swappable implementation",
        )),
    }
    New {
        name: file.name.clone(),
        class,
        imports,
    }
}

/// Whether the swap that `options` describes would be attempted.
pub fn check(options: &SwapOptions) -> Result<Preflight, Error> {
    crate::module::check_root()?;
    let mut control = Control::open()?;
    let state = control.list()?;
    let mut facts = Vec::new();
    let new = match &options.to {
        Target::ModuleFile(path) => {
            let file = kmod::ModuleFile::open(path)?;
            facts.push(line(
                "module",
                true,
                format!("{} from {}", file.name, path.display()),
            ));
            match state.implementation(&file.name) {
                // Loaded already: the core's facts are what a swap uses.
                Some(registered) => {
                    facts.push(line(
                        "loaded",
                        true,
                        "already loaded and registered: the swap uses it as is",
                    ));
                    New {
                        name: registered.name.clone(),
                        class: Some(registered.class.clone()),
                        imports: file.info("lsw_imports").and_then(parse_imports),
                    }
                }
                None => module_file_facts(&file, &state, &mut facts),
            }
        }
        Target::Implementation(name) => match state.implementation(name) {
            Some(registered) => {
                facts.push(line(
                    "module",
                    true,
                    format!(
                        "{name}: registered, class {}, version {}, state version {}",
                        registered.class, registered.version, registered.state_version
                    ),
                ));
                New {
                    name: name.clone(),
                    class: Some(registered.class.clone()),
                    imports: None,
                }
            }
            None => {
                return Err(Error::Usage(format!(
                    "no implementation named {name} is registered (loopswap status lists them; or pass its .ko)"
                )));
            }
        },
    };

    let chosen: Vec<String> = if options.instances.is_empty() {
        // Every instance of NEW's class that does not run it yet.
        state
            .instances
            .iter()
            .filter(|instance| {
                new.class.as_deref() == Some(instance.class.as_str()) && instance.implementation != new.name
            })
            .map(|instance| instance.name.clone())
            .collect()
    } else {
        options.instances.clone()
    };
    let mut verdicts = Vec::new();
    for name in &chosen {
        let Some(instance) = state.instance(name) else {
            verdicts.push(line(name, false, "no such instance (loopswap status lists them)"));
            continue;
        };
        let from_state = state
            .implementation(&instance.implementation)
            .map(|implementation| implementation.state_version);
        let verdict = if new.class.as_deref() != Some(instance.class.as_str()) {
            line(
                &instance.name,
                false,
                format!(
                    "a {} instance; NEW implements {}",
                    instance.class,
                    new.class.as_deref().unwrap_or("no class")
                ),
            )
        } else if instance.implementation == new.name {
            line(&instance.name, false, format!("already runs {}", new.name))
        } else if let Some(swap) = &instance.swap {
            line(
                &instance.name,
                false,
                format!("being swapped by another controller ({swap})"),
            )
        } else {
            match (&new.imports, from_state) {
                (Some(imports), Some(version)) if !imports.contains(&version) => line(
                    &instance.name,
                    false,
                    format!(
                        "runs {} (state version {version}); {} has no transformer from it",
                        instance.implementation, new.name
                    ),
                ),
                (Some(_), Some(version)) => line(
                    &instance.name,
                    true,
                    format!(
                        "{} (state version {version}) -> {}: would be attempted",
                        instance.implementation, new.name
                    ),
                ),
                _ => line(
                    &instance.name,
                    true,
                    format!(
                        "{} -> {}: would be attempted (the core asks NEW for a transformer before the gate closes)",
                        instance.implementation, new.name
                    ),
                ),
            }
        };
        verdicts.push(verdict);
    }
    if verdicts.is_empty() {
        verdicts.push(line(
            "instances",
            false,
            format!("no instance to swap to {}", new.name),
        ));
    }
    Ok(Preflight {
        new: facts,
        instances: verdicts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_lists_parse_strictly() {
        assert_eq!(parse_imports("1,2"), Some(vec![1, 2]));
        assert_eq!(parse_imports("1, x"), None);
    }
}

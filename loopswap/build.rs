//! Builds the eBPF object with aya-build, as in aya-template, with the
//! nightly pinned in `loopswap-ebpf/rust-toolchain.toml`, and writes it
//! without its DWARF as `loopswap.stripped`, which `src/counters.rs`
//! embeds with `include_bytes_aligned!`.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|package| package.name.as_str() == "loopswap-ebpf")
        .ok_or_else(|| anyhow!("loopswap-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("loopswap-ebpf manifest has no parent"))?;
    let pin = format!("{root_dir}/rust-toolchain.toml");
    println!("cargo:rerun-if-changed={pin}");
    let pin_text = std::fs::read_to_string(&pin).with_context(|| format!("reading {pin}"))?;
    let toolchain = pin_text
        .parse::<toml::Table>()
        .with_context(|| format!("parsing {pin}"))?
        .get("toolchain")
        .and_then(|toolchain| toolchain.get("channel"))
        .and_then(toml::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{pin}: no [toolchain] channel"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )?;
    strip_dwarf()
}

/// The object without its DWARF sections (four fifths of its bytes): only
/// bpf-linker needs them, to make the BTF, and aya-obj would parse them and
/// their relocations at every attach (about 40 ms under emulation).
fn strip_dwarf() -> anyhow::Result<()> {
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR is not set")?;
    let path = format!("{out_dir}/loopswap");
    let data = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    let mut builder =
        object::build::elf::Builder::read(data.as_slice()).with_context(|| format!("parsing {path}"))?;
    for section in builder.sections.iter_mut() {
        let name = section.name.as_slice();
        if name.starts_with(b".debug") || name.starts_with(b".rel.debug") {
            section.delete = true;
        }
    }
    builder.delete_orphans();
    // LLVM names sections from .strtab; the writer wants a .shstrtab.
    if !builder
        .sections
        .iter()
        .any(|section| section.name.as_slice() == b".shstrtab")
    {
        let names = builder.sections.add();
        names.name = b".shstrtab".as_slice().into();
        names.sh_type = object::elf::SHT_STRTAB;
        names.data = object::build::elf::SectionData::SectionString;
    }
    let mut stripped = Vec::new();
    builder
        .write(&mut stripped)
        .with_context(|| format!("writing {path} without DWARF"))?;
    let stripped_path = format!("{path}.stripped");
    std::fs::write(&stripped_path, stripped).with_context(|| format!("writing {stripped_path}"))
}

//! Builds the eBPF object with aya-build, as in aya-template, with the
//! nightly pinned in `loopswap-ebpf/rust-toolchain.toml`; `src/counters.rs`
//! embeds it with `include_bytes_aligned!`.
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
    )
}

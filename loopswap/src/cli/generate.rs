use std::{fs, path::PathBuf};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

/// Write man pages (loopswap.1 and one per subcommand) and shell
/// completions (bash, zsh, fish) generated from these definitions, so
/// they never drift from the options. `cargo xtask man` runs it.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Folder to write `man1/` and `completions/` into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

impl GenerateArgs {
    pub fn execute(&self) -> anyhow::Result<()> {
        let man = self.out.join("man1");
        let completions = self.out.join("completions");
        for folder in [&man, &completions] {
            fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
        }
        let command = super::Cli::command();
        let mut pages = vec![(String::from("loopswap"), command.clone())];
        for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
            // A page names its command `loopswap-SUB`; clap wants a static
            // name, and this process ends right after.
            let name: &'static str = format!("loopswap-{}", sub.get_name()).leak();
            pages.push((name.to_owned(), sub.clone().name(name)));
        }
        for (name, page) in pages {
            let path = man.join(format!("{name}.1"));
            let mut text = Vec::new();
            clap_mangen::Man::new(page).render(&mut text)?;
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            super::outln!("{}", path.display())?;
        }
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut command = super::Cli::command();
            let path = clap_complete::generate_to(shell, &mut command, "loopswap", &completions)
                .with_context(|| format!("writing {shell} completions"))?;
            super::outln!("{}", path.display())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_and_completions_follow_the_definitions() {
        let out = std::env::temp_dir().join(format!("loopswap-generate-{}", std::process::id()));
        GenerateArgs { out: out.clone() }.execute().unwrap();
        let page = fs::read_to_string(out.join("man1/loopswap-swap.1")).unwrap();
        assert!(page.contains("timeout"), "{page}");
        let bash = fs::read_to_string(out.join("completions/loopswap.bash")).unwrap();
        assert!(bash.contains("--keep-old") && bash.contains("--exported-only"));
        assert!(
            !out.join("man1/loopswap-generate.1").exists(),
            "hidden commands get no page"
        );
        fs::remove_dir_all(out).unwrap();
    }
}

//! `lockstep-gen-assets OUT_DIR`: writes man pages (one per command and
//! subcommand, `man/`) and bash, zsh and fish completions (`completions/`)
//! for `lockstep`, `lockstep-agent` and `lockstep-controller`, from the same
//! clap definitions the binaries parse with, so they cannot drift.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

fn man_pages(cmd: &clap::Command, dir: &Path) -> anyhow::Result<()> {
    clap_mangen::generate_to(cmd.clone(), dir).with_context(|| format!("writing man pages to {}", dir.display()))?;
    Ok(())
}

fn completions(cmd: &clap::Command, dir: &Path) -> anyhow::Result<()> {
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let out = dir.join(shell.to_string());
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let name = cmd.get_name().to_string();
        clap_complete::generate_to(shell, &mut cmd.clone(), name, &out)
            .with_context(|| format!("writing {shell} completions to {}", out.display()))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .context("usage: lockstep-gen-assets OUT_DIR")?;
    let man = out.join("man");
    let comp = out.join("completions");
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    for cmd in [
        lockstep_console::Cli::command(),
        lockstep_agent::cli::Cli::command(),
        lockstep_controller::DaemonCli::command(),
    ] {
        man_pages(&cmd, &man)?;
        completions(&cmd, &comp)?;
    }
    println!("man pages in {}, completions in {}", man.display(), comp.display());
    Ok(())
}

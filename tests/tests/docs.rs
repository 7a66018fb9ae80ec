//! The docs cannot rot: every `lockstep`, `lockstep-agent` and
//! `lockstep-controller` command in a shell block of README.md and docs/, and
//! every one a shipped systemd unit or drop-in runs, must parse with the
//! binaries' own command-line definitions.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

use clap::Parser;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Splits a shell command line into words (quotes, no expansion), stopping
/// at a redirection, pipe or list operator.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut started = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                started = true;
            }
            (None, c) if c.is_whitespace() => {
                if started {
                    out.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            (None, c) => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(cur);
    }
    let end = out
        .iter()
        .position(|w| matches!(w.as_str(), ">" | ">>" | "|" | "&&" | "||" | ";" | "#"))
        .unwrap_or(out.len());
    out.truncate(end);
    out
}

/// (where, command words) of every lockstep command in `text`'s shell blocks.
fn commands_in_markdown(path: &Path, text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with("```") {
            in_sh = !in_sh && (line == "```sh" || line == "```bash");
            continue;
        }
        if !in_sh || line.starts_with('#') {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        let full = format!("{pending}{line}");
        pending.clear();
        let w = words(&full);
        if w.first().is_some_and(|c| c.starts_with("lockstep")) {
            out.push((format!("{}:{}", path.display(), n + 1), w));
        }
    }
    out
}

/// Commands run by `Exec*=` lines of systemd units and drop-ins.
fn commands_in_unit(path: &Path, text: &str) -> Vec<(String, Vec<String>)> {
    text.lines()
        .enumerate()
        .filter_map(|(n, line)| {
            let (key, value) = line.split_once('=')?;
            if !key.starts_with("Exec") {
                return None;
            }
            let mut w = words(value.trim_start_matches(['-', '@', '+', '!']));
            let bin = Path::new(w.first()?).file_name()?.to_str()?.to_string();
            w[0] = bin;
            Some((format!("{}:{}", path.display(), n + 1), w))
        })
        .filter(|(_, w)| w[0].starts_with("lockstep"))
        .collect()
}

fn parse(words: &[String]) -> Result<(), String> {
    let result = match words[0].as_str() {
        "lockstep" => lockstep_controller::console::Cli::try_parse_from(words).map(drop),
        "lockstep-agent" => lockstep_agent::cli::Cli::try_parse_from(words).map(drop),
        "lockstep-controller" => lockstep_controller::DaemonCli::try_parse_from(words).map(drop),
        other => return Err(format!("unknown program {other}")),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

#[test]
fn every_documented_command_parses() {
    let root = repo();
    let mut commands = Vec::new();
    let mut markdown = files(&root.join("docs"), "md");
    markdown.push(root.join("README.md"));
    for path in markdown {
        let text = std::fs::read_to_string(&path).unwrap();
        commands.extend(commands_in_markdown(&path, &text));
    }
    let mut units = files(&root.join("packaging/systemd"), "service");
    units.extend(files(&root.join("packaging/examples"), "conf"));
    for path in units {
        let text = std::fs::read_to_string(&path).unwrap();
        commands.extend(commands_in_unit(&path, &text));
    }
    let failures: Vec<String> = commands
        .iter()
        .filter_map(|(at, w)| parse(w).err().map(|e| format!("{at}: `{}`\n{e}", w.join(" "))))
        .collect();
    assert!(
        failures.is_empty(),
        "{} documented commands do not parse:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The check itself must have found the docs' commands.
    assert!(commands.len() >= 50, "only {} commands found", commands.len());
    for program in ["lockstep", "lockstep-agent", "lockstep-controller"] {
        assert!(
            commands.iter().any(|(_, w)| w[0] == program),
            "no {program} command found"
        );
    }
}

#[test]
fn the_checker_catches_a_broken_command() {
    let text = "```sh\nlockstep gate check --rolle smars\nlockstep-agent enroll --token x\n```\n";
    let found = commands_in_markdown(Path::new("x.md"), text);
    assert_eq!(found.len(), 2);
    assert!(parse(&found[0].1).unwrap_err().contains("--rolle"));
    assert!(parse(&found[1].1).is_ok());
    assert_eq!(
        words(r#"lockstep halt --role smars --reason "two words" > out.txt"#),
        ["lockstep", "halt", "--role", "smars", "--reason", "two words"]
    );
}

/// docs/architecture.md names every module a crate exports, so a new one
/// cannot land unexplained.
#[test]
fn architecture_names_every_public_module() {
    let doc = std::fs::read_to_string(repo().join("docs/architecture.md")).unwrap();
    let mut missing = Vec::new();
    for krate in ["proto", "daemon", "agent", "controller", "tests"] {
        let lib = std::fs::read_to_string(repo().join(krate).join("src/lib.rs")).unwrap();
        for line in lib.lines() {
            let Some(name) = line.trim().strip_prefix("pub mod ") else {
                continue;
            };
            let name = name.trim_end_matches([';', '{', ' ']);
            if !doc.contains(&format!("`{name}`")) && !doc.contains(&format!("::{name}`")) {
                missing.push(format!("{krate}::{name}"));
            }
        }
    }
    assert!(missing.is_empty(), "docs/architecture.md does not name: {missing:?}");
}

/// Which of a crate's own modules each module of `src/` refers to
/// (`crate::name` outside comments; `*_tests.rs` count for their parent).
fn module_imports(src: &Path) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut graph = std::collections::BTreeMap::new();
    let mut files = vec![src.to_path_buf()];
    let mut sources = Vec::new();
    while let Some(dir) = files.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && path.file_name().is_some_and(|n| n != "bin") {
                files.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push(path);
            }
        }
    }
    for path in sources {
        // A module is named by its top-level file or directory under src/.
        let rel = path.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .to_string();
        let module = first.trim_end_matches(".rs").trim_end_matches("_tests").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let used: &mut std::collections::BTreeSet<String> = graph.entry(module.clone()).or_default();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    used.insert(name);
                }
            }
        }
    }
    graph
}

/// A circle of imports, if the graph has one.
fn import_circle(
    graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) -> Option<Vec<String>> {
    fn visit(
        at: &str,
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|m| m == at) {
            let mut circle = path[start..].to_vec();
            circle.push(at.to_string());
            return Some(circle);
        }
        if done.contains(at) {
            return None;
        }
        path.push(at.to_string());
        for next in graph.get(at).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(at.to_string());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    graph.keys().find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

/// The modules of each crate import each other in one direction only: a
/// part can be read (and replaced) knowing only what it imports.
#[test]
fn no_crate_has_an_import_circle() {
    for krate in ["proto", "daemon", "agent", "controller"] {
        let graph = module_imports(&repo().join(krate).join("src"));
        assert!(graph.len() > 5, "{krate}: too few modules found: {graph:?}");
        if let Some(circle) = import_circle(&graph) {
            panic!("{krate} has an import circle: {}", circle.join(" -> "));
        }
    }
}

#[test]
fn the_circle_check_finds_a_circle() {
    let mut graph = std::collections::BTreeMap::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")] {
        graph
            .entry(from.to_string())
            .or_insert_with(std::collections::BTreeSet::new)
            .insert(to.to_string());
    }
    assert_eq!(import_circle(&graph).unwrap(), ["a", "b", "c", "a"]);
    graph.get_mut("c").unwrap().clear();
    assert_eq!(import_circle(&graph), None);
}

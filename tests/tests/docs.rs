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
        "lockstep" => lockstep_console::Cli::try_parse_from(words).map(drop),
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
    for krate in CRATES {
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

/// A part is found by its folder, not by a file-name prefix: each crate's
/// `src` holds a few files directly (its root, its assembly, what every
/// part shares) and a folder per part.
#[test]
fn every_crate_keeps_its_parts_in_folders() {
    const MOST_FILES_DIRECTLY: usize = 10;
    let mut crowded = Vec::new();
    for krate in CRATES {
        let src = repo().join(krate).join("src");
        let direct = std::fs::read_dir(&src)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "rs"))
            .count();
        if direct > MOST_FILES_DIRECTLY {
            crowded.push(format!("{krate}/src holds {direct} .rs files"));
        }
    }
    assert!(
        crowded.is_empty(),
        "more than {MOST_FILES_DIRECTLY} files directly in: {crowded:?}; move them into the folder of their part"
    );
}

/// Every workspace crate with a library, as a path under the repository.
const CRATES: [&str; 9] = [
    "proto",
    "proto/link",
    "daemon",
    "agent",
    "controller",
    "controller/pki",
    "controller/evidence",
    "controller/console",
    "tests",
];

type Graph = std::collections::BTreeMap<String, std::collections::BTreeSet<String>>;

/// Every `.rs` file under `dir` (not `bin/`), recursively.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && path.file_name().is_some_and(|n| n != "bin") {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    found
}

/// The module paths a line of code names (`crate::a::b`, outside comments).
fn named_paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for (i, _) in line.match_indices("crate::") {
            let path: Vec<String> = line[i + 7..]
                .split("::")
                .map(|seg| {
                    seg.chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .take_while(|seg: &String| !seg.is_empty())
                .collect();
            if !path.is_empty() {
                out.push(path);
            }
        }
    }
    out
}

/// A module's name from the first component of its path under a folder
/// (`*_tests.rs` count for their parent).
fn module_of(first: &str) -> String {
    first.trim_end_matches(".rs").trim_end_matches("_tests").to_string()
}

/// Which of a crate's own top-level modules (a file or a folder under
/// `src/`) each one refers to.
fn module_imports(src: &Path) -> Graph {
    let mut graph = Graph::new();
    for path in sources(src) {
        let rel = path.strip_prefix(src).unwrap();
        let module = module_of(&rel.components().next().unwrap().as_os_str().to_string_lossy());
        if module == "lib" || module == "main" {
            continue;
        }
        let used = graph.entry(module.clone()).or_default();
        for named in named_paths(&std::fs::read_to_string(&path).unwrap()) {
            if named[0] != module {
                used.insert(named[0].clone());
            }
        }
    }
    graph
}

/// For each folder of a crate (at any depth), which of its direct parts
/// refer to which of the others (`crate::folder::part`, or `super::part`
/// from a sibling).
fn folder_imports(src: &Path) -> Vec<(String, Graph)> {
    let mut folders = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && path.file_name().is_some_and(|n| n != "bin") {
                dirs.push(path.clone());
                folders.push(path);
            }
        }
    }
    folders
        .into_iter()
        .map(|folder| {
            let rel = folder.strip_prefix(src).unwrap();
            let prefix: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().to_string())
                .collect();
            let mut graph = Graph::new();
            for path in sources(&folder) {
                let inner = path.strip_prefix(&folder).unwrap();
                let part = module_of(&inner.components().next().unwrap().as_os_str().to_string_lossy());
                if part == "mod" {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let used = graph.entry(part.clone()).or_default();
                for named in named_paths(&text) {
                    if named.len() > prefix.len() && named[..prefix.len()] == prefix[..] && named[prefix.len()] != part
                    {
                        used.insert(named[prefix.len()].clone());
                    }
                }
                let direct = inner.components().count() == 1;
                for line in text.lines().filter(|l| direct && !l.trim_start().starts_with("//")) {
                    for (i, _) in line.match_indices("super::") {
                        let name: String = line[i + 7..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        let sibling = folder.join(format!("{name}.rs")).exists() || folder.join(&name).is_dir();
                        if !name.is_empty() && name != part && sibling {
                            used.insert(name);
                        }
                    }
                }
            }
            (rel.display().to_string(), graph)
        })
        .collect()
}

/// A circle of imports, if the graph has one.
fn import_circle(graph: &Graph) -> Option<Vec<String>> {
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

/// The modules of each crate, and the parts of each folder, import each
/// other in one direction only: a part can be read (and replaced) knowing
/// only what it imports.
#[test]
fn no_crate_and_no_folder_has_an_import_circle() {
    for krate in CRATES {
        let src = repo().join(krate).join("src");
        let graph = module_imports(&src);
        // A crate of one file (lib.rs) has no modules to order.
        assert!(
            graph.len() > 1 || sources(&src).len() == 1,
            "{krate}: too few modules found: {graph:?}"
        );
        if let Some(circle) = import_circle(&graph) {
            panic!("{krate} has an import circle: {}", circle.join(" -> "));
        }
        for (folder, graph) in folder_imports(&src) {
            if let Some(circle) = import_circle(&graph) {
                panic!("{krate}/src/{folder} has an import circle: {}", circle.join(" -> "));
            }
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

/// Every audit action written or matched is an `AuditAction` value
/// (lockstep-evidence's `action`): no source file outside it spells one
/// (`"gate.checked"`), writes `action: "…"` or compares `action == "…"`.
#[test]
fn audit_actions_are_spelled_in_one_place() {
    let texts: Vec<&str> = lockstep_evidence::action::AuditAction::ALL
        .iter()
        .map(|a| a.as_str())
        .filter(|t| t.contains('.'))
        .collect();
    let mut found = Vec::new();
    for krate in CRATES {
        for path in sources(&repo().join(krate).join("src")) {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.ends_with("evidence/src/action.rs") || name.ends_with("_tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Unit tests at the end of a file may spell what they check.
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (n, line) in code
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim_start().starts_with("//"))
            {
                let spelled = texts.iter().any(|t| line.contains(&format!("\"{t}\"")));
                let raw = line.contains("action: \"") || line.contains("action == \"");
                if spelled || raw {
                    found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "audit actions spelled outside AuditAction:\n{}",
        found.join("\n")
    );
}

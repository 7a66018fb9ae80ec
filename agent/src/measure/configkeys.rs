//! Config files read for their meaning: each key becomes an entry
//! `<file>#<key>` with its value, so a diff says `flag_rlp = 1`, not only
//! "the file's hash differs", and retired flags can be found by name.
//! Nested keys are dotted (`router.flag_rlp`), array items indexed (`a[0]`).

use std::path::{Path, PathBuf};

use lockstep_proto::pb::{Entry, EntryKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFormat {
    Ini,
    Toml,
    Json,
    Yaml,
    KeyValue,
}

/// A config file whose keys become entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub format: ConfigFormat,
}

/// Key entries of one config file; a file that cannot be read or parsed
/// gives one UNREADABLE entry saying why (the file's own entry, if watched,
/// still carries its hash).
pub fn measure(file: &ConfigFile, root: Option<&Path>) -> Vec<Entry> {
    let fs_path = match root {
        Some(r) => r.join(file.path.strip_prefix("/").unwrap_or(&file.path)),
        None => file.path.clone(),
    };
    let shown = file.path.display().to_string();
    let text = match std::fs::read_to_string(&fs_path) {
        Ok(t) => t,
        // A missing file is the watch entry's business, not a parse error.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => return vec![unparsable(&shown, e.to_string())],
    };
    match parse(&text, file.format) {
        Ok(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Entry {
                path: format!("{shown}#{k}").into_bytes(),
                kind: EntryKind::ConfigKey as i32,
                value: v,
                ..Default::default()
            })
            .collect(),
        Err(e) => vec![unparsable(&shown, e)],
    }
}

fn unparsable(shown: &str, why: String) -> Entry {
    Entry {
        path: format!("{shown}#").into_bytes(),
        kind: EntryKind::Unreadable as i32,
        error: format!("cannot parse as configured: {why}"),
        ..Default::default()
    }
}

/// (key, value) pairs of `text` in `format`.
pub fn parse(text: &str, format: ConfigFormat) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    match format {
        ConfigFormat::KeyValue | ConfigFormat::Ini => {
            let mut section = String::new();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                    continue;
                }
                if format == ConfigFormat::Ini && line.starts_with('[') && line.ends_with(']') {
                    section = line[1..line.len() - 1].trim().to_string();
                    continue;
                }
                let (k, v) = line
                    .split_once('=')
                    .or_else(|| (format == ConfigFormat::Ini).then(|| line.split_once(':')).flatten())
                    .ok_or_else(|| format!("line {}: expected key = value", n + 1))?;
                let key = if section.is_empty() {
                    k.trim().to_string()
                } else {
                    format!("{section}.{}", k.trim())
                };
                out.push((key, v.trim().trim_matches('"').to_string()));
            }
        }
        ConfigFormat::Toml => {
            let v: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
            flatten_toml("", &v, &mut out);
        }
        ConfigFormat::Json => {
            let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
            flatten_json("", &v, &mut out);
        }
        ConfigFormat::Yaml => {
            let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
            for d in &docs {
                flatten_yaml("", d, &mut out);
            }
        }
    }
    // Later definitions win, as in most config readers; one entry per key.
    let mut map = std::collections::BTreeMap::new();
    for (k, v) in out {
        map.insert(k, v);
    }
    Ok(map.into_iter().collect())
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn flatten_toml(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
    match v {
        toml::Value::Table(t) => t.iter().for_each(|(k, v)| flatten_toml(&join(prefix, k), v, out)),
        toml::Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| flatten_toml(&format!("{prefix}[{i}]"), v, out)),
        toml::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

fn flatten_json(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(o) => o.iter().for_each(|(k, v)| flatten_json(&join(prefix, k), v, out)),
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| flatten_json(&format!("{prefix}[{i}]"), v, out)),
        serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

fn flatten_yaml(prefix: &str, v: &yaml_rust2::Yaml, out: &mut Vec<(String, String)>) {
    use yaml_rust2::Yaml;
    match v {
        Yaml::Hash(h) => {
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => format!("{other:?}"),
                };
                flatten_yaml(&join(prefix, &key), v, out);
            }
        }
        Yaml::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| flatten_yaml(&format!("{prefix}[{i}]"), v, out)),
        Yaml::String(s) | Yaml::Real(s) => out.push((prefix.to_string(), s.clone())),
        Yaml::Integer(i) => out.push((prefix.to_string(), i.to_string())),
        Yaml::Boolean(b) => out.push((prefix.to_string(), b.to_string())),
        Yaml::Null => out.push((prefix.to_string(), String::new())),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str, f: ConfigFormat) -> Vec<(String, String)> {
        parse(text, f).unwrap()
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_format_flattens_to_the_same_keys() {
        let want = kv(&[("router.power_peg", "1"), ("router.venue", "NYSE")]);
        assert_eq!(
            keys("; legacy\n[router]\npower_peg = 1\nvenue: NYSE\n", ConfigFormat::Ini),
            want
        );
        assert_eq!(
            keys("[router]\npower_peg = 1\nvenue = \"NYSE\"\n", ConfigFormat::Toml),
            want
        );
        assert_eq!(
            keys(r#"{"router": {"power_peg": 1, "venue": "NYSE"}}"#, ConfigFormat::Json),
            want
        );
        assert_eq!(
            keys("router:\n  power_peg: 1\n  venue: NYSE\n", ConfigFormat::Yaml),
            want
        );
        assert_eq!(
            keys("# env\nrouter.power_peg=1\nrouter.venue=NYSE\n", ConfigFormat::KeyValue),
            want
        );
    }

    #[test]
    fn arrays_are_indexed_and_later_keys_win() {
        assert_eq!(
            keys(r#"{"v": ["a", "b"]}"#, ConfigFormat::Json),
            kv(&[("v[0]", "a"), ("v[1]", "b")])
        );
        assert_eq!(keys("a=1\na=2\n", ConfigFormat::KeyValue), kv(&[("a", "2")]));
    }

    #[test]
    fn unparsable_text_names_the_line() {
        let err = parse("[x]\nnot a pair\n", ConfigFormat::Ini).unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(parse("{", ConfigFormat::Json).is_err());
    }
}

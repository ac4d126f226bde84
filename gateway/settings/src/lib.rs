//! Where the configuration file's keys come from besides the file: environment variables
//! over it (`PIER_STORAGE__S3__BUCKET=b` is `[storage.s3] bucket = "b"`), and secrets read
//! from files (`password_file = "/run/secrets/hub"` is `password = "<its content>"`).
//!
//! Variables: `PIER_` then the key's path, levels joined by `__`, case-insensitive; an
//! array element by its index (`PIER_UPSTREAMS__0__URL`). Top-level keys have their flag's
//! variable (`PIER_LISTEN`) or `PIER__KEY`. A value is read as TOML when it is one
//! (`true`, `42`, `["a", "b"]`, `"quoted"`), else as a string; quote it to force a string.
//! Variables without `__` are the flags' (clap reads those), never keys of the file.

use std::path::Path;

use toml::{Table, Value};

/// Keys whose value may instead be read from a file named by `<key>_file`.
const SECRET_KEYS: &[&str] = &["password", "secret", "secret_key", "access_key"];

/// Sets every `PIER_…__…` variable of `vars` in `table`; the names it set, for the log.
pub fn apply_env(
    table: &mut Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, String> {
    let mut applied = Vec::new();
    let mut vars: Vec<_> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with("PIER_") && k.contains("__"))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let rest = &name["PIER_".len()..];
        let path: Vec<String> = rest
            .strip_prefix('_')
            .unwrap_or(rest)
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path
            .iter()
            .any(|k| k.is_empty() || k.starts_with('_') || k.ends_with('_'))
        {
            return Err(format!("{name}: names no key (levels are joined by `__`)"));
        }
        set(table, &path, value_of(&raw)).map_err(|e| format!("{name}: {e}"))?;
        applied.push(name);
    }
    Ok(applied)
}

/// `raw` as a TOML value when it is one, else as a string.
fn value_of(raw: &str) -> Value {
    toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

fn set(table: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    let (last, parents) = path.split_last().expect("a non-empty path");
    let mut here = Slot::Table(table);
    for (i, key) in parents.iter().enumerate() {
        let next_is_index = path[i + 1].parse::<usize>().is_ok();
        here = here.child(key, next_is_index)?;
    }
    here.put(last, value)
}

/// A place keys or indexes lead to.
enum Slot<'a> {
    Table(&'a mut Table),
    Array(&'a mut Vec<Value>),
}

impl<'a> Slot<'a> {
    fn child(self, key: &str, wants_array: bool) -> Result<Slot<'a>, String> {
        let empty = || {
            if wants_array {
                Value::Array(Vec::new())
            } else {
                Value::Table(Table::new())
            }
        };
        let v = match self {
            Slot::Table(t) => t.entry(key.to_owned()).or_insert_with(empty),
            Slot::Array(a) => {
                let i = index(key, a.len())?;
                if i == a.len() {
                    a.push(empty());
                }
                &mut a[i]
            }
        };
        match v {
            Value::Table(t) => Ok(Slot::Table(t)),
            Value::Array(a) => Ok(Slot::Array(a)),
            _ => Err(format!("{key} is a value, not a table")),
        }
    }

    fn put(self, key: &str, value: Value) -> Result<(), String> {
        match self {
            Slot::Table(t) => {
                t.insert(key.to_owned(), value);
            }
            Slot::Array(a) => {
                let i = index(key, a.len())?;
                if i == a.len() {
                    a.push(value);
                } else {
                    a[i] = value;
                }
            }
        }
        Ok(())
    }
}

/// An array index: an existing element or the next one.
fn index(key: &str, len: usize) -> Result<usize, String> {
    match key.parse::<usize>() {
        Ok(i) if i <= len => Ok(i),
        Ok(i) => Err(format!(
            "index {i}: the array has {len} elements (next is {len})"
        )),
        Err(_) => Err(format!("{key:?} is not an index of an array")),
    }
}

/// Replaces every `<secret>_file = PATH` (anywhere in `table`) with `<secret> = ` the
/// file's content, its final line breaks removed; `PATH` relative to `base`. Answers the
/// keys it replaced.
pub fn read_secret_files(table: &mut Table, base: &Path) -> Result<Vec<String>, String> {
    let mut read = Vec::new();
    secrets_in(table, base, "", &mut read)?;
    Ok(read)
}

fn secrets_in(
    table: &mut Table,
    base: &Path,
    at: &str,
    read: &mut Vec<String>,
) -> Result<(), String> {
    for key in SECRET_KEYS {
        let file_key = format!("{key}_file");
        if let Some(v) = table.remove(&file_key) {
            let err = |m: String| format!("{at}{file_key}: {m}");
            if table.contains_key(*key) {
                return Err(err(format!("give {key} or {file_key}, not both")));
            }
            let Value::String(p) = v else {
                return Err(err("a path (a string)".into()));
            };
            let path = base.join(&p);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
            let secret = text.trim_end_matches(['\r', '\n']);
            table.insert((*key).to_owned(), Value::String(secret.to_owned()));
            read.push(format!("{at}{file_key}"));
        }
    }
    for (name, v) in table.iter_mut() {
        match v {
            Value::Table(t) => secrets_in(t, base, &format!("{at}{name}."), read)?,
            Value::Array(a) => {
                for (i, t) in a.iter_mut().enumerate() {
                    if let Value::Table(t) = t {
                        secrets_in(t, base, &format!("{at}{name}.{i}."), read)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn variables_set_nested_keys_array_elements_and_typed_values() {
        let mut t: Table =
            toml::from_str("[storage]\nbackend = \"fs\"\n[[upstreams]]\nurl = \"https://a\"\n")
                .unwrap();
        let applied = apply_env(
            &mut t,
            env(&[
                ("PIER_STORAGE__BACKEND", "s3"),
                ("PIER_STORAGE__S3__BUCKET", "b"),
                ("PIER_UPSTREAMS__0__NAME", "hub"),
                ("PIER_UPSTREAMS__1__URL", "https://b"),
                ("PIER__ADMIN_HOSTNAMES", "[\"reg.example\"]"),
                ("PIER_LIMITS__MAX_CONNECTIONS", "100"),
                ("PIER_AUTH__REALM", "\"42\""),
                ("PIER_LISTEN", "ignored: a flag's variable"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(applied.len(), 7);
        assert_eq!(t["storage"]["backend"].as_str(), Some("s3"));
        assert_eq!(t["storage"]["s3"]["bucket"].as_str(), Some("b"));
        assert_eq!(t["upstreams"][0]["url"].as_str(), Some("https://a"));
        assert_eq!(t["upstreams"][0]["name"].as_str(), Some("hub"));
        assert_eq!(t["upstreams"][1]["url"].as_str(), Some("https://b"));
        assert_eq!(t["admin_hostnames"][0].as_str(), Some("reg.example"));
        assert_eq!(t["limits"]["max_connections"].as_integer(), Some(100));
        assert_eq!(t["auth"]["realm"].as_str(), Some("42"));
        assert!(!t.contains_key("listen"));
    }

    #[test]
    fn variables_that_cannot_apply_are_errors() {
        let mut t: Table = toml::from_str("root = \"/data\"\n").unwrap();
        let e = apply_env(&mut t, env(&[("PIER_ROOT__X", "1")])).unwrap_err();
        assert!(
            e.contains("PIER_ROOT__X") && e.contains("not a table"),
            "{e}"
        );
        let e = apply_env(&mut t, env(&[("PIER_UPSTREAMS__5__URL", "u")])).unwrap_err();
        assert!(e.contains("index 5"), "{e}");
        let e = apply_env(&mut t, env(&[("PIER___", "u")])).unwrap_err();
        assert!(e.contains("names no key"), "{e}");
    }

    #[test]
    fn secrets_come_from_files_anywhere_in_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hub"), "s3cr3t\n").unwrap();
        std::fs::write(dir.path().join("key"), "AKIA\r\n").unwrap();
        let mut t: Table = toml::from_str(
            "[[upstreams]]\nurl = \"u\"\npassword_file = \"hub\"\n[storage.s3]\nsecret_key_file = \"key\"\n",
        )
        .unwrap();
        let read = read_secret_files(&mut t, dir.path()).unwrap();
        assert_eq!(
            read,
            ["storage.s3.secret_key_file", "upstreams.0.password_file"]
        );
        assert_eq!(t["upstreams"][0]["password"].as_str(), Some("s3cr3t"));
        assert!(t["upstreams"][0].get("password_file").is_none());
        assert_eq!(t["storage"]["s3"]["secret_key"].as_str(), Some("AKIA"));

        let mut both: Table =
            toml::from_str("[events]\nsecret = \"a\"\nsecret_file = \"hub\"\n").unwrap();
        let e = read_secret_files(&mut both, dir.path()).unwrap_err();
        assert_eq!(
            e,
            "events.secret_file: give secret or secret_file, not both"
        );
        let mut missing: Table = toml::from_str("password_file = \"nope\"\n").unwrap();
        let e = read_secret_files(&mut missing, dir.path()).unwrap_err();
        assert!(e.contains("cannot read") && e.contains("nope"), "{e}");
    }
}

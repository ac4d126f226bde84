//! `pier config check FILE`: validate as `nginx -t` does (resolve, open the TLS files,
//! compile the plugins; the first error with its line). `pier config from-distribution` is
//! `pier_migrate::from_distribution`.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, ServeArgs};
use crate::error::ServerError;

/// Checks `file` as `pier serve --config FILE` would read it (environment included);
/// prints what it found. The error names the file and, where it can, the line.
pub fn check(file: PathBuf) -> Result<(), ServerError> {
    let text = std::fs::read_to_string(&file)
        .map_err(|e| ServerError::Config(format!("cannot read {}: {e}", file.display())))?;
    let at_line = |e: ServerError| {
        let msg = crate::error::chain(&e);
        match line_of(&text, &msg) {
            Some(n) if !msg.contains(" line ") => {
                ServerError::Config(format!("{}:{n}: {msg}", file.display()))
            }
            _ => ServerError::Config(format!("{}: {msg}", file.display())),
        }
    };
    let config = Config::resolve(ServeArgs {
        config: Some(file.clone()),
        ..Default::default()
    })
    .map_err(at_line)?;
    if let Some(tls) = &config.tls {
        pier_http::tls::server_config(&tls.cert, &tls.key).map_err(|e| at_line(e.into()))?;
    }
    if !config.plugins.is_empty() {
        // The root's compile cache when the root exists (a check then spares `pier serve`
        // the compile); a temporary one otherwise, so a check creates nothing.
        let temporary = !config.root.is_dir();
        let cache = if temporary {
            std::env::temp_dir().join(format!("pier-config-check-{}", std::process::id()))
        } else {
            config.root.join("pier").join("plugin-cache")
        };
        let rt = Arc::new(pier_plugin_host::Runtime::new(&cache)?);
        let checked: Result<(), ServerError> = config.plugins.iter().try_for_each(|p| {
            let r = pier_plugin_host::check(&rt, &p.path).map_err(|e| {
                at_line(ServerError::Config(format!(
                    "plugin {} ({}): {}",
                    p.name,
                    p.path.display(),
                    crate::error::chain(&e)
                )))
            })?;
            let world = p.hook.world();
            if !r.worlds.contains(&world) {
                return Err(at_line(ServerError::Config(format!(
                    "plugin {} ({}) does not implement pier:plugin/{world}",
                    p.name,
                    p.path.display()
                ))));
            }
            Ok(())
        });
        if temporary {
            let _ = std::fs::remove_dir_all(&cache);
        }
        checked?;
    }
    println!("{}: ok", file.display());
    println!("  listen {}, admin {}", config.listen, config.admin_listen);
    println!(
        "  root {}, storage {:?}",
        config.root.display(),
        config.storage
    );
    for u in &config.upstreams {
        println!("  upstream {} = {}", u.name, u.url);
    }
    for p in &config.plugins {
        println!("  plugin {} ({}) compiles", p.name, p.path.display());
    }
    Ok(())
}

/// The line (1-based) of the key or value of `text` that `message` names: the longest
/// dotted key path (array indexes left out) or string value it contains.
fn line_of(text: &str, message: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut found: Vec<(String, Range<usize>)> = Vec::new();
    spans(doc.as_table(), "", &mut found);
    let best = found
        .into_iter()
        .filter(|(name, _)| name.len() >= 3 && message.contains(name.as_str()))
        .max_by_key(|(name, _)| name.len())?;
    Some(text[..best.1.start].matches('\n').count() + 1)
}

/// Every key path under `table` (and every string value) with where it is in the text.
fn spans(table: &toml_edit::Table, at: &str, out: &mut Vec<(String, Range<usize>)>) {
    for (k, item) in table.iter() {
        let path = format!("{at}{k}");
        if let Some(span) = table.key(k).and_then(|k| k.span()) {
            out.push((path.clone(), span));
        }
        match item {
            toml_edit::Item::Table(t) => spans(t, &format!("{path}."), out),
            toml_edit::Item::ArrayOfTables(a) => {
                for t in a.iter() {
                    spans(t, &format!("{path}."), out);
                }
            }
            toml_edit::Item::Value(v) => {
                if let (Some(s), Some(span)) = (v.as_str(), v.span()) {
                    out.push((s.to_owned(), span));
                }
            }
            toml_edit::Item::None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_point_at_the_key_or_value_named() {
        let text = "listen = \"127.0.0.1:5000\"\n\n[[upstreams]]\nurl = \"https://a\"\ntag_ttl = \"soon\"\n";
        assert_eq!(
            line_of(text, "upstreams.tag_ttl: invalid duration \"soon\""),
            Some(5)
        );
        assert_eq!(line_of(text, "TLS setup with https://a: nope"), Some(4));
        assert_eq!(line_of(text, "something else"), None);
    }
}

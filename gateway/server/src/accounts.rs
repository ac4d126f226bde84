//! `pier user ...`, `pier robot ...` and `pier plugin check`: account and plugin
//! management from the command line.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use pier_auth::{robots, users};

use crate::config::{AuthConfig, Config, ServeArgs, parse_duration};
use crate::error::ServerError;

/// Where the accounts live: the `[auth]` files of a config, or the defaults under a root.
#[derive(Args, Clone, Debug)]
pub struct Location {
    /// The pier.toml whose [auth] names the files
    #[arg(long, env = "PIER_CONFIG")]
    config: Option<PathBuf>,
    /// Storage root (default files under ROOT/pier/auth/)
    #[arg(long, env = "PIER_ROOT")]
    root: Option<PathBuf>,
}

impl Location {
    fn auth(&self) -> Result<AuthConfig, ServerError> {
        let c = Config::resolve(ServeArgs {
            config: self.config.clone(),
            root: self.root.clone(),
            ..Default::default()
        })?;
        Ok(c.auth.unwrap_or_else(|| AuthConfig::defaults_for(&c.root)))
    }
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user (password from --password-stdin, or prompted on stdin)
    Add {
        name: String,
        #[command(flatten)]
        at: Location,
        /// Read the password from the first line of stdin
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's password
    Passwd {
        name: String,
        #[command(flatten)]
        at: Location,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user
    Del {
        name: String,
        #[command(flatten)]
        at: Location,
    },
    /// List users
    List {
        #[command(flatten)]
        at: Location,
    },
}

#[derive(Subcommand)]
pub enum RobotCommand {
    /// Create a robot account and print its secret (shown once)
    Add {
        name: String,
        /// PROJECT:ACTION[,ACTION...], repeatable (e.g. team:pull)
        #[arg(long = "permission", required = true)]
        permissions: Vec<String>,
        /// Lifetime, e.g. 30d; never expires when omitted
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<Duration>,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        at: Location,
    },
    /// Delete a robot account
    Del {
        name: String,
        #[command(flatten)]
        at: Location,
    },
    /// List robot accounts
    List {
        #[command(flatten)]
        at: Location,
    },
}

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Validate a component against Pier's worlds; print its imports and exports.
    /// The compiled component is kept in the compile cache of the data root (from
    /// --root, --config, or ./pier-data when it exists), so `pier serve` loads it
    /// without compiling again
    Check {
        file: PathBuf,
        /// The data root whose compile cache to use (ROOT/pier/plugin-cache)
        #[arg(long)]
        root: Option<PathBuf>,
        /// Use the data root of this configuration file
        #[arg(long, conflicts_with = "root")]
        config: Option<PathBuf>,
    },
}

/// The compile cache `pier plugin check` uses, and whether it is a temporary one.
fn check_cache(
    root: Option<PathBuf>,
    config: Option<PathBuf>,
) -> Result<(PathBuf, bool), ServerError> {
    let root = match (root, config) {
        (Some(r), _) => Some(r),
        (None, Some(c)) => Some(
            crate::config::Config::resolve(crate::config::ServeArgs {
                config: Some(c),
                ..Default::default()
            })?
            .root,
        ),
        (None, None) => {
            let default = PathBuf::from("./pier-data");
            default.is_dir().then_some(default)
        }
    };
    Ok(match root {
        Some(r) => (r.join("pier").join("plugin-cache"), false),
        None => (
            std::env::temp_dir().join(format!("pier-plugin-check-{}", std::process::id())),
            true,
        ),
    })
}

fn read_password(from_stdin: bool) -> Result<String, ServerError> {
    use std::io::IsTerminal;
    let p = if !from_stdin && std::io::stdin().is_terminal() {
        // At a terminal the password is typed with echo off.
        rpassword::prompt_password("password: ")?
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if p.is_empty() {
        return Err(ServerError::Config("empty password".into()));
    }
    Ok(p)
}

pub fn user(cmd: UserCommand) -> Result<(), ServerError> {
    match cmd {
        UserCommand::Add {
            name,
            at,
            password_stdin,
        } => {
            let file = at.auth()?.users_file;
            users::add(&file, &name, &read_password(password_stdin)?)?;
            println!("user {name} added to {}", file.display());
        }
        UserCommand::Passwd {
            name,
            at,
            password_stdin,
        } => {
            let file = at.auth()?.users_file;
            users::set_password(&file, &name, &read_password(password_stdin)?)?;
            println!("password of {name} changed");
        }
        UserCommand::Del { name, at } => {
            users::delete(&at.auth()?.users_file, &name)?;
            println!("user {name} deleted");
        }
        UserCommand::List { at } => {
            for n in users::list(&at.auth()?.users_file)? {
                println!("{n}");
            }
        }
    }
    Ok(())
}

pub fn robot(cmd: RobotCommand) -> Result<(), ServerError> {
    match cmd {
        RobotCommand::Add {
            name,
            permissions,
            expires_in,
            description,
            at,
        } => {
            let perms = permissions
                .iter()
                .map(|p| robots::parse_permission(p))
                .collect::<Result<Vec<_>, _>>()?;
            let secret = robots::add(
                &at.auth()?.robots_file,
                &name,
                perms,
                expires_in,
                &description,
            )?;
            println!(
                "robot {}{name} created; its secret (shown once):",
                robots::LOGIN_PREFIX
            );
            println!("{secret}");
        }
        RobotCommand::Del { name, at } => {
            robots::delete(&at.auth()?.robots_file, &name)?;
            println!("robot {name} deleted");
        }
        RobotCommand::List { at } => {
            for r in robots::list(&at.auth()?.robots_file)? {
                let perms: Vec<String> = r
                    .permissions
                    .iter()
                    .map(|p| {
                        let a: Vec<&str> = p.actions.iter().map(|a| a.as_str()).collect();
                        format!("{}:{}", p.project, a.join(","))
                    })
                    .collect();
                let exp = match r.expires_at {
                    Some(t) if r.expired() => format!("expired {}", pier_auth::time::rfc3339(t)),
                    Some(t) => format!("expires {}", pier_auth::time::rfc3339(t)),
                    None => "never expires".into(),
                };
                println!(
                    "{}{}\t{}\t{exp}\t{}",
                    robots::LOGIN_PREFIX,
                    r.name,
                    perms.join(" "),
                    r.description
                );
            }
        }
    }
    Ok(())
}

pub fn plugin(cmd: PluginCommand) -> Result<bool, ServerError> {
    match cmd {
        PluginCommand::Check { file, root, config } => {
            let (cache, temporary) = check_cache(root, config)?;
            let rt = Arc::new(pier_plugin_host::Runtime::new(&cache)?);
            let started = std::time::Instant::now();
            let result = pier_plugin_host::check(&rt, &file);
            if temporary {
                let _ = std::fs::remove_dir_all(&cache);
            }
            let r = result?;
            println!("{}: sha256:{} ({} bytes)", file.display(), r.digest, r.size);
            match (r.cached, temporary) {
                (true, _) => println!("compile cache: {} (already compiled)", cache.display()),
                (false, false) => println!(
                    "compiled in {:.1} s, kept in the compile cache {}",
                    started.elapsed().as_secs_f64(),
                    cache.display()
                ),
                (false, true) => println!(
                    "compiled in {:.1} s (no data root: --root or --config keeps it for pier serve)",
                    started.elapsed().as_secs_f64()
                ),
            }
            println!("imports:");
            for i in &r.imports {
                println!("  {i}");
            }
            println!("exports:");
            for e in &r.exports {
                println!("  {e}");
            }
            if r.worlds.is_empty() {
                println!("implements no pier:plugin world:");
                for p in &r.problems {
                    println!("  {p}");
                }
                Ok(false)
            } else {
                println!(
                    "implements: {}",
                    r.worlds
                        .iter()
                        .map(|w| format!("pier:plugin/{w}@{}", r.version))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                Ok(true)
            }
        }
    }
}

//! `pier`: the registry gateway binary.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod access;
mod accounts;
mod cluster;
mod config;
mod config_tools;
mod error;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use pier_core::gc::{GcOptions, collect};
use pier_core::{Registry, Stores};
use pier_storage::fs::FsStore;

use crate::config::{Config, LogFormat, ServeArgs, parse_duration};
use crate::error::ServerError;

#[derive(Parser)]
#[command(name = "pier", version, about = "Pier: an OCI registry gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry
    Serve(ServeArgs),
    /// Remove blobs (and optionally untagged manifests) nothing references
    Gc(GcArgs),
    /// Pull images through a running Pier so its mirror cache holds them (preheat)
    Warm(WarmArgs),
    /// Manage local users (htpasswd-compatible bcrypt file)
    #[command(subcommand)]
    User(accounts::UserCommand),
    /// Manage robot accounts (project-scoped machine identities with an expiry)
    #[command(subcommand)]
    Robot(accounts::RobotCommand),
    /// Work with WebAssembly plugins
    #[command(subcommand)]
    Plugin(accounts::PluginCommand),
    /// Repositories and tags of a running Pier (through its admin API)
    #[command(subcommand)]
    Repos(pier_admin::client::ReposCommand),
    /// Replication jobs of a running Pier (through its admin API)
    #[command(subcommand)]
    Replication(pier_admin::client::ReplicationCommand),
    /// Webhook deliveries of a running Pier (through its admin API)
    #[command(subcommand)]
    Events(pier_admin::client::EventsCommand),
    /// Projects and their members of a running Pier (through its admin API)
    #[command(subcommand)]
    Projects(pier_admin::client_projects::ProjectsCommand),
    /// Robot accounts of a running Pier (through its admin API; `pier robot` edits the file)
    #[command(subcommand)]
    Robots(pier_admin::client_projects::RobotsCommand),
    /// Check a configuration file, or convert distribution's
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script: `pier completions bash > /etc/bash_completion.d/pier`
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `pier man | man -l -`
    Man,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate FILE as `pier serve --config FILE` would (PIER_* variables included): parse,
    /// resolve paths, open the TLS files, compile the plugins; exit 1 with the first error
    /// and its line
    Check { file: PathBuf },
    /// Print CNCF distribution's config.yml as Pier's TOML, naming what has no equivalent
    FromDistribution { file: PathBuf },
}

#[derive(Args)]
struct WarmArgs {
    /// The Pier to warm
    #[arg(
        long,
        env = "PIER_WARM_SERVER",
        default_value = "http://127.0.0.1:5000"
    )]
    server: String,
    /// USER:PASSWORD for a Pier with access control (token or basic auth)
    #[arg(long, env = "PIER_WARM_CREDS")]
    creds: Option<String>,
    /// Only these platforms of multi-platform images (os/arch[/variant]); all when omitted
    #[arg(long = "platform")]
    platforms: Vec<String>,
    /// Images as Pier names them: NAME[:TAG] or NAME@DIGEST
    #[arg(required = true)]
    images: Vec<String>,
}

#[derive(Args)]
struct GcArgs {
    /// Storage root directory [default: ./pier-data, or the configuration's]
    #[arg(long, env = "PIER_ROOT")]
    root: Option<PathBuf>,
    /// Collect the storage this configuration file names (`[storage]`: the filesystem
    /// root or an S3 bucket) instead of --root; the servers on it must not be pushed to
    #[arg(long, conflicts_with = "admin")]
    config: Option<PathBuf>,
    /// Print what would be removed, remove nothing
    #[arg(long)]
    dry_run: bool,
    /// Also remove manifests that no tag reaches
    #[arg(long)]
    untagged: bool,
    /// Keep blobs modified more recently than this (protects uploads in flight)
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    grace: Duration,
    /// Ask the running Pier at this admin listener to collect (online, through its admin
    /// API) instead of collecting --root here, which must then not be served
    #[arg(long)]
    admin: Option<String>,
    /// USER:PASSWORD of a system administrator, with --admin
    #[arg(long, env = "PIER_ADMIN_CREDS")]
    creds: Option<String>,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PIER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn report(err: &ServerError) -> ExitCode {
    let msg = error::chain(err);
    eprintln!("pier: {msg}");
    ExitCode::FAILURE
}

async fn gc(args: GcArgs) -> Result<(), ServerError> {
    if let Some(admin) = args.admin {
        return Ok(pier_admin::client::gc(
            admin,
            args.creds,
            args.dry_run,
            args.untagged,
            args.grace,
        )
        .await?);
    }
    let registry = match &args.config {
        Some(file) => {
            let config = config::Config::resolve(config::ServeArgs {
                config: Some(file.clone()),
                root: args.root.clone(),
                ..Default::default()
            })?;
            Registry::new(serve::open_stores(&config).await?)
        }
        None => {
            let root = args
                .root
                .clone()
                .unwrap_or_else(|| PathBuf::from("./pier-data"));
            Registry::new(Stores::from_backend(Arc::new(FsStore::new(&root)?)))
        }
    };
    let opts = GcOptions {
        dry_run: args.dry_run,
        untagged: args.untagged,
        grace: args.grace,
    };
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let report = collect(&registry, &opts, |line| println!("{line}"))
        .await?
        .ok_or_else(|| ServerError::Config("a garbage collection is already running".into()))?;
    println!(
        "gc: {verb} {} manifests and {} blobs ({} bytes); {} blobs referenced; {} unreferenced blobs kept by the {:?} grace period",
        report.manifests_removed.len(),
        report.blobs_removed.len(),
        report.bytes_freed(),
        report.blobs_marked,
        report.blobs_kept_by_grace,
        args.grace,
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The crash tests' fail points (`FAILPOINTS=name=action;...`), in test builds only.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    #[cfg(not(feature = "failpoints"))]
    if std::env::var_os("FAILPOINTS").is_some() {
        return report(&ServerError::Config(
            "FAILPOINTS is set, but this pier was built without fail points \
             (cargo build --features pier-server/failpoints, as scripts/test.sh does)"
                .into(),
        ));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return report(&ServerError::Io(e)),
    };
    let result = match cli.command {
        Command::Serve(args) => match Config::resolve(args) {
            Ok(config) => {
                init_logging(config.log_format);
                runtime.block_on(serve::run(config))
            }
            Err(e) => Err(e),
        },
        Command::Gc(args) => {
            init_logging(LogFormat::Text);
            runtime.block_on(gc(args))
        }
        Command::Warm(args) => {
            init_logging(LogFormat::Text);
            let creds = args.creds.as_deref().map(|c| {
                let (u, p) = c.split_once(':').unwrap_or((c, ""));
                pier_upstream::Credentials {
                    username: u.to_owned(),
                    password: p.to_owned(),
                }
            });
            runtime
                .block_on(pier_admin::warm::run(
                    args.server,
                    args.platforms,
                    args.images,
                    creds,
                    &mut |line| println!("{line}"),
                ))
                .map_err(ServerError::from)
        }
        Command::Repos(c) => runtime
            .block_on(pier_admin::client::repos(c))
            .map_err(ServerError::from),
        Command::Replication(c) => runtime
            .block_on(pier_admin::client::replication(c))
            .map_err(ServerError::from),
        Command::Events(c) => runtime
            .block_on(pier_admin::client::events(c))
            .map_err(ServerError::from),
        Command::Projects(c) => runtime
            .block_on(pier_admin::client_projects::projects(c))
            .map_err(ServerError::from),
        Command::Robots(c) => runtime
            .block_on(pier_admin::client_projects::robots(c))
            .map_err(ServerError::from),
        Command::Config(ConfigCommand::Check { file }) => config_tools::check(file),
        Command::Config(ConfigCommand::FromDistribution { file }) => std::fs::read_to_string(&file)
            .map_err(|e| ServerError::Config(format!("cannot read {}: {e}", file.display())))
            .and_then(|text| {
                pier_migrate::from_distribution(&text)
                    .map_err(|e| ServerError::Config(format!("{}: {e}", file.display())))
            })
            .map(|toml| print!("{toml}")),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "pier", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(ServerError::Io),
        Command::User(c) => accounts::user(c),
        Command::Robot(c) => accounts::robot(c),
        Command::Plugin(c) => {
            init_logging(LogFormat::Text);
            match runtime.block_on(async { accounts::plugin(c) }) {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::from(2),
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

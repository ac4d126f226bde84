//! `pier projects ...` and `pier robots ...`: projects, members and robot accounts of a
//! running Pier through its admin API (the same calls the console makes). `pier robot`
//! edits the robots file directly instead, with no server needed.

use clap::Subcommand;
use serde_json::{Value, json};

use crate::AdminError;
use crate::client::{AdminTarget, call_with, enc, field};

#[derive(Subcommand)]
pub enum ProjectsCommand {
    /// Projects you manage (all of them for a system administrator)
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Create a project
    Create {
        name: String,
        /// Everyone, anonymous included, may pull and search
        #[arg(long)]
        public: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Make a project public or private
    Set {
        name: String,
        /// Public (anyone may pull); the project becomes private when left out
        #[arg(long)]
        public: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Delete a project (refused while it has repositories)
    Delete {
        name: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// A project's members
    Members {
        name: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Add a member or change its role
    AddMember {
        project: String,
        member: String,
        /// project-admin, developer or guest
        #[arg(long)]
        role: String,
        /// MEMBER names a group of the identity source, not a user
        #[arg(long)]
        group: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Remove a member
    RemoveMember {
        project: String,
        member: String,
        #[arg(long)]
        group: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Subcommand)]
pub enum RobotsCommand {
    /// Robot accounts
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Create a robot account and print its secret (shown once)
    Create {
        name: String,
        /// PROJECT:ACTION[,ACTION...], repeatable (e.g. team:pull,push)
        #[arg(long = "permission", required = true)]
        permissions: Vec<String>,
        /// Lifetime in days; never expires when omitted
        #[arg(long)]
        expires_in_days: Option<u32>,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Replace a robot's secret and print the new one (the old one stops working)
    Rotate {
        name: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Delete a robot account
    Delete {
        name: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

fn kind(group: bool) -> &'static str {
    if group { "group" } else { "user" }
}

fn print_members(p: &Value) {
    println!("MEMBER\tKIND\tROLE");
    for m in p["members"].as_array().into_iter().flatten() {
        println!(
            "{}\t{}\t{}",
            field(m, "name"),
            field(m, "kind"),
            field(m, "role")
        );
    }
}

pub async fn projects(c: ProjectsCommand) -> Result<(), AdminError> {
    match c {
        ProjectsCommand::List { target } => {
            let mut last: Option<String> = None;
            println!("PROJECT\tACCESS\tMEMBERS");
            loop {
                let mut path = "/api/v1/projects?n=1000".to_owned();
                if let Some(l) = &last {
                    path.push_str(&format!("&last={}", enc(l)));
                }
                let v = call_with(&target, "GET", &path, None).await?;
                let page = v["projects"].as_array().cloned().unwrap_or_default();
                for p in &page {
                    let access = if p["public"] == true {
                        "public"
                    } else {
                        "private"
                    };
                    let n = p["members"].as_array().map_or(0, Vec::len);
                    println!("{}\t{access}\t{n}", field(p, "name"));
                }
                match (v["next"].as_str(), page.last()) {
                    (Some(_), Some(p)) => last = Some(field(p, "name")),
                    _ => return Ok(()),
                }
            }
        }
        ProjectsCommand::Create {
            name,
            public,
            target,
        } => {
            let body = json!({ "name": name, "public": public });
            call_with(&target, "POST", "/api/v1/projects", Some(&body)).await?;
            println!("project {name} created");
        }
        ProjectsCommand::Set {
            name,
            public,
            target,
        } => {
            let path = format!("/api/v1/projects/{}", enc(&name));
            call_with(&target, "PATCH", &path, Some(&json!({ "public": public }))).await?;
            println!(
                "project {name} is {}",
                if public { "public" } else { "private" }
            );
        }
        ProjectsCommand::Delete { name, target } => {
            let path = format!("/api/v1/projects/{}", enc(&name));
            call_with(&target, "DELETE", &path, None).await?;
            println!("project {name} deleted");
        }
        ProjectsCommand::Members { name, target } => {
            let path = format!("/api/v1/projects/{}", enc(&name));
            print_members(&call_with(&target, "GET", &path, None).await?);
        }
        ProjectsCommand::AddMember {
            project,
            member,
            role,
            group,
            target,
        } => {
            let path = format!(
                "/api/v1/projects/{}/members/{}/{}",
                enc(&project),
                kind(group),
                enc(&member)
            );
            let body = json!({ "role": role });
            call_with(&target, "PUT", &path, Some(&body)).await?;
            println!("{} {member} is {role} in {project}", kind(group));
        }
        ProjectsCommand::RemoveMember {
            project,
            member,
            group,
            target,
        } => {
            let path = format!(
                "/api/v1/projects/{}/members/{}/{}",
                enc(&project),
                kind(group),
                enc(&member)
            );
            call_with(&target, "DELETE", &path, None).await?;
            println!("{} {member} removed from {project}", kind(group));
        }
    }
    Ok(())
}

pub async fn robots(c: RobotsCommand) -> Result<(), AdminError> {
    match c {
        RobotsCommand::List { target } => {
            let v = call_with(&target, "GET", "/api/v1/robots", None).await?;
            println!("LOGIN\tPERMISSIONS\tEXPIRES\tDESCRIPTION");
            for r in v["robots"].as_array().into_iter().flatten() {
                let perms: Vec<String> = r["permissions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        let actions: Vec<&str> = p["actions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .collect();
                        format!("{}:{}", field(p, "project"), actions.join(","))
                    })
                    .collect();
                let expires = match (&r["expiresAt"], r["expired"] == true) {
                    (Value::String(t), true) => format!("expired {t}"),
                    (Value::String(t), false) => t.clone(),
                    _ => "never".into(),
                };
                println!(
                    "{}\t{}\t{expires}\t{}",
                    field(r, "login"),
                    perms.join(" "),
                    field(r, "description")
                );
            }
        }
        RobotsCommand::Create {
            name,
            permissions,
            expires_in_days,
            description,
            target,
        } => {
            let perms = permissions
                .iter()
                .map(|p| {
                    let (project, actions) = p.split_once(':').ok_or_else(|| {
                        AdminError::Failed(format!(
                            "invalid permission {p:?}: expected PROJECT:ACTION[,ACTION...]"
                        ))
                    })?;
                    Ok(json!({ "project": project, "actions": actions.split(',').collect::<Vec<_>>() }))
                })
                .collect::<Result<Vec<Value>, AdminError>>()?;
            let mut body =
                json!({ "name": name, "permissions": perms, "description": description });
            if let Some(d) = expires_in_days {
                body["expiresInDays"] = json!(d);
            }
            let v = call_with(&target, "POST", "/api/v1/robots", Some(&body)).await?;
            println!(
                "robot {} created; its secret (shown once):",
                field(&v, "login")
            );
            println!("{}", field(&v, "secret"));
        }
        RobotsCommand::Rotate { name, target } => {
            let path = format!("/api/v1/robots/{}/secret", enc(&name));
            let v = call_with(&target, "POST", &path, None).await?;
            println!("new secret of {} (shown once):", field(&v, "login"));
            println!("{}", field(&v, "secret"));
        }
        RobotsCommand::Delete { name, target } => {
            let path = format!("/api/v1/robots/{}", enc(&name));
            call_with(&target, "DELETE", &path, None).await?;
            println!("robot {name} deleted");
        }
    }
    Ok(())
}

//! Projects, members, robot accounts and users through the admin API (`/api/v1`) of a
//! Pier running the RBAC example: the RBAC plugin keeps projects in its `kv` (the TOML
//! only seeds them), a change takes effect for the next request, survives a restart,
//! is audited; project admins manage their own projects' members and nothing else.
//!
//! Needs the binary (`cargo build -p pier-server`) and the wasm32-wasip2 target; then
//! `cargo test -p pier-e2e --test admin_projects`.

mod clients_support;
#[allow(dead_code)]
#[path = "auth_clients/support.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Instant;

use pier_e2e::{Response, http};
use serde_json::{Value, json};

use crate::clients_support::TestImage;
use crate::support::{ADMIN, ALICE, BOB, RbacPier, basic, bearer, push_image_as, token};

const DAVE: (&str, &str) = ("dave", "dave-pass-1");

/// A JSON request to the admin API as `who`.
fn api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    who: (&str, &str),
    body: Option<Value>,
) -> Response {
    let auth = basic(who);
    let data = body.map(|b| b.to_string()).unwrap_or_default();
    http::request(
        addr,
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        data.as_bytes(),
    )
}

/// A monolithic blob upload as `who`; returns the status.
fn push_blob_status(addr: SocketAddr, who: (&str, &str), repo: &str) -> u16 {
    let data = format!("blob of {} at {:?}", who.0, Instant::now());
    let digest = pier_e2e::sha256_digest(data.as_bytes());
    http::request(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
        &[
            ("Authorization", &basic(who)),
            ("Content-Type", "application/octet-stream"),
        ],
        data.as_bytes(),
    )
    .status
}

fn names(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn members_added_through_the_api_may_push_at_once_and_after_a_restart() {
    let mut rp = RbacPier::start();
    let admin = rp.admin_addr;
    let registry = rp.addr;

    // The seeds of the plugin's TOML.
    let r = api(admin, "GET", "/api/v1/projects", ADMIN, None);
    r.expect_status(200, "list projects as admin");
    assert_eq!(names(&r.json(), "projects"), ["library", "team"]);
    // alice is project admin of team only: she sees team; bob (developer) sees nothing.
    let r = api(admin, "GET", "/api/v1/projects", ALICE, None);
    r.expect_status(200, "list projects as alice");
    assert_eq!(names(&r.json(), "projects"), ["team"]);
    let r = api(admin, "GET", "/api/v1/projects", BOB, None);
    assert!(names(&r.json(), "projects").is_empty(), "{r}");

    // A new user, made by the admin.
    api(
        admin,
        "POST",
        "/api/v1/users",
        ADMIN,
        Some(json!({"name": DAVE.0, "password": DAVE.1})),
    )
    .expect_status(201, "create dave");
    api(
        admin,
        "POST",
        "/api/v1/users",
        ADMIN,
        Some(json!({"name": DAVE.0, "password": "x"})),
    )
    .expect_status(409, "create dave twice");
    api(
        admin,
        "POST",
        "/api/v1/users",
        BOB,
        Some(json!({"name": "eve", "password": "x"})),
    )
    .expect_status(403, "bob creating a user");
    // An account made through the API logs in with the very next request (no wait for
    // the users file's watcher): dave is known, just not a member yet.
    assert_eq!(
        push_blob_status(registry, DAVE, "team/app"),
        403,
        "dave's first login right after the API created him"
    );

    // Who may add him: not bob (developer), not alice in a project she doesn't manage.
    let member = "/api/v1/projects/team/members/user/dave";
    api(
        admin,
        "PUT",
        member,
        BOB,
        Some(json!({"role": "developer"})),
    )
    .expect_status(403, "bob adding a member");
    api(
        admin,
        "PUT",
        "/api/v1/projects/library/members/user/dave",
        ALICE,
        Some(json!({"role": "developer"})),
    )
    .expect_status(403, "alice adding a member to library");
    api(admin, "PUT", member, ALICE, Some(json!({"role": "boss"})))
        .expect_status(400, "unknown role");
    // A member name with '%' (sent as %25): refused like in user names, whatever a
    // client does with percent signs in paths.
    let r = api(
        admin,
        "PUT",
        "/api/v1/projects/team/members/user/50%25off",
        ALICE,
        Some(json!({"role": "developer"})),
    );
    r.expect_status(400, "a member name with '%'");
    assert!(r.text().contains("'%'"), "the error says why: {}", r.text());
    // alice, project admin of team, adds dave as developer: he pushes at once.
    let r = api(
        admin,
        "PUT",
        member,
        ALICE,
        Some(json!({"role": "developer"})),
    );
    r.expect_status(200, "alice adds dave");
    assert!(
        r.json()["members"]
            .as_array()
            .unwrap()
            .contains(&json!({"kind": "user", "name": "dave", "role": "developer"})),
        "{r}"
    );
    assert_eq!(
        push_blob_status(registry, DAVE, "team/app"),
        201,
        "dave pushes after being added"
    );
    push_image_as(
        registry,
        &basic(DAVE),
        "team/app",
        "v1",
        &TestImage::new("v1", 1),
    );

    // Persisted in the plugin's kv: a restart keeps him.
    rp.pier.restart();
    let (admin, registry) = (rp.admin_addr, rp.addr);
    assert_eq!(
        push_blob_status(registry, DAVE, "team/app"),
        201,
        "dave pushes after a restart"
    );
    let team = api(admin, "GET", "/api/v1/projects/team", ALICE, None);
    team.expect_status(200, "alice reads team");
    assert_eq!(
        team.json()["members"].as_array().unwrap().len(),
        4,
        "{team}"
    );

    // Demoted to guest: pushes refused, pulls allowed; removed: nothing.
    api(admin, "PUT", member, ADMIN, Some(json!({"role": "guest"}))).expect_status(200, "demote");
    assert_eq!(
        push_blob_status(registry, DAVE, "team/app"),
        403,
        "guest push"
    );
    api(admin, "DELETE", member, ALICE, None).expect_status(200, "remove dave");
    api(admin, "DELETE", member, ALICE, None).expect_status(404, "remove dave twice");

    // Projects: only system admins create and delete; not while repositories remain.
    api(
        admin,
        "POST",
        "/api/v1/projects",
        ALICE,
        Some(json!({"name": "apps"})),
    )
    .expect_status(403, "alice creating a project");
    api(
        admin,
        "POST",
        "/api/v1/projects",
        ADMIN,
        Some(json!({"name": "Apps"})),
    )
    .expect_status(400, "invalid project name");
    let r = api(
        admin,
        "POST",
        "/api/v1/projects",
        ADMIN,
        Some(json!({"name": "apps", "public": true})),
    );
    r.expect_status(201, "create apps");
    assert_eq!(
        r.json(),
        json!({"name": "apps", "public": true, "members": []})
    );
    api(
        admin,
        "POST",
        "/api/v1/projects",
        ADMIN,
        Some(json!({"name": "apps"})),
    )
    .expect_status(409, "create apps twice");
    // public: anonymous pulls of apps/x are allowed (404 for the missing manifest, not 401)
    let anon = || {
        let t = token(registry, None, &["repository:apps/x:pull"]);
        http::request(
            registry,
            "GET",
            "/v2/apps/x/manifests/v1",
            &[("Authorization", &bearer(&t))],
            b"",
        )
    };
    let r = anon();
    assert_eq!(r.status, 404, "{r}");
    api(
        admin,
        "PATCH",
        "/api/v1/projects/apps",
        ADMIN,
        Some(json!({"public": false})),
    )
    .expect_status(200, "make apps private");
    let r = anon();
    assert_eq!(r.status, 401, "{r}");
    api(admin, "DELETE", "/api/v1/projects/team", ADMIN, None)
        .expect_status(409, "delete team with repositories");
    api(admin, "DELETE", "/api/v1/projects/apps", ALICE, None)
        .expect_status(403, "alice deleting a project");
    api(admin, "DELETE", "/api/v1/projects/apps", ADMIN, None).expect_status(204, "delete apps");
    api(admin, "GET", "/api/v1/projects/apps", ADMIN, None).expect_status(404, "apps gone");
    // A name longer than the plugin's kv takes as a key can't be a project: 404, not a
    // failing store (schemathesis found the 503).
    let long = format!("/api/v1/projects/{}", "a".repeat(300));
    api(admin, "GET", &long, ADMIN, None).expect_status(404, "GET an overlong project");
    api(admin, "DELETE", &long, ADMIN, None).expect_status(404, "DELETE an overlong project");

    // Every change is audited with who made it.
    let log = std::fs::read_to_string(rp.log_path()).unwrap();
    for action in [
        "project.member.set",
        "project.member.remove",
        "project.create",
        "project.delete",
        "user.create",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("admin API change") && l.contains(action)),
            "no audit line for {action}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.contains("project.member.set") && l.contains("alice")),
        "the audit line names alice"
    );
}

#[test]
fn robots_are_created_rotated_and_removed_through_the_api() {
    let rp = RbacPier::start();
    let (admin, registry) = (rp.admin_addr, rp.addr);
    api(
        admin,
        "POST",
        "/api/v1/robots",
        ALICE,
        Some(json!({"name": "x", "permissions": [{"project": "team", "actions": ["pull"]}]})),
    )
    .expect_status(403, "alice creating a robot");
    api(
        admin,
        "POST",
        "/api/v1/robots",
        ADMIN,
        Some(json!({"name": "deploy", "permissions": []})),
    )
    .expect_status(400, "a robot without permissions");
    api(
        admin,
        "POST",
        "/api/v1/robots",
        ADMIN,
        Some(json!({"name": "deploy", "permissions": [{"project": "team", "actions": ["admin"]}]})),
    )
    .expect_status(400, "a robot with admin");
    let r = api(
        admin,
        "POST",
        "/api/v1/robots",
        ADMIN,
        Some(
            json!({"name": "deploy", "description": "CD", "expiresInDays": 30,
                    "permissions": [{"project": "team", "actions": ["pull", "push"]}]}),
        ),
    );
    r.expect_status(201, "create robot");
    let created = r.json();
    assert_eq!(created["login"], "robot$deploy");
    assert!(created["expiresAt"].is_string(), "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    let robot = ("robot$deploy", secret.as_str());
    assert_eq!(
        push_blob_status(registry, robot, "team/app"),
        201,
        "the robot's first push right after the API created it"
    );
    assert_eq!(
        push_blob_status(registry, robot, "library/x"),
        403,
        "no permission on library"
    );

    // The list shows it without the secret.
    let list = api(admin, "GET", "/api/v1/robots", ADMIN, None);
    list.expect_status(200, "list robots");
    let found = list.json()["robots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "deploy")
        .cloned()
        .expect("deploy listed");
    assert!(found.get("secret").is_none(), "{found}");

    // Permissions changed: pull only.
    api(
        admin,
        "PATCH",
        "/api/v1/robots/deploy",
        ADMIN,
        Some(json!({"permissions": [{"project": "team", "actions": ["pull"]}]})),
    )
    .expect_status(200, "change permissions");
    assert_eq!(
        push_blob_status(registry, robot, "team/app"),
        403,
        "a push right after the API made the robot pull-only"
    );

    // Rotated: the old secret stops working, the new one works.
    let r = api(admin, "POST", "/api/v1/robots/deploy/secret", ADMIN, None);
    r.expect_status(200, "rotate");
    let new_secret = r.json()["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert_eq!(
        push_blob_status(registry, robot, "team/app"),
        401,
        "the old secret right after the API rotated it"
    );
    let pull = http::request(
        registry,
        "GET",
        "/v2/team/app/tags/list",
        &[("Authorization", &basic(("robot$deploy", &new_secret)))],
        b"",
    );
    assert_ne!(pull.status, 401, "new secret accepted: {pull}");
    assert_ne!(pull.status, 403, "new secret may pull: {pull}");

    api(admin, "DELETE", "/api/v1/robots/deploy", ADMIN, None).expect_status(204, "delete robot");
    api(admin, "DELETE", "/api/v1/robots/deploy", ADMIN, None).expect_status(404, "delete twice");
    api(admin, "POST", "/api/v1/robots/deploy/secret", ADMIN, None)
        .expect_status(404, "rotate a deleted robot");
}

/// `pier ARGS --admin URL --creds USER:PASS`: (success, stdout, stderr).
fn cli(pier: &RbacPier, args: &[&str], who: (&str, &str)) -> (bool, String, String) {
    pier_e2e::admin_cli(pier.admin_addr, args, Some(who))
}

#[test]
fn the_cli_manages_projects_members_and_robots_through_the_api() {
    let rp = RbacPier::start();
    let (ok, out, err) = cli(&rp, &["projects", "create", "tools", "--public"], ADMIN);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cli(&rp, &["projects", "list"], ADMIN);
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l == "tools\tpublic\t0"), "{out}");
    let (ok, _, err) = cli(
        &rp,
        &[
            "projects",
            "add-member",
            "tools",
            "bob",
            "--role",
            "developer",
        ],
        ADMIN,
    );
    assert!(ok, "{err}");
    assert_eq!(
        push_blob_status(rp.addr, BOB, "tools/x"),
        201,
        "bob pushes to tools"
    );
    let (ok, out, _) = cli(&rp, &["projects", "members", "tools"], ADMIN);
    assert!(ok && out.contains("bob\tuser\tdeveloper"), "{out}");
    // bob is no project admin of tools: refused, with the reason.
    let (ok, _, err) = cli(
        &rp,
        &[
            "projects",
            "add-member",
            "tools",
            "carol",
            "--role",
            "guest",
        ],
        BOB,
    );
    assert!(!ok && err.contains("403"), "{err}");
    let (ok, _, err) = cli(&rp, &["projects", "remove-member", "tools", "bob"], ADMIN);
    assert!(ok, "{err}");
    assert_eq!(
        push_blob_status(rp.addr, BOB, "tools/x"),
        403,
        "bob removed"
    );

    // Robots: created with a secret printed once, rotated, deleted.
    let (ok, out, err) = cli(
        &rp,
        &[
            "robots",
            "create",
            "cli-bot",
            "--permission",
            "tools:pull,push",
        ],
        ADMIN,
    );
    assert!(ok, "{err}");
    let secret = out.lines().last().unwrap().to_owned();
    let bot = ("robot$cli-bot", secret.as_str());
    assert_eq!(
        push_blob_status(rp.addr, bot, "tools/x"),
        201,
        "the robot the CLI created, at once"
    );
    let (ok, out, _) = cli(&rp, &["robots", "list"], ADMIN);
    assert!(
        ok && out.contains("robot$cli-bot\ttools:pull,push\tnever"),
        "{out}"
    );
    let (ok, out, err) = cli(&rp, &["robots", "rotate", "cli-bot"], ADMIN);
    assert!(ok, "{err}");
    let rotated = out.lines().last().unwrap().to_owned();
    assert_eq!(
        push_blob_status(rp.addr, bot, "tools/x"),
        401,
        "the old secret right after the CLI rotated it"
    );
    assert_eq!(
        push_blob_status(rp.addr, ("robot$cli-bot", &rotated), "tools/x"),
        201
    );
    let (ok, _, err) = cli(&rp, &["robots", "delete", "cli-bot"], ADMIN);
    assert!(ok, "{err}");
    // Blobs alone make no repository: the project can go.
    let (ok, out, err) = cli(&rp, &["projects", "delete", "tools"], ADMIN);
    assert!(ok && out.contains("project tools deleted"), "{out}{err}");
    let (ok, _, err) = cli(&rp, &["projects", "members", "tools"], ADMIN);
    assert!(!ok && err.contains("404"), "{err}");
}

//! The plugin host (`pier-plugin-host`) with the real plugins of `plugins/`, built from
//! source for wasm32-wasip2 by [`pier_e2e::plugins::build`]: the RBAC role matrix, a
//! hostile plugin that spins, eats memory, panics, overflows its stack and returns
//! garbage, the concurrency cap, hot reload under load, `check`, the compile cache.
//!
//! `cargo test -p pier-e2e --test plugin_host` (needs `rustup target add wasm32-wasip2`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pier_auth::{
    AccessRequest, Action, AuthnOutcome, Authorizer, Credentials, Decision, Identity, PolicyError,
    PolicyFailure, ProjectPermission, Robot, Subject,
};
use pier_e2e::plugins;
use pier_plugin_host::{Grants, PluginAuthorizer, PluginError, PluginSettings, Runtime};
use serde_json::json;
use tempfile::TempDir;

const ALL: [Action; 6] = Action::ALL;
const NONE: [Action; 0] = [];

/// The configuration documented in plugins/rbac/README.md.
fn rbac_config() -> serde_json::Map<String, serde_json::Value> {
    let v = json!({
        "system_admins": ["admin"],
        "default_public": false,
        "projects": [
            {"name": "team", "public": false,
             "members": {"alice": "project-admin", "bob": "developer", "carol": "guest"},
             "groups": {"devs": "developer"}},
            {"name": "library", "public": true}
        ],
        "ldap": {"user_dn": "uid={username},ou=people,dc=pier,dc=test"}
    });
    v.as_object().expect("an object").clone()
}

fn user(name: &str, groups: &[&str]) -> Subject {
    Subject::User(Identity {
        name: name.to_owned(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    })
}

fn robot(name: &str, permissions: &[(&str, &[Action])]) -> Subject {
    Subject::Robot(Robot {
        name: name.to_owned(),
        permissions: permissions
            .iter()
            .map(|(p, a)| ProjectPermission {
                project: p.to_string(),
                actions: a.to_vec(),
            })
            .collect(),
    })
}

fn req(subject: &Subject, action: Action, repository: Option<&str>) -> AccessRequest {
    AccessRequest {
        subject: subject.clone(),
        action,
        repository: repository.map(str::to_owned),
        client: "127.0.0.1:40000".to_owned(),
        context: pier_auth::RequestContext::new(pier_auth::RequestRoute::Token),
    }
}

/// A runtime with its own compile cache in `dir`.
fn runtime(dir: &Path) -> Arc<Runtime> {
    Arc::new(Runtime::new(&dir.join("cache")).expect("plugin runtime"))
}

fn settings(name: &str, path: &Path, dir: &Path) -> PluginSettings {
    let mut s = PluginSettings::new(name, path.to_owned(), dir.join("kv"));
    s.grants = Grants {
        log: true,
        config: true,
        ..Grants::default()
    };
    s
}

/// Loads a plugin with a fresh runtime and temp dir, after `tune` adjusted the settings.
async fn load(
    name: &str,
    path: &Path,
    tune: impl FnOnce(&mut PluginSettings),
) -> (TempDir, PluginAuthorizer) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut s = settings(name, path, dir.path());
    tune(&mut s);
    let a = PluginAuthorizer::load(runtime(dir.path()), s)
        .await
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    (dir, a)
}

async fn rbac() -> (TempDir, PluginAuthorizer) {
    load("rbac", &plugins::build().rbac, |s| s.config = rbac_config()).await
}

/// The actions `subject` is allowed on `repository`, in `Action::ALL` order. Every
/// denial must carry a reason.
async fn allowed(a: &PluginAuthorizer, subject: &Subject, repository: Option<&str>) -> Vec<Action> {
    let mut out = Vec::new();
    for action in ALL {
        match a.authorize(&req(subject, action, repository)).await {
            Ok(Decision::Allow) => out.push(action),
            Ok(Decision::Deny(reason)) => assert!(
                !reason.trim().is_empty(),
                "{subject} {action} {repository:?}: empty deny reason"
            ),
            Err(e) => panic!("{subject} {action} {repository:?}: {e}"),
        }
    }
    out
}

async fn deny_reason(a: &PluginAuthorizer, r: AccessRequest) -> String {
    match a.authorize(&r).await {
        Ok(Decision::Deny(reason)) => reason,
        other => panic!("{r:?}: expected a denial, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_role_matrix() {
    use Action::*;
    let (_dir, a) = rbac().await;
    let team = Some("team/app");
    let library = Some("library/alpine");
    let ci = robot("ci", &[("team", &[Pull])]);
    let cases: Vec<(Subject, Option<&str>, Vec<Action>)> = vec![
        // system admins: everything, in any project and system-wide
        (user("admin", &[]), team, ALL.to_vec()),
        (user("admin", &[]), library, ALL.to_vec()),
        (user("admin", &[]), Some("elsewhere/x"), ALL.to_vec()),
        (user("admin", &[]), None, ALL.to_vec()),
        // project roles
        (
            user("alice", &[]),
            team,
            vec![Pull, Push, Delete, Search, Manage],
        ),
        (user("bob", &[]), team, vec![Pull, Push, Search]),
        (user("carol", &[]), team, vec![Pull, Search]),
        (user("dave", &[]), team, vec![]),
        // a role through a group; the highest of own and group roles counts
        (user("erin", &["devs"]), team, vec![Pull, Push, Search]),
        (user("carol", &["devs"]), team, vec![Pull, Push, Search]),
        (user("erin", &["ops"]), team, vec![]),
        // public project: pull and search for everyone, nothing more without a role
        (user("alice", &[]), library, vec![Pull, Search]),
        (user("dave", &[]), library, vec![Pull, Search]),
        (Subject::Anonymous, library, vec![Pull, Search]),
        (Subject::Anonymous, team, vec![]),
        (Subject::Anonymous, Some("elsewhere/x"), vec![]),
        (Subject::Anonymous, None, vec![]),
        // robots: their permissions (search with pull), plus what public projects give everyone
        (ci.clone(), team, vec![Pull, Search]),
        (ci.clone(), library, vec![Pull, Search]),
        (ci.clone(), Some("elsewhere/x"), vec![]),
        (ci.clone(), None, vec![]),
        (
            robot("god", &[("team", &ALL)]),
            team,
            vec![Pull, Push, Delete, Search],
        ),
        // only system admins act system-wide
        (user("alice", &[]), None, vec![]),
    ];
    for (subject, repo, want) in cases {
        assert_eq!(
            allowed(&a, &subject, repo).await,
            want,
            "{subject} on {repo:?}"
        );
    }

    let reasons = [
        (
            req(&user("bob", &[]), Delete, team),
            "bob is developer in project team: delete not allowed",
        ),
        (
            req(&user("carol", &[]), Push, team),
            "carol is guest in project team: push not allowed",
        ),
        (
            req(&Subject::Anonymous, Pull, team),
            "anonymous access to private project team",
        ),
        (
            req(&Subject::Anonymous, Push, library),
            "anonymous access to project library: push not allowed",
        ),
        (
            req(&user("dave", &[]), Pull, team),
            "dave is not a member of private project team",
        ),
        (
            req(&ci, Push, team),
            "robot ci has no push permission on project team",
        ),
        (
            req(&user("alice", &[]), Admin, team),
            "alice: admin is reserved for system administrators",
        ),
    ];
    for (r, want) in reasons {
        assert_eq!(deny_reason(&a, r).await, want);
    }
    assert_eq!(a.metrics().calls() as usize, 23 * 6 + 7);
    for kind in [
        PolicyFailure::Trap,
        PolicyFailure::Timeout,
        PolicyFailure::InvalidResult,
    ] {
        assert_eq!(a.metrics().errors(kind), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_config_problems_deny_everything() {
    let path = &plugins::build().rbac;
    // malformed: every request is denied with the reason
    let (_d1, bad) = load("rbac", path, |s| {
        s.config = json!({"projects": [{"name": "team", "members": {"alice": "owner"}}]})
            .as_object()
            .unwrap()
            .clone();
    })
    .await;
    for subject in [user("admin", &[]), user("alice", &[]), Subject::Anonymous] {
        let r = deny_reason(&bad, req(&subject, Action::Pull, Some("team/app"))).await;
        assert!(r.starts_with("rbac: invalid config: "), "{r}");
        assert!(r.contains("unknown variant `owner`"), "{r}");
    }
    let creds = Credentials {
        username: "alice".into(),
        password: "pw".into(),
        client: "127.0.0.1:1".into(),
    };
    let e = bad.authenticate(&creds).await.unwrap_err();
    assert_eq!(e.kind, PolicyFailure::Unavailable, "{e}");

    // config not granted: the plugin sees `{}`: no admins, no public projects
    let (_d2, ungranted) = load("rbac", path, |s| {
        s.config = rbac_config();
        s.grants.config = false;
    })
    .await;
    assert_eq!(
        allowed(&ungranted, &user("admin", &[]), Some("library/x")).await,
        NONE
    );
    assert_eq!(
        allowed(&ungranted, &Subject::Anonymous, Some("library/x")).await,
        NONE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_authenticate_without_a_directory() {
    let (_dir, a) = rbac().await; // ldap configured, capability not granted
    let creds = |u: &str| Credentials {
        username: u.to_owned(),
        password: "secret".to_owned(),
        client: "127.0.0.1:1".to_owned(),
    };
    // the bind is denied (no grant): Pier's own users decide
    assert_eq!(
        a.authenticate(&creds("alice")).await.unwrap(),
        AuthnOutcome::NotHandled
    );
    assert_eq!(
        a.authenticate(&creds("robot$ci")).await.unwrap(),
        AuthnOutcome::NotHandled
    );
    // names that would rewrite the DN are refused before any bind
    for bad in ["alice,ou=admins", "a=b", "x\0", "a\\2c", "\"q\""] {
        assert_eq!(
            a.authenticate(&creds(bad)).await.unwrap(),
            AuthnOutcome::Invalid,
            "{bad:?}"
        );
    }
    // no ldap in the config: nothing handled
    let (_d2, plain) = load("rbac", &plugins::build().rbac, |s| {
        s.config = json!({"system_admins": ["admin"]})
            .as_object()
            .unwrap()
            .clone();
        s.grants.ldap = true;
    })
    .await;
    assert_eq!(
        plain.authenticate(&creds("alice")).await.unwrap(),
        AuthnOutcome::NotHandled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_allows_pull_and_search_and_everything_for_admins() {
    use Action::*;
    let (_dir, a) = load("template", &plugins::build().template, |s| {
        s.config = json!({"admins": "alice, bob"}).as_object().unwrap().clone();
    })
    .await;
    for who in [user("alice", &[]), user("bob", &[])] {
        assert_eq!(allowed(&a, &who, Some("any/repo")).await, ALL, "{who}");
        assert_eq!(allowed(&a, &who, None).await, ALL, "{who}");
    }
    for who in [user("carol", &[]), Subject::Anonymous, robot("alice", &[])] {
        assert_eq!(
            allowed(&a, &who, Some("any/repo")).await,
            [Pull, Search],
            "{who}"
        );
    }
    assert_eq!(
        deny_reason(&a, req(&Subject::Anonymous, Push, Some("x/y"))).await,
        "anonymous may only pull and search"
    );
    let creds = Credentials {
        username: "alice".into(),
        password: "pw".into(),
        client: "127.0.0.1:1".into(),
    };
    assert_eq!(
        a.authenticate(&creds).await.unwrap(),
        AuthnOutcome::NotHandled
    );
}

/// `ok/x` is allowed: the plugin answers normally.
async fn assert_healthy(a: &PluginAuthorizer, after: &str) {
    let r = a
        .authorize(&req(&Subject::Anonymous, Action::Pull, Some("ok/x")))
        .await;
    assert!(
        matches!(r, Ok(Decision::Allow)),
        "a normal call after {after}: {r:?}"
    );
}

async fn expect_failure(a: &PluginAuthorizer, repo: &str) -> (PolicyError, Duration) {
    let start = Instant::now();
    let r = a
        .authorize(&req(&user("mallory", &[]), Action::Pull, Some(repo)))
        .await;
    let took = start.elapsed();
    match r {
        Err(e) => (e, took),
        Ok(d) => panic!("{repo}: expected a failure, got {d:?} after {took:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugin_fails_closed_and_the_host_survives() {
    let (_dir, a) = load("hostile", &plugins::build().hostile, |s| {
        s.timeout = Duration::from_millis(50);
        s.memory_limit = 16 << 20;
    })
    .await;
    assert_healthy(&a, "loading").await;
    let cases = [
        ("loop/x", PolicyFailure::Timeout),
        ("membomb/x", PolicyFailure::OutOfMemory),
        ("panic/x", PolicyFailure::Trap),
        ("stack/x", PolicyFailure::Trap),
        ("garbage/x", PolicyFailure::InvalidResult),
    ];
    for (repo, kind) in cases {
        let (e, took) = expect_failure(&a, repo).await;
        eprintln!("{repo}: {e} ({took:?})");
        assert_eq!(e.kind, kind, "{repo}: {e}");
        assert_eq!(e.plugin, "hostile");
        assert!(!e.message.is_empty());
        assert!(took < Duration::from_secs(2), "{repo} took {took:?}");
        assert_healthy(&a, repo).await;
        // and again: the replacement instance is as good as the first
        let (again, _) = expect_failure(&a, repo).await;
        assert_eq!(again.kind, kind, "{repo} a second time: {again}");
        assert_healthy(&a, repo).await;
    }
    let (e, took) = expect_failure(&a, "loop/y").await;
    assert_eq!(e.kind, PolicyFailure::Timeout);
    assert!(
        took >= Duration::from_millis(45),
        "the deadline is 50 ms; stopped after {took:?}"
    );
    assert!(e.message.contains("deadline"), "{e}");

    // an oversized reason full of control characters is cut and cleaned, not refused
    match a
        .authorize(&req(&Subject::Anonymous, Action::Pull, Some("bigreason/x")))
        .await
    {
        Ok(Decision::Deny(reason)) => {
            assert!(!reason.is_empty());
            assert!(reason.len() <= 256, "{} bytes", reason.len());
            assert!(!reason.chars().any(char::is_control), "{reason:?}");
            assert!(reason.starts_with("denied[31m"), "{reason:?}");
        }
        other => panic!("bigreason: {other:?}"),
    }
    let m = a.metrics();
    assert_eq!(m.errors(PolicyFailure::Timeout), 3);
    assert_eq!(m.errors(PolicyFailure::OutOfMemory), 2);
    assert_eq!(m.errors(PolicyFailure::Trap), 4);
    assert_eq!(m.errors(PolicyFailure::InvalidResult), 2);
    assert_eq!(m.errors(PolicyFailure::Overloaded), 0);
    let mut text = String::new();
    m.render(&mut text);
    assert!(
        text.contains("pier_plugin_errors_total{plugin=\"hostile\",kind=\"timeout\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("pier_plugin_traps_total{plugin=\"hostile\"} 9"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_cap_waits_then_fails_fast() {
    let (_dir, a) = load("hostile", &plugins::build().hostile, |s| {
        s.timeout = Duration::from_millis(50);
        s.max_instances = 1;
    })
    .await;
    let a = Arc::new(a);
    let anon = Subject::Anonymous;

    // slow (~30 ms) holds the only instance; a second call waits for it (< 50 ms)
    let a1 = a.clone();
    let slow = tokio::spawn(async move {
        a1.authorize(&req(&Subject::Anonymous, Action::Pull, Some("slow/x")))
            .await
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let start = Instant::now();
    let second = a.authorize(&req(&anon, Action::Pull, Some("ok/x"))).await;
    let waited = start.elapsed();
    assert_eq!(
        slow.await.unwrap().ok(),
        Some(Decision::Allow),
        "the slow call"
    );
    assert_eq!(
        second.ok(),
        Some(Decision::Allow),
        "the waiting call (after {waited:?})"
    );
    assert!(
        waited >= Duration::from_millis(5),
        "the second call did not wait: {waited:?}"
    );

    // three calls that spin forever on one instance: all fail, none hangs
    let start = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move {
                a.authorize(&req(&Subject::Anonymous, Action::Pull, Some("loop/x")))
                    .await
            })
        })
        .collect();
    let mut kinds = Vec::new();
    for c in calls {
        let r = tokio::time::timeout(Duration::from_secs(5), c)
            .await
            .expect("a call hung")
            .unwrap();
        match r {
            Err(e) => kinds.push(e.kind),
            Ok(d) => panic!("loop/x answered {d:?}"),
        }
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "three loops took {took:?}");
    assert!(kinds.contains(&PolicyFailure::Timeout), "{kinds:?}");
    assert!(
        kinds
            .iter()
            .all(|k| matches!(k, PolicyFailure::Timeout | PolicyFailure::Overloaded)),
        "{kinds:?}"
    );
    eprintln!("three loops on one instance: {kinds:?} in {took:?}");
    assert_healthy(&a, "the loops").await;
}

/// Appends a custom section (`id 0, size, name, payload`): a different file, the same
/// component.
fn with_custom_section(original: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    let mut out = original.to_vec();
    out.push(0x00);
    leb128(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// Replaces a file atomically (write a sibling, rename over).
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_drops_no_call() {
    let original = std::fs::read(&plugins::build().rbac).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("rbac.wasm");
    std::fs::write(&path, &original).unwrap();
    let mut s = settings("rbac", &path, dir.path());
    s.config = rbac_config();
    let a = Arc::new(
        PluginAuthorizer::load(runtime(dir.path()), s)
            .await
            .unwrap(),
    );
    let first = a.digest();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (a, stop, ok, failed) = (a.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let r = req(&Subject::Anonymous, Action::Pull, Some("library/x"));
                while !stop.load(Ordering::Relaxed) {
                    match a.authorize(&r).await {
                        Ok(Decision::Allow) => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("failed call during reload: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;

    replace(
        &path,
        &with_custom_section(&original, "pier-test-version", b"2"),
    );
    assert!(a.reload().await.unwrap(), "version 2 swapped in");
    let second = a.digest();
    assert_ne!(second, first);
    tokio::time::sleep(Duration::from_millis(200)).await;

    replace(
        &path,
        &with_custom_section(&original, "pier-test-version", b"3"),
    );
    assert!(a.reload().await.unwrap(), "version 3 swapped in");
    let third = a.digest();
    assert_ne!(third, second);
    assert_ne!(third, first);

    // same bytes: nothing to do
    assert!(
        !a.reload().await.unwrap(),
        "an unchanged file must not swap"
    );
    assert_eq!(a.digest(), third);

    // a broken file is refused and version 3 keeps answering
    replace(&path, b"\0asm\x0d\0\x01\0 this is not a component");
    let e = a.reload().await.expect_err("a corrupt file must not load");
    assert!(matches!(e, PluginError::Invalid { .. }), "{e}");
    assert_eq!(a.digest(), third);
    // a missing file too
    std::fs::remove_file(&path).unwrap();
    let e = a.reload().await.expect_err("a missing file must not load");
    assert!(matches!(e, PluginError::Read { .. }), "{e}");
    assert_eq!(a.digest(), third);

    let rest = Duration::from_secs(2).saturating_sub(start.elapsed());
    tokio::time::sleep(rest.max(Duration::from_millis(200))).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{ok} calls answered during the reloads");
    assert_eq!(
        failed, 0,
        "calls failed during the reloads ({ok} succeeded)"
    );
    assert!(ok > 100, "only {ok} calls in 2 s");
    assert_eq!(
        a.authorize(&req(&user("bob", &[]), Action::Delete, Some("team/app")))
            .await
            .unwrap(),
        Decision::Deny("bob is developer in project team: delete not allowed".into())
    );
    let mut text = String::new();
    a.metrics().render(&mut text);
    assert!(
        text.contains("pier_plugin_reloads_total{plugin=\"rbac\"} 2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_worlds_imports_and_exports() {
    let p = plugins::build();
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());

    // A component imports only the capabilities its code calls (the component linker
    // drops unused imports of the world), so `check` shows what a plugin really uses.
    let caps = |imports: &[String]| -> Vec<String> {
        imports
            .iter()
            .filter_map(|i| i.strip_prefix("pier:plugin/"))
            .map(str::to_owned)
            .collect()
    };
    for (path, worlds, want) in [
        (
            &p.rbac,
            &["authorizer", "managed-authorizer"][..],
            vec![
                "types@0.2.0",
                "log@0.2.0",
                "config@0.2.0",
                "kv@0.2.0",
                "ldap@0.2.0",
            ],
        ),
        (
            &p.template,
            &["authorizer"][..],
            vec!["types@0.2.0", "log@0.2.0", "config@0.2.0"],
        ),
        (
            &p.hostile,
            &["authorizer"][..],
            vec!["types@0.2.0", "http-outbound@0.2.0"],
        ),
    ] {
        let r = pier_plugin_host::check(&rt, path).unwrap();
        let name = path.display();
        assert_eq!(r.worlds, worlds, "{name}: {:?}", r.problems);
        assert!(r.problems.is_empty(), "{name}: {:?}", r.problems);
        let mut got = caps(&r.imports);
        got.sort();
        let mut want: Vec<String> = want.into_iter().map(str::to_owned).collect();
        want.sort();
        assert_eq!(got, want, "{name}: {:?}", r.imports);
        // WASI 0.2 interfaces Rust's std links against
        assert!(
            r.imports.iter().any(|i| i.starts_with("wasi:cli/")),
            "{:?}",
            r.imports
        );
        let mut exports = vec!["authenticate", "authorize"];
        if worlds.contains(&"managed-authorizer") {
            exports.push("pier:plugin/projects@0.2.0");
        }
        let mut got = r.exports.clone();
        got.sort();
        assert_eq!(got, exports, "{name}");
        assert_eq!(r.size, std::fs::metadata(path).unwrap().len());
        assert_eq!(r.digest.len(), 64);
    }

    // not WebAssembly at all
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "not wasm").unwrap();
    let e = pier_plugin_host::check(&rt, &text).unwrap_err();
    assert!(matches!(e, PluginError::Invalid { .. }), "{e}");
    // a core module, not a component
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let e = pier_plugin_host::check(&rt, &core).unwrap_err();
    assert!(matches!(e, PluginError::Invalid { .. }), "{e}");
    // a missing file
    let e = pier_plugin_host::check(&rt, &dir.path().join("missing.wasm")).unwrap_err();
    assert!(matches!(e, PluginError::Read { .. }), "{e}");

    // a valid component that implements no world: checked, not loadable
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x0d\0\x01\0").unwrap();
    let r = pier_plugin_host::check(&rt, &empty).unwrap();
    assert!(r.worlds.is_empty(), "{:?}", r.worlds);
    assert!(r.imports.is_empty() && r.exports.is_empty(), "{r:?}");
    // one line per world (authorizer, notifier, replicator, admission, retention)
    assert_eq!(r.problems.len(), 5, "{:?}", r.problems);
    assert!(
        r.problems[0].starts_with("authorizer: "),
        "{:?}",
        r.problems
    );
    eprintln!("empty component: {:?}", r.problems);
    let e = PluginAuthorizer::load(rt.clone(), settings("empty", &empty, dir.path()))
        .await
        .err()
        .expect("an empty component must not load");
    assert!(
        matches!(
            e,
            PluginError::World {
                world: "authorizer",
                ..
            }
        ),
        "{e}"
    );
}

fn cwasm_files(dir: &Path) -> Vec<PathBuf> {
    pier_e2e::files_under(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compile_cache_is_reused_by_a_new_runtime() {
    let path = &plugins::build().rbac;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let probe = req(&user("alice", &[]), Action::Manage, Some("team/app"));
    {
        let mut s = settings("rbac", path, dir.path());
        s.config = rbac_config();
        let a = PluginAuthorizer::load(runtime(dir.path()), s)
            .await
            .unwrap();
        assert_eq!(a.authorize(&probe).await.unwrap(), Decision::Allow);
    }
    let files = cwasm_files(&cache);
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap().to_owned();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(path).unwrap(),
    ));
    assert!(name.starts_with(&format!("{digest}-")), "{name}");
    let modified = std::fs::metadata(&files[0]).unwrap().modified().unwrap();

    // a fresh runtime (a restarted gateway) deserializes the artifact instead of compiling
    let mut s = settings("rbac", path, dir.path());
    s.config = rbac_config();
    let a = PluginAuthorizer::load(runtime(dir.path()), s)
        .await
        .unwrap();
    assert_eq!(a.authorize(&probe).await.unwrap(), Decision::Allow);
    assert_eq!(cwasm_files(&cache), files);
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().modified().unwrap(),
        modified,
        "rewritten"
    );
    assert_eq!(a.digest(), digest);
}

// `http-outbound` from inside a component (the hostile plugin's `authenticate`): a GET to
// an allowed http:// host, a header value carrying CR LF refused before anything is sent,
// a host off the allowlist denied, and https:// spoken, the server's certificate checked
// against the system's roots (which don't know the test CA).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_outbound_from_a_component() {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let heads = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let (mut head, mut b) = (Vec::new(), [0u8; 1]);
            while !head.ends_with(b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(1) => head.push(b[0]),
                    _ => break,
                }
            }
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).into_owned());
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let ca = pier_e2e::test_ca(dir.path());
    let tls_port = pier_e2e::free_port();
    let mut s_server = std::process::Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-www",
            "-accept",
            &tls_port.to_string(),
        ])
        .arg("-cert")
        .arg(&ca.cert)
        .arg("-key")
        .arg(&ca.key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server");
    assert!(pier_e2e::wait_until(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
    ));

    let (_d, a) = load("hostile", &plugins::build().hostile, |s| {
        s.timeout = Duration::from_secs(5);
        s.grants.http = true;
        s.allowed_hosts = vec![format!("127.0.0.1:{port}"), format!("127.0.0.1:{tls_port}")];
    })
    .await;
    let creds = |user: &str, url: String| Credentials {
        username: user.to_owned(),
        password: url,
        client: "127.0.0.1:1".to_owned(),
    };
    let plain = format!("http://127.0.0.1:{port}/x");
    match a.authenticate(&creds("http", plain.clone())).await.unwrap() {
        AuthnOutcome::Verified(id) => assert_eq!(id.name, "200 hello"),
        other => panic!("{other:?}"),
    }
    {
        let heads = heads.lock().unwrap();
        assert_eq!(heads.len(), 1);
        assert!(heads[0].starts_with("GET /x HTTP/1.1\r\n"), "{}", heads[0]);
        assert!(heads[0].contains("x-probe: 1\r\n"), "{}", heads[0]);
    }
    let e = a
        .authenticate(&creds("http-crlf", plain.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.kind, PolicyFailure::Unavailable, "{e}");
    assert!(e.message.contains("InvalidUrl"), "{e}");
    assert_eq!(heads.lock().unwrap().len(), 1, "nothing sent");
    let e = a
        .authenticate(&creds("http", "http://127.0.0.1:1/".into()))
        .await
        .unwrap_err();
    assert!(e.message.contains("Denied"), "{e}");
    let e = a
        .authenticate(&creds("http", format!("https://127.0.0.1:{tls_port}/")))
        .await
        .unwrap_err();
    assert!(e.message.contains("invalid peer certificate"), "{e}");
    let _ = s_server.kill();
    let _ = s_server.wait();
}

/// A newcomer's first plugin, as docs/plugins.md says: the template copied out of Pier's
/// tree with a copy of `wit/`, renamed, built on its own, and `pier plugin check`ed (it
/// used to fail with "failed to find a workspace root").
#[test]
fn the_template_copied_out_of_the_tree_builds_and_checks() {
    let repo = pier_e2e::manifest_dir().parent().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("my-authz");
    std::fs::create_dir_all(crate_dir.join("src")).unwrap();
    std::fs::create_dir_all(crate_dir.join("wit")).unwrap();
    let template = repo.join("plugins").join("template");
    for f in ["Cargo.toml", "Cargo.lock", "src/lib.rs"] {
        std::fs::copy(template.join(f), crate_dir.join(f)).unwrap();
    }
    // the `*.wit` files of the current version (not `wit/v0.1.0/`)
    for e in std::fs::read_dir(repo.join("wit")).unwrap() {
        let e = e.unwrap();
        if !e.file_type().unwrap().is_file() {
            continue;
        }
        std::fs::copy(e.path(), crate_dir.join("wit").join(e.file_name())).unwrap();
    }
    let edit = |f: &str, from: &str, to: &str| {
        let p = crate_dir.join(f);
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(s.contains(from), "{f} has {from:?}");
        std::fs::write(&p, s.replace(from, to)).unwrap();
    };
    edit(
        "Cargo.toml",
        "name = \"pier-template\"",
        "name = \"my-authz\"",
    );
    edit("src/lib.rs", "path: \"../../wit\"", "path: \"wit\"");
    // A target dir kept between runs (the first build compiles wit-bindgen).
    let target = plugins::target_dir().join("out-of-tree");
    let mut cmd = std::process::Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
    cmd.args([
        "build",
        "--release",
        "--offline",
        "--target",
        "wasm32-wasip2",
    ])
    .arg("--target-dir")
    .arg(&target)
    .current_dir(&crate_dir);
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str()
            && (k.starts_with("CARGO_") || k.ends_with("RUSTFLAGS") || k.contains("MAKEFLAGS"))
            && k != "CARGO_HOME"
        {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "cargo build of the copied template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = target.join("wasm32-wasip2/release/my_authz.wasm");
    let check = pier_e2e::pier_command()
        .args(["plugin", "check"])
        .arg(&wasm)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "pier plugin check: {text}");
    assert!(
        text.contains("implements: pier:plugin/authorizer@0.2.0"),
        "{text}"
    );
}

/// A component built against `pier:plugin@0.1.0` (`plugins/legacy`, `wit/v0.1.0`) loads
/// and works whole: its 0.1.0 imports (`log`, `kv`) are linked, `authorize` gets the
/// 0.1.0 `access-request`, and its `projects@0.1.0` export serves the project API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_built_against_0_1_0_keep_loading() {
    use pier_auth::projects::{ProjectError, ProjectStore};
    let p = plugins::build();
    let dir = tempfile::tempdir().unwrap();
    let r = pier_plugin_host::check(&runtime(dir.path()), &p.legacy).unwrap();
    assert_eq!(r.version, "0.1.0");
    assert_eq!(
        r.worlds,
        ["authorizer", "managed-authorizer"],
        "{:?}",
        r.problems
    );
    assert!(
        r.imports.iter().any(|i| i == "pier:plugin/kv@0.1.0"),
        "{:?}",
        r.imports
    );
    assert!(
        r.exports.iter().any(|e| e == "pier:plugin/projects@0.1.0"),
        "{:?}",
        r.exports
    );
    let r = pier_plugin_host::check(&runtime(dir.path()), &p.probe).unwrap();
    assert_eq!(
        (r.version, r.worlds.as_slice()),
        ("0.2.0", &["authorizer"][..])
    );

    let (_dir, a) = load("legacy", &p.legacy, |s| s.grants.kv = true).await;
    let alice = user("alice", &[]);
    assert_eq!(
        a.authorize(&req(&alice, Action::Pull, Some("team/app")))
            .await
            .unwrap(),
        Decision::Allow
    );
    assert_eq!(
        deny_reason(&a, req(&alice, Action::Push, Some("team/app"))).await,
        "legacy 0.1.0: Action::Push on team/app for alice"
    );
    let creds = Credentials {
        username: "alice".into(),
        password: "pw".into(),
        client: "127.0.0.1:1".into(),
    };
    assert!(matches!(
        a.authenticate(&creds).await.unwrap(),
        AuthnOutcome::NotHandled
    ));

    assert!(a.manages_projects());
    let list = ProjectStore::list(&a).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].name.as_str(), list[0].public), ("legacy", false));
    let changed = ProjectStore::set_public(&a, "legacy", true).await.unwrap();
    assert!(changed.public, "{changed:?}");
    assert!(ProjectStore::get(&a, "legacy").await.unwrap().public);
    assert!(matches!(
        ProjectStore::get(&a, "other").await,
        Err(ProjectError::NotFound(m)) if m == "no project other"
    ));
}

/// A 0.2.0 authorizer sees the request's context: route, method, tag, digest and the
/// client's user agent (`plugins/probe` echoes them in its deny reason).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorizers_see_the_request_context() {
    use pier_auth::{RequestContext, RequestRoute};
    let (_dir, a) = load("probe", &plugins::build().probe, |_| {}).await;
    let alice = user("alice", &[]);
    let mut r = req(&alice, Action::Push, Some("team/app"));
    r.context = RequestContext::new(RequestRoute::Manifest)
        .with_method("PUT")
        .with_user_agent(Some(b"docker/27.5.1 go/go1.22 \x01evil"));
    r.context.tag = Some("v1".into());
    assert_eq!(
        deny_reason(&a, r.clone()).await,
        "probe: Action::Push route=Route::Manifest method=PUT tag=v1 digest=- ua=docker/27.5.1 go/go1.22 ?evil"
    );
    r.action = Action::Delete;
    r.context = RequestContext::new(RequestRoute::Blob).with_method("DELETE");
    r.context.digest = Some(format!("sha256:{}", "a".repeat(64)));
    assert_eq!(
        deny_reason(&a, r.clone()).await,
        format!(
            "probe: Action::Delete route=Route::Blob method=DELETE tag=- digest=sha256:{} ua=-",
            "a".repeat(64)
        )
    );
    r.context = RequestContext::new(RequestRoute::Token);
    assert_eq!(
        deny_reason(&a, r).await,
        "probe: Action::Delete route=Route::Token method=- tag=- digest=- ua=-"
    );
}

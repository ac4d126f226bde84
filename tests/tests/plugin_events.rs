//! The event hooks of the plugin host (`pier-plugin-host`): the `notifier` and
//! `replicator` worlds with the real plugins of `plugins/`, built from source for
//! wasm32-wasip2 by [`pier_e2e::plugins::build`]: webhook filters and bodies, replication
//! rules (events, schedules, delete propagation, tag filters, state in `kv`), a hostile
//! notifier/replicator that spins, eats memory, panics and returns garbage, hot reload,
//! and `check` naming the right world.
//!
//! `cargo test -p pier-e2e --test plugin_events` (needs `rustup target add wasm32-wasip2`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pier_auth::PolicyFailure;
use pier_e2e::plugins;
use pier_plugin_host::{
    Delivery, EventKind, Grants, PluginAuthorizer, PluginError, PluginEvent, PluginFailure,
    PluginNotifier, PluginReplicator, PluginSettings, ReplicationAction, ReplicationDirection,
    Runtime,
};
use serde_json::json;
use tempfile::TempDir;

fn runtime(dir: &Path) -> Arc<Runtime> {
    Arc::new(Runtime::new(&dir.join("cache")).expect("plugin runtime"))
}

fn settings(name: &str, path: &Path, dir: &Path, config: serde_json::Value) -> PluginSettings {
    let mut s = PluginSettings::new(name, path.to_owned(), dir.join("kv"));
    s.grants = Grants {
        log: true,
        config: true,
        ..Grants::default()
    };
    s.config = config.as_object().expect("config is an object").clone();
    s
}

fn event(kind: EventKind, repository: &str, tag: Option<&str>) -> PluginEvent {
    let cloudevent = json!({
        "specversion": "1.0",
        "id": "42",
        "source": "pier",
        "type": "io.pier.manifest.pushed",
        "data": {"repository": repository, "tag": tag},
    })
    .to_string();
    PluginEvent {
        id: 42,
        kind,
        time: "2026-11-27T23:45:00Z".into(),
        repository: repository.into(),
        project: PluginEvent::project_of(repository),
        tag: tag.map(Into::into),
        digest: Some(format!("sha256:{}", "ab".repeat(32))),
        media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
        size: Some(1234),
        actor: Some("alice".into()),
        cloudevent,
    }
}

fn webhook_config() -> serde_json::Value {
    json!({"endpoints": [
        {"url": "http://hooks.test/everything"},
        {"url": "http://hooks.test/team-releases", "events": ["manifest-pushed"],
         "projects": ["team"], "repositories": ["team/*"], "tags": ["v*"],
         "headers": {"Authorization": "Bearer s3cret"}, "body": "compact"},
        {"url": "https://hooks.test/deletes", "events": ["manifest-deleted", "mirror-fill"]}
    ]})
}

async fn notifier(
    name: &str,
    path: &Path,
    config: serde_json::Value,
    tune: impl FnOnce(&mut PluginSettings),
) -> (TempDir, PluginNotifier) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut s = settings(name, path, dir.path(), config);
    tune(&mut s);
    let n = PluginNotifier::load(runtime(dir.path()), s)
        .await
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    (dir, n)
}

async fn replicator(
    name: &str,
    path: &Path,
    config: serde_json::Value,
    tune: impl FnOnce(&mut PluginSettings),
) -> (TempDir, PluginReplicator) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut s = settings(name, path, dir.path(), config);
    tune(&mut s);
    let r = PluginReplicator::load(runtime(dir.path()), s)
        .await
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    (dir, r)
}

fn urls(d: &[Delivery]) -> Vec<&str> {
    d.iter().map(|d| d.url.as_str()).collect()
}

fn header<'a>(d: &'a Delivery, name: &str) -> Option<&'a str> {
    d.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_filters_and_bodies() {
    let (dir, n) = notifier(
        "webhook",
        &plugins::build().webhook,
        webhook_config(),
        |_| {},
    )
    .await;

    let push = event(EventKind::ManifestPushed, "team/app", Some("v1.2"));
    let d = n.notify(&push).await.unwrap();
    assert_eq!(
        urls(&d),
        [
            "http://hooks.test/everything",
            "http://hooks.test/team-releases"
        ]
    );
    // the default body is the host's CloudEvent, unchanged
    assert_eq!(d[0].body, push.cloudevent.as_bytes());
    assert_eq!(
        header(&d[0], "content-type"),
        Some("application/cloudevents+json")
    );
    // compact: the event's fields as one JSON object, with the configured headers
    let v: serde_json::Value = serde_json::from_slice(&d[1].body).unwrap();
    assert_eq!(v["event"], "manifest-pushed");
    assert_eq!(v["repository"], "team/app");
    assert_eq!(v["project"], "team");
    assert_eq!(v["tag"], "v1.2");
    assert_eq!(v["size"], 1234);
    assert_eq!(v["actor"], "alice");
    assert_eq!(header(&d[1], "authorization"), Some("Bearer s3cret"));
    assert_eq!(header(&d[1], "content-type"), Some("application/json"));

    // each filter on its own: tag, missing tag, project/repository, event kind
    for (ev, want) in [
        (
            event(EventKind::ManifestPushed, "team/app", Some("latest")),
            vec!["http://hooks.test/everything"],
        ),
        (
            event(EventKind::ManifestPushed, "team/app", None),
            vec!["http://hooks.test/everything"],
        ),
        (
            event(EventKind::ManifestPushed, "other/app", Some("v1")),
            vec!["http://hooks.test/everything"],
        ),
        (
            event(EventKind::ManifestPulled, "team/app", Some("v1")),
            vec!["http://hooks.test/everything"],
        ),
        (
            event(EventKind::ManifestDeleted, "team/app", Some("v1")),
            vec!["http://hooks.test/everything", "https://hooks.test/deletes"],
        ),
        (
            event(EventKind::MirrorFill, "library/alpine", Some("3")),
            vec!["http://hooks.test/everything", "https://hooks.test/deletes"],
        ),
    ] {
        let d = n.notify(&ev).await.unwrap();
        assert_eq!(
            urls(&d),
            want,
            "{:?} {} {:?}",
            ev.kind,
            ev.repository,
            ev.tag
        );
    }

    // hot reload: new settings (config) take the next call
    let mut s = settings(
        "webhook",
        &plugins::build().webhook,
        dir.path(),
        json!({"endpoints": [{"url": "http://hooks.test/pulls", "events": ["manifest-pulled"]}]}),
    );
    s.timeout = Duration::from_millis(100);
    assert!(n.reload_with(s).await.unwrap());
    assert!(n.notify(&push).await.unwrap().is_empty());
    let d = n
        .notify(&event(EventKind::ManifestPulled, "a/b", None))
        .await
        .unwrap();
    assert_eq!(urls(&d), ["http://hooks.test/pulls"]);
    assert!(!n.reload().await.unwrap(), "nothing changed");
    assert_eq!(n.metrics().calls(), 9);
}

/// Deliveries obey the grants of `http-outbound`: without `http`, every one comes back
/// refused; with it, those to hosts outside `allowed_hosts` (here `https://` on 443 when
/// only port 80 is allowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_deliveries_need_the_http_grant_and_an_allowed_host() {
    let wasm = &plugins::build().webhook;
    let push = event(EventKind::ManifestDeleted, "team/app", Some("v1"));

    let (_dir, n) = notifier("webhook", wasm, webhook_config(), |_| {}).await;
    let d = n.notify(&push).await.unwrap();
    assert_eq!(
        urls(&d),
        ["http://hooks.test/everything", "https://hooks.test/deletes"]
    );
    for x in &d {
        let why = x.refused.as_deref().expect("refused without the grant");
        assert!(why.contains("not granted \"http\""), "{why}");
    }

    let (_dir, n) = notifier("webhook", wasm, webhook_config(), |s| {
        s.grants.http = true;
        s.allowed_hosts = vec!["hooks.test:80".into()];
    })
    .await;
    let d = n.notify(&push).await.unwrap();
    assert_eq!(d[0].refused, None, "http://hooks.test is allowed");
    assert_eq!(
        d[1].refused.as_deref(),
        Some("hooks.test:443 is not on the allowed_hosts of notifier \"webhook\"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_invalid_config_is_an_error_not_silence() {
    let wasm = &plugins::build().webhook;
    for (config, grant) in [
        (json!({"endpoints": [{"url": "ftp://hooks.test/"}]}), true),
        (
            json!({"endpoints": [{"url": "http://x", "events": ["pushed"]}]}),
            true,
        ),
        (json!({"hooks": []}), true),
        // config not granted: the plugin sees `{}`
        (webhook_config(), false),
    ] {
        let (_dir, n) =
            notifier("webhook", wasm, config.clone(), |s| s.grants.config = grant).await;
        for _ in 0..2 {
            let e = n
                .notify(&event(EventKind::ManifestPushed, "team/app", Some("v1")))
                .await
                .expect_err("an invalid config must fail the call");
            assert_eq!(e.kind, PolicyFailure::Unavailable, "{config}: {e}");
            assert_eq!(e.plugin, "webhook");
            assert!(e.message.contains("invalid config"), "{e}");
        }
        assert_eq!(n.metrics().errors(PolicyFailure::Unavailable), 2);
    }
}

fn replicate_config() -> serde_json::Value {
    json!({"rules": [
        {"name": "team-to-b", "source": {"project": "team"}, "tags": ["v*"],
         "target": "site-b", "trigger": "event", "delete": true},
        {"name": "apps-backup", "source": {"repository": "apps/*"}, "target": "backup",
         "destination": "backup/{repository}", "trigger": "event"},
        {"name": "lib-nightly", "source": {"repository": "lib/*"}, "tags": ["stable", "1.*"],
         "target": "site-c", "destination": "{project}-mirror/{path}",
         "trigger": {"every_secs": 300}},
        {"name": "vendor-pull", "source": {"repository": "vendor/base"}, "target": "site-b",
         "trigger": {"every_secs": 60}, "direction": "pull"}
    ]})
}

fn action(
    direction: ReplicationDirection,
    target: &str,
    from: &str,
    to: &str,
    tags: &[&str],
    digest: Option<&str>,
    delete: bool,
) -> ReplicationAction {
    ReplicationAction {
        direction,
        target: target.into(),
        source_repository: from.into(),
        destination_repository: to.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        digest: digest.map(Into::into),
        delete,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_rules_on_events() {
    use ReplicationDirection::Push;
    let (_dir, r) = replicator(
        "replicate",
        &plugins::build().replicate,
        replicate_config(),
        |_| {},
    )
    .await;
    let on = async |kind, repo, tag| r.on_event(&event(kind, repo, tag)).await.unwrap();

    // a push matching source and tag filter
    assert_eq!(
        on(EventKind::ManifestPushed, "team/app", Some("v2")).await,
        [action(
            Push,
            "site-b",
            "team/app",
            "team/app",
            &["v2"],
            None,
            false
        )]
    );
    // the tag filter: another tag, or no tag at all (push by digest)
    assert!(
        on(EventKind::ManifestPushed, "team/app", Some("latest"))
            .await
            .is_empty()
    );
    assert!(
        on(EventKind::ManifestPushed, "team/app", None)
            .await
            .is_empty()
    );
    // no tag filter: every tag, and pushes by digest by their digest
    assert_eq!(
        on(EventKind::ManifestPushed, "apps/web", Some("latest")).await,
        [action(
            Push,
            "backup",
            "apps/web",
            "backup/apps/web",
            &["latest"],
            None,
            false
        )]
    );
    let digest = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(
        on(EventKind::ManifestPushed, "apps/web", None).await,
        [action(
            Push,
            "backup",
            "apps/web",
            "backup/apps/web",
            &[],
            Some(&digest),
            false
        )]
    );
    // deletions only where `delete: true`
    assert_eq!(
        on(EventKind::ManifestDeleted, "team/app", Some("v2")).await,
        [action(
            Push,
            "site-b",
            "team/app",
            "team/app",
            &["v2"],
            None,
            true
        )]
    );
    assert!(
        on(EventKind::ManifestDeleted, "apps/web", Some("latest"))
            .await
            .is_empty()
    );
    // no rule; pulls; scheduled rules never act on events
    assert!(
        on(EventKind::ManifestPushed, "other/app", Some("v1"))
            .await
            .is_empty()
    );
    assert!(
        on(EventKind::ManifestPulled, "team/app", Some("v1"))
            .await
            .is_empty()
    );
    assert!(
        on(EventKind::ManifestPushed, "lib/x", Some("stable"))
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_schedules_keep_their_state_in_kv() {
    use ReplicationDirection::{Pull, Push};
    let wasm = &plugins::build().replicate;
    let (dir, r) = replicator("replicate", wasm, replicate_config(), |s| {
        s.grants.kv = true
    })
    .await;
    // scheduled push rules replicate the repositories the plugin has seen
    for repo in ["lib/a", "lib/b/c", "team/x"] {
        r.on_event(&event(EventKind::ManifestPushed, repo, Some("stable")))
            .await
            .unwrap();
    }
    let first = r.on_tick(1_000).await.unwrap();
    assert_eq!(
        first,
        [
            action(
                Push,
                "site-c",
                "lib/a",
                "lib-mirror/a",
                &["stable", "1.*"],
                None,
                false
            ),
            action(
                Push,
                "site-c",
                "lib/b/c",
                "lib-mirror/b/c",
                &["stable", "1.*"],
                None,
                false
            ),
            action(
                Pull,
                "site-b",
                "vendor/base",
                "vendor/base",
                &["*"],
                None,
                false
            ),
        ]
    );
    // 100 s later only the 60 s rule is due; at 300 s both again
    let names = |a: &[ReplicationAction]| -> Vec<String> {
        a.iter().map(|a| a.source_repository.clone()).collect()
    };
    assert_eq!(names(&r.on_tick(1_100).await.unwrap()), ["vendor/base"]);
    assert!(r.on_tick(1_120).await.unwrap().is_empty());
    assert_eq!(names(&r.on_tick(1_300).await.unwrap()).len(), 3);

    // a fresh instance (reload with new settings) finds the last runs in kv
    let mut s = settings("replicate", wasm, dir.path(), replicate_config());
    s.grants.kv = true;
    s.timeout = Duration::from_millis(200);
    assert!(r.reload_with(s).await.unwrap());
    assert!(
        r.on_tick(1_310).await.unwrap().is_empty(),
        "ran at 1300 already"
    );
    assert_eq!(names(&r.on_tick(1_360).await.unwrap()), ["vendor/base"]);
    assert_eq!(names(&r.on_tick(1_600).await.unwrap()).len(), 3);

    // without kv the schedule lives in the instance's memory
    let (_dir2, m) = replicator("replicate", wasm, replicate_config(), |_| {}).await;
    assert_eq!(names(&m.on_tick(1_000).await.unwrap()), ["vendor/base"]);
    assert!(m.on_tick(1_030).await.unwrap().is_empty());
    assert_eq!(names(&m.on_tick(1_060).await.unwrap()), ["vendor/base"]);

    // an invalid configuration fails every call
    let (_dir3, bad) = replicator(
        "replicate",
        wasm,
        json!({"rules": [{"name": "x", "source": {"project": "p"}, "target": "t",
                          "trigger": "event", "direction": "pull"}]}),
        |_| {},
    )
    .await;
    let e = bad.on_tick(1).await.unwrap_err();
    assert_eq!(e.kind, PolicyFailure::Unavailable, "{e}");
    assert!(e.message.contains("invalid config"), "{e}");
    let e = bad
        .on_event(&event(EventKind::ManifestPushed, "p/x", Some("v1")))
        .await
        .unwrap_err();
    assert_eq!(e.kind, PolicyFailure::Unavailable, "{e}");
}

fn expect_kind<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, PluginFailure>,
    took: Duration,
    kind: PolicyFailure,
) {
    match r {
        Err(e) => {
            eprintln!("{what}: {e} ({took:?})");
            assert_eq!(e.kind, kind, "{what}: {e}");
            assert_eq!(e.plugin, "hostile-events");
            assert!(!e.message.is_empty());
        }
        Ok(v) => panic!("{what}: expected {kind:?}, got {v:?}"),
    }
    assert!(took < Duration::from_secs(2), "{what} took {took:?}");
}

/// A deadline long enough for the memory bomb to hit its cap first even when the
/// tests of this file share the 2 cores.
fn hostile_tune(s: &mut PluginSettings) {
    s.timeout = Duration::from_millis(250);
    s.memory_limit = 16 << 20;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_notifier_fails_within_the_deadline_and_recovers() {
    let wasm = &plugins::build().hostile_events;
    let (_dir, n) = notifier("hostile-events", wasm, json!({}), hostile_tune).await;
    let healthy = async |after: &str| {
        let d = n
            .notify(&event(EventKind::ManifestPushed, "ok/x", Some("v1")))
            .await
            .unwrap_or_else(|e| panic!("a normal call after {after}: {e}"));
        assert_eq!(urls(&d), ["http://hostile.test/ok/x"]);
    };
    healthy("loading").await;
    let cases = [
        ("loop/x", PolicyFailure::Timeout),
        ("membomb/x", PolicyFailure::OutOfMemory),
        ("panic/x", PolicyFailure::Trap),
        ("stack/x", PolicyFailure::Trap),
        ("error/x", PolicyFailure::Unavailable),
        ("flood/x", PolicyFailure::InvalidResult),
        ("badurl/x", PolicyFailure::InvalidResult),
    ];
    for (repo, kind) in cases {
        for _ in 0..2 {
            let start = Instant::now();
            let r = n
                .notify(&event(EventKind::ManifestPushed, repo, Some("v1")))
                .await;
            expect_kind(repo, r, start.elapsed(), kind);
            healthy(repo).await;
        }
    }
    let m = n.metrics();
    assert_eq!(m.errors(PolicyFailure::Timeout), 2);
    assert_eq!(m.errors(PolicyFailure::OutOfMemory), 2);
    assert_eq!(m.errors(PolicyFailure::Trap), 4);
    assert_eq!(m.errors(PolicyFailure::Unavailable), 2);
    assert_eq!(m.errors(PolicyFailure::InvalidResult), 4);
    let mut text = String::new();
    m.render(&mut text);
    assert!(
        text.contains("pier_plugin_traps_total{plugin=\"hostile-events\"} 8"),
        "{text}"
    );

    // a slow plugin still answers
    let d = n
        .notify(&event(EventKind::ManifestPushed, "slow/x", None))
        .await
        .unwrap();
    assert_eq!(d.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_notifiers_never_block_callers_past_the_deadline() {
    let wasm = &plugins::build().hostile_events;
    let (_dir, n) = notifier("hostile-events", wasm, json!({}), |s| {
        hostile_tune(s);
        s.max_instances = 2;
    })
    .await;
    let n = Arc::new(n);
    // twelve events at once on a plugin that hangs on every one of them, two instances:
    // each caller gets a timeout or is turned away, all within about two deadlines
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let n = n.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = n
                .notify(&event(
                    EventKind::ManifestPushed,
                    &format!("loop/{i}"),
                    None,
                ))
                .await;
            (r.map(|d| d.len()), t.elapsed())
        }));
    }
    let mut kinds = Vec::new();
    for t in tasks {
        let (r, took) = t.await.expect("no panic");
        let e = r.expect_err("a hanging plugin answers nothing");
        assert!(
            matches!(e.kind, PolicyFailure::Timeout | PolicyFailure::Overloaded),
            "{e}"
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
        kinds.push(e.kind);
    }
    eprintln!("12 hanging calls: {:?} in {:?}", kinds, start.elapsed());
    assert!(kinds.contains(&PolicyFailure::Timeout));
    let d = n
        .notify(&event(EventKind::ManifestPushed, "ok/x", None))
        .await
        .unwrap();
    assert_eq!(d.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_replicator_fails_within_the_deadline_and_recovers() {
    let wasm = &plugins::build().hostile_events;
    let (_dir, r) = replicator("hostile-events", wasm, json!({}), hostile_tune).await;
    let healthy = async |after: &str| {
        let a = r
            .on_event(&event(EventKind::ManifestPushed, "ok/x", Some("v1")))
            .await
            .unwrap_or_else(|e| panic!("a normal call after {after}: {e}"));
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].target, "site-b");
        assert!(r.on_tick(1_000).await.unwrap().is_empty());
    };
    healthy("loading").await;
    for (repo, kind) in [
        ("loop/x", PolicyFailure::Timeout),
        ("membomb/x", PolicyFailure::OutOfMemory),
        ("panic/x", PolicyFailure::Trap),
        ("error/x", PolicyFailure::Unavailable),
        ("flood/x", PolicyFailure::InvalidResult),
        ("badurl/x", PolicyFailure::InvalidResult),
    ] {
        let start = Instant::now();
        let res = r
            .on_event(&event(EventKind::ManifestPushed, repo, None))
            .await;
        expect_kind(repo, res, start.elapsed(), kind);
        healthy(repo).await;
    }
    for (tick, kind) in [
        (1, PolicyFailure::Timeout),
        (2, PolicyFailure::OutOfMemory),
        (3, PolicyFailure::Trap),
        (4, PolicyFailure::Unavailable),
    ] {
        let start = Instant::now();
        let res = r.on_tick(tick).await;
        expect_kind(&format!("tick {tick}"), res, start.elapsed(), kind);
        healthy(&format!("tick {tick}")).await;
    }
    assert_eq!(r.metrics().errors(PolicyFailure::Timeout), 2);
    assert_eq!(r.metrics().errors(PolicyFailure::OutOfMemory), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_load_name_the_right_world() {
    let p = plugins::build();
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    for (path, worlds, exports) in [
        (&p.webhook, vec!["notifier"], vec!["notify"]),
        (
            &p.replicate,
            vec!["replicator", "managed-replicator"],
            vec!["on-event", "on-tick", "pier:plugin/rules@0.2.0"],
        ),
        (
            &p.hostile_events,
            vec!["notifier", "replicator"],
            vec!["notify", "on-event", "on-tick"],
        ),
        (
            &p.rbac,
            vec!["authorizer", "managed-authorizer"],
            vec!["authorize", "authenticate", "pier:plugin/projects@0.2.0"],
        ),
    ] {
        let r = pier_plugin_host::check(&rt, path).unwrap();
        let name = path.display();
        assert_eq!(r.worlds, worlds, "{name}: {:?}", r.problems);
        assert!(r.problems.is_empty(), "{name}: {:?}", r.problems);
        assert_eq!(r.exports, exports, "{name}");
    }
    let caps = |imports: &[String]| -> Vec<String> {
        let mut c: Vec<String> = imports
            .iter()
            .filter_map(|i| i.strip_prefix("pier:plugin/"))
            .map(str::to_owned)
            .collect();
        c.sort();
        c
    };
    let r = pier_plugin_host::check(&rt, &p.webhook).unwrap();
    assert_eq!(
        caps(&r.imports),
        ["config@0.2.0", "log@0.2.0", "types@0.2.0"]
    );
    let r = pier_plugin_host::check(&rt, &p.replicate).unwrap();
    assert_eq!(
        caps(&r.imports),
        ["config@0.2.0", "kv@0.2.0", "log@0.2.0", "types@0.2.0"]
    );

    // loading a plugin as a world it does not implement fails with that world's name
    let s = |name: &str, path: &Path| settings(name, path, dir.path(), json!({}));
    let e = PluginNotifier::load(rt.clone(), s("rbac", &p.rbac))
        .await
        .err()
        .expect("rbac is no notifier");
    assert!(
        matches!(
            e,
            PluginError::World {
                world: "notifier",
                ..
            }
        ),
        "{e}"
    );
    let e = PluginReplicator::load(rt.clone(), s("webhook", &p.webhook))
        .await
        .err()
        .expect("webhook is no replicator");
    assert!(
        matches!(
            e,
            PluginError::World {
                world: "replicator",
                ..
            }
        ),
        "{e}"
    );
    let e = PluginAuthorizer::load(rt.clone(), s("replicate", &p.replicate))
        .await
        .err()
        .expect("replicate is no authorizer");
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
    eprintln!("{e}");
}

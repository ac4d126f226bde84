//! Hot reload of the RBAC plugin while clients pull: a changed file (watch), SIGHUP, and
//! the admin endpoint with a configuration change; then a corrupt file that is refused
//! while the previous version keeps answering. No request may fail along the way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use pier_e2e::{TestPier, sha256_digest};

use crate::support::{
    RbacExample, admin_reload, basic, bearer, expect_content, get_blob_as, get_manifest_as,
    log_lines, metric, push_image_as, replace_file, signal, token, token_request, wait_for,
    with_custom_section,
};

/// What the pulling client saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: Vec<String>,
}

/// One pull of library/x: alternately anonymous (token, manifest, blob) and with Basic.
fn pull_once(
    pier_addr: std::net::SocketAddr,
    i: u64,
    manifest: &str,
    blob: &str,
) -> Result<(), String> {
    let auth = if i.is_multiple_of(2) {
        let t = token_request(pier_addr, None, "repository:library/x:pull");
        if t.status != 200 {
            return Err(format!("anonymous token: {t}"));
        }
        bearer(t.json()["token"].as_str().unwrap_or_default())
    } else {
        basic("bob", "bob-pass")
    };
    let m = get_manifest_as(pier_addr, &auth, "library/x", "v1");
    if m.status != 200 || sha256_digest(&m.body) != manifest {
        return Err(format!("manifest (#{i}): {m}"));
    }
    let b = get_blob_as(pier_addr, &auth, "library/x", blob);
    if b.status != 200 || sha256_digest(&b.body) != blob {
        return Err(format!("blob (#{i}): {b}"));
    }
    Ok(())
}

fn reloads(pier: &TestPier) -> f64 {
    metric(pier, "pier_plugin_reloads_total{plugin=\"rbac\"}")
}

#[test]
fn rbac_plugin_reloads_under_load_without_failed_requests() {
    let mut ex = RbacExample::new();
    let mut pier = ex.start();
    let wasm = ex.wasm();
    let original = std::fs::read(&wasm).unwrap();
    let admin = basic("admin", "admin-pass");
    let x = push_image_as(pier.addr, &admin, "library/x", "v1");
    let app = push_image_as(pier.addr, &admin, "team/app", "v1");

    // Before: team is private, an anonymous token grants nothing there.
    let anon = token(pier.addr, None, "repository:team/app:pull");
    get_manifest_as(pier.addr, &bearer(&anon), "team/app", "v1").expect_error(
        401,
        "DENIED",
        "anonymous pull of private team/app",
    );

    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (stop, addr) = (stop.clone(), pier.addr);
        let (m, b) = (x.manifest_digest.clone(), x.layer_digest.clone());
        thread::spawn(move || {
            let mut tally = Tally::default();
            let start = Instant::now();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) || start.elapsed() < Duration::from_secs(6) {
                match pull_once(addr, i, &m, &b) {
                    Ok(()) => tally.ok += 1,
                    Err(e) => tally.failed.push(e),
                }
                i += 1;
            }
            tally
        })
    };
    thread::sleep(Duration::from_millis(500));

    // 1. The file changes: the watcher (1 s poll) reloads it.
    let v2 = with_custom_section(&original, "pier-test-version", b"2");
    replace_file(&wasm, &v2, None);
    wait_for("the file-watch reload", Duration::from_secs(20), || {
        reloads(&pier) >= 1.0
    });
    let v2_digest = sha256_digest(&v2);
    let to = |d: &str| format!("to=\"{}\"", d.trim_start_matches("sha256:"));
    assert_eq!(
        log_lines(
            &pier,
            &["plugin reloaded", "plugin=\"rbac\"", &to(&v2_digest)]
        )
        .len(),
        1,
        "one reload to v2"
    );

    // 2. Changed again, but with v2's length and mtime, so the watcher can't see it:
    //    only SIGHUP loads it.
    let v3 = with_custom_section(&original, "pier-test-version", b"3");
    assert_eq!(v3.len(), v2.len());
    let mtime = std::fs::metadata(&wasm).unwrap().modified().unwrap();
    replace_file(&wasm, &v3, Some(mtime));
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        reloads(&pier),
        1.0,
        "the watcher did not reload an unchanged stamp"
    );
    signal(pier.pid(), "HUP");
    let v3_digest = sha256_digest(&v3);
    wait_for("the SIGHUP reload", Duration::from_secs(20), || {
        reloads(&pier) >= 2.0
    });
    let hup = log_lines(&pier, &["SIGHUP: rbac: reloaded, now"]);
    assert_eq!(hup.len(), 1, "{hup:?}");
    assert!(
        hup[0].contains(v3_digest.trim_start_matches("sha256:")),
        "SIGHUP loaded v3: {}",
        hup[0]
    );

    // 3. A configuration change through the admin endpoint: team becomes public.
    ex.team_public(true).write();
    // The admin listener's POST endpoints need a system administrator.
    let r = pier_e2e::http::request(pier.admin_addr, "POST", "/plugins/reload", &[], b"");
    r.expect_status(401, "POST /plugins/reload without credentials");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|c| c.starts_with("Basic")),
        "{r}"
    );
    let bob = basic("bob", "bob-pass");
    let r = pier_e2e::http::request(
        pier.admin_addr,
        "POST",
        "/plugins/reload",
        &[("Authorization", bob.as_str())],
        b"",
    );
    r.expect_status(403, "POST /plugins/reload as a developer");
    let r = admin_reload(&pier);
    r.expect_status(200, "POST /plugins/reload");
    assert!(
        r.text().starts_with("rbac: reloaded, now "),
        "the settings changed, so the plugin was swapped: {}",
        r.text()
    );
    assert_eq!(reloads(&pier), 3.0);
    let anon = token(pier.addr, None, "repository:team/app:pull");
    expect_content(
        &get_manifest_as(pier.addr, &bearer(&anon), "team/app", "v1"),
        &app.manifest_digest,
        "anonymous pull of team/app once team is public",
    );
    // Unchanged file and settings: nothing to do.
    let r = admin_reload(&pier);
    r.expect_status(200, "second POST /plugins/reload");
    assert!(r.text().starts_with("rbac: unchanged"), "{}", r.text());
    assert_eq!(reloads(&pier), 3.0);

    // 4. A corrupt file: the watcher fails to load it, the old version keeps answering.
    replace_file(&wasm, b"\0asm\x0d\0\x01\0 this is not a component", None);
    wait_for(
        "the failed file-watch reload",
        Duration::from_secs(20),
        || {
            !log_lines(
                &pier,
                &["the new version failed to load", "plugin=\"rbac\""],
            )
            .is_empty()
                || !log_lines(&pier, &["the new version failed to load", "plugin=rbac"]).is_empty()
        },
    );
    let r = admin_reload(&pier);
    r.expect_status(422, "POST /plugins/reload with a corrupt file");
    assert!(
        r.text()
            .starts_with("rbac: reload failed, previous version kept: "),
        "{}",
        r.text()
    );
    assert_eq!(reloads(&pier), 3.0, "a failed reload is not a reload");
    let anon = token(pier.addr, None, "repository:team/app:pull");
    expect_content(
        &get_manifest_as(pier.addr, &bearer(&anon), "team/app", "v1"),
        &app.manifest_digest,
        "the previous version (team public) still answers",
    );

    stop.store(true, Ordering::Relaxed);
    let tally = client.join().expect("the client thread");
    assert!(
        tally.failed.is_empty(),
        "{} of {} pulls failed; first failures:\n{}",
        tally.failed.len(),
        tally.ok + tally.failed.len() as u64,
        tally.failed[..tally.failed.len().min(3)].join("\n")
    );
    assert!(tally.ok >= 20, "the client pulled only {} times", tally.ok);
    let reloaded = log_lines(&pier, &["plugin reloaded", "plugin=\"rbac\""]);
    assert_eq!(reloaded.len(), 3, "{}", reloaded.join("\n"));
    assert!(pier.is_running());
    eprintln!("{} pulls during the reloads, none failed", tally.ok);
    pier.stop();
}

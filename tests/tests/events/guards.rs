//! What keeps webhooks honest (docs/webhooks.md):
//! - a notifier without the `http` grant, or delivering outside its `allowed_hosts`,
//!   makes Pier POST nothing (the receiver sees nothing; the delivery log says why), and
//!   a notifier's forged Pier headers (its own `X-Pier-Signature`, a `Host`, a header
//!   value smuggling a second line) are never sent;
//! - each endpoint verifies with its own secret, over timestamp, event id, delivery id
//!   and body, with the Python and openssl snippets of docs/webhooks.md run as written,
//!   and a delivery replayed to another endpoint fails verification there;
//! - a replication job's event reaches the source project's webhook, not the
//!   destination project's.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pier_e2e::{TestPier, push_image, random_bytes, wait_until};
use serde_json::Value;

use crate::support::*;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits until `pred` holds for the receiver's requests (panics with them otherwise).
#[track_caller]
fn wait_hooks(site: &Site, receiver: &Receiver, what: &str, pred: impl Fn(&[Hook]) -> bool) {
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
            pred(&receiver.hooks())
        }),
        "{what}: never happened; requests: {:#?}\ndeliveries: {:#?}\n{}",
        receiver
            .hooks()
            .iter()
            .map(|h| h.path.clone())
            .collect::<Vec<_>>(),
        deliveries(site, None),
        site.log_tail(40)
    );
}

#[test]
fn notifiers_without_the_grant_or_outside_allowed_hosts_make_pier_post_nothing() {
    let receiver = Receiver::start();
    let here = host_port(&receiver.url("/")).to_owned();
    let hostile = |name: &str, grants: &str| {
        hostile_with(
            name,
            "notifier",
            &format!(
                "{grants}\n\n[plugins.config]\nurl = \"{}\"",
                receiver.url(&format!("/{name}"))
            ),
        )
    };
    let config = base_config("", &[])
        // no `http` grant at all
        + &hostile("no-grant", "grants = [\"log\", \"config\"]")
        // granted, but only another host
        + &hostile(
            "other-host",
            "grants = [\"log\", \"config\", \"http\"]\nallowed_hosts = [\"127.0.0.1:1\"]",
        )
        // granted this host: its normal deliveries arrive, its forged headers never do
        + &hostile(
            "forger",
            &format!("grants = [\"log\", \"config\", \"http\"]\nallowed_hosts = [\"{here}\"]"),
        )
        // a well-behaved notifier beside them: proof that events flow
        + &webhook("webhook", &[receiver.url("/good")]);
    let mut site = start_site(&config);

    let pushed: Vec<String> = ["team/app", "forge/app"]
        .iter()
        .map(|repo| push_image(site.addr, repo, Some("v1"), &[&random_bytes(512)]).digest)
        .collect();
    wait_hooks(
        &site,
        &receiver,
        "both pushes at /good and forger's normal delivery",
        |hs| {
            pushed
                .iter()
                .all(|d| hs.iter().any(|h| h.path == "/good" && h.digest() == *d))
                && hs.iter().any(|h| h.path == "/forger/team/app")
        },
    );
    // Every refusal is in the delivery log before anything was sent (routing is in
    // event order and records them with the event's other deliveries).
    let failed = |needle: &str| -> Vec<Value> {
        deliveries(&site, Some("failed"))
            .into_iter()
            .filter(|d| d["url"].as_str().unwrap_or_default().contains(needle))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            failed("/no-grant/").len() == 4
                && failed("/other-host/").len() == 4
                && failed("/forger/forge/").len() == 3
        }),
        "refused deliveries missing from the log: {:#?}",
        deliveries(&site, None)
    );
    // A moment more for anything that would still be sent.
    std::thread::sleep(Duration::from_secs(2));

    let hooks = receiver.hooks();
    let paths: Vec<&str> = hooks.iter().map(|h| h.path.as_str()).collect();
    for h in &hooks {
        assert!(
            h.path == "/good" || h.path == "/forger/team/app",
            "Pier posted {} for a notifier that may not: {paths:?}",
            h.path
        );
        assert_eq!(
            verify_hook(h, SECRET),
            Ok(()),
            "{} carries Pier's signature",
            h.path
        );
        for (k, v) in &h.headers {
            assert!(
                !v.contains("forged") && !v.contains("elsewhere.test"),
                "a forged header reached the receiver: {k}: {v}"
            );
        }
    }
    let forger = hooks.iter().find(|h| h.path == "/forger/team/app").unwrap();
    assert!(forger.header("x-event").is_some(), "X-* headers pass");
    assert_eq!(forger.header("host"), Some(here.as_str()));

    for d in failed("/no-grant/") {
        let e = d["lastError"].as_str().unwrap_or_default();
        assert!(
            e.starts_with("refused: notifier \"no-grant\" is not granted \"http\""),
            "{d}"
        );
        assert_eq!(d["attempts"], 0, "never attempted: {d}");
    }
    for d in failed("/other-host/") {
        let e = d["lastError"].as_str().unwrap_or_default();
        assert_eq!(
            e,
            format!("refused: {here} is not on the allowed_hosts of notifier \"other-host\""),
            "{d}"
        );
    }
    let mut why: Vec<String> = failed("/forger/forge/")
        .iter()
        .map(|d| d["lastError"].as_str().unwrap_or_default().to_owned())
        .collect();
    why.sort();
    assert!(
        why[0].starts_with("refused: header Host is not allowed"),
        "{why:?}"
    );
    assert!(
        why[1].starts_with("refused: header X-Note: value has the byte 0x0d"),
        "{why:?}"
    );
    assert!(
        why[2].starts_with("refused: header X-Pier-Signature is not allowed"),
        "{why:?}"
    );
    assert!(site.is_running());
}

/// The first fenced block of docs/webhooks.md in `lang` that contains `needle`.
fn doc_snippet(lang: &str, needle: &str) -> String {
    let path = pier_e2e::manifest_dir().join("../docs/webhooks.md");
    let doc = std::fs::read_to_string(&path).expect("docs/webhooks.md");
    let fence = format!("```{lang}\n");
    doc.split(fence.as_str())
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .find(|block| block.contains(needle))
        .unwrap_or_else(|| panic!("no {lang} block with {needle:?} in docs/webhooks.md"))
        .to_owned()
}

/// A request as a receiver got it: lower-case header names, the raw body.
struct Got {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Got {
    fn of(h: &Hook) -> Got {
        Got {
            headers: h
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            body: h.body.clone(),
        }
    }

    fn get(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    fn set(&mut self, name: &str, value: String) {
        self.headers.retain(|(k, _)| k != name);
        self.headers.push((name.to_owned(), value));
    }
}

/// Runs the docs' Python `verify` on a request: true when it accepts it.
fn python_accepts(secret: &str, got: &Got) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("verify.py");
    let harness = "\nimport json, sys\n\
        r = json.load(sys.stdin)\n\
        ok = verify(r['secret'].encode(), dict(r['headers']), bytes.fromhex(r['body']))\n\
        print('ok' if ok else 'refused')\n\
        sys.exit(0 if ok else 1)\n";
    std::fs::write(&script, doc_snippet("python", "def verify") + harness).unwrap();
    let input = serde_json::json!({
        "secret": secret,
        "headers": got.headers,
        "body": hex::encode(&got.body),
    });
    let mut child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.trim() == "ok" || stdout.trim() == "refused",
        "the Python snippet broke: {out:?}"
    );
    out.status.success()
}

/// Runs the docs' openssl snippet on a request: true when it prints `ok`.
fn openssl_accepts(secret: &str, got: &Got) -> bool {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("body.json"), &got.body).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(doc_snippet("sh", "openssl dgst"))
        .current_dir(dir.path())
        .env("TS", got.get("x-pier-timestamp"))
        .env("EVENT", got.get("x-pier-event-id"))
        .env("DELIVERY", got.get("x-pier-delivery"))
        .env("SIG", got.get("x-pier-signature"))
        .env("SECRET", secret)
        .output()
        .expect("sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        ["ok", "bad signature", "stale timestamp"].contains(&stdout.trim()),
        "the openssl snippet broke: {out:?}"
    );
    out.status.success() && stdout.trim() == "ok"
}

#[test]
fn each_endpoint_verifies_with_its_own_secret_and_a_replay_elsewhere_fails() {
    let receiver = Receiver::start();
    let (a, b) = (receiver.url("/hooks/a"), receiver.url("/hooks/b"));
    let config = base_config("", &[])
        + &format!(
            "\n[[events.endpoints]]\nurl = \"{a}\"\nsecret = \"secret-a\"\n\
             \n[[events.endpoints]]\nurl = \"{b}\"\nsecret = \"secret-b\"\n"
        )
        + &webhook("webhook", &[a.clone(), b.clone()]);
    let site = start_site(&config);
    let pushed = push_image(site.addr, "team/signed", Some("v1"), &[&random_bytes(512)]);
    wait_hooks(&site, &receiver, "the push at a and b", |hs| {
        ["/hooks/a", "/hooks/b"].iter().all(|p| {
            hs.iter()
                .any(|h| h.path == *p && h.digest() == pushed.digest)
        })
    });
    let hooks = receiver.hooks();
    let at = |p: &str| hooks.iter().find(|h| h.path == p).unwrap().clone();
    let (at_a, at_b) = (at("/hooks/a"), at("/hooks/b"));

    // Each verifies with its own secret only (not the other's, not the shared default).
    assert_eq!(verify_hook(&at_a, "secret-a"), Ok(()));
    assert_eq!(verify_hook(&at_b, "secret-b"), Ok(()));
    assert!(verify_hook(&at_a, "secret-b").is_err());
    assert!(verify_hook(&at_a, SECRET).is_err());
    assert!(verify_hook(&at_b, "secret-a").is_err());
    let ts: u64 = at_a.header("x-pier-timestamp").unwrap().parse().unwrap();
    assert!(
        now().abs_diff(ts) < 120,
        "timestamp {ts} is the time of sending"
    );

    // The docs' snippets, run as written, accept the real deliveries...
    let got_a = Got::of(&at_a);
    assert!(
        python_accepts("secret-a", &got_a),
        "python refused a real delivery"
    );
    assert!(
        openssl_accepts("secret-a", &got_a),
        "openssl refused a real delivery"
    );
    assert!(python_accepts("secret-b", &Got::of(&at_b)));

    // ...and refuse a's delivery replayed to b: sent there byte for byte, b's receiver
    // checks it with b's secret.
    let replay_headers: Vec<(&str, &str)> = at_a
        .headers
        .iter()
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k.starts_with("x-pier-") || k == "idempotency-key" || k == "content-type"
        })
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = pier_e2e::http::request(
        receiver.addr,
        "POST",
        "/hooks/b",
        &replay_headers,
        &at_a.body,
    );
    assert_eq!(r.status, 200);
    let replayed = receiver.hooks().last().cloned().unwrap();
    assert_eq!(replayed.path, "/hooks/b");
    assert_eq!(replayed.body, at_a.body);
    let got_replayed = Got::of(&replayed);
    assert!(verify_hook(&replayed, "secret-b").is_err());
    assert!(
        !python_accepts("secret-b", &got_replayed),
        "python accepted a's delivery replayed to b"
    );
    assert!(
        !openssl_accepts("secret-b", &got_replayed),
        "openssl accepted a's delivery replayed to b"
    );

    // A changed timestamp or delivery id breaks the signature; a correct signature on a
    // timestamp past the tolerance is refused as stale.
    let mut moved = Got::of(&at_a);
    moved.set("x-pier-timestamp", (ts + 1).to_string());
    assert!(!python_accepts("secret-a", &moved));
    assert!(!openssl_accepts("secret-a", &moved));
    let mut renamed = Got::of(&at_a);
    renamed.set("x-pier-delivery", "0".repeat(32));
    assert!(!python_accepts("secret-a", &renamed));
    let mut stale = Got::of(&at_a);
    let old = now() - 3600;
    let signed = [
        format!(
            "{old}.{}.{}.",
            stale.get("x-pier-event-id"),
            stale.get("x-pier-delivery")
        )
        .into_bytes(),
        stale.body.clone(),
    ]
    .concat();
    stale.set("x-pier-timestamp", old.to_string());
    stale.set(
        "x-pier-signature",
        format!("sha256={}", hex::encode(hmac_sha256(b"secret-a", &signed))),
    );
    assert!(
        !python_accepts("secret-a", &stale),
        "python accepted a stale delivery"
    );
    assert!(
        !openssl_accepts("secret-a", &stale),
        "openssl accepted a stale delivery"
    );
}

#[test]
fn a_replication_jobs_event_reaches_the_source_projects_webhook_not_the_destinations() {
    let site_b = TestPier::start();
    let receiver = Receiver::start();
    let (library, secretproj) = (receiver.url("/library"), receiver.url("/secretproj"));
    let config = base_config("", &[("site-b", site_b.url())])
        + &format!(
            "\n[[plugins]]\nname = \"replicate\"\nhook = \"replicator\"\npath = {:?}\n\
             grants = [\"log\", \"config\", \"kv\"]\n\
             \n[[plugins.config.rules]]\nname = \"secret-into-library\"\n\
             source = {{ project = \"secretproj\" }}\ntarget = \"site-b\"\n\
             destination = \"library/{{repository}}\"\ntrigger = \"event\"\n",
            pier_e2e::plugins::build().replicate.display().to_string()
        )
        + &format!(
            "\n[[plugins]]\nname = \"webhook\"\nhook = \"notifier\"\npath = {:?}\n\
             grants = [\"log\", \"config\", \"http\"]\n{}\n\n[plugins.config]\nendpoints = [\n\
             {{ url = \"{library}\", events = [\"replication-job\"], projects = [\"library\"] }},\n\
             {{ url = \"{secretproj}\", events = [\"replication-job\"], projects = [\"secretproj\"] }},\n]\n",
            pier_e2e::plugins::build().webhook.display().to_string(),
            allowed_hosts(std::slice::from_ref(&library)),
        );
    let site = start_site(&config);
    let pushed = push_image(
        site.addr,
        "secretproj/hidden-app",
        Some("v1"),
        &[&random_bytes(512)],
    );
    wait_succeeded(
        &site,
        "site-b",
        "secretproj/hidden-app",
        "v1",
        Duration::from_secs(60),
    );
    assert_eq!(
        manifest_digest(site_b.addr, "library/secretproj/hidden-app", "v1").as_deref(),
        Some(pushed.digest.as_str()),
        "the rule copied into library/ at site B"
    );
    wait_hooks(&site, &receiver, "the job's event at /secretproj", |hs| {
        hs.iter().any(|h| h.path == "/secretproj")
    });
    // Deliveries to /library would be routed with the same event: give them time.
    std::thread::sleep(Duration::from_secs(2));
    let hooks = receiver.hooks();
    let paths: Vec<&str> = hooks.iter().map(|h| h.path.as_str()).collect();
    assert_eq!(paths, ["/secretproj"], "only the source project's webhook");
    let ev = hooks[0].json();
    assert_eq!(ev["type"], "dev.pier.replication.job");
    assert_eq!(ev["data"]["repository"], "secretproj/hidden-app");
    assert_eq!(ev["data"]["tag"], "v1");
    let detail = &ev["data"]["detail"];
    assert_eq!(detail["state"], "succeeded");
    assert_eq!(detail["sourceRepository"], "secretproj/hidden-app");
    assert_eq!(
        detail["destinationRepository"],
        "library/secretproj/hidden-app"
    );
    assert_eq!(verify_hook(&hooks[0], SECRET), Ok(()));
}

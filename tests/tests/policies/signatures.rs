//! `plugins/signatures`: only images signed by a configured key are pulled, and a mirror
//! never caches what is not signed. Signatures are made by other implementations:
//! openssl (cosign's `.sig` layout, ECDSA P-256) and sigstore-js (`@sigstore/sign`
//! bundles, checked again with `@sigstore/verify`).

use std::fs;
use std::path::Path;
use std::process::Command;

use pier_e2e::{TestPier, get_manifest, http, plugins, sha256_digest};
use serde_json::json;

use crate::clients_support::*;
use crate::cosign::{Key, OCI_MANIFEST, cosign_sign, empty_config, put_manifest};
use crate::support::*;

const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// `node tests/tools/sigstore/SCRIPT ARGS`.
fn sigstore_js(script: &str, args: &[&str]) -> Output {
    let dir = pier_e2e::manifest_dir().join("tools").join("sigstore");
    assert!(
        dir.join("node_modules/@sigstore/sign").is_dir(),
        "the sigstore tools are not installed: run scripts/install-test-deps.sh"
    );
    run(
        Command::new("node").arg(dir.join(script)).args(args),
        CMD_TIMEOUT,
    )
}

/// A Sigstore bundle over `manifest` made by sigstore-js with `key`, attached to it as a
/// referrer in `repo`; returns the bundle's bytes. `tamper` flips a character of the
/// bundle's signature.
fn attach_bundle(
    pier: &TestPier,
    dir: &Path,
    repo: &str,
    manifest: &[u8],
    key: &Key,
    tamper: bool,
) -> Vec<u8> {
    let artifact = dir.join(format!("artifact-{}", sha256_digest(manifest)));
    let out = dir.join(format!("bundle-{}.json", sha256_digest(manifest)));
    fs::write(&artifact, manifest).unwrap();
    let o = sigstore_js(
        "sign.js",
        &[
            "--key",
            key.private.to_str().unwrap(),
            "--artifact",
            artifact.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.success(), "sigstore-js sign\n{o}");
    let mut bundle: serde_json::Value = serde_json::from_slice(&fs::read(&out).unwrap()).unwrap();
    assert_eq!(bundle["mediaType"], BUNDLE);
    if tamper {
        let s = bundle["messageSignature"]["signature"]
            .as_str()
            .unwrap()
            .to_owned();
        let flipped = if s.starts_with('M') { 'N' } else { 'M' };
        bundle["messageSignature"]["signature"] = json!(format!("{flipped}{}", &s[1..]));
    }
    let bytes = serde_json::to_vec(&bundle).unwrap();
    fs::write(&out, &bytes).unwrap();
    let bd = pier_e2e::push_blob_in_session(pier.addr, repo, &bytes);
    let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": BUNDLE,
        "config": empty_config(pier.addr, repo),
        "layers": [{"mediaType": BUNDLE, "digest": bd, "size": bytes.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": sha256_digest(manifest), "size": manifest.len()}});
    let d = put_manifest(pier.addr, repo, "latest-bundle", &m);
    // Attached by digest only, as referrers are.
    http::request(
        pier.addr,
        "DELETE",
        &format!("/v2/{repo}/manifests/latest-bundle"),
        &[],
        b"",
    )
    .expect_status(202, "untag the bundle");
    assert!(d.starts_with("sha256:"));
    bytes
}

/// `node verify.js`: whether sigstore-js accepts the bundle over `manifest` with `key`.
fn sigstore_js_verifies(dir: &Path, manifest: &[u8], bundle: &[u8], key: &Key) -> bool {
    let (a, b) = (dir.join("verify-artifact"), dir.join("verify-bundle.json"));
    fs::write(&a, manifest).unwrap();
    fs::write(&b, bundle).unwrap();
    sigstore_js(
        "verify.js",
        &[
            "--key",
            key.public.to_str().unwrap(),
            "--artifact",
            a.to_str().unwrap(),
            "--bundle",
            b.to_str().unwrap(),
        ],
    )
    .success()
}

/// The signatures plugin's entry; with `crypto`, it verifies through the host's native
/// ECDSA (without, in its own wasm code: both paths are tested).
fn plugin_entry_with(rules: &serde_json::Value, crypto: bool) -> String {
    format!(
        "[[plugins]]\nname = \"signatures\"\nhook = \"admission\"\npath = \"{}\"\n\
         grants = [\"config\", \"log\", \"registry\"{}]\n\n[plugins.config]\nrules = {}\n",
        plugins::build().signatures.display(),
        if crypto { ", \"crypto\"" } else { "" },
        toml_value(rules)
    )
}

fn plugin_entry(rules: &serde_json::Value) -> String {
    plugin_entry_with(rules, true)
}

/// For a mirror: the plugin reads the upstream during its call (through the mirror),
/// which takes longer than the default 100 ms deadline allows on a loaded machine.
fn mirror_entry(rules: &serde_json::Value, crypto: bool) -> String {
    plugin_entry_with(rules, crypto).replacen(
        "\n\n[plugins.config]",
        "\ntimeout = \"2s\"\n\n[plugins.config]",
        1,
    )
}

/// A JSON array of objects of strings, string arrays as TOML inline values.
fn toml_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Array(a) => {
            format!(
                "[{}]",
                a.iter().map(toml_value).collect::<Vec<_>>().join(", ")
            )
        }
        serde_json::Value::Object(o) => format!(
            "{{ {} }}",
            o.iter()
                .map(|(k, v)| format!("{k} = {}", toml_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        serde_json::Value::String(s) => format!("{:?}", s),
        other => other.to_string(),
    }
}

fn pier_with(toml: &str) -> (TestPier, tempfile::TempDir) {
    let dir = temp_dir("signatures");
    let config = dir.path().join("pier.toml");
    fs::write(&config, toml).unwrap();
    (
        TestPier::builder().arg("--config").arg(&config).start(),
        dir,
    )
}

#[track_caller]
fn expect_denied(r: &pier_e2e::Response, what: &str) -> String {
    r.expect_status(403, what);
    let e = &r.json()["errors"][0];
    assert_eq!(e["code"], "DENIED", "{what}: {r}");
    e["message"].as_str().unwrap().to_owned()
}

#[test]
fn only_images_with_a_cosign_signature_by_a_configured_key_are_pulled() {
    let keys = temp_dir("keys");
    let (key, other) = (
        Key::new(keys.path(), "team"),
        Key::new(keys.path(), "other"),
    );
    let rules = json!([
        {"name": "team-keys", "projects": ["team"], "keys": [key.public_pem()]},
        {"name": "soft", "projects": ["soft"], "keys": [key.public_pem()], "mode": "warn"}
    ]);
    let (pier, _dir) = pier_with(&plugin_entry(&rules));
    let a = pier.addr;
    let layer = gzip(&unique_bytes(1024));
    let push = |repo: &str, tag: &str| pier_e2e::push_image(a, repo, Some(tag), &[&layer]);

    let signed = push("team/app", "signed");
    cosign_sign(a, "team/app", &signed.digest, &key, false);
    let unsigned = push("team/app", "unsigned");
    let wrong_key = push("team/app", "wrong-key");
    cosign_sign(a, "team/app", &wrong_key.digest, &other, false);
    let tampered = push("team/app", "tampered");
    cosign_sign(a, "team/app", &tampered.digest, &key, true);

    // skopeo pulls the signed image, byte for byte, and is refused the others.
    let sk = Skopeo::new();
    let src = |tag: &str| format!("docker://{}/team/app:{tag}", pier.host());
    let out = sk.pull_to_oci(&src("signed"), "signed");
    assert!(
        fs::read_dir(out.join("blobs/sha256"))
            .unwrap()
            .any(
                |e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()) == signed.digest
            ),
        "skopeo got the signed manifest"
    );
    let o = sk.run(&[
        "copy",
        "--src-tls-verify=false",
        &src("unsigned"),
        &format!("oci:{}:x", sk.dir.path().join("refused").display()),
    ]);
    assert!(!o.success(), "skopeo must not get the unsigned image\n{o}");
    assert!(o.all().contains("not signed"), "skopeo shows why\n{o}");

    for (tag, img, why) in [
        ("unsigned", &unsigned, "no cosign signature"),
        (
            "wrong-key",
            &wrong_key,
            "does not verify with the keys of team-keys",
        ),
        (
            "tampered",
            &tampered,
            "does not verify with the keys of team-keys",
        ),
    ] {
        for reference in [tag, img.digest.as_str()] {
            let m = expect_denied(&get_manifest(a, "team/app", reference), reference);
            assert!(
                m.contains("policy \"signatures\"") && m.contains("team-keys") && m.contains(why),
                "{reference}: {m}"
            );
        }
        let head = http::request(
            a,
            "HEAD",
            &format!("/v2/team/app/manifests/{tag}"),
            &[],
            b"",
        );
        head.expect_status(403, &format!("HEAD {tag}"));
    }
    // The signature itself is served (clients verify it), and blobs are not gated.
    let tag = format!(
        "sha256-{}.sig",
        signed.digest.strip_prefix("sha256:").unwrap()
    );
    get_manifest(a, "team/app", &tag).expect_status(200, "the .sig manifest");

    // Signed later: refused, then served once the signature is there (refusals are
    // not remembered).
    cosign_sign(a, "team/app", &unsigned.digest, &key, false);
    get_manifest(a, "team/app", "unsigned").expect_status(200, "signed after the fact");

    // warn: served, logged; no rule: served.
    push("soft/app", "unsigned");
    get_manifest(a, "soft/app", "unsigned").expect_status(200, "warn mode");
    push("other/app", "unsigned");
    get_manifest(a, "other/app", "unsigned").expect_status(200, "no rule");
    let log = fs::read_to_string(pier.log_path()).unwrap();
    assert!(
        log.contains("served unsigned (warn)") && log.contains("soft/app"),
        "the warn line\n{}",
        pier.log_tail(30)
    );
    assert!(log.contains("admission denied"), "the refusals are logged");
}

#[test]
fn sigstore_bundles_attached_as_referrers_are_verified_as_sigstore_js_does() {
    let keys = temp_dir("keys");
    let (key, other) = (
        Key::new(keys.path(), "team"),
        Key::new(keys.path(), "other"),
    );
    let rules = json!([{"name": "team-keys", "projects": ["team"], "keys": [key.public_pem()]}]);
    let (pier, dir) = pier_with(&plugin_entry(&rules));
    let a = pier.addr;
    let layer = gzip(&unique_bytes(1024));
    let push = |tag: &str| pier_e2e::push_image(a, "team/app", Some(tag), &[&layer]);

    let good = push("bundled");
    expect_denied(&get_manifest(a, "team/app", "bundled"), "before the bundle");
    let bundle = attach_bundle(&pier, dir.path(), "team/app", &good.manifest, &key, false);
    assert!(
        sigstore_js_verifies(dir.path(), &good.manifest, &bundle, &key),
        "@sigstore/verify accepts the bundle"
    );
    let r = get_manifest(a, "team/app", "bundled");
    r.expect_status(200, "with a valid bundle");
    assert_eq!(r.body, good.manifest);

    // Tampered, another key: neither sigstore-js nor Pier accepts them.
    let tampered = push("tampered");
    let bundle = attach_bundle(
        &pier,
        dir.path(),
        "team/app",
        &tampered.manifest,
        &key,
        true,
    );
    assert!(!sigstore_js_verifies(
        dir.path(),
        &tampered.manifest,
        &bundle,
        &key
    ));
    let m = expect_denied(&get_manifest(a, "team/app", "tampered"), "tampered bundle");
    assert!(m.contains("bundle"), "{m}");
    let wrong = push("wrong-key");
    let bundle = attach_bundle(
        &pier,
        dir.path(),
        "team/app",
        &wrong.manifest,
        &other,
        false,
    );
    assert!(!sigstore_js_verifies(
        dir.path(),
        &wrong.manifest,
        &bundle,
        &key
    ));
    expect_denied(
        &get_manifest(a, "team/app", "wrong-key"),
        "bundle by another key",
    );
}

#[test]
fn a_mirror_never_caches_an_image_that_is_not_signed() {
    let keys = temp_dir("keys");
    let key = Key::new(keys.path(), "hub");
    let sk = Skopeo::new();
    let up = Upstream::start();
    let signed = TestImage::new("v1", 2);
    let unsigned = TestImage::new("v1", 2);
    up.push_image(&sk, "library/signed", &signed);
    up.push_image(&sk, "library/unsigned", &unsigned);
    cosign_sign(
        up.addr(),
        "library/signed",
        &signed.manifest_digest,
        &key,
        false,
    );
    // Mirrored repositories are named as stored and as the authorizer sees them:
    // `<upstream name>/<repository>`, so the upstream's name is their project.
    let rules = json!([{"name": "hub-keys", "projects": ["hub"], "keys": [key.public_pem()]}]);
    let (pier, _dir) = pier_with(&format!(
        "[[upstreams]]\nname = \"hub\"\nurl = \"{}\"\ndefault = true\n\n{}",
        up.url(),
        mirror_entry(&rules, false)
    ));

    // The signed image comes through whole (skopeo), the unsigned one is refused.
    let out = sk.pull_to_oci(
        &format!("docker://{}/library/signed:v1", pier.host()),
        "signed",
    );
    assert!(out.join("index.json").is_file());
    assert_registry_has_image(pier.addr, "library/signed", "v1", &signed);
    for reference in ["v1", unsigned.manifest_digest.as_str()] {
        let m = expect_denied(
            &get_manifest(pier.addr, "library/unsigned", reference),
            reference,
        );
        assert!(m.contains("hub-keys"), "{m}");
    }
    // Nothing of it is kept, and its layers were never fetched.
    assert!(
        !blob_data_path(&pier.root, &unsigned.manifest_digest).exists(),
        "the refused manifest is not cached"
    );
    for d in unsigned.blob_digests() {
        assert_eq!(
            up.count("GET", &format!("/v2/library/unsigned/blobs/{d}")),
            0,
            "{d} fetched"
        );
        assert!(!blob_data_path(&pier.root, &d).exists());
    }
}

/// A mirror asks its upstream for the referrers of what it caches: an image signed with a
/// Sigstore bundle attached as a referrer at the upstream (a Pier, which has the
/// referrers API) comes through; one whose bundle was tampered with is refused and not
/// cached.
#[test]
fn a_mirror_sees_the_sigstore_bundles_its_upstream_has() {
    let dir = temp_dir("mirror-bundles");
    let key = Key::new(dir.path(), "hub");
    let upstream = TestPier::start();
    let layer = gzip(&unique_bytes(1024));
    let mut manifests = Vec::new();
    for (repo, tamper) in [("library/good", false), ("library/bad", true)] {
        pier_e2e::push_image(upstream.addr, repo, Some("v1"), &[&layer]);
        let m = get_manifest(upstream.addr, repo, "v1").body.to_vec();
        attach_bundle(&upstream, dir.path(), repo, &m, &key, tamper);
        let refs = http::request(
            upstream.addr,
            "GET",
            &format!("/v2/{repo}/referrers/{}", sha256_digest(&m)),
            &[],
            b"",
        );
        assert_eq!(
            refs.json()["manifests"][0]["artifactType"],
            BUNDLE,
            "{refs}"
        );
        manifests.push(m);
    }
    let rules = json!([{"name": "hub-keys", "projects": ["hub"], "keys": [key.public_pem()]}]);
    let (pier, _dir) = pier_with(&format!(
        "[[upstreams]]\nname = \"hub\"\nurl = \"{}\"\ndefault = true\n\n{}",
        upstream.url(),
        mirror_entry(&rules, true)
    ));
    let r = get_manifest(pier.addr, "library/good", "v1");
    r.expect_status(200, "the bundle-signed image through the mirror");
    assert_eq!(r.body.to_vec(), manifests[0]);
    let m = expect_denied(&get_manifest(pier.addr, "library/bad", "v1"), "tampered");
    assert!(m.contains("hub-keys"), "{m}");
    assert!(
        !blob_data_path(&pier.root, &sha256_digest(&manifests[1])).exists(),
        "the refused manifest is not cached"
    );
}

/// The admin API (and so the console) shows each tag's signatures and what the
/// admission policies say of pulling it, and per project the policies, quota and
/// retention that govern it.
#[test]
fn the_admin_api_shows_signature_status_per_tag_and_policies_per_project() {
    let keys = temp_dir("keys");
    let (key, other) = (
        Key::new(keys.path(), "team"),
        Key::new(keys.path(), "other"),
    );
    let rules = json!([{"name": "team-keys", "projects": ["team"], "keys": [key.public_pem()]}]);
    let (pier, _dir) = pier_with(&plugin_entry(&rules));
    let a = pier.addr;
    let layer = gzip(&unique_bytes(1024));
    let push = |tag: &str| pier_e2e::push_image(a, "team/app", Some(tag), &[&layer]);
    let signed = push("signed");
    cosign_sign(a, "team/app", &signed.digest, &key, false);
    push("unsigned");
    let wrong = push("wrong-key");
    cosign_sign(a, "team/app", &wrong.digest, &other, false);

    let admin = |path: &str| {
        let r = http::request(pier.admin_addr, "GET", path, &[], b"");
        r.expect_status(200, path);
        r.json()
    };
    let page = admin("/api/v1/repositories/team/app/-/tags");
    let tag = |name: &str| {
        page["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no tag {name} in {page}"))
            .clone()
    };
    let t = tag("signed");
    assert_eq!(
        t["signatures"],
        json!({"cosign": true, "bundles": 0}),
        "{t}"
    );
    assert_eq!(t["admission"], json!({"state": "admitted"}), "{t}");
    let t = tag("unsigned");
    assert_eq!(
        t["signatures"],
        json!({"cosign": false, "bundles": 0}),
        "{t}"
    );
    assert_eq!(t["admission"]["state"], "denied", "{t}");
    assert_eq!(t["admission"]["policy"], "signatures", "{t}");
    assert!(
        t["admission"]["reason"]
            .as_str()
            .unwrap()
            .contains("no cosign signature"),
        "{t}"
    );
    let t = tag("wrong-key");
    assert_eq!(t["signatures"]["cosign"], true, "{t}");
    assert_eq!(t["admission"]["state"], "denied", "{t}");
    assert!(
        t["admission"]["reason"]
            .as_str()
            .unwrap()
            .contains("does not verify with the keys of team-keys"),
        "{t}"
    );

    let p = admin("/api/v1/policies/team");
    assert_eq!(p["project"], "team", "{p}");
    assert_eq!(p["admission"][0]["name"], "signatures", "{p}");
    assert_eq!(p["admission"][0]["repositories"], json!([]), "{p}");
    assert_eq!(p["quota"]["limit"], serde_json::Value::Null, "{p}");
    assert!(p["quota"]["used"].as_u64().unwrap() > 1024, "{p}");
    assert_eq!(
        p["retention"],
        serde_json::Value::Null,
        "no retention plugin: {p}"
    );
    let r = http::request(
        pier.admin_addr,
        "GET",
        "/api/v1/policies/Team%2Fx",
        &[],
        b"",
    );
    r.expect_status(400, "a project name with a slash");
}

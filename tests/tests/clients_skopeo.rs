//! skopeo (containers/image) against a real Pier: push an OCI image layout, inspect,
//! list tags, copy back to an OCI layout and a `dir:`, copy between repositories, delete,
//! and push converted to Docker schema 2.

mod clients_support;

use std::fs;

use clients_support::*;
use pier_e2e::TestPier;
use serde_json::Value;

fn json_of(o: &Output) -> Value {
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{o}"))
}

/// Pushes `img` from an OCI layout to `docker://HOST/name:tag`; returns the digest skopeo
/// reports (`--digestfile`).
#[track_caller]
fn push(sk: &Skopeo, pier: &TestPier, img: &TestImage, name: &str, extra: &[&str]) -> String {
    let layout = sk.dir.path().join(format!("src-{}", img.tag));
    if !layout.join("index.json").exists() {
        img.write_oci_layout(&layout);
    }
    let digestfile = sk
        .dir
        .path()
        .join(format!("digest-{}", name.replace(['/', ':'], "_")));
    let mut args = vec![
        "copy".to_owned(),
        "--dest-tls-verify=false".to_owned(),
        "--digestfile".to_owned(),
        digestfile.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(format!("oci:{}:{}", layout.display(), img.tag));
    args.push(format!("docker://{}/{name}", pier.host()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sk.ok(&args, &format!("skopeo push to {name}"));
    fs::read_to_string(&digestfile)
        .expect("digestfile")
        .trim()
        .to_owned()
}

#[test]
fn skopeo_push_inspect_list_pull_copy_delete() {
    let pier = TestPier::start();
    let sk = Skopeo::new();
    let host = pier.host();
    let img = TestImage::new("v1", 3);

    // Push: the manifest is uploaded unchanged, so its digest is ours.
    let d = push(&sk, &pier, &img, "skopeo/app:v1", &[]);
    assert_eq!(d, img.manifest_digest, "digest skopeo reports for the push");
    assert_registry_has_image(pier.addr, "skopeo/app", "v1", &img);
    assert_registry_has_image(pier.addr, "skopeo/app", &img.manifest_digest, &img);
    // A second tag for the same image (every blob already there).
    let d = push(&sk, &pier, &img, "skopeo/app:v1.1", &[]);
    assert_eq!(d, img.manifest_digest);

    // inspect
    let o = sk.ok(
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{host}/skopeo/app:v1"),
        ],
        "skopeo inspect",
    );
    let v = json_of(&o);
    assert_eq!(
        v["Digest"],
        img.manifest_digest.as_str(),
        "inspect Digest\n{o}"
    );
    let layers: Vec<String> = v["Layers"]
        .as_array()
        .expect("Layers")
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = img.layers.iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(layers, want, "inspect Layers");
    assert_eq!(v["Architecture"], oci_arch(), "inspect Architecture\n{o}");
    assert_eq!(v["Os"], "linux");
    let mut tags: Vec<String> = v["RepoTags"]
        .as_array()
        .expect("RepoTags")
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    tags.sort();
    assert_eq!(tags, ["v1", "v1.1"], "inspect RepoTags");

    let o = sk.ok(
        &[
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!("docker://{host}/skopeo/app:v1"),
        ],
        "skopeo inspect --raw",
    );
    assert_eq!(
        o.stdout.as_bytes(),
        &img.manifest[..],
        "raw manifest from inspect --raw"
    );
    let o = sk.ok(
        &[
            "inspect",
            "--tls-verify=false",
            "--config",
            "--raw",
            &format!("docker://{host}/skopeo/app@{}", img.manifest_digest),
        ],
        "skopeo inspect --config --raw (by digest)",
    );
    assert_eq!(
        o.stdout.as_bytes(),
        &img.config[..],
        "config from inspect --config --raw"
    );

    // list-tags
    let o = sk.ok(
        &[
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{host}/skopeo/app"),
        ],
        "skopeo list-tags",
    );
    let v = json_of(&o);
    let mut tags: Vec<&str> = v["Tags"]
        .as_array()
        .expect("Tags")
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tags.sort();
    assert_eq!(tags, ["v1", "v1.1"], "list-tags\n{o}");

    // Pull back into an OCI layout: same manifest digest, same blob bytes.
    let out = sk.pull_to_oci(&format!("docker://{host}/skopeo/app:v1"), "v1");
    let l = OciLayoutRead::open(&out, Some("v1"));
    assert_eq!(
        l.manifest_digest, img.manifest_digest,
        "pulled manifest digest"
    );
    assert_eq!(l.manifest, img.manifest);
    assert_eq!(l.blob(&img.config_digest), img.config);
    for (gz, d) in &img.layers {
        assert_eq!(&l.blob(d), gz, "pulled layer {d}");
    }
    // ... and into a dir: layout by digest.
    let dir_out = sk.dir.path().join("dir-out");
    sk.ok(
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{host}/skopeo/app@{}", img.manifest_digest),
            &format!("dir:{}", dir_out.display()),
        ],
        "skopeo copy by digest to dir:",
    );
    assert_eq!(
        fs::read(dir_out.join("manifest.json")).unwrap(),
        img.manifest
    );
    for (gz, d) in &img.layers {
        let f = dir_out.join(d.trim_start_matches("sha256:"));
        assert_eq!(&fs::read(&f).unwrap(), gz, "dir: layer {d}");
    }

    // Registry to registry, another repository (skopeo may mount the blobs).
    sk.ok(
        &[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{host}/skopeo/app:v1"),
            &format!("docker://{host}/skopeo/copied/deeper:c1"),
        ],
        "skopeo copy registry to registry",
    );
    assert_registry_has_image(pier.addr, "skopeo/copied/deeper", "c1", &img);

    // delete: a second image under its own tag; the first one must survive.
    let img2 = TestImage::new("v2", 1);
    let d2 = push(&sk, &pier, &img2, "skopeo/app:doomed", &[]);
    assert_eq!(d2, img2.manifest_digest);
    sk.ok(
        &[
            "delete",
            "--tls-verify=false",
            &format!("docker://{host}/skopeo/app:doomed"),
        ],
        "skopeo delete",
    );
    let r = get_manifest(pier.addr, "skopeo/app", "doomed");
    assert_eq!(r.status, 404, "tag of a deleted manifest\n{r}");
    let r = get_manifest(pier.addr, "skopeo/app", &img2.manifest_digest);
    assert_eq!(r.status, 404, "deleted manifest by digest\n{r}");
    let o = sk.run(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{host}/skopeo/app:doomed"),
    ]);
    assert!(!o.success(), "inspect of a deleted image succeeded\n{o}");
    assert_registry_has_image(pier.addr, "skopeo/app", "v1", &img);
    let o = sk.ok(
        &[
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{host}/skopeo/app"),
        ],
        "skopeo list-tags after delete",
    );
    let v = json_of(&o);
    let mut tags: Vec<&str> = v["Tags"]
        .as_array()
        .expect("Tags")
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tags.sort();
    assert_eq!(tags, ["v1", "v1.1"], "list-tags after delete\n{o}");
}

#[test]
fn skopeo_push_as_docker_schema2() {
    let pier = TestPier::start();
    let sk = Skopeo::new();
    let host = pier.host();
    let img = TestImage::new("s2", 2);

    let d = push(&sk, &pier, &img, "skopeo/schema2:v1", &["--format", "v2s2"]);
    assert_ne!(
        d, img.manifest_digest,
        "a converted manifest has another digest"
    );

    let r = get_manifest(pier.addr, "skopeo/schema2", "v1");
    r.expect_status(200, "GET converted manifest");
    assert_eq!(
        r.header("content-type"),
        Some(DOCKER_MANIFEST),
        "Content-Type\n{r}"
    );
    assert_eq!(
        pier_e2e::sha256_digest(&r.body),
        d,
        "digest of the stored bytes"
    );
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    let m = r.json();
    assert_eq!(m["mediaType"], DOCKER_MANIFEST);
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    let layer_digests: Vec<&str> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = img.layers.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(layer_digests, want, "gzip layers are reused unchanged");
    for l in m["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }

    // inspect and pull back the Docker manifest byte for byte.
    let o = sk.ok(
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{host}/skopeo/schema2:v1"),
        ],
        "skopeo inspect schema2",
    );
    assert_eq!(json_of(&o)["Digest"], d.as_str());
    let dir_out = sk.dir.path().join("dir-s2");
    sk.ok(
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{host}/skopeo/schema2@{d}"),
            &format!("dir:{}", dir_out.display()),
        ],
        "skopeo copy schema2 by digest to dir:",
    );
    let pulled = fs::read(dir_out.join("manifest.json")).unwrap();
    assert_eq!(
        pier_e2e::sha256_digest(&pulled),
        d,
        "pulled schema2 manifest digest"
    );
    for (gz, ld) in &img.layers {
        let f = dir_out.join(ld.trim_start_matches("sha256:"));
        assert_eq!(&fs::read(&f).unwrap(), gz, "dir: layer {ld}");
    }

    // The OCI original next to it in the same repository.
    let d_oci = push(&sk, &pier, &img, "skopeo/schema2:oci", &[]);
    assert_eq!(d_oci, img.manifest_digest);
    assert_registry_has_image(pier.addr, "skopeo/schema2", "oci", &img);
}

/// Several skopeo processes (each with its own blob-info cache, so none mounts) push the
/// same image at once — to one repository under different tags and to other
/// repositories — then pull it back at once: concurrent uploads of identical blobs.
#[test]
fn skopeo_parallel_pushes_of_the_same_image() {
    let pier = TestPier::start();
    let host = pier.host();
    let img = TestImage::new("v1", 3);
    let targets = [
        "skopeo/parallel:a",
        "skopeo/parallel:b",
        "skopeo/parallel:c",
        "skopeo/parallel-other:a",
        "skopeo/parallel-third:a",
    ];
    std::thread::scope(|s| {
        for t in targets {
            let img = &img;
            let host = &host;
            s.spawn(move || {
                let sk = Skopeo::new();
                let layout = sk.dir.path().join("src");
                img.write_oci_layout(&layout);
                sk.ok(
                    &[
                        "copy",
                        "--dest-tls-verify=false",
                        &format!("oci:{}:v1", layout.display()),
                        &format!("docker://{host}/{t}"),
                    ],
                    &format!("parallel push to {t}"),
                );
            });
        }
    });
    for t in targets {
        let (name, tag) = t.split_once(':').unwrap();
        assert_registry_has_image(pier.addr, name, tag, &img);
    }
    std::thread::scope(|s| {
        for t in targets {
            let img = &img;
            let host = &host;
            s.spawn(move || {
                let sk = Skopeo::new();
                let out = sk.pull_to_oci(&format!("docker://{host}/{t}"), "p");
                let l = OciLayoutRead::open(&out, None);
                assert_eq!(
                    l.manifest_digest, img.manifest_digest,
                    "parallel pull of {t}"
                );
                for (gz, d) in &img.layers {
                    assert_eq!(&l.blob(d), gz, "layer {d} pulled from {t}");
                }
            });
        }
    });
    assert_blob_store_consistent(&pier.root);
}

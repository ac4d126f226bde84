//! A real dockerd (started by hand, isolated in a temp dir) against a real Pier: import a
//! tiny rootfs, push, remove, pull by digest and by tag, push the same layer to another
//! repository (cross-repository mount), and an unknown tag.

mod clients_support;

use std::fs;

use clients_support::*;
use pier_e2e::TestPier;

#[test]
fn docker_push_pull_by_tag_and_digest_and_cross_repo_mount() {
    let pier = TestPier::start();
    let docker = Dockerd::start();
    let host = pier.host();

    let dir = temp_dir("docker-rootfs");
    let rootfs = dir.path().join("rootfs.tar");
    let salt = hex::encode(unique_bytes(16));
    let tar = Tar::new()
        .dir("etc")
        .file("etc/os-release", b"ID=pier-test\n")
        .file("etc/salt", salt.as_bytes())
        .dir("data")
        .file("data/blob.bin", &unique_bytes(64 * 1024))
        .finish();
    fs::write(&rootfs, tar).unwrap();

    let a = format!("{host}/docker/app:v1");
    docker.ok(
        &[
            "import",
            "--change",
            "CMD [\"/bin/true\"]",
            &rootfs.display().to_string(),
            &a,
        ],
        "docker import",
    );
    let id = docker.image_id(&a);

    // Push.
    let o = docker.ok(&["push", &a], "docker push");
    let digest = pushed_digest(&o);
    assert!(
        o.stdout.contains("Pushed"),
        "first push uploads the layer\n{o}"
    );
    let r = get_manifest(pier.addr, "docker/app", "v1");
    r.expect_status(200, "GET the manifest docker pushed");
    assert_eq!(
        pier_e2e::sha256_digest(&r.body),
        digest,
        "stored manifest digest"
    );
    assert_eq!(r.header("content-type"), Some(DOCKER_MANIFEST));
    let m = r.json();
    assert_eq!(
        m["config"]["digest"],
        id.as_str(),
        "config digest is the image id"
    );
    let layer = m["layers"][0]["digest"].as_str().expect("layer").to_owned();
    pier.head(&format!("/v2/docker/app/blobs/{layer}"))
        .expect_status(200, "HEAD the pushed layer");

    // Another tag in the same repository: nothing to upload.
    let a2 = format!("{host}/docker/app:v1-again");
    docker.ok(&["tag", &a, &a2], "docker tag");
    let o = docker.ok(&["push", &a2], "docker push of a second tag");
    assert_eq!(pushed_digest(&o), digest);
    assert!(
        o.stdout.contains("Layer already exists"),
        "second tag re-uploaded a layer\n{o}"
    );

    // Remove every local copy, pull by digest (a real download), then by tag.
    docker.ok(&["rmi", &a, &a2], "docker rmi");
    let ls = docker.ok(&["image", "ls", "-q"], "docker image ls");
    assert!(ls.stdout.trim().is_empty(), "images left after rmi\n{ls}");
    let by_digest = format!("{host}/docker/app@{digest}");
    let o = docker.ok(&["pull", &by_digest], "docker pull by digest");
    assert!(
        o.stdout.contains("Pull complete"),
        "pull by digest downloaded nothing\n{o}"
    );
    assert_eq!(
        docker.image_id(&by_digest),
        id,
        "image id after pull by digest"
    );
    let o = docker.ok(&["pull", &a], "docker pull by tag");
    assert!(
        o.stdout.contains(&format!("Digest: {digest}")),
        "pull by tag digest\n{o}"
    );
    assert_eq!(docker.image_id(&a), id, "image id after pull by tag");
    let rd = docker.ok(
        &["image", "inspect", "--format", "{{json .RepoDigests}}", &a],
        "RepoDigests",
    );
    assert!(rd.stdout.contains(&by_digest), "RepoDigests\n{rd}");

    // Another repository: docker mounts the layer from docker/app instead of uploading it.
    let b = format!("{host}/docker/other/copy:v2");
    docker.ok(&["tag", &a, &b], "docker tag to another repository");
    let o = docker.ok(&["push", &b], "docker push to another repository");
    assert_eq!(pushed_digest(&o), digest);
    assert!(
        o.stdout.contains("Mounted from docker/app"),
        "the layer was not mounted across repositories\n{o}\n{}",
        pier.log_tail(20)
    );
    let r = get_manifest(pier.addr, "docker/other/copy", "v2");
    r.expect_status(200, "GET the manifest in the second repository");
    assert_eq!(pier_e2e::sha256_digest(&r.body), digest);
    let blob = pier.get(&format!("/v2/docker/other/copy/blobs/{layer}"));
    blob.expect_status(200, "GET the mounted layer in the second repository");
    assert_eq!(pier_e2e::sha256_digest(&blob.body), layer);

    // An unknown tag fails cleanly.
    let o = run(
        docker
            .cmd()
            .args(["pull", &format!("{host}/docker/app:nope")]),
        CMD_TIMEOUT,
    );
    assert!(!o.success(), "pull of an unknown tag succeeded\n{o}");
    let all = o.all().to_ascii_lowercase();
    assert!(
        all.contains("manifest unknown") || all.contains("not found"),
        "pull of an unknown tag: unexpected error\n{o}"
    );
}

/// docker pulls a multi-layer OCI image that skopeo pushed, runs nothing, and pushes it to
/// another repository (layers mounted, not re-uploaded).
#[test]
fn docker_pulls_a_multi_layer_oci_image_and_pushes_it_on() {
    let pier = TestPier::start();
    let host = pier.host();
    let sk = Skopeo::new();
    let img = TestImage::new("v1", 3);
    let layout = sk.dir.path().join("src");
    img.write_oci_layout(&layout);
    sk.ok(
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", layout.display()),
            &format!("docker://{host}/docker/oci-src:v1"),
        ],
        "skopeo push of a 3-layer OCI image",
    );

    let docker = Dockerd::start();
    let src = format!("{host}/docker/oci-src:v1");
    let o = docker.ok(&["pull", &src], "docker pull of an OCI image");
    assert!(
        o.stdout
            .contains(&format!("Digest: {}", img.manifest_digest)),
        "pull digest\n{o}"
    );
    assert_eq!(
        docker.image_id(&src),
        img.config_digest,
        "image id is the config digest"
    );
    let layers = docker.ok(
        &[
            "image",
            "inspect",
            "--format",
            "{{len .RootFS.Layers}}",
            &src,
        ],
        "RootFS layers",
    );
    assert_eq!(layers.stdout.trim(), "3");

    let dst = format!("{host}/docker/oci-dst:v1");
    docker.ok(&["tag", &src, &dst], "docker tag");
    let o = docker.ok(&["push", &dst], "docker push of the pulled image");
    assert_eq!(
        o.stdout.matches("Mounted from docker/oci-src").count(),
        3,
        "every layer mounted from the source repository\n{o}"
    );
    let digest = pushed_digest(&o);
    let r = get_manifest(pier.addr, "docker/oci-dst", "v1");
    r.expect_status(200, "GET the manifest docker pushed");
    assert_eq!(pier_e2e::sha256_digest(&r.body), digest);
    let m = r.json();
    assert_eq!(m["config"]["digest"], img.config_digest.as_str());
    let got: Vec<&str> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = img.layers.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(got, want, "docker pushed the same compressed layers");
}

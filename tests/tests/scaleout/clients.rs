//! Real clients against the cluster: skopeo pushes through the load balancer and reads
//! back from every node; dockerd pushes through the load balancer and pulls back, by tag
//! through the load balancer and by digest from one node.

use std::fs;

use crate::clients_support::*;
use crate::cluster::Cluster;
use crate::mirror_support::assert_layout_is;
use crate::support::*;

/// A multi-layer image (layers of 7, 12 and 3 MiB: uploads span several 5 MiB S3 parts)
/// pushed with skopeo through nginx: each node serves the same manifest, and skopeo
/// copies back from each node exactly the pushed layers.
#[test]
fn skopeo_push_through_lb_reads_back_from_every_node() {
    let c = timed("cluster start", Cluster::start);
    let sk = Skopeo::new();
    let img = big_image("v1", &[7 << 20, (12 << 20) + 12_345, 3 << 20]);
    let src = oci_source(&sk, &img, "app");
    let dest = format!("docker://{}/team/app:v1", c.lb_host());
    timed("skopeo copy through the LB (~22 MiB)", || {
        sk.ok(
            &["copy", "--dest-tls-verify=false", &src, &dest],
            "skopeo copy to the load balancer",
        )
    });

    for node in &c.nodes {
        let reference = format!("{}/team/app:v1", node.host());
        assert_eq!(
            inspect_raw_digest(&sk, &reference),
            img.manifest_digest,
            "manifest digest from node{}",
            node.n
        );
        let out = timed(&format!("skopeo copy back from node{}", node.n), || {
            sk.pull_to_oci(&format!("docker://{reference}"), &format!("node{}", node.n))
        });
        assert_layout_is(
            &out,
            &img,
            &format!("image copied back from node{}", node.n),
        );
    }
    assert_blob_store_consistent(&c.s3_root());
}

/// dockerd: import a tiny rootfs, push it through the load balancer, remove it, pull it
/// back by tag through the load balancer, then by digest from node 3 directly.
#[test]
fn docker_push_through_lb_pull_by_tag_and_from_node3_by_digest() {
    let c = timed("cluster start", Cluster::start);
    let docker = timed("dockerd start", Dockerd::start);

    let dir = temp_dir("scaleout-rootfs");
    let rootfs = dir.path().join("rootfs.tar");
    let salt = hex::encode(unique_bytes(16));
    let tar = Tar::new()
        .dir("etc")
        .file("etc/os-release", b"ID=pier-scaleout\n")
        .file("etc/salt", salt.as_bytes())
        .dir("data")
        .file("data/blob.bin", &unique_bytes(256 * 1024))
        .finish();
    fs::write(&rootfs, tar).unwrap();

    let tagged = format!("{}/team/web:1", c.lb_host());
    docker.ok(
        &[
            "import",
            &rootfs.display().to_string(),
            "scaleout/web:import",
        ],
        "docker import",
    );
    docker.ok(&["tag", "scaleout/web:import", &tagged], "docker tag");
    let id = docker.image_id(&tagged);

    let o = timed("docker push through the LB", || {
        docker.ok(&["push", &tagged], "docker push through the LB")
    });
    let digest = pushed_digest(&o);
    assert!(o.stdout.contains("Pushed"), "push uploaded no layer\n{o}");

    docker.ok(&["rmi", &tagged, "scaleout/web:import"], "docker rmi");
    let ls = docker.ok(&["image", "ls", "-q"], "docker image ls");
    assert!(ls.stdout.trim().is_empty(), "images left after rmi\n{ls}");

    let o = timed("docker pull by tag through the LB", || {
        docker.ok(&["pull", &tagged], "docker pull by tag through the LB")
    });
    assert!(
        o.stdout.contains(&format!("Digest: {digest}")),
        "pull by tag: digest\n{o}"
    );
    assert!(
        o.stdout.contains("Pull complete"),
        "pull by tag downloaded nothing\n{o}"
    );
    assert_eq!(docker.image_id(&tagged), id, "image id after pull by tag");

    docker.ok(&["rmi", &tagged], "docker rmi after pull");
    let by_digest = format!("{}/team/web@{digest}", c.node(2).host());
    let o = timed("docker pull by digest from node3", || {
        docker.ok(&["pull", &by_digest], "docker pull by digest from node 3")
    });
    assert!(
        o.stdout.contains("Pull complete"),
        "pull by digest from node 3 downloaded nothing\n{o}"
    );
    assert_eq!(
        docker.image_id(&by_digest),
        id,
        "image id after pull by digest from node 3"
    );
    assert_blob_store_consistent(&c.s3_root());
}

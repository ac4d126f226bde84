//! Deletions: a tag deleted on site A, through the registry API or the admin API, is
//! deleted on site B by a rule with `delete = true`, and becomes a `manifest-deleted`
//! webhook naming who deleted it.

use std::time::Duration;

use pier_e2e::{push_image, random_bytes, wait_until};

use crate::support::*;

#[test]
fn deletes_on_a_propagate_to_b_and_reach_the_webhook() {
    let b = start_site("");
    let receiver = Receiver::start();
    let mut config = base_config("", &[("site-b", b.url())]);
    config.push_str(&format!(
        "\n[[plugins]]\nname = \"replicate\"\nhook = \"replicator\"\npath = {:?}\ngrants = [\"log\", \"config\", \"kv\"]\n\
         \n[[plugins.config.rules]]\nname = \"team-to-b\"\nsource = {{ project = \"team\" }}\ntarget = \"site-b\"\ntrigger = \"event\"\ndelete = true\n",
        pier_e2e::plugins::build().replicate.display().to_string()
    ));
    config.push_str(&format!(
        "\n[[plugins]]\nname = \"webhook\"\nhook = \"notifier\"\npath = {:?}\ngrants = [\"log\", \"config\", \"http\"]\n{}\n\n[plugins.config]\nendpoints = [{{ url = \"{}\", events = [\"manifest-deleted\"] }}]\n",
        pier_e2e::plugins::build().webhook.display().to_string(),
        allowed_hosts(&[receiver.url("/deleted")]),
        receiver.url("/deleted")
    ));
    let a = start_site(&config);
    let layer = random_bytes(4096);
    for tag in ["v1", "v2"] {
        let pushed = push_image(a.addr, "team/del", Some(tag), &[&layer]);
        wait_succeeded(&a, "site-b", "team/del", tag, Duration::from_secs(60));
        assert_eq!(
            manifest_digest(b.addr, "team/del", tag).as_deref(),
            Some(pushed.digest.as_str()),
            "{tag} replicated to B"
        );
    }

    // Through the registry API.
    pier_e2e::http::request(a.addr, "DELETE", "/v2/team/del/manifests/v1", &[], b"")
        .expect_status(202, "delete tag v1 on A");
    // Through the admin API.
    pier_e2e::http::request(
        a.admin_addr,
        "DELETE",
        "/api/v1/repositories/team/del/-/tags/v2",
        &[],
        b"",
    )
    .expect_status(200, "delete tag v2 on A through the admin API");

    for tag in ["v1", "v2"] {
        assert!(
            wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
                manifest_digest(b.addr, "team/del", tag).is_none()
            }),
            "tag {tag} deleted on B too; jobs: {:#?}",
            jobs(&a)
        );
        assert!(
            manifest_digest(a.addr, "team/del", tag).is_none(),
            "{tag} gone on A"
        );
    }
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            receiver.hooks().len() >= 2
        }),
        "two manifest-deleted webhooks: {:?}",
        receiver.hooks()
    );
    let mut tags: Vec<String> = receiver
        .hooks()
        .iter()
        .map(|h| {
            let v = h.json();
            assert_eq!(v["type"], "dev.pier.manifest.deleted", "{v}");
            v["data"]["tag"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    tags.sort();
    tags.dedup();
    assert_eq!(tags, ["v1", "v2"], "one event per deleted tag");
}

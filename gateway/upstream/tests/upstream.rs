//! The upstream client against real servers: Debian's `docker-registry` (CNCF
//! distribution 2.8) without auth, with htpasswd, with token auth fed by an in-test token
//! endpoint, and with TLS; tiny in-test servers for redirects, retries and timeouts.

mod support;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::StreamExt;
use pier_oci::{Algorithm, Digest, Reference, RepoName};
use pier_upstream::{
    ByteStream, Credentials, Upstream, UpstreamClient, UpstreamConfig, UpstreamError,
};
use support::{Registry, TinyServer, respond};
use tempfile::TempDir;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn config(
    url: &str,
    credentials: Option<(&str, &str)>,
    timeout: Duration,
    retries: u32,
) -> UpstreamConfig {
    UpstreamConfig {
        name: "test-upstream".to_owned(),
        url: url.to_owned(),
        credentials: credentials.map(|(u, p)| Credentials {
            username: u.to_owned(),
            password: p.to_owned(),
        }),
        timeout,
        retries,
        allow_private: false,
    }
}

fn client(url: &str, credentials: Option<(&str, &str)>) -> UpstreamClient {
    UpstreamClient::new(config(url, credentials, Duration::from_secs(5), 2))
        .expect("client")
        .with_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

async fn collect(mut stream: ByteStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

fn tag(image: &support::Image) -> Reference {
    image.tag.parse().expect("tag")
}

fn unknown_digest() -> Digest {
    Digest::of(Algorithm::Sha256, b"nobody pushed this")
}

#[tokio::test]
async fn pulls_manifests_and_blobs_from_docker_registry() {
    let root = TempDir::new().unwrap();
    let registry = Registry::plain(root.path());
    let image = support::seed(registry.port, "pier/test", "v1");
    let upstream = client(&registry.url(), None);
    assert_eq!(upstream.name(), "test-upstream");

    let by_tag = upstream
        .get_manifest(&image.repo, &tag(&image))
        .await
        .unwrap();
    assert_eq!(by_tag.bytes.as_ref(), image.manifest.as_slice());
    assert_eq!(by_tag.media_type, OCI_MANIFEST);
    assert_eq!(by_tag.digest, Some(image.manifest_digest.clone()));

    let by_digest = upstream
        .get_manifest(
            &image.repo,
            &Reference::Digest(image.manifest_digest.clone()),
        )
        .await
        .unwrap();
    assert_eq!(by_digest.bytes, by_tag.bytes);

    let head = upstream
        .head_manifest(&image.repo, &tag(&image))
        .await
        .unwrap();
    assert_eq!(head.digest, image.manifest_digest);
    assert_eq!(head.size, image.manifest.len() as u64);
    assert_eq!(head.media_type, OCI_MANIFEST);

    let size = upstream
        .head_blob(&image.repo, &image.layer_digest)
        .await
        .unwrap();
    assert_eq!(size, image.layer.len() as u64);

    let whole = upstream
        .get_blob(&image.repo, &image.layer_digest, 0)
        .await
        .unwrap();
    assert_eq!(whole.size, Some(image.layer.len() as u64));
    assert_eq!(collect(whole.stream).await.unwrap(), image.layer);

    let offset = 12_345;
    let tail = upstream
        .get_blob(&image.repo, &image.layer_digest, offset)
        .await
        .unwrap();
    assert_eq!(
        tail.size,
        Some(image.layer.len() as u64),
        "total size, not the rest"
    );
    assert_eq!(
        collect(tail.stream).await.unwrap(),
        &image.layer[offset as usize..]
    );

    // Not there: NotFound for every operation, and for an unknown repository.
    let missing: Reference = "nope".parse().unwrap();
    let err = upstream
        .get_manifest(&image.repo, &missing)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    let err = upstream
        .head_manifest(&image.repo, &missing)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    let err = upstream
        .head_blob(&image.repo, &unknown_digest())
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    let err = upstream
        .get_blob(&image.repo, &unknown_digest(), 0)
        .await
        .err()
        .unwrap();
    assert!(err.is_not_found(), "{err:?}");
    let other: RepoName = "pier/other".parse().unwrap();
    let err = upstream
        .get_manifest(&other, &tag(&image))
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

#[tokio::test]
async fn a_dead_port_fails_with_connect_after_the_retries() {
    let port = support::free_port();
    let upstream = UpstreamClient::new(config(
        &format!("http://127.0.0.1:{port}"),
        None,
        Duration::from_secs(2),
        2,
    ))
    .unwrap()
    .with_backoff(Duration::from_millis(100), Duration::from_secs(1));
    let repo: RepoName = "a/b".parse().unwrap();
    let started = Instant::now();
    let err = upstream
        .head_blob(&repo, &unknown_digest())
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Connect { .. }), "{err:?}");
    assert!(err.is_retryable());
    // Two retries: at least 100 ms, then 200 ms of backoff (jitter adds up to as much
    // again).
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn htpasswd_basic_auth() {
    let (root, image) = support::seeded_root("pier/basic", "v1");
    let dir = TempDir::new().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    let out = std::process::Command::new("htpasswd")
        .args(["-Bbn", "user", "pass"])
        .output()
        .expect("htpasswd (apt-get install apache2-utils)");
    assert!(out.status.success());
    std::fs::write(&htpasswd, out.stdout).unwrap();
    let registry = Registry::start(
        root.path(),
        "",
        &format!(
            "auth:\n  htpasswd:\n    realm: pier-test\n    path: {}\n",
            htpasswd.display()
        ),
    );

    let upstream = client(&registry.url(), Some(("user", "pass")));
    let manifest = upstream
        .get_manifest(&image.repo, &tag(&image))
        .await
        .unwrap();
    assert_eq!(manifest.bytes.as_ref(), image.manifest.as_slice());
    let blob = upstream
        .get_blob(&image.repo, &image.layer_digest, 100)
        .await
        .unwrap();
    assert_eq!(collect(blob.stream).await.unwrap(), &image.layer[100..]);
    assert_eq!(
        upstream
            .head_blob(&image.repo, &image.layer_digest)
            .await
            .unwrap(),
        image.layer.len() as u64
    );

    let anonymous = client(&registry.url(), None);
    let err = anonymous
        .get_manifest(&image.repo, &tag(&image))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Unauthorized(_)), "{err:?}");

    let wrong = client(&registry.url(), Some(("user", "wrong")));
    let err = wrong
        .head_blob(&image.repo, &image.layer_digest)
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Unauthorized(_)), "{err:?}");
}

const SERVICE: &str = "pier-test-registry";
const ISSUER: &str = "pier-test-issuer";

/// A Docker token endpoint: `user:pass` gets pull tokens for the scope asked for
/// (`token`, 300 s), `short:pass` gets them as `access_token` living 2 s, anonymous
/// requests get a token with no access, other credentials get 401.
fn token_server(key: Arc<support::SigningKey>) -> TinyServer {
    TinyServer::start(move |req, stream| {
        if req.path() != "/token" || req.query("service").as_deref() != Some(SERVICE) {
            respond(stream, 400, &[], b"bad token request");
            return;
        }
        let user = match req.header("Authorization") {
            None => None,
            Some(value) => {
                let decoded = value
                    .strip_prefix("Basic ")
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned());
                match decoded.as_deref() {
                    Some("user:pass") => Some("user"),
                    Some("short:pass") => Some("short"),
                    _ => {
                        respond(
                            stream,
                            401,
                            &[("Content-Type", "application/json")],
                            br#"{"details":"bad credentials"}"#,
                        );
                        return;
                    }
                }
            }
        };
        let scope = req.query("scope").unwrap_or_default();
        let name = scope
            .strip_prefix("repository:")
            .and_then(|rest| rest.rsplit_once(':'))
            .map(|(name, _actions)| name.to_owned());
        let access = match (user, name) {
            (Some(_), Some(name)) => {
                serde_json::json!([{"type": "repository", "name": name, "actions": ["pull"]}])
            }
            _ => serde_json::json!([]),
        };
        let jwt = support::sign_jwt(&key, ISSUER, SERVICE, user.unwrap_or(""), &access);
        let body = if user == Some("short") {
            serde_json::json!({"access_token": jwt, "expires_in": 2})
        } else {
            serde_json::json!({"token": jwt, "expires_in": 300})
        };
        respond(
            stream,
            200,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        );
    })
}

fn token_requests_by(server: &TinyServer, user: &str) -> usize {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:pass"))
    );
    server
        .requests()
        .iter()
        .filter(|r| r.header("Authorization") == Some(expected.as_str()))
        .count()
}

#[tokio::test]
async fn bearer_tokens_from_the_realm_against_docker_registry() {
    let (root, image) = support::seeded_root("pier/token", "v1");
    let keys = TempDir::new().unwrap();
    let key = Arc::new(support::signing_key(keys.path()));
    let tokens = token_server(key.clone());
    let registry = Registry::start(
        root.path(),
        "",
        &format!(
            "auth:\n  token:\n    realm: {}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            tokens.url(),
            key.cert.display()
        ),
    );

    // The registry itself refuses a request without a token.
    let bare = support::raw(
        registry.port,
        "GET",
        &format!("/v2/{}/manifests/v1", image.repo),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(bare.status, 401);
    assert!(
        bare.header("WWW-Authenticate")
            .unwrap_or("")
            .starts_with("Bearer "),
        "{bare:?}"
    );

    let upstream = client(&registry.url(), Some(("user", "pass")));
    let manifest = upstream
        .get_manifest(&image.repo, &tag(&image))
        .await
        .unwrap();
    assert_eq!(manifest.bytes.as_ref(), image.manifest.as_slice());
    let head = upstream
        .head_manifest(&image.repo, &tag(&image))
        .await
        .unwrap();
    assert_eq!(head.digest, image.manifest_digest);
    assert_eq!(
        upstream
            .head_blob(&image.repo, &image.layer_digest)
            .await
            .unwrap(),
        image.layer.len() as u64
    );
    let blob = upstream
        .get_blob(&image.repo, &image.layer_digest, 1)
        .await
        .unwrap();
    assert_eq!(collect(blob.stream).await.unwrap(), &image.layer[1..]);
    // One token served all four requests (same scope, cached).
    assert_eq!(
        token_requests_by(&tokens, "user"),
        1,
        "{:#?}",
        tokens.requests()
    );
    let request = tokens.requests().into_iter().next().unwrap();
    assert_eq!(
        request.query("scope").as_deref(),
        Some("repository:pier/token:pull")
    );
    assert_eq!(request.query("service").as_deref(), Some(SERVICE));

    // Anonymous: the realm gives a token without access, the registry still says 401.
    let anonymous = client(&registry.url(), None);
    let err = anonymous
        .get_manifest(&image.repo, &tag(&image))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Unauthorized(_)), "{err:?}");
    assert!(
        tokens
            .requests()
            .iter()
            .any(|r| r.header("Authorization").is_none()),
        "an anonymous token request"
    );

    // Wrong password: the token endpoint refuses.
    let wrong = client(&registry.url(), Some(("user", "nope")));
    let err = wrong
        .head_blob(&image.repo, &image.layer_digest)
        .await
        .unwrap_err();
    match &err {
        UpstreamError::Unauthorized(message) => {
            assert!(message.contains("token endpoint"), "{message}")
        }
        other => panic!("{other:?}"),
    }

    // `access_token` with `expires_in: 2`: reused at once, replaced shortly before expiry.
    let short = client(&registry.url(), Some(("short", "pass")));
    short
        .head_manifest(&image.repo, &tag(&image))
        .await
        .unwrap();
    short
        .head_manifest(&image.repo, &tag(&image))
        .await
        .unwrap();
    assert_eq!(token_requests_by(&tokens, "short"), 1);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    short
        .head_manifest(&image.repo, &tag(&image))
        .await
        .unwrap();
    assert_eq!(token_requests_by(&tokens, "short"), 2);
}

#[tokio::test]
async fn redirects_are_followed_without_forwarding_authorization() {
    let root = TempDir::new().unwrap();
    let registry = Registry::plain(root.path());
    let image = support::seed(registry.port, "pier/redirect", "v1");
    let registry_port = registry.port;

    // The "CDN" hop: another host (port), redirects once more to the registry.
    let cdn = TinyServer::start(move |req, stream| {
        let path = req
            .target
            .strip_prefix("/cdn")
            .unwrap_or(&req.target)
            .to_owned();
        let location = format!("http://127.0.0.1:{registry_port}{path}");
        respond(stream, 307, &[("Location", &location)], b"");
    });
    let cdn_port = cdn.port;
    // The upstream: wants Basic credentials, sends blobs to the CDN with a relative-to-host URL.
    let front = TinyServer::start(move |req, stream| {
        if req.header("Authorization") != Some("Basic dXNlcjpwYXNz") {
            respond(
                stream,
                401,
                &[("WWW-Authenticate", r#"Basic realm="front""#)],
                b"",
            );
            return;
        }
        let location = format!("http://127.0.0.1:{cdn_port}/cdn{}", req.target);
        respond(stream, 307, &[("Location", &location)], b"");
    });

    let upstream = client(&front.url(), Some(("user", "pass")));
    let blob = upstream
        .get_blob(&image.repo, &image.layer_digest, 0)
        .await
        .unwrap();
    assert_eq!(collect(blob.stream).await.unwrap(), image.layer);
    let blob = upstream
        .get_blob(&image.repo, &image.layer_digest, 50_000)
        .await
        .unwrap();
    assert_eq!(blob.size, Some(image.layer.len() as u64));
    assert_eq!(collect(blob.stream).await.unwrap(), &image.layer[50_000..]);
    assert_eq!(
        upstream
            .head_blob(&image.repo, &image.layer_digest)
            .await
            .unwrap(),
        image.layer.len() as u64
    );

    let cdn_requests = cdn.requests();
    assert_eq!(cdn_requests.len(), 3, "{cdn_requests:#?}");
    assert!(
        cdn_requests
            .iter()
            .all(|r| r.header("Authorization").is_none()),
        "{cdn_requests:#?}"
    );
    assert_eq!(cdn_requests[1].header("Range"), Some("bytes=50000-"));
    // The first request was anonymous and challenged; later ones sent Basic at once.
    let front_requests = front.requests();
    assert_eq!(front_requests.len(), 4, "{front_requests:#?}");
    assert!(front_requests[0].header("Authorization").is_none());
    assert!(
        front_requests[1..]
            .iter()
            .all(|r| r.header("Authorization").is_some())
    );

    // A redirect loop ends after 5 hops with a protocol error.
    let hops = Arc::new(AtomicUsize::new(0));
    let looping = {
        let hops = hops.clone();
        TinyServer::start(move |req, stream| {
            hops.fetch_add(1, Ordering::SeqCst);
            respond(stream, 302, &[("Location", &req.target)], b"");
        })
    };
    let upstream = client(&looping.url(), None);
    let err = upstream
        .get_blob(&image.repo, &image.layer_digest, 0)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, UpstreamError::Protocol(ref m) if m.contains("redirects")),
        "{err:?}"
    );
    assert_eq!(hops.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn retries_5xx_and_429_honouring_retry_after() {
    let root = TempDir::new().unwrap();
    let registry = Registry::plain(root.path());
    let image = support::seed(registry.port, "pier/flaky", "v1");
    let registry_port = registry.port;

    // 503, then 429 with Retry-After: 1, then a redirect to the registry.
    let count = Arc::new(AtomicUsize::new(0));
    let flaky = {
        let count = count.clone();
        TinyServer::start(
            move |req, stream| match count.fetch_add(1, Ordering::SeqCst) {
                0 => respond(stream, 503, &[], b"busy"),
                1 => respond(stream, 429, &[("Retry-After", "1")], b"slow down"),
                _ => {
                    let location = format!("http://127.0.0.1:{registry_port}{}", req.target);
                    respond(stream, 307, &[("Location", &location)], b"");
                }
            },
        )
    };
    let upstream = UpstreamClient::new(config(&flaky.url(), None, Duration::from_secs(5), 3))
        .unwrap()
        .with_backoff(Duration::from_millis(20), Duration::from_millis(200));
    let started = Instant::now();
    let blob = upstream
        .get_blob(&image.repo, &image.layer_digest, 0)
        .await
        .unwrap();
    assert_eq!(collect(blob.stream).await.unwrap(), image.layer);
    assert_eq!(count.load(Ordering::SeqCst), 3);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 honoured"
    );

    // Always 502: the first attempt and two retries, then the status.
    let count = Arc::new(AtomicUsize::new(0));
    let broken = {
        let count = count.clone();
        TinyServer::start(move |_, stream| {
            count.fetch_add(1, Ordering::SeqCst);
            respond(stream, 502, &[], b"bad gateway upstream");
        })
    };
    let upstream = client(&broken.url(), None);
    let err = upstream
        .get_manifest(&image.repo, &tag(&image))
        .await
        .unwrap_err();
    assert!(
        matches!(err, UpstreamError::Status { status: 502, ref body } if body.contains("bad gateway")),
        "{err:?}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 3);

    // A Retry-After longer than a request may wait: given back at once.
    let count = Arc::new(AtomicUsize::new(0));
    let limited = {
        let count = count.clone();
        TinyServer::start(move |_, stream| {
            count.fetch_add(1, Ordering::SeqCst);
            respond(stream, 429, &[("Retry-After", "3600")], b"");
        })
    };
    let upstream = client(&limited.url(), None);
    let err = upstream
        .head_blob(&image.repo, &image.layer_digest)
        .await
        .unwrap_err();
    assert!(
        matches!(err, UpstreamError::TooManyRequests { retry_after: Some(d) } if d == Duration::from_secs(3600)),
        "{err:?}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);

    // 403 is final: Denied, no retry.
    let count = Arc::new(AtomicUsize::new(0));
    let denying = {
        let count = count.clone();
        TinyServer::start(move |_, stream| {
            count.fetch_add(1, Ordering::SeqCst);
            respond(
                stream,
                403,
                &[("Content-Type", "application/json")],
                br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#,
            );
        })
    };
    let upstream = client(&denying.url(), None);
    let err = upstream
        .get_manifest(&image.repo, &tag(&image))
        .await
        .unwrap_err();
    assert!(
        matches!(err, UpstreamError::Denied(ref m) if m.contains("DENIED")),
        "{err:?}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

/// The pull budget against a real HTTP server: a 429 pauses every request to the
/// upstream for its Retry-After (none sent meanwhile), concurrent fetches are capped with
/// a blob counting until its body ends, and the request rate holds.
#[tokio::test]
async fn the_budget_pauses_on_429_and_caps_fetches_and_rate() {
    use pier_upstream::{Budget, BudgetConfig};
    let root = TempDir::new().unwrap();
    let registry = Registry::plain(root.path());
    let image = support::seed(registry.port, "pier/budget", "v1");
    let registry_port = registry.port;

    // 1. The first request gets 429 with Retry-After: 2 (longer than a request may wait
    //    here: timeout 1 s), everything later a redirect to the registry.
    let count = Arc::new(AtomicUsize::new(0));
    let limited = {
        let count = count.clone();
        TinyServer::start(move |req, stream| {
            if count.fetch_add(1, Ordering::SeqCst) == 0 {
                respond(
                    stream,
                    429,
                    &[
                        ("Retry-After", "2"),
                        ("ratelimit-limit", "100;w=21600"),
                        ("ratelimit-remaining", "0;w=21600"),
                    ],
                    b"toomanyrequests",
                );
            } else {
                let location = format!("http://127.0.0.1:{registry_port}{}", req.target);
                respond(stream, 307, &[("Location", &location)], b"");
            }
        })
    };
    let budget = Arc::new(Budget::new("limited", BudgetConfig::default()));
    let upstream = UpstreamClient::new(config(&limited.url(), None, Duration::from_secs(1), 3))
        .unwrap()
        .with_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .with_budget(budget.clone());
    let err = upstream
        .head_manifest(&image.repo, &tag(&image))
        .await
        .unwrap_err();
    assert!(
        matches!(err, UpstreamError::TooManyRequests { retry_after: Some(d) } if d == Duration::from_secs(2)),
        "{err:?}"
    );
    assert_eq!(budget.upstream_view(), (Some(100), Some(0)));
    assert!(upstream.paused_for().is_some(), "paused after the 429");
    // During the pause: refused at once, nothing sent.
    for _ in 0..3 {
        let err = upstream
            .get_manifest(&image.repo, &tag(&image))
            .await
            .unwrap_err();
        assert!(
            matches!(err, UpstreamError::TooManyRequests { .. }),
            "{err:?}"
        );
    }
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "requests sent during the pause"
    );
    assert_eq!(budget.pauses(), 1);
    // After it: asked again, and answered.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(upstream.paused_for().is_none());
    let m = upstream
        .get_manifest(&image.repo, &tag(&image))
        .await
        .unwrap();
    assert_eq!(m.bytes, image.manifest);
    assert_eq!(count.load(Ordering::SeqCst), 2);

    // 2. max_concurrent_fetches = 2 against an upstream that takes 300 ms per answer:
    //    never more than 2 in flight there; and a blob being read holds its slot.
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let slow = {
        let (now, peak) = (now.clone(), peak.clone());
        TinyServer::start(move |req, stream| {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            now.fetch_sub(1, Ordering::SeqCst);
            let location = format!("http://127.0.0.1:{registry_port}{}", req.target);
            respond(stream, 307, &[("Location", &location)], b"");
        })
    };
    let budget = Arc::new(Budget::new(
        "slow",
        BudgetConfig {
            max_concurrent: 2,
            per_second: 0.0,
        },
    ));
    let upstream = Arc::new(client(&slow.url(), None).with_budget(budget.clone()));
    let heads: Vec<_> = (0..6)
        .map(|_| {
            let (u, repo, d) = (
                upstream.clone(),
                image.repo.clone(),
                image.layer_digest.clone(),
            );
            tokio::spawn(async move { u.head_blob(&repo, &d).await })
        })
        .collect();
    for h in heads {
        assert_eq!(h.await.unwrap().unwrap(), image.layer.len() as u64);
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        2,
        "upstream requests in flight at once"
    );
    let a = upstream
        .get_blob(&image.repo, &image.layer_digest, 0)
        .await
        .unwrap();
    let b = upstream
        .get_blob(&image.repo, &image.layer_digest, 0)
        .await
        .unwrap();
    assert_eq!(budget.in_flight(), 2, "two blobs being read");
    let third = {
        let (u, repo, d) = (
            upstream.clone(),
            image.repo.clone(),
            image.layer_digest.clone(),
        );
        tokio::spawn(async move { u.head_blob(&repo, &d).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "a third fetch ran beside two open blobs"
    );
    assert_eq!(collect(a.stream).await.unwrap(), image.layer);
    third.await.unwrap().unwrap();
    drop(b);
    assert_eq!(budget.in_flight(), 0);

    // 3. max_requests_per_second = 5: ten requests take at least a second (five at
    //    once, then one every 200 ms).
    let fast = {
        TinyServer::start(move |req, stream| {
            let location = format!("http://127.0.0.1:{registry_port}{}", req.target);
            respond(stream, 307, &[("Location", &location)], b"");
        })
    };
    let budget = Arc::new(Budget::new(
        "fast",
        BudgetConfig {
            max_concurrent: 0,
            per_second: 5.0,
        },
    ));
    let upstream = client(&fast.url(), None).with_budget(budget);
    let started = Instant::now();
    for _ in 0..10 {
        upstream
            .head_blob(&image.repo, &image.layer_digest)
            .await
            .unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "10 requests at 5/s took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn timeouts_cover_headers_and_stalls_but_not_slow_bodies() {
    let timeout = Duration::from_millis(400);
    let repo: RepoName = "pier/slow".parse().unwrap();
    let digest = unknown_digest();

    // No response headers at all: Timeout after `timeout` (no retries here).
    let silent = TinyServer::start(|_, _| std::thread::sleep(Duration::from_secs(3)));
    let upstream = UpstreamClient::new(config(&silent.url(), None, timeout, 0)).unwrap();
    let started = Instant::now();
    let err = upstream.head_blob(&repo, &digest).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Timeout(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // 1000 bytes at 100 bytes per 150 ms: 1.5 s in all, longer than the timeout, fine.
    let slow = TinyServer::start(|_, stream| {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n");
        for i in 0..10u8 {
            std::thread::sleep(Duration::from_millis(150));
            let _ = stream.write_all(&[i; 100]);
        }
    });
    let upstream = UpstreamClient::new(config(&slow.url(), None, timeout, 0)).unwrap();
    let started = Instant::now();
    let blob = upstream.get_blob(&repo, &digest, 0).await.unwrap();
    assert_eq!(blob.size, Some(1000));
    let bytes = collect(blob.stream).await.unwrap();
    assert_eq!(bytes.len(), 1000);
    assert_eq!(bytes[999], 9);
    assert!(started.elapsed() > timeout * 3, "{:?}", started.elapsed());

    // 100 bytes, then nothing: the stream errors about `timeout` after the last byte.
    let stalled = TinyServer::start(|_, stream| {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n");
        let _ = stream.write_all(&[1; 100]);
        let _ = stream.flush();
        std::thread::sleep(Duration::from_secs(3));
    });
    let upstream = UpstreamClient::new(config(&stalled.url(), None, timeout, 0)).unwrap();
    let blob = upstream.get_blob(&repo, &digest, 0).await.unwrap();
    let mut stream = blob.stream;
    let mut received = 0;
    let mut last_byte = Instant::now();
    let error = loop {
        match stream.next().await {
            Some(Ok(chunk)) => {
                received += chunk.len();
                last_byte = Instant::now();
            }
            Some(Err(error)) => break error,
            None => panic!("stream ended without an error"),
        }
    };
    let silence = last_byte.elapsed();
    assert_eq!(received, 100);
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
    assert!(
        silence >= timeout - Duration::from_millis(50) && silence < Duration::from_millis(1_500),
        "{silence:?}"
    );
    assert!(stream.next().await.is_none(), "nothing after the error");
}

#[tokio::test]
async fn odd_but_valid_answers_and_wrong_ones() {
    let body: Vec<u8> = support::pseudo_random(1000, 3);
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#;
    let manifest_digest = Digest::of(Algorithm::Sha256, manifest);
    let server = {
        let body = body.clone();
        TinyServer::start(move |req, stream| {
            if req.path().ends_with("/manifests/typed") {
                // Content-Type with a parameter, no Docker-Content-Digest.
                respond(
                    stream,
                    200,
                    &[(
                        "Content-Type",
                        "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8",
                    )],
                    manifest,
                );
            } else if req.path().contains("/manifests/") {
                // Whatever was asked for, the same bytes, no Content-Type at all.
                respond(stream, 200, &[], manifest);
            } else if req.path().ends_with(
                "/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000001",
            ) {
                // Ignores Range: a full 200.
                respond(stream, 200, &[], &body);
            } else {
                // A 206 from the wrong place.
                respond(stream, 206, &[("Content-Range", "bytes 0-999/1000")], &body);
            }
        })
    };
    let upstream = client(&server.url(), None);
    let repo: RepoName = "pier/odd".parse().unwrap();

    let typed = upstream
        .get_manifest(&repo, &"typed".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        typed.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(typed.digest, None);
    assert_eq!(typed.bytes.as_ref(), manifest.as_slice());
    // No Content-Type: the manifest's own mediaType.
    let untyped = upstream
        .get_manifest(&repo, &Reference::Digest(manifest_digest))
        .await
        .unwrap();
    assert_eq!(
        untyped.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    // Asked by digest, served other bytes: refused.
    let err = upstream
        .get_manifest(&repo, &Reference::Digest(unknown_digest()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, UpstreamError::Protocol(ref m) if m.contains("for sha256:")),
        "{err:?}"
    );

    let full: Digest = "sha256:0000000000000000000000000000000000000000000000000000000000000001"
        .parse()
        .unwrap();
    let blob = upstream.get_blob(&repo, &full, 300).await.unwrap();
    assert_eq!(blob.size, Some(1000));
    assert_eq!(collect(blob.stream).await.unwrap(), &body[300..]);
    let err = upstream.get_blob(&repo, &full, 2000).await.err().unwrap();
    assert!(
        matches!(err, UpstreamError::Protocol(ref m) if m.contains("past the end")),
        "{err:?}"
    );
    let err = upstream
        .get_blob(&repo, &unknown_digest(), 300)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, UpstreamError::Protocol(ref m) if m.contains("from 300")),
        "{err:?}"
    );
}

#[tokio::test]
async fn https_upstream_with_a_private_ca() {
    let root = TempDir::new().unwrap();
    let plain = Registry::plain(root.path());
    let image = support::seed(plain.port, "pier/tls", "v1");
    drop(plain);
    let certs = TempDir::new().unwrap();
    let tls = support::tls_files(certs.path());
    let registry = Registry::start(
        root.path(),
        &format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            tls.cert.display(),
            tls.key.display()
        ),
        "",
    );
    let url = format!("https://127.0.0.1:{}", registry.port);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(tls.ca_der.clone().into()).unwrap();
    let upstream =
        UpstreamClient::with_roots(config(&url, None, Duration::from_secs(5), 0), roots).unwrap();
    let manifest = upstream
        .get_manifest(&image.repo, &tag(&image))
        .await
        .unwrap();
    assert_eq!(manifest.bytes.as_ref(), image.manifest.as_slice());
    let blob = upstream
        .get_blob(&image.repo, &image.layer_digest, 10)
        .await
        .unwrap();
    assert_eq!(collect(blob.stream).await.unwrap(), &image.layer[10..]);

    // The system roots do not know the test CA: the handshake fails.
    let untrusting = UpstreamClient::new(config(&url, None, Duration::from_secs(5), 0)).unwrap();
    let err = untrusting
        .head_blob(&image.repo, &image.layer_digest)
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Connect { .. }), "{err:?}");
}

/// The write side replication uses, against distribution with token auth: push
/// tokens (`pull,push`, plus `pull` on the mount source), a chunked upload with a
/// status check, commit, mount, manifest PUT and HEAD, tag list, no referrers API.
#[tokio::test]
async fn pushes_in_chunks_with_push_tokens_and_mounts() {
    let root = TempDir::new().unwrap();
    let keys = TempDir::new().unwrap();
    let key = Arc::new(support::signing_key(keys.path()));
    // Grants every action asked for, for every `scope` parameter.
    let signer = key.clone();
    let tokens = TinyServer::start(move |req, stream| {
        let query = req.target.split_once('?').map(|(_, q)| q).unwrap_or("");
        let mut access = Vec::new();
        for pair in query.split('&') {
            let Some(scope) = pair.strip_prefix("scope=") else {
                continue;
            };
            let scope = scope
                .replace("%3A", ":")
                .replace("%2F", "/")
                .replace("%2C", ",");
            let Some((name, actions)) = scope
                .strip_prefix("repository:")
                .and_then(|rest| rest.rsplit_once(':'))
            else {
                continue;
            };
            let actions: Vec<&str> = actions.split(',').collect();
            access
                .push(serde_json::json!({"type": "repository", "name": name, "actions": actions}));
        }
        let jwt = support::sign_jwt(
            &signer,
            ISSUER,
            SERVICE,
            "user",
            &serde_json::Value::Array(access),
        );
        let body = serde_json::json!({"token": jwt, "expires_in": 300});
        respond(
            stream,
            200,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        );
    });
    let registry = Registry::start(
        root.path(),
        "",
        &format!(
            "auth:\n  token:\n    realm: {}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            tokens.url(),
            key.cert.display()
        ),
    );
    let client = client(&registry.url(), Some(("user", "pass")));
    let repo: RepoName = "push/one".parse().unwrap();
    let data = support::pseudo_random(250_000, 7);
    let digest = Digest::of(Algorithm::Sha256, &data);

    assert_eq!(client.blob_exists(&repo, &digest).await.unwrap(), None);
    let mut session = client.start_upload(&repo).await.unwrap();
    assert_eq!(session.offset, 0);
    for piece in data.chunks(100_000) {
        let bytes = bytes::Bytes::copy_from_slice(piece);
        let body: ByteStream = Box::pin(futures_util::stream::iter([Ok(bytes)]));
        let before = session.offset;
        session = client
            .upload_chunk(&repo, &session, piece.len() as u64, body)
            .await
            .unwrap();
        assert_eq!(session.offset, before + piece.len() as u64);
    }
    let status = client.upload_status(&repo, &session).await.unwrap();
    assert_eq!(status.offset, data.len() as u64);
    client.finish_upload(&repo, &status, &digest).await.unwrap();
    assert_eq!(
        client.blob_exists(&repo, &digest).await.unwrap(),
        Some(data.len() as u64)
    );

    // Mount into another repository; an unknown blob is not mounted.
    let other: RepoName = "push/two".parse().unwrap();
    assert_eq!(
        client.mount_blob(&other, &digest, &repo).await.unwrap(),
        pier_upstream::Mount::Mounted
    );
    let refused = client
        .mount_blob(&other, &unknown_digest(), &repo)
        .await
        .unwrap();
    let pier_upstream::Mount::Upload(session) = refused else {
        panic!("an unknown blob was mounted");
    };
    // distribution wants the `delete` action for this, which a push token lacks:
    // cancelling is best effort.
    let _ = client.cancel_upload(&other, &session).await;
    let scopes: Vec<String> = tokens.requests().iter().map(|r| r.target.clone()).collect();
    assert!(
        scopes
            .iter()
            .any(|t| t.contains("repository%3Apush%2Fone%3Apull%2Cpush")),
        "{scopes:?}"
    );
    assert!(
        scopes.iter().any(|t| t.contains(
            "scope=repository%3Apush%2Ftwo%3Apull%2Cpush&scope=repository%3Apush%2Fone%3Apull"
        )),
        "{scopes:?}"
    );

    // A manifest over the mounted blob, by tag; HEAD finds it; the tag list has it.
    let config = b"{}".to_vec();
    let config_digest = Digest::of(Algorithm::Sha256, &config);
    let mut s = client.start_upload(&other).await.unwrap();
    let body: ByteStream = Box::pin(futures_util::stream::iter([Ok(bytes::Bytes::from(
        config.clone(),
    ))]));
    s = client.upload_chunk(&other, &s, 2, body).await.unwrap();
    client
        .finish_upload(&other, &s, &config_digest)
        .await
        .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": data.len()}],
    }))
    .unwrap();
    let manifest_digest = Digest::of(Algorithm::Sha256, &manifest);
    let v1: Reference = "v1".parse().unwrap();
    let stored = client
        .put_manifest(&other, &v1, OCI_MANIFEST, manifest.into())
        .await
        .unwrap();
    assert_eq!(stored, Some(manifest_digest.clone()));
    assert_eq!(
        client.manifest_digest(&other, &v1).await.unwrap(),
        Some(manifest_digest.clone())
    );
    let missing: Reference = "nope".parse().unwrap();
    assert_eq!(
        client.manifest_digest(&other, &missing).await.unwrap(),
        None
    );
    let tags = client.tags(&other).await.unwrap();
    assert_eq!(tags.iter().map(|t| t.as_str()).collect::<Vec<_>>(), ["v1"]);
    // distribution 2.8 has no referrers API: none.
    assert!(
        client
            .referrers(&other, &manifest_digest)
            .await
            .unwrap()
            .is_empty()
    );
}

//! The S3 backend against a real S3 server: s3s-fs (which checks SigV4 signatures) on a
//! free loopback port with a temp data dir and random credentials, one per test.
//!
//! The binary is `$S3S_FS_BIN`, or `$PIER_CACHE/s3s-fs/bin/s3s-fs` (`PIER_CACHE` defaults
//! to `~/.cache/pier`), which `scripts/install-test-deps.sh` builds, with a patch for long
//! keys (see there). Missing, the tests panic with that hint: nothing is skipped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use pier_oci::{Algorithm, Digest, RepoName, Tag};
use pier_storage::s3::{MIN_PART_SIZE, S3Config, S3Store};
use pier_storage::{
    BlobBody, BlobRead, BlobStore, ByteStream, IngestStore, ManifestStore, RangeSpec, RepoStore,
    StorageError, UploadStore,
};

const INSTALL_HINT: &str = "run scripts/install-test-deps.sh to build s3s-fs, or set S3S_FS_BIN";

fn s3s_fs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("S3S_FS_BIN") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("PIER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/pier")
        });
    let bin = cache.join("s3s-fs/bin/s3s-fs");
    assert!(bin.is_file(), "{} not found: {INSTALL_HINT}", bin.display());
    // Stock s3s-fs fails on keys longer than about 165 bytes, which the layout has.
    let marker = cache.join("s3s-fs/long-keys-patch");
    assert!(
        marker.is_file(),
        "{} is not the patched build: {INSTALL_HINT}",
        bin.display()
    );
    bin
}

/// An s3s-fs process, killed on drop.
struct S3Server {
    child: Child,
    endpoint: String,
    access_key: String,
    secret_key: String,
    data: tempfile::TempDir,
    /// Read caches of the stores (each store its own directory, as each node has).
    caches: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

impl S3Server {
    fn start() -> S3Server {
        let data = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let access_key = uuid::Uuid::new_v4().simple().to_string();
        let secret_key = uuid::Uuid::new_v4().simple().to_string();
        let child = Command::new(s3s_fs_bin())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", &access_key, "--secret-key", &secret_key])
            .arg(data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start s3s-fs: {e}: {INSTALL_HINT}"));
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key,
            secret_key,
            data,
            caches: tempfile::tempdir().unwrap(),
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Kills the server: from now on only what Pier cached can be read.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Files s3s-fs keeps for multipart uploads not completed or aborted.
    fn open_multipart_files(&self) -> Vec<String> {
        std::fs::read_dir(self.data.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(".upload"))
            .collect()
    }

    fn config(&self, bucket: &str, prefix: &str) -> S3Config {
        let mut c = S3Config::new(bucket);
        c.endpoint = Some(self.endpoint.clone());
        c.access_key = Some(self.access_key.clone());
        c.secret_key = Some(self.secret_key.clone());
        c.force_path_style = true;
        c.prefix = prefix.to_owned();
        c.cache_dir = Some(self.caches.path().join(uuid::Uuid::new_v4().to_string()));
        c
    }

    /// A store on a new bucket; parts of the minimum size, so multipart paths run on
    /// small data.
    async fn store(&self, bucket: &str, prefix: &str) -> S3Store {
        self.store_with(bucket, prefix, |_| {}).await
    }

    /// A store on a new bucket, with settings changed by `f`.
    async fn store_with(
        &self,
        bucket: &str,
        prefix: &str,
        f: impl FnOnce(&mut S3Config),
    ) -> S3Store {
        let mut config = self.config(bucket, prefix);
        config.part_size = MIN_PART_SIZE;
        f(&mut config);
        let store = S3Store::connect(config).await.unwrap();
        store
            .client()
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .unwrap();
        store.check().await.unwrap();
        store
    }

    /// Another store on an existing bucket (a restarted process, another node).
    async fn reopen(&self, bucket: &str, prefix: &str) -> S3Store {
        let mut config = self.config(bucket, prefix);
        config.part_size = MIN_PART_SIZE;
        S3Store::connect(config).await.unwrap()
    }
}

/// Every key in the bucket, sorted.
async fn bucket_keys(store: &S3Store) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let out = store
            .client()
            .list_objects_v2()
            .bucket(store.bucket_name())
            .set_continuation_token(token)
            .max_keys(7)
            .send()
            .await
            .unwrap();
        keys.extend(
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(String::from)),
        );
        token = out.next_continuation_token().map(String::from);
        if token.is_none() {
            break;
        }
    }
    keys.sort();
    keys
}

fn body(chunks: Vec<Vec<u8>>) -> ByteStream {
    Box::pin(futures_util::stream::iter(
        chunks.into_iter().map(|c| Ok(Bytes::from(c))),
    ))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

fn chunked(data: &[u8], size: usize) -> Vec<Vec<u8>> {
    data.chunks(size).map(<[u8]>::to_vec).collect()
}

async fn read_all(s: &S3Store, d: &Digest, range: Option<RangeSpec>) -> Vec<u8> {
    match s.read(d, range).await.unwrap() {
        BlobRead::Content {
            body: BlobBody::Bytes(b),
            ..
        } => b.to_vec(),
        BlobRead::Content {
            body: BlobBody::Stream(mut st),
            ..
        } => {
            let mut out = Vec::new();
            while let Some(c) = st.next().await {
                out.extend_from_slice(&c.unwrap());
            }
            out
        }
        BlobRead::Redirect(url) => panic!("unexpected redirect to {url}"),
    }
}

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_passes_the_suite() {
    let server = S3Server::start();
    let store = server.store("suite", "registry/root").await;
    pier_storage::testsuite::run_all(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_passes_the_suite_at_the_bucket_root() {
    let server = S3Server::start();
    let store = server.store("rootless", "").await;
    pier_storage::testsuite::run_all(Arc::new(store)).await;
}

/// The keys are distribution's: a bucket Pier wrote can be served by distribution's S3
/// driver with `rootdirectory: /<prefix>`, and the reverse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_follow_the_distribution_layout() {
    let server = S3Server::start();
    let s = server.store("layout", "/some/root/").await;
    let r = repo("library/alpine");
    let layer = b"layer bytes".to_vec();
    let ld = Digest::of(Algorithm::Sha256, &layer);
    let up = s.create(&r).await.unwrap();
    s.append(&r, &up.id, Some(0), body(vec![layer.clone()]))
        .await
        .unwrap();
    s.commit(&r, &up.id, &ld).await.unwrap();
    let manifest = br#"{"schemaVersion":2}"#.to_vec();
    let md = Digest::of(Algorithm::Sha256, &manifest);
    s.put(&md, Bytes::from(manifest)).await.unwrap();
    s.link_manifest(&r, &md).await.unwrap();
    let tag: Tag = "3.20".parse().unwrap();
    s.set_tag(&r, &tag, &md).await.unwrap();
    let subject = Digest::of(Algorithm::Sha256, b"subject");
    s.add_referrer(&r, &subject, &md).await.unwrap();

    let base = "some/root/docker/registry/v2";
    let (lh, mh, sh) = (ld.hex(), md.hex(), subject.hex());
    let mut expected = vec![
        format!("{base}/blobs/sha256/{}/{lh}/data", &lh[..2]),
        format!("{base}/blobs/sha256/{}/{mh}/data", &mh[..2]),
        format!("{base}/repositories/library/alpine/_layers/sha256/{lh}/link"),
        format!("{base}/repositories/library/alpine/_manifests/revisions/sha256/{mh}/link"),
        format!("{base}/repositories/library/alpine/_manifests/tags/3.20/current/link"),
        format!("{base}/repositories/library/alpine/_manifests/tags/3.20/index/sha256/{mh}/link"),
        format!("{base}/repositories/library/alpine/_referrers/sha256/{sh}/sha256/{mh}/link"),
    ];
    expected.sort();
    assert_eq!(bucket_keys(&s).await, expected);

    // Links hold the digest string, as distribution writes them.
    let link = s
        .client()
        .get_object()
        .bucket("layout")
        .key(format!(
            "{base}/repositories/library/alpine/_manifests/tags/3.20/current/link"
        ))
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(&link[..], md.to_string().as_bytes());

    // An open session is distribution's `_uploads/<id>/startedat` (+ Pier's state).
    let open = s.create(&r).await.unwrap();
    s.append(&r, &open.id, None, body(vec![b"abc".to_vec()]))
        .await
        .unwrap();
    let uploads: Vec<String> = bucket_keys(&s)
        .await
        .into_iter()
        .filter(|k| k.contains("/_uploads/"))
        .collect();
    let dir = format!("{base}/repositories/library/alpine/_uploads/{}", open.id);
    assert_eq!(
        uploads,
        vec![format!("{dir}/pierstate"), format!("{dir}/startedat")]
    );
}

/// A bucket written by someone else in distribution's layout is read as-is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_a_bucket_distribution_wrote() {
    let server = S3Server::start();
    let s = server.store("foreign", "registry").await;
    let base = "registry/docker/registry/v2";
    let blob = b"written by distribution".to_vec();
    let d = Digest::of(Algorithm::Sha256, &blob);
    let put = |key: String, data: Vec<u8>| {
        let client = s.client().clone();
        async move {
            client
                .put_object()
                .bucket("foreign")
                .key(key)
                .body(data.into())
                .send()
                .await
                .unwrap();
        }
    };
    put(
        format!("{base}/blobs/sha256/{}/{}/data", &d.hex()[..2], d.hex()),
        blob.clone(),
    )
    .await;
    put(
        format!(
            "{base}/repositories/team/app/_manifests/revisions/sha256/{}/link",
            d.hex()
        ),
        d.to_string().into_bytes(),
    )
    .await;
    put(
        format!("{base}/repositories/team/app/_manifests/tags/v1/current/link"),
        d.to_string().into_bytes(),
    )
    .await;
    put(
        format!(
            "{base}/repositories/team/app/_layers/sha256/{}/link",
            d.hex()
        ),
        d.to_string().into_bytes(),
    )
    .await;
    let r = repo("team/app");
    assert_eq!(s.repositories().await.unwrap(), vec![r.clone()]);
    assert_eq!(s.tags(&r).await.unwrap(), Some(vec!["v1".parse().unwrap()]));
    assert_eq!(
        s.resolve_tag(&r, &"v1".parse().unwrap()).await.unwrap(),
        Some(d.clone())
    );
    assert!(s.blob_linked(&r, &d).await.unwrap());
    assert_eq!(read_all(&s, &d, None).await, blob);
    assert_eq!(s.tags(&repo("team/none")).await.unwrap(), None);
}

/// Sessions live in the bucket: another process (a restart, another node) picks them up,
/// running hash included, and commits without reading the blob back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart() {
    let server = S3Server::start();
    let a = server.store("restart", "p").await;
    let r = repo("big/layer");
    let data = pattern(MIN_PART_SIZE * 2 + 12_345, 1);
    let d = Digest::of(Algorithm::Sha256, &data);
    let split = MIN_PART_SIZE + 1000;
    let st = a.create(&r).await.unwrap();
    a.append(&r, &st.id, Some(0), body(chunked(&data[..split], 300_000)))
        .await
        .unwrap();
    drop(a);

    let b = server.reopen("restart", "p").await;
    assert_eq!(b.status(&r, &st.id).await.unwrap().offset, split as u64);
    assert!(matches!(
        b.append(&r, &st.id, Some(5), body(vec![b"x".to_vec()]))
            .await,
        Err(StorageError::OffsetMismatch { .. })
    ));
    b.append(
        &r,
        &st.id,
        Some(split as u64),
        body(chunked(&data[split..], 1 << 20)),
    )
    .await
    .unwrap();
    drop(b);
    let c = server.reopen("restart", "p").await;
    assert_eq!(c.commit(&r, &st.id, &d).await.unwrap(), data.len() as u64);
    assert_eq!(read_all(&c, &d, None).await, data);
    assert!(c.blob_linked(&r, &d).await.unwrap());
    assert!(
        !bucket_keys(&c)
            .await
            .iter()
            .any(|k| k.contains("/_uploads/")),
        "the session's keys are gone"
    );

    // With another algorithm the running hash does not help: the object is read back.
    let st = c.create(&r).await.unwrap();
    let data = pattern(MIN_PART_SIZE + 7, 2);
    let d512 = Digest::of(Algorithm::Sha512, &data);
    c.append(&r, &st.id, None, body(chunked(&data, 1 << 20)))
        .await
        .unwrap();
    let wrong = Digest::of(Algorithm::Sha512, b"nope");
    let st2 = c.create(&r).await.unwrap();
    c.append(&r, &st2.id, None, body(chunked(&data, 1 << 20)))
        .await
        .unwrap();
    assert!(matches!(
        c.commit(&r, &st2.id, &wrong).await,
        Err(StorageError::DigestMismatch { .. })
    ));
    assert_eq!(c.stat(&wrong).await.unwrap(), None);
    assert_eq!(
        c.commit(&r, &st.id, &d512).await.unwrap(),
        data.len() as u64
    );
    assert_eq!(read_all(&c, &d512, None).await, data);
    assert!(
        !bucket_keys(&c)
            .await
            .iter()
            .any(|k| k.contains("/_uploads/")),
        "the sessions' keys are gone"
    );
}

/// A multipart session with a wrong digest leaves nothing, and one for a blob already
/// stored is only linked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_mismatch_and_existing_blob() {
    let server = S3Server::start();
    let s = server.store("mismatch", "").await;
    let r = repo("m");
    let data = pattern(MIN_PART_SIZE * 2, 3);
    let d = Digest::of(Algorithm::Sha256, &data);
    let st = s.create(&r).await.unwrap();
    s.append(&r, &st.id, None, body(chunked(&data, 1 << 20)))
        .await
        .unwrap();
    let wrong = Digest::of(Algorithm::Sha256, b"wrong");
    assert!(matches!(
        s.commit(&r, &st.id, &wrong).await,
        Err(StorageError::DigestMismatch { .. })
    ));
    assert!(s.status(&r, &st.id).await.is_err());
    assert!(
        bucket_keys(&s).await.is_empty(),
        "{:?}",
        bucket_keys(&s).await
    );
    assert_eq!(server.open_multipart_files(), Vec::<String>::new());

    for _ in 0..2 {
        let st = s.create(&r).await.unwrap();
        s.append(&r, &st.id, None, body(chunked(&data, 1 << 20)))
            .await
            .unwrap();
        assert_eq!(s.commit(&r, &st.id, &d).await.unwrap(), data.len() as u64);
    }
    assert_eq!(read_all(&s, &d, None).await, data);
    let mid = read_all(&s, &d, Some(RangeSpec::FromTo(100, 5_000_000))).await;
    assert_eq!(mid, &data[100..=5_000_000]);
    assert_eq!(
        read_all(&s, &d, Some(RangeSpec::Suffix(3))).await,
        &data[data.len() - 3..]
    );
}

/// Blobs above the single-copy limit (5 GiB on S3; lowered here) are copied into place
/// with UploadPartCopy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blobs_are_copied_in_parts() {
    let server = S3Server::start();
    let s = server
        .store("copy", "x")
        .await
        .with_copy_limits(MIN_PART_SIZE as u64, MIN_PART_SIZE as u64);
    let r = repo("c");
    let data = pattern(MIN_PART_SIZE * 2 + MIN_PART_SIZE / 2, 4);
    let d = Digest::of(Algorithm::Sha256, &data);
    let st = s.create(&r).await.unwrap();
    s.append(&r, &st.id, None, body(chunked(&data, 1 << 20)))
        .await
        .unwrap();
    assert_eq!(s.commit(&r, &st.id, &d).await.unwrap(), data.len() as u64);
    assert_eq!(s.stat(&d).await.unwrap(), Some(data.len() as u64));
    assert_eq!(read_all(&s, &d, None).await, data);
}

/// A mirror fill larger than a part: multipart to the blob's own key, invisible until
/// the digest matched, readable while written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_in_parts() {
    let server = S3Server::start();
    let s = server.store("ingest", "").await;
    let r = repo("mirror/x");
    let data = pattern(MIN_PART_SIZE * 2 + 99, 5);
    let d = Digest::of(Algorithm::Sha256, &data);
    let mut ing = s.begin_ingest(&r, &d).await.unwrap();
    let reader = ing.reader();
    for c in data.chunks(1 << 20) {
        ing.write(Bytes::copy_from_slice(c)).await.unwrap();
        let w = ing.written() as usize;
        assert_eq!(&reader.read_at(0, w).await.unwrap()[..], &data[..w]);
    }
    assert_eq!(s.stat(&d).await.unwrap(), None, "visible before commit");
    assert!(
        !server.open_multipart_files().is_empty(),
        "a fill larger than a part is a multipart upload"
    );
    assert_eq!(ing.commit().await.unwrap(), data.len() as u64);
    assert_eq!(read_all(&s, &d, None).await, data);
    assert!(s.blob_linked(&r, &d).await.unwrap());

    let wrong = Digest::of(Algorithm::Sha256, b"wrong");
    let mut ing = s.begin_ingest(&r, &wrong).await.unwrap();
    for c in data.chunks(1 << 20) {
        ing.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    assert!(matches!(
        ing.commit().await,
        Err(StorageError::DigestMismatch { .. })
    ));
    assert_eq!(s.stat(&wrong).await.unwrap(), None);
    assert_eq!(server.open_multipart_files(), Vec::<String>::new());
}

/// Expiry finds sessions in the bucket, also those another process started, and aborts
/// their multipart uploads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_covers_other_processes() {
    let server = S3Server::start();
    let a = server.store("expire", "e").await;
    let r = repo("x/y");
    let big = a.create(&r).await.unwrap();
    a.append(
        &r,
        &big.id,
        None,
        body(chunked(&pattern(MIN_PART_SIZE + 1, 6), 1 << 20)),
    )
    .await
    .unwrap();
    let small = a.create(&r).await.unwrap();
    drop(a);
    let b = server.reopen("expire", "e").await;
    assert_eq!(b.expire(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(b.status(&r, &small.id).await.unwrap().offset, 0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(b.expire(Duration::from_millis(1)).await.unwrap(), 2);
    assert!(matches!(
        b.status(&r, &big.id).await,
        Err(StorageError::UploadNotFound(_))
    ));
    assert!(
        bucket_keys(&b).await.is_empty(),
        "{:?}",
        bucket_keys(&b).await
    );
    assert_eq!(server.open_multipart_files(), Vec::<String>::new());
}

// ---- the local read cache ----

/// Stores `data` as a blob through an upload session.
async fn push(s: &S3Store, data: &[u8]) -> Digest {
    let r = repo("cache/test");
    let d = Digest::of(Algorithm::Sha256, data);
    let st = s.create(&r).await.unwrap();
    s.append(&r, &st.id, None, body(chunked(data, 1 << 20)))
        .await
        .unwrap();
    s.commit(&r, &st.id, &d).await.unwrap();
    d
}

/// Waits (a copy is published after the reader got its last byte) until `d` is cached.
async fn wait_cached(s: &S3Store, d: &Digest) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.is_cached(d) {
        assert!(Instant::now() < deadline, "{d} was not cached");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Files under a cache directory: (blobs, fills in progress).
fn cache_files(dir: &std::path::Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    fn walk(p: &std::path::Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    let mut all = Vec::new();
    walk(dir, &mut all);
    all.into_iter()
        .partition(|p| !p.starts_with(dir.join("tmp")))
}

/// Waits until no fill is in progress in `dir`.
async fn wait_no_fills(dir: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cache_files(dir).1.is_empty() {
        assert!(Instant::now() < deadline, "fills left in {}", dir.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every item of a read's stream, errors included.
async fn read_items(s: &S3Store, d: &Digest) -> (Vec<u8>, Option<std::io::Error>) {
    match s.read(d, None).await.unwrap() {
        BlobRead::Content {
            body: BlobBody::Stream(mut st),
            ..
        } => {
            let mut out = Vec::new();
            while let Some(c) = st.next().await {
                match c {
                    Ok(c) => out.extend_from_slice(&c),
                    Err(e) => return (out, Some(e)),
                }
            }
            (out, None)
        }
        _ => panic!("expected a stream"),
    }
}

/// The second read of a blob comes from the local cache: with the S3 server gone, whole
/// blobs, ranges and stats are still answered with the right bytes; small blobs also
/// from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_reads_are_served_from_the_cache() {
    let mut server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let s = server
        .store_with("cached", "c", |c| c.cache_dir = Some(dir.path().to_owned()))
        .await;
    let big = pattern(MIN_PART_SIZE * 2 + 7, 7);
    let bd = push(&s, &big).await;
    let small = br#"{"schemaVersion":2,"config":{}}"#.to_vec();
    let sd = Digest::of(Algorithm::Sha256, &small);
    s.put(&sd, Bytes::from(small.clone())).await.unwrap();
    let mem = b"kept in memory".to_vec();
    let md = Digest::of(Algorithm::Sha256, &mem);
    s.put(&md, Bytes::from(mem.clone())).await.unwrap();
    assert!(!s.is_cached(&bd), "writes do not fill the cache");

    // Read as an HTTP server sends a body with a Content-Length: no poll after the last
    // byte.
    let BlobRead::Content {
        body: BlobBody::Stream(mut st),
        ..
    } = s.read(&bd, None).await.unwrap()
    else {
        panic!("expected a stream");
    };
    let mut got = Vec::new();
    while got.len() < big.len() {
        got.extend_from_slice(&st.next().await.unwrap().unwrap());
    }
    drop(st);
    assert!(got == big);
    assert_eq!(read_all(&s, &sd, None).await, small);
    assert_eq!(read_all(&s, &md, None).await, mem);
    for d in [&bd, &sd, &md] {
        wait_cached(&s, d).await;
    }
    let (files, fills) = cache_files(dir.path());
    assert_eq!((files.len(), fills.len()), (3, 0), "{files:?} {fills:?}");
    // The memory copy answers even without the disk copy.
    let hex = md.hex();
    std::fs::remove_file(dir.path().join("sha256").join(&hex[..2]).join(hex)).unwrap();

    server.stop();
    assert_eq!(read_all(&s, &bd, None).await, big);
    let n = big.len() as u64;
    for (r, want) in [
        (RangeSpec::FromTo(100, 5_000_000), &big[100..=5_000_000]),
        (RangeSpec::FromTo(3, 9), &big[3..=9]),
        (RangeSpec::From(n - 10), &big[big.len() - 10..]),
        (RangeSpec::Suffix(3_000_000), &big[big.len() - 3_000_000..]),
    ] {
        assert_eq!(read_all(&s, &bd, Some(r)).await, want, "{r:?}");
    }
    assert!(matches!(
        s.read(&bd, Some(RangeSpec::From(n))).await,
        Err(StorageError::RangeNotSatisfiable { size }) if size == n
    ));
    assert_eq!(s.stat(&bd).await.unwrap(), Some(n));
    assert_eq!(read_all(&s, &sd, None).await, small);
    assert_eq!(
        read_all(&s, &sd, Some(RangeSpec::FromTo(2, 5))).await,
        &small[2..=5]
    );
    assert_eq!(read_all(&s, &md, None).await, mem);
    // Not cached: S3 is asked, and is gone.
    assert!(
        s.read(&Digest::of(Algorithm::Sha256, b"other"), None)
            .await
            .is_err()
    );
}

/// A reader that goes away mid-blob abandons the copy: nothing is cached, nothing is
/// left behind, and the next reader fills the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_fill_leaves_nothing() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let s = server
        .store_with("interrupted", "", |c| {
            c.cache_dir = Some(dir.path().to_owned())
        })
        .await;
    let big = pattern(MIN_PART_SIZE * 2, 8);
    let d = push(&s, &big).await;
    let BlobRead::Content {
        body: BlobBody::Stream(mut st),
        ..
    } = s.read(&d, None).await.unwrap()
    else {
        panic!("expected a stream");
    };
    let mut got = 0;
    while got < 1 << 20 {
        got += st.next().await.unwrap().unwrap().len();
    }
    assert_eq!(cache_files(dir.path()).1.len(), 1, "a fill is in progress");
    drop(st);
    wait_no_fills(dir.path()).await;
    assert!(!s.is_cached(&d));
    assert!(cache_files(dir.path()).0.is_empty());

    assert_eq!(read_all(&s, &d, None).await, big);
    wait_cached(&s, &d).await;
    assert_eq!(cache_files(dir.path()).0.len(), 1);
}

/// An S3 object whose bytes are not its digest's is never cached: the read of a large
/// blob ends with an error after the last byte, that of a small one fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_objects_are_not_cached() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let s = server
        .store_with("corrupt", "p", |c| {
            c.cache_dir = Some(dir.path().to_owned())
        })
        .await;
    let big = pattern(MIN_PART_SIZE + 3, 9);
    let bd = push(&s, &big).await;
    let small = b"small content".to_vec();
    let sd = Digest::of(Algorithm::Sha256, &small);
    s.put(&sd, Bytes::from(small.clone())).await.unwrap();
    // Same sizes, other bytes, written behind Pier's back: the large one straight into
    // s3s-fs's data directory, the small one with a PutObject.
    let hex = bd.hex();
    let file = server.data.path().join(format!(
        "corrupt/p/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    assert_eq!(std::fs::read(&file).unwrap(), big, "s3s-fs's file layout");
    std::fs::write(&file, pattern(big.len(), 10)).unwrap();
    let hex = sd.hex();
    s.client()
        .put_object()
        .bucket("corrupt")
        .key(format!(
            "p/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
        .body(b"SMALL CONTENT".to_vec().into())
        .send()
        .await
        .unwrap();

    for _ in 0..2 {
        let (bytes, err) = read_items(&s, &bd).await;
        assert!(bytes.len() < big.len(), "the last chunk is held back");
        let err = err.expect("the stream reports the mismatch");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        assert!(s.read(&sd, None).await.is_err());
        wait_no_fills(dir.path()).await;
        assert!(!s.is_cached(&bd) && !s.is_cached(&sd));
        assert_eq!(cache_files(dir.path()).0, Vec::<PathBuf>::new());
    }
}

/// The disk cache keeps at most `cache_max_size` bytes, dropping the least recently used
/// blobs; a blob larger than the whole cache is not copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_evicts_least_recently_used() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let each = 3 << 20;
    let s = server
        .store_with("evict", "", |c| {
            c.cache_dir = Some(dir.path().to_owned());
            c.cache_max_size = 7 << 20;
            c.memory_cache_size = 0;
        })
        .await;
    let blobs: Vec<(Digest, Vec<u8>)> = futures_util::future::join_all((0..3u8).map(|i| {
        let data = pattern(each, 20 + i);
        let s = &s;
        async move { (push(s, &data).await, data) }
    }))
    .await;
    let [(a, ad), (b, _), (c, _)] = &blobs[..] else {
        unreachable!()
    };
    for d in [a, b] {
        read_all(&s, d, None).await;
        wait_cached(&s, d).await;
    }
    // `a` is used again, so `b` is now the least recently used.
    assert_eq!(read_all(&s, a, None).await, *ad);
    read_all(&s, c, None).await;
    wait_cached(&s, c).await;
    assert!(s.is_cached(a) && !s.is_cached(b));
    let (files, _) = cache_files(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert!(total <= 7 << 20);

    let huge = pattern(8 << 20, 30);
    let hd = push(&s, &huge).await;
    assert_eq!(read_all(&s, &hd, None).await, huge);
    assert_eq!(cache_files(dir.path()).1, Vec::<PathBuf>::new(), "no fill");
    assert!(!s.is_cached(&hd) && s.is_cached(a) && s.is_cached(c));
}

/// A range read that misses streams the range and fills the cache in the background;
/// deleting the blob drops the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_misses_fill_and_deletes_drop_the_copy() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let s = server
        .store_with("ranges", "", |c| c.cache_dir = Some(dir.path().to_owned()))
        .await;
    let big = pattern(MIN_PART_SIZE + 11, 11);
    let d = push(&s, &big).await;
    assert_eq!(
        read_all(&s, &d, Some(RangeSpec::FromTo(10, 20))).await,
        &big[10..=20]
    );
    wait_cached(&s, &d).await;
    assert_eq!(
        read_all(&s, &d, Some(RangeSpec::Suffix(4))).await,
        &big[big.len() - 4..]
    );
    assert!(s.delete(&d).await.unwrap());
    assert!(!s.is_cached(&d));
    assert!(cache_files(dir.path()).0.is_empty());
    assert!(matches!(
        s.read(&d, None).await,
        Err(StorageError::BlobNotFound(_))
    ));
    assert_eq!(s.stat(&d).await.unwrap(), None);
}

/// `GET` of an absolute `http://` URL with a plain HTTP/1.1 request; (status, body).
fn http_get(url: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..end]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    (status, out[end + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_reads_redirect_to_presigned_urls_when_configured() {
    let server = S3Server::start();
    let plain = server.store("no-redirect", "").await;
    let data = pattern(300_000, 7);
    let d = push(&plain, &data).await;
    assert_eq!(plain.redirect(&d).await.unwrap(), None, "off by default");

    let s = server
        .store_with("redirect", "reg", |c| c.redirect_secs = Some(60))
        .await;
    let d = push(&s, &data).await;
    let url = s
        .redirect(&d)
        .await
        .unwrap()
        .expect("a presigned URL when redirect_secs is set");
    assert!(url.starts_with(&server.endpoint), "{url}");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let (status, body) = http_get(&url);
    assert_eq!(status, 200, "GET of the presigned URL");
    assert_eq!(body, data, "the presigned URL serves the blob's bytes");
    // The signature covers the key: another blob's key under the same signature fails.
    let tampered = url.replace(&d.hex()[..8], "00000000");
    assert_ne!(http_get(&tampered).0, 200, "a tampered URL is refused");
}

/// Session locks in memory, shared by the stores of one test (as Redis is by nodes).
#[derive(Default)]
struct MemLocks {
    held: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl MemLocks {
    fn as_node(self: &Arc<Self>, owner: &str) -> Arc<NodeLocks> {
        Arc::new(NodeLocks {
            all: self.clone(),
            owner: owner.to_owned(),
        })
    }
}

struct NodeLocks {
    all: Arc<MemLocks>,
    owner: String,
}

#[async_trait::async_trait]
impl pier_storage::s3::SessionLocks for NodeLocks {
    async fn try_lock(&self, name: &str, _ttl: Duration) -> Result<bool, String> {
        let mut held = self.all.held.lock().unwrap();
        match held.get(name) {
            Some(o) if *o != self.owner => Ok(false),
            _ => {
                held.insert(name.to_owned(), self.owner.clone());
                Ok(true)
            }
        }
    }
    async fn renew(&self, name: &str, _ttl: Duration) -> Result<bool, String> {
        Ok(self.all.held.lock().unwrap().get(name) == Some(&self.owner))
    }
    async fn unlock(&self, name: &str) -> Result<(), String> {
        let mut held = self.all.held.lock().unwrap();
        if held.get(name) == Some(&self.owner) {
            held.remove(name);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_another_node_is_writing_is_waited_for() {
    let server = S3Server::start();
    let locks = Arc::new(MemLocks::default());
    let wait = Duration::from_millis(300);
    let a = server
        .store("locked", "")
        .await
        .with_session_locks(locks.as_node("a"), wait);
    let b = server
        .reopen("locked", "")
        .await
        .with_session_locks(locks.as_node("b"), wait);
    let r = repo("locks/test");
    let st = a.create(&r).await.unwrap();
    let name = format!("upload:{r}:{}", st.id);

    // Node "other" holds the session: b waits, then gives up, and nothing was written.
    locks
        .held
        .lock()
        .unwrap()
        .insert(name.clone(), "other".into());
    let e = b
        .append(&r, &st.id, Some(0), body(vec![pattern(1000, 1)]))
        .await
        .err()
        .expect("a session locked elsewhere is refused after the wait");
    assert!(e.to_string().contains("lock upload session"), "{e}");
    assert_eq!(a.status(&r, &st.id).await.unwrap().offset, 0);

    // Released while b waits: b goes on.
    let l = locks.clone();
    let n = name.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        l.held.lock().unwrap().remove(&n);
    });
    let done = b
        .append(&r, &st.id, Some(0), body(vec![pattern(1000, 1)]))
        .await
        .unwrap();
    assert_eq!(done.offset, 1000);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !locks.held.lock().unwrap().contains_key(&name),
        "the lock is released after the append"
    );

    // The same chunk sent to both nodes at once (a client retrying on another node): one
    // append wins, the other sees the session moved on, and the content is right.
    let chunk = pattern(MIN_PART_SIZE + 3, 2);
    let (ra, rb) = tokio::join!(
        a.append(&r, &st.id, Some(1000), body(vec![chunk.clone()])),
        b.append(&r, &st.id, Some(1000), body(vec![chunk.clone()])),
    );
    let ok = [ra.is_ok(), rb.is_ok()];
    assert_eq!(
        ok.iter().filter(|x| **x).count(),
        1,
        "exactly one append wins: {ok:?}"
    );
    let loser = if ra.is_ok() { rb } else { ra };
    assert!(
        matches!(loser, Err(StorageError::OffsetMismatch { expected, got: 1000 }) if expected == 1000 + chunk.len() as u64),
        "the other sees the session moved on"
    );
    let mut all = pattern(1000, 1);
    all.extend_from_slice(&chunk);
    let d = Digest::of(Algorithm::Sha256, &all);
    assert_eq!(b.commit(&r, &st.id, &d).await.unwrap(), all.len() as u64);
    assert_eq!(read_all(&a, &d, None).await, all);
}

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
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
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
        c
    }

    /// A store on a new bucket; parts of the minimum size, so multipart paths run on
    /// small data.
    async fn store(&self, bucket: &str, prefix: &str) -> S3Store {
        let mut config = self.config(bucket, prefix);
        config.part_size = MIN_PART_SIZE;
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

//! The conformance suite every storage backend must pass. A backend's tests call
//! [`run_all`] with a fresh, empty store.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use pier_oci::{Algorithm, Digest, RepoName, Tag};

use crate::{
    BlobBody, BlobRead, BlobStore, ByteStream, IngestStore, ManifestStore, RangeSpec, RepoStore,
    StorageError, UploadId, UploadStore,
};

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

fn body(chunks: &[&[u8]]) -> ByteStream {
    let items: Vec<std::io::Result<Bytes>> = chunks
        .iter()
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures_util::stream::iter(items))
}

async fn read_all<S: BlobStore + ?Sized>(s: &S, d: &Digest, range: Option<RangeSpec>) -> Vec<u8> {
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

/// Runs every check against `store`.
pub async fn run_all<S>(store: Arc<S>)
where
    S: BlobStore + RepoStore + ManifestStore + UploadStore + IngestStore,
{
    ingest(&*store).await;
    blobs(&*store).await;
    uploads(&*store).await;
    large_upload_streams(&*store).await;
    manifests_and_tags(&*store).await;
    concurrent_commits(store.clone()).await;
}

async fn ingest<S: BlobStore + RepoStore + IngestStore>(s: &S) {
    let r = repo("suite/ingest");
    let data = b"mirrored bytes".to_vec();
    let d = Digest::of(Algorithm::Sha256, &data);
    let mut ing = s.begin_ingest(&r, &d).await.unwrap();
    let reader = ing.reader();
    ing.write(Bytes::copy_from_slice(&data[..8])).await.unwrap();
    assert_eq!(ing.written(), 8);
    assert_eq!(&reader.read_at(2, 4).await.unwrap()[..], &data[2..6]);
    assert_eq!(s.stat(&d).await.unwrap(), None, "visible before commit");
    ing.write(Bytes::copy_from_slice(&data[8..])).await.unwrap();
    assert_eq!(ing.commit().await.unwrap(), data.len() as u64);
    assert!(s.blob_linked(&r, &d).await.unwrap());
    assert_eq!(read_all(s, &d, None).await, data);
    // the reader still works after commit
    assert_eq!(&reader.read_at(0, data.len()).await.unwrap()[..], &data[..]);

    // a mismatch keeps nothing
    let wrong = Digest::of(Algorithm::Sha256, b"something else");
    let mut ing = s.begin_ingest(&r, &wrong).await.unwrap();
    ing.write(Bytes::from_static(b"not it")).await.unwrap();
    assert!(matches!(
        ing.commit().await,
        Err(StorageError::DigestMismatch { .. })
    ));
    assert_eq!(s.stat(&wrong).await.unwrap(), None);
    assert!(!s.blob_linked(&r, &wrong).await.unwrap());

    // abort keeps nothing
    let other = Digest::of(Algorithm::Sha256, b"abandoned");
    let mut ing = s.begin_ingest(&r, &other).await.unwrap();
    ing.write(Bytes::from_static(b"aband")).await.unwrap();
    ing.abort().await;
    assert_eq!(s.stat(&other).await.unwrap(), None);
}

async fn blobs<S: BlobStore + RepoStore>(s: &S) {
    let data = Bytes::from_static(b"hello blob");
    let d = Digest::of(Algorithm::Sha256, &data);
    assert_eq!(s.stat(&d).await.unwrap(), None);
    let wrong = Digest::of(Algorithm::Sha256, b"other");
    assert!(matches!(
        s.put(&wrong, data.clone()).await,
        Err(StorageError::DigestMismatch { .. })
    ));
    assert_eq!(
        s.stat(&wrong).await.unwrap(),
        None,
        "mismatched put left a blob"
    );
    s.put(&d, data.clone()).await.unwrap();
    s.put(&d, data.clone()).await.unwrap();
    assert_eq!(s.stat(&d).await.unwrap(), Some(10));
    assert_eq!(read_all(s, &d, None).await, b"hello blob");
    assert_eq!(read_all(s, &d, Some(RangeSpec::FromTo(1, 3))).await, b"ell");
    assert_eq!(read_all(s, &d, Some(RangeSpec::Suffix(4))).await, b"blob");
    assert!(matches!(
        s.read(&d, Some(RangeSpec::From(10))).await,
        Err(StorageError::RangeNotSatisfiable { size: 10 })
    ));
    assert!(matches!(
        s.read(&wrong, None).await,
        Err(StorageError::BlobNotFound(_))
    ));
    let r = repo("suite/blobs");
    assert!(!s.blob_linked(&r, &d).await.unwrap());
    s.link_blob(&r, &d).await.unwrap();
    assert!(s.blob_linked(&r, &d).await.unwrap());
    assert_eq!(s.linked_blobs(&r).await.unwrap(), vec![d.clone()]);
    assert!(s.repositories_with_blobs().await.unwrap().contains(&r));
    assert!(
        !s.repositories().await.unwrap().contains(&r),
        "blobs alone make no catalog entry"
    );
    assert!(s.unlink_blob(&r, &d).await.unwrap());
    assert!(!s.unlink_blob(&r, &d).await.unwrap());
    assert!(s.linked_blobs(&r).await.unwrap().is_empty());
    assert!(
        s.list()
            .await
            .unwrap()
            .iter()
            .any(|e| e.digest == d && e.size == 10)
    );
    assert!(s.delete(&d).await.unwrap());
    assert!(!s.delete(&d).await.unwrap());
    assert_eq!(s.stat(&d).await.unwrap(), None);
}

async fn uploads<S: BlobStore + RepoStore + UploadStore>(s: &S) {
    let r = repo("suite/uploads");
    let st = s.create(&r).await.unwrap();
    assert_eq!(st.offset, 0);
    let st2 = s
        .append(&r, &st.id, Some(0), body(&[b"abc", b"def"]))
        .await
        .unwrap();
    assert_eq!(st2.offset, 6);
    assert!(matches!(
        s.append(&r, &st.id, Some(3), body(&[b"xxx"])).await,
        Err(StorageError::OffsetMismatch {
            expected: 6,
            got: 3
        })
    ));
    assert_eq!(s.status(&r, &st.id).await.unwrap().offset, 6);
    s.append(&r, &st.id, None, body(&[b"ghi"])).await.unwrap();
    let d = Digest::of(Algorithm::Sha256, b"abcdefghi");
    // another repository cannot see the session
    assert!(matches!(
        s.status(&repo("suite/other"), &st.id).await,
        Err(StorageError::UploadNotFound(_))
    ));
    assert_eq!(s.commit(&r, &st.id, &d).await.unwrap(), 9);
    assert!(s.blob_linked(&r, &d).await.unwrap());
    assert_eq!(read_all(s, &d, None).await, b"abcdefghi");
    assert!(matches!(
        s.status(&r, &st.id).await,
        Err(StorageError::UploadNotFound(_))
    ));

    // a digest mismatch discards the session and stores nothing
    let st = s.create(&r).await.unwrap();
    s.append(&r, &st.id, None, body(&[b"payload"]))
        .await
        .unwrap();
    let wrong = Digest::of(Algorithm::Sha256, b"not the payload");
    assert!(matches!(
        s.commit(&r, &st.id, &wrong).await,
        Err(StorageError::DigestMismatch { .. })
    ));
    assert_eq!(s.stat(&wrong).await.unwrap(), None);
    assert_eq!(
        s.stat(&Digest::of(Algorithm::Sha256, b"payload"))
            .await
            .unwrap(),
        None
    );
    assert!(s.status(&r, &st.id).await.is_err());

    // sha512 commits rehash
    let st = s.create(&r).await.unwrap();
    s.append(&r, &st.id, None, body(&[b"five", b"twelve"]))
        .await
        .unwrap();
    let d512 = Digest::of(Algorithm::Sha512, b"fivetwelve");
    assert_eq!(s.commit(&r, &st.id, &d512).await.unwrap(), 10);
    assert_eq!(read_all(s, &d512, None).await, b"fivetwelve");

    // abort
    let st = s.create(&r).await.unwrap();
    s.abort(&r, &st.id).await.unwrap();
    assert!(matches!(
        s.abort(&r, &st.id).await,
        Err(StorageError::UploadNotFound(_))
    ));
    let unknown = UploadId::new_random();
    assert!(matches!(
        s.append(&r, &unknown, None, body(&[b"x"])).await,
        Err(StorageError::UploadNotFound(_))
    ));

    // a failing body keeps what arrived and reports the failure
    let st = s.create(&r).await.unwrap();
    let failing: ByteStream = Box::pin(futures_util::stream::iter(vec![
        Ok(Bytes::from_static(b"part")),
        Err(std::io::Error::other("client went away")),
    ]));
    assert!(matches!(
        s.append(&r, &st.id, None, failing).await,
        Err(StorageError::Body(_))
    ));
    assert_eq!(s.status(&r, &st.id).await.unwrap().offset, 4);

    // expiry leaves fresh sessions alone and removes idle ones
    assert_eq!(s.expire(Duration::from_secs(3600)).await.unwrap(), 0);
    assert!(s.status(&r, &st.id).await.is_ok());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(s.expire(Duration::from_millis(1)).await.unwrap() >= 1);
    assert!(s.status(&r, &st.id).await.is_err());
}

async fn large_upload_streams<S: BlobStore + RepoStore + UploadStore>(s: &S) {
    let r = repo("suite/large");
    let chunk: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let st = s.create(&r).await.unwrap();
    let mut h = Algorithm::Sha256.hasher();
    for _ in 0..5 {
        h.update(&chunk);
    }
    let d = h.finish();
    let chunks: Vec<&[u8]> = vec![&chunk; 5];
    s.append(&r, &st.id, Some(0), body(&chunks)).await.unwrap();
    assert_eq!(s.commit(&r, &st.id, &d).await.unwrap(), 5 * 1024 * 1024);
    let all = read_all(s, &d, None).await;
    assert_eq!(all.len(), 5 * 1024 * 1024);
    assert_eq!(Digest::of(Algorithm::Sha256, &all), d);
    let part = read_all(s, &d, Some(RangeSpec::From(1024 * 1024 + 7))).await;
    assert_eq!(part.len(), 4 * 1024 * 1024 - 7);
    assert_eq!(&part[..10], &all[1024 * 1024 + 7..1024 * 1024 + 17]);
}

async fn manifests_and_tags<S: BlobStore + RepoStore + ManifestStore>(s: &S) {
    let r = repo("suite/manifests");
    assert_eq!(s.tags(&r).await.unwrap(), None);
    let m1 = Digest::of(Algorithm::Sha256, b"m1");
    let m2 = Digest::of(Algorithm::Sha256, b"m2");
    s.put(&m1, Bytes::from_static(b"m1")).await.unwrap();
    s.link_manifest(&r, &m1).await.unwrap();
    s.link_manifest(&r, &m2).await.unwrap();
    assert!(s.manifest_linked(&r, &m1).await.unwrap());
    let mut both = vec![m1.clone(), m2.clone()];
    both.sort();
    assert_eq!(s.manifests(&r).await.unwrap(), both);
    let (a, b): (Tag, Tag) = ("b".parse().unwrap(), "a".parse().unwrap());
    s.set_tag(&r, &a, &m1).await.unwrap();
    s.set_tag(&r, &b, &m1).await.unwrap();
    s.set_tag(&r, &a, &m2).await.unwrap();
    assert_eq!(s.resolve_tag(&r, &a).await.unwrap(), Some(m2.clone()));
    assert_eq!(s.tags(&r).await.unwrap(), Some(vec![b.clone(), a.clone()]));
    // A page at a time: "a", "b", "c"; a deleted tag is skipped.
    let c: Tag = "c".parse().unwrap();
    s.set_tag(&r, &c, &m1).await.unwrap();
    let page = |last: Option<&'static str>, n| s.tags_after(&r, last, n);
    assert_eq!(
        page(None, 2).await.unwrap(),
        Some((vec![b.clone(), a.clone()], true))
    );
    assert_eq!(
        page(Some("a"), 1).await.unwrap(),
        Some((vec![a.clone()], true))
    );
    assert_eq!(
        page(Some("b"), 2).await.unwrap(),
        Some((vec![c.clone()], false))
    );
    assert!(s.delete_tag(&r, &c).await.unwrap());
    assert_eq!(
        page(Some("a"), 1).await.unwrap(),
        Some((vec![a.clone()], false))
    );
    assert_eq!(page(Some("b"), 5).await.unwrap(), Some((vec![], false)));
    assert_eq!(
        s.tags_after(&repo("suite/no-such"), None, 5).await.unwrap(),
        None
    );
    let set = s
        .tag_modified(&r, &a)
        .await
        .unwrap()
        .expect("a set tag has a time");
    let age = std::time::SystemTime::now()
        .duration_since(set)
        .unwrap_or_default();
    assert!(age < std::time::Duration::from_secs(120), "set {age:?} ago");
    assert!(s.delete_tag(&r, &a).await.unwrap());
    assert!(!s.delete_tag(&r, &a).await.unwrap());
    assert_eq!(s.resolve_tag(&r, &a).await.unwrap(), None);
    assert_eq!(s.tag_modified(&r, &a).await.unwrap(), None);
    assert!(s.repositories().await.unwrap().contains(&r));
    assert!(s.unlink_manifest(&r, &m2).await.unwrap());
    assert!(!s.manifest_linked(&r, &m2).await.unwrap());

    s.add_referrer(&r, &m1, &m2).await.unwrap();
    assert_eq!(s.referrers(&r, &m1).await.unwrap(), vec![m2.clone()]);
    assert!(s.referrers(&r, &m2).await.unwrap().is_empty());
    s.remove_referrer(&r, &m1, &m2).await.unwrap();
    assert!(s.referrers(&r, &m1).await.unwrap().is_empty());

    let nested = repo("suite/manifests/nested");
    s.link_manifest(&nested, &m1).await.unwrap();
    let repos = s.repositories().await.unwrap();
    assert!(repos.contains(&nested) && repos.contains(&r), "{repos:?}");
    assert!(
        repos.windows(2).all(|w| w[0] < w[1]),
        "not sorted: {repos:?}"
    );
}

async fn concurrent_commits<S>(s: Arc<S>)
where
    S: BlobStore + RepoStore + UploadStore,
{
    let r = repo("suite/race");
    let data = vec![7u8; 300_000];
    let d = Digest::of(Algorithm::Sha256, &data);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (s, r, data, d) = (s.clone(), r.clone(), data.clone(), d.clone());
        tasks.push(tokio::spawn(async move {
            let st = s.create(&r).await.unwrap();
            s.append(&r, &st.id, None, body(&[&data])).await.unwrap();
            s.commit(&r, &st.id, &d).await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 300_000);
    }
    assert_eq!(read_all(&*s, &d, None).await, data);
}

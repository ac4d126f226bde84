//! `pier warm`: pulls images through a running Pier so its mirror cache holds them before
//! the first client asks (preheat). It speaks the registry API like any client, so it
//! works against any Pier (or any registry) it can reach.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures_util::StreamExt;
use pier_oci::{Manifest, Reference, RepoName};
use pier_upstream::{Upstream, UpstreamClient, UpstreamConfig};

use crate::AdminError;

/// Splits `NAME[:TAG]` or `NAME@DIGEST`.
pub fn parse_image(image: &str) -> Result<(RepoName, Reference), AdminError> {
    let bad = |e: String| AdminError::Failed(format!("image {image:?}: {e}"));
    let (name, reference) = match image.split_once('@') {
        Some((n, d)) => (n, d),
        None => match image.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, t),
            _ => (image, "latest"),
        },
    };
    let name = name
        .parse()
        .map_err(|e: pier_oci::NameError| bad(e.to_string()))?;
    let reference = reference
        .parse()
        .map_err(|e: pier_oci::NameError| bad(e.to_string()))?;
    Ok((name, reference))
}

/// Images pulled at once.
const IMAGES_AT_ONCE: usize = 2;
/// Blobs of one image pulled at once. The upstream's `max_concurrent_fetches` bounds what
/// reaches the upstream; this only keeps the warm-up from being one blob at a time.
const BLOBS_AT_ONCE: usize = 4;

struct Warmer<'p> {
    progress: std::sync::Mutex<&'p mut (dyn FnMut(String) + Send)>,
    client: UpstreamClient,
    platforms: Vec<String>,
    bytes: AtomicU64,
    blobs: AtomicUsize,
}

impl Warmer<'_> {
    /// Reads a blob through the registry to its end: its digest and length.
    async fn blob(
        &self,
        repo: &RepoName,
        digest: pier_oci::Digest,
    ) -> Result<(pier_oci::Digest, u64), AdminError> {
        let mut body = self.client.get_blob(repo, &digest, 0).await?.stream;
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            n += chunk.map_err(AdminError::Io)?.len() as u64;
        }
        Ok((digest, n))
    }

    fn report(&self, line: String) {
        (self.progress.lock().expect("progress poisoned"))(line);
    }

    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        depth: usize,
    ) -> Result<(), AdminError> {
        let indent = "  ".repeat(depth);
        let fetched = self.client.get_manifest(repo, reference).await?;
        let manifest = Manifest::parse(&fetched.bytes, Some(&fetched.media_type))
            .map_err(|e| AdminError::Failed(format!("{repo}:{reference}: {e}")))?;
        self.report(format!(
            "{indent}{repo}:{reference}: {}",
            fetched.media_type
        ));
        if manifest.kind.is_index() {
            let children: Vec<Reference> = manifest
                .manifests
                .iter()
                .filter(|c| c.is_for(&self.platforms))
                .map(|c| Reference::Digest(c.digest.clone()))
                .collect();
            for r in children {
                Box::pin(self.manifest(repo, &r, depth + 1)).await?;
            }
            return Ok(());
        }
        // The futures are built first (a closure returning them would not be `Send` for
        // every lifetime, which the admin listener's task needs).
        let fetches: Vec<_> = manifest
            .blob_references()
            .map(|blob| self.blob(repo, blob.digest.clone()))
            .collect();
        let mut fetches = futures_util::stream::iter(fetches).buffer_unordered(BLOBS_AT_ONCE);
        while let Some(done) = fetches.next().await {
            let (digest, n) = done?;
            self.report(format!("{indent}  {digest}: {n} bytes"));
            self.bytes.fetch_add(n, Ordering::Relaxed);
            self.blobs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// What a warm-up pulled.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pulled {
    pub blobs: usize,
    pub bytes: u64,
}

/// Pulls `images` through the registry at `server`, reporting each manifest and blob.
pub async fn run(
    server: String,
    platforms: Vec<String>,
    images: Vec<String>,
    credentials: Option<pier_upstream::Credentials>,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<(), AdminError> {
    pull(server, platforms, images, credentials, progress)
        .await
        .map(drop)
}

/// [`run`], answering what it pulled.
pub async fn pull(
    server: String,
    platforms: Vec<String>,
    images: Vec<String>,
    credentials: Option<pier_upstream::Credentials>,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<Pulled, AdminError> {
    let client = UpstreamClient::new(UpstreamConfig {
        name: "pier".into(),
        url: server.clone(),
        credentials,
        timeout: std::time::Duration::from_secs(60),
        retries: 2,
        allow_private: false,
    })?;
    let w = Warmer {
        progress: std::sync::Mutex::new(progress),
        client,
        platforms,
        bytes: AtomicU64::new(0),
        blobs: AtomicUsize::new(0),
    };
    let parsed = images
        .iter()
        .map(|i| parse_image(i))
        .collect::<Result<Vec<_>, _>>()?;
    let pulls: Vec<_> = parsed
        .iter()
        .map(|(repo, reference)| w.manifest(repo, reference, 0))
        .collect();
    let mut pulls = futures_util::stream::iter(pulls).buffer_unordered(IMAGES_AT_ONCE);
    while let Some(done) = pulls.next().await {
        done?;
    }
    drop(pulls);
    let pulled = Pulled {
        blobs: w.blobs.load(Ordering::Relaxed),
        bytes: w.bytes.load(Ordering::Relaxed),
    };
    w.report(format!(
        "warm: {} images, {} blobs, {} bytes pulled through {server}",
        images.len(),
        pulled.blobs,
        pulled.bytes
    ));
    Ok(pulled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pier_oci::Descriptor;

    #[test]
    fn images() {
        let (n, r) = parse_image("library/alpine").unwrap();
        assert_eq!(
            (n.as_str(), r.to_string().as_str()),
            ("library/alpine", "latest")
        );
        let (_, r) = parse_image("a/b:3.19").unwrap();
        assert_eq!(r.to_string(), "3.19");
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let (_, r) = parse_image(&format!("a/b@{d}")).unwrap();
        assert!(matches!(r, Reference::Digest(_)));
        assert!(parse_image("A/b").is_err());
    }

    #[test]
    fn platforms() {
        let d: Descriptor = serde_json::from_str(
            r#"{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}}"#,
        )
        .unwrap();
        assert!(d.is_for(&[]));
        assert!(d.is_for(&["linux/arm64".into()]));
        assert!(d.is_for(&["linux/arm64/v8".into()]));
        assert!(!d.is_for(&["linux/amd64".into()]));
    }
}

//! `pier warm`: pulls images through a running Pier so its mirror cache holds them before
//! the first client asks (preheat). It speaks the registry API like any client, so it
//! works against any Pier (or any registry) it can reach.

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

struct Warmer<'p> {
    progress: &'p mut (dyn FnMut(String) + Send),
    client: UpstreamClient,
    platforms: Vec<String>,
    bytes: u64,
    blobs: usize,
}

impl Warmer<'_> {
    async fn manifest(
        &mut self,
        repo: &RepoName,
        reference: &Reference,
        depth: usize,
    ) -> Result<(), AdminError> {
        let indent = "  ".repeat(depth);
        let fetched = self.client.get_manifest(repo, reference).await?;
        let manifest = Manifest::parse(&fetched.bytes, Some(&fetched.media_type))
            .map_err(|e| AdminError::Failed(format!("{repo}:{reference}: {e}")))?;
        (self.progress)(format!(
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
        for blob in manifest.blob_references() {
            let mut body = self.client.get_blob(repo, &blob.digest, 0).await?.stream;
            let mut n = 0u64;
            while let Some(chunk) = body.next().await {
                n += chunk.map_err(AdminError::Io)?.len() as u64;
            }
            (self.progress)(format!("{indent}  {}: {n} bytes", blob.digest));
            self.bytes += n;
            self.blobs += 1;
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
    let mut w = Warmer {
        progress,
        client,
        platforms,
        bytes: 0,
        blobs: 0,
    };
    for image in &images {
        let (repo, reference) = parse_image(image)?;
        w.manifest(&repo, &reference, 0).await?;
    }
    let summary = format!(
        "warm: {} images, {} blobs, {} bytes pulled through {server}",
        images.len(),
        w.blobs,
        w.bytes
    );
    (w.progress)(summary);
    Ok(Pulled {
        blobs: w.blobs,
        bytes: w.bytes,
    })
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

//! Every path Pier's filesystem backend uses, in one place. The layout is CNCF
//! distribution's (`registry/storage/paths.go`), so distribution and Harbor can serve a
//! directory Pier wrote and the reverse. Under `<root>/docker/registry/v2`:
//!
//! ```text
//! blobs/<alg>/<hex[0..2]>/<hex>/data                       blob bytes (manifests too)
//! repositories/<name>/_layers/<alg>/<hex>/link              blob linked into a repository
//! repositories/<name>/_manifests/revisions/<alg>/<hex>/link manifest linked into a repository
//! repositories/<name>/_manifests/tags/<tag>/current/link    tag -> manifest digest
//! repositories/<name>/_manifests/tags/<tag>/index/<alg>/<hex>/link   every digest the tag held
//! repositories/<name>/_uploads/<uuid>/data                  upload session bytes
//! repositories/<name>/_uploads/<uuid>/startedat             RFC 3339 start time
//! repositories/<name>/_referrers/<alg>/<hex>/<alg>/<hex>/link   Pier extension: subject -> referrer
//! ```
//! A link file holds the digest string (`sha256:<hex>`), no newline. Files are written to
//! a sibling `*.tmp-<uuid>` name, fsynced and renamed, so a reader only ever sees whole
//! files. Every component comes from a validated newtype (`RepoName`, `Tag`, `Digest`,
//! `UploadId`), so no path can leave the root.

use std::path::{Path, PathBuf};

use pier_oci::{Digest, RepoName, Tag};

use crate::UploadId;

/// The directory names of a repository that are not part of its name.
pub const REPO_META_DIRS: [&str; 4] = ["_layers", "_manifests", "_uploads", "_referrers"];

#[derive(Debug, Clone)]
pub struct Layout {
    base: PathBuf,
}

impl Layout {
    /// `root` is the directory given with `--root`.
    pub fn new(root: &Path) -> Layout {
        Layout {
            base: root.join("docker/registry/v2"),
        }
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    pub fn blobs_root(&self) -> PathBuf {
        self.base.join("blobs")
    }

    pub fn blob_dir(&self, d: &Digest) -> PathBuf {
        self.blobs_root()
            .join(d.algorithm().as_str())
            .join(&d.hex()[..2])
            .join(d.hex())
    }

    pub fn blob_data(&self, d: &Digest) -> PathBuf {
        self.blob_dir(d).join("data")
    }

    pub fn repos_root(&self) -> PathBuf {
        self.base.join("repositories")
    }

    pub fn repo(&self, name: &RepoName) -> PathBuf {
        self.repos_root().join(name.as_str())
    }

    fn digest_link(dir: PathBuf, d: &Digest) -> PathBuf {
        dir.join(d.algorithm().as_str()).join(d.hex()).join("link")
    }

    pub fn layer_link(&self, name: &RepoName, d: &Digest) -> PathBuf {
        Self::digest_link(self.repo(name).join("_layers"), d)
    }

    pub fn revisions_dir(&self, name: &RepoName) -> PathBuf {
        self.repo(name).join("_manifests/revisions")
    }

    pub fn revision_link(&self, name: &RepoName, d: &Digest) -> PathBuf {
        Self::digest_link(self.revisions_dir(name), d)
    }

    pub fn tags_dir(&self, name: &RepoName) -> PathBuf {
        self.repo(name).join("_manifests/tags")
    }

    pub fn tag_dir(&self, name: &RepoName, tag: &Tag) -> PathBuf {
        self.tags_dir(name).join(tag.as_str())
    }

    pub fn tag_current_link(&self, name: &RepoName, tag: &Tag) -> PathBuf {
        self.tag_dir(name, tag).join("current/link")
    }

    pub fn tag_index_link(&self, name: &RepoName, tag: &Tag, d: &Digest) -> PathBuf {
        Self::digest_link(self.tag_dir(name, tag).join("index"), d)
    }

    pub fn referrers_dir(&self, name: &RepoName, subject: &Digest) -> PathBuf {
        self.repo(name)
            .join("_referrers")
            .join(subject.algorithm().as_str())
            .join(subject.hex())
    }

    pub fn referrer_link(&self, name: &RepoName, subject: &Digest, d: &Digest) -> PathBuf {
        Self::digest_link(self.referrers_dir(name, subject), d)
    }

    pub fn uploads_dir(&self, name: &RepoName) -> PathBuf {
        self.repo(name).join("_uploads")
    }

    pub fn upload_dir(&self, name: &RepoName, id: &UploadId) -> PathBuf {
        self.uploads_dir(name).join(id.as_str())
    }

    pub fn upload_data(&self, name: &RepoName, id: &UploadId) -> PathBuf {
        self.upload_dir(name, id).join("data")
    }

    pub fn upload_started_at(&self, name: &RepoName, id: &UploadId) -> PathBuf {
        self.upload_dir(name, id).join("startedat")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_distribution() {
        let l = Layout::new(Path::new("/r"));
        let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap();
        let n: RepoName = "library/alpine".parse().unwrap();
        let t: Tag = "latest".parse().unwrap();
        assert_eq!(
            l.blob_data(&d),
            Path::new(
                "/r/docker/registry/v2/blobs/sha256/e3/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/data"
            )
        );
        assert_eq!(
            l.layer_link(&n, &d),
            Path::new(
                "/r/docker/registry/v2/repositories/library/alpine/_layers/sha256/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/link"
            )
        );
        assert_eq!(
            l.tag_current_link(&n, &t),
            Path::new(
                "/r/docker/registry/v2/repositories/library/alpine/_manifests/tags/latest/current/link"
            )
        );
        assert_eq!(
            l.revision_link(&n, &d),
            Path::new(
                "/r/docker/registry/v2/repositories/library/alpine/_manifests/revisions/sha256/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/link"
            )
        );
    }
}

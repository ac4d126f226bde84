//! The OCI route parser. Repository names contain slashes, so a path is read from the
//! right: the last segments say which endpoint it is, everything before is the name.

use pier_oci::{Digest, DigestError, NameError, Reference, RepoName};
use pier_storage::UploadId;

/// What a request addresses, with validated parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepoName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, Reference),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/`
    UploadStart(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(RepoName, UploadId),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, Digest),
}

impl Route {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags(_) => "tags",
            Route::Manifest(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::UploadStart(_) | Route::Upload(..) => "upload",
            Route::Referrers(..) => "referrers",
        }
    }

    pub fn repository(&self) -> Option<&RepoName> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags(n)
            | Route::Manifest(n, _)
            | Route::Blob(n, _)
            | Route::UploadStart(n)
            | Route::Upload(n, _)
            | Route::Referrers(n, _) => Some(n),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no such endpoint")]
    NotFound,
    #[error(transparent)]
    Name(NameError),
    #[error(transparent)]
    Reference(NameError),
    #[error(transparent)]
    Digest(DigestError),
    #[error("upload session {0:?} is not known")]
    UploadUnknown(String),
}

fn name(segments: &[&str]) -> Result<RepoName, RouteError> {
    let joined = segments.join("/");
    joined.parse().map_err(RouteError::Name)
}

fn digest(s: &str) -> Result<Digest, RouteError> {
    s.parse().map_err(RouteError::Digest)
}

/// Parses a raw (not percent-decoded) request path.
pub fn parse(path: &str) -> Result<Route, RouteError> {
    if path == "/v2/" || path == "/v2" {
        return Ok(Route::Base);
    }
    let rest = path.strip_prefix("/v2/").ok_or(RouteError::NotFound)?;
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
        return Ok(Route::Tags(name(&segs[..n - 2])?));
    }
    if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
        let repo = name(&segs[..n - 3])?;
        let id = segs[n - 1];
        if id.is_empty() {
            return Ok(Route::UploadStart(repo));
        }
        let id = UploadId::parse(id).ok_or_else(|| RouteError::UploadUnknown(id.to_owned()))?;
        return Ok(Route::Upload(repo, id));
    }
    if n >= 2 {
        let last = segs[n - 1];
        let prefix = &segs[..n - 2];
        match segs[n - 2] {
            "manifests" if !last.is_empty() => {
                let repo = name(prefix)?;
                let reference = last.parse().map_err(|e| match e {
                    NameError::InvalidDigest(d) => RouteError::Digest(d),
                    other => RouteError::Reference(other),
                })?;
                return Ok(Route::Manifest(repo, reference));
            }
            "blobs" if !last.is_empty() => return Ok(Route::Blob(name(prefix)?, digest(last)?)),
            "referrers" if !last.is_empty() => {
                return Ok(Route::Referrers(name(prefix)?, digest(last)?));
            }
            _ => {}
        }
    }
    Err(RouteError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_every_route() {
        assert_eq!(parse("/v2/"), Ok(Route::Base));
        assert_eq!(parse("/v2/_catalog"), Ok(Route::Catalog));
        let n: RepoName = "a/b".parse().unwrap();
        assert_eq!(parse("/v2/a/b/tags/list"), Ok(Route::Tags(n.clone())));
        assert_eq!(
            parse("/v2/a/b/manifests/latest"),
            Ok(Route::Manifest(n.clone(), "latest".parse().unwrap()))
        );
        assert_eq!(
            parse(&format!("/v2/a/b/manifests/{D}")),
            Ok(Route::Manifest(n.clone(), D.parse().unwrap()))
        );
        assert_eq!(
            parse(&format!("/v2/a/b/blobs/{D}")),
            Ok(Route::Blob(n.clone(), D.parse().unwrap()))
        );
        assert_eq!(
            parse("/v2/a/b/blobs/uploads/"),
            Ok(Route::UploadStart(n.clone()))
        );
        assert!(matches!(
            parse("/v2/a/b/blobs/uploads/abc-123"),
            Ok(Route::Upload(_, _))
        ));
        assert_eq!(
            parse(&format!("/v2/a/b/referrers/{D}")),
            Ok(Route::Referrers(n, D.parse().unwrap()))
        );
        // names may contain endpoint words
        assert!(matches!(
            parse("/v2/blobs/uploads/tags/list"),
            Ok(Route::Tags(n)) if n.as_str() == "blobs/uploads"
        ));
        assert!(matches!(
            parse("/v2/manifests/manifests/x"),
            Ok(Route::Manifest(n, _)) if n.as_str() == "manifests"
        ));
    }

    #[test]
    fn rejects_tricks() {
        assert!(matches!(
            parse("/v2/../x/tags/list"),
            Err(RouteError::Name(_))
        ));
        assert!(matches!(
            parse("/v2/a%2Fb/tags/list"),
            Err(RouteError::Name(_))
        ));
        assert!(matches!(
            parse("/v2/a/%2e%2e/b/tags/list"),
            Err(RouteError::Name(_))
        ));
        assert!(matches!(parse("/v2/A/tags/list"), Err(RouteError::Name(_))));
        assert!(matches!(
            parse("/v2//a/tags/list"),
            Err(RouteError::Name(_))
        ));
        assert!(matches!(
            parse("/v2/a/blobs/sha256:zz"),
            Err(RouteError::Digest(_))
        ));
        assert!(matches!(
            parse("/v2/a/manifests/-bad"),
            Err(RouteError::Reference(_))
        ));
        assert!(parse("/v2/a/blobs/uploads/../x").is_err());
        assert!(matches!(
            parse("/v2/a/blobs/uploads/.."),
            Err(RouteError::UploadUnknown(_))
        ));
        assert_eq!(parse("/v3/"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/a"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/a/manifests/"), Err(RouteError::NotFound));
    }

    fn arb_name() -> impl Strategy<Value = String> {
        proptest::collection::vec("[a-z0-9]{1,4}((\\.|_|__|-{1,2})[a-z0-9]{1,4}){0,2}", 1..5)
            .prop_map(|c| c.join("/"))
    }

    proptest! {
        #[test]
        fn roundtrips(name in arb_name(), tag in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}", hex in "[a-f0-9]{64}") {
            let n: RepoName = name.parse().unwrap();
            let d: Digest = format!("sha256:{hex}").parse().unwrap();
            prop_assert_eq!(parse(&format!("/v2/{name}/tags/list")), Ok(Route::Tags(n.clone())));
            prop_assert_eq!(
                parse(&format!("/v2/{name}/manifests/{tag}")),
                Ok(Route::Manifest(n.clone(), Reference::Tag(tag.parse().unwrap())))
            );
            prop_assert_eq!(parse(&format!("/v2/{name}/blobs/{d}")), Ok(Route::Blob(n.clone(), d.clone())));
            prop_assert_eq!(parse(&format!("/v2/{name}/referrers/{d}")), Ok(Route::Referrers(n.clone(), d)));
            prop_assert_eq!(parse(&format!("/v2/{name}/blobs/uploads/")), Ok(Route::UploadStart(n)));
        }

        #[test]
        fn never_panics_and_never_escapes(path in "/v2/[a-zA-Z0-9/._%:-]{0,60}") {
            if let Ok(route) = parse(&path)
                && let Some(n) = route.repository()
            {
                prop_assert!(n.components().all(|c| c != ".." && c != "." && !c.is_empty()));
                prop_assert!(!n.as_str().contains('%'));
            }
        }
    }
}

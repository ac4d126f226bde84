//! Manifest parsing and validation: OCI image manifest and index, Docker schema 2
//! manifest and manifest list, and OCI 1.1 artifacts (`artifactType`, `subject`).
//! The bytes are never rewritten: parsing only extracts what the registry must check.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// Manifests larger than this are refused (the OCI spec's recommended limit).
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

pub mod media_types {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    pub const DOCKER_FOREIGN_LAYER: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    pub const OCI_NONDISTRIBUTABLE_PREFIX: &str =
        "application/vnd.oci.image.layer.nondistributable.";
    pub const OCTET_STREAM: &str = "application/octet-stream";
    pub const JSON: &str = "application/json";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManifestKind {
    OciManifest,
    OciIndex,
    DockerManifest,
    DockerManifestList,
}

impl ManifestKind {
    pub fn from_media_type(mt: &str) -> Option<ManifestKind> {
        match mt {
            media_types::OCI_MANIFEST => Some(ManifestKind::OciManifest),
            media_types::OCI_INDEX => Some(ManifestKind::OciIndex),
            media_types::DOCKER_MANIFEST => Some(ManifestKind::DockerManifest),
            media_types::DOCKER_MANIFEST_LIST => Some(ManifestKind::DockerManifestList),
            _ => None,
        }
    }

    pub fn media_type(self) -> &'static str {
        match self {
            ManifestKind::OciManifest => media_types::OCI_MANIFEST,
            ManifestKind::OciIndex => media_types::OCI_INDEX,
            ManifestKind::DockerManifest => media_types::DOCKER_MANIFEST,
            ManifestKind::DockerManifestList => media_types::DOCKER_MANIFEST_LIST,
        }
    }

    /// An index or manifest list: its children are manifests, not blobs.
    pub fn is_index(self) -> bool {
        matches!(
            self,
            ManifestKind::OciIndex | ManifestKind::DockerManifestList
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {0} bytes, over the {MAX_MANIFEST_SIZE} byte limit")]
    TooLarge(usize),
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest schemaVersion must be 2")]
    SchemaVersion,
    #[error("manifest media type {0:?} is not supported")]
    UnsupportedMediaType(String),
    #[error("Content-Type {header:?} does not match the manifest's mediaType {body:?}")]
    MediaTypeMismatch { header: String, body: String },
    #[error("manifest of type {0} is missing required field {1:?}")]
    MissingField(&'static str, &'static str),
    #[error(
        "manifest has both \"manifests\" and \"config\"/\"layers\": it could be read as an index or as an image manifest"
    )]
    Ambiguous,
    #[error("invalid descriptor in {field}: {reason}")]
    BadDescriptor { field: &'static str, reason: String },
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

impl Descriptor {
    /// Whether this index entry is one of `platforms` (`os/arch[/variant]`); every entry is
    /// when none is named, none without a `platform` otherwise.
    pub fn is_for(&self, platforms: &[String]) -> bool {
        if platforms.is_empty() {
            return true;
        }
        let Some(p) = &self.platform else {
            return false;
        };
        let field = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("");
        let (os, arch, variant) = (field("os"), field("architecture"), field("variant"));
        platforms.iter().any(
            |want| match want.split('/').collect::<Vec<_>>().as_slice() {
                [o, a] => *o == os && *a == arch,
                [o, a, v] => *o == os && *a == arch && *v == variant,
                _ => false,
            },
        )
    }

    /// A layer the registry is not expected to hold (foreign / non-distributable with URLs).
    pub fn is_foreign(&self) -> bool {
        self.media_type == media_types::DOCKER_FOREIGN_LAYER
            || self
                .media_type
                .starts_with(media_types::OCI_NONDISTRIBUTABLE_PREFIX)
    }
}

/// The parts of a manifest the registry checks and indexes.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub kind: ManifestKind,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<serde_json::Value>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<serde_json::Value>,
    layers: Option<Vec<serde_json::Value>>,
    manifests: Option<Vec<serde_json::Value>>,
    subject: Option<serde_json::Value>,
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    fs_layers: Option<serde_json::Value>,
}

fn descriptor(field: &'static str, v: serde_json::Value) -> Result<Descriptor, ManifestError> {
    serde_json::from_value(v).map_err(|e| ManifestError::BadDescriptor {
        field,
        reason: e.to_string(),
    })
}

/// Content-Type values that carry no manifest type information.
fn is_generic_content_type(ct: &str) -> bool {
    ct.is_empty()
        || ct == media_types::JSON
        || ct == media_types::OCTET_STREAM
        || ct.starts_with("text/plain")
}

impl Manifest {
    /// Parses and validates manifest bytes. `content_type` is the `Content-Type` the client
    /// sent (parameters stripped), if any.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_SIZE {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        let raw: Raw =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        let header = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim())
            .filter(|c| !is_generic_content_type(c));

        let kind_of = |mt: &str| {
            ManifestKind::from_media_type(mt)
                .ok_or_else(|| ManifestError::UnsupportedMediaType(mt.to_owned()))
        };
        let kind = match (header, raw.media_type.as_deref()) {
            (Some(h), Some(b)) if h != b => {
                return Err(ManifestError::MediaTypeMismatch {
                    header: h.to_owned(),
                    body: b.to_owned(),
                });
            }
            (Some(mt), _) | (None, Some(mt)) => kind_of(mt)?,
            (None, None) => {
                if raw.fs_layers.is_some() {
                    return Err(ManifestError::UnsupportedMediaType(
                        media_types::DOCKER_SCHEMA1.to_owned(),
                    ));
                } else if raw.manifests.is_some() {
                    ManifestKind::OciIndex
                } else if raw.config.is_some() {
                    ManifestKind::OciManifest
                } else {
                    return Err(ManifestError::MissingField("unknown", "mediaType"));
                }
            }
        };
        // A document that parses as an index and as an image manifest could be pulled as
        // something other than what was pushed (CVE-2021-41190).
        if raw.manifests.is_some() && (raw.config.is_some() || raw.layers.is_some()) {
            return Err(ManifestError::Ambiguous);
        }
        // Docker's formats always name themselves; without the field the type would only
        // live in the push's Content-Type, which is not stored.
        if raw.media_type.is_none()
            && matches!(
                kind,
                ManifestKind::DockerManifest | ManifestKind::DockerManifestList
            )
        {
            return Err(ManifestError::MissingField(kind.media_type(), "mediaType"));
        }
        if raw.schema_version.as_ref().and_then(|v| v.as_u64()) != Some(2) {
            return Err(ManifestError::SchemaVersion);
        }
        let name = kind.media_type();
        let mut m = Manifest {
            kind,
            config: None,
            layers: Vec::new(),
            manifests: Vec::new(),
            subject: raw.subject.map(|s| descriptor("subject", s)).transpose()?,
            artifact_type: raw.artifact_type,
            annotations: raw.annotations,
        };
        if kind.is_index() {
            let children = raw
                .manifests
                .ok_or(ManifestError::MissingField(name, "manifests"))?;
            m.manifests = children
                .into_iter()
                .map(|d| descriptor("manifests", d))
                .collect::<Result<_, _>>()?;
        } else {
            let config = raw
                .config
                .ok_or(ManifestError::MissingField(name, "config"))?;
            m.config = Some(descriptor("config", config)?);
            let layers = match (kind, raw.layers) {
                (_, Some(l)) => l,
                (ManifestKind::OciManifest, None) => Vec::new(),
                (_, None) => return Err(ManifestError::MissingField(name, "layers")),
            };
            m.layers = layers
                .into_iter()
                .map(|d| descriptor("layers", d))
                .collect::<Result<_, _>>()?;
        }
        Ok(m)
    }

    /// The artifact type a referrers listing reports for this manifest.
    pub fn effective_artifact_type(&self) -> Option<&str> {
        self.artifact_type
            .as_deref()
            .or_else(|| self.config.as_ref().map(|c| c.media_type.as_str()))
    }

    /// Every digest named anywhere in a JSON document: what garbage collection must keep
    /// for a manifest, whatever its type, even one this parser would refuse.
    pub fn referenced_digests(bytes: &[u8]) -> Result<Vec<Digest>, ManifestError> {
        fn walk(v: &serde_json::Value, out: &mut Vec<Digest>) {
            match v {
                serde_json::Value::Object(map) => {
                    for (k, v) in map {
                        if k == "digest"
                            && let Some(d) = v.as_str().and_then(|s| s.parse().ok())
                        {
                            out.push(d);
                        }
                        walk(v, out);
                    }
                }
                serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
                _ => {}
            }
        }
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        let mut out = Vec::new();
        walk(&v, &mut out);
        Ok(out)
    }

    /// Every blob (config and layers) the registry must hold for this manifest.
    pub fn blob_references(&self) -> impl Iterator<Item = &Descriptor> {
        self.config
            .iter()
            .chain(self.layers.iter().filter(|d| !d.is_foreign()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn image(mt: Option<&str>) -> String {
        let mt = mt
            .map(|m| format!(r#""mediaType":"{m}","#))
            .unwrap_or_default();
        format!(
            r#"{{"schemaVersion":2,{mt}"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":0}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D1}","size":0}}]}}"#
        )
    }

    #[test]
    fn parses_oci_image() {
        let m = Manifest::parse(image(Some(media_types::OCI_MANIFEST)).as_bytes(), None).unwrap();
        assert_eq!(m.kind, ManifestKind::OciManifest);
        assert_eq!(m.blob_references().count(), 2);
        assert_eq!(
            m.effective_artifact_type(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn infers_kind_without_media_type() {
        let m = Manifest::parse(image(None).as_bytes(), Some(media_types::OCI_MANIFEST)).unwrap();
        assert_eq!(m.kind, ManifestKind::OciManifest);
        let m = Manifest::parse(image(None).as_bytes(), None).unwrap();
        assert_eq!(m.kind, ManifestKind::OciManifest);
    }

    #[test]
    fn rejects_mismatch_and_garbage() {
        assert!(matches!(
            Manifest::parse(
                image(Some(media_types::OCI_MANIFEST)).as_bytes(),
                Some(media_types::DOCKER_MANIFEST)
            ),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        assert!(matches!(
            Manifest::parse(b"{", None),
            Err(ManifestError::Json(_))
        ));
        assert!(matches!(
            Manifest::parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, None),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
        let idx = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#;
        assert!(matches!(
            Manifest::parse(idx.as_bytes(), None),
            Err(ManifestError::MissingField(_, "manifests"))
        ));
        let bad = image(Some(media_types::OCI_MANIFEST)).replace(D1, "sha256:1234");
        assert!(matches!(
            Manifest::parse(bad.as_bytes(), None),
            Err(ManifestError::BadDescriptor { .. })
        ));
        let big = vec![b' '; MAX_MANIFEST_SIZE + 1];
        assert!(matches!(
            Manifest::parse(&big, None),
            Err(ManifestError::TooLarge(_))
        ));
    }

    #[test]
    fn refuses_ambiguous_and_unnamed_docker() {
        let amb = image(None).replacen('{', r#"{"manifests":[],"#, 1);
        assert!(matches!(
            Manifest::parse(amb.as_bytes(), Some(media_types::OCI_MANIFEST)),
            Err(ManifestError::Ambiguous)
        ));
        assert!(matches!(
            Manifest::parse(image(None).as_bytes(), Some(media_types::DOCKER_MANIFEST)),
            Err(ManifestError::MissingField(_, "mediaType"))
        ));
    }

    #[test]
    fn finds_every_digest() {
        let s = image(Some(media_types::OCI_MANIFEST));
        let ds = Manifest::referenced_digests(s.as_bytes()).unwrap();
        assert_eq!(ds.len(), 2);
        assert!(Manifest::referenced_digests(b"not json").is_err());
    }

    #[test]
    fn index_with_subject_and_artifact_type() {
        let s = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","artifactType":"application/x-sbom","manifests":[{{"mediaType":"{}","digest":"{D1}","size":1}}],"subject":{{"mediaType":"{}","digest":"{D1}","size":2}}}}"#,
            media_types::OCI_INDEX,
            media_types::OCI_MANIFEST,
            media_types::OCI_MANIFEST
        );
        let m = Manifest::parse(
            s.as_bytes(),
            Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
        )
        .unwrap();
        assert!(m.kind.is_index());
        assert_eq!(m.manifests.len(), 1);
        assert_eq!(m.subject.unwrap().size, 2);
        assert_eq!(m.artifact_type.as_deref(), Some("application/x-sbom"));
    }
}

/// Manifest lists (OCI index, Docker manifest list) with hostile children: parsed or
/// refused, never a panic, and a parsed one keeps every child it was given (the
/// stable-toolchain stand-in for a fuzz target of the manifest-list path).
#[cfg(test)]
mod index_props {
    use proptest::prelude::*;

    use super::*;

    fn child() -> impl Strategy<Value = serde_json::Value> {
        (
            prop::sample::select(vec![
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.oci.image.index.v1+json",
                "text/html",
                "",
            ]),
            prop_oneof![
                "[0-9a-f]{64}".prop_map(|h| format!("sha256:{h}")),
                "[ -~]{0,80}",
                "[0-9a-f]{128}".prop_map(|h| format!("sha512:{h}")),
            ],
            prop_oneof![
                any::<u64>().prop_map(serde_json::Value::from),
                Just(serde_json::json!(-1)),
                Just(serde_json::json!("9"))
            ],
            prop::option::of(("[ -~]{0,12}", "[ -~]{0,12}", prop::option::of("[ -~]{0,6}"))),
        )
            .prop_map(|(media, digest, size, platform)| {
                let mut c = serde_json::json!({"mediaType": media, "digest": digest, "size": size});
                if let Some((os, arch, variant)) = platform {
                    c["platform"] =
                        serde_json::json!({"os": os, "architecture": arch, "variant": variant});
                }
                c
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn hostile_manifest_lists_parse_or_are_refused(
            kind in prop::sample::select(vec![
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
            ]),
            header in prop::option::of(prop::sample::select(vec![
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
                "application/json",
            ])),
            children in prop::collection::vec(child(), 0..12),
            extra in prop::option::of("[ -~]{0,30}"),
        ) {
            let mut doc = serde_json::json!({"schemaVersion": 2, "mediaType": kind, "manifests": children});
            if let Some(e) = extra {
                doc["annotations"] = serde_json::json!({"x": e});
            }
            let bytes = serde_json::to_vec(&doc).unwrap();
            if let Ok(m) = Manifest::parse(&bytes, header) {
                prop_assert_eq!(m.manifests.len(), children.len());
                prop_assert_eq!(m.blob_references().count(), 0);
            }
        }
    }
}

#![no_main]
//! The manifest-list path: an image index or Docker manifest list built from arbitrary
//! children (media types, digests, sizes, platforms of any shape), parsed as the mirror
//! parses what an upstream sends, under each Content-Type an upstream may claim.
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use pier_oci::Manifest;

#[derive(Arbitrary, Debug)]
struct Child {
    media_type: u8,
    digest: String,
    size: i64,
    platform: Option<(String, String, Option<String>)>,
    extra: Option<(String, String)>,
}

#[derive(Arbitrary, Debug)]
struct Index {
    docker: bool,
    header: u8,
    children: Vec<Child>,
    annotation: Option<String>,
    subject: Option<String>,
}

const KINDS: [&str; 5] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "text/html",
];

fn json_str(s: &str) -> String {
    // serde_json-free quoting would hide bugs; use the same escaping JSON requires.
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fuzz_target!(|ix: Index| {
    let kind = if ix.docker { KINDS[3] } else { KINDS[2] };
    let children: Vec<String> = ix
        .children
        .iter()
        .map(|c| {
            let mut fields = vec![
                format!("\"mediaType\":{}", json_str(KINDS[c.media_type as usize % KINDS.len()])),
                format!("\"digest\":{}", json_str(&c.digest)),
                format!("\"size\":{}", c.size),
            ];
            if let Some((os, arch, variant)) = &c.platform {
                let mut p = format!("\"os\":{},\"architecture\":{}", json_str(os), json_str(arch));
                if let Some(v) = variant {
                    p.push_str(&format!(",\"variant\":{}", json_str(v)));
                }
                fields.push(format!("\"platform\":{{{p}}}"));
            }
            if let Some((k, v)) = &c.extra {
                fields.push(format!("{}:{}", json_str(k), json_str(v)));
            }
            format!("{{{}}}", fields.join(","))
        })
        .collect();
    let mut doc = format!(
        "{{\"schemaVersion\":2,\"mediaType\":{},\"manifests\":[{}]",
        json_str(kind),
        children.join(",")
    );
    if let Some(a) = &ix.annotation {
        doc.push_str(&format!(",\"annotations\":{{\"x\":{}}}", json_str(a)));
    }
    if let Some(s) = &ix.subject {
        doc.push_str(&format!(
            ",\"subject\":{{\"mediaType\":{},\"digest\":{},\"size\":1}}",
            json_str(KINDS[0]),
            json_str(s)
        ));
    }
    doc.push('}');
    let header = match ix.header % 4 {
        0 => None,
        1 => Some(KINDS[2]),
        2 => Some(KINDS[3]),
        _ => Some("application/json"),
    };
    if let Ok(m) = Manifest::parse(doc.as_bytes(), header) {
        // An index names no blobs, only its children (each a valid digest).
        assert_eq!(m.blob_references().count(), 0);
        assert_eq!(m.manifests.len(), ix.children.len());
        for d in &m.manifests {
            assert!(d.digest.to_string().contains(':'));
        }
        let listed = Manifest::referenced_digests(doc.as_bytes()).expect("a parsed index lists its references");
        assert!(listed.len() >= m.manifests.len());
    }
});

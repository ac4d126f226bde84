//! `WWW-Authenticate` (RFC 9110 §11.6.1) as upstreams send it: which scheme to answer and
//! with what realm and service. Hand-written (~70 lines): the header's grammar is small and
//! the crates for it parse only one scheme or pull in a whole HTTP-auth client.

/// One challenge of a `WWW-Authenticate` header: its scheme (lowercase) and parameters
/// (names lowercase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The auth scheme, lowercase (`bearer`, `basic`).
    pub scheme: String,
    /// Parameters in order, names lowercase.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The first parameter called `name` (lowercase).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parse `WWW-Authenticate` (RFC 9110 §11.6.1): comma-separated challenges, each a scheme
/// followed by `name=value` or `name="quoted value"` parameters. Token68 forms are skipped.
pub fn parse(header: &str) -> Vec<Challenge> {
    let s = header.as_bytes();
    let mut i = 0;
    let mut out: Vec<Challenge> = Vec::new();
    let is_token = |b: u8| !b.is_ascii_whitespace() && !matches!(b, b',' | b'=' | b'"');
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && s[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        // Skip separators between items.
        while i < s.len() && (s[i].is_ascii_whitespace() || s[i] == b',') {
            i += 1;
        }
        if i >= s.len() {
            break;
        }
        let start = i;
        while i < s.len() && is_token(s[i]) {
            i += 1;
        }
        if i == start {
            // A stray character: skip it.
            i += 1;
            continue;
        }
        let word = &header[start..i];
        let mut j = i;
        skip_ws(&mut j);
        if j < s.len() && s[j] == b'=' && j + 1 < s.len() && s[j + 1] != b'=' {
            // `name=value`: a parameter of the current challenge.
            i = j + 1;
            skip_ws(&mut i);
            let value = if i < s.len() && s[i] == b'"' {
                i += 1;
                let mut value = String::new();
                while i < s.len() && s[i] != b'"' {
                    if s[i] == b'\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    let ch = header[i..].chars().next().unwrap_or('\u{fffd}');
                    value.push(ch);
                    i += ch.len_utf8();
                }
                i += 1;
                value
            } else {
                let vstart = i;
                while i < s.len() && s[i] != b',' && !s[i].is_ascii_whitespace() {
                    i += 1;
                }
                header[vstart..i].to_owned()
            };
            if let Some(challenge) = out.last_mut() {
                challenge.params.push((word.to_ascii_lowercase(), value));
            }
        } else if j < s.len() && s[j] == b'=' {
            // token68 padding (`abc==`): skip it.
            i = j;
            while i < s.len() && s[i] == b'=' {
                i += 1;
            }
        } else {
            out.push(Challenge {
                scheme: word.to_ascii_lowercase(),
                params: Vec::new(),
            });
        }
    }
    out
}

/// The `WWW-Authenticate` parser on anything an upstream may send (runs with every
/// `cargo test`; the cargo-fuzz target `www_authenticate` in `../fuzz` goes deeper).
#[cfg(test)]
mod challenge_props {
    use proptest::prelude::*;

    use super::parse;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn any_header_parses_without_panicking(h in any::<String>()) {
            let _ = parse(&h);
        }

        #[test]
        fn header_like_noise_parses_without_panicking(
            h in r#"[A-Za-z ,="\\\x{80}-\x{10FFFF}]{0,80}"#
        ) {
            let _ = parse(&h);
        }

        #[test]
        fn bearer_parameters_come_back(
            realm in r#"[!#-\[\]-~]{1,40}"#,
            service in "[a-z0-9.-]{1,20}",
            junk in "[a-z]{0,8}",
        ) {
            let h = format!(r#"Basic realm="x", Bearer realm="{realm}",service={service},{junk}"#);
            let c = parse(&h);
            let bearer = c.iter().find(|c| c.scheme == "bearer").expect("a bearer challenge");
            prop_assert_eq!(bearer.param("realm"), Some(realm.as_str()));
            prop_assert_eq!(bearer.param("service"), Some(service.as_str()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let c = parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:library/alpine:pull"));
    }

    #[test]
    fn parses_several_challenges_and_escapes() {
        let c = parse(
            r#"Basic realm="a \"quoted\" realm", charset=UTF-8, Bearer realm="https://r/t", error=invalid_token"#,
        );
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some(r#"a "quoted" realm"#));
        assert_eq!(c[0].param("charset"), Some("UTF-8"));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("realm"), Some("https://r/t"));
        assert_eq!(c[1].param("error"), Some("invalid_token"));
        assert_eq!(
            parse("Negotiate abc==, Basic"),
            vec![
                Challenge {
                    scheme: "negotiate".into(),
                    params: vec![]
                },
                Challenge {
                    scheme: "basic".into(),
                    params: vec![]
                },
            ]
        );
        assert!(parse("").is_empty());
        assert!(parse(" , ,").is_empty());
    }
}

//! Query strings: `a=1&b=x%2Fy` into decoded pairs, in order (keys may repeat).

/// Decoded `(key, value)` pairs of a query string (`application/x-www-form-urlencoded`:
/// `+` is a space, a bad escape stays as written, invalid UTF-8 becomes U+FFFD).
pub fn parse(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes() {
        assert_eq!(
            parse("image=a%2Fb:1&image=c&x=1+2&flag&bad=%zz"),
            vec![
                ("image".into(), "a/b:1".into()),
                ("image".into(), "c".into()),
                ("x".into(), "1 2".into()),
                ("flag".into(), "".into()),
                ("bad".into(), "%zz".into()),
            ]
        );
    }
}

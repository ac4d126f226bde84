//! Glob patterns for repository names, projects and tags: `*` matches any run of
//! characters (slashes included, so `team/*` matches `team/app/web`), `?` exactly one
//! character; everything else matches itself. No escapes and no classes: names and
//! tags of a registry never contain `*` or `?`.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

/// Whether `text` matches `pattern` as a whole.
///
/// Linear backtracking on the last `*` (the classic two-pointer algorithm): at most
/// `pattern.len() * text.len()` steps, no recursion, no allocation beyond the two
/// character vectors.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // where the last `*` was, and the text position it currently stands for
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            // let the last `*` swallow one more character and retry
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Whether `text` matches any of `patterns`; an empty list matches everything (a
/// filter that is not set).
pub fn any(patterns: &[String], text: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| matches(p, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert!(matches("team/app", "team/app"));
        assert!(!matches("team/app", "team/ap"));
        assert!(!matches("team/app", "team/apps"));
        assert!(matches("", ""));
        assert!(!matches("", "a"));
    }

    #[test]
    fn star() {
        assert!(matches("*", ""));
        assert!(matches("*", "anything/at/all"));
        assert!(matches("team/*", "team/app"));
        assert!(matches("team/*", "team/app/web"));
        assert!(!matches("team/*", "teams/app"));
        assert!(matches("v*", "v1.2.3"));
        assert!(!matches("v*", "latest"));
        assert!(matches("*-rc*", "1.0-rc2"));
        assert!(matches("a*b*c", "abc"));
        assert!(matches("a*b*c", "aXbYbZc"));
        assert!(!matches("a*b*c", "aXbYbZ"));
        assert!(matches("**", "x"));
        assert!(matches("*a", "banana"));
        assert!(!matches("*a", "bananas"));
    }

    #[test]
    fn question_mark() {
        assert!(matches("v?", "v1"));
        assert!(!matches("v?", "v"));
        assert!(!matches("v?", "v10"));
        assert!(matches("v?.*", "v1.20"));
        assert!(matches("é?", "éß"));
    }

    #[test]
    fn any_of() {
        assert!(any(&[], "x"));
        let p = vec!["v*".to_owned(), "latest".to_owned()];
        assert!(any(&p, "latest"));
        assert!(any(&p, "v2"));
        assert!(!any(&p, "dev"));
    }

    #[test]
    fn pathological_patterns_stay_fast() {
        let text = "a".repeat(2000);
        let pattern = format!("{}b", "*a".repeat(50));
        assert!(!matches(&pattern, &text));
    }
}

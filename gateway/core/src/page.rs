/// One page of a lexically sorted listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The last item of this page, when more follow.
    pub next_last: Option<String>,
}

/// The spec's `n` / `last` pagination over sorted items: items strictly after `last`, at
/// most `n` of them.
pub fn paginate<T: AsRef<str>>(sorted: Vec<T>, n: Option<usize>, last: Option<&str>) -> Page<T> {
    let mut items: Vec<T> = match last {
        Some(l) => sorted.into_iter().filter(|t| t.as_ref() > l).collect(),
        None => sorted,
    };
    let mut next_last = None;
    if let Some(n) = n
        && items.len() > n
    {
        items.truncate(n);
        next_last = items.last().map(|t| t.as_ref().to_owned());
    }
    Page { items, next_last }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        let all = || vec!["a", "b", "c", "d"];
        assert_eq!(paginate(all(), None, None).items, all());
        let p = paginate(all(), Some(2), None);
        assert_eq!(p.items, vec!["a", "b"]);
        assert_eq!(p.next_last.as_deref(), Some("b"));
        let p = paginate(all(), Some(2), Some("b"));
        assert_eq!(p.items, vec!["c", "d"]);
        assert_eq!(p.next_last, None);
        assert!(paginate(all(), Some(0), None).items.is_empty());
        assert_eq!(paginate(all(), None, Some("bb")).items, vec!["c", "d"]);
    }
}

//! Include/exclude filters for mailboxes, folders (by path, `Inbox/Projects`) and item classes.
//! Patterns are case-insensitive globs where `*` matches any run of characters.

/// One glob pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    pub fn new(p: &str) -> Self {
        Self(p.to_lowercase())
    }

    pub fn matches(&self, s: &str) -> bool {
        glob(self.0.as_bytes(), s.to_lowercase().as_bytes())
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard match with single-star backtracking.
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// An include list (empty = everything) and an exclude list (wins over include).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub include: Vec<Pattern>,
    pub exclude: Vec<Pattern>,
}

impl Filter {
    pub fn new(include: &[String], exclude: &[String]) -> Self {
        Self {
            include: include.iter().map(|p| Pattern::new(p)).collect(),
            exclude: exclude.iter().map(|p| Pattern::new(p)).collect(),
        }
    }

    pub fn allows(&self, s: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(s)))
            && !self.exclude.iter().any(|p| p.matches(s))
    }
}

/// All filters of a collector.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub mailboxes: Filter,
    /// Matched against the folder path below the mailbox root, `/`-separated, and against each
    /// of its parents: excluding `Inbox` also excludes `Inbox/Sub`.
    pub folders: Filter,
    pub item_classes: Filter,
}

impl Filters {
    pub fn folder_allowed(&self, path: &[String]) -> bool {
        let included = self.folders.include.is_empty()
            || (1..=path.len()).any(|n| {
                let p = path[..n].join("/");
                self.folders.include.iter().any(|pat| pat.matches(&p))
            });
        let excluded = (1..=path.len()).any(|n| {
            let p = path[..n].join("/");
            self.folders.exclude.iter().any(|pat| pat.matches(&p))
        });
        included && !excluded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(Pattern::new("IPM.Note*").matches("ipm.note.smime"));
        assert!(Pattern::new("*@example.com").matches("Alice@Example.com"));
        assert!(!Pattern::new("*@example.com").matches("alice@example.org"));
        assert!(Pattern::new("a*b*c").matches("axxbyyc"));
        assert!(!Pattern::new("a*b*c").matches("axxbyy"));
        assert!(Pattern::new("*").matches(""));
    }

    #[test]
    fn folder_filters_apply_to_subtrees() {
        let f = Filters {
            folders: Filter::new(&[], &["Junk Email".into(), "Inbox/Private*".into()]),
            ..Filters::default()
        };
        let p = |s: &str| s.split('/').map(str::to_owned).collect::<Vec<_>>();
        assert!(f.folder_allowed(&p("Inbox")));
        assert!(!f.folder_allowed(&p("Junk Email")));
        assert!(!f.folder_allowed(&p("Inbox/Private stuff/deeper")));
        assert!(f.folder_allowed(&p("Inbox/Work")));
    }
}

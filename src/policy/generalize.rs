//! Path generalisation for `learn`: from the paths a host was asked for to a few path prefixes.
//!
//! A path is cut into segments (`/users/123/repos` → `users`, `123`, `repos`). Segments that
//! look like opaque identifiers become placeholders ([`Segment::Int`], [`Segment::Uuid`],
//! [`Segment::Hex`], [`Segment::Token`]), so `/users/123/repos` and `/users/456/repos` become
//! one pattern. Patterns are *prefixes*, compared segment by segment: `users/INT/repos` allows
//! `/users/7/repos` and `/users/7/repos/x`, not `/users/7/reposx`. The patterns of one host are
//! kept in a trie; a prefix covers everything below it, and when a host has more than the cap,
//! the most crowded groups are merged into their common prefix until it fits (the empty prefix
//! allows every path).
//!
//! Two sides must agree exactly: [`Segment::classify`] (what `learn` turns into a placeholder)
//! is stricter than [`Segment::matches`] (what the generated rule accepts for it), and
//! [`Segment::matches`] mirrors the regular expressions the JS rule uses
//! (`super::render::PLACEHOLDERS`), so every learned path is allowed by the rule. This module
//! must stay pure: no I/O, no clock, deterministic output for any input order.

use std::collections::BTreeMap;

/// Segments kept per pattern; deeper paths are cut to this prefix (more permissive, never
/// less). Bounds recursion and output size for hostile logs.
pub const MAX_SEGMENTS: usize = 32;

/// Shortest hex string taken for a hash (64-bit ids and longer: md5, sha1, sha256).
const MIN_HEX_LEN: usize = 16;
/// Shortest base64url-like string taken for a random token.
const MIN_TOKEN_LEN: usize = 20;

/// One path segment of a learned prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Segment {
    /// Exactly this text (as the client sent it, percent-encoding kept).
    Literal(String),
    /// Digits only: a numeric id (`/users/123`).
    Int,
    /// A UUID (`0b6f6c2e-8d4a-4f7e-9a63-2f0c1d9e8b7a`), any case.
    Uuid,
    /// At least 16 hex digits: a hash or a long hex id.
    Hex,
    /// At least 20 characters of `A-Z a-z 0-9 _ -`: a random token.
    Token,
}

impl Segment {
    /// What `learn` makes of one observed segment. Stricter than [`Segment::matches`]: a
    /// placeholder is only chosen for text it certainly matches, and a token must mix digits,
    /// upper and lower case so that long words (`getting-started-with-the-api`) stay literal.
    pub fn classify(segment: &str) -> Self {
        if is_int(segment) {
            Self::Int
        } else if is_uuid(segment) {
            Self::Uuid
        } else if is_hex(segment) {
            Self::Hex
        } else if is_token(segment)
            && segment.bytes().any(|b| b.is_ascii_digit())
            && segment.bytes().any(|b| b.is_ascii_uppercase())
            && segment.bytes().any(|b| b.is_ascii_lowercase())
        {
            Self::Token
        } else {
            Self::Literal(segment.to_owned())
        }
    }

    /// Whether the generated rule accepts `segment` here. Must mirror
    /// `super::render::PLACEHOLDERS` exactly.
    pub fn matches(&self, segment: &str) -> bool {
        match self {
            Self::Literal(text) => text == segment,
            Self::Int => is_int(segment),
            Self::Uuid => is_uuid(segment),
            Self::Hex => is_hex(segment),
            Self::Token => is_token(segment),
        }
    }
}

/// `^[0-9]+$`
fn is_int(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`
fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// `^[0-9a-fA-F]{16,}$`
fn is_hex(s: &str) -> bool {
    s.len() >= MIN_HEX_LEN && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `^[A-Za-z0-9_-]{20,}$`
fn is_token(s: &str) -> bool {
    s.len() >= MIN_TOKEN_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A learned path prefix: the segments after the leading `/`.
pub type Prefix = Vec<Segment>;

/// The segments of a path as the rule compares them: what follows each `/`
/// (`/a/b` → `a`, `b`; `/` → one empty segment). Same as JS `path.split("/").slice(1)`.
pub fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').skip(1)
}

/// The pattern of one observed path, cut to [`MAX_SEGMENTS`].
pub fn pattern(path: &str) -> Prefix {
    segments(path)
        .take(MAX_SEGMENTS)
        .map(Segment::classify)
        .collect()
}

/// Whether `path` starts with `prefix`, segment by segment.
pub fn prefix_matches(prefix: &[Segment], path: &str) -> bool {
    let mut segs = segments(path);
    prefix
        .iter()
        .all(|p| segs.next().is_some_and(|s| p.matches(s)))
}

/// The prefixes of one host: a trie of segments. Inserting a pattern that an existing prefix
/// covers changes nothing; inserting a prefix of existing patterns replaces them.
#[derive(Debug, Default, Clone)]
pub struct PrefixSet {
    root: Node,
}

#[derive(Debug, Default, Clone)]
struct Node {
    /// A learned prefix ends here: everything below is allowed, so `children` is empty.
    terminal: bool,
    children: BTreeMap<Segment, Node>,
}

impl PrefixSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one pattern (cut to [`MAX_SEGMENTS`]).
    pub fn insert(&mut self, pattern: Prefix) {
        let mut node = &mut self.root;
        for segment in pattern.into_iter().take(MAX_SEGMENTS) {
            if node.terminal {
                return;
            }
            node = node.children.entry(segment).or_default();
        }
        node.terminal = true;
        node.children.clear();
    }

    /// How many prefixes the set holds.
    pub fn len(&self) -> usize {
        self.root.leaves()
    }

    pub fn is_empty(&self) -> bool {
        !self.root.terminal && self.root.children.is_empty()
    }

    /// Merges groups of prefixes into their common prefix until at most `cap` remain (`cap` 0
    /// is taken as 1). The node with the most direct children goes first (a position where
    /// many different names were seen, such as package names or unrecognised ids), then the
    /// deeper one, then sorted order: the result does not depend on insertion order, and
    /// structure that was not crowded is kept.
    pub fn limit(&mut self, cap: usize) {
        let cap = cap.max(1);
        let mut count = self.len();
        if count <= cap {
            return;
        }
        let mut groups = Vec::new();
        self.root.groups(0, &mut Vec::new(), &mut groups);
        groups.sort_by(|a, b| {
            b.fan_out
                .cmp(&a.fan_out)
                .then(b.depth.cmp(&a.depth))
                .then_with(|| a.path.cmp(&b.path))
        });
        for group in groups {
            if count <= cap {
                break;
            }
            // A group below one merged earlier is gone (`find_mut` fails or finds a terminal).
            if let Some(node) = self.root.find_mut(&group.path)
                && !node.terminal
            {
                let leaves = node.leaves();
                node.terminal = true;
                node.children.clear();
                count -= leaves.saturating_sub(1);
            }
        }
    }

    /// The prefixes, sorted.
    pub fn prefixes(&self) -> Vec<Prefix> {
        let mut out = Vec::new();
        self.root.collect(&mut Vec::new(), &mut out);
        out
    }

    /// Whether some prefix allows `path`.
    pub fn allows(&self, path: &str) -> bool {
        self.prefixes().iter().any(|p| prefix_matches(p, path))
    }
}

/// A node with at least two prefixes below it: a candidate for merging.
#[derive(Debug)]
struct Group {
    depth: usize,
    fan_out: usize,
    path: Vec<Segment>,
}

impl Node {
    fn leaves(&self) -> usize {
        if self.terminal {
            1
        } else {
            self.children.values().map(Node::leaves).sum()
        }
    }

    /// Collects every non-terminal node with two or more prefixes below it; returns the
    /// number of prefixes below `self`.
    fn groups(&self, depth: usize, path: &mut Vec<Segment>, out: &mut Vec<Group>) -> usize {
        if self.terminal {
            return 1;
        }
        let mut leaves = 0;
        for (segment, child) in &self.children {
            path.push(segment.clone());
            leaves += child.groups(depth + 1, path, out);
            path.pop();
        }
        if leaves >= 2 {
            out.push(Group {
                depth,
                fan_out: self.children.len(),
                path: path.clone(),
            });
        }
        leaves
    }

    fn find_mut(&mut self, path: &[Segment]) -> Option<&mut Node> {
        let mut node = self;
        for segment in path {
            node = node.children.get_mut(segment)?;
        }
        Some(node)
    }

    fn collect(&self, path: &mut Vec<Segment>, out: &mut Vec<Prefix>) {
        if self.terminal {
            out.push(path.clone());
            return;
        }
        for (segment, child) in &self.children {
            path.push(segment.clone());
            child.collect(path, out);
            path.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Segment {
        Segment::Literal(s.to_owned())
    }

    fn set(paths: &[&str]) -> PrefixSet {
        let mut set = PrefixSet::new();
        for p in paths {
            set.insert(pattern(p));
        }
        set
    }

    #[test]
    fn numeric_ids_collapse_into_one_pattern() {
        let s = set(&["/users/123/repos", "/users/456/repos"]);
        assert_eq!(
            s.prefixes(),
            vec![vec![lit("users"), Segment::Int, lit("repos")]]
        );
        assert!(s.allows("/users/789/repos"));
        assert!(s.allows("/users/789/repos/deeper"));
        assert!(!s.allows("/users/abc/repos"));
        assert!(!s.allows("/users/789/reposx"), "segments compare whole");
        assert!(!s.allows("/users/789"));
    }

    #[test]
    fn uuids_hashes_and_tokens_collapse() {
        assert_eq!(
            Segment::classify("0b6f6c2e-8d4a-4f7e-9a63-2f0c1d9e8b7a"),
            Segment::Uuid
        );
        assert_eq!(
            Segment::classify("0B6F6C2E-8D4A-4F7E-9A63-2F0C1D9E8B7A"),
            Segment::Uuid
        );
        assert_eq!(
            Segment::classify("da39a3ee5e6b4b0d3255bfef95601890afd80709"),
            Segment::Hex
        );
        assert_eq!(Segment::classify("deadbeefdeadbeef"), Segment::Hex);
        assert_eq!(
            Segment::classify("deadbeef"),
            lit("deadbeef"),
            "too short for a hash"
        );
        assert_eq!(Segment::classify("aZ3kP9qL2mX7vB4nR8tY"), Segment::Token);
        assert_eq!(
            Segment::classify("getting-started-with-the-api"),
            lit("getting-started-with-the-api"),
            "a long word is not a token"
        );
        assert_eq!(Segment::classify("v1"), lit("v1"));
        assert_eq!(Segment::classify(""), lit(""));
        let s = set(&[
            "/objects/0b6f6c2e-8d4a-4f7e-9a63-2f0c1d9e8b7a",
            "/objects/11111111-2222-3333-4444-555555555555",
            "/blobs/da39a3ee5e6b4b0d3255bfef95601890afd80709",
            "/blobs/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ]);
        assert_eq!(
            s.prefixes(),
            vec![
                vec![lit("blobs"), Segment::Hex],
                vec![lit("objects"), Segment::Uuid]
            ]
        );
    }

    #[test]
    fn every_classified_segment_matches_its_own_class() {
        for seg in [
            "0",
            "123456789012345678901234567890",
            "0b6f6c2e-8d4a-4f7e-9a63-2f0c1d9e8b7a",
            "deadbeefdeadbeef",
            "aZ3kP9qL2mX7vB4nR8tY_-x",
            "plain",
            "",
            "üñí",
            "a\"b\\c",
        ] {
            assert!(Segment::classify(seg).matches(seg), "{seg:?}");
        }
    }

    #[test]
    fn prefixes_cover_longer_paths_in_any_order() {
        let a = set(&["/a/b/c", "/a/b", "/x"]);
        let b = set(&["/x", "/a/b", "/a/b/c"]);
        assert_eq!(a.prefixes(), vec![vec![lit("a"), lit("b")], vec![lit("x")]]);
        assert_eq!(a.prefixes(), b.prefixes());
    }

    #[test]
    fn root_and_trailing_slash_are_exact() {
        let s = set(&["/"]);
        assert_eq!(s.prefixes(), vec![vec![lit("")]]);
        assert!(s.allows("/"));
        assert!(!s.allows("/a"));
        let s = set(&["/a/"]);
        assert!(s.allows("/a/"));
        assert!(!s.allows("/a"));
    }

    #[test]
    fn many_prefixes_merge_to_the_deepest_common_prefix() {
        let mut paths: Vec<String> = (0..40)
            .map(|i| format!("/pkg/name{i}/index.json"))
            .collect();
        paths.push("/api/v1/search".to_owned());
        paths.push("/api/v1/info".to_owned());
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let mut s = set(&refs);
        assert_eq!(s.len(), 42);
        s.limit(4);
        // The 40 package paths merge into /pkg; /api/v1/* stays as it is (it fits).
        assert_eq!(
            s.prefixes(),
            vec![
                vec![lit("api"), lit("v1"), lit("info")],
                vec![lit("api"), lit("v1"), lit("search")],
                vec![lit("pkg")],
            ]
        );
        for p in &paths {
            assert!(s.allows(p), "{p} must stay allowed after merging");
        }
        s.limit(1);
        assert_eq!(s.prefixes(), vec![Vec::<Segment>::new()]);
        assert!(s.allows("/anything"));
    }

    #[test]
    fn merging_does_not_depend_on_insertion_order() {
        let paths: Vec<String> = (0..30)
            .map(|i| format!("/{}/{}/{}", i % 3, i % 7, i))
            .collect();
        let mut forward = PrefixSet::new();
        let mut backward = PrefixSet::new();
        for p in &paths {
            forward.insert(pattern(p));
        }
        for p in paths.iter().rev() {
            backward.insert(pattern(p));
        }
        forward.limit(5);
        backward.limit(5);
        assert_eq!(forward.prefixes(), backward.prefixes());
        assert!(forward.len() <= 5);
    }

    #[test]
    fn very_deep_paths_are_cut_to_a_prefix() {
        let deep = "/a".repeat(10_000);
        let s = set(&[&deep]);
        assert_eq!(s.prefixes()[0].len(), MAX_SEGMENTS);
        assert!(s.allows(&deep));
    }
}

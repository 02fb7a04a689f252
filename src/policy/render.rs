//! The learned [`Policy`] as a JavaScript rule for `--js-file`.
//!
//! The output is a plain, reviewable program: a commented header (source log, date, counts,
//! what was denied and not learned), one `sites` entry per scheme + host + port, a small
//! matcher, and a last expression that is the answer (`true`, `false` or
//! `{allow: {max_tx_bytes: N}}`). It is valid strict-mode code whether run as a script or
//! inside a block (how the JS engine compiles rules), and uses `const` and `function` only.
//!
//! Everything taken from the log is untrusted: it only ever appears inside a double-quoted
//! string literal or a `//` comment, and both are written in pure ASCII with every other
//! character escaped ([`js_string`], [`comment`]), so no quote, backslash, `*/`, newline or
//! Unicode line separator can end the literal or the comment. The output is deterministic:
//! the same log (in any order) and date give the same bytes.

use std::fmt::Write as _;

use super::generalize::Segment;
use super::learn::{MAX_PREFIXES_PER_SITE, Policy, Site, origin};
use crate::rules::Scheme;

/// Placeholder constants of the rule: name and regular expression. Must mirror
/// `Segment::matches` exactly.
pub const PLACEHOLDERS: [(&str, &str, &str); 4] = [
    ("INT", "/^[0-9]+$/", "a number"),
    (
        "UUID",
        "/^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/",
        "a UUID",
    ),
    (
        "HEX",
        "/^[0-9a-fA-F]{16,}$/",
        "a hash: 16 or more hex digits",
    ),
    (
        "TOKEN",
        "/^[A-Za-z0-9_-]{20,}$/",
        "a token: 20 or more of A-Z a-z 0-9 _ -",
    ),
];

/// Denied groups listed in the header; the rest is counted.
const MAX_DENIED_LISTED: usize = 30;

/// What the header says about where the rule comes from.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    /// The log, as named on the command line.
    pub source: &'a str,
    /// When the rule was generated (a date).
    pub generated: &'a str,
}

const MATCHER: &str = r#"// A path matches a prefix segment by segment: ["a", "b"] matches /a/b and /a/b/c, not /a/bc.
function pathMatches(prefix, path) {
  const segments = path.split("/").slice(1);
  return prefix.length <= segments.length &&
    prefix.every((p, i) => (typeof p === "string" ? segments[i] === p : p.test(segments[i])));
}

const site = sites.find((s) =>
  s.host === r.host &&
  (s.scheme ?? "https") === r.scheme &&
  (s.port ?? (r.scheme === "http" ? 80 : 443)) === r.port);

site !== undefined &&
  site.methods.includes(r.method) &&
  site.paths.some((prefix) => pathMatches(prefix, r.path))
  ? (site.max_tx_bytes === undefined ? true : { allow: { max_tx_bytes: site.max_tx_bytes } })
  : false;
"#;

/// The rule's text.
pub fn render(policy: &Policy, header: &Header<'_>) -> String {
    let mut out = String::new();
    write_header(&mut out, policy, header);
    for (name, regex, what) in PLACEHOLDERS {
        let _ = writeln!(out, "const {name} = {regex}; // {what}");
    }
    out.push('\n');
    if policy.sites.is_empty() {
        out.push_str("// Nothing was allowed in the recorded run: this rule denies everything.\n");
        out.push_str("const sites = [];\n");
    } else {
        out.push_str("const sites = [\n");
        for site in &policy.sites {
            write_site(&mut out, site);
        }
        out.push_str("];\n");
    }
    out.push('\n');
    out.push_str(MATCHER);
    out
}

fn write_header(out: &mut String, policy: &Policy, header: &Header<'_>) {
    let s = &policy.stats;
    let _ = writeln!(
        out,
        "// httpjail rule learned from {} by `httpjail learn`",
        comment(header.source)
    );
    let _ = write!(out, "// generated {}", comment(header.generated));
    if let (Some(first), Some(last)) = (&policy.first_time, &policy.last_time) {
        let _ = write!(
            out,
            "; requests recorded {} to {}",
            comment(first),
            comment(last)
        );
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "// {}: {} learned ({}), {} not learned (denied),",
        plural(s.lines, "log line"),
        plural(s.learned, "allowed request"),
        plural(policy.sites.len(), "site"),
        plural(s.denied, "request"),
    );
    let _ = writeln!(
        out,
        "// {} skipped (malformed or inconsistent)",
        plural(s.bad_lines, "line")
    );
    out.push_str(&format!(
        "//
// Review before use: this allows what the recorded run did, slightly generalised.
// - Each entry of `sites` is one host; scheme https and its default port unless given.
// - methods: the methods seen for that host.
// - paths: path prefixes, compared segment by segment; [] allows every path. Queries are not
//   checked. INT, UUID, HEX and TOKEN stand for one segment of that kind (see below). A host
//   with more than {MAX_PREFIXES_PER_SITE} prefixes had them merged into common prefixes.
// - max_tx_bytes: where uploads were seen, the most each request to that host may send
//   (request line, headers and body), above the largest seen.
// Anything else is denied.
//
// Use:    httpjail --js-file THIS_FILE -- COMMAND
// Check:  httpjail replay --js-file THIS_FILE {} (exit 0: nothing flips)
",
        comment(header.source)
    ));
    if !policy.denied.is_empty() {
        out.push_str("//\n// Denied in the recorded run and not learned (count):\n");
        for (what, count) in policy.denied.iter().take(MAX_DENIED_LISTED) {
            let _ = writeln!(out, "//   {} x{count}", comment(what));
        }
        if policy.denied.len() > MAX_DENIED_LISTED {
            let _ = writeln!(
                out,
                "//   ... and {} more",
                policy.denied.len() - MAX_DENIED_LISTED
            );
        }
    }
    out.push('\n');
}

fn write_site(out: &mut String, site: &Site) {
    let _ = write!(
        out,
        "  {{ // {}: {}",
        comment(&origin(site.scheme, &site.host, site.port)),
        plural(site.requests, "request")
    );
    if let Some(before) = site.merged_from {
        let _ = write!(
            out,
            "; {before} path prefixes merged into {}",
            site.prefixes.len()
        );
    }
    out.push('\n');
    let _ = writeln!(out, "    host: {},", js_string(&site.host));
    if site.scheme != Scheme::Https {
        let _ = writeln!(out, "    scheme: {},", js_string(site.scheme.as_str()));
    }
    if site.port != site.scheme.default_port() {
        let _ = writeln!(out, "    port: {},", site.port);
    }
    let methods: Vec<String> = site.methods.iter().map(|m| js_string(m)).collect();
    let _ = writeln!(out, "    methods: [{}],", methods.join(", "));
    out.push_str("    paths: [\n");
    for prefix in &site.prefixes {
        if prefix.is_empty() {
            out.push_str("      [], // every path\n");
            continue;
        }
        if prefix.len() == 1 && prefix[0] == Segment::Literal(String::new()) {
            out.push_str("      [\"\"], // the path \"/\"\n");
            continue;
        }
        let segments: Vec<String> = prefix.iter().map(segment).collect();
        let _ = writeln!(out, "      [{}],", segments.join(", "));
    }
    out.push_str("    ],\n");
    if let Some(max) = site.max_tx_bytes {
        let _ = writeln!(
            out,
            "    max_tx_bytes: {max}, // largest request seen: {} bytes",
            site.largest_request
        );
    }
    out.push_str("  },\n");
}

/// `1 site`, `2 sites`.
fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn segment(segment: &Segment) -> String {
    match segment {
        Segment::Literal(text) => js_string(text),
        Segment::Int => PLACEHOLDERS[0].0.to_owned(),
        Segment::Uuid => PLACEHOLDERS[1].0.to_owned(),
        Segment::Hex => PLACEHOLDERS[2].0.to_owned(),
        Segment::Token => PLACEHOLDERS[3].0.to_owned(),
    }
}

/// A double-quoted JS string literal in pure ASCII: printable ASCII is kept (`"` and `\`
/// escaped), every other UTF-16 unit is written as `\uXXXX`.
pub fn js_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
    out
}

/// Text safe inside a `//` comment: printable ASCII kept, anything else written as
/// `\u{...}`, so nothing can end the comment (newlines, U+2028, U+2029).
pub fn comment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            ' '..='~' => out.push(c),
            _ => out.extend(c.escape_unicode()),
        }
    }
    out
}

#[cfg(test)]
mod tests;

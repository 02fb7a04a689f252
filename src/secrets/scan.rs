//! Leak detection (SPEC section 9): every form of every secret string we look for, and a
//! multi-pattern matcher that works on whole buffers and on streams cut at any chunk boundary.
//!
//! Looked for, for each secret's placeholder and real value:
//! - the raw bytes;
//! - base64, standard and URL-safe alphabets: for each of the 3 byte offsets a value can have
//!   inside a longer encoded blob, the characters that depend on the value's bytes only. These
//!   "cores" are substrings of every encoding of every byte stream that contains the value at
//!   that offset, padded or not, so a value embedded in a larger base64 blob is found as well;
//! - hex, in any letter case (hex is the only case-insensitive encoding);
//! - each of the above in a *decoded view* of the data, up to [`DECODE_LEVELS`] times: percent
//!   escapes (`%41`, in any mix of escaped and plain characters), backslash escapes (`\x41`,
//!   `\u0041`, `\/`) decoded, and CR/LF removed (line-wrapped base64).
//!
//! Not looked for: compressed or encrypted data, other encodings (base32, HTML entities),
//! values split over several requests or reversed. The command only ever has the placeholder;
//! detecting the real value is defence in depth for a command that obtained it anyway.
//!
//! All patterns are built once per run: one case-sensitive automaton (raw and base64 forms,
//! searched with a SIMD prefilter), one ASCII-case-insensitive automaton for hex, and one
//! case-insensitive automaton over every form for places that fold case themselves (host
//! names, header names) and for redaction.
//!
//! This module knows nothing about HTTP or about which host may see what: it reports [`Hit`]s
//! and the caller decides.

use std::borrow::Cow;
use std::ops::{ControlFlow, Range};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind, packed};
use base64::Engine as _;
use zeroize::Zeroizing;

/// Shortest encoded form worth looking for: shorter ones would match unrelated data.
pub const MIN_ENCODED_LEN: usize = 8;
/// How many times the decoded view is decoded again (`%2541` needs two).
pub const DECODE_LEVELS: usize = 2;
/// Most raw bytes one decoded byte can come from (`\u0041`).
const MAX_ESCAPE_LEN: usize = 6;

/// Which of a secret's two strings was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needle {
    Placeholder,
    Value,
}

/// How it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Raw,
    Base64,
    Base64Url,
    Hex,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "as is",
            Self::Base64 => "base64",
            Self::Base64Url => "base64url",
            Self::Hex => "hex",
        }
    }
}

/// One occurrence of a secret's placeholder or value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// Index of the secret, in configuration order.
    pub secret: usize,
    pub needle: Needle,
    pub encoding: Encoding,
    /// Found only after percent / backslash escapes were decoded or line breaks removed.
    pub decoded: bool,
}

/// What a hit callback returns: `Break(hit)` stops the scan and reports that hit.
pub type Flow = ControlFlow<Hit>;

/// Whether case matters where the data was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// Bodies, URLs, header values: raw and base64 forms exactly, hex in any case.
    Exact,
    /// Host names and header names, which are lower-cased on their way: every form in any case.
    Folded,
}

#[derive(Debug, Clone, Copy)]
struct Info {
    secret: usize,
    needle: Needle,
    encoding: Encoding,
}

/// One string to look for.
#[derive(Debug)]
pub struct Target<'a> {
    pub secret: usize,
    pub needle: Needle,
    pub bytes: &'a [u8],
}

/// Most patterns one SIMD prefilter takes (Teddy's limit).
const PREFILTER_PATTERNS: usize = 64;
/// Below this many bytes, the automaton is run directly: prefilter set-up would cost more.
const PREFILTER_MIN_HAYSTACK: usize = 256;

/// The precomputed automata.
pub struct Matcher {
    /// Raw and base64 forms, case-sensitive; confirms what `prefilters` find.
    exact: AhoCorasick,
    exact_info: Vec<Info>,
    /// SIMD literal searchers (Teddy) over the same patterns, at most
    /// [`PREFILTER_PATTERNS`] each; empty when the CPU has none (then `exact` scans alone).
    prefilters: Vec<packed::Searcher>,
    /// Hex forms, ASCII case-insensitive; run only over runs of hex digits.
    hex: AhoCorasick,
    hex_info: Vec<Info>,
    /// Length of the shortest hex form: shorter runs of hex digits cannot hold one.
    min_hex_len: usize,
    /// Every form, ASCII case-insensitive (host names, header names, redaction).
    folded: AhoCorasick,
    folded_info: Vec<Info>,
    max_len: usize,
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the patterns: they are the secrets.
        f.debug_struct("Matcher")
            .field("patterns", &(self.exact_info.len() + self.hex_info.len()))
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

/// The automata could not be built (pattern set too large for memory limits).
#[derive(Debug, thiserror::Error)]
#[error("--secret: cannot build the leak detector: {0}")]
pub struct BuildError(#[from] aho_corasick::BuildError);

/// Every form of `bytes` that is looked for, with its encoding.
pub fn encoded_forms(bytes: &[u8]) -> Vec<(Encoding, Zeroizing<Vec<u8>>)> {
    let mut forms: Vec<(Encoding, Zeroizing<Vec<u8>>)> =
        vec![(Encoding::Raw, Zeroizing::new(bytes.to_vec()))];
    let mut push = |encoding: Encoding, form: Zeroizing<Vec<u8>>| {
        if form.len() >= MIN_ENCODED_LEN && !forms.iter().any(|(_, f)| **f == *form) {
            forms.push((encoding, form));
        }
    };
    for offset in 0..3 {
        let core = base64_core(bytes, offset);
        let url = Zeroizing::new(
            core.iter()
                .map(|&c| match c {
                    b'+' => b'-',
                    b'/' => b'_',
                    c => c,
                })
                .collect::<Vec<u8>>(),
        );
        push(Encoding::Base64, core);
        push(Encoding::Base64Url, url);
    }
    push(
        Encoding::Hex,
        Zeroizing::new(hex::encode(bytes).into_bytes()),
    );
    forms
}

/// The base64 characters (standard alphabet) that depend only on `bytes` when `bytes` starts
/// `offset` bytes (0..3) after a 3-byte boundary of the encoded stream.
fn base64_core(bytes: &[u8], offset: usize) -> Zeroizing<Vec<u8>> {
    let mut shifted = Zeroizing::new(vec![0u8; offset]);
    shifted.extend_from_slice(bytes);
    let encoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(&*shifted)
            .into_bytes(),
    );
    // Character i holds bits [6i, 6i+6) of the stream; the value occupies bits
    // [8*offset, 8*(offset+len)).
    let start = (8 * offset).div_ceil(6);
    let end = (8 * (offset + bytes.len())) / 6;
    Zeroizing::new(
        encoded
            .get(start..end.max(start))
            .unwrap_or_default()
            .to_vec(),
    )
}

impl Matcher {
    /// Builds the automata for `targets` (each in every form of [`encoded_forms`]).
    pub fn new(targets: &[Target<'_>]) -> Result<Self, BuildError> {
        let mut exact: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        let mut exact_info = Vec::new();
        let mut hex: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        let mut hex_info = Vec::new();
        let mut max_len = 1;
        for target in targets {
            for (encoding, form) in encoded_forms(target.bytes) {
                if form.is_empty() {
                    continue;
                }
                max_len = max_len.max(form.len());
                let info = Info {
                    secret: target.secret,
                    needle: target.needle,
                    encoding,
                };
                if encoding == Encoding::Hex {
                    hex.push(form);
                    hex_info.push(info);
                } else {
                    exact.push(form);
                    exact_info.push(info);
                }
            }
        }
        let build = |case_insensitive: bool, patterns: &[&Zeroizing<Vec<u8>>]| {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::Standard)
                .ascii_case_insensitive(case_insensitive)
                // The automata's own prefilters pick frequent bytes on token-like text and
                // then crawl; ours (Teddy, hex runs) decide where the automata run.
                .prefilter(false)
                .build(patterns.iter().map(|p| p.as_slice()))
        };
        let exact_refs: Vec<_> = exact.iter().collect();
        let hex_refs: Vec<_> = hex.iter().collect();
        let all_refs: Vec<_> = exact.iter().chain(hex.iter()).collect();
        let folded_info = exact_info.iter().chain(hex_info.iter()).copied().collect();
        let min_hex_len = hex.iter().map(|p| p.len()).min().unwrap_or(usize::MAX);
        Ok(Self {
            exact: build(false, &exact_refs)?,
            prefilters: prefilters(&exact),
            exact_info,
            hex: build(true, &hex_refs)?,
            hex_info,
            min_hex_len,
            folded: build(true, &all_refs)?,
            folded_info,
            max_len,
        })
    }

    /// Length of the longest pattern.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// How many raw bytes a match can span at most, decoding included: what a stream must
    /// hold back so that no byte of a match is released before the match is seen.
    pub fn hold_back(&self) -> usize {
        self.max_len * MAX_ESCAPE_LEN.pow(DECODE_LEVELS as u32)
    }

    /// Reports every hit in `hay` (no decoding).
    pub fn scan(
        &self,
        hay: &[u8],
        case: Case,
        decoded: bool,
        f: &mut dyn FnMut(Hit) -> Flow,
    ) -> Flow {
        match case {
            Case::Exact => {
                self.scan_exact(hay, decoded, f)?;
                self.scan_hex(hay, decoded, f)
            }
            Case::Folded => run(&self.folded, &self.folded_info, hay, decoded, f),
        }
    }

    /// Raw and base64 forms. Each prefilter reports the leftmost occurrence of one of its
    /// patterns and resumes after it; every occurrence that starts before that end starts at
    /// or after its start, so confirming `[start, end + max_len)` with the full automaton finds
    /// every overlapping hit too.
    fn scan_exact(&self, hay: &[u8], decoded: bool, f: &mut dyn FnMut(Hit) -> Flow) -> Flow {
        if self.prefilters.is_empty() || hay.len() < PREFILTER_MIN_HAYSTACK {
            return run(&self.exact, &self.exact_info, hay, decoded, f);
        }
        for prefilter in &self.prefilters {
            for m in prefilter.find_iter(hay) {
                let end = (m.end() + self.max_len).min(hay.len());
                run(
                    &self.exact,
                    &self.exact_info,
                    &hay[m.start()..end],
                    decoded,
                    f,
                )?;
            }
        }
        ControlFlow::Continue(())
    }

    /// Hex forms, in any case: only runs of at least `min_hex_len` hex digits can hold one.
    fn scan_hex(&self, hay: &[u8], decoded: bool, f: &mut dyn FnMut(Hit) -> Flow) -> Flow {
        if self.hex_info.is_empty() {
            return ControlFlow::Continue(());
        }
        for range in hex_runs(hay, self.min_hex_len) {
            run(&self.hex, &self.hex_info, &hay[range], decoded, f)?;
        }
        ControlFlow::Continue(())
    }

    /// Reports every hit in `data` and in its decoded views.
    pub fn scan_decoding(&self, data: &[u8], case: Case, f: &mut dyn FnMut(Hit) -> Flow) -> Flow {
        self.scan(data, case, false, f)?;
        let mut current: Cow<'_, [u8]> = Cow::Borrowed(data);
        for _ in 0..DECODE_LEVELS {
            if !has_special(&current) {
                break;
            }
            let mut out = Vec::with_capacity(current.len());
            let mut normalizer = Normalizer::default();
            normalizer.feed(&current, &mut out);
            normalizer.finish(&mut out);
            self.scan(&out, case, true, f)?;
            current = Cow::Owned(out);
        }
        ControlFlow::Continue(())
    }

    /// The byte ranges of `hay` where a real value (not a placeholder) appears in any form and
    /// case, with the secret's index; overlapping ranges are merged.
    pub fn value_spans(&self, hay: &[u8]) -> Vec<(Range<usize>, usize)> {
        let mut spans: Vec<(Range<usize>, usize)> = Vec::new();
        for m in self.folded.find_overlapping_iter(hay) {
            let info = self.folded_info[m.pattern().as_usize()];
            if info.needle == Needle::Value {
                spans.push((m.start()..m.end(), info.secret));
            }
        }
        spans.sort_by_key(|(r, _)| (r.start, r.end));
        let mut merged: Vec<(Range<usize>, usize)> = Vec::with_capacity(spans.len());
        for (range, secret) in spans {
            match merged.last_mut() {
                Some((last, _)) if range.start <= last.end => last.end = last.end.max(range.end),
                _ => merged.push((range, secret)),
            }
        }
        merged
    }
}

/// Teddy searchers over `patterns`, in groups it can take; none when the CPU lacks SIMD.
fn prefilters(patterns: &[Zeroizing<Vec<u8>>]) -> Vec<packed::Searcher> {
    if patterns.is_empty() {
        return Vec::new();
    }
    let groups = patterns.len().div_ceil(PREFILTER_PATTERNS);
    let per_group = patterns.len().div_ceil(groups);
    let mut searchers = Vec::with_capacity(groups);
    for group in patterns.chunks(per_group) {
        let mut builder = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostFirst)
            .builder();
        builder.extend(group.iter().map(|p| p.as_slice()));
        match builder.build() {
            Some(searcher) => searchers.push(searcher),
            // No SIMD (or a pattern set Teddy refuses): the automaton scans alone.
            None => return Vec::new(),
        }
    }
    searchers
}

/// The maximal runs of at least `min` ASCII hex digits in `hay`. Looks at every `min`-th
/// byte only: a run that long always contains one of them.
fn hex_runs(hay: &[u8], min: usize) -> impl Iterator<Item = Range<usize>> + '_ {
    let min = min.max(1);
    let mut i = min - 1;
    std::iter::from_fn(move || {
        while i < hay.len() {
            if !hay[i].is_ascii_hexdigit() {
                i += min;
                continue;
            }
            let mut start = i;
            while start > 0 && hay[start - 1].is_ascii_hexdigit() {
                start -= 1;
            }
            let mut end = i + 1;
            while end < hay.len() && hay[end].is_ascii_hexdigit() {
                end += 1;
            }
            // hay[end] is not a hex digit: the next run starts after it.
            i = end + min;
            if end - start >= min {
                return Some(start..end);
            }
        }
        None
    })
}

fn run(
    ac: &AhoCorasick,
    info: &[Info],
    hay: &[u8],
    decoded: bool,
    f: &mut dyn FnMut(Hit) -> Flow,
) -> Flow {
    if info.is_empty() {
        return ControlFlow::Continue(());
    }
    for m in ac.find_overlapping_iter(hay) {
        let i = info[m.pattern().as_usize()];
        f(Hit {
            secret: i.secret,
            needle: i.needle,
            encoding: i.encoding,
            decoded,
        })?;
    }
    ControlFlow::Continue(())
}

/// Whether the decoded view of `data` can differ from `data`.
pub fn has_special(data: &[u8]) -> bool {
    memchr::memchr3(b'%', b'\\', b'\n', data).is_some() || memchr::memchr(b'\r', data).is_some()
}

/// Where the next byte the decoder handles is, at or after `from` (`s.len()` if none).
fn next_special(s: &[u8], from: usize) -> usize {
    let rest = &s[from..];
    let a = memchr::memchr3(b'%', b'\\', b'\n', rest).unwrap_or(rest.len());
    let b = memchr::memchr(b'\r', &rest[..a]).unwrap_or(a);
    from + b
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes the escapes of the decoded view, incrementally: an escape cut by the end of one
/// chunk is completed by the next.
#[derive(Debug, Default)]
pub struct Normalizer {
    /// An escape that the previous chunk ended in the middle of (at most 5 bytes).
    pending: Vec<u8>,
}

/// What an escape at the start of some bytes turned out to be.
enum Escape {
    /// Decoded: push these bytes (maybe none), consume this many input bytes.
    Decoded(Option<char>, usize),
    /// Not an escape: the first byte is literal.
    Literal,
    /// Possibly an escape, but the input ends before we can tell.
    Incomplete,
}

/// `digits` hex digits starting at `at`, or what is missing.
fn hex_digits(s: &[u8], at: usize, digits: usize) -> Result<u32, bool> {
    let available = s.get(at..).unwrap_or_default();
    let mut value = 0u32;
    for i in 0..digits {
        match available.get(i) {
            None => return Err(true), // incomplete
            Some(&b) => match hex_value(b) {
                Some(v) => value = value * 16 + u32::from(v),
                None => return Err(false), // not hex: literal
            },
        }
    }
    Ok(value)
}

fn escape(s: &[u8], i: usize) -> Escape {
    let numeric = |at: usize, digits: usize, len: usize| match hex_digits(s, at, digits) {
        Ok(v) => match char::from_u32(v) {
            Some(c) => Escape::Decoded(Some(c), len),
            None => Escape::Literal,
        },
        Err(true) => Escape::Incomplete,
        Err(false) => Escape::Literal,
    };
    match s[i] {
        b'\r' | b'\n' => Escape::Decoded(None, 1),
        b'%' => match hex_digits(s, i + 1, 2) {
            // A byte, not a code point: `%C3%A9` is two bytes of UTF-8.
            Ok(v) => Escape::Decoded(Some(char::from(v as u8)), 3),
            Err(true) => Escape::Incomplete,
            Err(false) => Escape::Literal,
        },
        _ => match s.get(i + 1) {
            None => Escape::Incomplete,
            Some(b'u') => match numeric(i + 2, 4, 6) {
                Escape::Literal => Escape::Decoded(Some('u'), 2),
                other => other,
            },
            Some(b'x') => match numeric(i + 2, 2, 4) {
                Escape::Literal => Escape::Decoded(Some('x'), 2),
                other => other,
            },
            Some(b'n' | b'r') => Escape::Decoded(None, 2),
            Some(b't') => Escape::Decoded(Some('\t'), 2),
            Some(&c) => Escape::Decoded(Some(char::from(c)), 2),
        },
    }
}

impl Normalizer {
    /// Whether no escape is waiting for more input.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Appends the decoded view of `input` to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.pending.is_empty() {
            let rest = decode(input, false, out);
            self.pending.extend_from_slice(&input[rest..]);
        } else {
            let mut joined = std::mem::take(&mut self.pending);
            joined.extend_from_slice(input);
            let rest = decode(&joined, false, out);
            self.pending.extend_from_slice(&joined[rest..]);
        }
    }

    /// The input ended: an unfinished escape is literal text.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let pending = std::mem::take(&mut self.pending);
        decode(&pending, true, out);
    }
}

/// Decodes `s` into `out`; returns where an unfinished escape starts (`s.len()` if none).
/// With `last`, nothing is unfinished.
fn decode(s: &[u8], last: bool, out: &mut Vec<u8>) -> usize {
    let mut i = 0;
    while i < s.len() {
        let run = next_special(s, i);
        out.extend_from_slice(&s[i..run]);
        i = run;
        if i >= s.len() {
            break;
        }
        match escape(s, i) {
            Escape::Decoded(c, len) => {
                match c {
                    // A `%XX` byte is pushed as is, even above 0x7f.
                    Some(c) if s[i] == b'%' => out.push(c as u32 as u8),
                    Some(c) => {
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                    None => {}
                }
                i += len;
            }
            Escape::Incomplete if !last => return i,
            Escape::Incomplete | Escape::Literal => {
                out.push(s[i]);
                i += 1;
            }
        }
    }
    s.len()
}

/// The last bytes of a stream, to find matches that straddle two chunks.
#[derive(Debug, Default)]
struct Track {
    tail: Vec<u8>,
    window: Vec<u8>,
}

impl Track {
    /// Scans what straddles the previous data and `data`, then (with `inner`) `data` itself.
    fn scan(
        &mut self,
        m: &Matcher,
        data: &[u8],
        inner: bool,
        decoded: bool,
        f: &mut dyn FnMut(Hit) -> Flow,
    ) -> Flow {
        if data.is_empty() {
            return ControlFlow::Continue(());
        }
        let keep = m.max_len - 1;
        if !self.tail.is_empty() {
            self.window.clear();
            self.window.extend_from_slice(&self.tail);
            self.window.extend_from_slice(&data[..data.len().min(keep)]);
            m.scan(&self.window, Case::Exact, decoded, f)?;
        }
        if inner {
            m.scan(data, Case::Exact, decoded, f)?;
        }
        if data.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - keep..]);
        } else {
            self.tail.extend_from_slice(data);
            let excess = self.tail.len().saturating_sub(keep);
            self.tail.drain(..excess);
        }
        ControlFlow::Continue(())
    }
}

#[derive(Debug, Default)]
struct Layer {
    normalizer: Normalizer,
    track: Track,
    out: Vec<u8>,
}

/// Scans a stream chunk by chunk, raw and decoded, including matches split across chunks.
#[derive(Debug, Default)]
pub struct StreamScanner {
    raw: Track,
    layers: [Layer; DECODE_LEVELS],
}

impl StreamScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans the next chunk of the stream.
    pub fn feed(&mut self, m: &Matcher, chunk: &[u8], f: &mut dyn FnMut(Hit) -> Flow) -> Flow {
        self.raw.scan(m, chunk, true, false, f)?;
        // Where the input of the next layer is: the chunk, or the output of layer `j`.
        let mut source: Option<usize> = None;
        for i in 0..DECODE_LEVELS {
            let (before, after) = self.layers.split_at_mut(i);
            let input: &[u8] = match source {
                None => chunk,
                Some(j) => &before[j].out,
            };
            let layer = &mut after[0];
            if layer.normalizer.is_idle() && !has_special(input) {
                // The decoded view is the input itself, which the previous level scanned:
                // only what straddles this view's previous chunk is new.
                layer.track.scan(m, input, false, true, f)?;
            } else {
                layer.out.clear();
                layer.normalizer.feed(input, &mut layer.out);
                layer.track.scan(m, &layer.out, true, true, f)?;
                source = Some(i);
            }
        }
        ControlFlow::Continue(())
    }

    /// The stream ended: unfinished escapes are literal text; scans what they complete.
    pub fn finish(&mut self, m: &Matcher, f: &mut dyn FnMut(Hit) -> Flow) -> Flow {
        let mut flushed: Vec<u8> = Vec::new();
        for layer in &mut self.layers {
            layer.out.clear();
            if !flushed.is_empty() {
                layer.normalizer.feed(&flushed, &mut layer.out);
            }
            layer.normalizer.finish(&mut layer.out);
            layer.track.scan(m, &layer.out, true, true, f)?;
            flushed = std::mem::take(&mut layer.out);
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};

    const VALUE: &[u8] = b"ghp_R3alT0ken+/value?&=xyz0123456789";
    const PLACEHOLDER: &[u8] = b"httpjail-secret-TOKEN-0123456789abcdef0123456789abcdef";

    fn matcher() -> Matcher {
        Matcher::new(&[
            Target {
                secret: 0,
                needle: Needle::Placeholder,
                bytes: PLACEHOLDER,
            },
            Target {
                secret: 0,
                needle: Needle::Value,
                bytes: VALUE,
            },
            Target {
                secret: 1,
                needle: Needle::Value,
                bytes: b"another-secret-value-42",
            },
        ])
        .unwrap()
    }

    fn first(m: &Matcher, data: &[u8], case: Case) -> Option<Hit> {
        match m.scan_decoding(data, case, &mut ControlFlow::Break) {
            ControlFlow::Break(hit) => Some(hit),
            ControlFlow::Continue(()) => None,
        }
    }

    fn all(m: &Matcher, data: &[u8]) -> Vec<Hit> {
        let mut hits = Vec::new();
        let _ = m.scan_decoding(data, Case::Exact, &mut |h| {
            hits.push(h);
            ControlFlow::Continue(())
        });
        hits
    }

    fn streamed(m: &Matcher, chunks: &[&[u8]]) -> Option<Hit> {
        let mut s = StreamScanner::new();
        for c in chunks {
            if let ControlFlow::Break(h) = s.feed(m, c, &mut ControlFlow::Break) {
                return Some(h);
            }
        }
        match s.finish(m, &mut ControlFlow::Break) {
            ControlFlow::Break(h) => Some(h),
            ControlFlow::Continue(()) => None,
        }
    }

    fn percent_all(b: &[u8]) -> String {
        b.iter().map(|c| format!("%{c:02X}")).collect()
    }

    /// Escapes every other byte, lower-case hex digits.
    fn percent_some(b: &[u8]) -> String {
        b.iter()
            .enumerate()
            .map(|(i, &c)| {
                if i % 2 == 0 {
                    format!("%{c:02x}")
                } else {
                    char::from(c).to_string()
                }
            })
            .collect()
    }

    #[test]
    fn base64_cores_are_found_at_every_offset_inside_longer_blobs() {
        let m = matcher();
        for prefix_len in 0..6 {
            for suffix_len in 0..4 {
                let mut blob = vec![b'A'; prefix_len];
                blob.extend_from_slice(VALUE);
                blob.extend(std::iter::repeat_n(b'Z', suffix_len));
                for engine in [STANDARD, URL_SAFE] {
                    let text = engine.encode(&blob);
                    let hit = first(&m, text.as_bytes(), Case::Exact)
                        .unwrap_or_else(|| panic!("missed {text} (prefix {prefix_len})"));
                    assert_eq!((hit.secret, hit.needle), (0, Needle::Value));
                }
                let unpadded = URL_SAFE_NO_PAD.encode(&blob);
                assert!(first(&m, unpadded.as_bytes(), Case::Exact).is_some());
            }
        }
    }

    #[test]
    fn every_encoding_of_value_and_placeholder_is_found() {
        let m = matcher();
        for (needle, bytes) in [(Needle::Placeholder, PLACEHOLDER), (Needle::Value, VALUE)] {
            let forms = [
                String::from_utf8(bytes.to_vec()).unwrap(),
                STANDARD.encode(bytes),
                URL_SAFE_NO_PAD.encode(bytes),
                hex::encode(bytes),
                hex::encode_upper(bytes),
                // Mixed-case hex.
                hex::encode(bytes)
                    .chars()
                    .enumerate()
                    .map(|(i, c)| {
                        if i % 3 == 0 {
                            c.to_ascii_uppercase()
                        } else {
                            c
                        }
                    })
                    .collect(),
                percent_all(bytes),
                percent_some(bytes),
                // Double percent-encoding.
                percent_all(bytes).replace('%', "%25"),
                // Percent-encoded base64 (what a URL query does to `+/=`).
                percent_all(STANDARD.encode(bytes).as_bytes()),
                // JSON / JS escapes.
                bytes.iter().map(|c| format!("\\u{c:04x}")).collect(),
                bytes.iter().map(|c| format!("\\x{c:02x}")).collect(),
            ];
            for form in forms {
                let short = format!("{{\"data\": \"prefix {form} suffix\"}}");
                // Long enough for the SIMD prefilter path, with hex-looking filler around.
                let long = format!("{}{short}{}", "deadbeef, ".repeat(50), " cafe".repeat(60));
                for text in [short, long] {
                    let hit = first(&m, text.as_bytes(), Case::Exact)
                        .unwrap_or_else(|| panic!("missed {needle:?} in {text}"));
                    assert_eq!((hit.secret, hit.needle), (0, needle), "{text}");
                }
            }
        }
    }

    #[test]
    fn line_wrapped_base64_is_found() {
        let m = matcher();
        let mut blob = vec![7u8; 31];
        blob.extend_from_slice(VALUE);
        let b64 = STANDARD.encode(&blob);
        let wrapped: String = b64
            .as_bytes()
            .chunks(20)
            .map(|c| format!("{}\r\n", String::from_utf8_lossy(c)))
            .collect();
        assert!(first(&m, wrapped.as_bytes(), Case::Exact).is_some());
    }

    #[test]
    fn unrelated_data_is_clean_and_case_matters_except_for_hex() {
        let m = matcher();
        assert_eq!(first(&m, b"GET /repos?page=2 HTTP/1.1", Case::Exact), None);
        assert_eq!(first(&m, &[0u8; 4096], Case::Exact), None);
        let upper = String::from_utf8(VALUE.to_vec()).unwrap().to_uppercase();
        assert_eq!(
            first(&m, upper.as_bytes(), Case::Exact),
            None,
            "the raw form is case-sensitive"
        );
        assert!(
            first(&m, upper.as_bytes(), Case::Folded).is_some(),
            "host and header names fold case: every form is looked for in any case"
        );
    }

    #[test]
    fn percent_sign_and_backslash_alone_do_not_confuse_the_decoder() {
        let mut out = Vec::new();
        let mut n = Normalizer::default();
        n.feed(b"100% \\q \\u12 %zz %4", &mut out);
        n.finish(&mut out);
        assert_eq!(out, b"100% q u12 %zz %4");
        let mut out = Vec::new();
        let mut n = Normalizer::default();
        n.feed(b"a%4", &mut out);
        assert!(!n.is_idle());
        n.feed(b"1\\u00", &mut out);
        n.feed(b"42\\", &mut out);
        n.feed(b"/\r\nz", &mut out);
        n.finish(&mut out);
        assert_eq!(out, b"aAB/z");
    }

    #[test]
    fn matches_split_across_chunks_are_found_at_every_split_point() {
        let m = matcher();
        let encoded = [
            VALUE.to_vec(),
            PLACEHOLDER.to_vec(),
            percent_all(VALUE).into_bytes(),
            STANDARD.encode(VALUE).into_bytes(),
            VALUE
                .iter()
                .map(|c| format!("\\u{c:04x}"))
                .collect::<String>()
                .into_bytes(),
        ];
        for form in encoded {
            let mut body = b"{\"padding\": \"........\", \"x\": \"".to_vec();
            body.extend_from_slice(&form);
            body.extend_from_slice(b"\"}");
            for split in 1..body.len() {
                let (a, b) = body.split_at(split);
                assert!(
                    streamed(&m, &[a, b]).is_some(),
                    "missed when split at {split}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            // One byte at a time.
            let bytes: Vec<&[u8]> = body.chunks(1).collect();
            assert!(streamed(&m, &bytes).is_some());
        }
        let clean = b"nothing to see here %41 \\u0041 and more";
        let bytes: Vec<&[u8]> = clean.chunks(3).collect();
        assert_eq!(streamed(&m, &bytes), None);
    }

    #[test]
    fn all_hits_are_reported_for_the_caller_to_judge() {
        let m = matcher();
        let text = [PLACEHOLDER, b" and ", b"another-secret-value-42"].concat();
        let hits = all(&m, &text);
        assert!(
            hits.iter()
                .any(|h| h.secret == 0 && h.needle == Needle::Placeholder)
        );
        assert!(
            hits.iter()
                .any(|h| h.secret == 1 && h.needle == Needle::Value)
        );
    }

    #[test]
    fn value_spans_cover_raw_and_encoded_values_only() {
        let m = matcher();
        let b64 = STANDARD.encode(VALUE);
        let text = format!(
            "a {} b {b64} c {}",
            String::from_utf8_lossy(VALUE),
            String::from_utf8_lossy(PLACEHOLDER)
        );
        let spans = m.value_spans(text.as_bytes());
        assert_eq!(spans.len(), 2, "{spans:?}");
        assert_eq!(&text.as_bytes()[spans[0].0.clone()], VALUE);
        assert!(b64.contains(&text[spans[1].0.clone()]));
    }

    #[test]
    fn hex_runs_finds_every_long_enough_run() {
        let hay = b"xx0123456789abcdefyy0123zzABCDEF0123456789";
        let runs: Vec<_> = hex_runs(hay, 10).collect();
        assert_eq!(runs, [2..18, 26..42]);
        for min in 1..20 {
            let expected: Vec<_> = {
                let mut v = Vec::new();
                let mut i = 0;
                while i < hay.len() {
                    if hay[i].is_ascii_hexdigit() {
                        let start = i;
                        while i < hay.len() && hay[i].is_ascii_hexdigit() {
                            i += 1;
                        }
                        if i - start >= min {
                            v.push(start..i);
                        }
                    } else {
                        i += 1;
                    }
                }
                v
            };
            assert_eq!(
                hex_runs(hay, min).collect::<Vec<_>>(),
                expected,
                "min {min}"
            );
        }
    }

    #[test]
    fn overlapping_hits_behind_a_prefilter_match_are_reported() {
        // Secret 1's value starts inside secret 0's: the prefilter reports only the first
        // occurrence and resumes after it, the confirmation must still see the second.
        let m = Matcher::new(&[
            Target {
                secret: 0,
                needle: Needle::Placeholder,
                bytes: b"first-secret-ABCDEFGH",
            },
            Target {
                secret: 1,
                needle: Needle::Value,
                bytes: b"ABCDEFGH-second-secret",
            },
        ])
        .unwrap();
        for pad in [0, 300] {
            let text = format!("{0}first-secret-ABCDEFGH-second-secret{0}", ".".repeat(pad));
            let hits = all(&m, text.as_bytes());
            assert!(hits.iter().any(|h| h.secret == 0), "{hits:?}");
            assert!(hits.iter().any(|h| h.secret == 1), "pad {pad}: {hits:?}");
        }
    }

    #[test]
    fn short_values_get_no_short_encoded_forms() {
        for (_, form) in encoded_forms(b"abc") {
            assert!(form.len() >= MIN_ENCODED_LEN || *form == b"abc".to_vec());
        }
    }
}

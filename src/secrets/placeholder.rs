//! Placeholders: `httpjail-secret-<VAR>-<32 hex digits>`, with 128 bits from the OS random
//! source, new on every run, so that a placeholder cannot be guessed nor reused across runs.
//!
//! Every character is unreserved in URLs and plain in JSON, headers and shells, so clients
//! pass a placeholder on unchanged wherever they put the variable.

/// What every placeholder starts with: a cheap first test before looking for one.
pub const PREFIX: &str = "httpjail-secret-";

/// Random bytes per placeholder (128 bits).
const RANDOM_BYTES: usize = 16;

/// A fresh placeholder for `var`.
pub fn generate(var: &str) -> Result<String, getrandom::Error> {
    let mut random = [0u8; RANDOM_BYTES];
    getrandom::fill(&mut random)?;
    Ok(format!("{PREFIX}{var}-{}", hex::encode(random)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_fresh_and_well_formed() {
        let a = generate("GITHUB_TOKEN").unwrap();
        let b = generate("GITHUB_TOKEN").unwrap();
        assert_ne!(a, b, "a new random part every time");
        let random = a.strip_prefix("httpjail-secret-GITHUB_TOKEN-").unwrap();
        assert_eq!(random.len(), 2 * RANDOM_BYTES);
        assert!(random.bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "only URL-unreserved characters: {a}"
        );
    }
}

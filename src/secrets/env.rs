//! Environments of the processes we start: the jailed command gets placeholders, the rule
//! programs get no secret at all.
//!
//! Both work on the environment as a list of pairs, the form [`crate::env::command_env`]
//! produces, so that every mode (weak, strong, docker) patches its command's environment the
//! same way: build it, then call [`Secrets::patch_env`] on it.

use std::ffi::{OsStr, OsString};
use std::ops::ControlFlow;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use zeroize::Zeroizing;

use super::Secrets;
use super::scan::{Case, Matcher, Needle, Target};
use crate::config::SecretSpec;

impl Secrets {
    /// Puts the placeholders in a command's environment:
    /// - each secret's variable is set to its placeholder (added when missing);
    /// - any other variable holding a real value as is (e.g. `GH_TOKEN=$GITHUB_TOKEN`) gets the
    ///   placeholder in its place, so it works through the proxy too;
    /// - any other variable holding a real value in another form (base64 in a URL with
    ///   credentials, hex...) is removed, with a warning that names it.
    pub fn patch_env(&self, env: &mut Vec<(OsString, OsString)>) {
        let mut removed = Vec::new();
        // Copies of real values that we drop are zeroed first.
        let scrub = |old: OsString| drop(Zeroizing::new(old.into_vec()));
        env.retain_mut(|(name, value)| {
            if let Some(entry) = self
                .entries
                .iter()
                .find(|e| name.as_os_str() == OsStr::new(&e.var))
            {
                scrub(std::mem::replace(value, OsString::from(&entry.placeholder)));
                return true;
            }
            let mut bytes = Zeroizing::new(value.as_bytes().to_vec());
            let mut changed = false;
            for entry in &self.entries {
                let value = entry.value.as_bytes();
                if let Some(replaced) = replace_all(&bytes, value, entry.placeholder.as_bytes()) {
                    bytes = Zeroizing::new(replaced);
                    changed = true;
                }
            }
            if holds_value(&self.matcher, &bytes) {
                removed.push(name.to_string_lossy().into_owned());
                scrub(std::mem::take(value));
                return false;
            }
            if changed {
                scrub(std::mem::replace(value, OsString::from_vec(bytes.to_vec())));
            }
            true
        });
        for entry in &self.entries {
            if !env
                .iter()
                .any(|(name, _)| name.as_os_str() == OsStr::new(&entry.var))
            {
                env.push((entry.var.clone().into(), entry.placeholder.clone().into()));
            }
        }
        for name in removed {
            tracing::warn!(
                "--secret: `{name}` holds a secret's value in an encoded form; it is not passed to the command"
            );
        }
    }
}

/// The variables a rule program (`--sh`, `--proc`) must not inherit: every secret variable,
/// and every other variable that holds a secret's value in any form. `env` is httpjail's own
/// environment.
pub fn hidden_vars(
    specs: &[SecretSpec],
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<OsString> {
    if specs.is_empty() {
        return Vec::new();
    }
    let targets: Vec<Target<'_>> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| Target {
            secret: i,
            needle: Needle::Value,
            bytes: s.value.as_bytes(),
        })
        .collect();
    let matcher = match Matcher::new(&targets) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!("{e}; rule programs get only the secret variables removed");
            None
        }
    };
    let mut hidden: Vec<OsString> = specs.iter().map(|s| OsString::from(&s.var)).collect();
    for (name, value) in env {
        if hidden.contains(&name) {
            continue;
        }
        let raw = specs
            .iter()
            .any(|s| memchr::memmem::find(value.as_bytes(), s.value.as_bytes()).is_some());
        if raw
            || matcher
                .as_ref()
                .is_some_and(|m| holds_value(m, value.as_bytes()))
        {
            hidden.push(name);
        }
    }
    hidden
}

/// Whether `bytes` holds a real value in any form or case.
fn holds_value(matcher: &Matcher, bytes: &[u8]) -> bool {
    matcher
        .scan_decoding(bytes, Case::Folded, &mut |hit| {
            if hit.needle == Needle::Value {
                ControlFlow::Break(hit)
            } else {
                ControlFlow::Continue(())
            }
        })
        .is_break()
}

fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Option<Vec<u8>> {
    let finder = memchr::memmem::Finder::new(from);
    let mut positions = finder.find_iter(haystack).peekable();
    positions.peek()?;
    let mut out = Vec::with_capacity(haystack.len());
    let mut last = 0;
    for at in positions {
        out.extend_from_slice(&haystack[last..at]);
        out.extend_from_slice(to);
        last = at + from.len();
    }
    out.extend_from_slice(&haystack[last..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::tests::{VALUE, secrets, spec};
    use base64::Engine as _;

    fn pairs(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn get<'a>(env: &'a [(OsString, OsString)], key: &str) -> Vec<&'a OsString> {
        env.iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .collect()
    }

    #[test]
    fn the_command_gets_placeholders_and_no_value_in_any_variable() {
        let s = secrets();
        let ph = s.placeholder("TOKEN").unwrap().to_owned();
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("user:{VALUE}"));
        let mut env = pairs(&[
            ("PATH", "/bin"),
            ("TOKEN", VALUE),
            ("GH_TOKEN", VALUE),
            ("PREFIXED", &format!("token {VALUE}")),
            ("ENCODED", &format!("Authorization: Basic {b64}")),
        ]);
        s.patch_env(&mut env);
        assert_eq!(get(&env, "TOKEN"), [&OsString::from(&ph)]);
        assert_eq!(get(&env, "GH_TOKEN"), [&OsString::from(&ph)]);
        assert_eq!(
            get(&env, "PREFIXED"),
            [&OsString::from(format!("token {ph}"))]
        );
        assert!(
            get(&env, "ENCODED").is_empty(),
            "an encoded value cannot be swapped"
        );
        assert_eq!(get(&env, "PATH"), ["/bin"]);
        for (k, v) in &env {
            assert!(
                !v.to_string_lossy().contains(VALUE),
                "{k:?} still holds the value"
            );
        }
        // A builder that did not start from our environment still gets the placeholder.
        let mut bare = pairs(&[("PATH", "/bin")]);
        s.patch_env(&mut bare);
        assert_eq!(get(&bare, "TOKEN"), [&OsString::from(&ph)]);
    }

    #[test]
    fn rule_programs_lose_every_variable_holding_a_value() {
        let specs = [spec("TOKEN", VALUE, "api.example.test")];
        let hex = hex::encode(VALUE);
        let hidden = hidden_vars(
            &specs,
            pairs(&[
                ("PATH", "/bin"),
                ("TOKEN", VALUE),
                ("COPY", VALUE),
                ("HEX", &hex),
            ]),
        );
        assert_eq!(hidden, ["TOKEN", "COPY", "HEX"]);
        assert!(hidden_vars(&[], pairs(&[("TOKEN", VALUE)])).is_empty());
    }
}

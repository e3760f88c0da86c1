//! Secrets by reference: `env:NAME` or `file:/path`, resolved when used, never logged.
//!
//! Config files get copied into tickets and repositories; tokens must not be in them. A
//! reference is resolved at each use, so a rotated file is picked up without a reload.

use std::fmt;
use std::path::PathBuf;

#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

/// A resolved secret. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl SecretRef {
    /// Parses `env:NAME` or `file:/abs/path`; anything else is refused, so a literal token
    /// cannot be pasted into a config by mistake.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(name) = text.strip_prefix("env:") {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(format!(
                    "`env:{name}` does not name an environment variable"
                ));
            }
            Ok(SecretRef::Env(name.to_string()))
        } else if let Some(path) = text.strip_prefix("file:") {
            if !path.starts_with('/') {
                return Err(format!("`file:{path}` must be an absolute path"));
            }
            Ok(SecretRef::File(PathBuf::from(path)))
        } else {
            Err("secrets are given by reference only: `env:NAME` or `file:/path` (a literal value would end up in logs and repositories)".into())
        }
    }

    /// Reads the secret now. The error names the reference, never a value.
    pub fn resolve(&self) -> Result<Secret, String> {
        match self {
            SecretRef::Env(name) => std::env::var(name)
                .map(Secret)
                .map_err(|_| format!("environment variable {name} is not set")),
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map(|s| Secret(s.trim_end_matches(['\n', '\r']).to_string()))
                .map_err(|e| format!("cannot read secret file {}: {e}", path.display())),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_references_only() {
        assert_eq!(
            SecretRef::parse("env:TOKEN"),
            Ok(SecretRef::Env("TOKEN".into()))
        );
        assert_eq!(
            SecretRef::parse("file:/etc/t"),
            Ok(SecretRef::File("/etc/t".into()))
        );
        assert!(SecretRef::parse("hunter2").is_err());
        assert!(SecretRef::parse("file:relative").is_err());
        assert!(SecretRef::parse("env:").is_err());
    }

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}

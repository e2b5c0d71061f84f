//! Secrets given as `k = "…"`, `k_file = "/path"` or `k_env = "VAR"`.
//!
//! A secret is resolved only when a connector needs it, and the resolved value lives
//! in a [`Secret`] whose `Debug` and `Display` never show it, so it cannot leak into
//! logs, reports or error messages by accident, and whose memory is wiped when
//! it is dropped. The names of `*_env` variables are remembered so that hooks and
//! `postmap` do not inherit them; a secret file others can read draws a warning.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;

use zeroize::Zeroize;

/// Every environment variable a `*_env` key of the loaded config names.
static SECRET_ENV: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// The environment variables that hold secrets: removed from the environment
/// of every program rcptsync runs (hooks, `postmap`).
pub fn env_names() -> Vec<String> {
    SECRET_ENV.lock().map(|s| s.iter().cloned().collect()).unwrap_or_default()
}

/// Where a secret comes from, as written in the config.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    Literal(String),
    File(PathBuf),
    Env(String),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Literal(_) => f.write_str("Literal(<redacted>)"),
            SecretSource::File(p) => write!(f, "File({})", p.display()),
            SecretSource::Env(v) => write!(f, "Env({v})"),
        }
    }
}

/// A secret as written literally in the config file: deserialises like a string,
/// never prints.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Literal(pub String);

impl fmt::Debug for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A resolved secret value. Never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value obtained at run time (e.g. an access token) so that it is
    /// redacted wherever it is printed.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl zeroize::ZeroizeOnDrop for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a secret could not be read. Names the key and the place, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{key}_file: cannot read {path}: {err}")]
    File { key: String, path: PathBuf, err: std::io::Error },
    #[error("{key}_env: environment variable {var} is not set")]
    EnvMissing { key: String, var: String },
    #[error("{key}: the secret is empty")]
    Empty { key: String },
}

impl SecretSource {
    /// Builds the source from the three optional config keys; more than one set is
    /// an error message for the config validator.
    pub fn from_keys(
        key: &str,
        literal: Option<String>,
        file: Option<PathBuf>,
        env: Option<String>,
    ) -> Result<Option<SecretSource>, String> {
        match (literal, file, env) {
            (None, None, None) => Ok(None),
            (Some(v), None, None) => Ok(Some(SecretSource::Literal(v))),
            (None, Some(p), None) => Ok(Some(SecretSource::File(p))),
            (None, None, Some(v)) => {
                if let Ok(mut names) = SECRET_ENV.lock() {
                    names.insert(v.clone());
                }
                Ok(Some(SecretSource::Env(v)))
            }
            _ => Err(format!("set only one of {key}, {key}_file and {key}_env")),
        }
    }

    /// Reads the secret. A file's trailing newline is removed (files written with
    /// `echo` end with one); nothing else is trimmed.
    pub fn resolve(&self, key: &str) -> Result<Secret, SecretError> {
        let value = match self {
            SecretSource::Literal(v) => v.clone(),
            SecretSource::File(path) => {
                crate::secure_fs::warn_if_readable_by_others(path, &format!("{key}_file"));
                let mut v = std::fs::read_to_string(path).map_err(|err| SecretError::File {
                    key: key.to_string(),
                    path: path.clone(),
                    err,
                })?;
                while v.ends_with('\n') || v.ends_with('\r') {
                    v.pop();
                }
                v
            }
            SecretSource::Env(var) => {
                std::env::var(var).map_err(|_| SecretError::EnvMissing { key: key.to_string(), var: var.clone() })?
            }
        };
        if value.is_empty() {
            return Err(SecretError::Empty { key: key.to_string() });
        }
        Ok(Secret(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_wiped_and_env_names_remembered() {
        // The value's memory is zeroed on drop (checked by the type, since
        // reading freed memory is not something a test may do).
        fn wipes_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wipes_on_drop::<Secret>();
        SecretSource::from_keys("password", None, None, Some("RCPTSYNC_TEST_PW_VAR".into())).unwrap();
        assert!(env_names().contains(&"RCPTSYNC_TEST_PW_VAR".to_string()));
    }

    #[test]
    fn only_one_form_allowed() {
        assert!(SecretSource::from_keys("password", None, None, None).unwrap().is_none());
        let err = SecretSource::from_keys("password", Some("x".into()), None, Some("V".into())).unwrap_err();
        assert!(err.contains("password_file"), "{err}");
    }

    #[test]
    fn file_secret_loses_trailing_newline_and_never_prints() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cr3t-value\n").unwrap();
        let s = SecretSource::File(p).resolve("password").unwrap();
        assert_eq!(s.expose(), "s3cr3t-value");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        let lit = SecretSource::Literal("s3cr3t-value".into());
        assert!(!format!("{lit:?}").contains("s3cr3t"));
    }

    #[test]
    fn missing_env_and_file_name_the_key_not_the_value() {
        let e = SecretSource::Env("RCPTSYNC_TEST_SURELY_UNSET_VAR".into())
            .resolve("bind_password")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bind_password_env") && e.contains("RCPTSYNC_TEST_SURELY_UNSET_VAR"));
        let e = SecretSource::File("/nonexistent/pw".into()).resolve("password").unwrap_err();
        assert!(e.to_string().starts_with("password_file: cannot read /nonexistent/pw"));
        let e = SecretSource::Literal(String::new()).resolve("password").unwrap_err();
        assert_eq!(e.to_string(), "password: the secret is empty");
    }
}

//! `[[output]]`: one rendered file, with its optional `postmap`, `check` and
//! `reload` hooks. The writer owns this section; `config` only composes it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::template::{TemplateRef, Templates};
use crate::secret::{Literal, SecretSource};
use crate::section::{Checker, parse_duration, valid_name};

/// The `postmap` database types rcptsync can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapType {
    Hash,
    Btree,
    Lmdb,
    Cdb,
}

impl MapType {
    pub fn as_str(self) -> &'static str {
        match self {
            MapType::Hash => "hash",
            MapType::Btree => "btree",
            MapType::Lmdb => "lmdb",
            MapType::Cdb => "cdb",
        }
    }

    /// The suffix `postmap` appends to the source file name.
    pub fn suffix(self) -> &'static str {
        match self {
            MapType::Hash | MapType::Btree => ".db",
            MapType::Lmdb => ".lmdb",
            MapType::Cdb => ".cdb",
        }
    }
}

/// `[[output]]` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    name: String,
    template: Option<String>,
    template_file: Option<PathBuf>,
    path: PathBuf,
    postmap: Option<MapType>,
    check: Option<Vec<String>>,
    reload: Option<Vec<String>>,
    mode: Option<String>,
    hook_timeout: Option<String>,
    hash_salt: Option<Literal>,
    hash_salt_file: Option<PathBuf>,
    hash_salt_env: Option<String>,
}

/// A validated output.
#[derive(Debug, Clone)]
pub struct OutputConfig {
    pub name: String,
    pub template: TemplateRef,
    pub path: PathBuf,
    pub postmap: Option<MapType>,
    pub check: Option<Vec<String>>,
    pub reload: Option<Vec<String>>,
    /// Mode for a newly created file; an existing file keeps its own.
    pub mode: Option<u32>,
    pub hook_timeout: Duration,
    /// Secret prefixed to each address by the hashed templates.
    pub hash_salt: Option<SecretSource>,
}

/// Default timeout for `postmap`, `check` and `reload`.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(120);

impl OutputConfig {
    /// Validates one `[[output]]` table; `templates` resolves `template = NAME`.
    pub fn from_toml(c: &mut Checker, at: &str, value: toml::Value, templates: &Templates) -> Option<OutputConfig> {
        let raw = c.section::<RawOutput>(at, value)?;
        let before = c.count();
        if !valid_name(&raw.name) {
            c.push(format!("{at}.name"), format!("{:?} may only contain letters, digits, '.', '_' and '-'", raw.name));
        }
        let template = match (&raw.template, &raw.template_file) {
            (Some(_), Some(_)) => {
                c.push(format!("{at}.template"), "set template or template_file, not both".into());
                None
            }
            (None, None) => {
                c.push(
                    format!("{at}.template"),
                    format!("is required (one of {}), or set template_file", templates.names().join(", ")),
                );
                None
            }
            (Some(name), None) => match templates.get(name) {
                Some(t) => Some(t),
                None => {
                    c.push(
                        format!("{at}.template"),
                        format!("unknown template {name:?}; built-in: {}", templates.names().join(", ")),
                    );
                    None
                }
            },
            (None, Some(file)) => {
                let file = c.abs(file.clone());
                match std::fs::read_to_string(&file) {
                    Ok(src) => Some(TemplateRef::user(file.display().to_string(), src)),
                    Err(e) => {
                        c.push(format!("{at}.template_file"), format!("cannot read {}: {e}", file.display()));
                        None
                    }
                }
            }
        };
        if let Some(t) = &template
            && let Err(e) = t.compile_check()
        {
            c.push(format!("{at}.template"), e);
        }
        if let (Some(map), Some(t)) = (raw.postmap, &template)
            && !t.is_key_value()
        {
            c.push(
                format!("{at}.postmap"),
                format!(
                    "postmap {} needs 'key value' lines, but template {} does not declare them; use template \"postfix\" \
                     or \"postfix-domains\", or declare {{#- rcptsync: key-value -#}} in your own template",
                    map.as_str(),
                    t.name
                ),
            );
        }
        for (key, argv) in [("check", &raw.check), ("reload", &raw.reload)] {
            if let Some(argv) = argv
                && (argv.is_empty() || argv[0].is_empty())
            {
                c.push(format!("{at}.{key}"), "must be a non-empty argv list, e.g. [\"postfix\", \"reload\"]".into());
            }
        }
        let mode = match &raw.mode {
            None => None,
            Some(m) => match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
                Ok(v) if v <= 0o777 => Some(v),
                _ => {
                    c.push(format!("{at}.mode"), format!("{m:?} is not an octal file mode like \"0640\""));
                    None
                }
            },
        };
        let hook_timeout = match &raw.hook_timeout {
            None => DEFAULT_HOOK_TIMEOUT,
            Some(s) => match parse_duration(s) {
                Ok(d) => d,
                Err(e) => {
                    c.push(format!("{at}.hook_timeout"), e);
                    DEFAULT_HOOK_TIMEOUT
                }
            },
        };
        let path = c.abs(raw.path.clone());
        if path.file_name().is_none() {
            c.push(format!("{at}.path"), "must name a file".into());
        }
        if c.count() > before {
            return None;
        }
        let hash_salt = c.secret(at, "hash_salt", raw.hash_salt, raw.hash_salt_file, raw.hash_salt_env);
        Some(OutputConfig {
            name: raw.name,
            template: template?,
            path,
            postmap: raw.postmap,
            check: raw.check,
            reload: raw.reload,
            mode,
            hook_timeout,
            hash_salt,
        })
    }
}

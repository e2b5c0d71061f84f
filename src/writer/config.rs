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

/// The program that turns a key-value output into the database the MTA reads:
/// Postfix's `postmap`, or Sendmail's `makemap` (which reads the text on stdin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapTool {
    Postmap,
    Makemap,
}

/// How one output is indexed: the tool and the database type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapBuild {
    pub tool: MapTool,
    pub kind: MapType,
}

impl MapBuild {
    pub fn program(self) -> &'static str {
        match self.tool {
            MapTool::Postmap => "postmap",
            MapTool::Makemap => "makemap",
        }
    }

    /// `postmap lmdb`, `makemap hash`: for messages.
    pub fn describe(self) -> String {
        format!("{} {}", self.program(), self.kind.as_str())
    }

    /// The command that builds `text` + suffix, and whether it reads `text` on stdin.
    pub fn argv(self, text: &std::path::Path) -> (Vec<String>, bool) {
        match self.tool {
            MapTool::Postmap => (vec!["postmap".into(), format!("{}:{}", self.kind.as_str(), text.display())], false),
            MapTool::Makemap => (vec!["makemap".into(), self.kind.as_str().into(), text.display().to_string()], true),
        }
    }

    /// The suffix the tool appends to the text file's name.
    pub fn suffix(self) -> &'static str {
        self.kind.suffix()
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
    makemap: Option<MapType>,
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
    /// `postmap = TYPE` or `makemap = TYPE`: the database built beside the text.
    pub map: Option<MapBuild>,
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
        let map = match (raw.postmap, raw.makemap) {
            (Some(_), Some(_)) => {
                c.push(format!("{at}.makemap"), "set postmap (Postfix) or makemap (Sendmail), not both".into());
                None
            }
            (Some(kind), None) => Some(MapBuild { tool: MapTool::Postmap, kind }),
            (None, Some(kind @ (MapType::Hash | MapType::Btree))) => Some(MapBuild { tool: MapTool::Makemap, kind }),
            (None, Some(kind)) => {
                c.push(
                    format!("{at}.makemap"),
                    format!("Sendmail's makemap builds \"hash\" or \"btree\" maps, not {:?}", kind.as_str()),
                );
                None
            }
            (None, None) => None,
        };
        if let (Some(map), Some(t)) = (map, &template)
            && !t.is_key_value()
        {
            c.push(
                format!("{at}.{}", map.program()),
                format!(
                    "{} needs 'key value' lines, but template {} does not declare them; use template \"postfix\", \
                     \"postfix-domains\" or \"sendmail-access\", or declare {{#- rcptsync: key-value -#}} in your own \
                     template",
                    map.describe(),
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
            map,
            check: raw.check,
            reload: raw.reload,
            mode,
            hook_timeout,
            hash_salt,
        })
    }
}

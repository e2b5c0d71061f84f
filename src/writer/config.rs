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
    signing_key_file: Option<PathBuf>,
    publisher: Option<String>,
    refresh: Option<String>,
}

/// A `template = "bundle"` output: the signed bundle a hub publishes for its
/// edges (README, Fleets).
#[derive(Debug, Clone)]
pub struct BundleSpec {
    /// The minisign secret key (`rcptsync keygen`), read at each run.
    pub signing_key_file: PathBuf,
    /// The name in the bundle's header (default: this host's name).
    pub publisher: String,
    /// An unchanged list is re-signed once the bundle is this old.
    pub refresh: Duration,
}

/// Default `refresh`: well inside an edge's default `max_age` (24h).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(6 * 3600);

/// How an output's bytes are made.
#[derive(Debug, Clone)]
pub enum Render {
    Template(TemplateRef),
    Bundle(BundleSpec),
}

/// A validated output.
#[derive(Debug, Clone)]
pub struct OutputConfig {
    pub name: String,
    pub render: Render,
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
    /// The template's name (`bundle` for a bundle), for messages.
    pub fn template_name(&self) -> &str {
        match &self.render {
            Render::Template(t) => &t.name,
            Render::Bundle(_) => "bundle",
        }
    }

    /// Validates one `[[output]]` table; `templates` resolves `template = NAME`.
    pub fn from_toml(c: &mut Checker, at: &str, value: toml::Value, templates: &Templates) -> Option<OutputConfig> {
        let raw = c.section::<RawOutput>(at, value)?;
        let before = c.count();
        if !valid_name(&raw.name) {
            c.push(format!("{at}.name"), format!("{:?} may only contain letters, digits, '.', '_' and '-'", raw.name));
        }
        if raw.template.as_deref() == Some("bundle") && raw.template_file.is_none() {
            return bundle_output(c, at, raw, before);
        }
        for (key, set) in [
            ("signing_key_file", raw.signing_key_file.is_some()),
            ("publisher", raw.publisher.is_some()),
            ("refresh", raw.refresh.is_some()),
        ] {
            if set {
                c.push(format!("{at}.{key}"), "is only for template = \"bundle\"".into());
            }
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
        let (mode, hook_timeout, path) = common_keys(c, at, &raw);
        if c.count() > before {
            return None;
        }
        let hash_salt = c.secret(at, "hash_salt", raw.hash_salt, raw.hash_salt_file, raw.hash_salt_env);
        Some(OutputConfig {
            name: raw.name,
            render: Render::Template(template?),
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

/// `template = "bundle"`: a signing key is required; no postmap, makemap or
/// mode games (the bundle and its signature are plain files edges download).
fn bundle_output(c: &mut Checker, at: &str, raw: RawOutput, before: usize) -> Option<OutputConfig> {
    for (key, set) in
        [("postmap", raw.postmap.is_some()), ("makemap", raw.makemap.is_some()), ("check", raw.check.is_some())]
    {
        if set {
            c.push(format!("{at}.{key}"), "is not for a bundle (edges read it with a bundle source)".into());
        }
    }
    let signing_key_file = match &raw.signing_key_file {
        Some(p) => c.abs(p.clone()),
        None => {
            c.push(
                format!("{at}.signing_key_file"),
                "is required for template = \"bundle\"; make a key with rcptsync keygen --out PREFIX".into(),
            );
            PathBuf::new()
        }
    };
    let refresh = match &raw.refresh {
        None => DEFAULT_REFRESH,
        Some(s) => match parse_duration(s) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                c.push(format!("{at}.refresh"), "must be longer than 0s".into());
                DEFAULT_REFRESH
            }
            Err(e) => {
                c.push(format!("{at}.refresh"), e);
                DEFAULT_REFRESH
            }
        },
    };
    let publisher = raw.publisher.clone().unwrap_or_else(host_name);
    if publisher.is_empty() || publisher.contains(char::is_whitespace) {
        c.push(format!("{at}.publisher"), format!("{publisher:?} must be a name without spaces"));
    }
    let (mode, hook_timeout, path) = common_keys(c, at, &raw);
    if c.count() > before {
        return None;
    }
    let hash_salt = c.secret(at, "hash_salt", raw.hash_salt, raw.hash_salt_file, raw.hash_salt_env);
    Some(OutputConfig {
        name: raw.name,
        render: Render::Bundle(BundleSpec { signing_key_file, publisher, refresh }),
        path,
        map: None,
        check: None,
        reload: raw.reload,
        mode,
        hook_timeout,
        hash_salt,
    })
}

/// The keys every output has: `mode` (of a new file), `hook_timeout`, `path`.
fn common_keys(c: &mut Checker, at: &str, raw: &RawOutput) -> (Option<u32>, Duration, PathBuf) {
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
        Some(s) => parse_duration(s).unwrap_or_else(|e| {
            c.push(format!("{at}.hook_timeout"), e);
            DEFAULT_HOOK_TIMEOUT
        }),
    };
    let path = c.abs(raw.path.clone());
    if path.file_name().is_none() {
        c.push(format!("{at}.path"), "must name a file".into());
    }
    (mode, hook_timeout, path)
}

/// This host's name (the default publisher of a bundle).
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "rcptsync".to_string(),
    }
}

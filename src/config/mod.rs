//! Configuration: loads the TOML file an operator writes and composes the
//! sections that the parts own.
//!
//! Each part owns its section next to its code: a connector's keys and their
//! validation live in its connector module (`connector::SourceSpec`), the outputs
//! in `writer::config`, `[policy]` and `[guard]` in `policy::config`, `[daemon]`
//! and cron lines in `schedule`. This module only reads the file,
//! resolves `profile = …` defaults, and hands each section to its owner.
//!
//! Loading is pure (no network, no connecting) and collects *every* error with
//! its config path (`source[2].path: …`) so one `rcptsync check` run shows them
//! all; its result is compiled (policy, cron lines, canonical canaries), so no
//! later stage parses a value again. Unknown keys are errors everywhere: a typo
//! must never silently turn a protection off.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::connector::profile::Profiles;
use crate::connector::{KINDS, SourceSpec};
use crate::policy::{GuardConfig, Policy, PolicyConfig};
use crate::schedule::{DaemonConfig, Schedule};
use crate::section::{Checker, clean_serde_message, valid_name};
use crate::writer::config::OutputConfig;
use crate::writer::template::Templates;

pub use crate::section::ConfigError;

/// Default config path when neither `-c` nor `$RCPTSYNC_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/rcptsync/rcptsync.toml";
/// How long a run waits for another run to finish, by default.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/rcptsync";

/// All problems found in one configuration file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(f, "{}: {n} configuration error{}", self.file.display(), if n == 1 { "" } else { "s" })?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The validated, compiled configuration. Paths are absolute (relative ones in
/// the file are taken relative to the file's own directory).
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub state_dir: PathBuf,
    /// How long a run waits for another run's lock before failing.
    pub lock_timeout: Duration,
    /// `[policy]`, compiled.
    pub policy: Policy,
    pub guard: GuardConfig,
    pub sources: Vec<SourceConfig>,
    pub outputs: Vec<OutputConfig>,
    pub daemon: Option<DaemonConfig>,
    /// Where user profiles and templates live (the daemon watches them).
    pub profile_dir: Option<PathBuf>,
    pub template_dir: Option<PathBuf>,
}

impl Config {
    /// On an edge of a hashed bundle, the hub's salt (the source's
    /// `hash_salt`): the list holds digests, and an address is looked up (by
    /// `why`, the guard's canaries) as its digest.
    pub fn digest_salt(&self) -> Option<&crate::secret::SecretSource> {
        self.sources.iter().find_map(|s| match &s.spec {
            SourceSpec::Bundle(b) => b.salt.as_ref(),
            _ => None,
        })
    }

    /// [`Config::digest_salt`], read.
    pub fn read_digest_salt(&self) -> Result<Option<crate::secret::Secret>, String> {
        self.digest_salt().map(|s| s.resolve("hash_salt").map_err(|e| e.to_string())).transpose()
    }
}

/// `[[source]]`: a named connector instance.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub profile: Option<String>,
    /// The daemon fetches this source on its own cron line (other ticks reuse
    /// its last good copy).
    pub schedule: Option<Schedule>,
    /// The whole fetch must finish within this (every page, every retry):
    /// past it the source fails, so a server that trickles data, or a pipe
    /// nobody writes to, never hangs a run.
    pub fetch_timeout: Duration,
    pub spec: SourceSpec,
}

/// The default `fetch_timeout` of a source.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(15 * 60);

impl SourceConfig {
    pub fn kind(&self) -> &'static str {
        self.spec.kind()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    lock_timeout: Option<String>,
    profile_dir: Option<PathBuf>,
    template_dir: Option<PathBuf>,
    policy: Option<toml::Value>,
    guard: Option<toml::Value>,
    #[serde(default)]
    source: Vec<toml::Value>,
    #[serde(default)]
    output: Vec<toml::Value>,
    daemon: Option<toml::Value>,
}

/// Where the config file is: `-c`, else `$RCPTSYNC_CONFIG`, else the default.
pub fn resolve_path(cli: Option<&Path>) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    match std::env::var_os("RCPTSYNC_CONFIG") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

/// Reads, parses and validates a config file. Never touches the network.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let fail = |message: String| ConfigErrors {
        file: path.to_path_buf(),
        errors: vec![ConfigError { path: String::new(), message }],
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let base =
        path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p }).unwrap_or(Path::new("."));
    let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
    let mut cfg = parse(&text, &base).map_err(|errors| ConfigErrors { file: path.to_path_buf(), errors })?;
    cfg.file = path.to_path_buf();
    warn_if_secrets_readable(path, &cfg);
    Ok(cfg)
}

/// Keys that hold a literal secret in the file.
pub fn literal_secret_keys(cfg: &Config) -> Vec<String> {
    let sources =
        cfg.sources.iter().filter_map(|s| s.spec.literal_secret_key().map(|key| format!("source {} {key}", s.name)));
    let outputs = cfg
        .outputs
        .iter()
        .filter(|o| matches!(o.hash_salt, Some(crate::secret::SecretSource::Literal(_))))
        .map(|o| format!("output {} hash_salt", o.name));
    sources.chain(outputs).collect()
}

/// A config file holding a literal password should be readable by its owner only.
fn warn_if_secrets_readable(path: &Path, cfg: &Config) {
    use std::os::unix::fs::PermissionsExt;
    let keys = literal_secret_keys(cfg);
    let Ok(meta) = std::fs::metadata(path) else { return };
    let mode = meta.permissions().mode() & 0o777;
    if !keys.is_empty() && mode & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            mode = %format!("{mode:04o}"),
            secrets = keys.join(", "),
            "the config holds a literal secret and is readable by group or others: chmod 600 it, or use *_file / *_env"
        );
    }
}

/// Parses and validates config text; relative paths are taken against `base`.
pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| vec![toml_error(text, "", &e)])?;
    let mut c = Checker::new(base);

    let state_dir = raw.state_dir.map(|p| c.abs(p)).unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let profile_dir = raw.profile_dir.map(|p| c.abs(p));
    let template_dir = raw.template_dir.map(|p| c.abs(p));
    let (profiles, templates) = catalogs(&mut c, profile_dir.as_deref(), template_dir.as_deref());
    let lock_timeout = c.duration("lock_timeout", raw.lock_timeout.as_deref(), DEFAULT_LOCK_TIMEOUT);

    let policy = raw.policy.and_then(|p| c.section::<PolicyConfig>("policy", p)).unwrap_or_default().compile(&mut c);
    let mut guard: GuardConfig = raw.guard.and_then(|g| c.section("guard", g)).unwrap_or_default();
    guard.validate(&mut c);
    let mut policy = policy;
    let mut sources = sources(&mut c, raw.source, &profiles);
    // The backup MX strips one extension syntax for every domain: unless the
    // config names it, it is the delimiters the SQL sources' products use.
    let mut delimiters = String::new();
    for s in &sources {
        if let crate::connector::SourceSpec::Sql(q) = &s.spec {
            for ch in q.recipient_delimiter.as_deref().unwrap_or("").chars() {
                if !delimiters.contains(ch) {
                    delimiters.push(ch);
                }
            }
        }
    }
    policy.default_delimiter(&delimiters);
    // An AD source that reads Exchange's accepted domains needs policy.domains
    // only in a forest without Exchange; the source checks at fetch time.
    for s in &mut sources {
        if let crate::connector::SourceSpec::Ldap(l) = &mut s.spec {
            l.policy_domains = policy.limits_domains();
        }
    }
    let mut outputs = outputs(&mut c, raw.output, &templates);
    hashed_edge(&mut c, &sources, &mut outputs, &policy);
    let mut daemon = raw.daemon.and_then(|d| c.section::<DaemonConfig>("daemon", d));
    if let Some(d) = &mut daemon {
        d.validate(&mut c);
    }

    let errors = c.into_errors();
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Config {
        file: PathBuf::new(),
        state_dir,
        lock_timeout,
        policy,
        guard,
        sources,
        outputs,
        daemon,
        profile_dir,
        template_dir,
    })
}

/// An edge that reads a hashed bundle has only digests: its bundle source is
/// its only source, every output is a hashed one (which writes the hub's
/// digests as they came), the policy cannot filter or add addresses it cannot
/// see, and the outputs' salt is the source's (the hub's), which the socketmap
/// hashes queries with.
fn hashed_edge(c: &mut Checker, sources: &[SourceConfig], outputs: &mut [OutputConfig], policy: &Policy) {
    let Some((i, s, salt)) = sources.iter().enumerate().find_map(|(i, s)| match &s.spec {
        SourceSpec::Bundle(b) => b.salt.as_ref().map(|salt| (i, s, salt)),
        _ => None,
    }) else {
        return;
    };
    let at = format!("source[{i}].hash_salt");
    if sources.len() > 1 {
        c.push(
            at.clone(),
            format!(
                "source {} reads a hashed bundle, so it must be the only source: its digests cannot be merged \
                 with addresses (add the other sources to the hub)",
                s.name
            ),
        );
    }
    if policy.edits_entries() {
        c.push(
            "policy",
            format!(
                "policy.domains, exclude and include cannot apply to the digests of source {}'s hashed bundle: \
                 set them on the hub",
                s.name
            ),
        );
    }
    for (j, o) in outputs.iter_mut().enumerate() {
        use crate::writer::template::BuiltinTemplate::{EximSha256, JsonSha256};
        let hashed = match &o.render {
            crate::writer::config::Render::Template(t) => matches!(t.fast_path(), Some(EximSha256 | JsonSha256)),
            crate::writer::config::Render::Bundle(_) => false,
        };
        if !hashed {
            c.push(
                format!("output[{j}].template"),
                format!(
                    "output {} would write addresses, but source {} reads a hashed bundle (digests only): use \
                     template exim-sha256 or json-sha256 (Postfix: rcptsync socketmap), or publish a clear \
                     bundle for this edge",
                    o.name, s.name
                ),
            );
        }
        if o.hash_salt.is_some() {
            c.push(
                format!("output[{j}].hash_salt"),
                format!(
                    "on an edge of a hashed bundle the salt is source {}'s hash_salt (the hub's): remove it here",
                    s.name
                ),
            );
        }
        o.hash_salt = Some(salt.clone());
    }
}

/// The profiles and templates the config can name (embedded ones when an
/// override directory is broken, so the rest still validates).
fn catalogs(c: &mut Checker, profile_dir: Option<&Path>, template_dir: Option<&Path>) -> (Profiles, Templates) {
    let profiles = Profiles::load(profile_dir).unwrap_or_else(|errs| {
        errs.into_iter().for_each(|(path, message)| c.push(path, message));
        Profiles::embedded()
    });
    let templates = Templates::load(template_dir).unwrap_or_else(|errs| {
        errs.into_iter().for_each(|(path, message)| c.push(path, message));
        Templates::embedded()
    });
    (profiles, templates)
}

fn sources(c: &mut Checker, tables: Vec<toml::Value>, profiles: &Profiles) -> Vec<SourceConfig> {
    let mut sources = Vec::new();
    let mut names = BTreeSet::new();
    for (i, value) in tables.into_iter().enumerate() {
        let at = format!("source[{i}]");
        if let Some(s) = source(c, &at, value, profiles) {
            if !names.insert(s.name.clone()) {
                c.push(format!("{at}.name"), format!("duplicate source name {:?}", s.name));
            }
            sources.push(s);
        }
    }
    if sources.is_empty() && !c.has_errors_under("source") {
        c.push("source", "at least one [[source]] is required".into());
    }
    sources
}

fn outputs(c: &mut Checker, tables: Vec<toml::Value>, templates: &Templates) -> Vec<OutputConfig> {
    let mut outputs = Vec::new();
    let mut names = BTreeSet::new();
    let mut paths = BTreeSet::new();
    for (i, value) in tables.into_iter().enumerate() {
        let at = format!("output[{i}]");
        if let Some(o) = OutputConfig::from_toml(c, &at, value, templates) {
            if !names.insert(o.name.clone()) {
                c.push(format!("{at}.name"), format!("duplicate output name {:?}", o.name));
            }
            if !paths.insert(o.path.clone()) {
                c.push(format!("{at}.path"), format!("{} is used by another output", o.path.display()));
            }
            outputs.push(o);
        }
    }
    if outputs.is_empty() && !c.has_errors_under("output") {
        c.push("output", "at least one [[output]] is required".into());
    }
    outputs
}

/// One `[[source]]`: the keys every source has (name, kind, schedule, profile),
/// the profile's defaults under the source's own keys, then the kind's section.
fn source(c: &mut Checker, at: &str, value: toml::Value, profiles: &Profiles) -> Option<SourceConfig> {
    let toml::Value::Table(mut table) = value else {
        c.push(at, "must be a table".into());
        return None;
    };
    let name = source_name(c, at, table.remove("name"));
    let kind = match table.get("kind") {
        Some(toml::Value::String(s)) => s.clone(),
        Some(_) => {
            c.push(format!("{at}.kind"), "must be a string".into());
            return None;
        }
        None => {
            c.push(format!("{at}.kind"), format!("is required ({KINDS})"));
            return None;
        }
    };
    let schedule = source_schedule(c, at, table.remove("schedule"));
    let fetch_timeout = match table.remove("fetch_timeout") {
        None => DEFAULT_FETCH_TIMEOUT,
        Some(toml::Value::String(s)) => c.duration(&format!("{at}.fetch_timeout"), Some(&s), DEFAULT_FETCH_TIMEOUT),
        Some(_) => {
            c.push(format!("{at}.fetch_timeout"), "must be a duration such as \"15m\"".into());
            DEFAULT_FETCH_TIMEOUT
        }
    };
    if fetch_timeout.is_zero() {
        c.push(format!("{at}.fetch_timeout"), "must be longer than 0s".into());
    }
    let profile = match table.remove("profile") {
        Some(toml::Value::String(p)) => {
            if let Err(e) = profiles.apply(&p, &kind, &mut table) {
                c.push(format!("{at}.profile"), e);
            }
            Some(p)
        }
        Some(_) => {
            c.push(format!("{at}.profile"), "must be a string".into());
            None
        }
        None => None,
    };
    let mut spec = match SourceSpec::deserialize(toml::Value::Table(table)) {
        Ok(s) => s,
        Err(e) => {
            c.push(at.to_string(), clean_serde_message(&e.to_string()));
            return None;
        }
    };
    spec.validate(c, at);
    Some(SourceConfig { name: name?, profile, schedule, fetch_timeout, spec })
}

fn source_name(c: &mut Checker, at: &str, value: Option<toml::Value>) -> Option<String> {
    let name = match value {
        Some(toml::Value::String(s)) => s,
        Some(_) => {
            c.push(format!("{at}.name"), "must be a string".into());
            return None;
        }
        None => {
            c.push(format!("{at}.name"), "is required".into());
            return None;
        }
    };
    if !valid_name(&name) {
        c.push(
            format!("{at}.name"),
            format!("{name:?} may only contain letters, digits, '.', '_' and '-' (it names state files)"),
        );
    }
    Some(name)
}

fn source_schedule(c: &mut Checker, at: &str, value: Option<toml::Value>) -> Option<Schedule> {
    match value {
        Some(toml::Value::String(line)) => match Schedule::parse(&line) {
            Ok(s) => Some(s),
            Err(e) => {
                c.push(format!("{at}.schedule"), e);
                None
            }
        },
        Some(_) => {
            c.push(format!("{at}.schedule"), "must be a cron line such as \"*/2 * * * *\"".into());
            None
        }
        None => None,
    }
}

/// Turns a TOML parse error into a ConfigError with line and column.
fn toml_error(text: &str, path: &str, e: &toml::de::Error) -> ConfigError {
    let mut message = e.message().to_string();
    if let Some(span) = e.span() {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map(|l| l.chars().count() + 1).unwrap_or(1);
        message = format!("line {line}, column {col}: {message}");
    }
    ConfigError { path: path.to_string(), message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::SourceSpec;
    use crate::policy::OnSourceFailure;
    use crate::writer::config::{DEFAULT_HOOK_TIMEOUT, MapBuild, MapTool, MapType};

    fn parse_ok(text: &str) -> Config {
        match parse(text, Path::new("/etc/rcptsync")) {
            Ok(c) => c,
            Err(e) => panic!("unexpected errors: {e:?}"),
        }
    }

    fn parse_err(text: &str) -> Vec<String> {
        match parse(text, Path::new("/etc/rcptsync")) {
            Ok(_) => panic!("config was accepted"),
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    const MINIMAL: &str = r#"
        state_dir = "state"
        [[source]]
        name = "list"
        kind = "file"
        path = "recipients.txt"
        [[output]]
        name = "postfix"
        template = "postfix"
        path = "/etc/postfix/relay_recipients"
        postmap = "lmdb"
        reload = ["postfix", "reload"]
    "#;

    #[test]
    fn the_recipient_delimiter_defaults_to_the_sql_products_and_the_config_wins() {
        let base = Path::new("/");
        let src = "[[source]]\nname = \"m\"\nkind = \"sql\"\nprofile = \"mailcow\"\nurl = \"mysql://u@db/mailcow\"\n\
                   [[output]]\nname = \"o\"\ntemplate = \"plain\"\npath = \"/tmp/x\"\n";
        let cfg = parse(src, base).unwrap();
        assert_eq!(cfg.policy.recipient_delimiter(), "+", "mailcow's main.cf sets +");
        let cfg = parse(&format!("[policy]\nrecipient_delimiter = \"\"\n{src}"), base).unwrap();
        assert_eq!(cfg.policy.recipient_delimiter(), "", "the config's word wins");
        let cfg = parse(&src.replace("mailcow", "postfixadmin"), base).unwrap();
        assert_eq!(cfg.policy.recipient_delimiter(), "", "PostfixAdmin sets none");
        let e = parse(&format!("[policy]\nrecipient_delimiter = \"@\"\n{src}"), base).unwrap_err();
        assert!(e.iter().any(|x| x.to_string().contains("cannot start an address extension")), "{e:?}");
    }

    #[test]
    fn fuzz_config_parser() {
        crate::fuzz::run("config", |input| {
            let text = String::from_utf8_lossy(input);
            match parse(&text, std::path::Path::new("/etc/rcptsync")) {
                Ok(_) => Ok(()),
                Err(errors) if errors.is_empty() => Err("refused without an error".into()),
                Err(errors) => match errors.iter().find(|e| e.to_string().trim().is_empty()) {
                    Some(_) => Err("an empty error message".into()),
                    None => Ok(()),
                },
            }
        });
    }

    #[test]
    fn minimal_config_with_defaults() {
        let c = parse_ok(MINIMAL);
        assert_eq!(c.state_dir, PathBuf::from("/etc/rcptsync/state"));
        assert_eq!(c.guard.min_recipients, None);
        assert_eq!(c.guard.shrink_window, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(c.guard.max_removed_percent, 10.0);
        assert_eq!(c.guard.on_source_failure, OnSourceFailure::KeepLastGood);
        let SourceSpec::File(f) = &c.sources[0].spec else { panic!("not a file source") };
        assert_eq!(f.path, PathBuf::from("/etc/rcptsync/recipients.txt"));
        assert!(f.catchalls);
        assert_eq!(c.outputs[0].map, Some(MapBuild { tool: MapTool::Postmap, kind: MapType::Lmdb }));
        assert_eq!(c.outputs[0].hook_timeout, DEFAULT_HOOK_TIMEOUT);
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let errs = parse_err(
            r#"
            [policy]
            domains = ["example.com", "bad domain"]
            include = ["a@@b"]
            exclude = ["[unclosed"]
            [guard]
            max_removed_percent = 150
            [[source]]
            name = "a"
            kind = "file"
            path = "x"
            colour = "blue"
            [[source]]
            name = "a b"
            kind = "file"
            path = "y"
            [[source]]
            name = "c"
            kind = "graph"
            [[output]]
            name = "o"
            template = "nope"
            path = "/tmp/o"
            [[output]]
            name = "p"
            template = "exim"
            path = "/tmp/p"
            postmap = "hash"
            mode = "999"
            reload = []
            hook_timeout = "soon"
            "#,
        );
        let want = [
            "policy.domains[1]: \"bad domain\" contains whitespace",
            "policy.include[0]: \"a@@b\" has more than one '@'",
            "policy.exclude[0]: \"[unclosed\" is not a valid glob",
            "guard.max_removed_percent: must be between 0 and 100",
            "source[0]: unknown field `colour`",
            "source[1].name: \"a b\" may only contain",
            "source[2]: missing field `tenant`",
            "output[0].template: unknown template \"nope\"",
            "output[1].postmap: postmap hash needs 'key value' lines",
            "output[1].reload: must be a non-empty argv list",
            "output[1].mode: \"999\" is not an octal file mode",
            "output[1].hook_timeout: \"soon\" is not a duration",
        ];
        for w in want {
            assert!(errs.iter().any(|e| e.starts_with(w)), "missing {w:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
    }

    #[test]
    fn cloud_sources_validate_credentials_and_endpoints() {
        let errs = parse_err(
            r#"
            [[source]]
            name = "m365"
            kind = "graph"
            tenant = "contoso.onmicrosoft.com"
            client_id = "app"
            graph_url = "ftp://x"
            [[source]]
            name = "m365b"
            kind = "graph"
            tenant = "t"
            client_id = "app"
            client_secret_env = "X"
            certificate_file = "c.pem"
            [[source]]
            name = "m365c"
            kind = "graph"
            tenant = "t"
            client_id = "app"
            certificate_file = "c.pem"
            [[source]]
            name = "gw"
            kind = "google"
            credentials_file = "sa.json"
            subject = "admin"
            customer = ""
            [[output]]
            name = "o"
            template = "plain"
            path = "/tmp/o"
            "#,
        );
        let want = [
            "source[0].client_secret: set client_secret (or _file/_env), or certificate_file and private_key_file",
            "source[0].graph_url: \"ftp://x\" must start with https://",
            "source[1].certificate_file: use either client_secret or a certificate, not both",
            "source[2].certificate_file: certificate_file and private_key_file go together",
            "source[3].subject: must be the email address of the admin to impersonate",
            "source[3].customer: must not be empty",
        ];
        for w in want {
            assert!(errs.iter().any(|e| e.starts_with(w)), "missing {w:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");

        let cfg = parse(
            "[[source]]\nname = \"m\"\nkind = \"graph\"\ntenant = \"t\"\nclient_id = \"a\"\nclient_secret_file = \"s\"\ncloud = \"usgov\"\n\
             [[source]]\nname = \"g\"\nkind = \"google\"\ncredentials_file = \"sa.json\"\nsubject = \"admin@example.com\"\n\
             [[output]]\nname = \"o\"\ntemplate = \"plain\"\npath = \"/tmp/o\"\n",
            Path::new("/etc/rcptsync"),
        )
        .unwrap();
        let SourceSpec::Graph(g) = &cfg.sources[0].spec else { panic!() };
        assert_eq!(g.authority(), "https://login.microsoftonline.us");
        assert_eq!(g.graph_root(), "https://graph.microsoft.us");
        assert!(g.incremental);
        let SourceSpec::Google(g) = &cfg.sources[1].spec else { panic!() };
        assert_eq!(g.credentials_file, Path::new("/etc/rcptsync/sa.json"));
        assert_eq!((g.customer.as_str(), g.api_url.as_str()), ("my_customer", "https://admin.googleapis.com"));
    }

    #[test]
    fn syntax_errors_have_a_line_number() {
        let errs = parse_err("state_dir = \"x\"\n[policy\n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("line 2, column"), "{errs:?}");
    }

    #[test]
    fn unknown_top_level_key_is_an_error() {
        let errs = parse_err("statedir = \"x\"\n");
        assert!(errs[0].contains("unknown field `statedir`"), "{errs:?}");
    }

    #[test]
    fn sources_and_outputs_are_required_and_unique() {
        let errs = parse_err("");
        assert_eq!(
            errs,
            ["source: at least one [[source]] is required", "output: at least one [[output]] is required"]
        );
        let dup = format!(
            "{MINIMAL}\n[[source]]\nname = \"list\"\nkind = \"file\"\npath = \"b\"\n[[output]]\nname = \"postfix\"\ntemplate = \"plain\"\npath = \"/etc/postfix/relay_recipients\"\n"
        );
        let errs = parse_err(&dup);
        assert!(errs.contains(&"source[1].name: duplicate source name \"list\"".to_string()), "{errs:?}");
        assert!(errs.contains(&"output[1].name: duplicate output name \"postfix\"".to_string()), "{errs:?}");
        assert!(
            errs.iter().any(|e| e.starts_with("output[1].path: /etc/postfix/relay_recipients is used")),
            "{errs:?}"
        );
    }

    #[test]
    fn profile_defaults_are_overridden_by_source_keys() {
        let c = parse_ok(&MINIMAL.replace("kind = \"file\"", "kind = \"file\"\nprofile = \"plain-list\""));
        let SourceSpec::File(f) = &c.sources[0].spec else { panic!("not a file source") };
        assert!(!f.catchalls, "profile default applies");
        let c = parse_ok(
            &MINIMAL.replace("kind = \"file\"", "kind = \"file\"\nprofile = \"plain-list\"\ncatchalls = true"),
        );
        let SourceSpec::File(f) = &c.sources[0].spec else { panic!("not a file source") };
        assert!(f.catchalls, "source key wins");
        let errs = parse_err(&MINIMAL.replace("kind = \"file\"", "kind = \"file\"\nprofile = \"nosuch\""));
        // The list names every profile, so adding one does not change the test.
        assert!(errs[0].starts_with("source[0].profile: unknown profile \"nosuch\"; known: "), "{errs:?}");
        assert!(errs[0].contains("plain-list") && errs[0].contains("postfixadmin"), "{errs:?}");
        let errs = parse_err(&MINIMAL.replace("kind = \"file\"", "kind = \"file\"\nprofile = \"postfixadmin\""));
        assert_eq!(errs, ["source[0].profile: profile \"postfixadmin\" is for kind \"sql\", not \"file\""]);
    }

    #[test]
    fn postmap_needs_a_template_that_declares_key_value_lines() {
        for template in ["json", "json-sha256", "exim", "plain"] {
            let errs = parse_err(&MINIMAL.replace("template = \"postfix\"", &format!("template = \"{template}\"")));
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(
                errs[0].starts_with("output[0].postmap: postmap lmdb needs 'key value' lines")
                    && errs[0].contains(&format!("template {template} does not declare them")),
                "{errs:?}"
            );
        }
        parse_ok(&MINIMAL.replace("template = \"postfix\"", "template = \"postfix-domains\""));
    }

    #[test]
    fn makemap_builds_sendmail_maps_from_key_value_templates() {
        let sendmail = MINIMAL.replace("template = \"postfix\"", "template = \"sendmail-access\"");
        let c = parse_ok(&sendmail.replace("postmap = \"lmdb\"", "makemap = \"hash\""));
        assert_eq!(c.outputs[0].map, Some(MapBuild { tool: MapTool::Makemap, kind: MapType::Hash }));
        let errs = parse_err(&sendmail.replace("postmap = \"lmdb\"", "makemap = \"lmdb\""));
        assert_eq!(errs, ["output[0].makemap: Sendmail's makemap builds \"hash\" or \"btree\" maps, not \"lmdb\""]);
        let errs = parse_err(&sendmail.replace("postmap = \"lmdb\"", "postmap = \"lmdb\"\nmakemap = \"hash\""));
        assert_eq!(errs, ["output[0].makemap: set postmap (Postfix) or makemap (Sendmail), not both"]);
        let errs = parse_err(
            &MINIMAL
                .replace("template = \"postfix\"", "template = \"sendmail-domains\"")
                .replace("postmap = \"lmdb\"", "makemap = \"hash\""),
        );
        assert!(errs[0].starts_with("output[0].makemap: makemap hash needs 'key value' lines"), "{errs:?}");
    }
}

#[cfg(test)]
mod sql_tests {
    use super::*;

    fn sql_source(keys: &str) -> String {
        format!(
            "state_dir = \"s\"\n[[source]]\nname = \"db\"\nkind = \"sql\"\n{keys}\n[[output]]\nname = \"o\"\ntemplate = \"plain\"\npath = \"/tmp/o\"\n"
        )
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(text, Path::new("/etc/rcptsync")) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn sql_source_validation() {
        assert_eq!(
            errors(&sql_source(
                "url = \"postgres://pfa@127.0.0.1/pfa\"\nquery = \"SELECT username FROM mailbox\"\npassword_env = \"PFA_PW\""
            )),
            Vec::<String>::new()
        );
        let e = errors(&sql_source("url = \"oracle://x\"\nquery = \"SELECT 1\""));
        assert!(e[0].starts_with("source[0].url: must start with postgres://"), "{e:?}");
        let e = errors(&sql_source("url = \"mysql://pfa:hunter2@db/pfa\"\nquery = \"SELECT 1\""));
        assert!(e[0].starts_with("source[0].url: contains a password") && !e[0].contains("hunter2"), "{e:?}");
        let e = errors(&sql_source("url = \"postgres://pfa@db/pfa\""));
        assert!(e[0].starts_with("source[0].query: is required"), "{e:?}");
        let e = errors(&sql_source(
            "url = \"postgres://pfa@db/pfa\"\nquery = \"SELECT 1\"\npassword = \"x\"\npassword_env = \"Y\"",
        ));
        assert_eq!(e, ["source[0].password: set only one of password, password_file and password_env"]);
        let e = errors(&sql_source("url = \"sqlite:///x.db\"\nquery = \"SELECT 1\"\npassword = \"x\""));
        assert_eq!(e, ["source[0].password: SQLite has no passwords; remove it"]);
        let e = errors(&sql_source("url = \"postgres://pfa@db/pfa\"\nquery = \"SELECT 1\"\nquery_timeout = \"soon\""));
        assert!(e[0].contains("\"soon\" is not a duration"), "{e:?}");
    }

    #[test]
    fn literal_password_never_prints() {
        let c = parse(
            &sql_source("url = \"postgres://pfa@db/pfa\"\nquery = \"SELECT 1\"\npassword = \"hunter2-secret\""),
            Path::new("/"),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}

//! Rendering the final list through a template.
//!
//! Every output is a minijinja template over the same context: `recipients` (sorted
//! list of `{address, local_part, domain, sources}`), `domains`, `catchall_domains`,
//! `count` (the number of addresses), `hash_salt`, and `hashed` (`hashed.catchalls`
//! and `hashed.recipients`: the salted digests, each sorted by digest, computed
//! only when a template reads them; see `policy::digest`). The built-in templates live in
//! `templates/*.j2` and are embedded in the binary.
//!
//! A million-entry list through an interpreted template costs a few hundred
//! milliseconds per output, which is most of a sync. So each built-in template also
//! has a compiled renderer, used only while the template text is exactly the
//! embedded one; a property test proves the two produce identical bytes for
//! arbitrary lists. An overridden or user template always goes through minijinja.
//!
//! Rendering is pure and deterministic: same list, same bytes.
//!
//! Template facts are data: [`Templates`] lists every built-in (one file each in
//! `templates/`) plus the operator's `template_dir`, and a template declares
//! what its output is in a comment at its top, `{#- rcptsync: key-value -#}`
//! for `key value` lines that `postmap` can index. User templates declare it
//! the same way; nothing is assumed from a template's name.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Value};
use minijinja::{Environment, UndefinedBehavior};

use crate::policy::RecipientList;
use crate::policy::digest::Digests;
use crate::section::LoadErrors;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/templates.rs"));
}

/// The templates a config can refer to by name: every built-in, with the
/// operator's `template_dir` on top.
#[derive(Debug, Clone)]
pub struct Templates {
    templates: BTreeMap<String, TemplateRef>,
}

impl Templates {
    /// Only what is built into the binary.
    pub fn embedded() -> Templates {
        let templates = embedded::TEMPLATES
            .iter()
            .map(|(name, text)| (name.to_string(), TemplateRef::embedded(name, Arc::from(*text))))
            .collect();
        Templates { templates }
    }

    /// The built-ins with `template_dir` on top: a file `NAME.j2` there replaces
    /// or adds template NAME.
    pub fn load(template_dir: Option<&Path>) -> Result<Templates, LoadErrors> {
        let mut cat = Templates::embedded();
        let mut errors = Vec::new();
        if let Some(dir) = template_dir {
            for (name, path, text) in crate::section::read_dir_files(dir, "j2", "template_dir", &mut errors) {
                cat.templates.insert(name.clone(), TemplateRef::overridden(&name, path, Arc::from(text)));
            }
        }
        if errors.is_empty() { Ok(cat) } else { Err(errors) }
    }

    pub fn get(&self, name: &str) -> Option<TemplateRef> {
        self.templates.get(name).cloned()
    }

    /// Every template name, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.templates.keys().map(String::as_str).collect()
    }
}

/// What a template says about its own output (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Declared {
    /// `key value` lines: valid with `postmap`.
    pub key_value: bool,
}

/// The properties a template may declare.
const PROPERTIES: &[&str] = &["key-value"];

impl Declared {
    /// Reads the `rcptsync:` declarations from the template's comments
    /// (`{# … #}`, with or without `-`). An unknown property is an error, so a
    /// typo cannot silently turn a declaration off.
    pub fn parse(source: &str) -> Result<Declared, String> {
        let mut d = Declared::default();
        let mut rest = source;
        while let Some(open) = rest.find("{#") {
            let after = &rest[open + 2..];
            let Some(close) = after.find("#}") else { break };
            let body = after[..close].trim_matches(|c: char| c == '-' || c.is_whitespace());
            if let Some(props) = body.strip_prefix("rcptsync:") {
                for p in props.split([',', ' ', '\t', '\n']).filter(|p| !p.is_empty()) {
                    match p {
                        "key-value" => d.key_value = true,
                        other => {
                            return Err(format!(
                                "declares unknown property {other:?} (known: {})",
                                PROPERTIES.join(", ")
                            ));
                        }
                    }
                }
            }
            rest = &after[close + 2..];
        }
        Ok(d)
    }
}

/// The built-in templates that have a compiled renderer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinTemplate {
    Postfix,
    PostfixDomains,
    Exim,
    Json,
    Plain,
    Opensmtpd,
    OpensmtpdDomains,
    SendmailAccess,
    SendmailDomains,
    EximSha256,
    JsonSha256,
}

const HEADER: &str = "# Managed by rcptsync: do not edit, changes are overwritten on the next sync.\n";
const OPENSMTPD_LIST: &str = "# @list\n";

impl BuiltinTemplate {
    pub const ALL: [BuiltinTemplate; 11] = [
        BuiltinTemplate::Postfix,
        BuiltinTemplate::PostfixDomains,
        BuiltinTemplate::Exim,
        BuiltinTemplate::Json,
        BuiltinTemplate::Plain,
        BuiltinTemplate::Opensmtpd,
        BuiltinTemplate::OpensmtpdDomains,
        BuiltinTemplate::SendmailAccess,
        BuiltinTemplate::SendmailDomains,
        BuiltinTemplate::EximSha256,
        BuiltinTemplate::JsonSha256,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BuiltinTemplate::Postfix => "postfix",
            BuiltinTemplate::PostfixDomains => "postfix-domains",
            BuiltinTemplate::Exim => "exim",
            BuiltinTemplate::Json => "json",
            BuiltinTemplate::Plain => "plain",
            BuiltinTemplate::Opensmtpd => "opensmtpd",
            BuiltinTemplate::OpensmtpdDomains => "opensmtpd-domains",
            BuiltinTemplate::SendmailAccess => "sendmail-access",
            BuiltinTemplate::SendmailDomains => "sendmail-domains",
            BuiltinTemplate::EximSha256 => "exim-sha256",
            BuiltinTemplate::JsonSha256 => "json-sha256",
        }
    }

    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|t| t.name()).collect()
    }

    fn from_name(name: &str) -> Option<BuiltinTemplate> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The compiled renderer into memory, for tests (syncs use [`Self::render_to`]).
    #[cfg(test)]
    pub fn render(self, list: &RecipientList, salt: &str) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.render_to(list, salt, &mut out);
        out
    }

    /// The compiled renderer, byte-identical to the embedded template, writing as
    /// it goes (give it a buffered writer). `salt` is for the hashed ones.
    pub fn render_to(self, list: &RecipientList, salt: &str, out: &mut impl Write) -> io::Result<()> {
        match self {
            BuiltinTemplate::EximSha256 => {
                let d = Digests::of(list, salt);
                out.write_all(HEADER.as_bytes())?;
                for h in d.catchall_hexes().chain(d.address_hexes()) {
                    line(out, &[h, "\n"])?;
                }
            }
            BuiltinTemplate::JsonSha256 => {
                let d = Digests::of(list, salt);
                let salted = if salt.is_empty() { "false" } else { "true" };
                line(out, &["{\n  \"hash\": \"sha256\",\n  \"salted\": ", salted, ",\n"])?;
                json_array(out, "catchall_domains", d.catchall_hexes(), false)?;
                json_array(out, "recipients", d.address_hexes(), true)?;
                out.write_all(b"}\n")?;
            }
            BuiltinTemplate::Postfix => {
                out.write_all(HEADER.as_bytes())?;
                for c in list.catchalls() {
                    line(out, &["@", c.domain(), " OK\n"])?;
                }
                for a in list.addresses().iter() {
                    line(out, &[a.as_str(), " OK\n"])?;
                }
            }
            BuiltinTemplate::PostfixDomains => {
                out.write_all(HEADER.as_bytes())?;
                for d in list.domains() {
                    line(out, &[d, " OK\n"])?;
                }
            }
            BuiltinTemplate::Exim => {
                out.write_all(HEADER.as_bytes())?;
                for c in list.catchalls() {
                    line(out, &["*@", c.domain(), "\n"])?;
                }
                for a in list.addresses().iter() {
                    line(out, &[a.as_str(), "\n"])?;
                }
            }
            BuiltinTemplate::Plain => {
                for a in list.addresses().iter() {
                    line(out, &[a.as_str(), "\n"])?;
                }
            }
            // OpenSMTPD reads a table file as a list only when it says so on
            // its first line; otherwise "key value" pairs are expected.
            BuiltinTemplate::Opensmtpd => {
                line(out, &[OPENSMTPD_LIST, HEADER])?;
                for c in list.catchalls() {
                    line(out, &["@", c.domain(), "\n"])?;
                }
                for a in list.addresses().iter() {
                    line(out, &[a.as_str(), "\n"])?;
                }
            }
            BuiltinTemplate::OpensmtpdDomains => {
                line(out, &[OPENSMTPD_LIST, HEADER])?;
                for d in list.domains() {
                    line(out, &[d, "\n"])?;
                }
            }
            // Sendmail's access map: each address may be relayed to, and every
            // other address at a domain without a catch-all is refused.
            BuiltinTemplate::SendmailAccess => {
                out.write_all(HEADER.as_bytes())?;
                for a in list.addresses().iter() {
                    line(out, &["To:", a.as_str(), " RELAY\n"])?;
                }
                let catchall: std::collections::HashSet<&str> = list.catchalls().iter().map(|c| c.domain()).collect();
                for d in list.domains().iter().filter(|d| !catchall.contains(d.as_str())) {
                    line(out, &["To:", d, " ERROR:5.1.1:550 User unknown\n"])?;
                }
            }
            BuiltinTemplate::SendmailDomains => {
                out.write_all(HEADER.as_bytes())?;
                for d in list.domains() {
                    line(out, &[d, "\n"])?;
                }
            }
            BuiltinTemplate::Json => {
                out.write_all(b"{\n")?;
                json_array(out, "domains", list.domains().iter().map(String::as_str), false)?;
                json_array(out, "catchall_domains", list.catchalls().iter().map(|c| c.domain()), false)?;
                json_array(out, "recipients", list.addresses().iter().map(|a| a.as_str()), true)?;
                out.write_all(b"}\n")?;
            }
        }
        Ok(())
    }
}

/// One array of the JSON templates, as they lay it out.
fn json_array<'a>(
    out: &mut impl Write,
    name: &str,
    items: impl ExactSizeIterator<Item = &'a str>,
    last: bool,
) -> io::Result<()> {
    let n = items.len();
    line(out, &["  \"", name, "\": [\n"])?;
    for (i, s) in items.enumerate() {
        line(out, &["    \"", s, if i + 1 < n { "\",\n" } else { "\"\n" }])?;
    }
    out.write_all(if last { b"  ]\n" } else { b"  ],\n" })
}

/// Writes the pieces of one line.
#[inline]
fn line(out: &mut impl Write, pieces: &[&str]) -> io::Result<()> {
    for p in pieces {
        out.write_all(p.as_bytes())?;
    }
    Ok(())
}

/// A template an output renders with: its name, where it came from, its text, and
/// the compiled renderer when the text is a pristine built-in.
#[derive(Debug, Clone)]
pub struct TemplateRef {
    pub name: String,
    /// `embedded`, or the file it was read from.
    pub origin: String,
    source: Arc<str>,
    fast: Option<BuiltinTemplate>,
    /// What the template declares; an invalid declaration is reported by
    /// [`TemplateRef::compile_check`].
    declared: Result<Declared, String>,
}

impl TemplateRef {
    fn new(name: String, origin: String, source: Arc<str>, fast: Option<BuiltinTemplate>) -> TemplateRef {
        let declared = Declared::parse(&source);
        TemplateRef { name, origin, source, fast, declared }
    }

    pub fn embedded(name: &str, source: Arc<str>) -> TemplateRef {
        TemplateRef::new(name.into(), "embedded".into(), source, BuiltinTemplate::from_name(name))
    }

    /// A template from `template_dir`, replacing or adding a named template.
    pub fn overridden(name: &str, path: String, source: Arc<str>) -> TemplateRef {
        TemplateRef::new(name.into(), path, source, None)
    }

    /// A `template_file`.
    pub fn user(path: String, source: String) -> TemplateRef {
        TemplateRef::new(path.clone(), path, source.into(), None)
    }

    pub fn fast_path(&self) -> Option<BuiltinTemplate> {
        self.fast
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template declares `key value` lines that `postmap` can index.
    pub fn is_key_value(&self) -> bool {
        self.declared.as_ref().is_ok_and(|d| d.key_value)
    }

    /// Compiles the template, so syntax errors show up in `rcptsync check`.
    pub fn compile_check(&self) -> Result<(), String> {
        if let Err(e) = &self.declared {
            return Err(format!("template {}: {e}", self.origin));
        }
        let env = environment();
        env.template_from_str(&self.source).map(|_| ()).map_err(|e| format!("template {}: {e:#}", self.origin))?;
        // Render against a tiny sample so that unknown variables and filters are
        // caught now rather than at the next sync.
        self.render_interpreted(&sample_list()).map(|_| ())
    }

    /// Renders the list to bytes, for tests and fuzzing (syncs stream through
    /// [`Self::render_salted_to`]).
    #[cfg(test)]
    pub fn render(&self, list: &Arc<RecipientList>) -> Result<Vec<u8>, String> {
        self.render_salted(list, "")
    }

    /// Renders the list with `hash_salt` available to the template (the hashed
    /// templates prefix it to each address before hashing). For tests.
    #[cfg(test)]
    pub fn render_salted(&self, list: &Arc<RecipientList>, salt: &str) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        self.render_salted_to(list, salt, &mut out)?;
        Ok(out)
    }

    /// Renders into a writer (give it a buffered one). A failure to write is an
    /// `Err` like a template error; the writer may know more about it.
    pub fn render_salted_to(&self, list: &Arc<RecipientList>, salt: &str, out: &mut impl Write) -> Result<(), String> {
        match self.fast {
            Some(b) => b.render_to(list, salt, out).map_err(|e| format!("template {}: cannot write: {e}", self.origin)),
            None => self.render_with(list, salt, out),
        }
    }

    /// Renders through minijinja, whatever the template.
    pub fn render_interpreted(&self, list: &Arc<RecipientList>) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        self.render_with(list, "", &mut out)?;
        Ok(out)
    }

    fn render_with(&self, list: &Arc<RecipientList>, salt: &str, out: &mut impl Write) -> Result<(), String> {
        let env = environment();
        let tmpl = env.template_from_str(&self.source).map_err(|e| format!("template {}: {e:#}", self.origin))?;
        let ctx = minijinja::context! {
            recipients => Value::from_object(Recipients(list.clone())),
            domains => Value::from_object(Domains(list.clone(), DomainKind::All)),
            catchall_domains => Value::from_object(Domains(list.clone(), DomainKind::CatchAll)),
            count => list.addresses().len(),
            hash_salt => salt,
            hashed => Value::from_object(Hashed { list: list.clone(), salt: salt.to_string(), digests: Default::default() }),
        };
        tmpl.render_captured_to(ctx, out).map(|_| ()).map_err(|e| format!("template {}: {e:#}", self.origin))
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.add_filter("sha256", sha256_filter);
    env
}

/// `{{ value|sha256(salt) }}`: lowercase hex SHA-256 of `salt` followed by the
/// value, as Exim's `${sha256:…}` computes it.
fn sha256_filter(value: String, salt: Option<String>) -> String {
    crate::policy::digest::salted_sha256(&salt.unwrap_or_default(), &value)
}

fn sample_list() -> Arc<RecipientList> {
    use crate::policy::{Locator, RawItem, RawKind, normalise};
    let (ok, _) = normalise(vec![
        RawItem { value: "alice@example.com".into(), kind: RawKind::Address, locator: Locator::Line(1) },
        RawItem { value: "@example.org".into(), kind: RawKind::CatchAll, locator: Locator::Line(2) },
    ]);
    let p = crate::policy::Policy::default();
    Arc::new(p.apply(vec![("sample".into(), ok)]).0)
}

/// `hashed`: the list's digests, computed when a template first reads them.
struct Hashed {
    list: Arc<RecipientList>,
    salt: String,
    digests: std::sync::OnceLock<Digests>,
}

impl std::fmt::Debug for Hashed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hashed")
    }
}

impl Object for Hashed {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let d = self.digests.get_or_init(|| Digests::of(&self.list, &self.salt));
        match key.as_str()? {
            "catchalls" => Some(Value::from(d.catchall_hexes().map(String::from).collect::<Vec<_>>())),
            "recipients" => Some(Value::from(d.address_hexes().map(String::from).collect::<Vec<_>>())),
            _ => None,
        }
    }
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["catchalls", "recipients"])
    }
}

/// `recipients`: a lazy sequence, so a million entries are not converted up front.
#[derive(Debug)]
struct Recipients(Arc<RecipientList>);

impl Object for Recipients {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let i = key.as_usize()?;
        (i < self.0.addresses().len()).then(|| Value::from_object(Recipient(self.0.clone(), i)))
    }
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Seq(self.0.addresses().len())
    }
}

/// One element of `recipients`.
#[derive(Debug)]
struct Recipient(Arc<RecipientList>, usize);

impl Object for Recipient {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let e = self.0.addresses().get(self.1)?;
        Some(match key.as_str()? {
            "address" => Value::from(e.as_str()),
            "local_part" => Value::from(e.local_part()),
            "domain" => Value::from(e.domain()),
            "sources" => {
                Value::from(self.0.address_source_names(self.1).into_iter().map(String::from).collect::<Vec<_>>())
            }
            _ => return None,
        })
    }
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["address", "local_part", "domain", "sources"])
    }
    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.addresses().get(self.1) {
            Some(e) => f.write_str(e.as_str()),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum DomainKind {
    All,
    CatchAll,
}

#[derive(Debug)]
struct Domains(Arc<RecipientList>, DomainKind);

impl Object for Domains {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let i = key.as_usize()?;
        match self.1 {
            DomainKind::All => self.0.domains().get(i).map(|d| Value::from(d.as_str())),
            DomainKind::CatchAll => self.0.catchalls().get(i).map(|c| Value::from(c.domain())),
        }
    }
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Seq(match self.1 {
            DomainKind::All => self.0.domains().len(),
            DomainKind::CatchAll => self.0.catchalls().len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Locator, Policy, RawItem, RawKind, normalise};
    use proptest::prelude::*;

    fn list(vals: &[&str]) -> Arc<RecipientList> {
        let items = vals
            .iter()
            .enumerate()
            .map(|(i, v)| RawItem { value: v.to_string(), kind: RawKind::of(v), locator: Locator::Line(i as u32 + 1) })
            .collect();
        let (ok, _) = normalise(items);
        Arc::new(Policy::default().apply(vec![("s".into(), ok)]).0)
    }

    fn builtin(name: &str) -> TemplateRef {
        Templates::embedded().get(name).unwrap()
    }

    #[test]
    fn hashed_templates_hash_the_normalised_address_with_the_salt() {
        let l = list(&["Alice@Example.com", "@example.org"]);
        let out = String::from_utf8(builtin("exim-sha256").render_salted(&l, "pepper").unwrap()).unwrap();
        let want_a = sha256_filter("alice@example.com".into(), Some("pepper".into()));
        let want_c = sha256_filter("@example.org".into(), Some("pepper".into()));
        let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines, [want_c.as_str(), want_a.as_str()], "catch-alls first");
        assert!(!out.contains("alice") && !out.contains("example"), "no address in clear: {out}");
        // Sorted by digest, not by address.
        let many = list(&["a@example.com", "b@example.com", "c@example.com", "d@example.com", "e@example.com"]);
        let out = String::from_utf8(builtin("exim-sha256").render_salted(&many, "pepper").unwrap()).unwrap();
        let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        let mut sorted = lines.clone();
        sorted.sort();
        assert_eq!(lines, sorted);
        let by_address: Vec<String> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|l| sha256_filter(format!("{l}@example.com"), Some("pepper".into())))
            .collect();
        assert_ne!(lines, by_address, "this salt puts them out of address order");
        // The known vector: sha256("abc").
        assert_eq!(
            sha256_filter("abc".into(), None),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let json: serde_json::Value =
            serde_json::from_slice(&builtin("json-sha256").render_salted(&l, "pepper").unwrap()).unwrap();
        assert_eq!(json["recipients"][0], want_a.as_str());
        assert_eq!(json["catchall_domains"][0], want_c.as_str());
        assert_eq!(json["salted"], true);
    }

    #[test]
    fn exim_never_emits_a_bare_star() {
        let l = list(&["@example.org", "a@example.com"]);
        let out = String::from_utf8(builtin("exim").render(&l).unwrap()).unwrap();
        assert!(out.lines().all(|line| line != "*"));
        assert!(out.contains("\n*@example.org\n"));
    }

    #[test]
    fn user_template_gets_the_whole_context() {
        let l = list(&["B@example.com", "a@example.com", "@example.org"]);
        let t = TemplateRef::user(
            "t.j2".into(),
            "{{ count }}|{% for r in recipients %}{{ r.local_part }}/{{ r.domain }}/{{ r.sources|join(',') }};{% endfor %}|{{ domains|join(',') }}|{{ catchall_domains|join(',') }}|{{ recipients[0] }}".into(),
        );
        let out = String::from_utf8(t.render(&l).unwrap()).unwrap();
        assert_eq!(out, "2|a/example.com/s;b/example.com/s;|example.com,example.org|example.org|a@example.com");
    }

    #[test]
    fn undefined_variables_are_errors() {
        let t = TemplateRef::user("t.j2".into(), "{{ recipient }}".into());
        let e = t.compile_check().unwrap_err();
        assert!(e.contains("t.j2") && e.contains("undefined"), "{e}");
        let t = TemplateRef::user("bad.j2".into(), "{% for %}".into());
        assert!(t.compile_check().unwrap_err().contains("bad.j2"));
    }

    /// Every built-in template, fed the fuzzed set, produces output whose
    /// structure a reader of that format recovers exactly.
    #[test]
    fn fuzz_builtin_templates() {
        let catalog = Templates::embedded();
        crate::fuzz::run("template", |input| {
            let items = crate::fuzz::lines_as_items(input);
            let (ok, _) = crate::policy::normalise(items);
            let list = Arc::new(Policy::default().apply(vec![("fuzz".into(), ok)]).0);
            let addresses: Vec<String> = list.sorted().map(str::to_string).collect();
            for name in BuiltinTemplate::names() {
                let t = catalog.get(name).ok_or("missing template")?;
                let out = String::from_utf8(t.render(&list)?).map_err(|e| format!("{name}: not UTF-8: {e}"))?;
                let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
                match name {
                    "postfix" => {
                        let keys: Vec<&str> = lines
                            .iter()
                            .map(|l| match l.split(' ').collect::<Vec<_>>()[..] {
                                [k, "OK"] => Ok(k),
                                _ => Err(format!("postfix line {l:?} is not 'key OK'")),
                            })
                            .collect::<Result<_, _>>()?;
                        let mut keys = keys;
                        keys.sort();
                        let mut want: Vec<&str> = addresses.iter().map(String::as_str).collect();
                        want.sort();
                        if keys != want {
                            return Err("postfix keys differ from the list".into());
                        }
                    }
                    "exim" | "plain" => {
                        if lines.iter().any(|l| l.contains(char::is_whitespace)) {
                            return Err(format!("{name}: a line holds whitespace"));
                        }
                        let n = if name == "plain" { list.len() - list.catchalls().len() } else { list.len() };
                        if lines.len() != n {
                            return Err(format!("{name}: {} lines for {n} entries", lines.len()));
                        }
                    }
                    "json" => {
                        let v: serde_json::Value =
                            serde_json::from_str(&out).map_err(|e| format!("json output does not parse: {e}"))?;
                        let n = v["recipients"].as_array().map(Vec::len).unwrap_or(usize::MAX);
                        if n != list.len() - list.catchalls().len() {
                            return Err("json recipients differ from the list".into());
                        }
                    }
                    "opensmtpd" | "opensmtpd-domains" | "sendmail-domains" => {
                        // Only the header may be a comment: smtpd and sendmail read
                        // every other line as an entry.
                        let header = if name == "sendmail-domains" { 1 } else { 2 };
                        if name != "sendmail-domains" && !out.starts_with("# @list\n") {
                            return Err(format!("{name}: the first line is not '# @list'"));
                        }
                        let entries: Vec<&str> = out.lines().skip(header).collect();
                        if entries.iter().any(|l| l.is_empty() || l.contains(char::is_whitespace)) {
                            return Err(format!("{name}: an entry line is empty or holds whitespace"));
                        }
                        let n = if name == "opensmtpd" { list.len() } else { list.domains().len() };
                        if entries.len() != n {
                            return Err(format!("{name}: {} lines for {n} entries", entries.len()));
                        }
                    }
                    "sendmail-access" => {
                        let mut keys = std::collections::HashSet::new();
                        let (mut relay, mut refused) = (0, 0);
                        for l in out.lines().skip(1) {
                            let (key, value) =
                                l.split_once(' ').ok_or(format!("sendmail-access: {l:?} has no value"))?;
                            if !key.starts_with("To:") || key.contains(char::is_whitespace) || !keys.insert(key) {
                                return Err(format!("sendmail-access: bad or repeated key {key:?}"));
                            }
                            match value {
                                "RELAY" => relay += 1,
                                "ERROR:5.1.1:550 User unknown" => refused += 1,
                                _ => return Err(format!("sendmail-access: unexpected value {value:?}")),
                            }
                        }
                        let catchall_domains: std::collections::HashSet<&str> =
                            list.catchalls().iter().map(|c| c.domain()).collect();
                        if relay != list.addresses().len()
                            || refused
                                != list.domains().iter().filter(|d| !catchall_domains.contains(d.as_str())).count()
                        {
                            return Err("sendmail-access: entries differ from the list".into());
                        }
                    }
                    "exim-sha256" => {
                        let hex = |l: &&str| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit());
                        if lines.len() != list.len() || !lines.iter().all(hex) {
                            return Err("exim-sha256: not one digest per entry".into());
                        }
                    }
                    "json-sha256" => {
                        let v: serde_json::Value =
                            serde_json::from_str(&out).map_err(|e| format!("json-sha256 does not parse: {e}"))?;
                        let n = |k: &str| v[k].as_array().map(Vec::len).unwrap_or(usize::MAX);
                        if n("recipients") != list.addresses().len() || n("catchall_domains") != list.catchalls().len()
                        {
                            return Err("json-sha256 arrays differ from the list".into());
                        }
                    }
                    _ => {
                        if lines.iter().any(|l| l.split(' ').count() != 2) {
                            return Err("postfix-domains line is not 'domain OK'".into());
                        }
                    }
                }
            }
            Ok(())
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The compiled renderers are exactly the embedded templates.
        #[test]
        fn compiled_renderers_match_templates(
            vals in proptest::collection::vec("@?[a-zA-Z0-9.+_-]{1,8}@[a-z]{1,5}\\.(com|org|xn--bcher-kva)", 0..40)
        ) {
            let refs: Vec<&str> = vals.iter().map(String::as_str).collect();
            let l = list(&refs);
            for (b, salt) in BuiltinTemplate::ALL.into_iter().flat_map(|b| [(b, ""), (b, "pepper")]) {
                let t = builtin(b.name());
                let fast = b.render(&l, salt);
                let mut slow = Vec::new();
                t.render_with(&l, salt, &mut slow).unwrap();
                prop_assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(slow).unwrap(), "template {}", b.name());
            }
        }
    }

    #[test]
    fn template_override_loses_the_fast_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("postfix.j2"), "{% for r in recipients %}{{ r.address }} RELAY\n{% endfor %}")
            .unwrap();
        let cat = Templates::load(Some(dir.path())).unwrap();
        let t = cat.get("postfix").unwrap();
        assert!(t.fast_path().is_none());
    }

    #[test]
    fn every_builtin_renderer_has_its_template() {
        let cat = Templates::embedded();
        for name in BuiltinTemplate::names() {
            let t = cat.get(name).unwrap_or_else(|| panic!("template {name} not embedded"));
            assert!(t.fast_path().is_some(), "{name} should use its compiled renderer");
        }
        assert_eq!(cat.names().len(), embedded::TEMPLATES.len());
    }

    #[test]
    fn key_value_is_declared_by_the_template() {
        let cat = Templates::embedded();
        let kv: Vec<&str> = cat.names().into_iter().filter(|n| cat.get(n).unwrap().is_key_value()).collect();
        assert_eq!(kv, ["postfix", "postfix-domains", "sendmail-access"]);
        let user = |text: &str| TemplateRef::user("t.j2".into(), text.into());
        assert!(!user("{% for r in recipients %}{{ r }} OK\n{% endfor %}").is_key_value(), "nothing assumed");
        assert!(user("{#- rcptsync: key-value -#}\n{% for r in recipients %}{{ r }} OK\n{% endfor %}").is_key_value());
        assert!(user("{# a comment #}{# rcptsync: key-value #}").is_key_value());
        let typo = user("{# rcptsync: key_value #}");
        assert!(!typo.is_key_value());
        let e = typo.compile_check().unwrap_err();
        assert!(e.contains("t.j2") && e.contains("unknown property \"key_value\""), "{e}");
    }

    #[test]
    fn json_output_is_valid_json() {
        for l in [list(&[]), list(&["a@example.com", "@example.org", "b@example.net"])] {
            let out = builtin("json").render(&l).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["recipients"].as_array().unwrap().len(), l.addresses().len());
        }
    }
}

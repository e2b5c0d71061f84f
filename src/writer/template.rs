//! Rendering the final list through a template.
//!
//! Every output is a minijinja template over the same context: `recipients` (sorted
//! list of `{address, local_part, domain, sources}`), `domains`, `catchall_domains`
//! and `count` (the number of addresses). The built-in templates live in
//! `templates/*.j2` and are embedded in the binary.
//!
//! A million-entry list through an interpreted template costs a few hundred
//! milliseconds per output, which is most of a sync. So each built-in template also
//! has a compiled renderer, used only while the template text is exactly the
//! embedded one; a property test proves the two produce identical bytes for
//! arbitrary lists. An overridden or user template always goes through minijinja.
//!
//! Rendering is pure and deterministic: same list, same bytes.

use std::io::{self, Write};
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Value};
use minijinja::{Environment, UndefinedBehavior};

use crate::policy::RecipientList;

/// The five built-in templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinTemplate {
    Postfix,
    PostfixDomains,
    Exim,
    Json,
    Plain,
}

const HEADER: &str = "# Managed by rcptsync: do not edit, changes are overwritten on the next sync.\n";

impl BuiltinTemplate {
    pub const ALL: [BuiltinTemplate; 5] = [
        BuiltinTemplate::Postfix,
        BuiltinTemplate::PostfixDomains,
        BuiltinTemplate::Exim,
        BuiltinTemplate::Json,
        BuiltinTemplate::Plain,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BuiltinTemplate::Postfix => "postfix",
            BuiltinTemplate::PostfixDomains => "postfix-domains",
            BuiltinTemplate::Exim => "exim",
            BuiltinTemplate::Json => "json",
            BuiltinTemplate::Plain => "plain",
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
    pub fn render(self, list: &RecipientList) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.render_to(list, &mut out);
        out
    }

    /// The compiled renderer, byte-identical to the embedded template, writing as
    /// it goes (give it a buffered writer).
    pub fn render_to(self, list: &RecipientList, out: &mut impl Write) -> io::Result<()> {
        match self {
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
            BuiltinTemplate::Json => {
                fn array<'a>(
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
                out.write_all(b"{\n")?;
                array(out, "domains", list.domains().iter().map(String::as_str), false)?;
                array(out, "catchall_domains", list.catchalls().iter().map(|c| c.domain()), false)?;
                array(out, "recipients", list.addresses().iter().map(|a| a.as_str()), true)?;
                out.write_all(b"}\n")?;
            }
        }
        Ok(())
    }
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
}

impl TemplateRef {
    pub fn embedded(name: &str, source: Arc<str>) -> TemplateRef {
        TemplateRef { name: name.into(), origin: "embedded".into(), source, fast: BuiltinTemplate::from_name(name) }
    }

    /// A template from `template_dir`, replacing or adding a named template.
    pub fn overridden(name: &str, path: String, source: Arc<str>) -> TemplateRef {
        TemplateRef { name: name.into(), origin: path, source, fast: None }
    }

    /// A `template_file`.
    pub fn user(path: String, source: String) -> TemplateRef {
        TemplateRef { name: path.clone(), origin: path, source: source.into(), fast: None }
    }

    pub fn fast_path(&self) -> Option<BuiltinTemplate> {
        self.fast
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the output is `key value` lines that `postmap` can index. User
    /// templates are trusted to know what they produce.
    pub fn is_key_value(&self) -> bool {
        match BuiltinTemplate::from_name(&self.name) {
            Some(BuiltinTemplate::Postfix | BuiltinTemplate::PostfixDomains) => true,
            Some(_) => self.fast.is_none() && self.origin != "embedded",
            None => true,
        }
    }

    /// Compiles the template, so syntax errors show up in `rcptsync check`.
    pub fn compile_check(&self) -> Result<(), String> {
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
            Some(b) => b.render_to(list, out).map_err(|e| format!("template {}: cannot write: {e}", self.origin)),
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
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(salt.unwrap_or_default().as_bytes());
    ctx.update(value.as_bytes());
    ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn sample_list() -> Arc<RecipientList> {
    use crate::policy::{Locator, RawItem, RawKind, normalise};
    let (ok, _) = normalise(vec![
        RawItem { value: "alice@example.com".into(), kind: RawKind::Address, locator: Locator::Line(1) },
        RawItem { value: "@example.org".into(), kind: RawKind::CatchAll, locator: Locator::Line(2) },
    ]);
    let p = crate::policy::Policy::new(&Default::default());
    Arc::new(p.apply(vec![("sample".into(), ok)]).0)
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
    use crate::profile::Catalog;
    use proptest::prelude::*;

    fn list(vals: &[&str]) -> Arc<RecipientList> {
        let items = vals
            .iter()
            .enumerate()
            .map(|(i, v)| RawItem {
                value: v.to_string(),
                kind: if v.starts_with('@') { RawKind::CatchAll } else { RawKind::Address },
                locator: Locator::Line(i as u32 + 1),
            })
            .collect();
        let (ok, _) = normalise(items);
        Arc::new(Policy::new(&Default::default()).apply(vec![("s".into(), ok)]).0)
    }

    fn builtin(name: &str) -> TemplateRef {
        Catalog::embedded().template(name).unwrap()
    }

    #[test]
    fn hashed_templates_hash_the_normalised_address_with_the_salt() {
        let l = list(&["Alice@Example.com", "@example.org"]);
        let out = String::from_utf8(builtin("exim-sha256").render_salted(&l, "pepper").unwrap()).unwrap();
        let want_a = sha256_filter("alice@example.com".into(), Some("pepper".into()));
        let want_c = sha256_filter("@example.org".into(), Some("pepper".into()));
        let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines, [want_c.as_str(), want_a.as_str()]);
        assert!(!out.contains("alice") && !out.contains("example"), "no address in clear: {out}");
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The compiled renderers are exactly the embedded templates.
        #[test]
        fn compiled_renderers_match_templates(
            vals in proptest::collection::vec("@?[a-zA-Z0-9.+_-]{1,8}@[a-z]{1,5}\\.(com|org|xn--bcher-kva)", 0..40)
        ) {
            let refs: Vec<&str> = vals.iter().map(String::as_str).collect();
            let l = list(&refs);
            for b in BuiltinTemplate::ALL {
                let t = builtin(b.name());
                let fast = b.render(&l);
                let slow = t.render_interpreted(&l).unwrap();
                prop_assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(slow).unwrap(), "template {}", b.name());
            }
        }
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

//! Connector profiles and templates as data: the embedded catalog, and overrides
//! from the operator's `profile_dir` / `template_dir`.
//!
//! Profiles only set defaults for one built-in `kind`; everything a directory product
//! does differently (filters, attributes, SQL) lives in these files, so supporting a
//! new product is a reviewed TOML file, not new Rust.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::writer::template::TemplateRef;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

/// One connector profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub kind: String,
    pub description: String,
    /// Where it came from: `embedded` or a file path.
    pub origin: String,
    pub defaults: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    kind: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    defaults: toml::Table,
}

/// The profiles and templates a config can refer to by name.
#[derive(Debug, Clone)]
pub struct Catalog {
    profiles: BTreeMap<String, Profile>,
    templates: BTreeMap<String, TemplateRef>,
}

type LoadErrors = Vec<(String, String)>;

impl Catalog {
    /// Only what is built into the binary.
    pub fn embedded() -> Catalog {
        let mut profiles = BTreeMap::new();
        for (name, text) in embedded::PROFILES {
            // Embedded profiles are checked by a unit test; a broken one is a build bug.
            if let Ok(p) = parse_profile(name, text, "embedded") {
                profiles.insert(name.to_string(), p);
            }
        }
        let templates = embedded::TEMPLATES
            .iter()
            .map(|(name, text)| (name.to_string(), TemplateRef::embedded(name, Arc::from(*text))))
            .collect();
        Catalog { profiles, templates }
    }

    /// The embedded catalog with files from the override directories on top: a file
    /// `NAME.toml` in `profile_dir` replaces or adds profile NAME, a file `NAME.j2` in
    /// `template_dir` replaces or adds template NAME.
    pub fn load(profile_dir: Option<&Path>, template_dir: Option<&Path>) -> Result<Catalog, LoadErrors> {
        let mut cat = Catalog::embedded();
        let mut errors = Vec::new();
        if let Some(dir) = profile_dir {
            for (name, path, text) in read_dir_files(dir, "toml", "profile_dir", &mut errors) {
                match parse_profile(&name, &text, &path) {
                    Ok(p) => {
                        cat.profiles.insert(name, p);
                    }
                    Err(e) => errors.push(("profile_dir".into(), format!("{path}: {e}"))),
                }
            }
        }
        if let Some(dir) = template_dir {
            for (name, path, text) in read_dir_files(dir, "j2", "template_dir", &mut errors) {
                cat.templates.insert(name.clone(), TemplateRef::overridden(&name, path, Arc::from(text)));
            }
        }
        if errors.is_empty() { Ok(cat) } else { Err(errors) }
    }

    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    pub fn profile_names(&self) -> Vec<&str> {
        self.profiles.keys().map(String::as_str).collect()
    }

    pub fn profiles(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.values()
    }

    pub fn template(&self, name: &str) -> Option<TemplateRef> {
        self.templates.get(name).cloned()
    }
}

fn parse_profile(name: &str, text: &str, origin: &str) -> Result<Profile, String> {
    let raw: RawProfile = toml::from_str(text).map_err(|e| e.message().to_string())?;
    for forbidden in ["name", "kind", "profile"] {
        if raw.defaults.contains_key(forbidden) {
            return Err(format!("[defaults] may not set {forbidden:?}"));
        }
    }
    Ok(Profile {
        name: name.to_string(),
        kind: raw.kind,
        description: raw.description,
        origin: origin.to_string(),
        defaults: raw.defaults,
    })
}

fn read_dir_files(dir: &Path, ext: &str, key: &str, errors: &mut LoadErrors) -> Vec<(String, String, String)> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            errors.push((key.into(), format!("cannot read {}: {e}", dir.display())));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in rd.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(ext) {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => out.push((name.to_string(), path.display().to_string(), text)),
            Err(e) => errors.push((key.into(), format!("cannot read {}: {e}", path.display()))),
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_profile_parses() {
        assert!(!embedded::PROFILES.is_empty());
        for (name, text) in embedded::PROFILES {
            let p = parse_profile(name, text, "embedded").unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!p.description.is_empty(), "{name} has no description");
        }
        assert_eq!(Catalog::embedded().profile_names().len(), embedded::PROFILES.len());
    }

    #[test]
    fn every_builtin_template_is_embedded() {
        let cat = Catalog::embedded();
        for name in crate::writer::template::BuiltinTemplate::names() {
            let t = cat.template(name).unwrap_or_else(|| panic!("template {name} not embedded"));
            assert!(t.fast_path().is_some(), "{name} should use its compiled renderer");
        }
    }

    #[test]
    fn override_dir_replaces_and_adds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("plain-list.toml"),
            "kind = \"file\"\ndescription = \"mine\"\n[defaults]\ncatchalls = true\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("extra.toml"), "kind = \"file\"\ndescription = \"x\"\n").unwrap();
        std::fs::write(dir.path().join("ignored.txt"), "not a profile").unwrap();
        let cat = Catalog::load(Some(dir.path()), None).unwrap();
        let p = cat.profile("plain-list").unwrap();
        assert_eq!(p.description, "mine");
        assert_eq!(p.defaults.get("catchalls"), Some(&toml::Value::Boolean(true)));
        assert!(p.origin.ends_with("plain-list.toml"));
        assert!(cat.profile("extra").is_some());
        assert!(cat.profile("ignored").is_none());
    }

    #[test]
    fn broken_override_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.toml"), "kind = \"file\"\n[defaults]\nname = \"x\"\n").unwrap();
        std::fs::write(dir.path().join("worse.toml"), "kind = ").unwrap();
        let errs = Catalog::load(Some(dir.path()), None).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].1.contains("bad.toml: [defaults] may not set \"name\""), "{errs:?}");
        assert!(errs[1].1.contains("worse.toml"), "{errs:?}");
        let errs = Catalog::load(Some(Path::new("/nonexistent/profiles")), None).unwrap_err();
        assert!(errs[0].1.starts_with("cannot read /nonexistent/profiles"), "{errs:?}");
    }

    #[test]
    fn template_override_loses_the_fast_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("postfix.j2"), "{% for r in recipients %}{{ r.address }} RELAY\n{% endfor %}")
            .unwrap();
        let cat = Catalog::load(None, Some(dir.path())).unwrap();
        let t = cat.template("postfix").unwrap();
        assert!(t.fast_path().is_none());
    }
}

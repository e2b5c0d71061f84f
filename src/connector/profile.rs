//! Connector profiles as data: the embedded ones (`connectors/*.toml`), and
//! overrides from the operator's `profile_dir`.
//!
//! Profiles only set defaults for one built-in `kind`; everything a directory product
//! does differently (filters, attributes, SQL) lives in these files, so supporting a
//! new product is a reviewed TOML file, not new Rust.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::section::LoadErrors;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/profiles.rs"));
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

/// The profiles a config can refer to by name.
#[derive(Debug, Clone)]
pub struct Profiles {
    profiles: BTreeMap<String, Profile>,
}

impl Profiles {
    /// Only what is built into the binary.
    pub fn embedded() -> Profiles {
        let mut profiles = BTreeMap::new();
        for (name, text) in embedded::PROFILES {
            // Embedded profiles are checked by a unit test; a broken one is a build bug.
            if let Ok(p) = parse_profile(name, text, "embedded") {
                profiles.insert(name.to_string(), p);
            }
        }
        Profiles { profiles }
    }

    /// The embedded profiles with `profile_dir` on top: a file `NAME.toml` there
    /// replaces or adds profile NAME.
    pub fn load(profile_dir: Option<&Path>) -> Result<Profiles, LoadErrors> {
        let mut cat = Profiles::embedded();
        let mut errors = Vec::new();
        if let Some(dir) = profile_dir {
            for (name, path, text) in crate::section::read_dir_files(dir, "toml", "profile_dir", &mut errors) {
                match parse_profile(&name, &text, &path) {
                    Ok(p) => {
                        cat.profiles.insert(name, p);
                    }
                    Err(e) => errors.push(("profile_dir".into(), format!("{path}: {e}"))),
                }
            }
        }
        if errors.is_empty() { Ok(cat) } else { Err(errors) }
    }

    /// Fills in profile `name`'s defaults for a `[[source]]` table of `kind`;
    /// the source's own keys win.
    pub fn apply(&self, name: &str, kind: &str, table: &mut toml::Table) -> Result<(), String> {
        match self.profile(name) {
            None => Err(format!("unknown profile {name:?}; known: {}", self.profile_names().join(", "))),
            Some(p) if p.kind != kind => Err(format!("profile {name:?} is for kind {:?}, not {kind:?}", p.kind)),
            Some(p) => {
                for (k, v) in &p.defaults {
                    table.entry(k.clone()).or_insert_with(|| v.clone());
                }
                Ok(())
            }
        }
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
        assert_eq!(Profiles::embedded().profile_names().len(), embedded::PROFILES.len());
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
        let cat = Profiles::load(Some(dir.path())).unwrap();
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
        let errs = Profiles::load(Some(dir.path())).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].1.contains("bad.toml: [defaults] may not set \"name\""), "{errs:?}");
        assert!(errs[1].1.contains("worse.toml"), "{errs:?}");
        let errs = Profiles::load(Some(Path::new("/nonexistent/profiles"))).unwrap_err();
        assert!(errs[0].1.starts_with("cannot read /nonexistent/profiles"), "{errs:?}");
    }
}

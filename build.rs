//! Embeds every connector profile (`connectors/*.toml`) and built-in template
//! (`templates/*.j2`) into the binary, so that adding a directory product is a
//! reviewed data file, not a Rust change.

use std::fmt::Write as _;
use std::path::Path;

fn embed(dir: &str, ext: &str, name: &str, out: &mut String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files: Vec<_> =
        std::fs::read_dir(&root).map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    files.retain(|p| p.extension().and_then(|e| e.to_str()) == Some(ext));
    files.sort();
    writeln!(out, "pub static {name}: &[(&str, &str)] = &[").unwrap();
    for p in files {
        println!("cargo:rerun-if-changed={}", p.display());
        let stem = p.file_stem().and_then(|s| s.to_str()).expect("utf-8 file name");
        writeln!(out, "    ({stem:?}, include_str!({:?})),", p.display().to_string()).unwrap();
    }
    writeln!(out, "];").unwrap();
}

fn main() {
    let out_dir = std::env::var("OUT_DIR").expect("OUT_DIR");
    for (dir, ext, name, file) in
        [("connectors", "toml", "PROFILES", "profiles.rs"), ("templates", "j2", "TEMPLATES", "templates.rs")]
    {
        let mut out = String::new();
        embed(dir, ext, name, &mut out);
        std::fs::write(Path::new(&out_dir).join(file), out).expect("write embedded list");
    }
}

//! Writers: render every output (pure), compare with disk, and commit the changed
//! ones as one transaction with their hooks.
//!
//! Commit order: stage every changed output (temp files and databases complete
//! before anything is visible); install them; run each output's `check`; run each
//! distinct `reload` once. If anything fails, every installed output is put back
//! byte for byte, and reloads that already ran are run again so the MTA picks the
//! old files up again. Hooks run only for outputs whose bytes changed.

pub mod commit;
pub mod config;
pub mod hook;
pub mod sink;
pub mod template;

use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use crate::policy::RecipientList;
use commit::{Installed, Staged, Target};
use config::OutputConfig;
use sink::OutputSink;

/// One output after rendering and comparing with disk.
#[derive(Debug)]
pub struct Rendered {
    /// Length and xxh3-128 of the rendered bytes (the bytes themselves are not
    /// kept: a million-entry output is tens of megabytes).
    pub len: u64,
    pub hash: String,
    pub changed: bool,
    /// Lines only in the new version, and only in the old one (with `--diff`).
    pub diff: Option<(Vec<String>, Vec<String>)>,
    /// The complete temp files of a changed output, when rendering was asked to
    /// stage them.
    pub staged: Option<Result<Staged, commit::CommitError>>,
}

/// What happened to one output.
#[derive(Debug, Clone)]
pub struct OutputOutcome {
    pub name: String,
    pub path: PathBuf,
    pub changed: bool,
    pub reloaded: bool,
    pub error: Option<String>,
}

pub fn target(o: &OutputConfig) -> Target {
    // A symlinked output is replaced atomically where it really is, so the link
    // keeps working. A link that may not be followed (see `preflight`) is
    // replaced itself, never followed.
    let path = crate::secure_fs::resolve_link(&o.path).unwrap_or_else(|_| o.path.clone());
    let companion = match &o.render {
        config::Render::Bundle(_) => Some(commit::Companion::Signature(None)),
        config::Render::Template(_) => o.map.map(commit::Companion::Map),
    };
    Target { path, companion, mode: o.mode, hook_timeout: o.hook_timeout }
}

/// Before a run reads anything: every output's symbolic links may be followed
/// (they and their directories belong to the effective user or root), and its
/// directory is writable by no one else. The error names the output and the fix.
pub fn preflight(outputs: &[OutputConfig]) -> Result<(), String> {
    for o in outputs {
        let path = crate::secure_fs::resolve_link(&o.path).map_err(|e| format!("output {}: {e}", o.name))?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if let Some(why) = crate::secure_fs::unsafe_dir(dir) {
            return Err(format!("output {}: directory {why}", o.name));
        }
    }
    Ok(())
}

/// A postmap or makemap output must not be a link: the tool builds `path.db`
/// next to the file it is given, which would not be where the MTA looks.
fn check_link(o: &OutputConfig) -> Result<(), String> {
    let is_link = std::fs::symlink_metadata(&o.path).is_ok_and(|m| m.file_type().is_symlink());
    if let (true, Some(map)) = (is_link, o.map) {
        return Err(format!(
            "output {}: {} is a symbolic link, and {} would build its database beside the link's target, \
             not where the MTA looks: point path at the real file",
            o.name,
            o.path.display(),
            map.program()
        ));
    }
    Ok(())
}

/// Renders every output and compares it with what is on disk. Outputs are
/// independent, so they are rendered in parallel.
pub fn render_all(
    outputs: &[OutputConfig],
    list: &Arc<RecipientList>,
    want_diff: bool,
    stage: bool,
) -> Vec<Result<Rendered, String>> {
    if stage {
        // Leftovers of a killed run go even when nothing changes: a stray hard link
        // to an old map would hide the change from Postfix's "table has changed" check.
        for o in outputs {
            target(o).clean_leftovers();
        }
    }
    outputs
        .par_iter()
        .map(|o| {
            check_link(o)?;
            let salt = match &o.hash_salt {
                Some(src) => src.resolve("hash_salt").map_err(|e| format!("output {}: {e}", o.name))?,
                None => crate::secret::Secret::new(String::new()),
            };
            // Rendered straight into a sink that compares with the file on disk and,
            // from the first difference on, writes the temp file: a changed output's
            // I/O overlaps the rendering of the others, and nothing becomes visible
            // before commit_all.
            let mut tg = target(o);
            let rendered_bundle = match &o.render {
                config::Render::Template(_) => None,
                config::Render::Bundle(spec) => {
                    let r = render_bundle(o, spec, list, &salt).map_err(|e| format!("output {}: {e}", o.name))?;
                    tg.companion = Some(commit::Companion::Signature(Some(r.1)));
                    Some(r.0)
                }
            };
            let sink = OutputSink::new(tg, stage, want_diff).map_err(|e| format!("output {}: {e}", o.name))?;
            let mut w = BufWriter::with_capacity(1 << 20, sink);
            match (&o.render, rendered_bundle) {
                (config::Render::Template(t), _) => {
                    t.render_salted_to(list, salt.expose(), &mut w).map_err(|e| format!("output {}: {e}", o.name))?
                }
                (config::Render::Bundle(_), Some(bytes)) => {
                    w.write_all(&bytes).map_err(|e| format!("output {}: cannot write: {e}", o.name))?
                }
                (config::Render::Bundle(_), None) => return Err(format!("output {}: bundle not rendered", o.name)),
            }
            let sink = w.into_inner().map_err(|e| format!("output {}: {}", o.name, e.error()))?;
            let sink::Finished { len, hash, changed, staged, kept } = sink.finish();
            let diff = match kept {
                Some(bytes) if changed => Some(line_diff(&o.path, &bytes)),
                _ => None,
            };
            Ok(Rendered { len, hash, changed, diff, staged })
        })
        .collect()
}

/// A hub's bundle: rendered against the one on disk (so an unchanged list keeps
/// its bytes) and the signer its signature will be made with.
fn render_bundle(
    o: &OutputConfig,
    spec: &config::BundleSpec,
    list: &RecipientList,
    salt: &crate::secret::Secret,
) -> Result<(Vec<u8>, Arc<commit::Signer>), String> {
    let key = crate::bundle::SigningKey::load(&spec.signing_key_file).map_err(|e| e.to_string())?;
    let previous = std::fs::read(&o.path).ok();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let publish = crate::bundle::Publish {
        publisher: &spec.publisher,
        key_id: key.id(),
        salt: o.hash_salt.is_some().then(|| salt.expose()),
        refresh_secs: i64::try_from(spec.refresh.as_secs()).unwrap_or(i64::MAX),
        now_unix: now,
    };
    let r = crate::bundle::render(list, &publish, previous.as_deref());
    let comment = r.trusted_comment();
    Ok((r.bytes, Arc::new(commit::Signer { key, comment })))
}

fn line_diff(path: &std::path::Path, new: &[u8]) -> (Vec<String>, Vec<String>) {
    let old = std::fs::read(path).unwrap_or_default();
    let old_text = String::from_utf8_lossy(&old);
    let new_text = String::from_utf8_lossy(new);
    let old_set: HashSet<&str> = old_text.lines().collect();
    let new_set: HashSet<&str> = new_text.lines().collect();
    let mut added: Vec<String> = new_text.lines().filter(|l| !old_set.contains(l)).map(String::from).collect();
    let mut removed: Vec<String> = old_text.lines().filter(|l| !new_set.contains(l)).map(String::from).collect();
    added.sort();
    added.dedup();
    removed.sort();
    removed.dedup();
    (added, removed)
}

/// Writes every changed output, runs the hooks, and rolls everything back on any
/// failure. Returns one outcome per output, in config order.
pub fn commit_all(outputs: &[OutputConfig], rendered: &mut [Rendered]) -> Vec<OutputOutcome> {
    let mut outcomes: Vec<OutputOutcome> = outputs
        .iter()
        .zip(rendered.iter())
        .map(|(o, r)| OutputOutcome {
            name: o.name.clone(),
            path: o.path.clone(),
            changed: r.changed,
            reloaded: false,
            error: None,
        })
        .collect();
    let changed: Vec<usize> = (0..outputs.len()).filter(|&i| rendered[i].changed).collect();
    if changed.is_empty() {
        return outcomes;
    }

    // 1. Stage: all temp files and databases complete before anything is visible
    //    (render_all staged them already when asked to).
    let pre_staged: Vec<Option<Result<Staged, commit::CommitError>>> =
        changed.iter().map(|&i| rendered[i].staged.take()).collect();
    let staged: Vec<(usize, Result<Staged, commit::CommitError>)> = changed
        .par_iter()
        .zip(pre_staged)
        .map(|(&i, pre)| {
            let not_staged = || Err(commit::CommitError::NotStaged(outputs[i].path.clone()));
            (i, pre.unwrap_or_else(not_staged))
        })
        .collect();
    let mut ready = Vec::new();
    let mut failed = false;
    for (i, s) in staged {
        match s {
            Ok(s) => ready.push((i, s)),
            Err(e) => {
                outcomes[i].error = Some(e.to_string());
                failed = true;
            }
        }
    }
    if failed {
        // Dropping the staged files removes them; nothing was visible.
        return abandon(outcomes, &changed, "not written because another output failed");
    }

    // 2. Install and check, output by output.
    let mut installed: Vec<(usize, Installed)> = Vec::new();
    for (i, s) in ready {
        match s.install() {
            Ok(inst) => installed.push((i, inst)),
            Err(e) => {
                outcomes[i].error = Some(e.to_string());
                failed = true;
                break;
            }
        }
        if let Some(argv) = &outputs[i].check
            && let Err(e) = hook::run(argv, outputs[i].hook_timeout)
        {
            outcomes[i].error = Some(format!("check failed, previous version restored: {e}"));
            failed = true;
            break;
        }
    }

    // 3. Reload: each distinct command once, after every output is in place.
    let mut reloaded_cmds: Vec<&Vec<String>> = Vec::new();
    if !failed {
        for &(i, _) in &installed {
            let Some(argv) = &outputs[i].reload else {
                continue;
            };
            if reloaded_cmds.contains(&argv) {
                outcomes[i].reloaded = true;
                continue;
            }
            match hook::run(argv, outputs[i].hook_timeout) {
                Ok(()) => {
                    reloaded_cmds.push(argv);
                    outcomes[i].reloaded = true;
                }
                Err(e) => {
                    outcomes[i].error = Some(format!("reload failed, previous version restored: {e}"));
                    failed = true;
                    break;
                }
            }
        }
    }

    if !failed {
        for (_, inst) in installed {
            inst.finish();
        }
        return outcomes;
    }

    // Roll back every installed output, then let the MTAs that already reloaded
    // see the old files again.
    for (i, inst) in installed {
        if let Err(e) = inst.rollback() {
            let msg = format!("ROLLBACK FAILED: {e}");
            tracing::error!(output = %outputs[i].name, "{msg}");
            outcomes[i].error.get_or_insert(msg);
        }
    }
    for argv in reloaded_cmds {
        if let Err(e) = hook::run(argv, outputs[0].hook_timeout) {
            tracing::error!(command = %argv.join(" "), error = %e, "reload after rollback failed");
        }
    }
    for o in &mut outcomes {
        o.reloaded = false;
    }
    abandon(outcomes, &changed, "rolled back because another output failed")
}

fn abandon(mut outcomes: Vec<OutputOutcome>, changed: &[usize], why: &str) -> Vec<OutputOutcome> {
    for &i in changed {
        outcomes[i].changed = false;
        outcomes[i].error.get_or_insert_with(|| why.to_string());
    }
    outcomes
}

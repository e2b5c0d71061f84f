//! The result of a run: the JSON object of DESIGN.md for machines, a short summary
//! for people, and the exit code for pipelines.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;

/// Exit codes (DESIGN.md).
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const CHANGED: u8 = 2;
    pub const GUARD: u8 = 3;
    pub const USAGE: u8 = 64;
    pub const CONFIG: u8 = 78;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceStatus {
    Ok,
    Failed,
    LastGood,
}

impl SourceStatus {
    fn as_str(self) -> &'static str {
        match self {
            SourceStatus::Ok => "ok",
            SourceStatus::Failed => "failed",
            SourceStatus::LastGood => "last_good",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    pub name: String,
    pub kind: String,
    pub status: SourceStatus,
    pub recipients: usize,
    pub error: Option<String>,
    /// How long the fetch took (for metrics).
    #[serde(skip)]
    pub took: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputReport {
    pub name: String,
    pub path: PathBuf,
    pub changed: bool,
    pub reloaded: bool,
    #[serde(skip)]
    pub diff: Option<(Vec<String>, Vec<String>)>,
    #[serde(skip)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GuardReport {
    pub ok: bool,
    pub reason: Option<String>,
}

/// How the run ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Outcome {
    #[default]
    Success,
    GuardRefused,
    Failed(String),
}

/// The run report. Serialises to exactly the JSON shape of DESIGN.md.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub changed: bool,
    pub recipients: usize,
    pub added: usize,
    pub removed: usize,
    pub guard: GuardReport,
    pub sources: Vec<SourceReport>,
    pub outputs: Vec<OutputReport>,
    #[serde(skip)]
    pub outcome: Outcome,
    #[serde(skip)]
    pub elapsed: Duration,
    #[serde(skip)]
    pub dry_run: bool,
}

impl Report {
    pub fn new(sources: Vec<SourceReport>, cfg: &Config) -> Report {
        Report {
            changed: false,
            recipients: 0,
            added: 0,
            removed: 0,
            guard: GuardReport { ok: true, reason: None },
            sources,
            outputs: cfg
                .outputs
                .iter()
                .map(|o| OutputReport {
                    name: o.name.clone(),
                    path: o.path.clone(),
                    changed: false,
                    reloaded: false,
                    diff: None,
                    error: None,
                })
                .collect(),
            outcome: Outcome::Success,
            elapsed: Duration::ZERO,
            dry_run: false,
        }
    }

    /// The exit code of `sync` for this report.
    pub fn exit_code(&self, detailed: bool) -> u8 {
        match &self.outcome {
            Outcome::Failed(_) => exit::FAILURE,
            Outcome::GuardRefused => exit::GUARD,
            Outcome::Success if detailed && self.changed => exit::CHANGED,
            Outcome::Success => exit::OK,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\": \"cannot serialise report: {e}\"}}"))
    }

    /// The diff of every changed output, as `+ line` / `- line`.
    pub fn diff_text(&self) -> String {
        let mut s = String::new();
        for o in &self.outputs {
            let Some((added, removed)) = &o.diff else {
                continue;
            };
            let _ = writeln!(s, "--- {} ({}): +{} -{}", o.name, o.path.display(), added.len(), removed.len());
            for l in removed {
                let _ = writeln!(s, "- {l}");
            }
            for l in added {
                let _ = writeln!(s, "+ {l}");
            }
        }
        s
    }

    /// A summary an operator reads at a glance.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let w = self
            .sources
            .iter()
            .map(|x| x.name.len())
            .max()
            .unwrap_or(0)
            .max(self.outputs.iter().map(|o| o.name.len()).max().unwrap_or(0));
        for x in &self.sources {
            let _ =
                write!(s, "source  {:w$}  {:6}  {:9}  {:>9} entries", x.name, x.kind, x.status.as_str(), x.recipients);
            if let Some(e) = &x.error {
                let _ = write!(s, "  ({e})");
            }
            s.push('\n');
        }
        match &self.outcome {
            Outcome::Failed(e)
                if self.recipients == 0
                    && self.outputs.iter().all(|o| !o.changed)
                    && self.guard.ok
                    && self.added == 0 =>
            {
                let _ = writeln!(s, "FAILED: {e}");
                return s;
            }
            _ => {}
        }
        let _ = writeln!(s, "list    {} entries (+{} -{})", self.recipients, self.added, self.removed);
        match (&self.guard.ok, &self.guard.reason) {
            (true, None) => {}
            (true, Some(r)) => {
                let _ = writeln!(s, "guard   {r}");
            }
            (false, r) => {
                let _ = writeln!(s, "guard   REFUSED: {}; outputs left unchanged", r.as_deref().unwrap_or("?"));
            }
        }
        if self.outcome != Outcome::GuardRefused {
            for o in &self.outputs {
                let state = match (&o.error, o.changed, o.reloaded, self.dry_run) {
                    (Some(e), _, _, _) => format!("FAILED: {e}"),
                    (None, true, _, true) => "would change".to_string(),
                    (None, true, true, false) => "changed, reloaded".to_string(),
                    (None, true, false, false) => "changed".to_string(),
                    (None, false, _, _) => "unchanged".to_string(),
                };
                let _ = writeln!(s, "output  {:w$}  {}  {state}", o.name, o.path.display());
            }
        }
        if let Outcome::Failed(e) = &self.outcome {
            let _ = writeln!(s, "FAILED: {e}");
        }
        s
    }
}

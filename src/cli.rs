//! The command line: argument definitions (clap), logging setup, and one function
//! per command that returns the process exit code.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Config};
use crate::connector::Source;
use crate::policy::address::{Entry, parse_catchall};
use crate::policy::digest::digest_entry;
use crate::report::exit;
use crate::run::{self, SyncOptions};
use crate::state::StateDir;

const AFTER_HELP: &str = "\
Exit codes:
  0   success (with --detailed-exitcode: success and nothing changed)
  1   failure: a source failed with no usable last-known-good copy, or a write or
      hook failed and was rolled back
  2   with --detailed-exitcode only: success and at least one output changed
  3   the guard refused the new list; nothing was written
  64  command-line usage error
  78  invalid configuration

Config file: -c FILE, else $RCPTSYNC_CONFIG, else /etc/rcptsync/rcptsync.toml.
Logs go to stderr; RCPTSYNC_LOG sets the filter (e.g. debug, rcptsync=trace).";

/// Keeps a backup MX's list of valid recipients in sync with your directories.
///
/// rcptsync reads valid addresses from your directories, validates and merges
/// them, refuses lists that look wrong (empty, too small, shrinking too fast), and
/// writes Postfix relay_recipient_maps, Exim lists or JSON atomically, reloading
/// the MTA only when something changed.
#[derive(Debug, Parser)]
#[command(name = "rcptsync", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "RCPTSYNC_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Config file [default: $RCPTSYNC_CONFIG, else /etc/rcptsync/rcptsync.toml]
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one sync: fetch, merge, guard, write changed outputs, reload.
    ///
    /// Examples:
    ///   rcptsync sync                          # one run, summary on stdout
    ///   rcptsync sync --dry-run --diff         # what would change, nothing written
    ///   rcptsync sync --detailed-exitcode      # exit 2 when an output changed
    ///   rcptsync sync --format json            # the report as one JSON object
    #[command(verbatim_doc_comment, after_help = AFTER_HELP)]
    Sync {
        #[command(flatten)]
        config: ConfigArg,
        /// Write nothing and run no hook; report what would change.
        #[arg(long)]
        dry_run: bool,
        /// Print the lines each output would gain and lose.
        #[arg(long)]
        diff: bool,
        /// Publish even if the guard refuses the list (never skips address validation);
        /// also drops entries in removal grace at once.
        #[arg(long)]
        force: bool,
        /// Drop entries that left every source now, ignoring guard.removal_grace.
        #[arg(long)]
        no_grace: bool,
        /// Report format on stdout.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Exit 2 when an output changed, 0 when nothing changed (for Ansible/Puppet).
        #[arg(long)]
        detailed_exitcode: bool,
    },
    /// Validate the config, profiles and templates, reporting every error at once.
    ///
    /// Without --offline it also connects to every source and checks that the
    /// output directories, the state directory and postmap are usable.
    #[command(after_help = AFTER_HELP)]
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Validate only; no network, no source access (for CI of a config repo).
        #[arg(long)]
        offline: bool,
    },
    /// Fetch and merge, then print the final recipient list. Writes nothing.
    #[command(after_help = AFTER_HELP)]
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Run on the `[daemon] schedule`, reloading the config when it changes.
    ///
    /// Runs once at start, then at every tick of the cron line (sources with their
    /// own `schedule` are fetched at their own ticks). Runs never overlap. A change
    /// to the config file, a user profile or a user template, or SIGHUP, reloads
    /// the config after validating it; an invalid new config is logged with every
    /// error and the old one keeps running. SIGTERM/SIGINT let the current run
    /// finish, then exit 0. With `[daemon] listen`: GET /metrics and GET /healthz.
    #[command(after_help = AFTER_HELP)]
    Daemon {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Serve one output's list to Postfix as a socketmap lookup table.
    ///
    /// For hashed lists (template exim-sha256) Postfix cannot hash the key itself;
    /// this server hashes each query with the output's hash_salt. The list is
    /// re-read whenever a sync replaces it; while it cannot be read, lookups
    /// answer TEMP so that Postfix tempfails.
    ///
    /// Example (main.cf: relay_recipient_maps = socketmap:unix:/run/rcptsync/map.sock:relay):
    ///   rcptsync socketmap --output exim-hashed --listen unix:/run/rcptsync/map.sock
    #[command(verbatim_doc_comment, after_help = AFTER_HELP)]
    Socketmap {
        #[command(flatten)]
        config: ConfigArg,
        /// The `[[output]]` whose file is served.
        #[arg(long, value_name = "NAME")]
        output: String,
        /// unix:/path/to/socket, or inet:127.0.0.1:PORT (loopback only). Not
        /// needed under a systemd socket unit, which hands the socket over
        /// (LISTEN_FDS).
        #[arg(long, value_name = "ADDRESS")]
        listen: Option<String>,
    },
    /// Print a commented starting config for one source kind and one MTA.
    ///
    /// Examples:
    ///   rcptsync init > /etc/rcptsync/rcptsync.toml      (a file source, a plain list)
    ///   rcptsync init --source ad --mta postfix
    ///   rcptsync init --source sql --profile mailcow --mta exim
    #[command(verbatim_doc_comment)]
    Init {
        /// Where the recipients come from.
        #[arg(long, value_enum, default_value = "file")]
        source: crate::init::InitSource,
        /// The product, for --source sql (postfixadmin, iredmail, mailcow,
        /// modoboa, mailu) or ldap (openldap, iredmail-ldap).
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
        /// Which MTA reads the list (none: a plain list under /var/lib/rcptsync/out).
        /// OpenSMTPD and Sendmail need the MTA-side lines in the comments too.
        #[arg(long, value_enum, default_value = "none")]
        mta: crate::init::InitMta,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// Examples:
    ///   rcptsync completions bash > /etc/bash_completion.d/rcptsync
    ///   rcptsync completions zsh > /usr/local/share/zsh/site-functions/_rcptsync
    #[command(verbatim_doc_comment)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), e.g. `rcptsync man > /usr/local/share/man/man1/rcptsync.1`.
    Man,
    /// Make a key pair for signing bundles: PREFIX.key (secret, mode 0600) and
    /// PREFIX.pub, in minisign's formats. Never overwrites a key.
    ///
    /// Examples:
    ///   rcptsync keygen --out /etc/rcptsync/hub          # on the hub
    ///   minisign -Vm bundle -p /etc/rcptsync/hub.pub     # anyone can check a bundle
    #[command(verbatim_doc_comment)]
    Keygen {
        /// Path prefix of the two files.
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
    },
    /// Bundles (signed lists a hub publishes for its edges).
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Explain whether ADDRESS is accepted, which source produced it, or which rule
    /// dropped it. Exits 0 when accepted, 1 when not.
    #[command(after_help = AFTER_HELP)]
    Why {
        /// The address to explain (or @domain for a catch-all).
        address: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Check FILE against FILE.minisig and a public key, and print its header.
    /// Exits 0 when valid, 1 when not.
    ///
    /// Examples:
    ///   rcptsync bundle verify /var/www/rcptsync/bundle --public-key /etc/rcptsync/hub.pub
    ///   rcptsync bundle verify bundle --public-key RWQ...   (the key itself)
    #[command(verbatim_doc_comment)]
    Verify {
        /// The bundle; its signature is FILE.minisig.
        file: PathBuf,
        /// A .pub file, or the key itself.
        #[arg(long, value_name = "PUB")]
        public_key: String,
    },
}

/// Parses arguments and runs the command; returns the exit code.
pub fn main() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => exit::OK,
                _ => exit::USAGE,
            };
        }
    };
    init_logging(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rcptsync: cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    rt.block_on(run_command(cli.command))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RCPTSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}

fn load(arg: &ConfigArg) -> Result<Config, u8> {
    let path = config::resolve_path(arg.config.as_deref());
    config::load(&path).map_err(|e| {
        eprintln!("{e}");
        exit::CONFIG
    })
}

fn keygen(prefix: &Path) -> u8 {
    let written = crate::bundle::SigningKey::generate().and_then(|k| k.write_new(prefix).map(|paths| (k.id(), paths)));
    match written {
        Ok((id, (secret, public))) => {
            print(&format!(
                "key {id}\n  secret: {} (mode 0600: give it to the hub's rcptsync user only)\n  public: {} (give it to the edges)\n",
                secret.display(),
                public.display()
            ));
            exit::OK
        }
        Err(e) => {
            eprintln!("rcptsync keygen: {e}");
            exit::FAILURE
        }
    }
}

fn bundle_verify(file: &Path, public_key: &str) -> u8 {
    let key = match crate::bundle::PublicKey::from_arg(public_key) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("rcptsync bundle verify: {e}");
            return exit::USAGE;
        }
    };
    let mut sig_path = file.as_os_str().to_owned();
    sig_path.push(crate::bundle::SIG_SUFFIX);
    let read = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display())).and_then(|bytes| {
        std::fs::read_to_string(&sig_path)
            .map(|sig| (bytes, sig))
            .map_err(|e| format!("{}: {e}", Path::new(&sig_path).display()))
    });
    let (bytes, sig) = match read {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rcptsync bundle verify: {e}");
            return exit::FAILURE;
        }
    };
    match crate::bundle::verify(&bytes, &sig, &key) {
        Ok(v) => {
            print(&format!("valid: {}: {}\n", file.display(), v.header.summary()));
            exit::OK
        }
        Err(e) => {
            eprintln!("rcptsync bundle verify: {}: refused: {e}", file.display());
            exit::FAILURE
        }
    }
}

fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`rcptsync list | head`) is not an error worth a panic.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

async fn run_command(cmd: Command) -> u8 {
    match cmd {
        Command::Sync { config, dry_run, diff, force, no_grace, format, detailed_exitcode } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let opts = SyncOptions { dry_run, diff, force, no_grace };
            match run::sync(&cfg, opts).await {
                Ok(mut report) => {
                    report.dry_run = dry_run;
                    if diff {
                        let d = report.diff_text();
                        // With JSON on stdout, the diff goes to stderr to keep stdout parseable.
                        if format == Format::Json { eprint!("{d}") } else { print(&d) }
                    }
                    match format {
                        Format::Json => print(&format!("{}\n", report.to_json())),
                        Format::Text => print(&report.to_text()),
                    }
                    report.exit_code(detailed_exitcode)
                }
                Err(e) => {
                    eprintln!("rcptsync: {e}");
                    if e.is_setup() { exit::CONFIG } else { exit::FAILURE }
                }
            }
        }
        Command::Check { config, offline } => check(&config, offline).await,
        Command::List { config, format } => list(&config, format).await,
        Command::Why { address, config } => why(&config, &address).await,
        Command::Daemon { config } => crate::daemon::run(config::resolve_path(config.config.as_deref())).await,
        Command::Socketmap { config, output, listen } => {
            crate::socketmap::run(&config::resolve_path(config.config.as_deref()), &output, listen.as_deref()).await
        }
        Command::Init { source, profile, mta } => match crate::init::config(source, profile.as_deref(), mta) {
            Ok(text) => {
                print(&text);
                exit::OK
            }
            Err(e) => {
                eprintln!("rcptsync init: {e}");
                exit::USAGE
            }
        },
        Command::Keygen { out } => keygen(&out),
        Command::Bundle(BundleCommand::Verify { file, public_key }) => bundle_verify(&file, &public_key),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "rcptsync", &mut out);
            print(&String::from_utf8_lossy(&out));
            exit::OK
        }
        Command::Man => {
            use clap::CommandFactory as _;
            let mut out = Vec::new();
            match clap_mangen::Man::new(Cli::command()).render(&mut out) {
                Ok(()) => {
                    print(&String::from_utf8_lossy(&out));
                    exit::OK
                }
                Err(e) => {
                    eprintln!("rcptsync: {e}");
                    exit::FAILURE
                }
            }
        }
    }
}

async fn check(arg: &ConfigArg, offline: bool) -> u8 {
    let cfg = match load(arg) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut out = format!(
        "{}: configuration is valid ({} source{}, {} output{})\n",
        config::resolve_path(arg.config.as_deref()).display(),
        cfg.sources.len(),
        if cfg.sources.len() == 1 { "" } else { "s" },
        cfg.outputs.len(),
        if cfg.outputs.len() == 1 { "" } else { "s" },
    );
    for s in &cfg.sources {
        let profile = s.profile.as_deref().map(|p| format!(", profile {p}")).unwrap_or_default();
        out.push_str(&format!("  source {} ({}{profile})\n", s.name, s.spec.kind()));
    }
    for o in &cfg.outputs {
        let map = o.map.map(|m| format!(", {}", m.describe())).unwrap_or_default();
        out.push_str(&format!("  output {} -> {} (template {}{map})\n", o.name, o.path.display(), o.template_name()));
    }
    if offline {
        print(&out);
        return exit::OK;
    }
    let mut failed = false;
    for s in &cfg.sources {
        let probe = Source::build(&s.name, &s.spec, None, s.fetch_timeout);
        let checked = tokio::time::timeout(s.fetch_timeout, probe.check())
            .await
            .unwrap_or_else(|_| Err(crate::connector::SourceError::new("did not answer within fetch_timeout")));
        match checked {
            Ok(desc) => out.push_str(&format!("  ok      source {}: {desc}\n", s.name)),
            Err(e) => {
                failed = true;
                out.push_str(&format!("  FAILED  source {} ({}): {e}\n", s.name, s.spec.kind()));
            }
        }
    }
    for o in &cfg.outputs {
        if let Err(e) = crate::writer::preflight(std::slice::from_ref(o)) {
            failed = true;
            out.push_str(&format!("  FAILED  {e}\n"));
            continue;
        }
        let dir = o.path.parent().unwrap_or(std::path::Path::new("."));
        match probe_dir(dir) {
            Ok(()) => out.push_str(&format!("  ok      output {}: {} is writable\n", o.name, dir.display())),
            Err(e) => {
                failed = true;
                out.push_str(&format!("  FAILED  output {}: {}: {e}\n", o.name, dir.display()));
            }
        }
        if let Some(map) = o.map
            && !in_path(map.program())
        {
            failed = true;
            out.push_str(&format!("  FAILED  output {}: {} is not on PATH\n", o.name, map.program()));
        }
    }
    // Only probe: taking the run lock here would fail while a sync is running.
    let state_probe = StateDir::open(&cfg.state_dir, true)
        .map_err(|e| e.to_string())
        .and_then(|_| probe_dir(&cfg.state_dir).map_err(|e| format!("{}: {e}", cfg.state_dir.display())));
    match state_probe {
        Ok(()) => out.push_str(&format!("  ok      state_dir {} is usable\n", cfg.state_dir.display())),
        Err(e) => {
            failed = true;
            out.push_str(&format!("  FAILED  state_dir: {e}\n"));
        }
    }
    print(&out);
    if failed { exit::FAILURE } else { exit::OK }
}

fn probe_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let (_, probe) = crate::secure_fs::create_temp(dir, "rcptsync-check", "probe", 0o600)?;
    std::fs::remove_file(&probe)
}

fn in_path(prog: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file())).unwrap_or(false)
}

/// Fetch + merge with the normal source-failure rules; never writes.
async fn gather_and_merge(cfg: &Config, full: bool) -> Result<(Vec<run::Gathered>, crate::policy::RecipientList), u8> {
    let state = match StateDir::open(&cfg.state_dir, false) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rcptsync: {e}");
            return Err(exit::FAILURE);
        }
    };
    let mut gathered = if full { run::gather_full(cfg, &state).await } else { run::gather(cfg, &state).await };
    // What `sync` would publish: entries in removal grace included (read-only here).
    if let Some(grace) = cfg.guard.removal_grace {
        run::keep_in_grace(&state, &mut gathered, grace);
    }
    let failed: Vec<&str> = gathered
        .iter()
        .filter(|g| g.status == crate::report::SourceStatus::Failed)
        .filter_map(|g| g.error.as_deref())
        .collect();
    if !failed.is_empty() {
        eprintln!("rcptsync: {}", failed.join("; "));
        return Err(exit::FAILURE);
    }
    let (list, _) = tokio::task::block_in_place(|| run::merge(cfg, &gathered));
    Ok((gathered, list))
}

async fn list(arg: &ConfigArg, format: Format) -> u8 {
    let cfg = match load(arg) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (_, list) = match gather_and_merge(&cfg, false).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    match format {
        Format::Text => {
            let mut s = String::with_capacity(list.len() * 24);
            for e in list.entries() {
                s.push_str(e.as_str());
                s.push('\n');
            }
            print(&s);
        }
        Format::Json => {
            let recipients: Vec<serde_json::Value> = list
                .addresses()
                .iter()
                .enumerate()
                .map(|(i, e)| serde_json::json!({"address": e.as_str(), "sources": list.address_source_names(i)}))
                .collect();
            let v = serde_json::json!({
                "count": list.len(),
                "domains": list.domains(),
                "catchall_domains": list.catchalls().iter().map(|c| c.domain()).collect::<Vec<_>>(),
                "recipients": recipients,
            });
            print(&format!("{v}\n"));
        }
    }
    exit::OK
}

async fn why(arg: &ConfigArg, address: &str) -> u8 {
    let cfg = match load(arg) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (gathered, list) = match gather_and_merge(&cfg, true).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let published = published_contains(&cfg, address);
    let answer = crate::why::explain(&cfg, address, &gathered, &list, published);
    print(&answer.text);
    if answer.accepted { exit::OK } else { exit::FAILURE }
}

/// Whether the last applied list (state) covers the address, if it can be read.
fn published_contains(cfg: &Config, address: &str) -> Option<bool> {
    let state = StateDir::open(&cfg.state_dir, false).ok()?;
    let (_, entries) = state.read_list(&state.applied_path()).ok()??;
    let e = Entry::parse(address).ok()?;
    let catchall = parse_catchall(e.domain()).ok()?;
    // An edge of a hashed bundle keeps digests.
    let (e, catchall) = match cfg.read_digest_salt().ok()? {
        Some(salt) => (digest_entry(&e, salt.expose())?, digest_entry(&catchall, salt.expose())?),
        None => (e, catchall),
    };
    // read_list verified the entries are sorted and unique.
    Some(entries.binary_search(&e).is_ok() || entries.binary_search(&catchall).is_ok())
}

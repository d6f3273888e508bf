//! analytics-stack: the command line of the analytics-stack daemon.

use analytics_stack::client::{exit_code, JobProxy, ManagerProxy};
use analytics_stack::config;
use analytics_stack::model::paths;
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "analytics-stack",
    version,
    about = "Install, configure and watch the analytics stack on this host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum WorkerAction {
    /// Give a worker host its logins on this primary (a PostgreSQL role and a Redis
    /// user, TLS only) and print its token, once: what `join` on the worker takes.
    Add {
        name: String,
        /// The worker's IP address on the network it shares with this host: its
        /// logins are allowed from there only, and Prometheus scrapes it there.
        #[arg(long)]
        address: String,
        /// Write the token to FILE (created, 0600; never overwritten) instead of
        /// printing it.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// The worker hosts of this primary.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Take a worker off: its logins stop working at once.
    Remove { name: String },
}

#[derive(Subcommand)]
enum BundleAction {
    /// Download everything an install of the configured stack needs into one file
    /// (run on a connected machine; the configuration read is this machine's).
    Create {
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        /// Target architecture (default: this machine's).
        #[arg(long, value_parser = ["amd64", "arm64"])]
        arch: Option<String>,
        /// Target distribution (default: this machine's).
        #[arg(long, value_parser = ["bookworm", "trixie"])]
        distro: Option<String>,
        /// The Debian mirror to resolve packages from.
        #[arg(long, default_value = "http://deb.debian.org/debian")]
        debian_mirror: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Show what apply would do, without doing it.
    Plan {
        #[arg(long)]
        json: bool,
    },
    /// Bring the host to the configured state and wait until every component is healthy.
    Apply {
        #[arg(long)]
        json: bool,
        /// Install only from this offline bundle (verified whole first); no network.
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
    },
    /// Offline bundles for air-gapped hosts.
    Bundle {
        #[command(subcommand)]
        action: BundleAction,
    },
    /// Make this host a worker of PRIMARY (its address), with the token `worker add`
    /// printed there; then install it (from an offline bundle with --bundle).
    Join {
        primary: String,
        /// The file holding the token (`-`: standard input). Never the token itself on
        /// the command line: every local account reads command lines in /proc.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Refused: the token would be readable by every local account for the whole
        /// join (see --token-file).
        #[arg(long, hide = true)]
        token: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
    },
    /// Worker hosts of this primary (root only): `[workers] address` must be set.
    Worker {
        #[command(subcommand)]
        action: WorkerAction,
    },
    /// Each component with its units, health and version.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The alerts firing now, as Alertmanager holds them (silenced ones marked).
    Alerts {
        #[arg(long)]
        json: bool,
    },
    /// Start a component's units.
    Start { component: String },
    /// Stop a component's units.
    Stop { component: String },
    /// Restart a component's units.
    Restart { component: String },
    /// A component's journal.
    Logs {
        component: String,
        #[arg(short, long)]
        follow: bool,
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: u32,
    },
    /// Check or print the merged configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Generated logins and connection URLs (root only).
    Credentials { component: Option<String> },
    /// The components the stack knows.
    Components,
    /// Back up everything the stack cannot reproduce into one file: every
    /// database, the secrets, the configuration, DAGs and pipelines, Grafana's
    /// database (root only).
    Backup {
        /// Where to write it (default: [backup] directory, named by the time).
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Prometheus's metrics and Loki's logs too.
        #[arg(long)]
        with_telemetry: bool,
        /// As the timer runs it: into [backup] directory, telemetry as configured,
        /// then remove all but the newest [backup] keep backups there.
        #[arg(long, conflicts_with = "output")]
        scheduled: bool,
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup on this host (the same or a fresh one), then apply: rows,
    /// logins, DAG history and dashboards come back; or, with --to, bring the
    /// databases back to a moment from pgBackRest's archive (root only).
    Restore {
        #[arg(required_unless_present = "to")]
        file: Option<PathBuf>,
        /// Point-in-time recovery: `latest` (everything archived) or a time,
        /// `2026-12-07 10:15:00` (UTC) or with an offset (`…+01:00`). The databases
        /// only: configuration, DAGs and dashboards stay as they are.
        #[arg(long, value_name = "TIME", conflicts_with = "file")]
        to: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Put an upgraded component back on the version it was upgraded from (a venv
    /// or archive kept on disk, or the kept copy of a Debian package), an
    /// application's database as the backup before the upgrade had it (what it wrote
    /// since is lost; the warehouse is not touched). Apply then leaves it there until
    /// `unhold`.
    Rollback {
        component: String,
        #[arg(long)]
        json: bool,
    },
    /// Let apply try again a version a component was rolled back from (apply leaves
    /// a rolled-back component where it is until then).
    Unhold { component: String },
    /// Print a shell completion script (bash, zsh, fish).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Stop and remove every unit, user, directory and file the stack created, and
    /// restore the distribution services it disabled. Data stays unless --purge-data.
    Uninstall {
        #[arg(long)]
        purge_data: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the configuration files; every problem with file, line and column.
    Validate,
    /// Print the merged configuration.
    Show,
}

fn etc_dir() -> PathBuf {
    std::env::var_os("ANALYTICS_STACK_ETC")
        .map(Into::into)
        .unwrap_or_else(|| paths::ETC.into())
}

struct Failure {
    code: u8,
    message: String,
}

impl From<zbus::Error> for Failure {
    fn from(e: zbus::Error) -> Self {
        match e {
            zbus::Error::MethodError(name, msg, _) => {
                let short = name.rsplit('.').next().unwrap_or("").to_string();
                Failure {
                    code: exit_code(name.as_str()),
                    message: format!("{short}: {}", msg.unwrap_or_default()),
                }
            }
            other => Failure {
                code: 9,
                message: format!("cannot talk to analytics-stackd: {other}"),
            },
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("analytics-stack: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn manager() -> Result<ManagerProxy<'static>, Failure> {
    let conn = zbus::Connection::system().await?;
    Ok(ManagerProxy::new(&conn).await?)
}

fn print_json(text: &str) {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| text.into())
        ),
        Err(_) => println!("{text}"),
    }
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Config { action } => {
            let config = config::load_dir(&etc_dir()).map_err(|e| Failure {
                code: 3,
                message: format!("invalid configuration:\n{e}"),
            })?;
            match action {
                ConfigAction::Validate => {
                    let files = config::source_paths(&etc_dir()).unwrap_or_default();
                    let names: Vec<String> =
                        files.iter().map(|p| p.display().to_string()).collect();
                    println!(
                        "configuration is valid ({} over the embedded default)",
                        if names.is_empty() {
                            "no files".into()
                        } else {
                            names.join(", ")
                        }
                    );
                }
                ConfigAction::Show => print!(
                    "{}",
                    toml::to_string(&config).map_err(|e| Failure {
                        code: 1,
                        message: e.to_string()
                    })?
                ),
            }
            Ok(())
        }
        Command::Logs {
            component,
            follow,
            lines,
        } => {
            if !analytics_stack::components::is_known(&component) {
                return Err(Failure {
                    code: 7,
                    message: format!("NotFound: unknown component '{component}'"),
                });
            }
            let mut cmd = std::process::Command::new("journalctl");
            cmd.arg("--no-pager").arg("-n").arg(lines.to_string());
            if follow {
                cmd.arg("-f");
            }
            for u in analytics_stack::components::unit_names(&component) {
                cmd.arg("-u").arg(u);
            }
            let status = cmd.status().map_err(|e| Failure {
                code: 1,
                message: format!("cannot run journalctl: {e}"),
            })?;
            if status.success() {
                Ok(())
            } else {
                Err(Failure {
                    code: 1,
                    message: "journalctl failed".into(),
                })
            }
        }
        Command::Plan { json } => {
            let text = manager().await?.plan().await?;
            if json {
                print_json(&text);
                return Ok(());
            }
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(table) = v["memory_table"].as_str() {
                println!("{table}\n");
            }
            for p in v["problems"].as_array().into_iter().flatten() {
                println!("apply would refuse: {}", p.as_str().unwrap_or(""));
            }
            for h in v["held"].as_array().into_iter().flatten() {
                println!("held: {}", h.as_str().unwrap_or(""));
            }
            for c in v["conflicts"].as_array().into_iter().flatten() {
                println!(
                    "conflict: port {} wanted by {} is held by {}",
                    c["port"],
                    c["wanted_by"].as_str().unwrap_or(""),
                    c["holder"].as_str().unwrap_or("")
                );
            }
            let steps = v["steps"].as_array().cloned().unwrap_or_default();
            if steps.is_empty() {
                println!("nothing to do: the host matches the configuration");
            }
            for (i, s) in steps.iter().enumerate() {
                println!("{:>3}. {}", i + 1, s.as_str().unwrap_or(""));
            }
            Ok(())
        }
        Command::Apply { json, bundle } => apply(json, bundle).await,
        Command::Bundle {
            action:
                BundleAction::Create {
                    output,
                    arch,
                    distro,
                    debian_mirror,
                    json,
                },
        } => bundle_create(output, arch, distro, debian_mirror, json).await,
        Command::Uninstall { purge_data, json } => uninstall(purge_data, json).await,
        Command::Backup {
            output,
            with_telemetry,
            scheduled,
            json,
        } => backup(output, with_telemetry, scheduled, json).await,
        Command::Restore { file, to, json } => match (file, to) {
            (_, Some(target)) => restore_to(&target, json).await,
            (Some(file), None) => restore(file, json).await,
            (None, None) => unreachable!("clap requires a file or --to"),
        },
        Command::Worker { action } => {
            let m = manager().await?;
            match action {
                WorkerAction::Add {
                    name,
                    address,
                    token_file,
                } => {
                    // Created before the worker is added: a file that cannot be
                    // written must not cost a token shown nowhere.
                    let out = token_file.as_deref().map(create_secret_file).transpose()?;
                    let path = m.worker_add(&name, &address).await?;
                    let result = follow_job(&m, path, "worker add").await?;
                    let v: serde_json::Value = serde_json::from_str(&result).unwrap_or_default();
                    let token = v["token"].as_str().unwrap_or("");
                    match (out, token_file) {
                        (Some(mut file), Some(path)) => {
                            use std::io::Write;
                            file.write_all(format!("{token}\n").as_bytes())
                                .and_then(|()| file.sync_all())
                                .map_err(|e| Failure {
                                    code: 1,
                                    message: format!("{}: {e}", path.display()),
                                })?;
                            eprintln!(
                                "{name} may reach this host; its token (it holds its passwords) is in {} (0600): copy it to the worker and run `analytics-stack join PRIMARY --token-file FILE` there",
                                path.display()
                            );
                        }
                        _ => {
                            eprintln!(
                                "{name} may reach this host; its token (shown this once; it holds its passwords):"
                            );
                            println!("{token}");
                        }
                    }
                }
                WorkerAction::List { json } => {
                    let text = m.worker_list().await?;
                    if json {
                        print_json(&text);
                    } else {
                        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                        for w in v.as_array().into_iter().flatten() {
                            println!(
                                "{:<24} {:<16} PostgreSQL role {}, Redis user {}",
                                w["name"].as_str().unwrap_or(""),
                                w["address"].as_str().unwrap_or(""),
                                w["postgres_role"].as_str().unwrap_or(""),
                                w["broker_user"].as_str().unwrap_or("")
                            );
                        }
                    }
                }
                WorkerAction::Remove { name } => {
                    let path = m.worker_remove(&name).await?;
                    follow_job(&m, path, "worker remove").await?;
                    println!("{name} is no longer a worker: its logins are revoked");
                }
            }
            Ok(())
        }
        Command::Join {
            primary,
            token_file,
            token,
            json,
            bundle,
        } => {
            if token.is_some() {
                return Err(Failure {
                    code: 2,
                    message: "--token puts the token (the worker's passwords) where every local account reads it (/proc/PID/cmdline): pass it with --token-file FILE, or --token-file - on standard input".into(),
                });
            }
            let Some(token_file) = token_file else {
                return Err(Failure {
                    code: 2,
                    message: "join needs the token: --token-file FILE (or - for standard input)"
                        .into(),
                });
            };
            let token = read_token(&token_file)?;
            let joined = manager().await?.join(&primary, &token).await?;
            let v: serde_json::Value = serde_json::from_str(&joined).unwrap_or_default();
            eprintln!(
                "joined {} as {} (its CA {}); installing the worker",
                v["primary"].as_str().unwrap_or(""),
                v["name"].as_str().unwrap_or(""),
                v["ca_fingerprint"].as_str().unwrap_or("")
            );
            apply(json, bundle).await
        }
        Command::Unhold { component } => {
            let version = manager().await?.unhold(&component).await?;
            println!("{component} {version} is no longer held: the next apply tries it again");
            Ok(())
        }
        Command::Rollback { component, json } => {
            let m = manager().await?;
            let path = m.rollback(&component).await?;
            let result = follow_job(&m, path, "rollback").await?;
            if json {
                print_json(&result);
            } else {
                let v: serde_json::Value = serde_json::from_str(&result).unwrap_or_default();
                println!(
                    "{} is back on {} (from {}){}; healthy ({:.1} s)",
                    v["component"].as_str().unwrap_or(&component),
                    v["to"].as_str().unwrap_or("?"),
                    v["from"].as_str().unwrap_or("?"),
                    match (v["backup"].as_str(), v["databases_restored"].as_array()) {
                        (Some(b), Some(what)) if !what.is_empty() => format!(
                            ", {} restored from {b}",
                            what.iter()
                                .filter_map(|w| w.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        _ => String::new(),
                    },
                    v["seconds"].as_f64().unwrap_or(0.0)
                );
            }
            Ok(())
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "analytics-stack",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Status { json } => {
            let text = manager().await?.status().await?;
            if json {
                print_json(&text);
                return Ok(());
            }
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            for c in v["components"].as_array().into_iter().flatten() {
                let healthy = c["healthy"].as_bool().unwrap_or(false);
                println!(
                    "{:<16} {:<9} {}{}",
                    c["name"].as_str().unwrap_or(""),
                    if healthy { "healthy" } else { "UNHEALTHY" },
                    c["version"].as_str().unwrap_or(""),
                    match (c["previous_version"].as_str(), c["held_version"].as_str()) {
                        (Some(p), _) => format!(" (previous {p} kept: analytics-stack rollback)"),
                        (None, Some(h)) => format!(" ({h} rolled back: analytics-stack unhold)"),
                        (None, None) => String::new(),
                    }
                );
                for u in c["units"].as_array().into_iter().flatten() {
                    let mem = u["memory_bytes"]
                        .as_u64()
                        .map(|b| format!("{:.1} MiB", b as f64 / 1048576.0))
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "    {:<40} {}/{} pid {} mem {}",
                        u["name"].as_str().unwrap_or(""),
                        u["active_state"].as_str().unwrap_or(""),
                        u["sub_state"].as_str().unwrap_or(""),
                        u["main_pid"],
                        mem
                    );
                }
            }
            if let Some(lines) = v["archiving"]["summary"].as_array() {
                println!(
                    "point-in-time recovery (pgBackRest, {}):",
                    v["archiving"]["repository"].as_str().unwrap_or("")
                );
                for l in lines {
                    println!("    {}", l.as_str().unwrap_or(""));
                }
            }
            Ok(())
        }
        Command::Alerts { json } => {
            let text = manager().await?.alerts().await?;
            if json {
                print_json(&text);
                return Ok(());
            }
            let alerts: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
            if alerts.is_empty() {
                println!("no alerts firing");
            }
            for a in &alerts {
                let field = |k: &str| a[k].as_str().unwrap_or("").to_string();
                let silenced = a["silenced_by"]
                    .as_array()
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        let ids: Vec<&str> = s.iter().filter_map(|i| i.as_str()).collect();
                        format!(" [silenced: {}]", ids.join(", "))
                    })
                    .unwrap_or_default();
                println!(
                    "{:<36} {:<9} {:<20} since {}{silenced}\n    {}",
                    field("name"),
                    field("severity"),
                    field("host"),
                    field("since"),
                    field("summary")
                );
            }
            Ok(())
        }
        Command::Start { component } => Ok(manager().await?.start(&component).await?),
        Command::Stop { component } => Ok(manager().await?.stop(&component).await?),
        Command::Restart { component } => Ok(manager().await?.restart(&component).await?),
        Command::Credentials { component } => {
            let text = manager()
                .await?
                .credentials(component.as_deref().unwrap_or(""))
                .await?;
            print_json(&text);
            Ok(())
        }
        Command::Components => {
            for (name, description, enabled, units) in manager().await?.list_components().await? {
                println!(
                    "{:<16} {:<8} {}  [{}]",
                    name,
                    if enabled { "enabled" } else { "disabled" },
                    description,
                    units.join(" ")
                );
            }
            Ok(())
        }
    }
}

/// A download's progress: a bar on a terminal, one line when done otherwise.
fn print_bytes(done: u64, total: u64, tty: bool) {
    let mib = |b: u64| b as f64 / 1048576.0;
    if tty && total > 0 {
        let filled = (done * 30 / total) as usize;
        eprint!(
            "\r      [{}{}] {:.1}/{:.1} MiB",
            "#".repeat(filled),
            " ".repeat(30 - filled),
            mib(done),
            mib(total)
        );
        if done == total {
            eprintln!();
        }
    } else if done == total {
        eprintln!("      downloaded {:.1} MiB", mib(done));
    }
}

/// A call the daemon died during (killed, or crashed) before it answered — or, once a
/// job runs, any call to a daemon no longer there: said as the daemon's exit during
/// `verb`, like a death seen while following the job; any other error as itself.
fn exited_during(e: zbus::Error, verb: &str) -> Failure {
    let gone = |name: &str| {
        [
            "org.freedesktop.DBus.Error.NoReply",
            "org.freedesktop.DBus.Error.ServiceUnknown",
            "org.freedesktop.DBus.Error.NameHasNoOwner",
        ]
        .contains(&name)
    };
    died_if(e, verb, gone)
}

/// The operation's first call: only a call left without an answer is the daemon's
/// death (one that is not running at all stays "cannot be reached", exit 9).
fn died_answering(e: zbus::Error, verb: &str) -> Failure {
    died_if(e, verb, |name| name == "org.freedesktop.DBus.Error.NoReply")
}

fn died_if(e: zbus::Error, verb: &str, gone: impl Fn(&str) -> bool) -> Failure {
    let name = match &e {
        zbus::Error::MethodError(name, _, _) => Some(name.as_str().to_string()),
        zbus::Error::FDO(fdo) => Some(zbus::DBusError::name(fdo.as_ref()).as_str().to_string()),
        _ => None,
    };
    if name.as_deref().is_some_and(gone) {
        Failure {
            code: 1,
            message: format!("Failed: analytics-stackd exited during the {verb}; run `analytics-stack {verb}` again to converge"),
        }
    } else {
        e.into()
    }
}

/// Follows a job until it ends, drawing its progress; its JSON result, or its error.
async fn follow_job(
    m: &ManagerProxy<'_>,
    path: zbus::zvariant::OwnedObjectPath,
    verb: &str,
) -> Result<String, Failure> {
    let job = JobProxy::builder(m.inner().connection())
        .path(path)?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .map_err(|e| exited_during(e, verb))?;
    let mut progress = job
        .receive_progress()
        .await
        .map_err(|e| exited_during(e, verb))?;
    let mut finished = job
        .receive_finished()
        .await
        .map_err(|e| exited_during(e, verb))?;
    let mut bytes = job
        .receive_bytes()
        .await
        .map_err(|e| exited_during(e, verb))?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A daemon that dies mid-job never sends Finished: watch its bus name too.
    let dbus = zbus::fdo::DBusProxy::new(m.inner().connection())
        .await
        .map_err(|e| exited_during(e, verb))?;
    let mut owner_changes = dbus
        .receive_name_owner_changed_with_args(&[(0, analytics_stack::daemon::BUS_NAME)])
        .await
        .map_err(|e| exited_during(e, verb))?;
    // The job may have ended before we subscribed: its properties tell.
    let mut state = job.state().await.map_err(|e| exited_during(e, verb))?;
    while state == "running" {
        tokio::select! {
            Some(p) = progress.next() => {
                if let Ok(a) = p.args() {
                    if a.done < a.total {
                        eprintln!("[{}/{}] {}", a.done + 1, a.total, a.description);
                    }
                }
            }
            Some(b) = bytes.next() => {
                if let Ok(a) = b.args() {
                    print_bytes(a.done, a.total, tty);
                }
            }
            Some(f) = finished.next() => {
                state = f.args().map(|a| a.state.clone()).unwrap_or_else(|_| "failed".into());
            }
            Some(_) = owner_changes.next() => {
                return Err(exited_during(zbus::fdo::Error::NoReply(String::new()).into(), verb));
            }
            else => state = job.state().await?,
        }
    }
    if state == "succeeded" {
        Ok(job.result().await.map_err(|e| exited_during(e, verb))?)
    } else {
        let name = job.error_name().await.map_err(|e| exited_during(e, verb))?;
        let message = job
            .error_message()
            .await
            .map_err(|e| exited_during(e, verb))?;
        Err(Failure {
            code: exit_code(&name),
            message: format!("{name}: {message}"),
        })
    }
}

async fn bundle_create(
    output: PathBuf,
    arch: Option<String>,
    distro: Option<String>,
    debian_mirror: String,
    json: bool,
) -> Result<(), Failure> {
    use analytics_stack::bundle::create::{create, CreateOptions};
    let mut config = config::load_dir(&etc_dir()).map_err(|e| Failure {
        code: 3,
        message: format!("invalid configuration:\n{e}"),
    })?;
    config::read_lock_overrides(&mut config).map_err(|message| Failure { code: 3, message })?;
    let host_distro = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("VERSION_CODENAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "bookworm".into());
    let opts = CreateOptions {
        output,
        distro: distro.unwrap_or(host_distro),
        arch: arch.unwrap_or_else(|| analytics_stack::artifact::catalog::debian_arch().into()),
        debian_mirror,
        cache: PathBuf::from("/var/cache/analytics-stack/bundle-create"),
    };
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let say = |line: &str| {
        if tty {
            eprint!("\r\x1b[K");
        }
        eprintln!("{line}");
    };
    let bytes = |done: u64, total: Option<u64>| {
        if tty {
            print_bytes(done, total.unwrap_or(0), true);
        }
    };
    let report = create(&config, &opts, &say, &bytes)
        .await
        .map_err(|message| Failure { code: 1, message })?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!(
            "wrote {} ({:.1} MiB: {} Debian packages, {} wheels, {} release archives) for Debian {} {}",
            report.output,
            report.bytes as f64 / (1 << 20) as f64,
            report.debs,
            report.wheels,
            report.archives,
            opts.distro,
            opts.arch
        );
    }
    Ok(())
}

async fn apply(json: bool, bundle: Option<PathBuf>) -> Result<(), Failure> {
    let m = manager().await?;
    let path = match bundle {
        Some(path) => {
            // Opened here, with the caller's own permissions: the daemon reads only
            // what the caller could, from wherever the caller sees it.
            // O_NONBLOCK: opening a FIFO would otherwise wait for a writer. (It has
            // no effect on reading a regular file.)
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
                .open(&path)
                .map_err(|e| Failure {
                    code: 1,
                    message: format!("{}: {e}", path.display()),
                })?;
            if !file.metadata().is_ok_and(|m| m.is_file()) {
                return Err(Failure {
                    code: 3,
                    message: format!("{}: a bundle must be a regular file", path.display()),
                });
            }
            use std::os::fd::AsFd;
            m.apply_bundle(file.as_fd().into(), &path.display().to_string())
                .await
                .map_err(|e| died_answering(e, "apply"))?
        }
        None => m.apply().await.map_err(|e| died_answering(e, "apply"))?,
    };
    let result = follow_job(&m, path, "apply").await?;
    if json {
        print_json(&result);
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(&result).unwrap_or_default();
    let n = v["steps"].as_array().map_or(0, |s| s.len());
    let secs = v["seconds"].as_f64().unwrap_or(0.0);
    if n == 0 {
        println!("nothing to do; every component is healthy ({secs:.2} s)");
    } else {
        println!("applied {n} steps; every component is healthy ({secs:.1} s)");
    }
    Ok(())
}

/// Asks the daemon for a backup into `FILE.partial` (created here, with the
/// caller's permissions, 0600), renames it to FILE once the job succeeded, and for
/// a scheduled backup then applies retention.
async fn backup(
    output: Option<PathBuf>,
    with_telemetry: bool,
    scheduled: bool,
    json: bool,
) -> Result<(), Failure> {
    use analytics_stack::backup;
    use std::os::fd::AsFd;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let fail = |code: u8| move |message: String| Failure { code, message };
    let config = config::load_dir(&etc_dir())
        .map_err(|e| format!("invalid configuration:\n{e}"))
        .map_err(fail(3))?;
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let directory = PathBuf::from(config.backup.directory.as_str());
    let output = match output {
        Some(path) => path,
        None => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&directory)
                .map_err(|e| format!("{}: {e}", directory.display()))
                .map_err(fail(1))?;
            directory.join(backup::file_name(created))
        }
    };
    let with_telemetry = with_telemetry || (scheduled && config.backup.with_telemetry);
    if output.exists() {
        return Err(Failure {
            code: 1,
            message: format!("{} exists; choose another name", output.display()),
        });
    }
    let partial = PathBuf::from(format!("{}.partial", output.display()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| format!("{}: {e}", partial.display()))
        .map_err(fail(1))?;
    let m = manager().await?;
    let outcome = async {
        let path = m
            .backup(
                file.as_fd().into(),
                &output.display().to_string(),
                with_telemetry,
            )
            .await
            .map_err(|e| died_answering(e, "backup"))?;
        follow_job(&m, path, "backup").await
    }
    .await;
    let result = match outcome {
        Ok(result) => result,
        Err(e) => {
            let _partial_gone = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, &output)
        .and_then(|()| {
            let dir = output.parent().filter(|p| !p.as_os_str().is_empty());
            std::fs::File::open(dir.unwrap_or(std::path::Path::new(".")))?.sync_all()
        })
        .map_err(|e| format!("{}: {e}", output.display()))
        .map_err(fail(1))?;
    let mut pruned = Vec::new();
    if scheduled {
        // Only after this backup is complete and in place.
        let names: Vec<String> = std::fs::read_dir(&directory)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        for old in backup::to_prune(&names, config.backup.keep.get() as usize) {
            let path = directory.join(&old);
            match std::fs::remove_file(&path) {
                Ok(()) => pruned.push(path.display().to_string()),
                Err(e) => eprintln!("cannot remove {}: {e}", path.display()),
            }
        }
    }
    if json {
        let mut v: serde_json::Value = serde_json::from_str(&result).unwrap_or_default();
        v["file"] = output.display().to_string().into();
        v["pruned"] = pruned.into();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(&result).unwrap_or_default();
    println!(
        "wrote {} ({:.1} MiB, {} entries: databases {}{}) in {:.1} s",
        output.display(),
        v["bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        v["entries"].as_u64().unwrap_or(0),
        v["databases"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(|d| d.as_str())
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
        if with_telemetry {
            "; with telemetry"
        } else {
            ""
        },
        v["seconds"].as_f64().unwrap_or(0.0)
    );
    for s in v["skipped"].as_array().into_iter().flatten() {
        println!("  not taken: {}", s.as_str().unwrap_or(""));
    }
    for p in &pruned {
        println!("  removed the older {p}");
    }
    Ok(())
}

/// The largest token file `join` reads (a token is under 4 KiB).
const TOKEN_FILE_MAX: u64 = 8 << 10;

/// The join token from `path` (`-`: standard input), trimmed.
fn read_token(path: &std::path::Path) -> Result<String, Failure> {
    use std::io::Read;
    let failed = |e: &dyn std::fmt::Display| Failure {
        code: 1,
        message: format!("{}: {e}", path.display()),
    };
    let mut text = String::new();
    let reader: Box<dyn Read> = if path == std::path::Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        let file = std::fs::File::open(path).map_err(|e| failed(&e))?;
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(failed(&"not a regular file"));
        }
        Box::new(file)
    };
    reader
        .take(TOKEN_FILE_MAX)
        .read_to_string(&mut text)
        .map_err(|e| failed(&e))?;
    Ok(text.trim().to_string())
}

/// A new file for a secret: 0600 from its creation, never an existing file or a
/// link (`O_EXCL` refuses both).
fn create_secret_file(path: &std::path::Path) -> Result<std::fs::File, Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Failure {
            code: 1,
            message: format!("{}: {e}", path.display()),
        })
}

/// `restore --to`: the time checked here first (a typo is said before the daemon
/// stops anything), then the daemon's job followed.
async fn restore_to(target: &str, json: bool) -> Result<(), Failure> {
    let parsed = analytics_stack::backup::pitr::RestoreTarget::parse(target)
        .map_err(|message| Failure { code: 2, message })?;
    let m = manager().await?;
    let path = m
        .restore_to(&parsed.to_string())
        .await
        .map_err(|e| died_answering(e, "restore"))?;
    let result = follow_job(&m, path, "restore").await?;
    if json {
        print_json(&result);
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(&result).unwrap_or_default();
    println!(
        "restored the databases to {} from base backup {}; last commit replayed: {}; every component is healthy ({:.1} s)",
        v["target"].as_str().unwrap_or("?"),
        v["base_backup"].as_str().unwrap_or("?"),
        v["last_replayed_commit"].as_str().unwrap_or("none"),
        v["seconds"].as_f64().unwrap_or(0.0)
    );
    if let Some(kept) = v["kept_previous"].as_str() {
        println!("  the cluster as it was before is kept in {kept} until the next restore --to (remove it when satisfied)");
    }
    Ok(())
}

async fn restore(file: PathBuf, json: bool) -> Result<(), Failure> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(&file)
        .map_err(|e| Failure {
            code: 1,
            message: format!("{}: {e}", file.display()),
        })?;
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return Err(Failure {
            code: 3,
            message: format!("{}: a backup must be a regular file", file.display()),
        });
    }
    let m = manager().await?;
    let path = m
        .restore(f.as_fd().into(), &file.display().to_string())
        .await
        .map_err(|e| died_answering(e, "restore"))?;
    let result = follow_job(&m, path, "restore").await?;
    if json {
        print_json(&result);
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(&result).unwrap_or_default();
    println!(
        "restored {} (made on {} by analytics-stack {}): databases {}, {} files; every component is healthy ({:.1} s)",
        file.display(),
        v["made_on"].as_str().unwrap_or("?"),
        v["package_version"].as_str().unwrap_or("?"),
        v["databases"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_str()).collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
        v["files"].as_u64().unwrap_or(0),
        v["seconds"].as_f64().unwrap_or(0.0)
    );
    for k in v["replaced_config"].as_array().into_iter().flatten() {
        println!(
            "  your configuration file before the restore: {}",
            k.as_str().unwrap_or("")
        );
    }
    Ok(())
}

async fn uninstall(purge_data: bool, json: bool) -> Result<(), Failure> {
    let m = manager().await?;
    let path = m.uninstall(purge_data).await?;
    let result = follow_job(&m, path, "uninstall").await?;
    if json {
        print_json(&result);
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(&result).unwrap_or_default();
    let removed = v["removed"].as_array().cloned().unwrap_or_default();
    if removed.is_empty() {
        println!("nothing to remove: the stack is not installed");
    } else {
        println!("removed:");
        for r in removed {
            println!("  - {}", r.as_str().unwrap_or(""));
        }
    }
    println!("kept:");
    for k in v["kept"].as_array().into_iter().flatten() {
        println!("  - {}", k.as_str().unwrap_or(""));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_that_died_before_answering_is_said_as_its_exit_during_the_operation() {
        for name in ["NoReply", "ServiceUnknown", "NameHasNoOwner"] {
            let e = match name {
                "NoReply" => zbus::fdo::Error::NoReply("recipient disconnected".into()),
                "ServiceUnknown" => zbus::fdo::Error::ServiceUnknown("gone".into()),
                _ => zbus::fdo::Error::NameHasNoOwner("gone".into()),
            };
            let failure = exited_during(e.into(), "restore");
            assert_eq!(failure.code, 1, "{name}");
            assert!(
                failure
                    .message
                    .contains("analytics-stackd exited during the restore"),
                "{name}: {}",
                failure.message
            );
        }
        let other = exited_during(
            zbus::fdo::Error::AccessDenied("no".into()).into(),
            "restore",
        );
        assert!(
            !other.message.contains("exited during"),
            "{}",
            other.message
        );
        // Before any job: a daemon not running is not one that died.
        let absent = died_answering(
            zbus::fdo::Error::ServiceUnknown("gone".into()).into(),
            "restore",
        );
        assert_eq!(absent.code, 9, "{}", absent.message);
        let died = died_answering(zbus::fdo::Error::NoReply("gone".into()).into(), "restore");
        assert_eq!(died.code, 1, "{}", died.message);
    }
}

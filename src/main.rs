//! The `proxycache` command line: `run` (the default), `check`, `version`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use proxycache::Config;

/// mimalloc: allocation is a measurable share of per-request CPU (see
/// docs/performance.md), and mimalloc's thread-local heaps suit the worker model.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "proxycache",
    version,
    about = "A scriptable, programmable reverse proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (default: ./config.toml if present, else the embedded default).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default command).
    Run,
    /// Load the configuration and every module, print all errors, exit 1 on any.
    Check,
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Version => {
            println!("proxycache {}", proxycache::VERSION);
            ExitCode::SUCCESS
        }
        Command::Check => check(cli.config),
        Command::Run => match run(cli.config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("proxycache: {}", error_chain(&e));
                ExitCode::FAILURE
            }
        },
    }
}

/// `e` and its causes joined by ": ", leaving out a cause whose text is already
/// there: our errors say their cause in their own message (`cannot listen on ADDR:
/// Address already in use`) and also keep it as their source.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Loads the config and every module; prints every error it finds and how many; exit
/// 1 on any. The modules and the TLS files are checked against a valid config only:
/// with config errors, it says they were not checked.
fn check(path: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(path.as_deref()) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}; the modules and the certificate files were not checked (they need a valid config); nothing would be loaded",
                count(errors.0.len(), "error")
            );
            return ExitCode::FAILURE;
        }
    };
    let source = config
        .source
        .as_ref()
        .map_or("<default>".into(), |p| p.display().to_string());
    // Certificate, key and CA files are read as a start or reload would read them,
    // and every error of them all is printed, with the modules'.
    let mut diags = match proxycache::server::tls::TlsListeners::build(&config, None) {
        Ok(_) => Vec::new(),
        Err(errors) => proxycache::server::tls::diagnostics(&config, &errors),
    };
    diags.extend(proxycache::upstream::check_tls(&config));
    let loaded = match proxycache::script::load(&config) {
        Ok(loaded) => Some(loaded),
        Err(module_diags) => {
            diags.extend(module_diags);
            None
        }
    };
    let Some(loaded) = loaded.filter(|_| diags.is_empty()) else {
        eprint!("{}", proxycache::script::diag::render_all(&diags));
        eprintln!("{}; nothing would be loaded", count(diags.len(), "error"));
        return ExitCode::FAILURE;
    };
    for name in config
        .mods
        .keys()
        .filter(|n| !loaded.modules.iter().any(|m| &&m.name == n))
    {
        eprintln!(
            "warning: {source}: [mods.{name}] names no module in {}",
            config.scripts.dir.display()
        );
    }
    let modules = loaded.modules.len();
    let mut out = format!(
        "{source}: ok ({} from {})\n",
        count(modules, "module"),
        config.scripts.dir.display()
    );
    for m in &loaded.modules {
        let state = if m.enabled { "" } else { " (disabled)" };
        out.push_str(&format!(
            "  {} priority {}{state}: on {}\n",
            m.name,
            m.priority,
            m.phases.join(", on ")
        ));
    }
    // A closed pipe (`check | head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
    ExitCode::SUCCESS
}

/// `1 error`, `2 errors`.
fn count(n: usize, thing: &str) -> String {
    format!("{n} {thing}{}", if n == 1 { "" } else { "s" })
}

fn run(path: Option<PathBuf>) -> anyhow::Result<()> {
    // First of all: a SIGHUP (a reload request) during start-up must not end the
    // process, which is the signal's default action until a handler exists. One sent
    // before the server serves is dropped: what it would reload is being loaded.
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    #[cfg(unix)]
    let _early_hup = signals.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    })?;
    let config = Config::load(path.as_deref())
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    proxycache::observe::init(&config.log);
    // Before any socket: each connection is a file (two, proxied), and a soft limit
    // of 1024 ran out long before `max_connections`.
    proxycache::server::fds::raise_and_check(config.server.limits.max_connections);
    let server = proxycache::start(config).context("cannot start")?;
    let mut stop = StopSignals::new(&signals)?;
    signals.block_on(stop.recv());
    tracing::info!(target: "proxycache::server", "shutting down: draining in-flight requests");
    server.begin_shutdown();
    // The drain runs on its own thread; this one keeps listening: a second SIGTERM or
    // SIGINT ends the process at once (nginx's fast shutdown after a graceful one).
    let (drained_tx, drained) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("pc-shutdown".into())
        .spawn(move || {
            server.join();
            let _ = drained_tx.send(());
        })
        .context("cannot start the shutdown thread")?;
    let forced = signals.block_on(async {
        tokio::select! {
            _ = drained => false,
            () = stop.recv() => true,
        }
    });
    if forced {
        tracing::warn!(target: "proxycache::server", "forced shutdown: a second signal during the drain; closing every connection now");
        return Err(Forced.into());
    }
    tracing::info!(target: "proxycache::server", "stopped");
    Ok(())
}

/// A second SIGTERM or SIGINT cut the drain short (exit status 1).
#[derive(Debug, thiserror::Error)]
#[error("forced shutdown: the drain was cut short by a second signal")]
struct Forced;

/// SIGTERM and SIGINT (Ctrl-C), listened to from the moment the server serves until
/// the process exits. SIGUSR1 and SIGUSR2 are caught too and only logged: a logrotate
/// or deploy script written for nginx (USR1: reopen the logs, USR2: upgrade the
/// binary) would otherwise end the process, those signals' default action. Logs go to
/// stdout and stderr here, so there is nothing to reopen.
struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    usr1: tokio::signal::unix::Signal,
    #[cfg(unix)]
    usr2: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new(rt: &tokio::runtime::Runtime) -> anyhow::Result<StopSignals> {
        let _entered = rt.enter();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(StopSignals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
                usr1: signal(SignalKind::user_defined1())?,
                usr2: signal(SignalKind::user_defined2())?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    /// The next SIGTERM or SIGINT (logging any SIGUSR1 or SIGUSR2 meanwhile).
    async fn recv(&mut self) {
        #[cfg(unix)]
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.usr1.recv() => {
                    tracing::info!(target: "proxycache::server", "SIGUSR1 ignored: logs go to stdout and stderr, there is no log file to reopen");
                }
                _ = self.usr2.recv() => {
                    tracing::info!(target: "proxycache::server", "SIGUSR2 ignored: there is no binary upgrade; restart the process, or reload with SIGHUP");
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

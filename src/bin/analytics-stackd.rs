//! analytics-stackd: the privileged daemon on the system bus.

use analytics_stack::daemon::{manager::Manager, notify::notify, BUS_NAME, OBJECT_PATH};
use analytics_stack::host::{fsroot::FsRoot, systemd::Systemd};
use analytics_stack::model::paths;
use analytics_stack::stack::Stack;
use std::sync::Arc;
use std::time::Duration;

fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("ANALYTICS_STACK_LOG")
        .unwrap_or_else(|_| "info".into());
    // To the journal when systemd connected our output to it, to stderr otherwise.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter)
                .with(journald.with_syslog_identifier("analytics-stackd".into()))
                .init();
            return;
        }
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    if std::env::args().any(|a| a == "--print-introspection") {
        print!("{}", analytics_stack::daemon::manager::introspection_xml());
        return std::process::ExitCode::SUCCESS;
    }
    if std::env::args().any(|a| a == "--version") {
        println!("analytics-stackd {}", env!("CARGO_PKG_VERSION"));
        return std::process::ExitCode::SUCCESS;
    }
    init_logging();
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("analytics-stackd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let conn = zbus::connection::Builder::system()?.build().await?;
    let systemd = Systemd::connect(conn.clone()).await?;
    let etc_dir = std::env::var_os("ANALYTICS_STACK_ETC")
        .map(Into::into)
        .unwrap_or_else(|| paths::ETC.into());
    let stack = Arc::new(Stack {
        fs: FsRoot::host(),
        systemd,
        etc_dir,
    });
    stack.recover_interrupted().await;
    // The door joining workers' certificate requests come through (by NGINX).
    let enrolling = {
        let stack = stack.clone();
        tokio::spawn(async move {
            if let Err(e) = analytics_stack::daemon::enroll::serve(stack).await {
                tracing::error!(
                    "the enrollment door ({}): {e}",
                    analytics_stack::daemon::enroll::SOCKET
                );
            }
        })
    };
    let manager = Manager::new(Some(stack.clone()));
    let busy = manager.busy.clone();
    let refreshing = manager.refreshing.clone();
    conn.object_server().at(OBJECT_PATH, manager).await?;
    conn.request_name(BUS_NAME).await?;
    tracing::info!("serving {BUS_NAME} at {OBJECT_PATH}");
    notify("READY=1\nSTATUS=idle");

    // Keep the landing page's health current while nothing else runs.
    let refresher = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(15)).await;
            // Said before the lock is tried, so that an operation arriving meanwhile
            // waits for the refresh instead of being told the daemon is busy.
            refreshing.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Ok(_guard) = busy.try_lock() {
                if let Err(e) = stack.refresh().await {
                    tracing::debug!("landing page not refreshed: {e}");
                }
                analytics_stack::util::release_free_memory();
            }
            refreshing.store(false, std::sync::atomic::Ordering::SeqCst);
        }
    });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    notify("STOPPING=1");
    refresher.abort();
    enrolling.abort();
    tracing::info!("stopping");
    Ok(())
}

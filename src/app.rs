//! Wiring: turns parsed arguments into running components. `anyhow` lives here and in `main` only.

use anyhow::Result;

use crate::cli::{Cli, Command};

mod factories;
mod kubernetes;
mod oneshot;
mod run;
mod runtime;
mod weights;
mod xds;

pub fn run(cli: Cli) -> Result<()> {
    init_logging(cli.log_format);
    match cli.command {
        Command::Crd => {
            print!("{}", crate::crd::crds_yaml()?);
            Ok(())
        }
        Command::Controller(args) => runtime()?.block_on(run::controller(*args)),
        Command::Xds(args) => runtime()?.block_on(xds::xds(args)),
        Command::Local(args) => runtime()?.block_on(run::local(args)),
        Command::Weights(args) => {
            print!("{}", weights::run_blocking(&args.command)?);
            Ok(())
        }
        Command::Explain(args) => runtime()?.block_on(oneshot::explain_command(args)),
        Command::Plan(args) => runtime()?.block_on(oneshot::plan_command(args)),
    }
}

/// The multi-threaded runtime every long-running command uses.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn init_logging(format: crate::cli::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // No colour codes in files and pipes (test logs, log collectors).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        crate::cli::LogFormat::Text => builder.init(),
        crate::cli::LogFormat::Json => builder.json().init(),
    }
}

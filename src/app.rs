//! Wiring: turns parsed arguments into running components. `anyhow` lives here and in `main` only.

use anyhow::{bail, Result};

use crate::cli::{Cli, Command};

pub fn run(cli: Cli) -> Result<()> {
    init_logging(cli.log_format);
    match cli.command {
        Command::Crd => {
            print!("{}", crate::crd::crds_yaml()?);
            Ok(())
        }
        Command::Controller(_) => bail!("weir controller is not built yet"),
        Command::Xds(_) => bail!("weir xds is not built yet"),
        Command::Local(_) => bail!("weir local is not built yet"),
        Command::Weights(args) => {
            print!("{}", crate::backends::cli_cmd::run_blocking(&args.command)?);
            Ok(())
        }
        Command::Explain(_) => bail!("weir explain is not built yet"),
        Command::Plan(_) => bail!("weir plan is not built yet"),
    }
}

fn init_logging(format: crate::cli::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        crate::cli::LogFormat::Text => builder.init(),
        crate::cli::LogFormat::Json => builder.json().init(),
    }
}

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = weir::cli::Cli::parse();
    weir::app::run(cli)
}

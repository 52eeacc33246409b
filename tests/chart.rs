//! The Helm chart stays in step with the binary: its CRDs are what `weir crd` prints, and every
//! `weir controller` flag has a value in the chart.

use std::path::Path;

use clap::CommandFactory;

fn chart_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/weir").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn chart_crds_are_current() {
    let generated = weir::crd::crds_yaml().unwrap();
    assert!(
        chart_file("crds/weir.dev.yaml") == generated,
        "charts/weir/crds/weir.dev.yaml is stale: run `cargo run -- crd > charts/weir/crds/weir.dev.yaml`"
    );
}

#[test]
fn every_controller_flag_has_a_chart_value() {
    let deployment = chart_file("templates/deployment.yaml");
    let values = chart_file("values.yaml");
    let cli = weir::cli::Cli::command();
    let controller = cli.find_subcommand("controller").expect("controller subcommand");
    let mut missing = Vec::new();
    for arg in controller.get_arguments().chain(cli.get_arguments()) {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let in_template = deployment.contains(&format!("\"{long}\"")) || deployment.contains(&format!("--{long}="));
        let documented = values.contains(&format!("--{long}"));
        if !in_template || !documented {
            missing.push(format!("--{long} (template: {in_template}, values.yaml comment: {documented})"));
        }
    }
    assert!(missing.is_empty(), "flags without a chart value: {missing:#?}");
}

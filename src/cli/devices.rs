//! `basic devices`: the plugin, its versions and its devices.

use clap::Args;
use serde_json::json;

use super::BackendArgs;

#[derive(Args, Debug)]
pub struct DevicesArgs {
    #[command(flatten)]
    backend: BackendArgs,

    /// Print one JSON object instead of a table
    #[arg(long)]
    json: bool,
}

pub fn run(args: &DevicesArgs) -> anyhow::Result<()> {
    let rt = args.backend.open()?;
    let plugin = rt.plugin();
    let client = rt.client();
    if args.json {
        let devices: Vec<_> = client
            .devices()
            .iter()
            .map(|d| {
                json!({
                    "id": d.id,
                    "kind": d.kind,
                    "description": d.description,
                    "addressable": d.addressable,
                })
            })
            .collect();
        let out = json!({
            "platform": client.platform(),
            "platform_version": client.platform_version(),
            "plugin": plugin.path().display().to_string(),
            "pjrt_api_version": plugin.api_version_string(),
            "stablehlo_current_version": plugin.stablehlo_current_version(),
            "stablehlo_minimum_version": plugin.stablehlo_minimum_version(),
            "devices": devices,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "platform          {} ({})",
        client.platform(),
        client.platform_version()
    );
    println!("plugin            {}", plugin.path().display());
    println!("PJRT API          {}", plugin.api_version_string());
    println!(
        "StableHLO         current {}, minimum {}",
        plugin
            .stablehlo_current_version()
            .unwrap_or_else(|| "?".into()),
        plugin
            .stablehlo_minimum_version()
            .unwrap_or_else(|| "?".into())
    );
    println!("devices           {}", client.devices().len());
    for d in client.devices() {
        println!(
            "  {:>3}  {:<10} {}{}",
            d.id,
            d.kind,
            d.description,
            if d.addressable {
                ""
            } else {
                "  (not addressable)"
            }
        );
    }
    Ok(())
}

//! `basic devices`: the plugin, its versions and its devices.

use clap::Args;
use serde_json::json;

use super::{BackendArgs, ProcessArgs};

#[derive(Args, Debug)]
pub struct DevicesArgs {
    #[command(flatten)]
    backend: BackendArgs,

    /// List a described target's devices instead (no hardware needed): tpu-v5e:2x2, h100:8, ...
    #[arg(long, value_name = "NAME:TOPOLOGY", conflicts_with_all = ["backend", "cpu_devices", "mock_gpu_topology"])]
    target: Option<String>,

    /// Print one JSON object instead of a table
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    processes: ProcessArgs,
}

/// A target's devices as its plugin describes them, with hosts and each device's process.
fn target_devices(name: &str, json_out: bool) -> anyhow::Result<()> {
    let target = basic::target::Target::parse(name)?;
    let topo = target.topology()?;
    let plugin = topo.plugin();
    let version = basic::target::plugin_package_version(plugin.path());
    if json_out {
        let devices: Vec<_> = topo
            .devices()
            .iter()
            .map(|d| {
                let attrs: serde_json::Map<String, serde_json::Value> = d
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), option_json(v)))
                    .collect();
                json!({"id": d.id, "process_index": d.process_index, "kind": d.kind,
                       "description": d.text, "attributes": attrs})
            })
            .collect();
        let out = json!({
            "target": target.name(),
            "platform": topo.platform(),
            "platform_version": topo.platform_version(),
            "plugin": plugin.path().display().to_string(),
            "plugin_version": version,
            "pjrt_api_version": plugin.api_version_string(),
            "chips": target.chips(),
            "hosts": topo.num_processes(),
            "hbm_bytes_per_device": target.spec.hbm_bytes,
            "peak_bf16_flops_per_device": target.spec.peak_bf16_flops,
            "devices": devices,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "target            {} ({})",
        target.name(),
        target.spec.description
    );
    println!(
        "platform          {} ({})",
        topo.platform(),
        topo.platform_version().lines().next().unwrap_or_default()
    );
    println!(
        "plugin            {}{}",
        plugin.path().display(),
        version.map(|v| format!(" ({v})")).unwrap_or_default()
    );
    println!(
        "chips             {}, {} device(s) over {} host(s); per device {} HBM, {:.1} TFLOP/s bf16",
        target.chips(),
        topo.devices().len(),
        topo.num_processes(),
        super::model::human(target.spec.hbm_bytes),
        target.spec.peak_bf16_flops / 1e12
    );
    for d in topo.devices() {
        let mut attrs: Vec<String> = d
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={}", option_text(v)))
            .collect();
        attrs.sort();
        println!(
            "  {:>4}  process {:<3} {:<14} {}",
            d.id,
            d.process_index,
            d.kind,
            attrs.join(" ")
        );
    }
    Ok(())
}

fn option_json(v: &basic::runtime::OptionValue) -> serde_json::Value {
    use basic::runtime::OptionValue as V;
    match v {
        V::String(s) => json!(s),
        V::Int64(i) => json!(i),
        V::Int64List(l) => json!(l),
        V::Float(x) => json!(x),
        V::Bool(b) => json!(b),
    }
}

fn option_text(v: &basic::runtime::OptionValue) -> String {
    use basic::runtime::OptionValue as V;
    match v {
        V::String(s) => s.clone(),
        V::Int64(i) => i.to_string(),
        V::Int64List(l) => format!(
            "[{}]",
            l.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        V::Float(x) => x.to_string(),
        V::Bool(b) => b.to_string(),
    }
}

pub fn run(args: &DevicesArgs) -> anyhow::Result<()> {
    if let Some(t) = &args.target {
        return target_devices(t, args.json);
    }
    let (rt, job) = args.backend.open_in_job(&args.processes)?;
    show(&rt, args.json)?;
    drop(rt);
    super::end_job(job)
}

/// The plugin and the client's devices: all of the job's, each with its process.
fn show(rt: &basic::runtime::Runtime, json_out: bool) -> anyhow::Result<()> {
    let plugin = rt.plugin();
    let client = rt.client();
    let mut processes: Vec<i32> = client.devices().iter().map(|d| d.process_index).collect();
    processes.sort_unstable();
    processes.dedup();
    if json_out {
        let devices: Vec<_> = client
            .devices()
            .iter()
            .map(|d| {
                json!({
                    "id": d.id,
                    "kind": d.kind,
                    "description": d.description,
                    "process_index": d.process_index,
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
            "host_huge_pages": basic::runtime::host::huge_pages_on(),
            "processes": processes.len(),
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
    println!(
        "host huge pages   {}",
        if basic::runtime::host::huge_pages_on() {
            "on (glibc.malloc.hugetlb=1: the plugin's per-step buffers are not faulted in page by page)"
        } else {
            "off (BASIC_HUGE_PAGES=0, or not glibc on Linux)"
        }
    );
    println!(
        "devices           {} over {} process(es)",
        client.devices().len(),
        processes.len()
    );
    for d in client.devices() {
        println!(
            "  {:>3}  {:<10} process {:<4} {}{}",
            d.id,
            d.kind,
            d.process_index,
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

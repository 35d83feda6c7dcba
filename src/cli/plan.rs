//! `basic plan`: search micro-batches, remat, mesh, partitioning, scanned layers and donation for
//! what fits a target's HBM, compiling with the target's own compiler.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::Args;

use basic::plan::{plan, PlanRequest, Tried};

use super::model::human;

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Model preset name (graphs/NAME.toml) or config path
    #[arg(long, value_name = "NAME|FILE")]
    model: String,

    /// The target: tpu-v4:2x2x1, tpu-v5e:2x2, h100:8, ...
    #[arg(long, value_name = "NAME:TOPOLOGY")]
    target: String,

    /// Global batch to fit [default: find the largest that fits]
    #[arg(long, value_name = "B", value_parser = clap::value_parser!(i64).range(1..))]
    batch: Option<i64>,

    /// Bytes per device a configuration may use (e.g. 14GiB) [default: HBM less 10% headroom]
    #[arg(long, value_name = "BYTES")]
    budget: Option<String>,

    /// Cache of compiled figures [default: ~/.cache/basic/plan]
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,

    /// Do not read or write the cache
    #[arg(long, conflicts_with = "cache")]
    no_cache: bool,

    /// SPMD partitioner: shardy or gspmd
    #[arg(long, value_name = "shardy|gspmd", default_value = "shardy")]
    partitioner: basic::runtime::Partitioner,

    /// Search only this mesh (repeatable) [default: every data × model factorisation]
    #[arg(long, value_name = "AXES")]
    mesh: Vec<String>,

    /// Search only this partitioning preset or file (repeatable) [default: those that suit each
    /// mesh: data_parallel and fsdp without a model axis, data_model with one]
    #[arg(long, value_name = "FILE|NAME")]
    partitioning: Vec<String>,

    /// Print one JSON object
    #[arg(long)]
    json: bool,
}

fn describe(t: &Tried) -> String {
    let c = &t.choice;
    format!(
        "B={} M={} {} {} {}{}{}",
        c.batch,
        c.microbatches,
        c.remat,
        c.mesh,
        c.partitioning,
        if c.scan_layers { " scan" } else { "" },
        if c.donate { " donate" } else { "" }
    )
}

pub fn run(a: &PlanArgs) -> anyhow::Result<()> {
    let target = basic::target::Target::parse(&a.target)?;
    let config = crate::cli::model::load_config(&a.model)?;
    let budget = a
        .budget
        .as_deref()
        .map(basic::plan::parse_bytes)
        .transpose()?;
    let req = PlanRequest {
        config,
        target,
        batch: a.batch,
        budget,
        cache: if a.no_cache {
            None
        } else {
            a.cache.clone().or_else(basic::plan::default_cache)
        },
        partitioner: a.partitioner,
        meshes: a.mesh.clone(),
        partitionings: a.partitioning.clone(),
    };
    let mut seen = 0usize;
    let mut show = |t: &Tried, compiles: usize| {
        seen += 1;
        show_progress(seen, t, compiles);
    };
    let p = plan(&req, &mut show)?;
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(());
    }
    println!(
        "plan              {} on {}: budget {} per device (HBM {})",
        p.model,
        p.target,
        human(p.budget_bytes),
        human(p.hbm_bytes)
    );
    println!(
        "searched          {} points, {} looked at, {} compiled ({} from the cache) in {:.1} s",
        p.space,
        p.tried.len(),
        p.compiles,
        p.tried.iter().filter(|t| t.cached).count(),
        p.seconds
    );
    println!();
    print_table(&p);
    println!();
    print_best(&p, &a.model);
    Ok(())
}

/// One line per point as it is evaluated: a live bar on a terminal, a log line otherwise.
fn show_progress(seen: usize, t: &Tried, compiles: usize) {
    let state = match (&t.error, t.peak_bytes) {
        (Some(_), None) => "invalid".to_string(),
        (_, Some(p)) => format!(
            "{} {}{}",
            human(p),
            if t.fits { "fits" } else { "too big" },
            if t.cached { " (cached)" } else { "" }
        ),
        _ => String::new(),
    };
    if !std::io::stderr().is_terminal() {
        eprintln!(
            "{seen:>4} tried, {compiles:>4} compiled | {} → {state}",
            describe(t)
        );
        return;
    }
    let bar_len = 20;
    let filled = (seen.min(bar_len * 2) * bar_len / (bar_len * 2)).min(bar_len);
    eprint!(
        "\r\x1b[2K[{}{}] {seen} tried, {compiles} compiled | {} → {state}",
        "#".repeat(filled),
        " ".repeat(bar_len - filled),
        describe(t)
    );
    let _ = std::io::stderr().flush();
}

/// Every point looked at; those that fit carry their rank.
fn print_table(p: &basic::plan::Plan) {
    println!(
        "{:<4} {:>8} {:>5} {:<17} {:<20} {:<14} {:>5} {:>6} {:>11} {:>10} {:>6}",
        "",
        "batch",
        "M",
        "remat",
        "mesh",
        "partitioning",
        "scan",
        "donate",
        "peak",
        "est. (s)",
        "fits"
    );
    for (i, t) in p.tried.iter().enumerate() {
        let c = &t.choice;
        let rank = p
            .fits
            .iter()
            .position(|f| f.choice == t.choice)
            .map_or(format!("{}", i + 1), |r| format!("#{}", r + 1));
        let bound = if t.estimated_seconds.is_finite() {
            format!("{:.3e}", t.estimated_seconds)
        } else {
            "-".into()
        };
        let fits = match (&t.error, t.fits) {
            (Some(_), _) if t.peak_bytes.is_none() => "error",
            (_, true) => "yes",
            _ => "no",
        };
        println!(
            "{:<4} {:>8} {:>5} {:<17} {:<20} {:<14} {:>5} {:>6} {:>11} {:>10} {:>6}",
            rank,
            c.batch,
            c.microbatches,
            c.remat.to_string(),
            c.mesh,
            c.partitioning,
            c.scan_layers,
            c.donate,
            t.peak_bytes.map_or("-".into(), human),
            bound,
            fits
        );
    }
}

/// The best point and the flags that give it, or why there is none.
fn print_best(p: &basic::plan::Plan, model: &str) {
    let Some(b) = &p.best else {
        println!(
            "best              none: nothing fits the budget; a larger topology or a smaller model"
        );
        if let Some(e) = p.tried.iter().find_map(|t| t.error.clone()) {
            println!("first error       {e}");
        }
        return;
    };
    println!(
        "best              {} — peak {} per device, step ≈ {:.3e} s ({:.0} examples/s; at least {:.3e} s at peak bf16)",
        describe(b),
        b.peak_bytes.map_or("-".into(), human),
        b.estimated_seconds,
        b.choice.batch as f64 / b.estimated_seconds,
        b.step_time_lower_bound_seconds
    );
    println!("estimated as      {}", b.estimate_basis);
    let flags = b.choice.flags();
    println!(
        "compile with      basic compile --model {model} --target {} {flags}",
        p.target
    );
    println!("train with        basic train --model {model} {flags} --data DATA --out RUN");
    if let Some(f) = &p.fast {
        println!(
            "within 10%        {} — the largest batch whose estimated throughput ({:.0} examples/s) is within 10% of the best planned",
            describe(f),
            f.choice.batch as f64 / f.estimated_seconds
        );
        println!(
            "compile with      basic compile --model {model} --target {} {}",
            p.target,
            f.choice.flags()
        );
    }
}

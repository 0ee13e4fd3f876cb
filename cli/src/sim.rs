//! `tensor-fusion sim`: the scheduler's trace simulator and throughput bench.

use std::path::PathBuf;

use anyhow::Context;
use tf_scheduler::Policy;
use tf_scheduler::sim::{alibaba, bench, trace};

/// Scheduler trace simulator and throughput bench.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    #[command(subcommand)]
    command: SimCommand,
}

#[derive(Debug, clap::Subcommand)]
enum SimCommand {
    /// Replay the Alibaba GPU trace v2023 by the FGD paper's protocol and report the
    /// unallocated GPU % at arrived workloads 80..130 % (median and mean over seeds).
    Alibaba(AlibabaArgs),
    /// Single-threaded placement decisions per second on a synthetic pool of 8-GPU nodes.
    Throughput(ThroughputArgs),
}

#[derive(Debug, clap::Args)]
struct AlibabaArgs {
    /// Node list CSV (e.g. openb_node_list_gpu_node.csv).
    #[arg(long, value_name = "FILE")]
    nodes: PathBuf,
    /// Pod list CSV (e.g. openb_pod_list_default.csv).
    #[arg(long, value_name = "FILE")]
    pods: PathBuf,
    /// Placement policy, or several separated by commas (default: the default policy).
    #[arg(long, value_name = "NAME")]
    policy: Option<String>,
    /// Number of seeds (runs 0..seeds).
    #[arg(long, default_value_t = 10)]
    seeds: u64,
    /// Worker threads (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// One JSON object per line on stdout.
    #[arg(long)]
    json: bool,
    /// Print each seed's values on stderr too.
    #[arg(long)]
    verbose: bool,
}

#[derive(Debug, clap::Args)]
struct ThroughputArgs {
    /// Nodes in the synthetic pool (8 GPUs each).
    #[arg(long, default_value_t = 1213)]
    nodes: usize,
    /// Timed placement decisions.
    #[arg(long, default_value_t = 20_000)]
    decisions: usize,
    /// Placement policy (default: the default policy).
    #[arg(long, value_name = "NAME")]
    policy: Option<String>,
    /// Random seed for the request stream.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// One JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Runs `tensor-fusion sim`.
pub fn run(args: SimArgs) -> anyhow::Result<()> {
    match args.command {
        SimCommand::Alibaba(a) => alibaba_cmd(a),
        SimCommand::Throughput(t) => throughput_cmd(t),
    }
}

fn parse_policies(s: Option<&str>) -> anyhow::Result<Vec<Policy>> {
    match s {
        None => Ok(vec![Policy::default()]),
        Some(s) => s
            .split(',')
            .map(|p| p.trim().parse::<Policy>().map_err(anyhow::Error::from))
            .collect(),
    }
}

fn alibaba_cmd(a: AlibabaArgs) -> anyhow::Result<()> {
    let policies = parse_policies(a.policy.as_deref())?;
    anyhow::ensure!(a.seeds > 0, "--seeds must be at least 1");
    let nodes = trace::load_nodes(&a.nodes).context("reading the node list")?;
    let pods = trace::load_pods(&a.pods).context("reading the pod list")?;
    let threads = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    eprintln!(
        "sim alibaba: {} nodes ({} GPUs), {} pods, {} seed(s), {} thread(s)",
        nodes.iter().filter(|n| n.gpus > 0).count(),
        nodes.iter().map(|n| n.gpus as u64).sum::<u64>(),
        pods.len(),
        a.seeds,
        threads
    );
    for policy in policies {
        let verbose = a.verbose;
        let progress = move |r: &alibaba::SeedResult| {
            let at100 = r.unalloc_pct[3];
            eprintln!(
                "  {policy}: seed {} done in {:.1} s ({} pods, {} dropped, unallocated at 100 %: {at100:.2})",
                r.seed, r.seconds, r.submitted, r.dropped
            );
            if verbose {
                let vals: Vec<String> = alibaba::REPORT_POINTS
                    .iter()
                    .zip(&r.unalloc_pct)
                    .map(|(x, v)| format!("{x}:{v:.2}"))
                    .collect();
                eprintln!("    {}", vals.join(" "));
            }
        };
        let (summaries, _) = alibaba::run(&nodes, &pods, policy, a.seeds, threads, &progress);
        for s in summaries {
            if a.json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                println!(
                    "{:<22} arrived {:>3} %  unallocated GPU % median {:>6.2}  mean {:>6.2}",
                    s.policy, s.arrived_pct, s.unalloc_gpu_pct_median, s.unalloc_gpu_pct_mean
                );
            }
        }
    }
    Ok(())
}

fn throughput_cmd(t: ThroughputArgs) -> anyhow::Result<()> {
    anyhow::ensure!(t.nodes > 0, "--nodes must be at least 1");
    anyhow::ensure!(t.decisions > 0, "--decisions must be at least 1");
    let policy = parse_policies(t.policy.as_deref())?
        .into_iter()
        .next()
        .unwrap_or_default();
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; use `cargo build --release` for meaningful figures");
    }
    eprintln!(
        "sim throughput: {} nodes, {} decisions, policy {policy} (filling the pool first)",
        t.nodes, t.decisions
    );
    let r = bench::throughput(t.nodes, t.decisions, policy, t.seed);
    if t.json {
        #[derive(serde::Serialize)]
        struct Line {
            nodes: usize,
            gpus: usize,
            decisions_per_s: f64,
        }
        let line = Line {
            nodes: r.nodes,
            gpus: r.gpus,
            decisions_per_s: (r.decisions_per_s * 10.0).round() / 10.0,
        };
        println!("{}", serde_json::to_string(&line)?);
    } else {
        println!(
            "{} nodes, {} GPUs: {} decisions ({} placed) in {:.3} s = {:.0} decisions/s",
            r.nodes, r.gpus, r.decisions, r.placed, r.seconds, r.decisions_per_s
        );
    }
    Ok(())
}

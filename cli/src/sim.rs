//! `tensor-fusion sim`: the scheduler's trace simulator and throughput bench.

use std::path::PathBuf;

use anyhow::Context;
use tf_scheduler::Policy;
use tf_scheduler::sim::{alibaba, bench, trace, variants};

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
    /// Generate workload variants from the default pod list: GPU-model-constrained
    /// (`gpuspecNN`) and CPU-heavy (`cpuMMM`) pod lists, seeded and reproducible.
    GenTrace(GenTraceArgs),
}

#[derive(Debug, clap::Args)]
struct GenTraceArgs {
    /// The default pod list (openb_pod_list_default.csv).
    #[arg(long, value_name = "FILE")]
    pods: PathBuf,
    /// The node list (openb_node_list_gpu_node.csv): constrained pods only get models that
    /// can host them.
    #[arg(long, value_name = "FILE")]
    nodes: PathBuf,
    /// Output folder (created if missing); files are named openb_pod_list_<variant>.csv.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Variants, comma-separated (gpuspecNN, cpuMMM); default: the README's standard set.
    #[arg(long, value_name = "NAMES")]
    variants: Option<String>,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, clap::Args)]
struct AlibabaArgs {
    /// Node list CSV (e.g. openb_node_list_gpu_node.csv).
    #[arg(long, value_name = "FILE")]
    nodes: PathBuf,
    /// Pod list CSV (e.g. openb_pod_list_default.csv), or several separated by commas.
    #[arg(long, value_name = "FILE", value_delimiter = ',', required = true)]
    pods: Vec<PathBuf>,
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
        SimCommand::GenTrace(g) => gen_trace_cmd(g),
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
    let threads = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    for pods_path in &a.pods {
        let pods = trace::load_pods(pods_path).context("reading the pod list")?;
        let name = trace_name(pods_path);
        eprintln!(
            "sim alibaba {name}: {} nodes ({} GPUs), {} pods, {} seed(s), {} thread(s)",
            nodes.iter().filter(|n| n.gpus > 0).count(),
            nodes.iter().map(|n| n.gpus as u64).sum::<u64>(),
            pods.len(),
            a.seeds,
            threads
        );
        for &policy in &policies {
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
                    #[derive(serde::Serialize)]
                    struct Line<'a> {
                        trace: &'a str,
                        #[serde(flatten)]
                        summary: &'a alibaba::Summary,
                    }
                    let line = Line {
                        trace: &name,
                        summary: &s,
                    };
                    println!("{}", serde_json::to_string(&line)?);
                } else {
                    println!(
                        "{name:<12} {:<22} arrived {:>3} %  unallocated GPU % median {:>6.2}  mean {:>6.2}",
                        s.policy, s.arrived_pct, s.unalloc_gpu_pct_median, s.unalloc_gpu_pct_mean
                    );
                }
            }
        }
    }
    Ok(())
}

/// `openb_pod_list_gpushare40.csv` -> `gpushare40`.
fn trace_name(path: &std::path::Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    stem.strip_prefix("openb_pod_list_")
        .map(str::to_string)
        .unwrap_or(stem)
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

fn gen_trace_cmd(g: GenTraceArgs) -> anyhow::Result<()> {
    let list: Vec<variants::Variant> = match g.variants.as_deref() {
        None => variants::Variant::standard(),
        Some(s) => s
            .split(',')
            .map(|v| {
                variants::Variant::parse(v.trim()).with_context(|| {
                    format!("unknown variant {v:?} (expected gpuspecNN or cpuMMM)")
                })
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let nodes = trace::load_nodes(&g.nodes).context("reading the node list")?;
    let pods = trace::load_pods(&g.pods).context("reading the pod list")?;
    std::fs::create_dir_all(&g.out).with_context(|| format!("creating {}", g.out.display()))?;
    for v in list {
        let out = v.generate(&pods, &nodes, g.seed);
        let path = g.out.join(v.file_name());
        trace::write_pods(&path, &out)?;
        let gpu: u64 = out.iter().map(|p| p.gpu_demand_milli()).sum();
        let spec: u64 = out
            .iter()
            .filter(|p| !p.gpu_spec.is_empty())
            .map(|p| p.gpu_demand_milli())
            .sum();
        let cpu_only: u64 = out
            .iter()
            .filter(|p| p.num_gpu == 0)
            .map(|p| p.cpu_milli)
            .sum();
        #[derive(serde::Serialize)]
        struct Line {
            variant: String,
            file: String,
            seed: u64,
            pods: usize,
            constrained_gpu_pct: f64,
            cpu_only_pods: usize,
            cpu_only_cores: f64,
        }
        let line = Line {
            variant: v.name(),
            file: path.display().to_string(),
            seed: g.seed,
            pods: out.len(),
            constrained_gpu_pct: (spec as f64 * 1000.0 / gpu.max(1) as f64).round() / 10.0,
            cpu_only_pods: out.iter().filter(|p| p.num_gpu == 0).count(),
            cpu_only_cores: (cpu_only as f64 / 100.0).round() / 10.0,
        };
        println!("{}", serde_json::to_string(&line)?);
    }
    Ok(())
}

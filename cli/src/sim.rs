//! `tensor-fusion sim`: the scheduler's trace simulator and throughput bench.

use std::path::PathBuf;

use anyhow::Context;
use tf_scheduler::sim::{alibaba, bench, trace, variants};
use tf_scheduler::{DefragOptions, Policy, Qos};

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
    /// Replay the Alibaba trace to an arrived workload (default 100 %), plan defragmentation
    /// moves, apply them, and report GPUs and nodes freed per move at several move budgets.
    Defrag(DefragArgs),
}

#[derive(Debug, clap::Args)]
struct DefragArgs {
    /// Node list CSV (e.g. openb_node_list_gpu_node.csv).
    #[arg(long, value_name = "FILE")]
    nodes: PathBuf,
    /// Pod list CSV (e.g. openb_pod_list_default.csv).
    #[arg(long, value_name = "FILE")]
    pods: PathBuf,
    /// Placement policy of the replay, or several separated by commas: frag-lookahead (the
    /// default), fgd, best-fit, random, CompactFirst, LowLoadFirst, NodeCompactGPULowLoad.
    #[arg(long, value_name = "NAME")]
    policy: Option<String>,
    /// Number of seeds (runs 0..seeds).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Arrived workload to replay to, % of the cluster's GPUs.
    #[arg(long, default_value_t = 100)]
    arrived: u32,
    /// Move budgets to report, comma-separated (the plan is made once with the largest).
    #[arg(
        long,
        value_name = "N,..",
        value_delimiter = ',',
        default_value = "10,25,50,100,250,500"
    )]
    budgets: Vec<usize>,
    /// Never move allocations of this QoS or above (pods keep the trace's QoS class:
    /// Guaranteed = critical, LS = high, Burstable = medium, BE = low).
    #[arg(long, default_value = "critical")]
    protect: String,
    /// One JSON object per line on stdout.
    #[arg(long)]
    json: bool,
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
    /// Placement policy, or several separated by commas: frag-lookahead (the default), fgd,
    /// best-fit, random, CompactFirst, LowLoadFirst, NodeCompactGPULowLoad.
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
    /// Placement policy: frag-lookahead (the default), fgd, best-fit, random, CompactFirst,
    /// LowLoadFirst, NodeCompactGPULowLoad.
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
        SimCommand::Defrag(d) => defrag_cmd(d),
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

fn defrag_cmd(d: DefragArgs) -> anyhow::Result<()> {
    let policies = parse_policies(d.policy.as_deref())?;
    anyhow::ensure!(d.seeds > 0, "--seeds must be at least 1");
    anyhow::ensure!(!d.budgets.is_empty(), "--budgets needs at least one budget");
    let protect: Qos = d.protect.parse()?;
    let nodes = trace::load_nodes(&d.nodes).context("reading the node list")?;
    let pods = trace::load_pods(&d.pods).context("reading the pod list")?;
    let mut budgets = d.budgets.clone();
    budgets.sort_unstable();
    budgets.dedup();
    let max = *budgets.last().expect("not empty");
    #[derive(serde::Serialize)]
    struct Line {
        policy: String,
        seed: u64,
        arrived_pct: u32,
        unalloc_gpu_pct: f64,
        protected_allocations: usize,
        empty_gpus_before: usize,
        empty_nodes_before: usize,
        budget: usize,
        moves: usize,
        gpus_freed: i64,
        nodes_freed: i64,
        gpus_freed_per_move: f64,
        nodes_freed_per_move: f64,
        plan_ms: f64,
        applied: bool,
    }
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    for policy in policies {
        let mut means: Vec<(f64, f64, f64)> = vec![(0.0, 0.0, 0.0); budgets.len()];
        for seed in 0..d.seeds {
            let mut r =
                tf_scheduler::sim::alibaba::replay_to(&nodes, &pods, policy, seed, d.arrived, true);
            let s = &mut r.scheduler;
            let unalloc = 100.0 - r.allocated_milli as f64 * 100.0 / (r.total_gpus as f64 * 1000.0);
            let protected = s
                .allocation_ids()
                .into_iter()
                .filter(|&id| s.allocation(id).is_some_and(|a| a.qos >= protect))
                .count();
            let t0 = std::time::Instant::now();
            let opts = DefragOptions::new(alibaba::POOL_NAME, max).protecting(protect);
            let plan = s.plan_defrag(&opts)?;
            let plan_ms = t0.elapsed().as_secs_f64() * 1000.0;
            // Carry the whole plan out and check what it promised.
            let applied = s.apply_defrag(&plan)? == plan.move_count();
            let (mut empty_gpus, mut empty_nodes) = (0i64, 0i64);
            for name in s.pool_nodes(alibaba::POOL_NAME)? {
                let st = s.node_status(&name)?;
                empty_gpus += st.gpus.iter().filter(|g| g.allocations == 0).count() as i64;
                empty_nodes += (st.gpus.iter().all(|g| g.allocations == 0)
                    && st.cpu_free == st.cpu_capacity) as i64;
            }
            let applied = applied
                && empty_gpus == plan.empty_gpus_before as i64 + plan.gpus_freed()
                && empty_nodes == plan.empty_nodes_before as i64 + plan.nodes_freed();
            anyhow::ensure!(
                applied,
                "seed {seed}: the applied plan did not free what it planned"
            );
            for (k, &budget) in budgets.iter().enumerate() {
                let (mut moves, mut g, mut n) = (0usize, 0i64, 0i64);
                for step in &plan.steps {
                    if moves + step.moves.len() > budget {
                        break;
                    }
                    moves += step.moves.len();
                    g += step.gpus_freed;
                    n += step.nodes_freed;
                }
                let per = |x: i64| {
                    if moves == 0 {
                        0.0
                    } else {
                        x as f64 / moves as f64
                    }
                };
                means[k].0 += moves as f64 / d.seeds as f64;
                means[k].1 += g as f64 / d.seeds as f64;
                means[k].2 += n as f64 / d.seeds as f64;
                let line = Line {
                    policy: policy.name().to_string(),
                    seed,
                    arrived_pct: d.arrived,
                    unalloc_gpu_pct: round(unalloc),
                    protected_allocations: protected,
                    empty_gpus_before: plan.empty_gpus_before,
                    empty_nodes_before: plan.empty_nodes_before,
                    budget,
                    moves,
                    gpus_freed: g,
                    nodes_freed: n,
                    gpus_freed_per_move: round(per(g)),
                    nodes_freed_per_move: round(per(n)),
                    plan_ms: round(plan_ms),
                    applied,
                };
                if d.json {
                    println!("{}", serde_json::to_string(&line)?);
                }
            }
        }
        if !d.json {
            for (k, &budget) in budgets.iter().enumerate() {
                let (m, g, n) = means[k];
                let per = |x: f64| if m == 0.0 { 0.0 } else { x / m };
                println!(
                    "{:<22} A={} % budget {:>4}: {:>6.1} moves, {:>6.1} GPUs and {:>5.1} nodes freed ({:.2} GPUs, {:.2} nodes per move; mean of {} seeds)",
                    policy.name(),
                    d.arrived,
                    budget,
                    m,
                    g,
                    n,
                    per(g),
                    per(n),
                    d.seeds
                );
            }
        }
    }
    Ok(())
}

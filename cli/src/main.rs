//! `tensor-fusion`: the user's command line.

mod sim;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tensor-fusion", version, about = "GPU virtualization and pooling", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scheduler trace simulator and throughput bench.
    Sim(sim::SimArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(args) => sim::run(args),
    }
}

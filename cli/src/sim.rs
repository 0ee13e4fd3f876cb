//! `tensor-fusion sim`: the scheduler's trace simulator and throughput bench (being written).

#[derive(Debug, clap::Args)]
pub struct SimArgs {}

pub fn run(_args: SimArgs) -> anyhow::Result<()> {
    anyhow::bail!("the simulator is not built yet")
}

//! `tensor-fusion top`: a live view of the node daemon's devices and vGPUs, refreshed once a
//! second (ratatui). q, Esc or Ctrl-C quits.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::widgets::{Block, Cell, Row, Table};
use tf_hypervisor::api;

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// The daemon's socket (default: $TF_NODE_SOCKET or the user's runtime folder).
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

fn pct(s: f64) -> String {
    format!("{:.1}%", s * 100.0)
}

fn bytes(b: u64) -> String {
    tf_hal::units::format_bytes(b)
}

/// Draw one frame: the devices, then the vGPUs.
pub fn draw(frame: &mut Frame, devices: &[api::Device], vgpus: &[api::Vgpu], status: &str) {
    let [top, bottom, line] = Layout::vertical([
        Constraint::Length(devices.len() as u16 + 3),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let rows = devices.iter().map(|d| {
        Row::new(vec![
            Cell::from(d.index.to_string()),
            Cell::from(d.model.clone()),
            Cell::from(d.utilization.map(pct).unwrap_or_else(|| "-".into())),
            Cell::from(format!(
                "{} / {}",
                bytes(d.used_memory_bytes),
                bytes(d.total_memory_bytes)
            )),
            Cell::from(pct(d.compute_requested)),
            Cell::from(d.vgpus.to_string()),
            Cell::from(d.temperature_c.map_or("-".into(), |t| format!("{t:.0} C"))),
            Cell::from(d.power_w.map_or("-".into(), |p| format!("{p:.0} W"))),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(4),
            Constraint::Min(12),
            Constraint::Length(8),
            Constraint::Length(24),
            Constraint::Length(10),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(7),
        ],
    )
    .header(
        Row::new([
            "DEV",
            "MODEL",
            "UTIL",
            "MEMORY",
            "REQUESTED",
            "VGPUS",
            "TEMP",
            "POWER",
        ])
        .style(bold),
    )
    .block(Block::bordered().title(" devices "));
    frame.render_widget(table, top);
    let rows = vgpus.iter().map(|v| {
        Row::new(vec![
            Cell::from(v.name.clone()),
            Cell::from(v.device_index.to_string()),
            Cell::from(v.qos.clone()),
            Cell::from(pct(v.compute_request)),
            Cell::from(pct(v.compute_limit)),
            Cell::from(pct(v.target_share)),
            Cell::from(pct(v.achieved_share)),
            Cell::from(format!(
                "{} / {}",
                bytes(v.vram_used_bytes),
                bytes(v.vram_limit_bytes)
            )),
            Cell::from(v.attached_pids.len().to_string()),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(10),
            Constraint::Length(4),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(24),
            Constraint::Length(5),
        ],
    )
    .header(
        Row::new([
            "VGPU", "DEV", "QOS", "REQUEST", "LIMIT", "TARGET", "ACHIEVED", "VRAM", "PROCS",
        ])
        .style(bold),
    )
    .block(Block::bordered().title(" vGPUs "));
    frame.render_widget(table, bottom);
    frame.render_widget(ratatui::text::Line::from(status.to_string()), line);
}

/// `tensor-fusion top`.
pub fn run(args: TopArgs) -> Result<()> {
    let socket = args
        .socket
        .unwrap_or_else(tf_hypervisor::api::default_socket);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let fetch = |rt: &tokio::runtime::Runtime| -> Result<(Vec<api::Device>, Vec<api::Vgpu>)> {
        rt.block_on(async {
            let mut c = tf_hypervisor::api::connect(&socket).await.map_err(|e| {
                anyhow!(
                    "cannot reach the node daemon at {}: {e}; is `tensor-fusion node` running?",
                    socket.display()
                )
            })?;
            let d = c
                .list_devices(api::ListDevicesRequest {})
                .await
                .map_err(|s| anyhow!("{}", s.message()))?
                .into_inner()
                .devices;
            let v = c
                .list_vgpus(api::ListVgpusRequest {})
                .await
                .map_err(|s| anyhow!("{}", s.message()))?
                .into_inner()
                .vgpus;
            Ok((d, v))
        })
    };
    // Fails before the terminal is taken over when the daemon is not there.
    let mut data = fetch(&rt)?;
    let mut terminal = ratatui::init();
    let result = (|| -> Result<()> {
        use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
        let mut status = format!("{} - q quits", socket.display());
        let mut last = Instant::now();
        loop {
            terminal.draw(|f| draw(f, &data.0, &data.1, &status))?;
            let wait = Duration::from_secs(1).saturating_sub(last.elapsed());
            if event::poll(wait)? {
                if let Event::Key(k) = event::read()?
                    && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                        || (k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL)))
                {
                    return Ok(());
                }
                continue;
            }
            last = Instant::now();
            match fetch(&rt) {
                Ok(d) => {
                    data = d;
                    status = format!("{} - q quits", socket.display());
                }
                Err(e) => status = format!("{e:#}"),
            }
        }
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;

    #[test]
    fn a_frame_shows_devices_and_vgpus() {
        let devices = vec![api::Device {
            index: 0,
            uuid: "GPU-1".into(),
            model: "NVIDIA H100 80GB HBM3".into(),
            total_memory_bytes: 80 << 30,
            used_memory_bytes: 3 << 30,
            utilization: Some(0.97),
            compute_requested: 1.0,
            vgpus: 2,
            temperature_c: Some(61.0),
            power_w: Some(612.4),
            ..Default::default()
        }];
        let vgpus = vec![
            api::Vgpu {
                name: "train".into(),
                qos: "critical".into(),
                compute_request: 0.5,
                compute_limit: 1.0,
                target_share: 0.5,
                achieved_share: 0.493,
                vram_used_bytes: 1 << 30,
                vram_limit_bytes: 8 << 30,
                attached_pids: vec![42],
                ..Default::default()
            },
            api::Vgpu {
                name: "batch".into(),
                qos: "low".into(),
                compute_request: 0.2,
                compute_limit: 0.4,
                target_share: 0.4,
                achieved_share: 0.398,
                vram_limit_bytes: 4 << 30,
                ..Default::default()
            },
        ];
        let mut t = ratatui::Terminal::new(TestBackend::new(110, 14)).unwrap();
        t.draw(|f| draw(f, &devices, &vgpus, "q quits")).unwrap();
        let buf = t.backend().buffer();
        let text: String = (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol())
                    .collect::<String>()
                    + "\n"
            })
            .collect();
        for want in [
            "NVIDIA H100 80GB HBM3",
            "97.0%",
            "61 C",
            "612 W",
            "3 GiB / 80 GiB",
            "train",
            "critical",
            "49.3%",
            "batch",
            "39.8%",
            "40.0%",
            "1 GiB / 8 GiB",
            "q quits",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
    }
}

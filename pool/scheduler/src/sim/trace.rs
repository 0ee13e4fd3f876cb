//! Readers for the Alibaba GPU cluster trace v2023 ("openb") CSV files.

use std::path::{Path, PathBuf};

/// A malformed or unreadable trace file, with the file and line at fault.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line could not be parsed.
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// One row of `openb_node_list_*.csv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceNode {
    /// Node name (`sn`).
    pub name: String,
    /// CPU, milli-cores.
    pub cpu_milli: u64,
    /// Host memory, MiB.
    pub memory_mib: u64,
    /// Number of GPUs.
    pub gpus: u32,
    /// GPU model (empty for CPU-only nodes).
    pub model: String,
}

/// One row of `openb_pod_list_*.csv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracePod {
    /// Pod name.
    pub name: String,
    /// CPU, milli-cores.
    pub cpu_milli: u64,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// GPUs (0-8).
    pub num_gpu: u32,
    /// Share of each GPU, 1/1000.
    pub gpu_milli: u32,
    /// Allowed models (empty = any).
    pub gpu_spec: Vec<String>,
    /// QoS class, when the file has the column.
    pub qos: Option<String>,
}

impl TracePod {
    /// GPU demand in milli-GPU (num_gpu x gpu_milli).
    pub fn gpu_demand_milli(&self) -> u64 {
        self.num_gpu as u64 * self.gpu_milli as u64
    }
}

struct Table {
    path: PathBuf,
    header: Vec<String>,
    rows: Vec<(usize, Vec<String>)>,
}

impl Table {
    fn read(path: &Path, required: &[&str]) -> Result<Table, TraceError> {
        let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut lines = text.lines().enumerate();
        let header: Vec<String> = match lines.next() {
            Some((_, h)) => h
                .trim_start_matches('\u{feff}')
                .split(',')
                .map(|s| s.trim().to_string())
                .collect(),
            None => {
                return Err(TraceError::Parse {
                    path: path.to_path_buf(),
                    line: 1,
                    message: "empty file (expected a CSV header)".into(),
                });
            }
        };
        for col in required {
            if !header.iter().any(|h| h == col) {
                return Err(TraceError::Parse {
                    path: path.to_path_buf(),
                    line: 1,
                    message: format!(
                        "missing column {col:?} in header (expected {})",
                        required.join(",")
                    ),
                });
            }
        }
        let mut rows = Vec::new();
        for (i, line) in lines {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<String> = line.split(',').map(|s| s.trim().to_string()).collect();
            if fields.len() != header.len() {
                return Err(TraceError::Parse {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: format!("{} fields, header has {}", fields.len(), header.len()),
                });
            }
            rows.push((i + 1, fields));
        }
        Ok(Table {
            path: path.to_path_buf(),
            header,
            rows,
        })
    }

    fn col(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    fn err(&self, line: usize, message: String) -> TraceError {
        TraceError::Parse {
            path: self.path.clone(),
            line,
            message,
        }
    }

    fn num(&self, line: usize, fields: &[String], col: usize) -> Result<u64, TraceError> {
        let s = &fields[col];
        s.parse::<u64>().map_err(|_| {
            self.err(
                line,
                format!(
                    "column {:?}: {s:?} is not a non-negative integer",
                    self.header[col]
                ),
            )
        })
    }
}

/// Reads a node list (`sn,cpu_milli,memory_mib,gpu,model`).
pub fn load_nodes(path: &Path) -> Result<Vec<TraceNode>, TraceError> {
    let t = Table::read(path, &["sn", "cpu_milli", "memory_mib", "gpu", "model"])?;
    let c = |n| t.col(n).expect("checked");
    let (sn, cpu, mem, gpu, model) = (
        c("sn"),
        c("cpu_milli"),
        c("memory_mib"),
        c("gpu"),
        c("model"),
    );
    let mut out = Vec::with_capacity(t.rows.len());
    for (line, f) in &t.rows {
        let gpus = t.num(*line, f, gpu)?;
        if gpus > 64 {
            return Err(t.err(*line, format!("{gpus} GPUs on one node (at most 64)")));
        }
        if gpus > 0 && f[model].is_empty() {
            return Err(t.err(*line, "GPU node without a model".into()));
        }
        out.push(TraceNode {
            name: f[sn].clone(),
            cpu_milli: t.num(*line, f, cpu)?,
            memory_mib: t.num(*line, f, mem)?,
            gpus: gpus as u32,
            model: f[model].clone(),
        });
    }
    if out.is_empty() {
        return Err(t.err(1, "no nodes".into()));
    }
    Ok(out)
}

/// Reads a pod list (`name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,qos,...]`).
pub fn load_pods(path: &Path) -> Result<Vec<TracePod>, TraceError> {
    let t = Table::read(
        path,
        &["name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"],
    )?;
    let c = |n| t.col(n).expect("checked");
    let (name, cpu, mem, ng, gm) = (
        c("name"),
        c("cpu_milli"),
        c("memory_mib"),
        c("num_gpu"),
        c("gpu_milli"),
    );
    let spec = t.col("gpu_spec");
    let qos = t.col("qos");
    let mut out = Vec::with_capacity(t.rows.len());
    for (line, f) in &t.rows {
        let num_gpu = t.num(*line, f, ng)?;
        let gpu_milli = t.num(*line, f, gm)?;
        if num_gpu > 64 {
            return Err(t.err(*line, format!("num_gpu {num_gpu} above 64")));
        }
        if gpu_milli > 1000 {
            return Err(t.err(*line, format!("gpu_milli {gpu_milli} above 1000")));
        }
        if num_gpu > 1 && gpu_milli != 1000 {
            return Err(t.err(
                *line,
                format!(
                    "gpu_milli {gpu_milli} with num_gpu {num_gpu} (multi-GPU pods take whole GPUs)"
                ),
            ));
        }
        if (num_gpu == 0) != (gpu_milli == 0) {
            return Err(t.err(
                *line,
                format!("num_gpu {num_gpu} with gpu_milli {gpu_milli}"),
            ));
        }
        out.push(TracePod {
            name: f[name].clone(),
            cpu_milli: t.num(*line, f, cpu)?,
            memory_mib: t.num(*line, f, mem)?,
            num_gpu: num_gpu as u32,
            gpu_milli: gpu_milli as u32,
            gpu_spec: spec
                .map(|s| {
                    f[s].split('|')
                        .filter(|m| !m.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            qos: qos.map(|q| f[q].clone()).filter(|q| !q.is_empty()),
        });
    }
    if out.is_empty() {
        return Err(t.err(1, "no pods".into()));
    }
    Ok(out)
}

/// Writes a pod list in the trace's format (`name,cpu_milli,memory_mib,num_gpu,gpu_milli,
/// gpu_spec,qos`; the phase and time columns are not kept), readable by [`load_pods`].
pub fn write_pods(path: &Path, pods: &[TracePod]) -> Result<(), TraceError> {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(pods.len() * 64 + 64);
    s.push_str("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos\n");
    for p in pods {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{}",
            p.name,
            p.cpu_milli,
            p.memory_mib,
            p.num_gpu,
            p.gpu_milli,
            p.gpu_spec.join("|"),
            p.qos.as_deref().unwrap_or("")
        );
    }
    std::fs::write(path, s).map_err(|source| TraceError::Io {
        path: path.to_path_buf(),
        source,
    })
}

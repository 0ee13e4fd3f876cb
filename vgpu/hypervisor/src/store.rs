//! The daemon's state on disk: one record per vGPU in a redb database.
//!
//! Each change is one write transaction, committed (and made durable) before the API answers,
//! so a daemon killed at any instant restarts with exactly the vGPUs whose creation or removal
//! it confirmed. Records are JSON (serde): readable with any redb tool and tolerant of new
//! fields.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const VGPUS: TableDefinition<&str, &[u8]> = TableDefinition::new("vgpus");
const ATTACHMENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("attachments");

/// A front end attached to a vGPU, as the database keeps it (so that a restarted daemon knows
/// who was attached when it died, and cleans up after those that did not come back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachmentRecord {
    pub id: u64,
    pub vgpu: String,
    /// The front end's pid in the daemon's namespace (0: unknown).
    pub pid: u32,
    /// Whether it lives in another pid namespace.
    pub foreign: bool,
    pub since_unix_ms: i64,
}

/// A vGPU as the database keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VgpuRecord {
    pub name: String,
    pub device_index: u32,
    pub device_uuid: String,
    /// low, medium, high or critical.
    pub qos: String,
    pub compute_request: f64,
    pub compute_limit: f64,
    pub vram_request: u64,
    pub vram_limit: u64,
    /// The vGPU's folder (its region), under the state directory.
    pub folder: std::path::PathBuf,
    pub created_unix_ms: i64,
    /// A remote vGPU (the daemon runs a worker on it).
    #[serde(default)]
    pub remote: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("state database {path}: {message}")]
pub struct StoreError {
    pub path: String,
    pub message: String,
}

/// The database (the file is locked while it is open: one daemon per state directory).
pub struct Store {
    db: Database,
    path: String,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let p = path.display().to_string();
        let err = |e: &dyn std::fmt::Display| StoreError {
            path: p.clone(),
            message: e.to_string(),
        };
        let db = Database::create(path).map_err(|e| err(&e))?;
        // The table exists from the start, so that readers never see it missing.
        let tx = db.begin_write().map_err(|e| err(&e))?;
        tx.open_table(VGPUS).map_err(|e| err(&e))?;
        tx.open_table(ATTACHMENTS).map_err(|e| err(&e))?;
        tx.commit().map_err(|e| err(&e))?;
        Ok(Store { db, path: p })
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Every vGPU, by name.
    pub fn list(&self) -> Result<Vec<VgpuRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(VGPUS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let r: VgpuRecord = serde_json::from_slice(v.value())
                .map_err(|e| self.err(format!("record {:?}: {e}", k.value())))?;
            out.push(r);
        }
        Ok(out)
    }

    /// Insert a new record; committed when this returns.
    pub fn insert(&self, r: &VgpuRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(r).map_err(|e| self.err(e))?;
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(VGPUS).map_err(|e| self.err(e))?;
            if t.get(r.name.as_str()).map_err(|e| self.err(e))?.is_some() {
                return Err(self.err(format!("{} is already stored", r.name)));
            }
            t.insert(r.name.as_str(), bytes.as_slice())
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Remove a record; committed when this returns. Whether it was there.
    pub fn remove(&self, name: &str) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let found = {
            let mut t = tx.open_table(VGPUS).map_err(|e| self.err(e))?;
            t.remove(name).map_err(|e| self.err(e))?.is_some()
        };
        tx.commit().map_err(|e| self.err(e))?;
        Ok(found)
    }
}

impl Store {
    /// Every stored attachment.
    pub fn attachments(&self) -> Result<Vec<AttachmentRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(ATTACHMENTS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let r: AttachmentRecord = serde_json::from_slice(v.value())
                .map_err(|e| self.err(format!("attachment {}: {e}", k.value())))?;
            out.push(r);
        }
        Ok(out)
    }

    /// Record an attachment; committed when this returns.
    pub fn attach(&self, r: &AttachmentRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(r).map_err(|e| self.err(e))?;
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(ATTACHMENTS).map_err(|e| self.err(e))?;
            t.insert(r.id, bytes.as_slice()).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Forget attachments (detached, or superseded after a restart); committed when this
    /// returns.
    pub fn detach(&self, ids: &[u64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(ATTACHMENTS).map_err(|e| self.err(e))?;
            for id in ids {
                t.remove(*id).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str) -> VgpuRecord {
        VgpuRecord {
            name: name.into(),
            device_index: 0,
            device_uuid: "GPU-x".into(),
            qos: "high".into(),
            compute_request: 0.3,
            compute_limit: 0.6,
            vram_request: 1 << 30,
            vram_limit: 2 << 30,
            folder: "/tmp/x".into(),
            created_unix_ms: 1,
            remote: false,
        }
    }

    #[test]
    fn records_survive_reopening_and_duplicates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let s = Store::open(&path).unwrap();
            s.insert(&rec("a")).unwrap();
            s.insert(&rec("b")).unwrap();
            assert!(s.insert(&rec("a")).is_err());
            assert!(s.remove("b").unwrap());
            assert!(!s.remove("b").unwrap());
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.list().unwrap(), vec![rec("a")]);
        let at = |id| AttachmentRecord {
            id,
            vgpu: "a".into(),
            pid: 42,
            foreign: id == 2,
            since_unix_ms: 7,
        };
        s.attach(&at(1)).unwrap();
        s.attach(&at(2)).unwrap();
        s.detach(&[1]).unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.attachments().unwrap(), vec![at(2)]);
    }
}

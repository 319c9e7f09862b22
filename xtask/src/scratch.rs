//! A private scratch directory (configs, agent state, admin socket) removed on drop.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `/tmp/<name>`, empty; `name` must be unique to this run (include the pid).
    pub fn create(name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(name);
        // A directory of that name can only be a leftover of a dead run with the same pid.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

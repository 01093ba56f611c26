//! One running node per data directory (SPEC 1): `serve` takes an
//! exclusive advisory lock on `<data-dir>/certmq.lock` before it reads or
//! writes any state, and holds it for the life of the process. The file
//! names the holder's PID so the refusal can say who has it. The kernel
//! drops the lock when the process exits, however it exits (kill -9
//! included), so a stale file never blocks a restart.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context};

/// Held while the node runs; dropping it releases the directory.
pub struct DataDirLock {
    _file: File,
}

pub fn lock_data_dir(dir: &Path) -> anyhow::Result<DataDirLock> {
    let path = dir.join("certmq.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another certmq process".to_string()
            } else {
                format!("certmq process {holder}")
            };
            bail!(
                "the data directory {} is in use by {who} (lock file {}); \
                 a data directory belongs to one running node: stop that process \
                 or start this one with another --data-dir",
                dir.display(),
                path.display()
            );
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_all()?;
    Ok(DataDirLock { _file: file })
}

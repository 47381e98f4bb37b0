//! One `duka serve` per SQLite database file. SQLite itself would let a second process in
//! (WAL allows it), but two servers on one file each believe they own the event log, the
//! SMS queue and the live feed. `serve` therefore holds an OS lock (`flock` on Linux) on a file
//! beside the database, `duka.db.lock`, holding its pid. The kernel drops the lock with the
//! process, however it ends, so a killed server never blocks its restart; the file stays
//! behind (removing it could race with the next start) and is harmless.
//! `duka migrate` and `duka backup` do not take it: they work beside a running server.

use std::fs::File;
use std::path::{Path, PathBuf};

/// Held for as long as this process serves the database; dropping it releases the lock.
#[derive(Debug)]
pub struct SqliteLock {
    _file: File,
    pub path: PathBuf,
}

/// The lock file of a database file: `<database>.lock`.
pub fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the lock of `database` (creating its directory and the lock file if need be), or
/// says which process holds it.
pub fn acquire(database: &Path) -> Result<SqliteLock, String> {
    let path = lock_path(database);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create database directory {}: {e}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
    if !try_lock(&file).map_err(|e| format!("cannot lock {}: {e}", path.display()))? {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        let holder = match holder.trim() {
            "" => "another process".to_string(),
            pid => format!("process {pid}"),
        };
        return Err(format!(
            "the SQLite database {} is in use by {holder} (it holds {}): one `duka serve` \
             serves a SQLite database; stop that one first, or use PostgreSQL to run several \
             instances",
            database.display(),
            path.display()
        ));
    }
    write_pid(&mut file).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(SqliteLock { _file: file, path })
}

fn write_pid(file: &mut File) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_all()
}

/// `Ok(false)` when another open file description holds the lock (another process, or
/// another server in this one). `File::try_lock` is `flock(LOCK_EX | LOCK_NB)` on Linux.
fn try_lock(file: &File) -> std::io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("sub/duka.db");
        let first = acquire(&db).unwrap();
        assert_eq!(first.path, dir.path().join("sub/duka.db.lock"));
        let text = std::fs::read_to_string(&first.path).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        let err = acquire(&db).unwrap_err();
        assert!(
            err.contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        drop(first);
        let again = acquire(&db).unwrap();
        drop(again);
    }
}

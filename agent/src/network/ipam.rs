//! Pod address allocation kept on disk, one file per allocated address (named after
//! the address, holding the pod's uid), so a restarted agent never hands out an address
//! a running pod still holds.
//!
//! A file is written completely under a temporary name and then hard-linked to its
//! final name: the link either appears with its full content or fails because the
//! address is taken, which makes two concurrent allocations (or a crash midway) safe.

use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Error, Ipv4Net, Result};

/// Prefix of files being written; never read as allocations.
const TEMP_PREFIX: &str = ".tmp-";
/// Keeps temporary names of concurrent allocations in this process apart.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The allocations of one pod CIDR, in one directory.
#[derive(Clone, Debug)]
pub struct Ipam {
    dir: PathBuf,
    net: Ipv4Net,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Ipam {
        path: path.to_path_buf(),
        source,
    }
}

impl Ipam {
    /// Opens (creating it if needed) the allocation directory `dir` for `net`.
    pub fn open(dir: impl Into<PathBuf>, net: Ipv4Net) -> Result<Ipam> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Ipam { dir, net })
    }

    /// Every allocation: address and pod uid, lowest address first.
    pub fn entries(&self) -> Result<Vec<(Ipv4Addr, String)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let path = entry.path();
            match fs::read_to_string(&path) {
                Ok(uid) => out.push((ip, uid.trim().to_string())),
                // Released between the listing and the read.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        out.sort();
        Ok(out)
    }

    /// The address `pod_uid` holds, if any.
    pub fn lookup(&self, pod_uid: &str) -> Result<Option<Ipv4Addr>> {
        Ok(self
            .entries()?
            .into_iter()
            .find(|(_, uid)| uid == pod_uid)
            .map(|(ip, _)| ip))
    }

    /// Takes the lowest free address for `pod_uid`.
    pub fn allocate(&self, pod_uid: &str) -> Result<Ipv4Addr> {
        let used: Vec<Ipv4Addr> = self.entries()?.into_iter().map(|(ip, _)| ip).collect();
        let temp = self.dir.join(format!(
            "{TEMP_PREFIX}{}-{}",
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        write_synced(&temp, pod_uid)?;
        let result = self.link_first_free(&temp, &used);
        let _ = fs::remove_file(&temp);
        let ip = result?;
        // The new name must survive a crash too, not only the file's content.
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(ip)
    }

    fn link_first_free(&self, temp: &Path, used: &[Ipv4Addr]) -> Result<Ipv4Addr> {
        for ip in self.net.pod_addresses().filter(|ip| !used.contains(ip)) {
            let path = self.dir.join(ip.to_string());
            match fs::hard_link(temp, &path) {
                Ok(()) => return Ok(ip),
                // Taken since we listed: someone else won it, try the next one.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Err(Error::Exhausted(self.net))
    }

    /// Frees every address `pod_uid` holds; freeing nothing is fine.
    pub fn release(&self, pod_uid: &str) -> Result<()> {
        for (ip, uid) in self.entries()? {
            if uid == pod_uid {
                let path = self.dir.join(ip.to_string());
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
        }
        Ok(())
    }
}

fn write_synced(path: &Path, content: &str) -> Result<()> {
    let mut f = fs::File::create(path).map_err(io_err(path))?;
    f.write_all(content.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_lowest_free_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let net: Ipv4Net = "10.9.0.0/29".parse().unwrap();
        let ipam = Ipam::open(dir.path().join("ipam"), net).unwrap();
        assert_eq!(ipam.allocate("a").unwrap(), ip("10.9.0.2"));
        assert_eq!(ipam.allocate("b").unwrap(), ip("10.9.0.3"));
        assert_eq!(ipam.allocate("c").unwrap(), ip("10.9.0.4"));
        ipam.release("b").unwrap();
        // A restarted agent sees the same allocations and fills the hole.
        let reopened = Ipam::open(dir.path().join("ipam"), net).unwrap();
        assert_eq!(
            reopened.entries().unwrap(),
            vec![(ip("10.9.0.2"), "a".into()), (ip("10.9.0.4"), "c".into())]
        );
        assert_eq!(reopened.allocate("d").unwrap(), ip("10.9.0.3"));
        assert_eq!(reopened.lookup("c").unwrap(), Some(ip("10.9.0.4")));
        assert_eq!(reopened.lookup("b").unwrap(), None);
        // No temporary file is left behind.
        let names: Vec<String> = fs::read_dir(dir.path().join("ipam"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with(TEMP_PREFIX)),
            "{names:?}"
        );
    }

    #[test]
    fn exhaustion_and_idempotent_release() {
        let dir = tempfile::tempdir().unwrap();
        let net: Ipv4Net = "10.9.0.0/29".parse().unwrap();
        let ipam = Ipam::open(dir.path(), net).unwrap();
        // A /29 has six hosts; the gateway takes one.
        for n in 0..5 {
            ipam.allocate(&format!("p{n}")).unwrap();
        }
        assert!(matches!(ipam.allocate("p5"), Err(Error::Exhausted(_))));
        ipam.release("p0").unwrap();
        ipam.release("p0").unwrap();
        assert_eq!(ipam.allocate("p5").unwrap(), ip("10.9.0.2"));
    }

    #[test]
    fn concurrent_allocations_never_share() {
        let dir = tempfile::tempdir().unwrap();
        let net: Ipv4Net = "10.9.0.0/24".parse().unwrap();
        let ipam = Ipam::open(dir.path(), net).unwrap();
        let got: Vec<Ipv4Addr> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|n| {
                    let ipam = ipam.clone();
                    s.spawn(move || ipam.allocate(&format!("pod{n}")).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut unique = got.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 8, "{got:?}");
        assert_eq!(ipam.entries().unwrap().len(), 8);
    }
}

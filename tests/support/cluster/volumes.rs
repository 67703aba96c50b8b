//! Data directories on small filesystems of their own, as on a volume of fixed size: a
//! tmpfs mounted on each member's data directory (pg_wal inside it), that a test fills to
//! the last byte and empties again.

use std::io::Write;
use std::process::Command;

use super::Cluster;

/// The file that takes a volume's free space.
const BALLOON: &str = "pgwarden-test-balloon";

impl Cluster {
    /// Mounts a tmpfs of `mb` megabytes on every member's data directory (before the members
    /// first start), owned by the member user, and caps `max_wal_size` so that WAL fits in
    /// it under the tests' workloads. Unmounted when the cluster goes.
    pub fn use_data_volumes(&mut self, mb: u64) {
        assert!(
            nix::unistd::geteuid().is_root(),
            "mounting the members' data volumes needs root"
        );
        for i in 0..self.members.len() {
            let d = self.data_dir(i);
            std::fs::create_dir_all(&d).unwrap();
            let mut opts = format!("size={mb}m,mode=0700");
            if let Some((u, g)) = self.run_as {
                opts.push_str(&format!(",uid={u},gid={g}"));
            }
            run(Command::new("mount")
                .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
                .arg(&d));
            let m = &self.members[i];
            let yaml = std::fs::read_to_string(&m.config).unwrap().replacen(
                "\n  parameters:\n",
                "\n  parameters:\n    max_wal_size: 96MB\n    min_wal_size: 32MB\n",
                1,
            );
            std::fs::write(&m.config, yaml).unwrap();
        }
        self.data_volumes = true;
    }

    /// Fills member `i`'s data volume to the last byte; the bytes it took.
    pub fn fill_data_volume(&self, i: usize) -> u64 {
        assert!(self.data_volumes, "no data volumes (use_data_volumes)");
        let path = self.data_dir(i).join(BALLOON);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut taken = 0;
        // Big writes, then ever smaller ones, until not one byte more fits.
        for size in [1 << 20, 1 << 12, 1] {
            let chunk = vec![0u8; size];
            while f.write_all(&chunk).is_ok() {
                taken += size as u64;
            }
        }
        taken
    }

    /// Gives member `i`'s data volume its space back (the agent may have emptied the
    /// directory meanwhile, balloon and all).
    pub fn drain_data_volume(&self, i: usize) {
        let _ = std::fs::remove_file(self.data_dir(i).join(BALLOON));
    }

    /// Unmounts the data volumes (their processes are gone by then).
    pub(super) fn unmount_data_volumes(&self) {
        if !self.data_volumes {
            return;
        }
        for i in 0..self.members.len() {
            // Lazily: a process of the member that outlived it must not keep the mount.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.data_dir(i))
                .status();
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("mount");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

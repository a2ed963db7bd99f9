//! A throw-away PostgreSQL cluster for fault tests: `initdb` + `pg_ctl` in a
//! temporary folder on a free port, run as the `postgres` user when the tests
//! run as root, stopped when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local address").port()
}

/// A throw-away PostgreSQL cluster in a temporary folder, on a free port;
/// stopped (immediately) when dropped, whatever happened.
pub struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl Cluster {
    pub fn create() -> Cluster {
        let bin = server_binaries();
        let dir = tempfile::tempdir().expect("a temporary folder");
        // initdb refuses to run as root: run the cluster as `postgres`.
        let as_postgres = is_root();
        if as_postgres {
            run(Command::new("chown").arg("postgres").arg(dir.path()));
        }
        let cluster = Cluster {
            bin,
            dir,
            port: free_port(),
            as_postgres,
        };
        cluster.run_tool(
            "initdb",
            &[
                "-D",
                &cluster.data().display().to_string(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        cluster
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Copies `from` into the cluster's folder as `name`, owned by the
    /// server's user and readable by it only (as PostgreSQL wants a key).
    pub fn install_file(&self, from: &Path, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let to = self.dir.path().join(name);
        std::fs::copy(from, &to).expect("copy into the cluster folder");
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
        if self.as_postgres {
            run(Command::new("chown").arg("postgres").arg(&to));
        }
        to
    }

    /// Appends `settings` to `postgresql.conf` and replaces `pg_hba.conf`
    /// with `hba` (before [`Cluster::start`]).
    pub fn configure(&self, settings: &str, hba: &str) {
        use std::io::Write;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data().join("postgresql.conf"))
            .expect("postgresql.conf");
        writeln!(conf, "{settings}").unwrap();
        std::fs::write(self.data().join("pg_hba.conf"), hba).unwrap();
    }

    pub fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        let ok = self.pg_ctl(&[
            "-o",
            &options,
            "-l",
            &log.display().to_string(),
            "-w",
            "-t",
            "30",
            "start",
        ]);
        if !ok {
            let server_log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("pg_ctl start failed; server log:\n{server_log}");
        }
    }

    pub fn stop(&self) -> bool {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"])
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        let data = self.data().display().to_string();
        let mut all = vec!["-D", data.as_str()];
        all.extend_from_slice(args);
        self.command("pg_ctl", &all)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn run_tool(&self, tool: &str, args: &[&str]) {
        run(&mut self.command(tool, args));
    }

    fn command(&self, tool: &str, args: &[&str]) -> Command {
        let program = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.args(args);
        command
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            self.stop();
        }
    }
}

/// The newest `/usr/lib/postgresql/*/bin` with `initdb` and `pg_ctl`.
fn server_binaries() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .unwrap_or_else(|e| {
            panic!(
                "the fault test needs PostgreSQL's server binaries under {}: {e}",
                root.display()
            )
        })
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .unwrap_or_else(|| panic!("no initdb and pg_ctl under {}/*/bin", root.display()))
}

fn is_root() -> bool {
    let output = Command::new("id").arg("-u").output().expect("`id -u` runs");
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

fn run(command: &mut Command) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{command:?} cannot start (runuser missing?): {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

//! The real components a cluster runs on, started by the tests: PostgreSQL
//! 15 (`initdb` into a throw-away directory, `pg_ctl` on a free loopback
//! port, as the unprivileged `postgres` user since CI runs as root) and
//! NATS (`nats-server -a 127.0.0.1 -p PORT`). Each is stopped by its PID
//! when dropped. A missing program fails the test, naming the package.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "certmq-{tag}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The newest PostgreSQL's `bin` directory (Debian: /usr/lib/postgresql/N/bin).
fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap_or_else(|_| {
            panic!("PostgreSQL is not installed: `apt-get install postgresql` (.ci/run does)")
        })
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .unwrap_or_else(|| panic!("no initdb under /usr/lib/postgresql"))
}

fn run_as_postgres(program: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).output().unwrap()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    pid: std::sync::Mutex<u32>,
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = pg_bin();
        let dir = scratch("pg");
        let data = dir.join("data");
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
        }
        let out = run_as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "certmq",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = Postgres {
            port: free_port(),
            dir,
            pid: std::sync::Mutex::new(0),
        };
        pg.launch();
        pg
    }

    /// `pg_ctl start` on the data directory and port; records the
    /// postmaster's PID.
    fn launch(&self) {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("pg.log");
        let out = run_as_postgres(
            &pg_bin().join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let pid: u32 = std::fs::read_to_string(data.join("postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        *self.pid.lock().unwrap() = pid;
    }

    /// Stops the server (fast shutdown, by its PID), keeping its data.
    pub fn stop(&self) {
        let pid = *self.pid.lock().unwrap();
        let _ = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&self) {
        self.launch();
    }

    pub fn url(&self) -> String {
        format!("postgres://certmq@127.0.0.1:{}/postgres", self.port)
    }

    /// Whether it accepts connections (`pg_isready`).
    pub fn ready(&self) -> bool {
        Command::new(pg_bin().join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The postmaster by its PID: SIGINT is PostgreSQL's fast shutdown.
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Nats {
    pub port: u16,
    child: std::sync::Mutex<Child>,
}

fn spawn_nats(port: u16) -> Child {
    Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run nats-server ({e}): `apt-get install nats-server` (.ci/run does)")
        })
}

impl Nats {
    pub fn start() -> Nats {
        let port = free_port();
        let n = Nats {
            port,
            child: std::sync::Mutex::new(spawn_nats(port)),
        };
        n.wait_listening();
        n
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.info().is_none() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's INFO line, if it answers.
    pub fn info(&self) -> Option<String> {
        let s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        line.starts_with("INFO ").then_some(line)
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// Stops the server by its PID (SIGTERM) and waits for it.
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let _ = child.wait();
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        *self.child.lock().unwrap() = spawn_nats(self.port);
        self.wait_listening();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

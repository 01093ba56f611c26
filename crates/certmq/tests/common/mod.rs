//! Runs the real `certmq` binary on 127.0.0.1:0 and reads the bound ports
//! from its `listening protocol=... addr=...` lines.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct BrokerProcess {
    child: Child,
    pub addrs: HashMap<String, SocketAddr>,
    pub log: mpsc::Receiver<String>,
    pub dir: TempDir,
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "certmq-test-{tag}-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.0.as_os_str().is_empty() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_certmq")
}

impl BrokerProcess {
    /// Starts `certmq serve` with every listener on port 0 plus `extra` args.
    pub fn start(extra: &[&str]) -> BrokerProcess {
        let dir = TempDir::new("serve");
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&dir.0)
            .args(["--listen-tcp", "127.0.0.1:0", "--listen-ws", "127.0.0.1:0"])
            .args(["--listen-tls", "127.0.0.1:0", "--listen-wss", "127.0.0.1:0"])
            .args(["--listen-admin", "127.0.0.1:0"])
            .args(extra);
        Self::spawn(cmd, dir, 5)
    }

    /// Spawns `cmd` and waits for `listeners` listening lines.
    pub fn spawn(mut cmd: Command, dir: TempDir, listeners: usize) -> BrokerProcess {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG");
        let mut child = cmd.spawn().expect("start certmq");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut addrs = HashMap::new();
        while addrs.len() < listeners {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("certmq did not report its listeners; got {addrs:?}"));
            if let Some((proto, addr)) = parse_listening(&line) {
                addrs.insert(proto, addr);
            }
        }
        BrokerProcess {
            child,
            addrs,
            log: rx,
            dir,
        }
    }

    pub fn addr(&self, protocol: &str) -> SocketAddr {
        self.addrs[protocol]
    }

    pub fn port(&self, protocol: &str) -> String {
        self.addr(protocol).port().to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.terminate_keep_dir().0
    }

    /// kill -9 (no chance to flush anything); returns the data directory.
    pub fn kill9_keep_dir(mut self) -> ((), TempDir) {
        let _ = Command::new("kill")
            .arg("-9")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, TempDir(PathBuf::new()));
        ((), dir)
    }

    /// Sends SIGTERM; returns the exit status and the data directory, for a
    /// restart on it.
    pub fn terminate_keep_dir(mut self) -> (std::process::ExitStatus, TempDir) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let status = wait_timeout(&mut self.child, Duration::from_secs(15))
            .expect("certmq did not exit after SIGTERM");
        let dir = std::mem::replace(&mut self.dir, TempDir(PathBuf::new()));
        (status, dir)
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// `listening protocol=mqtt-tcp addr=127.0.0.1:1883` -> ("mqtt-tcp", addr).
pub fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    let rest = &line[line.find("listening protocol=")? + "listening protocol=".len()..];
    let (proto, rest) = rest.split_once(" addr=")?;
    let addr = rest.split_whitespace().next()?.parse().ok()?;
    Some((proto.to_owned(), addr))
}

/// Runs a command to completion within `limit`, killing it after.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let program = format!("{:?}", cmd.get_program());
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e} (run .ci/run, or see README, to install test tools)")
        });
    let pid = child.id();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(limit);
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    });
    let out = child.wait_with_output().unwrap();
    drop(killer);
    out
}

/// The repository root (for the interop scripts).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Starts a long-running command (a subscriber) and returns the child.
pub fn spawn_piped(cmd: &mut Command) -> Child {
    let program = format!("{:?}", cmd.get_program());
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e} (run .ci/run, or see README, to install test tools)")
        })
}

/// The lines a piped child prints on stdout, as they come.
pub fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The arguments of `certmq serve` on `dir` with only the TCP and admin
/// listeners, both on port 0.
pub fn tcp_admin_args(dir: &TempDir) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec!["serve".into(), "--data-dir".into()];
    args.push(dir.0.clone().into());
    for a in [
        "--listen-tcp",
        "127.0.0.1:0",
        "--listen-admin",
        "127.0.0.1:0",
        "--listen-tls",
        "off",
        "--listen-ws",
        "off",
        "--listen-wss",
        "off",
    ] {
        args.push(a.into());
    }
    args
}

/// `certmq serve` on `dir` with TCP and admin listeners on port 0, plus
/// `extra` arguments.
pub fn serve_tcp_admin(dir: TempDir, extra: &[&str]) -> BrokerProcess {
    let mut cmd = Command::new(bin());
    cmd.args(tcp_admin_args(&dir)).args(extra);
    BrokerProcess::spawn(cmd, dir, 2)
}

/// `certmq serve` again on a kept data directory with only the TLS
/// listener (one-way), and the admin API when `admin`.
pub fn serve_tls_only(dir: TempDir, admin: bool) -> BrokerProcess {
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(&dir.0)
        .args([
            "--listen-tcp",
            "off",
            "--listen-ws",
            "off",
            "--listen-wss",
            "off",
        ])
        .args(["--listen-tls", "127.0.0.1:0", "--tls-client-auth", "none"])
        .args(["--listen-admin", if admin { "127.0.0.1:0" } else { "off" }]);
    BrokerProcess::spawn(cmd, dir, if admin { 2 } else { 1 })
}

/// Runs `openssl ARGS` in `dir`; a failure fails the test with its stderr.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = run(
        Command::new("openssl").current_dir(dir).args(args),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The CA manual page's commands in `dir` (`CA.key`, `CA.csr`, `CA.crt`),
/// with the subject given on the line instead of at the prompt.
pub fn seed_ca(dir: &Path, subject: &str) {
    openssl(dir, &["genrsa", "-out", "CA.key", "2048"]);
    openssl(
        dir,
        &[
            "req", "-new", "-key", "CA.key", "-out", "CA.csr", "-subj", subject,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-extfile",
            "/etc/ssl/openssl.cnf",
            "-extensions",
            "v3_ca",
            "-in",
            "CA.csr",
            "-out",
            "CA.crt",
            "-signkey",
            "CA.key",
            "-CAcreateserial",
            "-days",
            "3650",
        ],
    );
}

/// The manual page's server.conf; `edit` may change it for refusal cases.
pub fn server_conf(edit: impl Fn(String) -> String) -> String {
    edit(
        "[req]
distinguished_name = req_distinguished_name
req_extensions = v3_req
prompt = no
[req_distinguished_name]
C = CN
ST = ZheJiang
L = HangZhou
O = Example
CN = mqtt.example.com
[v3_req]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = @alt_names
[alt_names]
DNS.1 = mqtt.example.com
DNS.2 = www.example.com
DNS.3 = api.example.com
DNS.4 = *.example.com
IP.1 = 192.168.1.100
IP.2 = 10.0.0.50
"
        .to_string(),
    )
}

#[derive(Clone, Copy)]
pub enum Key {
    Ec,
    Rsa4096,
}

/// The manual page's step 2 and 4 in `dir/<name>/`: key, CSR, certificate
/// signed by the CA, `server.chain.crt`. Returns the directory.
pub fn make_server(root: &Path, name: &str, conf: &str, key: Key) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["CA.crt", "CA.key"] {
        std::fs::copy(root.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("server.conf"), conf).unwrap();
    match key {
        Key::Ec => openssl(
            &dir,
            &[
                "ecparam",
                "-genkey",
                "-name",
                "prime256v1",
                "-out",
                "server.key",
            ],
        ),
        Key::Rsa4096 => openssl(&dir, &["genrsa", "-out", "server.key", "4096"]),
    }
    openssl(
        &dir,
        &[
            "req",
            "-new",
            "-key",
            "server.key",
            "-out",
            "server.csr",
            "-config",
            "server.conf",
        ],
    );
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "CA.crt",
            "-CAkey",
            "CA.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "365",
            "-sha256",
            "-extensions",
            "v3_req",
            "-extfile",
            "server.conf",
        ],
    );
    openssl(&dir, &["verify", "-CAfile", "CA.crt", "server.crt"]);
    let mut chain = std::fs::read(dir.join("server.crt")).unwrap();
    chain.extend(std::fs::read(dir.join("CA.crt")).unwrap());
    std::fs::write(dir.join("server.chain.crt"), chain).unwrap();
    dir
}

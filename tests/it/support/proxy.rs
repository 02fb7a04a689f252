//! An in-process proxy for tests, and a curl driver.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use httpjail::cli::LogFormat;
use httpjail::config::{IpNet, ResolveOverride};
use httpjail::proxy::{Entry, Proxy, ProxySettings};
use httpjail::request_log::{LogWriter, Record, RequestLog};
use httpjail::rules::{Decision, RuleEngine, RuleRequest};
use httpjail::shutdown::{self, ShutdownTrigger};
use tokio::net::TcpListener;

use super::tls::TestCa;

pub struct TestProxy {
    pub addr: SocketAddr,
    pub proxy: Proxy,
    pub proxy_ca: Arc<TestCa>,
    pub proxy_ca_pem: PathBuf,
    pub log_path: PathBuf,
    writer: Option<LogWriter>,
    trigger: ShutdownTrigger,
    pub dir: tempfile::TempDir,
}

pub struct Builder {
    entry: Entry,
    resolve: Vec<ResolveOverride>,
    allow_private: Vec<IpNet>,
    upstream_ca: Option<rustls::RootCertStore>,
    engine: RuleEngine,
    tweak: Option<Box<dyn FnOnce(&mut ProxySettings)>>,
}

impl TestProxy {
    pub fn builder(rule: impl Fn(&RuleRequest) -> Decision + Send + Sync + 'static) -> Builder {
        Builder {
            entry: Entry::PROXY,
            resolve: Vec::new(),
            allow_private: Vec::new(),
            upstream_ca: None,
            engine: RuleEngine::native(rule),
            tweak: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Flushes and returns the request log.
    pub fn records(&mut self) -> Vec<Record> {
        // Records are written when responses complete; give in-flight ones a moment.
        std::thread::sleep(Duration::from_millis(100));
        if let Some(w) = self.writer.take() {
            w.close();
        }
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("valid JSON record"))
            .collect()
    }

    pub fn shutdown(&self) {
        self.trigger.trigger();
    }
}

impl Builder {
    pub fn entry(mut self, entry: Entry) -> Self {
        self.entry = entry;
        self
    }

    pub fn resolve(mut self, host: &str, port: u16, addr: SocketAddr) -> Self {
        self.resolve.push(ResolveOverride {
            host: host.into(),
            port,
            addrs: vec![addr.ip()],
        });
        self
    }

    pub fn allow_private(mut self, cidr: &str) -> Self {
        self.allow_private.push(IpNet::parse(cidr).unwrap());
        self
    }

    pub fn upstream_ca(mut self, ca: &TestCa) -> Self {
        self.upstream_ca = Some(ca.root_store());
        self
    }

    pub fn engine(mut self, engine: RuleEngine) -> Self {
        self.engine = engine;
        self
    }

    pub fn settings(mut self, f: impl FnOnce(&mut ProxySettings) + 'static) -> Self {
        self.tweak = Some(Box::new(f));
        self
    }

    pub async fn start(self) -> TestProxy {
        let dir = tempfile::tempdir().unwrap();
        let proxy_ca = Arc::new(TestCa::new("test interception CA"));
        let proxy_ca_pem = proxy_ca.write_pem(dir.path(), "proxy-ca.pem");
        let log_path = dir.path().join("requests.jsonl");
        let (log, writer) = RequestLog::open(&log_path, LogFormat::Json).unwrap();
        let roots = self
            .upstream_ca
            .unwrap_or_else(rustls::RootCertStore::empty);
        let mut settings = ProxySettings::new(Arc::new(roots));
        settings.resolve = self.resolve;
        settings.allow_private = self.allow_private;
        if let Some(tweak) = self.tweak {
            tweak(&mut settings);
        }
        let proxy = Proxy::new(settings, self.engine, proxy_ca.clone(), log);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (trigger, shutdown) = shutdown::channel();
        let serving = proxy.clone();
        let entry = self.entry;
        tokio::spawn(async move { serving.serve(listener, entry, shutdown).await });
        TestProxy {
            addr,
            proxy,
            proxy_ca,
            proxy_ca_pem,
            log_path,
            writer: Some(writer),
            trigger,
            dir,
        }
    }
}

/// What curl got.
#[derive(Debug)]
pub struct Curl {
    pub status: u16,
    pub body: String,
    pub headers: String,
    pub stderr: String,
    pub exit: Option<i32>,
}

impl Curl {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Runs curl with `args`, capturing status, headers and body.
pub async fn curl(args: &[&str]) -> Curl {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-D"])
        .arg(&headers)
        .args(["-w", "\n__STATUS__%{http_code}"])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .await
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = stdout.rsplit_once("\n__STATUS__").unwrap_or((&stdout, "0"));
    Curl {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_owned(),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        exit: out.status.code(),
    }
}

//! A real S3-compatible store for the object-storage tests: moto's standalone server (PyPI's `moto[server]`, which
//! `.ci/run` installs into the tests' venv) as its own process on a loopback port, one per test; and, in front of
//! it on request, `tests/s3_no_conditions.py`, which drops `If-None-Match` the way an S3 without conditional writes
//! ignores it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_ports, python};

/// The credentials the tests give the store (moto accepts any).
const ACCESS_KEY: &str = "fluss-tiering-test";
const SECRET_KEY: &str = "fluss-tiering-test-secret";

/// A running S3 server (and its proxy, if any); killed when dropped.
pub struct S3Server {
    server: Child,
    proxy: Option<Child>,
    /// The endpoint the job is given: the proxy's, if there is one.
    pub endpoint: String,
    /// The server's own endpoint.
    direct: String,
}

fn venv_bin(name: &str) -> PathBuf {
    python().with_file_name(name)
}

async fn wait_listening(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().expect("wait").is_none(), "{what} exited before it listened");
        assert!(Instant::now() < deadline, "{what} did not listen on port {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl S3Server {
    /// Starts a moto server with bucket `lake`.
    pub async fn start() -> Self {
        let port = free_ports(1)[0];
        let mut server = Command::new(venv_bin("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (.ci/run installs moto[server] into the tests' venv)");
        wait_listening(port, "moto_server", &mut server).await;
        let endpoint = format!("http://127.0.0.1:{port}");
        let s3 = S3Server { server, proxy: None, endpoint: endpoint.clone(), direct: endpoint };
        s3.create_bucket("lake");
        s3
    }

    /// Starts a moto server behind a proxy that drops `If-None-Match` from every request.
    pub async fn start_without_conditional_puts() -> Self {
        let mut s3 = Self::start().await;
        let port = free_ports(1)[0];
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3_no_conditions.py");
        let mut proxy = Command::new(python())
            .arg(script)
            .arg(port.to_string())
            .arg(&s3.direct)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the proxy");
        wait_listening(port, "the proxy", &mut proxy).await;
        s3.proxy = Some(proxy);
        s3.endpoint = format!("http://127.0.0.1:{port}");
        s3
    }

    /// The standard AWS variables that point a client (the job, pypaimon, pyiceberg) at this store.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            // No instance-metadata probes on a test machine.
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ]
    }

    /// Creates `bucket`, with boto3 (moto's own dependency).
    pub fn create_bucket(&self, bucket: &str) {
        let script = "import sys, boto3\n\
            boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id=sys.argv[2],\n\
            \x20   aws_secret_access_key=sys.argv[3], region_name='us-east-1').create_bucket(Bucket=sys.argv[4])\n";
        let out = Command::new(python())
            .args(["-c", script, &self.direct, ACCESS_KEY, SECRET_KEY, bucket])
            .output()
            .expect("python");
        assert!(out.status.success(), "creating bucket {bucket}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The keys under `prefix` in `bucket`, listed by boto3 (not by our code).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let script = "import sys, boto3\n\
            c = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id=sys.argv[2],\n\
            \x20   aws_secret_access_key=sys.argv[3], region_name='us-east-1')\n\
            for page in c.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[4], Prefix=sys.argv[5]):\n\
            \x20   for o in page.get('Contents', []):\n\
            \x20       print(o['Key'])\n";
        let out = Command::new(python())
            .args(["-c", script, &self.direct, ACCESS_KEY, SECRET_KEY, bucket, prefix])
            .output()
            .expect("python");
        assert!(out.status.success(), "listing {bucket}/{prefix}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        for child in self.proxy.iter_mut().chain(std::iter::once(&mut self.server)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

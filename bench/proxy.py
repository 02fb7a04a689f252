#!/usr/bin/env python3
"""Proxy benchmark: the same loads, in one run on loopback, against

  direct     nginx (the origin) with no proxy,
  squid      plain forward proxy; HTTPS is a CONNECT tunnel, no interception (the speed to beat),
  httpjail   `httpjail --server --js true`, HTTPS intercepted (CONNECT, then TLS terminated),
  mitmproxy  `mitmdump`, HTTPS intercepted (the other intercepting proxy),

and reports req/s, p50/p99 latency, proxy CPU per request and proxy RSS, with ratios between
configurations measured in the same run. See bench/README.md for what each row means.

Everything runs in a private temporary directory on 127.0.0.1 with ports chosen by the kernel;
nothing is written outside it except the build outputs and the mitmproxy venv (under /tmp).
Requires: nginx, squid, openssl (Debian packages), cargo; mitmproxy is pip-installed into
/tmp/httpjail-bench-venv if `mitmdump` is not found (use --no-mitmproxy to skip it).

Usage: python3 bench/proxy.py [--repeat 2] [--duration 5] [--out FILE.md] [--json FILE.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOADGEN_DIR = ROOT / "bench" / "loadgen"
LOADGEN = LOADGEN_DIR / "target" / "release" / "httpjail-loadgen"
HTTPJAIL = ROOT / "target" / "release" / "httpjail"
VENV = Path("/tmp/httpjail-bench-venv")
ORIGIN = "origin.bench.test"
N_HOSTS = 1000
N_IDLE = 1000
CONFIGS = ["direct", "squid", "httpjail", "mitmproxy"]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited early with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port} within {deadline_s}s")


def wait_file(path: Path, deadline_s: float = 20) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > 0:
            return
        time.sleep(0.05)
    raise SystemExit(f"{path} did not appear within {deadline_s}s")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def reset_hwm(pids: list[int]) -> None:
    # Writing 5 to clear_refs resets VmHWM (peak RSS) to the current RSS, so each load gets
    # its own peak rather than the process lifetime's.
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


# ---------------------------------------------------------------------------------------------
# Setup


def make_certs(d: Path) -> None:
    ossl = ["openssl"]
    run(ossl + ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(d / "ca.key")],
        stdout=subprocess.DEVNULL)
    run(ossl + ["req", "-x509", "-new", "-key", str(d / "ca.key"), "-days", "30", "-subj",
                "/CN=bench origin test CA", "-out", str(d / "ca.pem"),
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run(ossl + ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out",
                str(d / "origin.key")], stdout=subprocess.DEVNULL)
    run(ossl + ["req", "-new", "-key", str(d / "origin.key"), "-subj", f"/CN={ORIGIN}",
                "-out", str(d / "origin.csr")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (d / "origin.ext").write_text(
        f"subjectAltName=DNS:{ORIGIN},DNS:*.bench.test,IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
    )
    run(ossl + ["x509", "-req", "-in", str(d / "origin.csr"), "-CA", str(d / "ca.pem"),
                "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "30",
                "-extfile", str(d / "origin.ext"), "-out", str(d / "origin.pem")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_nginx(d: Path, http: int, tls: int) -> subprocess.Popen:
    www = d / "www"
    www.mkdir()
    (www / "small").write_bytes(b"x" * 100)
    (www / "1m").write_bytes(os.urandom(1 << 20))
    for p in (d, www, www / "small", www / "1m"):
        p.chmod(0o755)
    conf = d / "nginx.conf"
    conf.write_text(f"""
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {d}/nginx-tmp-body;
    proxy_temp_path {d}/nginx-tmp-proxy;
    fastcgi_temp_path {d}/nginx-tmp-fcgi;
    uwsgi_temp_path {d}/nginx-tmp-uwsgi;
    scgi_temp_path {d}/nginx-tmp-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    sendfile on;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{http};
        listen 127.0.0.1:{tls} ssl;
        server_name {ORIGIN};
        ssl_certificate {d}/origin.pem;
        ssl_certificate_key {d}/origin.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        root {www};
    }}
}}
""")
    proc = subprocess.Popen(
        ["nginx", "-p", str(d), "-c", str(conf), "-e", str(d / "nginx-error.log"),
         "-g", "daemon off;"],
        stdout=subprocess.DEVNULL, stderr=open(d / "nginx.stderr", "w"))
    wait_port(http, proc, "nginx")
    wait_port(tls, proc, "nginx")
    return proc


def start_squid(d: Path, port: int, http: int, tls: int) -> subprocess.Popen:
    sd = d / "squid"
    sd.mkdir()
    sd.chmod(0o777)  # squid drops to its own user and writes its log and pid here
    (sd / "hosts").write_text(f"127.0.0.1 {ORIGIN}\n")
    (sd / "hosts").chmod(0o644)
    conf = sd / "squid.conf"
    conf.write_text(f"""
http_port 127.0.0.1:{port}
acl origin_ports port {http} {tls}
acl CONNECT method CONNECT
http_access deny !origin_ports
http_access allow all
cache deny all
cache_mem 0 MB
access_log none
cache_store_log none
cache_log {sd}/cache.log
logfile_rotate 0
pid_filename {sd}/squid.pid
coredump_dir {sd}
netdb_filename none
hosts_file {sd}/hosts
dns_nameservers 127.0.0.1
max_filedescriptors 65536
shutdown_lifetime 1 seconds
client_persistent_connections on
server_persistent_connections on
via off
forwarded_for delete
""")
    conf.chmod(0o644)
    proc = subprocess.Popen(["squid", "-N", "-f", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=open(sd / "squid.stderr", "w"))
    wait_port(port, proc, "squid")
    return proc


def ensure_mitmdump() -> str | None:
    found = shutil.which("mitmdump") or (str(VENV / "bin" / "mitmdump")
                                         if (VENV / "bin" / "mitmdump").exists() else None)
    if found:
        return found
    log(f"installing mitmproxy into {VENV} (pip)")
    run([sys.executable, "-m", "venv", str(VENV)])
    run([str(VENV / "bin" / "pip"), "install", "-q", "mitmproxy"])
    return str(VENV / "bin" / "mitmdump")


def start_mitmproxy(d: Path, mitmdump: str, port: int) -> tuple[subprocess.Popen, Path]:
    md = d / "mitm"
    md.mkdir()
    # mitmproxy resolves names itself; send the benchmark's names to the origin on loopback.
    addon = md / "pin.py"
    addon.write_text(
        "class Pin:\n"
        "    def server_connect(self, data):\n"
        "        host, port = data.server.address\n"
        "        if host.endswith('.bench.test'):\n"
        "            data.server.address = ('127.0.0.1', port)\n"
        "\n"
        "    # Without this, each request's host differs from the pinned connection's address\n"
        "    # and mitmproxy opens a new upstream connection per request.\n"
        "    def requestheaders(self, flow):\n"
        "        if flow.request.host.endswith('.bench.test'):\n"
        "            named = flow.request.host_header\n"
        "            flow.request.host = '127.0.0.1'\n"
        "            flow.request.host_header = named\n"
        "\n"
        "addons = [Pin()]\n"
    )
    proc = subprocess.Popen(
        [mitmdump, "--listen-host", "127.0.0.1", "-p", str(port), "--ssl-insecure", "-q",
         "--set", f"confdir={md}", "--set", "flow_detail=0", "-s", str(addon)],
        stdout=subprocess.DEVNULL, stderr=open(md / "stderr", "w"))
    wait_port(port, proc, "mitmdump", 60)
    ca = md / "mitmproxy-ca-cert.pem"
    wait_file(ca)
    return proc, ca


def start_httpjail(d: Path, name: str, rule: str, http_port: int, tls_port: int,
                   resolve: list[str], extra: list[str] | None = None
                   ) -> tuple[subprocess.Popen, Path]:
    home = d / f"home-{name}"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HTTPJAIL_", "XDG_", "RUST_LOG", "SSL_CERT"))}
    env["HOME"] = str(home)
    env["HTTPJAIL_HTTP_BIND"] = f"127.0.0.1:{http_port}"
    env["HTTPJAIL_HTTPS_BIND"] = f"127.0.0.1:{tls_port}"
    args = [str(HTTPJAIL), "--server", "--js", rule, "--upstream-ca", str(d / "ca.pem")]
    # One file of --resolve lines would be nicer; the CLI takes them one flag each.
    for r in resolve:
        args += ["--resolve", r]
    args += extra or []
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(d / f"{name}.stderr", "w"))
    wait_port(http_port, proc, name)
    ca = home / ".config" / "httpjail" / "ca-cert.pem"
    wait_file(ca)
    return proc, ca


# ---------------------------------------------------------------------------------------------
# Loads


class Bench:
    def __init__(self, args: argparse.Namespace, d: Path):
        self.args = args
        self.d = d
        self.results: list[dict] = []

    def loadgen(self, extra: list[str], watch: dict[str, list[int]]) -> dict:
        cmd = [str(LOADGEN)] + extra
        for name, pids in watch.items():
            cmd += ["--watch", f"{name}=" + ",".join(map(str, pids))]
        reset_hwm([p for pids in watch.values() for p in pids])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
        return json.loads(out.stdout)

    def record(self, rep: int, config: str, load: str, res: dict) -> None:
        res.update(rep=rep, config=config, load=load, loadavg=loadavg())
        self.results.append(res)
        proc = res.get("procs", {}).get("proxy") or res.get("procs", {}).get("origin") or {}
        if "rps" in res:
            cpu_us = proc.get("cpu_s", 0) / res["requests"] * 1e6 if res["requests"] else 0
            log(f"rep {rep} {config:9} {load:14} {res['rps']:9.0f} req/s "
                f"{res['mb_per_s']:8.1f} MB/s p50 {res['p50_us']:6} us p99 {res['p99_us']:7} us "
                f"cpu/req {cpu_us:6.1f} us rss {proc.get('rss_kb', 0) / 1024:6.1f} MiB "
                f"hwm {proc.get('hwm_kb', 0) / 1024:6.1f} MiB client cpu "
                f"{res['client_cpu_s'] / max(res['elapsed_s'], 1e-9):.2f} err {res['errors']}"
                + (f" ({res['first_error']})" if res["errors"] else ""))
        else:
            log(f"rep {rep} {config:9} {load:14} {json.dumps(res)}")


def merge_counted(rs: list[dict]) -> dict:
    """Adds up fixed-count runs: requests, time and CPU summed; latency percentiles are the
    medians of the parts' (each part is 100 connections, c=1)."""
    out = dict(rs[-1])
    out["requests"] = sum(r["requests"] for r in rs)
    out["errors"] = sum(r["errors"] for r in rs)
    out["elapsed_s"] = sum(r["elapsed_s"] for r in rs)
    out["client_cpu_s"] = sum(r["client_cpu_s"] for r in rs)
    out["rps"] = out["requests"] / out["elapsed_s"] if out["elapsed_s"] else 0.0
    out["mb_per_s"] = 0.0
    for key in ("p50_us", "p99_us"):
        out[key] = statistics.median(r[key] for r in rs)
    out["max_us"] = max(r["max_us"] for r in rs)
    procs = {}
    for name in rs[-1]["procs"]:
        procs[name] = dict(rs[-1]["procs"][name])
        for key in ("cpu_s", "cpu_ticks_s"):
            procs[name][key] = sum(r["procs"][name][key] for r in rs)
        procs[name]["hwm_kb"] = max(r["procs"][name]["hwm_kb"] for r in rs)
    out["procs"] = procs
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=2, help="runs of the whole matrix (spread)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured per load")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    ap.add_argument("--no-build", action="store_true", help="use existing release binaries")
    ap.add_argument("--no-mitmproxy", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated load names to run")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--httpjail-extra", default="", help="extra httpjail flags (space-separated)")
    ap.add_argument("--json", type=Path, help="write all raw results here")
    ap.add_argument("--out", type=Path, help="write the markdown report here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))

    if not args.no_build:
        log("building httpjail and the load generator (release)")
        run(["cargo", "build", "--release", "--quiet", "--bin", "httpjail"], cwd=ROOT)
        run(["cargo", "build", "--release", "--quiet"], cwd=LOADGEN_DIR)
    configs = [c for c in args.configs.split(",") if c]
    mitmdump = None
    if "mitmproxy" in configs and not args.no_mitmproxy:
        mitmdump = ensure_mitmdump()
    if mitmdump is None and "mitmproxy" in configs:
        configs.remove("mitmproxy")

    d = Path(tempfile.mkdtemp(prefix="httpjail-bench-"))
    d.chmod(0o755)
    procs: list[subprocess.Popen] = []
    try:
        report = run_all(args, d, configs, mitmdump, procs)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
        else:
            log(f"kept {d}")
    print(report)
    if args.out:
        args.out.write_text(report)


def run_all(args, d: Path, configs: list[str], mitmdump: str | None,
            procs: list[subprocess.Popen]) -> str:
    make_certs(d)
    origin_http, origin_tls = free_port(), free_port()
    procs.append(start_nginx(d, origin_http, origin_tls))
    nginx_pids = [procs[-1].pid] + children(procs[-1].pid)
    # Fresh names for every repetition: a name seen once has a cached certificate.
    def host_names(rep: int) -> list[str]:
        return [f"r{rep}h{i:04d}.bench.test" for i in range(1, N_HOSTS + 1)]

    # How each configuration is reached: (connect address, CA for HTTPS, pids to watch).
    reach: dict[str, dict] = {}
    reach["direct"] = dict(port=None, ca=d / "ca.pem", pids=[])
    if "squid" in configs:
        port = free_port()
        procs.append(start_squid(d, port, origin_http, origin_tls))
        reach["squid"] = dict(port=port, ca=d / "ca.pem", pids=[procs[-1].pid])
    if "httpjail" in configs:
        hp, tp = free_port(), free_port()
        resolve = [f"{ORIGIN}:{origin_http}:127.0.0.1", f"{ORIGIN}:{origin_tls}:127.0.0.1"]
        p, ca = start_httpjail(d, "httpjail", "true", hp, tp, resolve,
                               args.httpjail_extra.split())
        procs.append(p)
        reach["httpjail"] = dict(port=hp, ca=ca, pids=[p.pid])
        # The host-name test runs on instances of its own: it leaves 1000 cached certificates
        # and up to 1000 pooled upstream connections behind, which would otherwise weigh on
        # the memory of every later cell.
        # - httpjail-deny denies everything: a new name costs its certificate, no upstream.
        # - httpjail-hosts allows everything: a new name also costs a new upstream connection.
        hp2, tp2 = free_port(), free_port()
        p2, ca2 = start_httpjail(d, "httpjail-deny", "false", hp2, tp2, [],
                                 args.httpjail_extra.split())
        procs.append(p2)
        reach["httpjail-deny"] = dict(port=hp2, ca=ca2, pids=[p2.pid])
        hp3, tp3 = free_port(), free_port()
        resolve_hosts = resolve + [f"{h}:{origin_tls}:127.0.0.1"
                                   for rep in range(1, args.repeat + 1) for h in host_names(rep)]
        p3, ca3 = start_httpjail(d, "httpjail-hosts", "true", hp3, tp3, resolve_hosts,
                                 args.httpjail_extra.split())
        procs.append(p3)
        reach["httpjail-hosts"] = dict(port=hp3, ca=ca3, pids=[p3.pid])
    if "mitmproxy" in configs and mitmdump:
        port = free_port()
        p, ca = start_mitmproxy(d, mitmdump, port)
        procs.append(p)
        reach["mitmproxy"] = dict(port=port, ca=ca, pids=[p.pid])
    log(f"origin http :{origin_http} https :{origin_tls}; proxies "
        + ", ".join(f"{k} :{v['port']} pid {v['pids']}" for k, v in reach.items() if v["port"]))

    def base(config: str, tls: bool, host: str = ORIGIN) -> list[str]:
        r = reach[config]
        origin_port = origin_tls if tls else origin_http
        if r["port"] is None:
            a = ["--target", f"127.0.0.1:{origin_port}", "--proxy", "none"]
        elif tls:
            a = ["--target", f"127.0.0.1:{r['port']}", "--proxy", "connect"]
        else:
            a = ["--target", f"127.0.0.1:{r['port']}", "--proxy", "absolute"]
        a += ["--host", host, "--port", str(origin_port)]
        if tls:
            a += ["--tls", "--ca", str(r["ca"])]
        return a

    def watch(config: str) -> dict[str, list[int]]:
        w = {"origin": nginx_pids}
        if reach[config]["pids"]:
            w["proxy"] = reach[config]["pids"]
        return w

    timing = ["-d", str(args.duration), "--warmup", str(args.warmup)]
    loads = {
        "http-ka-c1": (False, ["-c", "1"]),
        "http-ka-c64": (False, ["-c", "64"]),
        "http-new-c1": (False, ["-c", "1", "--new-conn"]),
        "http-new-c64": (False, ["-c", "64", "--new-conn"]),
        "https-ka-c1": (True, ["-c", "1"]),
        "https-ka-c64": (True, ["-c", "64"]),
        "https-new-c1": (True, ["-c", "1", "--new-conn"]),
        "https-new-c64": (True, ["-c", "64", "--new-conn"]),
        "https-1m-c1": (True, ["-c", "1", "--path", "/1m"]),
        "https-1m-c8": (True, ["-c", "8", "--path", "/1m"]),
    }
    only = set(filter(None, args.only.split(",")))
    bench = Bench(args, d)
    for rep in range(1, args.repeat + 1):
        log(f"repetition {rep}/{args.repeat}; load average {loadavg()}")
        for load, (tls, extra) in loads.items():
            if only and load not in only:
                continue
            path = [] if "--path" in extra else ["--path", "/small"]
            for config in configs:
                res = bench.loadgen(base(config, tls) + extra + path + timing, watch(config))
                bench.record(rep, config, load, res)
        # Before the host-name test, which leaves up to 1000 pooled upstream connections
        # behind in httpjail (one per name, idle for up to 90 s).
        if not only or "idle" in only:
            for config in configs:
                a = base(config, True) + ["--idle", str(N_IDLE), "-c", "16", "--path", "/small",
                                          "--settle", "2"]
                res = bench.loadgen(a, watch(config))
                bench.record(rep, config, "idle-1000", res)
        if "httpjail" in configs and (not only or "hosts" in only):
            # 1000 names never seen, one connection each (c=1: latency is per connection),
            # and the same names again (certificates cached): the difference is what a new
            # host costs. Interleaved in chunks of 100 (new chunk, then the same chunk
            # cached) so that drifting machine load hits both phases alike.
            chunk = 100
            names = host_names(rep)
            for config in ["httpjail-deny", "httpjail-hosts"]:
                status = "403" if config == "httpjail-deny" else "200"
                parts: dict[str, list[dict]] = {"new": [], "cached": []}
                for k in range(0, len(names), chunk):
                    hosts_file = d / f"hosts-{rep}-{k}.txt"
                    hosts_file.write_text("\n".join(names[k:k + chunk]) + "\n")
                    for phase in ["new", "cached"]:
                        a = base(config, True)
                        i = a.index("--host")
                        del a[i:i + 2]
                        a += ["--hosts-file", str(hosts_file), "--count", str(chunk),
                              "-c", "1", "--new-conn", "--path", "/small",
                              "--expect-status", status]
                        parts[phase].append(bench.loadgen(a, watch(config)))
                for phase, rs in parts.items():
                    bench.record(rep, config, f"hosts-{phase}", merge_counted(rs))
    if args.json:
        args.json.write_text(json.dumps(bench.results, indent=1))
    return render(bench.results, configs, args)


# ---------------------------------------------------------------------------------------------
# Report


def med_spread(values: list[float], fmt: str) -> str:
    if not values:
        return "–"
    m = statistics.median(values)
    if len(values) == 1:
        return format(m, fmt)
    lo, hi = min(values), max(values)
    if m == 0:
        return format(m, fmt)
    return f"{format(m, fmt)} (±{max(hi - m, m - lo) / m * 100:.0f}%)"


def render(results: list[dict], configs: list[str], args) -> str:
    by: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        by.setdefault((r["config"], r["load"]), []).append(r)

    def vals(config: str, load: str, f) -> list[float]:
        return [f(r) for r in by.get((config, load), [])]

    def rps(r): return r["rps"]
    def mbps(r): return r["mb_per_s"]
    def p50(r): return r["p50_us"]
    def p99(r): return r["p99_us"]

    def cpu_us(r):
        p = r["procs"].get("proxy") or r["procs"].get("origin")
        return p["cpu_s"] / r["requests"] * 1e6 if r["requests"] else float("nan")

    def rss(r): return (r["procs"].get("proxy") or r["procs"]["origin"])["rss_kb"] / 1024
    def hwm(r): return (r["procs"].get("proxy") or r["procs"]["origin"])["hwm_kb"] / 1024
    def ccpu(r): return r["client_cpu_s"] / r["elapsed_s"]

    loads = [l for l in dict.fromkeys(r["load"] for r in results)
             if not l.startswith(("hosts", "idle"))]
    out = []
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out.append(f"Run {now}; {os.cpu_count()} CPUs ({cpu}); kernel {platform.release()}; "
               f"{args.repeat} repetition(s), {args.duration:g} s measured after "
               f"{args.warmup:g} s warm-up per cell; load average during the runs "
               f"{min(float(r['loadavg']) for r in results):.2f}–"
               f"{max(float(r['loadavg']) for r in results):.2f}.")
    out.append("Cells: median over repetitions (± largest deviation from it). "
               "CPU/req and RSS are the proxy's (the origin's for `direct`).\n")
    out.append("| load | config | req/s | MB/s | p50 µs | p99 µs | CPU/req µs | RSS MiB | "
               "peak RSS MiB | client CPU | errors |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for load in loads:
        for c in configs:
            if (c, load) not in by:
                continue
            rs = by[(c, load)]
            out.append(
                f"| {load} | {c} | {med_spread(vals(c, load, rps), '.0f')} | "
                f"{med_spread(vals(c, load, mbps), '.1f')} | {med_spread(vals(c, load, p50), '.0f')} | "
                f"{med_spread(vals(c, load, p99), '.0f')} | {med_spread(vals(c, load, cpu_us), '.1f')} | "
                f"{statistics.median(vals(c, load, rss)):.1f} | {max(vals(c, load, hwm)):.1f} | "
                f"{statistics.median(vals(c, load, ccpu)):.2f} | {sum(r['errors'] for r in rs)} |")

    # Ratios per repetition, then median and spread.
    def ratio(load: str, a: str, b: str, f=rps) -> str:
        pairs = [(x, y) for x in by.get((a, load), []) for y in by.get((b, load), [])
                 if x["rep"] == y["rep"]]
        rs = [f(x) / f(y) for x, y in pairs if f(y)]
        return med_spread(rs, ".2f") if rs else "–"

    out.append("\nRatios of req/s within each repetition (median, ± spread):\n")
    others = [c for c in ["squid", "mitmproxy", "direct"] if c in configs]
    out.append("| load | " + " | ".join(f"httpjail / {o}" for o in others) + " |")
    out.append("|---|" + "---:|" * len(others))
    for load in loads:
        out.append(f"| {load} | " + " | ".join(ratio(load, "httpjail", o) for o in others) + " |")

    host_rows = [(c, ph) for c in ["httpjail-deny", "httpjail-hosts"] for ph in ["new", "cached"]
                 if (c, f"hosts-{ph}") in by]
    if host_rows:
        out.append(f"\n{N_HOSTS} distinct host names through httpjail, one new TLS connection "
                   "each, c=1 (`new`: never seen; `cached`: the same names again):\n")
        out.append("| instance | names | conn/s | p50 µs | p99 µs | proxy CPU/conn µs |")
        out.append("|---|---|---:|---:|---:|---:|")
        for c, ph in host_rows:
            l = f"hosts-{ph}"
            out.append(f"| {c} | {ph} | {med_spread(vals(c, l, rps), '.0f')} | "
                       f"{med_spread(vals(c, l, p50), '.0f')} | {med_spread(vals(c, l, p99), '.0f')} | "
                       f"{med_spread(vals(c, l, cpu_us), '.1f')} |")
        for c in ["httpjail-deny", "httpjail-hosts"]:
            new, cached = by.get((c, "hosts-new"), []), by.get((c, "hosts-cached"), [])
            diffs = [cpu_us(n) - cpu_us(k) for n in new for k in cached if n["rep"] == k["rep"]]
            lat = [n["p50_us"] - k["p50_us"] for n in new for k in cached if n["rep"] == k["rep"]]
            if diffs:
                out.append(f"\n{c}: a new host costs {med_spread(diffs, '.0f')} µs more proxy CPU "
                           f"and {med_spread(lat, '.0f')} µs more p50 latency than a known one.")

    idle = [c for c in configs if (c, "idle-1000") in by]
    if idle:
        out.append(f"\n{N_IDLE} idle client connections (HTTPS: CONNECT + TLS + one request "
                   "each, then held):\n")
        out.append("| config | open | still usable | RSS idle MiB | peak RSS MiB | errors |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for c in idle:
            rs = by[(c, "idle-1000")]
            out.append(f"| {c} | {min(r['idle_open'] for r in rs)} | "
                       f"{min(r['idle_alive_after'] for r in rs)} | "
                       f"{med_spread(vals(c, 'idle-1000', rss), '.1f')} | "
                       f"{max(vals(c, 'idle-1000', hwm)):.1f} | {sum(r['errors'] for r in rs)} |")

    # Targets of issue 4.
    def med(config, load, f):
        v = vals(config, load, f)
        return statistics.median(v) if v else float("nan")

    def ratio_med(load, a, b, f=rps):
        pairs = [(x, y) for x in by.get((a, load), []) for y in by.get((b, load), [])
                 if x["rep"] == y["rep"]]
        rs = [f(x) / f(y) for x, y in pairs if f(y)]
        return statistics.median(rs) if rs else float("nan")

    checks = []
    if "squid" in configs:
        checks.append(("HTTP keep-alive c=64 ≥ 1.5× squid",
                       ratio_med("http-ka-c64", "httpjail", "squid"), 1.5, "≥"))
        checks.append(("HTTPS keep-alive c=64 ≥ 0.75× squid (tunnel)",
                       ratio_med("https-ka-c64", "httpjail", "squid"), 0.75, "≥"))
    if "mitmproxy" in configs:
        checks.append(("HTTPS keep-alive c=64 ≥ 20× mitmproxy",
                       ratio_med("https-ka-c64", "httpjail", "mitmproxy"), 20, "≥"))
    checks.append(("proxy CPU per keep-alive HTTPS request (c=64) ≤ 60 µs",
                   med("httpjail", "https-ka-c64", cpu_us), 60, "≤"))
    checks.append(("1 MiB HTTPS c=8 ≥ 0.8× direct MB/s",
                   ratio_med("https-1m-c8", "httpjail", "direct", mbps), 0.8, "≥"))
    if ("httpjail-deny", "hosts-new") in by:
        diffs = [cpu_us(n) - cpu_us(k) for n in by[("httpjail-deny", "hosts-new")]
                 for k in by[("httpjail-deny", "hosts-cached")] if n["rep"] == k["rep"]]
        checks.append(("new host's certificate ≤ 100 µs (proxy CPU, new − cached)",
                       statistics.median(diffs), 100, "≤"))
    if ("httpjail", "idle-1000") in by:
        checks.append((f"RSS ≤ 64 MiB with {N_IDLE} open client connections",
                       med("httpjail", "idle-1000", rss), 64, "≤"))
    out.append("\nTargets (issue 4):\n")
    out.append("| target | measured | met |")
    out.append("|---|---:|---|")
    for name, value, bound, op in checks:
        ok = value >= bound if op == "≥" else value <= bound
        out.append(f"| {name} | {value:.2f} | {'yes' if ok else '**no**'} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()

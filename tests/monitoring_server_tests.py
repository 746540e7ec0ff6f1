"""Monitoring against real servers: a Prometheus (1 s scrapes) and a Pushgateway,
started here on free 127.0.0.1 ports with temporary storage, and short
`difftrain train` / `sample` jobs. What a dashboard or alert would see is read
back through Prometheus's HTTP API (/api/v1/query) and the Pushgateway's
/metrics: run and host labels, a stall while a job is SIGSTOPped, the final
state of finished, stopped (SIGTERM) and failed jobs, non-finite accounting,
no rate() spike after a crash and resume, and every dashboard expression.

Usage: monitoring_server_tests.py <difftrain binary> [TestClass]
"""
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

from cli_test_util import TempDirTest

BINARY = None
HERE = pathlib.Path(__file__).resolve().parent
TINY = HERE / "tiny.yaml"
DASHBOARD = HERE.parent / "monitoring" / "grafana-dashboard.json"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"
HOST = socket.gethostname()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return reply.read().decode()


def wait_for(what, check, timeout=30, interval=0.2):
    """Polls check() until it returns a true value, which is returned."""
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_text(text):
    """Prometheus text format -> [(name, {labels}, value)]."""
    samples = []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and not line.startswith("#"):
            samples.append((m[1], dict(LABEL.findall(m[2] or "")), float(m[3])))
    return samples


class Servers:
    """A Pushgateway and a Prometheus configured by monitoring/prometheus.yml
    (the Pushgateway with honor_labels), scraping the given difftrain ports and
    the Pushgateway every second."""

    def __init__(self, workdir, train_ports):
        self.procs, self.logs = [], []
        self.pushgateway_port, self.prometheus_port = free_port(), free_port()
        self.pushgateway = f"127.0.0.1:{self.pushgateway_port}"
        # The shipped configuration, with this test's ports and 1 s scrapes.
        shipped = (HERE.parent / "monitoring" / "prometheus.yml").read_text()
        targets = "".join(f"          - 127.0.0.1:{p}\n" for p in train_ports) or "          []\n"
        text, n = re.subn(r"(job_name: difftrain\n.*?targets:\n)(?:\s+- 127\.0\.0\.1:940\d\n)+",
                          lambda m: m[1] + targets, shipped, flags=re.S)
        assert n == 1, "monitoring/prometheus.yml: no difftrain target list"
        text = text.replace("127.0.0.1:9091", self.pushgateway).replace("interval: 5s", "interval: 1s")
        text = text.replace("global:\n", "global:\n  scrape_timeout: 800ms\n")
        config = workdir / "prometheus.yml"
        config.write_text(text)
        self.start([PUSHGATEWAY, f"--web.listen-address={self.pushgateway}"], workdir / "pushgateway.log")
        self.start([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.prometheus_port}"], workdir / "prometheus.log")
        wait_for("the Pushgateway", lambda: self.answers(f"http://{self.pushgateway}/-/ready"))
        wait_for("Prometheus", lambda: self.answers(f"http://127.0.0.1:{self.prometheus_port}/-/ready"))

    def start(self, args, log):
        self.logs.append(log)
        out = open(log, "w")
        self.procs.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT))
        out.close()

    def answers(self, url):
        for p, log in zip(self.procs, self.logs):
            if p.poll() is not None:
                raise AssertionError(f"{p.args[0]} exited: {log.read_text()[-2000:]}")
        try:
            http_get(url, timeout=1)
            return True
        except OSError:
            return False

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()

    def query(self, expr, at=None):
        """Instant query; the response must be a success. Returns the result list."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"http://127.0.0.1:{self.prometheus_port}/api/v1/query?" + urllib.parse.urlencode(params)
        try:
            reply = json.loads(http_get(url))
        except urllib.error.HTTPError as e:
            raise AssertionError(f"Prometheus rejected {expr!r}: {e.read().decode()}") from None
        assert reply["status"] == "success", reply
        return reply["data"]["result"]

    def values(self, expr, at=None):
        return [float(r["value"][1]) for r in self.query(expr, at)]

    def label_values(self, label, match):
        url = (f"http://127.0.0.1:{self.prometheus_port}/api/v1/label/{label}/values?"
               + urllib.parse.urlencode({"match[]": match}))
        return json.loads(http_get(url))["data"]

    def pushed(self, run):
        """{(name, state label or ''): value} of the Pushgateway group of `run`, rank 0."""
        out = {}
        for name, labels, value in parse_text(http_get(f"http://{self.pushgateway}/metrics")):
            if labels.get("run") == run and labels.get("rank") == "0":
                out[(name, labels.get("state", ""))] = value
        return out


@unittest.skipUnless(os.access(PROMETHEUS, os.X_OK) and os.access(PUSHGATEWAY, os.X_OK),
                     "needs /usr/bin/prometheus and /usr/bin/prometheus-pushgateway (Debian packages prometheus, "
                     "prometheus-pushgateway; launch/install_deps.sh --tests)")
class ServerTest(TempDirTest):
    train_ports = 1

    # One Prometheus and Pushgateway per test class, each test with its own run names.
    @classmethod
    def setUpClass(cls):
        cls.server_dir = pathlib.Path(tempfile.mkdtemp(prefix="difftrain-monitoring-"))
        cls.ports = [free_port() for _ in range(cls.train_ports)]
        try:
            cls.servers = Servers(cls.server_dir, cls.ports)
        except BaseException:
            shutil.rmtree(cls.server_dir, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls):
        cls.servers.stop()
        shutil.rmtree(cls.server_dir, ignore_errors=True)

    def tearDown(self):
        for p in getattr(self, "jobs", []):
            if p.poll() is None:
                p.kill()
                p.wait()
        super().tearDown()

    def train_args(self, run_dir, *overrides, port=None, push=True):
        args = [BINARY, "train", "--config", str(TINY), f"run.dir={self.dir / run_dir}",
                f"data.dir={self.dir / 'data'}", "train.threads=1"]
        if port is not None:
            args += ["monitoring.enabled=true", f"monitoring.port={port}"]
        if push:
            args.append(f"monitoring.pushgateway={self.servers.pushgateway}")
        return args + list(overrides)

    def start_job(self, args, **kwargs):
        self.jobs = getattr(self, "jobs", [])
        log = open(self.dir / f"job-{len(self.jobs)}.log", "w")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, **kwargs)
        log.close()
        self.jobs.append(p)
        return p

    def run_job(self, args, env=None):
        return subprocess.run(args, capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, **(env or {})))

    def wait_for_value(self, what, expr, predicate, timeout=30):
        def check():
            values = self.servers.values(expr)
            return values if values and predicate(max(values)) else None
        return max(wait_for(what, check, timeout))

    def assert_state(self, run, state):
        """The Pushgateway holds `state` = 1, the other states 0, and Prometheus has scraped it."""
        pushed = self.servers.pushed(run)
        states = {s: v for (name, s), v in pushed.items() if name == "difftrain_job_state"}
        self.assertEqual(states, {s: (1.0 if s == state else 0.0)
                                  for s in ("running", "finished", "stopped", "failed")}, pushed)
        self.wait_for_value(f"Prometheus to see {run} {state}",
                            f'difftrain_job_state{{run="{run}",host="{HOST}",state="{state}"}}', lambda v: v == 1)
        return pushed


class LiveJob(ServerTest):
    """One long training job: labels, dashboard expressions, a SIGSTOP stall, then SIGTERM -> stopped."""

    def test_labels_dashboard_stall_and_stop(self):
        port = self.ports[0]
        run = "live-run"  # run.name defaults to the name of run.dir
        job = self.start_job(self.train_args(run, "train.max_steps=100000", "checkpoint.every=100000", port=port))
        q = self.servers
        self.wait_for_value("steps", f'difftrain_step{{run="{run}"}}', lambda v: v >= 20)

        # Every difftrain series of the target carries run, host and rank.
        target = f'{{__name__=~"difftrain_.+",instance="127.0.0.1:{port}"}}'
        series = q.query(target)
        self.assertGreaterEqual(len(series), 20)
        for s in series:
            m = s["metric"]
            self.assertEqual((m.get("run"), m.get("host"), m.get("rank")), (run, HOST, "0"), m)
        self.assertEqual(q.values(f'difftrain_job_state{{run="{run}",state="running",instance="127.0.0.1:{port}"}}'),
                         [1.0])
        self.assertGreater(max(q.values(f'difftrain_steps_total{{run="{run}",instance="127.0.0.1:{port}"}}')), 0)

        # Every dashboard expression evaluates; those about training return this run's data.
        time.sleep(4)  # a few rate() windows of samples
        dashboard = json.loads(DASHBOARD.read_text())
        exprs = self.dashboard_exprs(dashboard, run)
        self.assertGreaterEqual(len(exprs), 15)
        for title, expr in exprs:
            result = q.query(expr)
            if not re.search(r"fid|job_images|sweep", expr):
                self.assertTrue(result, f"{title}: no data for {expr}")
        for variable in dashboard["templating"]["list"]:
            if variable["type"] != "query":
                continue
            m = re.fullmatch(r'label_values\((.*), (\w+)\)', variable["definition"])
            match = m[1].replace("$run", run).replace("$host", HOST)
            self.assertIn({"run": run, "host": HOST, "rank": "0"}[m[2]], q.label_values(m[2], match), variable)

        # Stall: the process frozen, its scrapes fail (up 0) and the seconds since its last step grow.
        since_last = dict(exprs)["Seconds since the last step"]
        up = dict(exprs)["Targets up"]
        job.send_signal(signal.SIGSTOP)
        frozen_at = time.time()
        self.wait_for_value("up == 0", up, lambda v: v == 0, timeout=10)
        t1 = time.time()
        first = max(q.values(since_last, at=t1))
        time.sleep(3)
        t2 = time.time()
        second = max(q.values(since_last, at=t2))
        job.send_signal(signal.SIGCONT)
        self.assertGreaterEqual(first, t1 - frozen_at - 0.5)
        self.assertAlmostEqual(second - first, t2 - t1, delta=0.5)
        print(f"stall: SIGSTOP; {t1 - frozen_at:.1f} s later time() - last step = {first:.1f} s, "
              f"{t2 - t1:.1f} s later {second:.1f} s (grew {second - first:.2f} s)")
        self.wait_for_value("steps again", since_last, lambda v: v < 2, timeout=15)

        job.send_signal(signal.SIGTERM)
        self.assertEqual(job.wait(timeout=60), 0)
        pushed = self.assert_state(run, "stopped")
        self.assertGreaterEqual(pushed[("difftrain_step", "")], 20)

    @staticmethod
    def dashboard_exprs(dashboard, run):
        substitutions = {"$__rate_interval": "4s", "$__range": "5m", "$__interval": "1s",
                         "$run": run, "$host": HOST, "$rank": ".*"}
        exprs = []
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for key in sorted(substitutions, key=len, reverse=True):
                    expr = expr.replace(key, substitutions[key])
                assert "$" not in expr, expr
                exprs.append((panel["title"], expr))
        return exprs


class FinalStates(ServerTest):
    train_ports = 0

    def test_finished_run(self):
        r = self.run_job(self.train_args("done", "train.max_steps=10", "run.name=finisher"))
        self.assertEqual(r.returncode, 0, r.stderr)
        pushed = self.assert_state("finisher", "finished")
        self.assertEqual(pushed[("difftrain_step", "")], 10)
        self.assertEqual(pushed[("difftrain_steps_total", "")], 10)
        self.assertEqual(pushed[("difftrain_nonfinite_steps_total", "")], 0)

    def test_failing_run(self):
        # A non-finite loss at step 3 with no patience and no rollback: train() ends by an exception.
        r = self.run_job(self.train_args("diverges", "train.max_steps=10", "train.nonfinite_patience=1",
                                         "train.on_divergence=stop", "run.name=failer"),
                         env={"DIFFTRAIN_TEST_NONFINITE_STEPS": "3"})
        self.assert_clean_error(r, "training diverged")
        pushed = self.assert_state("failer", "failed")
        self.assertEqual(pushed[("difftrain_step", "")], 2)
        self.assertEqual(pushed[("difftrain_nonfinite_steps_total", "")], 1)

    def test_nonfinite_steps_and_rollback_are_counted(self):
        # Steps 7, 8, 9 non-finite with patience 3: two skipped, the third rolls back to step 5.
        r = self.run_job(self.train_args("rolls-back", "train.max_steps=12", "train.nonfinite_patience=3",
                                         "run.name=roller"),
                         env={"DIFFTRAIN_TEST_NONFINITE_STEPS": "7,8,9"})
        self.assertEqual(r.returncode, 0, r.stderr)
        pushed = self.assert_state("roller", "finished")
        self.assertEqual(pushed[("difftrain_nonfinite_steps_total", "")], 3)
        self.assertEqual(pushed[("difftrain_skipped_steps_total", "")], 3)
        self.assertEqual(pushed[("difftrain_rollbacks_total", "")], 1)
        self.assertEqual(pushed[("difftrain_step", "")], 12)

    def test_gateway_down_is_one_warning_not_a_failure(self):
        r = self.run_job([BINARY, "train", "--config", str(TINY), f"run.dir={self.dir / 'nogateway'}",
                          f"data.dir={self.dir / 'data'}", "train.max_steps=3",
                          f"monitoring.pushgateway=127.0.0.1:{free_port()}"])
        self.assertEqual(r.returncode, 0, r.stderr)
        warnings = [l for l in (r.stdout + r.stderr).splitlines() if "Pushgateway" in l]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("warning", warnings[0])

    def test_bad_gateway_address_is_a_config_error(self):
        r = self.run_job(self.train_args("bad", "monitoring.pushgateway=no-port", push=False))
        self.assert_clean_error(r, "monitoring.pushgateway", "no-port", "host:port")

    def test_sample_pushes_progress_and_final_state(self):
        r = self.run_job(self.train_args("for-sampling", "train.max_steps=5"))
        self.assertEqual(r.returncode, 0, r.stderr)
        sample = [BINARY, "sample", "--checkpoint", str(self.dir / "for-sampling"), "--prompt", "a red circle",
                  "--prompt", "a blue square", "--images-per-prompt", "2", "--guidance", "1",
                  "--guidance", "3", "--pushgateway", self.servers.pushgateway]
        r = self.run_job(sample + ["--steps", "3", "--out", str(self.dir / "samples-ok")])
        self.assertEqual(r.returncode, 0, r.stderr)
        pushed = self.assert_state("samples-ok", "finished")
        self.assertEqual(pushed[("difftrain_job_images_done", "")], 8)
        self.assertEqual(pushed[("difftrain_job_images_total", "")], 8)
        # Beyond the model's 50 timesteps: the job fails after it has started pushing.
        r = self.run_job(sample + ["--out", str(self.dir / "samples-bad"), "--steps", "500", "--run-name", "sampler-x"])
        self.assert_clean_error(r, "--steps")
        self.assert_state("sampler-x", "failed")


    def test_sweep_pushes_fid_per_point_and_final_state(self):
        r = self.run_job(self.train_args("for-sweep", "train.max_steps=5"))
        self.assertEqual(r.returncode, 0, r.stderr)
        extractor, reference = self.dir / "features.pt", self.dir / "reference.h5"
        for args in (["features", "--out", str(extractor), "--image-size", "8", "--steps", "10"],
                     ["eval", "fid-ref", "--extractor", str(extractor), "--data", str(self.dir / "data"),
                      "--out", str(reference)]):
            r = self.run_job([BINARY] + args)
            self.assertEqual(r.returncode, 0, r.stderr)
        r = self.run_job([BINARY, "eval", "sweep", "--checkpoint", str(self.dir / "for-sweep"), "--extractor",
                          str(extractor), "--reference", str(reference), "--samplers", "ddim,euler", "--steps", "4",
                          "--guidance", "1,2.5", "--samples", "8", "--compare-rows", "0",
                          "--out", str(self.dir / "sweep-out"), "--pushgateway", self.servers.pushgateway])
        self.assertEqual(r.returncode, 0, r.stderr)
        pushed = self.assert_state("sweep-out", "finished")
        self.assertEqual(pushed[("difftrain_job_images_done", "")], 32)
        self.assertEqual(pushed[("difftrain_job_images_total", "")], 32)
        points = {(l["sampler"], l["steps"], l["guidance"]): v
                  for name, l, v in parse_text(http_get(f"http://{self.servers.pushgateway}/metrics"))
                  if name == "difftrain_sweep_fid" and l["run"] == "sweep-out"}
        results = {(row["sampler"], str(row["steps"]), f'{row["guidance"]:g}'): row["fid"]
                   for row in map(json.loads, (self.dir / "sweep-out" / "results.jsonl").read_text().splitlines())}
        self.assertEqual(len(points), 4)
        for key, fid in results.items():
            self.assertAlmostEqual(points[key], fid, places=9)


class Restart(ServerTest):
    """A crash (SIGKILL) and a resume from the last checkpoint: counters restart
    at 0, so rate(difftrain_steps_total) shows no spike; the totals are gauges."""

    def steps_per_second(self):
        """The tiny job's training pace here, start-up included (so a lower bound)."""
        steps = 400
        began = time.time()
        subprocess.run(self.train_args("pace", f"train.max_steps={steps}", "checkpoint.every=100000", push=False),
                       check=True, capture_output=True, timeout=300)
        return steps / (time.time() - began)

    def test_resume_has_no_rate_spike(self):
        port = self.ports[0]
        run = "restarted"
        # The checkpoint resumed from must lie ~15 s of steps into the run: a counter jumping to it
        # at the restart would then add ~3x the steady rate to one 5 s rate() window. The tiny model's
        # pace depends on the machine (150 steps/s on a quiet one), so it is measured first.
        every = max(600, round(15 * self.steps_per_second()))
        past = every + max(30, every // 20)
        args = self.train_args(run, "train.max_steps=100000", f"checkpoint.every={every}", port=port, push=False)
        counter = f'difftrain_steps_total{{run="{run}",job="difftrain"}}'
        rate = f"rate({counter}[5s])"
        first = self.start_job(args)
        # Killed once Prometheus has scraped the counter past the checkpoint: the crashed process's
        # last value is above the step the next one resumes from.
        self.wait_for_value("steps past the checkpoint", counter, lambda v: v >= past, timeout=90 + 2 * every / 100)
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_at = time.time()
        checkpoint = max(int(p.name.split("-")[1]) for p in (self.dir / run / "checkpoints").glob("step-*"))
        self.assertEqual(checkpoint % every, 0)
        self.assertGreaterEqual(checkpoint, every)
        steady = max(self.servers.values(f"max_over_time({rate}[10s:500ms])", at=killed_at))

        self.start_job(args)
        self.wait_for_value("the resumed process", f'{counter} and on() (changes(difftrain_process_start_time_seconds'
                            f'{{run="{run}",job="difftrain"}}[1m]) > 0)', lambda v: v >= 1)
        # The resumed totals are gauges: the step continues from the checkpoint at once.
        self.assertGreaterEqual(min(self.servers.values(f'difftrain_step{{run="{run}"}}')), checkpoint)
        time.sleep(6)
        window = int(time.time() - killed_at + 2)
        spike = max(self.servers.values(f"max_over_time({rate}[{window}s:500ms])"))
        restarts = self.servers.values(f'changes(difftrain_process_start_time_seconds{{run="{run}"}}[2m])')
        print(f"restart: killed past step {past}, resumed from step {checkpoint}; rate(steps_total[5s]) max "
              f"{steady:.1f}/s in the 10 s before the kill, {spike:.1f}/s over the {window} s across the restart")
        # The steady rate of the resumed process too: on a shared machine the speed of a run
        # changes when other jobs start or end, and a spike is judged against both.
        steady_after = max(self.servers.values(f"max_over_time({rate}[4s:500ms])"))
        self.assertGreater(steady, 0)
        self.assertLessEqual(spike, 2 * max(steady, steady_after))
        self.assertEqual(restarts, [1.0])
        # What rate() saw: an ordinary counter reset, the new process counting its own steps from 0.
        samples = [float(v) for _, v in self.servers.query(f"{counter}[{window}s]")[0]["values"]]
        resets = [i for i in range(1, len(samples)) if samples[i] < samples[i - 1]]
        self.assertEqual(len(resets), 1, samples)
        self.assertLess(samples[resets[0]], checkpoint, samples)


if __name__ == "__main__":
    BINARY = sys.argv.pop(1)
    unittest.main()

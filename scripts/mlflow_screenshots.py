"""Screenshots of the MLflow UI for docs/img/: headless Chromium driven over the DevTools protocol.

    PYTHONPATH=trainer python scripts/mlflow_screenshots.py --url http://127.0.0.1:5077 --out docs/img

Needs Debian's `chromium` and the websocket-client package (in the venv). Each shot opens a
page, waits until its text shows, runs a few clicks (expand the pipeline run, close the
assistant panel) and saves a PNG. The MLflow UI is a JS app: a plain `--screenshot` would
catch it half-rendered and could not expand the run tree.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import websocket


class Browser:
    def __init__(self, width: int = 1600, height: int = 1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        self.proc = subprocess.Popen(
            [shutil.which("chromium") or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             f"--remote-debugging-port={port}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json") as r:
                    pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.2)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60)
        self._id = 0
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)

    def call(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str):
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return out.get("result", {}).get("value")

    def wait_text(self, text: str, timeout: float = 120) -> None:
        self.wait_js(f"document.body && document.body.innerText.includes({json.dumps(text)})", text, timeout)

    def wait_js(self, expression: str, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self.js(expression):
            if time.monotonic() > deadline:
                raise RuntimeError(f"page never showed {what!r}")
            time.sleep(0.3)

    def wait_charts(self, count: int) -> None:
        """Until `count` plotly charts have drawn (the UI loads metric histories lazily)."""
        self.wait_js(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {count}", f"{count} charts")
        time.sleep(2)

    def open(self, url: str, text: str) -> None:
        self.call("Page.navigate", url=url)
        time.sleep(1)
        self.wait_text(text)
        time.sleep(2)  # charts animate in

    def click_text(self, text: str, selector: str = "button, [role=button], [role=tab], a, span") -> bool:
        return bool(self.js(f"""(() => {{
            const els = [...document.querySelectorAll({json.dumps(selector)})]
                .filter(e => e.innerText && e.innerText.trim() === {json.dumps(text)});
            if (!els.length) return false; els[0].click(); return true; }})()"""))

    def type_into(self, placeholder: str, text: str) -> None:
        """Type into a React-controlled input (found by its placeholder)."""
        self.js(f"""(() => {{
            const el = document.querySelector('input[placeholder={json.dumps(placeholder)}]');
            const set = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set;
            set.call(el, {json.dumps(text)}); el.dispatchEvent(new Event('input', {{bubbles: true}})); }})()""")

    def shot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        print(f"wrote {path}")

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)


CLOSE_ASSISTANT = "document.querySelector('[data-component-id=\"mlflow.assistant.chat_panel.close\"]')?.click()"
EXPAND_RUNS = ("[...document.querySelectorAll('button[data-component-id$=\"runnamecellrenderer.tsx_46\"]')]"
               ".forEach(b => b.click())")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:5000", help="the MLflow server")
    parser.add_argument("--experiment", default="eve-platform")
    parser.add_argument("--model", default="eve-tiny", help="registered model to show")
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--shots", default="runs,charts,stage,registry",
                        help="which: runs, charts (train/ and tokens seen), stage (overview + system metrics), registry")
    parser.add_argument("--stage", default="sft", help="the stage run to show")
    parser.add_argument("--prefix", default="mlflow", help="file name prefix")
    args = parser.parse_args()
    from mlflow.tracking import MlflowClient

    from eve_contract.tracking_names import ui_runs_url

    client = MlflowClient(args.url)
    exp = client.get_experiment_by_name(args.experiment)
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id], order_by=["attributes.start_time"])}
    stage = runs[args.stage]
    parent = next(r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags)
    base, ml = f"{args.url}/#/experiments/{exp.experiment_id}", "workflowType=machine_learning"
    shots = set(args.shots.split(","))
    out = lambda name: args.out / f"{args.prefix}-{name}.png"  # noqa: E731
    args.out.mkdir(parents=True, exist_ok=True)
    b = Browser()
    try:
        if "runs" in shots:
            b.open(ui_runs_url(args.url, exp.experiment_id), parent.info.run_name)  # oldest stage first
            b.js(CLOSE_ASSISTANT)
            b.js(EXPAND_RUNS)
            b.wait_text(args.stage)
            time.sleep(1)
            b.shot(out("runs"))
        if "charts" in shots:
            b.open(f"{base}/runs?{ml}&compareRunsMode=CHART", "train")
            b.js(CLOSE_ASSISTANT)
            b.type_into("Search metric charts", "train/")
            b.wait_charts(6)
            b.shot(out("charts"))
            b.type_into("Search metric charts", "progress/tokens_seen")
            time.sleep(1)
            b.wait_charts(1)
            b.shot(out("charts-tokens"))
        if "stage" in shots:
            b.open(f"{base}/runs/{stage.info.run_id}?{ml}", stage.info.run_name)
            b.js(CLOSE_ASSISTANT)
            time.sleep(1)
            b.shot(out("stage-run"))
            b.open(f"{base}/runs/{stage.info.run_id}/system-metrics?{ml}", "System metrics")
            b.js(CLOSE_ASSISTANT)
            b.wait_charts(6)
            b.shot(out("stage-system-metrics"))
        if "registry" in shots:
            b.open(f"{args.url}/#/models/{args.model}?{ml}", args.model)
            b.js(CLOSE_ASSISTANT)
            time.sleep(1)
            b.shot(out("registry"))
    finally:
        b.close()

if __name__ == "__main__":
    main()

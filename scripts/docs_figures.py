"""Make the docs' pictures (docs/*.png) from real runs: the training curves, confusion matrix
and sample predictions a run logged, and a screenshot of `mlflow ui` comparing the runs of
its experiment (headless Debian Chromium, as in tests/tracking/test_browser.py).

    python scripts/docs_figures.py --tracking-uri sqlite:///mlflow.db --run <run id>

`--run` is a run id or run name (the newest finished run of that name). The PNGs are
shrunk and palette-quantised so they stay small in git.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    import mlflow

ARTIFACTS = ("curves.png", "confusion_matrix.png", "sample_predictions.png")
DOCS = Path(__file__).resolve().parents[1] / "docs"


def find_run(client: mlflow.MlflowClient, run: str) -> mlflow.entities.Run:
    """A run by id, else the newest finished run with that name, in any experiment."""
    import mlflow

    try:
        return client.get_run(run)
    except mlflow.exceptions.MlflowException:
        pass
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(experiments, f"attributes.run_name = '{run}' "
                               "and attributes.status = 'FINISHED'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if not found:
        sys.exit(f"docs_figures: error: no finished run with id or name {run!r}")
    return found[0]


def save_small(source: Path, target: Path, max_width: int) -> None:
    """Shrink to max_width and store as a 64-colour palette PNG (a few tens of KiB)."""
    image = Image.open(source).convert("RGB")
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)),
                             Image.Resampling.LANCZOS)
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    print(f"{target} ({target.stat().st_size // 1024} KiB)")


def screenshot_ui(tracking_uri: str, experiment_id: str, metric: str, target: Path,
                  has_sweeps: bool) -> None:
    """Start `mlflow ui` on a free local port, open the experiment's run charts filtered to
    `metric` in headless Chromium, and save the window."""
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,900", "--disable-background-networking", "--no-first-run"):
        options.add_argument(flag)
    driver = None
    try:
        _wait_for(f"{url}/health", server)
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(
            shutil.which("chromedriver") or "/usr/bin/chromedriver"))
        wait = WebDriverWait(driver, 90)
        charts = f"{url}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART"
        charts_search = (By.CSS_SELECTOR, "input[placeholder='Search metric charts']")
        driver.get(charts)
        wait.until(lambda d: d.find_elements(By.XPATH, "//*[text()='Model training']"))
        # The sidebar for training runs rather than GenAI traces (remembered by the page).
        driver.find_element(By.XPATH, "//*[text()='Model training']").click()
        driver.get(charts)
        search = wait.until(lambda d: d.find_element(*charts_search))
        for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
            if button.is_displayed():  # MLflow's chat assistant panel
                button.click()
        # A sweep's jobs sit folded under its parent run: unfold them (the charts show the
        # first 10 runs listed, MLflow's default).
        unfolds = (By.CSS_SELECTOR, ".ag-row button[data-component-id*='runnamecellrenderer']")
        if has_sweeps:
            wait.until(lambda d: d.find_elements(*unfolds))
        for unfold in driver.find_elements(*unfolds):
            unfold.click()
        search.send_keys(metric)
        wait.until(lambda d: d.execute_script(
            "return document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length"))
        time.sleep(2)  # let plotly finish its transition
        with tempfile.TemporaryDirectory() as folder:
            shot = Path(folder) / "ui.png"
            driver.save_screenshot(str(shot))
            save_small(shot, target, max_width=1400)
    except TimeoutException:
        failed = Path("outputs") / "docs_figures_failed.png"
        failed.parent.mkdir(exist_ok=True)
        driver.save_screenshot(str(failed))
        sys.exit(f"docs_figures: error: mlflow ui did not show the charts in time; see {failed}")
    finally:
        if driver is not None:
            driver.quit()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _wait_for(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"docs_figures: error: mlflow ui did not start ({url})")
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--run", required=True, help="run id or run name for the figures")
    parser.add_argument("--metric", default="val_accuracy",
                        help="the metric whose charts the mlflow ui screenshot shows")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()

    import mlflow  # after parsing: --help and usage errors need no MLflow

    client = mlflow.MlflowClient(args.tracking_uri)
    run = find_run(client, args.run)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        for name in ARTIFACTS:
            local = mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path=name, dst_path=folder,
                tracking_uri=args.tracking_uri)
            save_small(Path(local), args.out / name, max_width=900)
    sweeps = client.search_runs([run.info.experiment_id], "tags.`mnist_exp.sweep` = 'parent'",
                                max_results=1)
    screenshot_ui(args.tracking_uri, run.info.experiment_id, args.metric,
                  args.out / "mlflow_ui.png", has_sweeps=bool(sweeps))


if __name__ == "__main__":
    main()

"""`mlflow ui` in a real browser: headless Chromium (Debian's chromium + chromium-driver,
driven by Selenium) shows the experiment, the run, its metric charts and its artifacts
from a real run. Screenshots go to outputs/browser-test/ for a human to look at."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import mlflow
import pytest

from helpers import ROOT, serving
from mnist_exp.cli.run import TRAINING_VIEW

pytestmark = pytest.mark.slow  # a UI server and a browser: ~40 s

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOTS = ROOT / "outputs" / "browser-test"
WAIT_S = 90  # the UI is a large single-page app; a loaded 2-core CI machine is slow

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def ui(tiny_run):
    """`mlflow ui` on 127.0.0.1 over the tiny run's store, as a user would start it."""
    with serving([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                  tiny_run.tracking_uri, "--workers", "1"], ready="/health",
                 cwd=tiny_run.workdir) as url:
        yield url


def start_browser(profile: Path):
    """Headless Chromium with its own, new profile folder (nothing remembered from an
    earlier visit: what a colleague opening a link for the first time sees)."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium is not installed: apt-get install chromium chromium-driver "
                    "(.ci/run does this)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000", "--disable-background-networking", "--no-first-run",
                 "--disable-extensions", "--disable-sync", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # The driver named explicitly: Selenium never tries to download one.
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = start_browser(tmp_path_factory.mktemp("chromium"))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def run(tiny_run):
    client = mlflow.MlflowClient(tiny_run.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("mnist_sample").experiment_id])
    return run


def page_text(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def open_and_wait(driver, url: str, *texts: str) -> str:
    """Load `url` afresh (not just a new #route in the same app) and wait until the page
    shows every one of `texts`."""
    driver.get("about:blank")
    driver.get(url)
    try:
        WebDriverWait(driver, WAIT_S).until(
            lambda d: all(text in page_text(d) for text in texts))
    except TimeoutException:
        driver.save_screenshot(str(SCREENSHOTS / "failed.png"))
        missing = [text for text in texts if text not in page_text(driver)]
        pytest.fail(f"{url} never showed {missing}; screenshot in {SCREENSHOTS}")
    close_assistant(driver)
    return page_text(driver)


def close_assistant(driver) -> None:
    """MLflow 3 opens its chat assistant beside the page on first load; close it."""
    for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
        if button.is_displayed():
            button.click()


def test_experiment_lists_the_run(browser, ui, run):
    open_and_wait(browser, f"{ui}/#/experiments", "mnist_sample")
    link = browser.find_element(By.LINK_TEXT, "mnist_sample")  # the experiment, listed by name
    assert link.get_attribute("href").endswith(f"/experiments/{run.info.experiment_id}")
    text = open_and_wait(browser, f"{ui}/#/experiments/{run.info.experiment_id}/runs",
                         run.info.run_name[:20], "matching run")
    assert "1 matching run" in text
    browser.save_screenshot(str(SCREENSHOTS / "experiment.png"))


def test_run_page_shows_metrics_and_params(browser, ui, run):
    url = f"{ui}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    text = open_and_wait(browser, url, "test_accuracy", "Parameters")
    assert str(run.data.metrics["test_accuracy"])[:6] in text
    assert "trainer.epochs" in text
    browser.save_screenshot(str(SCREENSHOTS / "run.png"))


def test_metric_charts_are_drawn(browser, ui, run):
    url = f"{ui}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/model-metrics"
    open_and_wait(browser, url, "Model metrics", "accuracy")
    search = browser.find_element(By.CSS_SELECTOR, "input[placeholder='Search metric charts']")
    search.send_keys("val_")  # leaves the per-epoch validation curves (and final_val_*)
    WebDriverWait(browser, WAIT_S).until(lambda d: "test_accuracy" not in page_text(d))
    titles = page_text(browser)
    assert "val_accuracy" in titles and "val_loss" in titles
    # Each curve is drawn: plotly renders a line trace per chart.
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script(
        "return document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length") >= 2)
    browser.save_screenshot(str(SCREENSHOTS / "metric_charts.png"))


@pytest.mark.parametrize("artifact", ["curves.png", "confusion_matrix.png"])
def test_artifact_images_are_shown(browser, ui, run, tiny_run, artifact):
    url = f"{ui}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts"
    open_and_wait(browser, url, "curves.png", "confusion_matrix.png", "sample_predictions.png")
    local = Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=artifact, tracking_uri=tiny_run.tracking_uri))
    width = _png_width(local)  # curves.png and confusion_matrix.png differ in width
    browser.find_element(By.XPATH, f"//*[text()='{artifact}']").click()
    # The preview fetches the file through the server and shows it as an <img>: the very
    # image the run logged.
    shown = "return Array.from(document.images).filter(i => i.src.startsWith('blob:'))" \
            ".map(i => i.naturalWidth)"
    try:
        WebDriverWait(browser, WAIT_S).until(lambda d: width in d.execute_script(shown))
    except TimeoutException:
        pytest.fail(f"no {width}px-wide preview of {artifact}; images: "
                    f"{browser.execute_script(shown)}")
    browser.save_screenshot(str(SCREENSHOTS / f"artifact_{Path(artifact).stem}.png"))


def _png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")


def test_models_tab_ranks_the_logged_model_with_its_metrics(browser, ui, run, tiny_run):
    [model] = mlflow.MlflowClient(tiny_run.tracking_uri).search_logged_models(
        [run.info.experiment_id])
    accuracy = f"{run.data.metrics['test_accuracy']:.4f}"[:5]
    browser.set_window_size(2400, 1000)  # the table draws only the columns in view
    text = open_and_wait(browser, f"{ui}/#/experiments/{run.info.experiment_id}/models"
                         f"?{TRAINING_VIEW}", "mnist_sample-test", "test_accuracy")
    assert model.name in text.splitlines() and accuracy in text
    browser.save_screenshot(str(SCREENSHOTS / "models.png"))


def test_the_printed_link_opens_the_training_view_in_a_fresh_browser(ui, run, tiny_run,
                                                                    tmp_path):
    """The runner's `Browse: ... -> http://127.0.0.1:5000/#/...` link, in a browser that has
    never seen this UI: the run's training page (metrics, charts), not the GenAI view."""
    link = next(line for line in tiny_run.process.stdout.splitlines()
                if line.startswith("Browse:")).split("->")[1].strip()
    assert f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?" in link
    fresh = start_browser(tmp_path / "profile")
    try:
        text = open_and_wait(fresh, ui + link.removeprefix("http://127.0.0.1:5000"),
                             "Model metrics", "System metrics", "test_accuracy")
        fresh.save_screenshot(str(SCREENSHOTS / "printed_link.png"))
    finally:
        fresh.quit()
    # The training view's menu (Runs, Models, Model registry), not the GenAI one's.
    assert "Model registry" in text
    assert not {"Agent versions", "Judges", "Playground"} & set(text.splitlines())

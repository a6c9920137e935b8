"""Screenshots of a Label Studio project holding an alray query (for docs/assessors.md).

    .venv-ls/bin/pip install selenium; apt-get install chromium chromium-driver
    .venv-ls/bin/python bench/label_studio_screenshots.py URL PROJECT OUT_DIR EMAIL PASSWORD

Run with Label Studio's own venv (selenium lives there, not in alray's); called by
bench/label_studio_roundtrip.py --screenshots. Logs in through the login form of the
real server in headless Chromium (1400x900), then saves the project's data manager
(``data-manager.png``) and the labelling page of its best-ranked task
(``labelling.png``, the model's pre-annotation selected).
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait


def main(url: str, project: str, out: str, email: str, password: str) -> None:
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--window-size=1400,900",
                 "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    service = webdriver.ChromeService(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        driver.get(f"{url}/user/login/")
        driver.find_element(By.NAME, "email").send_keys(email)
        driver.find_element(By.NAME, "password").send_keys(password)
        driver.find_element(By.CSS_SELECTOR, "form button, form input[type=submit]").click()
        WebDriverWait(driver, 60).until(lambda d: "/user/login" not in d.current_url)
        driver.get(f"{url}/projects/{project}/data")
        WebDriverWait(driver, 60).until(ready.presence_of_element_located(
            (By.CSS_SELECTOR, "[class*=table], [class*=Table]")))
        time.sleep(4)  # the table's rows arrive after its frame
        driver.save_screenshot(str(folder / "data-manager.png"))
        rows = driver.find_elements(By.CSS_SELECTOR, "[class*=table-row], [class*=row]")
        task = _best_ranked_task(driver, url, project)
        driver.get(f"{url}/projects/{project}/data?tab=0&task={task}")
        time.sleep(10)  # the labelling interface loads its own bundle
        driver.save_screenshot(str(folder / "labelling.png"))
        print(f"{len(rows)} rows seen; screenshots in {folder}")
    finally:
        driver.quit()


def _best_ranked_task(driver, url: str, project: str) -> int:
    """The task id of alray rank 1, read through the API with the browser's session."""
    script = (f"const r = await fetch('{url}/api/tasks?project={project}&page_size=100');"
              "const b = await r.json(); return (b.tasks || b).map(t => [t.id, t.data.alray_rank]);")
    pairs = driver.execute_script(f"return (async () => {{ {script} }})();")
    return min(pairs, key=lambda pair: pair[1])[0]


if __name__ == "__main__":
    main(*sys.argv[1:6])

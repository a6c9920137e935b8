"""A real Label Studio round trip: an alray query out, assessors' answers back, the run resumed.

    python3 -m venv .venv-ls && .venv-ls/bin/pip install label-studio   # once, its own venv
    .venv/bin/python bench/label_studio_roundtrip.py --dir /tmp/alray-ls

1. ``alray generate`` a small pool (10 classes); 300 posts keep their label (the seeded
   initial set is drawn from them), the rest are unlabelled, and every post gets a
   ``title`` and a ``url`` (pass-through fields).
2. ``alray loop --assessors --show-columns title,url`` fits the passive model and writes
   step 1's query, the posts' title and url in it.
3. ``write_run_query`` turns the open query into Label Studio tasks and a labelling
   config beside it (class names from a file).
4. ``label-studio start`` (from .venv-ls, on 127.0.0.1, a fresh data dir, its user and
   API token given on the command line); through the REST API: a project with the
   config, the tasks imported (the model's answer as a pre-annotation), annotations
   submitted: one task skipped, one left alone, one where two annotations disagree (the
   export of that moment is kept: a tie) and a third breaks the tie, the rest answered
   with the pool's true class (one annotation each).
5. The project is exported as JSON, JSON_MIN and CSV; each export is imported into its
   own copy of the run with ``alray labels import`` (the three must give the same labels),
   and each copy resumes with ``alray loop --resume --local`` to step 2's query.

``--fixtures DIR`` copies the exports (and the tasks and config alray wrote) there (the
unit tests' tests/fixtures/label_studio/). ``--keep-server`` leaves Label Studio running
(its URL and login are printed); ``--url URL`` reuses such a server instead of starting
one. ``--screenshots DIR`` saves the project's pages as the assessor first sees them, in
headless Chromium through Selenium (``apt-get install chromium chromium-driver`` and
``.venv-ls/bin/pip install selenium``). Everything listens on 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import requests

from alray.loop.labelstudio import ALRAY_ID, FROM_NAME, read_class_names, write_run_query

ROOT = Path(__file__).resolve().parents[1]
ALRAY = [str(ROOT / ".venv/bin/alray")]
CLASS_NAMES = ["arts", "business", "cooking", "fashion", "gaming", "health", "music",
               "politics", "science", "sport"]
USER, PASSWORD, TOKEN = "assessor@alray.test", "alray-roundtrip", "alray0roundtrip0token0123"
EXPORTS = {"JSON": "export.json", "JSON_MIN": "export-min.json", "CSV": "export.csv"}


def sh(*args, check: bool = True) -> str:
    """Run a command; ``check=False``: report a failure and go on (the caller checks the
    run directory itself: a loop whose work is committed but whose report failed)."""
    print("$", " ".join(map(str, args)), flush=True)
    done = subprocess.run(list(map(str, args)), capture_output=True, text=True)
    if done.returncode and check:
        sys.exit(f"failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    if done.returncode:
        print(f"  (exit {done.returncode}; its last lines: "
              f"{done.stderr.strip().splitlines()[-1:]})")
    return done.stdout


# --- the alray side ----------------------------------------------------------------------
def make_pool(work: Path) -> tuple[Path, Path, dict]:
    """A 3,000-post pool: 300 labelled, the rest not; a title and a url per post.
    Returns the pool, the validation pool and every post's true class."""
    sh(*ALRAY, "generate", work / "gen", "--rows", 3000, "--val-rows", 600, "--classes", 10,
       "--set", "image_dim=64", "--set", "text_dim=32", "--overwrite")
    table = pq.read_table(work / "gen" / "pool")
    truth = dict(zip(table.column("id").to_pylist(), table.column("label").to_pylist()))
    ids = table.column("id")
    keep = pc.less(pa.array(range(table.num_rows)), 300)
    label = pc.if_else(keep, table.column("label"), pa.nulls(table.num_rows, pa.int64()))
    table = table.set_column(table.schema.get_field_index("label"), "label", label)
    table = table.append_column("title", pc.binary_join_element_wise(
        "Synthetic post ", pc.cast(ids, pa.string()), ""))
    table = table.append_column("url", pc.binary_join_element_wise(
        "https://example.org/posts/", pc.cast(ids, pa.string()), ""))
    (work / "pool").mkdir(exist_ok=True)
    pq.write_table(table, work / "pool" / "part-00000.parquet")
    return work / "pool", work / "gen" / "val", truth


def start_run(work: Path, pool: Path, val: Path) -> Path:
    run = work / "run"
    sh(*ALRAY, "loop", "--pool", pool, "--val", val, "--run-dir", run, "--assessors",
       "--initial", 100, "--query-size", 10, "--steps", 2, "--local", "--epochs", 3,
       "--classes", 10, "--show-columns", "title,url", check=False)
    state = json.loads((run / "state.json").read_text())
    assert state["open_query"] == 1, f"no query of step 1 waits in {run}: {state}"
    return run


def query_for_label_studio(run: Path) -> dict:
    """The open query (with the posts' title and url: --show-columns) for Label Studio."""
    names = run.parent / "class-names.txt"
    names.write_text("\n".join(CLASS_NAMES) + "\n")
    return write_run_query(run, class_names=read_class_names(names))


# --- the Label Studio side ---------------------------------------------------------------
def start_label_studio(work: Path, port: int, ls_bin: Path) -> subprocess.Popen:
    data = work / "label-studio-data"
    shutil.rmtree(data, ignore_errors=True)
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data),
           "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true"}
    log = open(work / "label-studio.log", "w")
    cmd = [str(ls_bin), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p",
           str(port), "--data-dir", str(data), "--username", USER, "--password", PASSWORD,
           "--user-token", TOKEN, "--enable-legacy-api-token", "--log-level", "WARNING"]
    print("$", " ".join(cmd), flush=True)
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900  # the first start migrates its database: minutes
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"label-studio exited ({server.returncode}); see {log.name}")
        try:
            if requests.get(f"{url}/health", timeout=10).ok:
                return server
        except requests.RequestException:
            pass
        time.sleep(1)
    stop(server)
    sys.exit(f"label-studio did not answer on {url} in 900 s; see {log.name}")


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


class LabelStudio:
    """The few REST calls the round trip needs (legacy token authentication)."""

    def __init__(self, url: str, token: str):
        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def call(self, method: str, path: str, **kwargs):
        response = self.session.request(method, f"{self.url}{path}", timeout=120, **kwargs)
        if not response.ok:
            sys.exit(f"{method} {path}: {response.status_code} {response.text[:2000]}")
        return response

    def create_project(self, title: str, config: str) -> int:
        return self.call("POST", "/api/projects", json={
            "title": title, "label_config": config,
            "description": "alray query: label each post's class"}).json()["id"]

    def import_tasks(self, project: int, tasks: list) -> None:
        self.call("POST", f"/api/projects/{project}/import", json=tasks)

    def tasks(self, project: int) -> list[dict]:
        body = self.call("GET", "/api/tasks", params={"project": project, "page_size": 1000,
                                                      "fields": "all"}).json()
        return body["tasks"] if isinstance(body, dict) else body

    def user(self, email: str) -> int:
        """The id of the user ``email``, created when missing (an admin's call)."""
        for user in self.call("GET", "/api/users/").json():
            if user["email"] == email:
                return user["id"]
        return self.call("POST", "/api/users/", json={
            "email": email, "username": email.split("@")[0]}).json()["id"]

    def annotate(self, task: int, choice: str | None, skipped: bool = False,
                 user: int | None = None) -> None:
        result = [] if choice is None else [{
            "from_name": FROM_NAME, "to_name": "title", "type": "choices",
            "value": {"choices": [choice]}}]
        body = {"result": result, "was_cancelled": skipped, "lead_time": 4.2}
        if user is not None:  # an admin may file an annotation in another user's name
            body["completed_by"] = user
        self.call("POST", f"/api/tasks/{task}/annotations", json=body)

    def export(self, project: int, kind: str, out: Path) -> Path:
        response = self.call("GET", f"/api/projects/{project}/export",
                             params={"exportType": kind})
        out.write_bytes(response.content)
        print(f"exported {kind}: {out} ({len(response.content):,} bytes)")
        return out


def annotate(ls: LabelStudio, project: int, truth: dict, exports: Path) -> dict:
    """Answers as assessors would give them; returns what alray must record per id."""
    tasks = sorted(ls.tasks(project), key=lambda t: t["data"]["alray_rank"])
    expected = {}
    skipped, untouched, disputed, *rest = tasks
    ls.annotate(skipped["id"], None, skipped=True)
    expected[skipped["data"][ALRAY_ID]] = None
    expected[untouched["data"][ALRAY_ID]] = None
    true = truth[disputed["data"][ALRAY_ID]]
    other = (true + 1) % len(CLASS_NAMES)
    first, second, third = (ls.user(USER), ls.user("second@alray.test"),
                            ls.user("third@alray.test"))
    ls.annotate(disputed["id"], str(true), user=first)
    ls.annotate(disputed["id"], str(other), user=second)
    ls.export(project, "JSON", exports / "export-tie.json")
    ls.annotate(disputed["id"], str(true), user=third)  # the third annotator breaks the tie
    expected[disputed["data"][ALRAY_ID]] = true
    for task in rest:
        label = truth[task["data"][ALRAY_ID]]
        ls.annotate(task["id"], str(label))
        expected[task["data"][ALRAY_ID]] = label
    return expected


# --- back into alray ---------------------------------------------------------------------
def import_each(run: Path, exports: dict, expected: dict, step: int) -> None:
    """Each export into its own copy of the run; same labels every time; then resume."""
    for kind, export in exports.items():
        copy = run.with_name(f"run-{kind.lower()}")
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run, copy)
        print(sh(*ALRAY, "labels", "import", copy, export).strip())
        labels = pq.read_table(copy / "labels.parquet").filter(
            pc.equal(pc.field("step"), step)).to_pylist()
        got = {row["id"]: row["label"] for row in labels}
        assert got == expected, f"{kind}: recorded {got}, expected {expected}"
        print(f"{kind}: {sum(v is not None for v in got.values())} labelled, "
              f"{sum(v is None for v in got.values())} skipped, as annotated")
        print(sh(*ALRAY, "loop", "--run-dir", copy, "--resume", "--local", check=False
                 ).strip()[-400:])
        state = json.loads((copy / "state.json").read_text())
        assert state["step"] == step and state["open_query"] == step + 1, state
        print(f"{kind}: resumed; step {step} trained, step {step + 1}'s query is out")


def screenshots(url: str, project: int, out: Path, ls_bin: Path) -> None:
    """The project as the assessor first sees it (bench/label_studio_screenshots.py, run
    with Label Studio's venv, where selenium is)."""
    script = ROOT / "bench" / "label_studio_screenshots.py"
    print(sh(ls_bin.parent / "python", script, url, project, out, USER, PASSWORD).strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/alray-ls"))
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--label-studio", type=Path, default=ROOT / ".venv-ls/bin/label-studio")
    parser.add_argument("--fixtures", type=Path, default=None)
    parser.add_argument("--screenshots", type=Path, default=None)
    parser.add_argument("--keep-server", action="store_true")
    parser.add_argument("--url", default=None,
                        help="A Label Studio already running with this script's user and "
                             "token (e.g. one left by --keep-server); none is started")
    args = parser.parse_args()
    work = args.dir
    for entry in work.glob("*") if work.exists() else []:  # keep a reused server's data
        if entry.name != "label-studio-data" or not args.url:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    work.mkdir(parents=True, exist_ok=True)
    pool, val, truth = make_pool(work)
    run = start_run(work, pool, val)
    written = query_for_label_studio(run)
    print(f"wrote {written['tasks']} and {written['config']}")
    server = None if args.url else start_label_studio(work, args.port, args.label_studio)
    url = args.url or f"http://127.0.0.1:{args.port}"
    try:
        ls = LabelStudio(url, TOKEN)
        project = ls.create_project("alray query, step 1", written["config"].read_text())
        ls.import_tasks(project, json.loads(written["tasks"].read_text()))
        exports_dir = work / "exports"
        exports_dir.mkdir()
        if args.screenshots:  # before any answer: the model's pre-annotations only
            screenshots(url, project, args.screenshots, args.label_studio)
        expected = annotate(ls, project, truth, exports_dir)
        exports = {kind: ls.export(project, kind, exports_dir / name)
                   for kind, name in EXPORTS.items()}
        if args.fixtures:
            args.fixtures.mkdir(parents=True, exist_ok=True)
            for path in [*exports.values(), exports_dir / "export-tie.json",
                         written["tasks"], written["config"]]:
                shutil.copy(path, args.fixtures / path.name)
            shutil.copy(run / "queries" / "step-00001.parquet", args.fixtures / "query.parquet")
            (args.fixtures / "expected.json").write_text(json.dumps(
                {str(k): v for k, v in expected.items()}, indent=2) + "\n")
        import_each(run, exports, expected, step=1)
        print("round trip OK")
        if args.keep_server and server is not None:
            print(f"Label Studio stays up: {url} (login {USER} / {PASSWORD}); "
                  f"kill -- -{server.pid} to stop it")
    finally:
        if server is not None and not args.keep_server:
            stop(server)


if __name__ == "__main__":
    main()

"""Start-up of the gateway and of the Shadow's process, side by side with `mlflow models serve`.

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_startup.py [--rounds 5]

In a fresh temporary directory: trains and registers the demo churn pipeline (ONNX form,
parity-checked) as Production, then, alternating within every round, starts as a subprocess
and times process start -> first `GET /ping` 200 with the model loaded:

- `gateway (cold)`: `python -m serving` with no local state (first start on a machine);
- `gateway (warm)`: the same with the local state a previous start left (a restart);
- `mlflow serve`:   `mlflow models serve -m models:/NAME@Production --env-manager local`.

and the Shadow's process (`python -m serving.shadow`'s import and model load, cold and warm).
Prints each round, the medians and the ratios. Targets (issue 10): gateway <= 2 s and <= half
of mlflow's time; the Shadow's process likewise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

TARGET_S, TARGET_RATIO = 2.0, 0.5


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"load average before: {_load()}  (2-core machine shared with other work)")
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        profile, state_dir = prepare(Path(tmp))
        figures: dict[str, list[float]] = {}
        kinds = ["gateway (cold)", "gateway (warm)", "mlflow serve", "shadow (cold)", "shadow (warm)"]
        for r in range(args.rounds):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                seconds = measure(kind, profile, state_dir)
                figures.setdefault(kind, []).append(seconds)
                print(f"round {r + 1} {kind:15} {seconds:6.2f} s")
        print()
        median = {k: statistics.median(v) for k, v in figures.items()}
        for kind, value in median.items():
            print(f"median {kind:15} {value:6.2f} s  (min {min(figures[kind]):.2f}, max {max(figures[kind]):.2f})")
        mlflow_s = median["mlflow serve"]
        for kind in ("gateway (cold)", "gateway (warm)", "shadow (cold)", "shadow (warm)"):
            ok = median[kind] <= TARGET_S and median[kind] <= TARGET_RATIO * mlflow_s
            print(f"{kind:15} / mlflow serve = {median[kind] / mlflow_s:.2f}  {'meets' if ok else 'misses'} the target")
    print(f"load average after: {_load()}")


def prepare(tmp: Path) -> tuple[Path, Path]:
    import yaml

    from configs.settings import load_settings
    from core.vocabulary import Alias
    from tasks.data.demo_data import TARGET
    from tasks.data.snapshot import take_snapshot
    from tasks.release.lineage import git_lineage
    from tasks.release.registration import register
    from tasks.release.registry import set_alias
    from tasks.training.pipeline import train

    settings = load_settings(cwd=tmp)
    snapshot = take_snapshot("demo", settings, TARGET)
    trained = train(snapshot.frame, TARGET, settings.training)
    version = register.fn(trained, snapshot, git_lineage(), settings)
    set_alias(settings, version.name, Alias.PRODUCTION, version.version)
    profile = tmp / "profile.yaml"
    profile.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return profile, Path(settings.serving.state_dir)


def measure(kind: str, profile: Path, state_dir: Path) -> float:
    if kind.endswith("(cold)"):
        shutil.rmtree(state_dir, ignore_errors=True)
    elif not state_dir.exists():  # warm: a previous start leaves the local state
        _serve([sys.executable, "-m", "serving", "--config", str(profile), "--port", str(_free_port())], profile)
    if kind.startswith("shadow"):
        return _shadow_start(profile)
    if kind == "mlflow serve":
        name = "churn-classifier"
        port = _free_port()
        command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}@Production",
                   "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
        # mlflow execs `uvicorn` from PATH: the one of this interpreter.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {"MLFLOW_TRACKING_URI": _tracking_uri(profile), "PATH": path}
        return _serve(command, profile, port, env)
    port = _free_port()
    return _serve([sys.executable, "-m", "serving", "--config", str(profile), "--port", str(port)], profile, port)


def _serve(command: list[str], profile: Path, port: int | None = None, env: dict | None = None) -> float:
    port = port or int(command[command.index("--port") + 1])
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})  # fmt: skip
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1.0).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"{command[2]} exited with {proc.returncode}")
            time.sleep(0.01)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _shadow_start(profile: Path) -> float:
    """The Shadow's process as the gateway starts it: import, then load the version it mirrors."""
    code = (
        "import sys; from configs.settings import load_settings; from serving.shadow import _Models; "
        f"m = _Models(load_settings({str(profile)!r})); model = m.get('1'); sys.exit(isinstance(model, str))"
    )
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    return time.perf_counter() - started


def _tracking_uri(profile: Path) -> str:
    import yaml

    return yaml.safe_load(profile.read_text())["mlflow"]["tracking_uri"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()

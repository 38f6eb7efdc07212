"""Does this Python environment satisfy the project's requirements? One line per package, then a verdict.

Why: the GPU machine has no network and a Python image of its own (torch, transformers, peft ... in versions
we do not choose); bench/gpu_check.sh adds the wheels of bench/gpu_wheels.txt on top. Before spending GPU
minutes on tests, this says which requirement of pyproject.toml (and the smoke tests' pytest, httpx) is
missing or in a version outside its range, by name, instead of an ImportError in the middle of a test.

    python bench/gpu_env_check.py            # exit 1 when a requirement is missing or out of range

The requirements of the brought wheels themselves (transformers needs ``regex>=2025.10.22``, ...) are checked
too: each distribution named in bench/gpu_wheels.txt, its ``Requires-Dist`` without extras.

It also prints the interpreter's wheel tag (``cp312``...): binary wheels (pydantic-core) must match it.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: what the smoke tests need beyond the project's own requirements
TEST_REQUIREMENTS = ("pytest>=8", "pytest-timeout>=2.3", "httpx>=0.27")


def project_requirements() -> list[str]:
    """pyproject.toml's [project].dependencies."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    return list(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"])


def requirements() -> list[str]:
    """The project's runtime requirements plus the smoke tests'."""
    return project_requirements() + list(TEST_REQUIREMENTS)


def wheel_requirements(names: list[str]) -> list[str]:
    """``Requires-Dist`` (no extras, markers true here) of each installed distribution in ``names``."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    out = []
    for name in names:
        try:
            declared = requires(name) or []
        except PackageNotFoundError:
            continue  # reported as missing by its own line
        for text in declared:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                out.append(f"{req.name}{req.specifier}")
    return out


def wheel_names() -> list[str]:
    return list(pins())


def check(reqs: list[str]) -> list[tuple[str, str, str, bool]]:
    """(name, specifier, installed version or "missing", satisfied) per requirement."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement
    from packaging.version import Version

    rows = []
    for text in reqs:
        req = Requirement(text)
        try:
            have = version(req.name)
        except PackageNotFoundError:
            rows.append((req.name, str(req.specifier), "missing", False))
            continue
        # a local build tag (2.11.0+cu130) satisfies >=2.4 as its public version does
        ok = req.specifier.contains(Version(have).public, prereleases=True)
        rows.append((req.name, str(req.specifier), have, ok))
    return rows


def pins() -> dict[str, str]:
    """bench/gpu_wheels.txt as {name: version} (comments, also at the end of a line, dropped)."""
    lines = (ROOT / "bench" / "gpu_wheels.txt").read_text(encoding="utf-8").splitlines()
    pins = [ln.split("#", 1)[0].strip() for ln in lines]
    return dict(p.split("==", 1) for p in pins if p)


def wheel_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def main() -> int:
    print(f"Python {platform.python_version()} ({wheel_tag()}, {platform.machine()}) at {sys.executable}")
    try:
        import torch

        cuda = torch.cuda.is_available()
        where = f"CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}" if cuda else "no CUDA device"
        print(f"torch {torch.__version__}: {where}")
    except Exception as exc:  # noqa: BLE001 - reported, then the table says what is missing
        print(f"torch does not import: {type(exc).__name__}: {exc}")
    wheels = wheel_names()
    rows = check(requirements() + [f"{n}=={v}" for n, v in pins().items()])
    seen = {r[0].lower().replace("_", "-") for r in rows}
    for row in check(sorted(set(wheel_requirements(wheels)))):  # what the brought wheels need in turn
        key = row[0].lower().replace("_", "-")
        if key not in seen or not row[3]:
            rows.append(row)
            seen.add(key)
    width = max(len(r[0]) for r in rows)
    bad = []
    for name, spec, have, ok in rows:
        print(f"  {'ok ' if ok else 'BAD'} {name:<{width}} {spec or '(any)':<18} {have}")
        if not ok:
            bad.append(f"{name} {have} (needs {spec or 'any version'})")
    if bad:
        print(f"environment check FAILED: {len(bad)} requirement(s) not met: " + "; ".join(bad))
        print("add the wheel to bench/gpu_wheels.txt (then `bench/gpu_check.sh --download`), or pin what the "
              "image has")
        return 1
    print(f"environment check ok: {len(rows)} requirements met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


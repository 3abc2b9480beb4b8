"""Generate the Python stubs and type stubs in gen/ferry_proto from protos/.

The proto packages are `ferry.<service>.v1`; the generated Python lives under
the import name `ferry_proto.<service>.v1` so that it cannot clash with any
other distribution's top-level `ferry` package. protoc writes `from ferry.`
imports, which are rewritten here.

Usage: python tools/genproto.py [--check]
  --check  generate into a temp folder and fail if gen/ differs (used by CI).
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "gen" / "ferry_proto"
BIN = Path(sys.executable).parent
IMPORT_RE = re.compile(rb"\b(from|import) ferry\.(region|scheduler|host)\b")


def generate(dest: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ferry-gen-"))
    try:
        files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
        include = Path(grpc_tools.__file__).parent / "_proto"
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{PROTOS}", f"-I{include}",
            f"--python_out={tmp}", f"--grpc_python_out={tmp}",
            f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
            f"--mypy_out={tmp}", f"--mypy_grpc_out={tmp}",
            *files,
        ]
        subprocess.run(cmd, check=True, cwd=PROTOS)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(tmp / "ferry", dest)
        for path in dest.rglob("*"):
            if path.suffix in (".py", ".pyi"):
                path.write_bytes(IMPORT_RE.sub(rb"\1 ferry_proto.\2", path.read_bytes()))
        for folder in [dest, *[p for p in dest.rglob("*") if p.is_dir()]]:
            (folder / "__init__.py").touch()
        (dest / "py.typed").touch()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    return all(same_tree(a / d, b / d) for d in cmp.common_dirs if d != "__pycache__")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if not args.check:
        generate(OUT)
        print(f"generated {OUT.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "ferry_proto"
        generate(fresh)
        if not same_tree(fresh, OUT):
            print("gen/ferry_proto is stale: run `python tools/genproto.py`", file=sys.stderr)
            return 1
    print("gen/ferry_proto matches protos/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

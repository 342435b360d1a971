"""The committed generated code must match what grpcio-tools makes from the .proto files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"


def test_generated_code_matches_protos(tmp_path):
    protoc = pytest.importorskip("grpc_tools.protoc")
    sources = sorted((PROTOS / "tracemark" / "v1").glob("*.proto"))
    assert sources, "no .proto files found"
    shutil.copytree(PROTOS / "tracemark", tmp_path / "src" / "tracemark", ignore=shutil.ignore_patterns("*.py*"))
    out = tmp_path / "out"
    out.mkdir()
    for source in sources:
        rel = source.relative_to(PROTOS)
        code = protoc.main(
            ["protoc", f"-I{tmp_path / 'src'}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", str(rel)]
        )
        assert code == 0, f"protoc failed on {rel}"
    for generated in sorted((out / "tracemark" / "v1").glob("*_pb2*.py*")):
        committed = PROTOS / "tracemark" / "v1" / generated.name
        assert committed.exists(), f"{generated.name} is not committed: run `make proto`"
        assert committed.read_text() == generated.read_text(), f"{generated.name} drifted: run `make proto`"

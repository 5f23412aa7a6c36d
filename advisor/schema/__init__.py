"""Published JSON schemas of the --json documents.  Regenerate with `python -m advisor.schema`."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent


def schema_text(name: str) -> str:
    from ..report import SCHEMAS

    return json.dumps(SCHEMAS[name].model_json_schema(), indent=2, sort_keys=True) + "\n"


def write_all() -> list[Path]:
    from ..report import SCHEMAS

    written = []
    for name in SCHEMAS:
        path = HERE / f"{name}.schema.json"
        path.write_text(schema_text(name), encoding="utf-8")
        written.append(path)
    return written

"""Import rule-engine without paying for its parser tables.

rule-engine builds its LALR tables with ply when it is imported (~0.3 s, more than the rest of a
`--json` run).  ply first looks for a ready table module, ``rule_engine.parser.parsetab``, and uses it
when its grammar signature matches.  We ship that module (generated once from rule-engine's grammar)
and register it before the import.  With another rule-engine version whose grammar differs, the
signature does not match and ply builds the tables as usual: slower, never wrong.

Regenerate after a rule-engine upgrade:
    python -c "from advisor.engine.ruleengine import write_tables; write_tables('advisor/engine/_parsetab.py')"
"""

from __future__ import annotations

import sys
from types import ModuleType

TABLE_MODULE = "rule_engine.parser.parsetab"


def rule_engine() -> ModuleType:
    if "rule_engine" not in sys.modules and TABLE_MODULE not in sys.modules:
        from . import _parsetab

        sys.modules[TABLE_MODULE] = _parsetab
    import rule_engine as module

    return module


def write_tables(path: str) -> None:
    """Write ply's table module for the installed rule-engine grammar to ``path``."""
    import os
    import tempfile

    from rule_engine._vendor.ply import yacc
    from rule_engine.parser import Parser

    with tempfile.TemporaryDirectory() as tmp:
        yacc.yacc(module=Parser.__new__(Parser), debug=False, write_tables=True, outputdir=tmp, tabmodule="parsetab")
        text = open(os.path.join(tmp, "parsetab.py"), encoding="utf-8").read()
    import rule_engine as module

    header = (f"# Generated from rule-engine {module.__version__}'s grammar by ply (see advisor/engine/ruleengine.py); "
              "ply checks its\n# signature and rebuilds the tables itself when a different rule-engine grammar does not match.\n")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(header + text)

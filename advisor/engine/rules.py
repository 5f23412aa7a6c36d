"""Rule packs: YAML data, checked when loaded, evaluated with rule-engine over typed facts.

A rule cannot run code or reach Python objects: its condition is a rule-engine expression whose symbols
are typed OBJECT schemas (facts.py); an unknown fact or a type mismatch fails at load time with the file,
the line and the rule id.  See rules/README.md for the format.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import AdvisorError
from . import cache
from .facts import fact_names, flatten, type_schema
from .fastpath import from_ir, to_ir, valid_ir

SETTABLE = {"method": str, "precision": str, "optimizer": str, "targets": str, "rank": int, "attn": str,
            "grad_ckpt": bool, "sharding": str, "offload": str, "alpha_per_rank": float}

# Bounds on a rule pack: its size, each rule's text, and the work one condition may do.
MAX_PACK_BYTES = 1 << 20  # the default pack is ~8 KiB
MAX_RULES = 1_000
MAX_TEXT = 2_000  # description, because
MAX_WHEN = 1_000  # a condition: ~100 comparisons
MAX_NODES = 200  # parsed condition: nodes and depth
MAX_DEPTH = 32
MAX_SET_VALUES = 16


def _set_choices() -> dict[str, tuple]:
    from typing import get_args

    from ..memory import config

    return {"method": get_args(config.Method), "precision": get_args(config.Precision),
            "optimizer": get_args(config.Optimizer), "attn": get_args(config.Attention),
            "offload": get_args(config.Offload), "sharding": ("single", "ddp", "zero2", "zero3", "fsdp")}


def _check_set_value(key: str, value: Any) -> None:
    """A `set` value (or each of a list of them) has the field's type and is one of its choices."""
    values = value if isinstance(value, list) else [value]
    if not values or len(values) > MAX_SET_VALUES:
        raise ValueError(f"set: {key}: give one value or a list of 1 to {MAX_SET_VALUES}")
    kind, choices = SETTABLE[key], _set_choices().get(key)
    for item in values:
        ok = isinstance(item, kind) and not (kind is not bool and isinstance(item, bool))
        if kind is float:
            ok = isinstance(item, (int, float)) and not isinstance(item, bool) and 0 < item <= 1000
        elif kind is int:
            ok = ok and 1 <= item <= 4096
        elif kind is str:
            ok = ok and 0 < len(item) <= 200
        if not ok:
            raise ValueError(f"set: {key}: {str(item)[:40]!r} is not a {kind.__name__} within its range")
        if choices is not None and item not in choices:
            raise ValueError(f"set: {key}: {str(item)[:40]!r} is not one of {', '.join(choices)}")


class RuleError(AdvisorError):
    """A rule pack that cannot be loaded."""


class RuleSpec(BaseModel):
    """One rule, as written in YAML."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=100)
    description: str = Field("", max_length=MAX_TEXT)
    priority: int = Field(50, ge=-1_000_000, le=1_000_000, description="Lower runs first; a later `set` overrides an earlier one.")
    scope: Literal["plan", "candidate"] | None = None
    when: str = Field("true", max_length=MAX_WHEN, description="rule-engine expression over gpu.*, model.*, goals.* (and candidate.*)")
    set: dict[str, Any] | None = Field(None, max_length=len(SETTABLE), description="plan scope: fix (value) or restrict (list) config fields")
    forbid: bool = False
    prefer: float | None = Field(None, ge=-1.0, le=100.0, allow_inf_nan=False,
                                 description="candidate scope: multiply the candidate's score by (1 + prefer)")
    warn: bool = False
    because: str = Field(max_length=MAX_TEXT)

    @model_validator(mode="after")
    def _one_action(self) -> "RuleSpec":
        actions = [self.set is not None, self.forbid, self.prefer is not None, self.warn]
        if sum(actions) != 1:
            raise ValueError("give exactly one action: set, forbid, prefer or warn")
        if self.scope is None:
            self.scope = "candidate" if (self.forbid or self.prefer is not None) else "plan"
        if self.set is not None:
            if self.scope != "plan":
                raise ValueError("set applies to the whole plan (scope: plan)")
            for key, value in self.set.items():
                if key not in SETTABLE:
                    raise ValueError(f"set: unknown field {str(key)[:40]!r} (settable: {', '.join(sorted(SETTABLE))})")
                _check_set_value(key, value)
        return self


@dataclass
class Rule:
    spec: RuleSpec
    source: str  # "file:line"
    compiled: Any = field(repr=False, default=None)  # the rule_engine.Rule (compiled when first needed after a cache hit)
    ir: Any = field(repr=False, default=None)  # fastpath intermediate form; None where the fast path does not apply
    fast: Any = field(repr=False, default=None)  # the closures built from `ir`

    def __post_init__(self) -> None:
        if self.ir is None and self.compiled is not None:
            self.ir = to_ir(self.compiled)
        if self.fast is None and self.ir is not None:
            self.fast = from_ir(self.ir)

    @property
    def id(self) -> str:
        return self.spec.id

    def matches(self, things: dict[str, object]) -> bool:
        if self.fast is not None:
            try:
                return bool(self.fast(things))
            except KeyError:
                pass  # a fact is missing: rule-engine's own evaluation reports it
        if self.compiled is None:
            self.compiled = _compile(self.spec, self.source)
        return bool(self.compiled.matches(things))

    def sentence(self, things: dict[str, object]) -> str:
        return render_because(self.spec.because, flatten(things))


_PLACEHOLDER = re.compile(r"\{([a-z_]+\.[a-z_0-9]+)\}")


def render_because(template: str, flat: dict[str, object]) -> str:
    """Fill {gpu.vram_gib}-style placeholders with fact values (numbers to one decimal)."""
    def value(match: re.Match) -> str:
        name = match.group(1)
        v = flat.get(name, "?")
        if isinstance(v, float) and name.endswith(("_share", "_frac")):
            return f"{v:.0%}"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:,.1f}"
        return str(v)

    return _PLACEHOLDER.sub(value, template)


def _suggest(word: str) -> str:
    close = difflib.get_close_matches(word, fact_names(), n=3)
    return ("did you mean " + ", ".join(close) + "?") if close else "see rules/README.md for the facts"


@lru_cache(maxsize=2)
def _context(include_candidate: bool):
    """One typed context per scope: plan rules see gpu/model/goals, candidate rules also candidate."""
    from .ruleengine import rule_engine as load

    rule_engine = load()
    schema = type_schema(include_candidate=include_candidate)
    return rule_engine.Context(type_resolver=rule_engine.type_resolver_from_dict(schema))


_STRING = re.compile(r"'(?:[^'\\]|\\.)*'" + r'|"(?:[^"\\]|\\.)*"')
# What a condition may not do, found in its text before rule-engine parses it (rule-engine folds constant
# expressions while parsing, so `'aaaa!' =~ '(a+)+$'` would already backtrack for minutes there).
_REFUSED_TOKENS = (
    ("$", "calls a builtin ($range, $sum, $random, ...): rules cannot call functions",
     "compare facts with literals: `goals.seq_len > 4096`"),
    ("=~", "matches a regular expression: rules may not (a pattern can take exponential time)",
     "compare with == or `in [\"a\", \"b\"]`"),
    ("!~", "matches a regular expression: rules may not (a pattern can take exponential time)",
     "compare with != or `not (x in [...])`"),
    ("**", "raises to a power: rules may not", "compare the facts directly"),
    ("/", "divides: rules may not (a fact can be 0)", "multiply out the comparison: `a > b * 0.9`, not `a / b > 0.9`"),
    ("%", "takes a remainder: rules may not (a fact can be 0)", "compare the facts directly"),
    ("?", "uses a conditional expression: rules may not", "write two rules, or `(a and b) or (not a and c)`"),
    (" for ", "uses a comprehension: rules may not", "compare facts with literals"),
    ("&", "uses a bitwise operator: rules may not", "use and / or"),
    ("|", "uses a bitwise operator: rules may not", "use and / or"),
    ("^", "uses a bitwise operator: rules may not", "use and / or"),
    ("<<", "uses a bitwise shift: rules may not", "compare the facts directly"),
    (">>", "uses a bitwise shift: rules may not", "compare the facts directly"),
)


def _prescan(spec: RuleSpec, where: str) -> None:
    code = _STRING.sub("''", spec.when)
    for token, what, hint in _REFUSED_TOKENS:
        if token in code:
            raise RuleError(f"{where}: rule {spec.id!r}: `when` {what}", hint)
    depth = deepest = 0
    for char in code:
        depth += (char in "([{") - (char in ")]}")
        deepest = max(deepest, depth)
    if deepest > MAX_DEPTH:
        raise RuleError(f"{where}: rule {spec.id!r}: `when` nests brackets {deepest} deep (at most {MAX_DEPTH})",
                        "split the condition into several rules")


def _mixed(rule_engine: Any, left: Any, right: Any) -> bool:
    """Two sides of == / != / in whose types are known and differ (a number and a string): always unequal."""
    DataType = rule_engine.DataType
    kinds = []
    for side in (left, right):
        kind = next((k for k in (DataType.FLOAT, DataType.STRING, DataType.BOOLEAN)
                     if DataType.is_type(side.result_type, k)), None)
        kinds.append(kind)
    return None not in kinds and kinds[0] is not kinds[1]


def _check_tree(rule_engine: Any, expression: Any, spec: RuleSpec, where: str) -> None:
    """Walk a parsed condition (without recursion): only comparisons of facts with literals, and / or / not,
    `in [...]`, + - * and unary minus; literals finite and short; at most MAX_NODES nodes, MAX_DEPTH deep."""
    ast = rule_engine.ast
    allowed = (ast.LogicExpression, ast.ComparisonExpression, ast.ArithmeticComparisonExpression, ast.ContainsExpression,
               ast.UnaryExpression, ast.GetAttributeExpression, ast.BooleanExpression, ast.FloatExpression,
               ast.StringExpression, ast.NullExpression, ast.AddExpression, ast.SubtractExpression,
               ast.ArithmeticExpression, ast.ArrayExpression)
    stack, nodes = [(expression, 1, None)], 0
    while stack:
        node, depth, parent = stack.pop()
        nodes += 1
        if nodes > MAX_NODES or depth > MAX_DEPTH:
            raise RuleError(f"{where}: rule {spec.id!r}: `when` is too large (more than {MAX_NODES} terms or "
                            f"{MAX_DEPTH} levels)", "split the condition into several rules")
        kind = type(node)
        refused = None
        if kind is ast.SymbolExpression:
            if node.scope is not None:
                refused = f"uses the builtin ${node.name}: rules cannot call functions"
            elif not isinstance(parent, ast.GetAttributeExpression):
                refused = f"uses {node.name!r} as a value: name one of its facts ({node.name}.…)"
        elif kind not in allowed:
            refused = f"uses {kind.__name__.removesuffix('Expression').lower() or kind.__name__}, which rules may not"
        elif kind is ast.ArithmeticExpression and node.type != "mul":
            refused = "divides or raises to a power: rules may not"
        elif kind in (ast.AddExpression, ast.SubtractExpression) and not rule_engine.DataType.is_type(
                node.result_type, rule_engine.DataType.FLOAT):
            refused = "adds strings: rules may only add numbers"
        elif kind is ast.ArrayExpression and not isinstance(parent, ast.ContainsExpression):
            refused = "uses an array outside `in [...]`"
        elif kind is ast.GetAttributeExpression and type(node.object) is not ast.SymbolExpression:
            refused = f"reads .{node.name} of something other than a fact"
        elif kind is ast.FloatExpression and not (node.value.is_finite() and abs(node.value) <= 10**15):
            refused = f"has the number {str(node.value)[:30]}, beyond what any fact holds"
        elif kind is ast.StringExpression and len(node.value) > 200:
            refused = "has a string literal longer than 200 characters"
        elif kind is ast.ComparisonExpression and _mixed(rule_engine, node.left, node.right):
            refused = "compares a number with a string (never equal): compare like with like"
        elif kind is ast.ContainsExpression and type(node.container) is ast.ArrayExpression and any(
                _mixed(rule_engine, node.member, item) for item in node.container.value):
            refused = "compares a number with a string (never equal): compare like with like"
        if refused:
            raise RuleError(f"{where}: rule {spec.id!r}: `when` {refused}", "see rules/README.md for what a rule may do")
        children = []
        if kind in (ast.LogicExpression, ast.ComparisonExpression, ast.ArithmeticComparisonExpression,
                    ast.AddExpression, ast.SubtractExpression, ast.ArithmeticExpression):
            children = [node.left, node.right]
        elif kind is ast.UnaryExpression:
            children = [node.right]
        elif kind is ast.ContainsExpression:
            children = [node.member, node.container]
        elif kind is ast.GetAttributeExpression:
            children = [node.object]
        elif kind is ast.ArrayExpression:
            children = list(node.value)
        stack.extend((child, depth + 1, node) for child in children)


def _compile(spec: RuleSpec, where: str):
    from .ruleengine import rule_engine as load

    _prescan(spec, where)
    rule_engine = load()
    context = _context(spec.scope == "candidate")
    try:
        rule = rule_engine.Rule(spec.when, context=context)
        _check_tree(rule_engine, rule.statement.expression, spec, where)
        return rule
    except RuleError:
        raise
    except RecursionError:
        raise RuleError(f"{where}: rule {spec.id!r}: `when` is nested too deeply", "split the condition") from None
    except rule_engine.errors.RuleSyntaxError as exc:
        raise RuleError(f"{where}: rule {spec.id!r}: syntax error in `when`: {exc.message}",
                        "rule-engine syntax: `gpu.vram_gib < 24 and model.params_b >= 7`") from None
    except rule_engine.errors.SymbolResolutionError as exc:
        raise RuleError(f"{where}: rule {spec.id!r}: unknown fact {exc.symbol_name!r}", _suggest(exc.symbol_name)) from None
    except rule_engine.errors.ObjectAttributeError as exc:
        name = f"{exc.object_.name}.{exc.attribute_name}" if hasattr(exc, "object_") else str(exc.args[0])
        raise RuleError(f"{where}: rule {spec.id!r}: unknown fact {name!r}", _suggest(name)) from None
    except rule_engine.errors.EvaluationError as exc:
        raise RuleError(f"{where}: rule {spec.id!r}: {exc.message} in `{spec.when}`",
                        "compare numbers with numbers and strings with quoted strings") from None
    except rule_engine.errors.EngineError as exc:
        raise RuleError(f"{where}: rule {spec.id!r}: {getattr(exc, 'message', exc)}", _suggest(spec.when)) from None
    except Exception as exc:  # rule-engine folds constants while parsing: an arithmetic error surfaces here
        raise RuleError(f"{where}: rule {spec.id!r}: `when` cannot be evaluated: {str(exc)[:80]}",
                        "compare facts with literals") from None


def _check_template(spec: RuleSpec, where: str) -> None:
    known = set(fact_names(include_candidate=spec.scope == "candidate"))
    for name in _PLACEHOLDER.findall(spec.because):
        if name not in known:
            raise RuleError(f"{where}: rule {spec.id!r}: `because` names unknown fact {{{name}}}", _suggest(name))


def load_rules_text(text: str, source: str) -> list[Rule]:
    """Parse, validate and compile one YAML rule pack (or take it from the compiled-rules cache)."""
    cached = cache.read(text, source)
    if cached is not None:
        try:
            if len(cached) <= MAX_RULES and all(valid_ir(entry["ir"]) and isinstance(entry["source"], str)
                                                for entry in cached):
                return [Rule(RuleSpec.model_validate(entry["spec"]), entry["source"], ir=entry["ir"]) for entry in cached]
        except (KeyError, TypeError, ValueError, IndexError, RecursionError):
            pass  # a cache file from something else: compile afresh (and overwrite it)
    rules = _load_rules_text(text, source)
    cache.write(text, source, [{"spec": rule.spec.model_dump(mode="json"), "source": rule.source, "ir": rule.ir}
                               for rule in rules])
    return rules


def _load_rules_text(text: str, source: str) -> list[Rule]:
    from ..bounded import load_yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when PyYAML has it: ~20x faster
    # bounded before anything is built: depth, alias expansion, finite numbers of sane length
    data = load_yaml(text, source, what="rule pack", error=RuleError)
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise RuleError(f"{source}: expected a mapping with a `rules:` list", "see rules/README.md")
    if len(data["rules"]) > MAX_RULES:
        raise RuleError(f"{source}: {len(data['rules']):,} rules (at most {MAX_RULES:,})", "split the pack")
    root = yaml.compose(text, Loader=loader)
    items = root.value[[k.value for k, _ in root.value].index("rules")][1].value
    rules, seen = [], set()
    for raw, node in zip(data["rules"], items):
        where = f"{source}:{node.start_mark.line + 1}"
        rule_id = str(raw.get("id", "?"))[:40] if isinstance(raw, dict) else "?"
        try:
            spec = RuleSpec.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "rule"
            raise RuleError(f"{where}: rule {rule_id!r}: {loc}: {err['msg'].removeprefix('Value error, ')}",
                            "see rules/README.md for the rule format") from None
        if spec.id in seen:
            raise RuleError(f"{where}: rule id {spec.id!r} appears twice in {source}", "rule ids are unique per file")
        seen.add(spec.id)
        _check_template(spec, where)
        rules.append(Rule(spec, where, _compile(spec, where)))
    return rules


def load_rules_file(path: Path) -> list[Rule]:
    """A rule pack from a file: a regular UTF-8 file of at most 1 MiB (a binary, /dev/zero or a FIFO is refused
    before it is read)."""
    from ..bounded import read_text

    text = read_text(path, MAX_PACK_BYTES, what="rule pack", hint="give a YAML rule pack (see rules/README.md)",
                     error=RuleError)
    return load_rules_text(text, str(path))


def default_rules() -> list[Rule]:
    """The shipped pack: rules/ inside the wheel (advisor/rules), else the checkout's rules/."""
    packaged = resources.files("advisor").joinpath("rules")
    if packaged.is_dir():
        files = sorted((p for p in packaged.iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name)
        return [r for f in files for r in load_rules_text(f.read_text(encoding="utf-8"), f"rules/{f.name}")]
    checkout = Path(__file__).resolve().parents[2] / "rules"
    return [r for f in sorted(checkout.glob("*.yaml")) for r in load_rules_file(f)]


def merge(base: list[Rule], extra: list[Rule]) -> list[Rule]:
    """User rules add to the pack; one with an existing id replaces it."""
    by_id = {rule.id: rule for rule in base}
    for rule in extra:
        by_id[rule.id] = rule
    return sorted(by_id.values(), key=lambda r: r.spec.priority)


@lru_cache(maxsize=1)
def cached_default_rules() -> tuple[Rule, ...]:
    """The default pack, compiled once per process (the TUI re-plans on every change)."""
    return tuple(sorted(default_rules(), key=lambda r: r.spec.priority))

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
from .fastpath import from_ir, to_ir

SETTABLE = {"method": str, "precision": str, "optimizer": str, "targets": str, "rank": int, "attn": str,
            "grad_ckpt": bool, "sharding": str, "offload": str, "alpha_per_rank": float}


class RuleError(AdvisorError):
    """A rule pack that cannot be loaded."""


class RuleSpec(BaseModel):
    """One rule, as written in YAML."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    description: str = ""
    priority: int = Field(50, description="Lower runs first; a later `set` overrides an earlier one.")
    scope: Literal["plan", "candidate"] | None = None
    when: str = Field("true", description="rule-engine expression over gpu.*, model.*, goals.* (and candidate.*)")
    set: dict[str, Any] | None = Field(None, description="plan scope: fix (value) or restrict (list) config fields")
    forbid: bool = False
    prefer: float | None = Field(None, description="candidate scope: multiply the candidate's score by (1 + prefer)")
    warn: bool = False
    because: str

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
                    raise ValueError(f"set: unknown field {key!r} (settable: {', '.join(sorted(SETTABLE))})")
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


def _compile(spec: RuleSpec, where: str):
    from .ruleengine import rule_engine as load

    rule_engine = load()
    context = _context(spec.scope == "candidate")
    try:
        return rule_engine.Rule(spec.when, context=context)
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
            return [Rule(RuleSpec.model_validate(entry["spec"]), entry["source"], ir=entry["ir"]) for entry in cached]
        except (KeyError, TypeError, ValueError, IndexError):
            pass  # a cache file from something else: compile afresh (and overwrite it)
    rules = _load_rules_text(text, source)
    cache.write(text, source, [{"spec": rule.spec.model_dump(mode="json"), "source": rule.source, "ir": rule.ir}
                               for rule in rules])
    return rules


def _load_rules_text(text: str, source: str) -> list[Rule]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when PyYAML has it: ~20x faster
    try:
        data = yaml.load(text, Loader=loader)
        root = yaml.compose(text, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise RuleError(f"{source}{line}: invalid YAML: {getattr(exc, 'problem', exc)}", "check the indentation and quoting") from None
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise RuleError(f"{source}: expected a mapping with a `rules:` list", "see rules/README.md")
    items = root.value[[k.value for k, _ in root.value].index("rules")][1].value
    rules, seen = [], set()
    for raw, node in zip(data["rules"], items):
        where = f"{source}:{node.start_mark.line + 1}"
        rule_id = raw.get("id", "?") if isinstance(raw, dict) else "?"
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
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RuleError(f"cannot read rules file {path}: {exc.strerror}", "check the path given to --rules") from None
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

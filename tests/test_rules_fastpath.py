"""The rule fast path (advisor/engine/fastpath.py) against its oracle: rule-engine's own evaluator, on
random expressions over the real facts and random fact values (including values equal to the literals,
where Decimal-vs-float and type-strict equality differ)."""

import dataclasses

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from advisor.engine.facts import FACT_CLASSES
from advisor.engine.fastpath import fast_evaluator
from advisor.engine.rules import _context, default_rules
from advisor.engine.ruleengine import rule_engine
from advisor.hardware import hardware_for
from advisor.models import resolve_model
from advisor.planner import Goals, make_plan

CLASSES = FACT_CLASSES  # every namespace rules can see
FIELDS = {(prefix, f.name): f.type for prefix, cls in CLASSES.items() for f in dataclasses.fields(cls)}
NUMERIC = [f"{p}.{n}" for (p, n), t in FIELDS.items() if t in ("int", "float")]
STRINGS = [f"{p}.{n}" for (p, n), t in FIELDS.items() if t == "str"]
BOOLS = [f"{p}.{n}" for (p, n), t in FIELDS.items() if t == "bool"]
# literals the facts below can hit exactly (so equality and boundaries are exercised)
NUMBERS = [0, 1, 2, 0.1, 0.10, 0.25, 8.0, 16, 24.0, 1e-3, 7.5, 1e20]
WORDS = ["lora", "qlora", "full", "adamw", "fsdp", "zero3", "none", "llama", "auto", ""]


def _literal_number(x) -> str:
    return repr(x) if isinstance(x, float) else str(x)


def _expressions():
    numeric = st.one_of(st.sampled_from(NUMERIC), st.sampled_from(NUMBERS).map(_literal_number),
                        st.sampled_from(NUMERIC).map(lambda name: f"-{name}"))
    word = st.one_of(st.sampled_from(STRINGS), st.sampled_from(WORDS).map(lambda w: f'"{w}"'))
    array = st.lists(st.one_of(st.sampled_from(WORDS).map(lambda w: f'"{w}"'), st.sampled_from(NUMBERS).map(_literal_number),
                               st.just("null"), st.just("true")), max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]")
    atom = st.one_of(
        st.tuples(numeric, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), numeric).map(" ".join),
        st.tuples(word, st.sampled_from(["==", "!="]), st.one_of(word, numeric)).map(" ".join),
        st.tuples(st.one_of(word, numeric), st.just("in"), array).map(" ".join),
        st.tuples(st.sampled_from(BOOLS + ["true", "false", "null"]), st.sampled_from(["==", "!="]),
                  st.one_of(st.sampled_from(BOOLS + ["true", "null"]), numeric, word)).map(" ".join),
        st.sampled_from(BOOLS), st.sampled_from(["true", "false"]),
    )
    return st.recursive(atom, lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        inner.map(lambda e: f"not ({e})")), max_leaves=6)


def _facts(draw_value):
    things = {}
    for prefix, cls in CLASSES.items():
        values = {}
        for f in dataclasses.fields(cls):
            values[f.name] = draw_value(f.type)
        things[prefix] = cls(**values)
    return things


@st.composite
def _things(draw):
    def value(kind):
        if kind == "bool":
            return draw(st.booleans())
        if kind == "str":
            return draw(st.sampled_from(WORDS))
        if kind == "int":
            return draw(st.one_of(st.sampled_from([0, 1, 2, 8, 16, 24]), st.integers(-10**6, 10**6)))
        return draw(st.one_of(st.sampled_from([0.0, 0.1, 0.25, 8.0, 24.0, 1e-3, 7.5, 1e20, -0.1]),
                              st.floats(allow_nan=False, allow_infinity=False)))
    return _facts(value)


def _outcome(evaluate, things):
    try:
        return ("value", bool(evaluate(things)))
    except Exception as exc:  # the two must fail alike too (an ordered comparison across types)
        return ("error", type(exc).__name__)


@settings(max_examples=400, deadline=None)
@given(expression=_expressions(), things=_things())
def test_fast_path_agrees_with_rule_engine(expression, things):
    module = rule_engine()
    try:
        rule = module.Rule(expression, context=_context(True))
    except module.errors.EngineError:
        assume(False)  # a type error rule-engine refuses at load: never evaluated
    fast = fast_evaluator(rule)
    assert fast is not None, f"not translated: {expression}"
    assert _outcome(fast, things) == _outcome(rule.evaluate, things), expression


def test_unsupported_nodes_keep_rule_engine():
    module = rule_engine()
    for text in ("candidate.need_gib * 2 > candidate.usable_gib", "candidate.method =~ 'lo.*'",
                 "(candidate.fits ? candidate.rank : 0) > 8", "candidate.method in candidate.targets"):
        assert fast_evaluator(module.Rule(text, context=_context(True))) is None, text


def test_every_default_rule_takes_the_fast_path():
    assert [rule.id for rule in default_rules() if rule.fast is None] == []


@pytest.mark.parametrize("model, gpu, seq, method", [
    ("llama-2-7b", "rtx4090", 2048, "auto"), ("llama-3.1-8b", "a100-80gb", 4096, "auto"),
    ("qwen2.5-7b", "t4", 1024, "auto"), ("gemma-2-2b", "2x4090", 2048, "auto"), ("llama-3.1-8b", "4090", 8192, "qlora")])
def test_plans_are_the_same_with_rule_engine_evaluating(model, gpu, seq, method):
    arch, hw = resolve_model(model), hardware_for(gpu)
    goals = Goals(seq_len=seq, gpus=hw.count, method=method)
    rules = sorted(default_rules(), key=lambda r: r.spec.priority)
    fast = make_plan(arch, hw, goals, rules)
    slow_rules = [dataclasses.replace(rule) for rule in rules]
    for rule in slow_rules:
        rule.fast = None  # matches() falls back to rule-engine (compiling the rule if it came from the cache)
    slow = make_plan(arch, hw, goals, slow_rules)
    assert fast.model_dump() == slow.model_dump()

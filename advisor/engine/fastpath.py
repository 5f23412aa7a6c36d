"""A faster evaluator for the rules rule-engine has already parsed and type-checked.

rule-engine walks its AST for every evaluation (~17 us a rule on our facts); the planner asks ~4,000
times a plan, which made rule evaluation a third of `lora-advisor --json`.  This module turns the
checked AST of a rule into a small intermediate form (nested lists, JSON-safe, so a rule pack's compiled
form can be cached on disk: see rules.py) and that form into nested Python closures with the same
semantics, node by node, as rule-engine 5.x's own ``evaluate`` methods: numbers compared as ``Decimal``
after rule-engine's coercion (``Decimal(repr(float))``, ``Decimal(int)``), ``==`` false across types,
ordered comparisons raising on a type mismatch, ``and``/``or``/``not`` on truthiness.

Only the node kinds the rule packs use are translated: and/or/not, unary minus, == != < <= > >=,
``in`` over a literal array, attribute access on a symbol (``candidate.need_gib``) and scalar literals.
A rule with anything else (arithmetic, regexes, ternaries, functions, comprehensions, builtins) gets no
intermediate form and keeps rule-engine's evaluator, so the fast path can only be faster, never
different.  A test compares the two on random expressions and random facts (tests/test_rules_fastpath.py).

rule-engine remains the parser, the type checker and the sandbox: nothing here sees a rule's text, and
the closures only read the attributes the type checker allowed.
"""

from __future__ import annotations

import decimal
import operator
from typing import Any, Callable

Evaluator = Callable[[dict], Any]
IR = list  # ["and", a, b] | ["or", a, b] | ["not", a] | ["neg", a] | ["eq"|"ne"|"ge"|"gt"|"le"|"lt", a, b]
#            | ["in", member, [literal, ...]] | ["attr", symbol, name, "float"|"bool"|"str"] | literal
# literal: ["lit", "float", "<decimal text>"] | ["lit", "str", text] | ["lit", "bool", bool] | ["lit", "null", None]

_ORDERED = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}


class _Unsupported(Exception):
    """A node this translator does not cover: the rule keeps rule-engine's evaluator."""


def fast_evaluator(rule: Any) -> Evaluator | None:
    """A closure equivalent to ``rule.evaluate`` (a compiled ``rule_engine.Rule``), or None."""
    ir = to_ir(rule)
    return None if ir is None else from_ir(ir)


# --- rule-engine AST -> intermediate form (needs rule-engine) --------------------------------------------

def to_ir(rule: Any) -> IR | None:
    """The intermediate form of a compiled ``rule_engine.Rule``, or None when it uses other nodes."""
    from .ruleengine import rule_engine

    try:
        return _Translator(rule_engine()).node(rule.statement.expression)
    except _Unsupported:
        return None


class _Translator:
    def __init__(self, module: Any) -> None:
        self.ast = module.ast
        self.DataType = module.DataType

    def literal(self, n: Any) -> IR:
        ast = self.ast
        kind = type(n)
        if kind is ast.FloatExpression:
            return ["lit", "float", str(n.value)]  # a Decimal: its text round-trips exactly
        if kind is ast.StringExpression:
            return ["lit", "str", n.value]
        if kind is ast.BooleanExpression:
            return ["lit", "bool", n.value]
        if kind is ast.NullExpression:
            return ["lit", "null", None]
        raise _Unsupported(kind.__name__)

    def node(self, n: Any) -> IR:
        ast, DataType = self.ast, self.DataType
        kind = type(n)
        if kind in (ast.BooleanExpression, ast.FloatExpression, ast.StringExpression, ast.NullExpression):
            return self.literal(n)
        if kind is ast.GetAttributeExpression:
            return self.attribute(n)
        if kind is ast.LogicExpression and n.type in ("and", "or"):
            return [n.type, self.node(n.left), self.node(n.right)]
        if kind is ast.ComparisonExpression and n.type in ("eq", "ne"):
            return [n.type, self.node(n.left), self.node(n.right)]
        if kind is ast.ArithmeticComparisonExpression and n.type in _ORDERED:
            if DataType.is_type(n.left.result_type, DataType.ARRAY) or DataType.is_type(n.right.result_type, DataType.ARRAY):
                raise _Unsupported("ordered comparison of arrays")
            return [n.type, self.node(n.left), self.node(n.right)]
        if kind is ast.ContainsExpression:
            if type(n.container) is not ast.ArrayExpression:
                raise _Unsupported("containment in something other than a literal array")
            return ["in", self.node(n.member), [self.literal(m) for m in n.container.value]]
        if kind is ast.UnaryExpression and n.type in ("not", "uminus"):
            return ["not" if n.type == "not" else "neg", self.node(n.right)]
        raise _Unsupported(kind.__name__)

    def attribute(self, n: Any) -> IR:
        """``symbol.attribute`` on a typed OBJECT fact (rule-engine: ``thing[symbol]``, then ``getattr``)."""
        ast, DataType = self.ast, self.DataType
        obj = n.object
        if type(obj) is not ast.SymbolExpression or obj.scope is not None or n.safe:
            raise _Unsupported("attribute of something other than a fact")
        if not DataType.is_type(obj.result_type, DataType.OBJECT) or n.name not in obj.result_type.attributes:
            raise _Unsupported("untyped attribute")
        kinds = {DataType.FLOAT: "float", DataType.BOOLEAN: "bool", DataType.STRING: "str"}
        kind = next((name for data_type, name in kinds.items() if obj.result_type.attributes[n.name] == data_type), None)
        if kind is None:
            raise _Unsupported("attribute of another type")
        return ["attr", obj.name, n.name, kind]


def valid_ir(ir: Any, max_nodes: int = 400, max_depth: int = 40) -> bool:
    """Whether ``ir`` (read back from the disk cache) is a form ``to_ir`` could have written: known operators,
    literals, and attributes that are facts; bounded in size and depth (walked without recursion)."""
    import dataclasses

    from .facts import FACT_CLASSES

    if ir is None:
        return True
    facts = {prefix: {f.name for f in dataclasses.fields(cls)} for prefix, cls in FACT_CLASSES.items()}
    stack, nodes = [(ir, 1)], 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes or depth > max_depth or not isinstance(node, list) or not node:
            return False
        op = node[0]
        if op == "lit":
            if len(node) != 3 or node[1] not in ("float", "str", "bool", "null"):
                return False
            if node[1] == "float":
                try:
                    if not isinstance(node[2], str) or len(node[2]) > 40 or not decimal.Decimal(node[2]).is_finite():
                        return False
                except decimal.InvalidOperation:
                    return False
        elif op == "attr":
            if (len(node) != 4 or node[1] not in facts or node[2] not in facts.get(node[1], ())
                    or node[3] not in ("float", "bool", "str")):
                return False
        elif op == "in":
            if len(node) != 3 or not isinstance(node[2], list) or len(node[2]) > 100:
                return False
            stack.append((node[1], depth + 1))
            stack.extend((item, depth + 1) for item in node[2])
        elif op in ("not", "neg"):
            if len(node) != 2:
                return False
            stack.append((node[1], depth + 1))
        elif op in ("and", "or", "eq", "ne", *_ORDERED):
            if len(node) != 3:
                return False
            stack.extend(((node[1], depth + 1), (node[2], depth + 1)))
        else:
            return False
    return True


# --- intermediate form -> closures (needs nothing but the facts) -------------------------------------------

def _to_decimal(value: Any) -> decimal.Decimal:
    """rule-engine's coercion of a number read from a fact (rule_engine.types.coercion._to_decimal)."""
    if isinstance(value, decimal.Decimal):
        return value
    if isinstance(value, int):
        return decimal.Decimal(int(value))
    return decimal.Decimal(repr(value))


def _mismatch() -> Exception:
    from .ruleengine import rule_engine

    return rule_engine().errors.EvaluationError("data type mismatch")


def _literal_value(ir: IR) -> Any:
    _, kind, value = ir
    return decimal.Decimal(value) if kind == "float" else value


def from_ir(ir: IR) -> Evaluator:
    op = ir[0]
    if op == "lit":
        value = _literal_value(ir)
        return lambda thing: value
    if op == "attr":
        _, symbol, name, kind = ir
        if kind == "float":
            return lambda thing: _to_decimal(getattr(thing[symbol], name))
        return lambda thing: getattr(thing[symbol], name)
    if op == "in":
        member, values = from_ir(ir[1]), tuple(_literal_value(v) for v in ir[2])
        return lambda thing: member(thing) in values
    if op == "not":
        right = from_ir(ir[1])
        return lambda thing: not right(thing)
    if op == "neg":
        right = from_ir(ir[1])
        return lambda thing: -right(thing)  # the operand is numeric: checked when the rule was parsed
    left, right = from_ir(ir[1]), from_ir(ir[2])
    if op == "and":
        return lambda thing: bool(left(thing) and right(thing))
    if op == "or":
        return lambda thing: bool(left(thing) or right(thing))
    if op == "eq":
        def eq(thing: dict) -> bool:
            a, b = left(thing), right(thing)
            return type(a) is type(b) and a == b
        return eq
    if op == "ne":
        def ne(thing: dict) -> bool:
            a, b = left(thing), right(thing)
            return type(a) is not type(b) or a != b
        return ne
    compare, equal_counts = _ORDERED[op], op in ("ge", "le")

    def ordered(thing: dict) -> bool:
        a, b = left(thing), right(thing)
        if a is None and b is None:
            return equal_counts
        if type(a) is not type(b):
            raise _mismatch()
        return compare(a, b)
    return ordered

"""A faster evaluator for the rules rule-engine has already parsed and type-checked.

rule-engine walks its AST for every evaluation (~17 us a rule on our facts); the planner asks ~4,000
times a plan, which made rule evaluation a third of `lora-advisor --json`.  This module turns the
checked AST of a rule into nested Python closures with the same semantics, node by node, as rule-engine
5.x's own ``evaluate`` methods (numbers compared as ``Decimal`` after rule-engine's own coercion, ``==``
false across types, ordered comparisons raising on a type mismatch, ``and``/``or``/``not`` on truthiness).

Only the node kinds the rule packs use are translated: and/or/not, unary minus, == != < <= > >=,
``in`` over a literal array, attribute access on a symbol (``candidate.need_gib``) and literals.  A rule
with anything else (arithmetic, regexes, ternaries, functions, comprehensions, builtins) returns None
here and keeps rule-engine's evaluator, so the fast path can only be faster, never different.  A test
compares the two on random expressions and random facts (tests/test_rules_fastpath.py).

rule-engine remains the parser, the type checker and the sandbox: nothing here sees a rule's text.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

Evaluator = Callable[[dict], Any]

_ORDERED = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}


class _Unsupported(Exception):
    """A node this translator does not cover: the rule keeps rule-engine's evaluator."""


def fast_evaluator(rule: Any) -> Evaluator | None:
    """A closure equivalent to ``rule.evaluate`` (a compiled ``rule_engine.Rule``), or None."""
    from .ruleengine import rule_engine

    try:
        return _Translator(rule_engine()).node(rule.statement.expression)
    except _Unsupported:
        return None


class _Translator:
    def __init__(self, module: Any) -> None:
        self.ast = module.ast
        self.DataType = module.DataType
        self.errors = module.errors
        from rule_engine.types import coerce_value

        self.coerce = coerce_value

    def node(self, n: Any) -> Evaluator:
        ast = self.ast
        kind = type(n)
        if kind in (ast.BooleanExpression, ast.FloatExpression, ast.StringExpression, ast.NullExpression):
            value = n.value
            return lambda thing: value
        if kind is ast.ArrayExpression:
            scalars = (ast.BooleanExpression, ast.FloatExpression, ast.StringExpression, ast.NullExpression)
            if not all(type(m) in scalars for m in n.value):
                raise _Unsupported("array with members that are not scalar literals")
            values = tuple(m.value for m in n.value)
            return lambda thing: values
        if kind is ast.GetAttributeExpression:
            return self.attribute(n)
        if kind is ast.LogicExpression:
            left, right = self.node(n.left), self.node(n.right)
            if n.type == "and":
                return lambda thing: bool(left(thing) and right(thing))
            if n.type == "or":
                return lambda thing: bool(left(thing) or right(thing))
        if kind is ast.ComparisonExpression:
            return self.equality(n)
        if kind is ast.ArithmeticComparisonExpression:
            return self.ordered(n)
        if kind is ast.ContainsExpression:
            return self.contains(n)
        if kind is ast.UnaryExpression:
            right = self.node(n.right)
            if n.type == "not":
                return lambda thing: not right(thing)
            if n.type == "uminus":
                return lambda thing: -right(thing)  # the operand is numeric: checked when the rule loaded
        raise _Unsupported(kind.__name__)

    def attribute(self, n: Any) -> Evaluator:
        """``symbol.attribute`` on a typed OBJECT fact: rule-engine resolves the symbol as ``thing[name]``
        and fetches the attribute with ``getattr``, then coerces the value (ints and floats to Decimal)."""
        ast, DataType = self.ast, self.DataType
        obj = n.object
        if type(obj) is not ast.SymbolExpression or obj.scope is not None or n.safe:
            raise _Unsupported("attribute of something other than a fact")
        if not DataType.is_type(obj.result_type, DataType.OBJECT) or n.name not in obj.result_type.attributes:
            raise _Unsupported("untyped attribute")
        symbol, name = obj.name, n.name
        kind = obj.result_type.attributes[name]
        if kind in (DataType.BOOLEAN, DataType.STRING):
            return lambda thing: getattr(thing[symbol], name)
        if kind == DataType.FLOAT:
            coerce = self.coerce
            return lambda thing: coerce(getattr(thing[symbol], name), verify_type=False)
        raise _Unsupported(f"attribute of type {kind}")

    def equality(self, n: Any) -> Evaluator:
        left, right = self.node(n.left), self.node(n.right)
        if n.type == "eq":
            def eq(thing: dict) -> bool:
                a, b = left(thing), right(thing)
                return type(a) is type(b) and a == b
            return eq
        if n.type == "ne":
            def ne(thing: dict) -> bool:
                a, b = left(thing), right(thing)
                return type(a) is not type(b) or a != b
            return ne
        raise _Unsupported(n.type)

    def ordered(self, n: Any) -> Evaluator:
        DataType = self.DataType
        if DataType.is_type(n.left.result_type, DataType.ARRAY) or DataType.is_type(n.right.result_type, DataType.ARRAY):
            raise _Unsupported("ordered comparison of arrays")
        if n.type not in _ORDERED:
            raise _Unsupported(n.type)
        op, left, right = _ORDERED[n.type], self.node(n.left), self.node(n.right)
        mismatch = self.errors.EvaluationError
        equal_counts = n.type in ("ge", "le")

        def compare(thing: dict) -> bool:
            a, b = left(thing), right(thing)
            if a is None and b is None:
                return equal_counts
            if type(a) is not type(b):
                raise mismatch("data type mismatch")
            return op(a, b)
        return compare

    def contains(self, n: Any) -> Evaluator:
        if type(n.container) is not self.ast.ArrayExpression:
            raise _Unsupported("containment in something other than a literal array")
        container, member = self.node(n.container), self.node(n.member)
        return lambda thing: member(thing) in container(thing)

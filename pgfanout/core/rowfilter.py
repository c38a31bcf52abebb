"""Row filters: SQL boolean expressions parsed by sqlglot, evaluated over decoded rows.

A filter is parsed once when the config is loaded (``parse_filter``): anything but the
small supported language is refused there, with the expression and the reason. It is
compiled against a table layout (``compile_filter``) when its column types are known:
that is where unknown columns and type mismatches are refused. The compiled filter is a
tree of closures; nothing is ever passed to ``eval``.

Semantics follow PostgreSQL's for the same row, three-valued logic included: NULL
compares to nothing, ``NULL AND FALSE`` is FALSE, ``x IN (1, NULL)`` is NULL when x is
not 1, and a row passes only when its filter is TRUE. Numeric and float NaN equal
themselves and sort above every other value, as in PostgreSQL. Text orders by code
point, which is PostgreSQL's order under the C collation (and the same for equality,
LIKE and IN under any deterministic collation). Timestamps without a zone in literals
are read as UTC, the time zone the capture triggers write in.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp

from pgfanout.core.errors import FilterError
from pgfanout.core.sqlvalues import (
    BOOL,
    FLOAT,
    NAN,
    NULL,
    NUMBER_LITERAL,
    TESTS,
    TYPE_KINDS,
    UNKNOWN,
    Kind,
    compare_values,
    fold_case,
    kind_of_type,
    like_regex,
    parse_int,
    parse_numeric,
    to_float,
)

Value = Any  # a decoded SQL value; None is NULL
Evaluate = Callable[[Sequence[str | None]], Value]


# -- the parsed form ---------------------------------------------------------------

COMPARISONS = {exp.EQ: "=", exp.NEQ: "<>", exp.LT: "<", exp.LTE: "<=", exp.GT: ">", exp.GTE: ">="}
FUNCTIONS = {exp.Lower: "lower", exp.Upper: "upper", exp.Length: "length", exp.Abs: "abs", exp.Coalesce: "coalesce"}
ALLOWED = (
    exp.And,
    exp.Or,
    exp.Not,
    exp.Paren,
    exp.Column,
    exp.Identifier,
    exp.Literal,
    exp.Boolean,
    exp.Null,
    exp.In,
    exp.Between,
    exp.Is,
    exp.Like,
    exp.ILike,
    exp.Escape,
    exp.Neg,
    exp.NullSafeEQ,
    exp.NullSafeNEQ,
    *COMPARISONS,
    *FUNCTIONS,
)


@dataclass(frozen=True)
class RowFilter:
    text: str
    tree: exp.Expression
    columns: frozenset[str]

    def sql(self) -> str:
        """The filter as PostgreSQL SQL (regenerated from the parse tree, so only what was validated)."""
        return self.tree.sql(dialect="postgres")


def column_name(identifier: exp.Column) -> str:
    """PostgreSQL folds unquoted identifiers to lower case."""
    ident = identifier.this
    return ident.this if ident.quoted else ident.this.lower()


def parse_filter(text: str) -> RowFilter:
    try:
        tree = sqlglot.parse_one(text, dialect="postgres")
    except sqlglot.errors.SqlglotError as exc:
        raise FilterError(text, f"not a valid SQL expression: {str(exc).splitlines()[0]}") from None
    columns = set()
    for node in tree.walk():
        if not isinstance(node, ALLOWED):
            raise FilterError(
                text,
                f"{node.key.upper()} ({node.sql(dialect='postgres')}) is not supported; filters "
                "may use columns, constants, comparisons, AND/OR/NOT, IN, BETWEEN, IS [NOT] NULL, "
                "IS [NOT] DISTINCT FROM, [I]LIKE, lower, upper, length, abs and coalesce",
            )
        if isinstance(node, exp.Column):
            if node.table:
                raise FilterError(text, f"{node.sql()}: name columns without a table")
            columns.add(column_name(node))
        if isinstance(node, exp.Neg) and not isinstance(node.this, exp.Literal):
            raise FilterError(text, f"{node.sql()}: only constants may be negated")
        if isinstance(node, exp.Is) and not isinstance(node.expression, (exp.Null, exp.Boolean)):
            raise FilterError(text, f"{node.sql()}: IS takes NULL, TRUE or FALSE")
    return RowFilter(text, tree, frozenset(columns))


# -- compiling ----------------------------------------------------------------------


@dataclass
class Compiled:
    kind: Kind
    evaluate: Evaluate
    constant: str | None = None  # for string constants: their text, typed once the other side is known
    padded_to: int | None = None  # a character(n) column: LIKE sees its value padded with spaces to n
    column: tuple[int, Callable[[str], Any]] | None = None  # a bare column: (its index, its parser)
    value: tuple[Any] | None = None  # a typed constant: (its value,)


class _Compiler:
    def __init__(self, row_filter: RowFilter, columns: Sequence[str], types: Sequence[str]):
        self.filter = row_filter
        self.index = {name: i for i, name in enumerate(columns)}
        self.types = types

    def fail(self, node: exp.Expression, reason: str) -> FilterError:
        return FilterError(self.filter.text, f"{node.sql(dialect='postgres')}: {reason}")

    def boolean(self, node: exp.Expression) -> Evaluate:
        compiled = self.node(node)
        if compiled.kind.name == "null":
            return compiled.evaluate
        if compiled.kind.name == "unknown":
            value = self.typed(compiled, BOOL, node).evaluate
            return value
        if compiled.kind.name != "bool":
            raise self.fail(node, f"is {compiled.kind.name}, not a boolean condition")
        return compiled.evaluate

    def typed(self, compiled: Compiled, kind: Kind, node: exp.Expression) -> Compiled:
        """A string constant read as ``kind``, as PostgreSQL types an unknown literal by what it meets."""
        if compiled.kind.name != "unknown":
            return compiled
        try:
            value = kind.parse(compiled.constant or "")
        except (ValueError, TypeError) as exc:
            raise self.fail(node, f"{compiled.constant!r} is not a valid {kind.name} ({exc})") from None
        return Compiled(kind, lambda row: value, value=(value,))

    def node(self, node: exp.Expression) -> Compiled:
        if type(node) in COMPARISONS:
            return self.comparison(node, COMPARISONS[type(node)])
        method = getattr(self, f"_{type(node).__name__.lower()}", None)
        if method is None:
            raise self.fail(node, "not supported")
        compiled = method(node)
        if node.args.get("negate") and not isinstance(node, (exp.Like, exp.ILike)):  # x IS NOT NULL, x NOT IN (...)
            inner = compiled.evaluate
            compiled = Compiled(BOOL, lambda row: None if (v := inner(row)) is None else not v)
        return compiled

    def _paren(self, node: exp.Paren) -> Compiled:
        return self.node(node.this)

    def _column(self, node: exp.Column) -> Compiled:
        name = column_name(node)
        if name not in self.index:
            raise self.fail(node, f"no column {name!r} in the table (columns: {', '.join(self.index)})")
        i = self.index[name]
        kind = kind_of_type(self.types[i])
        if kind is None:
            raise self.fail(node, f"column {name!r} has type {self.types[i]}, which filters do not support")
        parse = kind.parse

        def column(row: Sequence[str | None]) -> Value:
            value = row[i]
            return None if value is None else parse(value)

        width = re.fullmatch(r"character\((\d+)\)", self.types[i])
        return Compiled(kind, column, padded_to=int(width.group(1)) if width else None, column=(i, parse))

    def _literal(self, node: exp.Literal) -> Compiled:
        if node.is_string:
            return Compiled(UNKNOWN, lambda row, v=node.this: v, constant=node.this)
        text = node.this
        try:
            value = int(text) if text.isdigit() else parse_numeric(text)
        except ValueError:
            raise self.fail(node, f"{text} is not a number") from None
        return Compiled(NUMBER_LITERAL, lambda row: value, value=(value,))

    def _neg(self, node: exp.Neg) -> Compiled:
        inner = self._literal(node.this)
        if inner.kind.name != "number":
            raise self.fail(node, "only numbers may be negated")
        value = -inner.evaluate(())
        return Compiled(NUMBER_LITERAL, lambda row: value, value=(value,))

    def _boolean(self, node: exp.Boolean) -> Compiled:
        value = bool(node.this)
        return Compiled(BOOL, lambda row: value)

    def _null(self, node: exp.Null) -> Compiled:
        return Compiled(NULL, lambda row: None)

    # -- logic

    def _and(self, node: exp.And) -> Compiled:
        return _connective(self.boolean(node.this), self.boolean(node.expression), decisive=False)

    def _or(self, node: exp.Or) -> Compiled:
        return _connective(self.boolean(node.this), self.boolean(node.expression), decisive=True)

    def _not(self, node: exp.Not) -> Compiled:
        inner = self.boolean(node.this)

        def negated(row: Sequence[str | None]) -> Value:
            value = inner(row)
            return None if value is None else not value

        return Compiled(BOOL, negated)

    # -- comparisons

    def pair(self, left_node: exp.Expression, right_node: exp.Expression) -> tuple[Evaluate, Evaluate]:
        left, right = self.compiled_pair(left_node, right_node)
        return left.evaluate, right.evaluate

    def compiled_pair(self, left_node: exp.Expression, right_node: exp.Expression) -> tuple[Compiled, Compiled]:
        """Both sides brought to one comparable kind, as PostgreSQL's operator resolution would."""
        left, right = self.node(left_node), self.node(right_node)
        if left.kind.name == "unknown" and right.kind.name == "unknown":
            left, right = Compiled(TYPE_KINDS["text"], left.evaluate), Compiled(TYPE_KINDS["text"], right.evaluate)
        left, right = self.typed(left, right.kind, left_node), self.typed(right, left.kind, right_node)
        kinds = {left.kind.name, right.kind.name} - {"null"}
        if kinds == {"number", "float"}:  # numeric meets double precision: compared as double precision
            return (
                Compiled(FLOAT, lambda row, f=left.evaluate: to_float(f(row))),
                Compiled(FLOAT, lambda row, f=right.evaluate: to_float(f(row))),
            )
        if len(kinds) > 1:
            raise self.fail(left_node.parent or left_node, f"cannot compare {left.kind.name} with {right.kind.name}")
        return left, right

    def comparison(self, node: exp.Expression, operator: str) -> Compiled:
        left_compiled, right_compiled = self.compiled_pair(node.this, node.expression)
        fast = _column_against_constant(left_compiled, right_compiled, operator)
        if fast is not None:
            return Compiled(BOOL, fast)
        left, right, test = left_compiled.evaluate, right_compiled.evaluate, TESTS[operator]

        def compare(row: Sequence[str | None]) -> Value:
            a = left(row)
            if a is None:
                return None
            b = right(row)
            return None if b is None else test(compare_values(a, b))

        return Compiled(BOOL, compare)

    def distinct(self, node: exp.Expression, distinct: bool) -> Compiled:
        left, right = self.pair(node.this, node.expression)

        def test(row: Sequence[str | None]) -> Value:
            a, b = left(row), right(row)
            if a is None or b is None:
                return (a is None) != (b is None) if distinct else (a is None) == (b is None)
            return (compare_values(a, b) != 0) if distinct else (compare_values(a, b) == 0)

        return Compiled(BOOL, test)

    def _nullsafeeq(self, node: exp.NullSafeEQ) -> Compiled:
        return self.distinct(node, False)

    def _nullsafeneq(self, node: exp.NullSafeNEQ) -> Compiled:
        return self.distinct(node, True)

    def _is(self, node: exp.Is) -> Compiled:
        inner = self.node(node.this)
        if isinstance(node.expression, exp.Null):
            return Compiled(BOOL, lambda row, f=inner.evaluate: f(row) is None)
        inner_eval = self.boolean(node.this)
        wanted = bool(node.expression.this)
        return Compiled(BOOL, lambda row: inner_eval(row) is wanted)

    def _between(self, node: exp.Between) -> Compiled:
        low = self.comparison(exp.GTE(this=node.this, expression=node.args["low"]), ">=").evaluate
        high = self.comparison(exp.LTE(this=node.this, expression=node.args["high"]), "<=").evaluate
        return _connective(low, high, decisive=False)

    def _in(self, node: exp.In) -> Compiled:
        if node.args.get("query") or node.args.get("unnest") or node.args.get("field"):
            raise self.fail(node, "IN takes a list of values")
        tests = [self.comparison(exp.EQ(this=node.this, expression=item), "=").evaluate for item in node.expressions]

        def member(row: Sequence[str | None]) -> Value:
            unknown = False
            for test in tests:
                result = test(row)
                if result is True:
                    return True
                unknown = unknown or result is None
            return None if unknown else False

        return Compiled(BOOL, member)

    def _escape(self, node: exp.Escape) -> Compiled:
        escape = node.expression
        if not (isinstance(escape, exp.Literal) and escape.is_string and len(escape.this) <= 1):
            raise self.fail(node, "ESCAPE takes one character (or '') as a constant")
        if not isinstance(node.this, (exp.Like, exp.ILike)):
            raise self.fail(node, "ESCAPE belongs to LIKE")
        return self.like(node.this, escape.this or None)

    def _like(self, node: exp.Like) -> Compiled:
        return self.like(node, "\\")

    def _ilike(self, node: exp.ILike) -> Compiled:
        return self.like(node, "\\")

    def like(self, node: exp.Expression, escape: str | None) -> Compiled:
        pattern_node = node.expression
        if not (isinstance(pattern_node, exp.Literal) and pattern_node.is_string):
            raise self.fail(node, "the pattern of LIKE must be a string constant")
        subject = self.typed(self.node(node.this), TYPE_KINDS["text"], node.this)
        if subject.kind.name not in ("text", "null"):
            raise self.fail(node, f"LIKE needs text, not {subject.kind.name}")
        insensitive = isinstance(node, exp.ILike)
        pattern = fold_case(pattern_node.this) if insensitive else pattern_node.this
        regex = like_regex(pattern, escape, self.filter.text)
        value, negate, width = subject.evaluate, bool(node.args.get("negate")), subject.padded_to or 0

        def like(row: Sequence[str | None]) -> Value:
            text = value(row)
            if text is None:
                return None
            text = text.ljust(width)
            matched = regex.fullmatch(fold_case(text) if insensitive else text) is not None
            return matched != negate

        return Compiled(BOOL, like)

    # -- functions

    def text_argument(self, node: exp.Expression) -> Evaluate:
        inner = self.typed(self.node(node.this), TYPE_KINDS["text"], node.this)
        if inner.kind.name not in ("text", "null"):
            raise self.fail(node, f"takes text, not {inner.kind.name}")
        return inner.evaluate

    def _lower(self, node: exp.Lower) -> Compiled:
        inner = self.text_argument(node)
        return Compiled(TYPE_KINDS["text"], lambda row: None if (v := inner(row)) is None else fold_case(v))

    def _upper(self, node: exp.Upper) -> Compiled:
        inner = self.text_argument(node)
        return Compiled(TYPE_KINDS["text"], lambda row: None if (v := inner(row)) is None else fold_case(v, True))

    def _length(self, node: exp.Length) -> Compiled:
        inner = self.text_argument(node)
        return Compiled(TYPE_KINDS["integer"], lambda row: None if (v := inner(row)) is None else len(v))

    def _abs(self, node: exp.Abs) -> Compiled:
        inner = self.node(node.this)
        if inner.kind.name not in ("number", "float", "null"):
            raise self.fail(node, f"abs takes a number, not {inner.kind.name}")
        f = inner.evaluate
        return Compiled(inner.kind, lambda row: v if (v := f(row)) is None or v is NAN else abs(v))

    def _coalesce(self, node: exp.Coalesce) -> Compiled:
        nodes = [node.this, *node.expressions]
        compiled = [self.node(n) for n in nodes]
        kinds = {c.kind.name for c in compiled} - {"null", "unknown"}
        if len(kinds) > 1:
            raise self.fail(node, f"mixes {' and '.join(sorted(kinds))}")
        kind = next((c.kind for c in compiled if c.kind.name in kinds), TYPE_KINDS["text"])
        parts = [self.typed(c, kind, n).evaluate for c, n in zip(compiled, nodes, strict=True)]

        def first(row: Sequence[str | None]) -> Value:
            for part in parts:
                value = part(row)
                if value is not None:
                    return value
            return None

        return Compiled(kind, first)


def _connective(left: Evaluate, right: Evaluate, decisive: bool) -> Compiled:
    """AND (decisive FALSE) or OR (decisive TRUE) in three-valued logic: NULL unless one side decides."""

    def connective(row: Sequence[str | None]) -> Value:
        a = left(row)
        if a is decisive:
            return decisive
        b = right(row)
        if b is decisive:
            return decisive
        return None if a is None or b is None else not decisive

    return Compiled(BOOL, connective)


OPERATORS = {"=": operator.eq, "<>": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
MIRRORED = {"=": "=", "<>": "<>", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def _column_against_constant(left: Compiled, right: Compiled, operator_name: str) -> Evaluate | None:
    """The common case, column <op> constant, as one closure: most of a filter's cost is Python calls."""
    if left.column is None and right.column is not None:
        left, right, operator_name = right, left, MIRRORED[operator_name]
    if left.column is None or right.value is None or right.value[0] is None:
        return None
    index, parse = left.column
    constant, compare, test = right.value[0], OPERATORS[operator_name], TESTS[operator_name]
    if parse is parse_int:
        parse = int  # int() strips blanks as PostgreSQL's integer input does

    def column_against_constant(row: Sequence[str | None]) -> Value:
        text = row[index]
        if text is None:
            return None
        value = parse(text)
        if value is NAN or constant is NAN:
            return test(compare_values(value, constant))
        return compare(value, constant)

    return column_against_constant


def compile_filter(row_filter: RowFilter, columns: Sequence[str], types: Sequence[str]) -> Evaluate:
    """A function of a row (text values in ``columns`` order, None for NULL) giving True, False or None."""
    return _Compiler(row_filter, columns, types).boolean(row_filter.tree)

"""
Tool use: the calculator a chat model calls mid-reply, and the state machine that runs the call in the engine.

In a reply the model writes <|python_start|>expr<|python_end|>; the engine evaluates expr with calculate() and
forces <|output_start|>result<|output_end|> into the sequence, then the model goes on (nanochat's format). The
forced tokens are the tool's words, not the model's: training never puts loss on them (tokenizer.render_conversation
masks them), so the model learns to write the call and to use its result, never to guess the result.

calculate() never runs eval on the text. It parses it with ast and walks an allow-list: numbers, strings, + - * /
// % **, unary minus/plus, parentheses and a few string methods (.count() and friends). Every operation checks the
sizes of its operands before it runs (an exponent, a product of big numbers, a repeated string), so the time and
memory of any accepted expression are bounded by construction: no timer, no SIGALRM, safe in any thread (the server
decodes in a worker thread). Anything refused or failing comes back as an "error: ..." text, which the model sees
as the tool's output; nothing raises out of it.
"""
import ast
import math
import operator

MAX_CHARS = 200  # the longest expression accepted (bounds parse time and the number of operations)
MAX_DEPTH = 20  # the deepest nesting of operations
MAX_BITS = 1024  # the largest integer, in bits (about 308 digits), as an operand or a result
MAX_EXPONENT = 1024  # the largest integer exponent
MAX_STRING = 1000  # the longest string, as an operand or a result
STRING_METHODS = {"count", "find", "lower", "upper", "strip", "replace", "startswith", "endswith"}

BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class Refused(Exception):
    """An expression the calculator will not (or cannot) evaluate; its message is the error text."""


def calculate(expr):
    """The result of a calculator expression as text, or "error: ..." saying why there is none."""
    try:
        return format_value(evaluate(expr))
    except Refused as e:
        return f"error: {e}"
    except ZeroDivisionError:
        return "error: division by zero"
    except (OverflowError, ValueError, TypeError, ArithmeticError) as e:  # float overflow, 'a' - 1, ...
        return f"error: {type(e).__name__}: {e}"[:MAX_STRING]


def evaluate(expr):
    if not isinstance(expr, str):
        raise Refused("the expression must be text")
    expr = expr.strip()
    if not expr:
        raise Refused("empty expression")
    if len(expr) > MAX_CHARS:
        raise Refused(f"expression longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(expr, mode="eval")  # MAX_CHARS keeps it far from the parser's own nesting limits
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise Refused(f"not an expression ({getattr(e, 'msg', None) or type(e).__name__})") from None
    return walk(tree.body, 0)


def walk(node, depth):
    if depth > MAX_DEPTH:
        raise Refused(f"nested deeper than {MAX_DEPTH}")
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, str):  # (not bool, bytes, None, ...)
        return check_result(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        value = walk(node.operand, depth + 1)
        if isinstance(value, str):
            raise Refused("a sign on a string")
        return UNARY[type(node.op)](value)
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = walk(node.left, depth + 1), walk(node.right, depth + 1)
        check_cost(type(node.op), left, right)
        return check_result(BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and not node.keywords:
        method = node.func.attr
        if method not in STRING_METHODS:
            raise Refused(f"method .{method}() is not allowed (only {', '.join(sorted(STRING_METHODS))})")
        target = walk(node.func.value, depth + 1)
        args = [walk(a, depth + 1) for a in node.args]
        if not isinstance(target, str) or not all(isinstance(a, (str, int)) for a in args):
            raise Refused(f".{method}() works on strings only")
        if method == "replace" and len(args) >= 2 and isinstance(args[1], str):  # the one that can grow a string
            if len(target) * max(1, len(args[1])) > MAX_STRING * 10:
                raise Refused(f"result longer than {MAX_STRING} characters")
        return check_result(getattr(target, method)(*args))
    raise Refused(f"{describe(node)} is not allowed (only numbers, strings, + - * / // % ** and .count() etc.)")


def describe(node):
    if isinstance(node, ast.Name):
        return f"the name {node.id!r}"
    if isinstance(node, ast.Attribute):
        return f"the attribute .{node.attr}"
    if isinstance(node, ast.Call):
        return f"calling {node.func.id}()" if isinstance(node.func, ast.Name) else "calling a function"
    return type(node).__name__.lower()  # lambda, listcomp, subscript, compare, constant (True), ...


def check_cost(op, left, right):
    """Refuse an operation whose result would be too big before computing it: the bound that makes every
    accepted expression quick (the result check after it only catches the rest)."""
    numbers = not isinstance(left, str) and not isinstance(right, str)
    if op is ast.Pow and numbers:
        if isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise Refused(f"exponent {right} is larger than {MAX_EXPONENT}")
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            if (abs(left).bit_length() - 1) * right > MAX_BITS:  # the result has at least this many bits
                raise Refused(f"result larger than {MAX_BITS} bits")
        if isinstance(left, complex) or (left < 0 and not float(right).is_integer()):
            raise Refused("a complex result")
    elif op is ast.Mult and not numbers:
        text, times = (left, right) if isinstance(left, str) else (right, left)
        if not isinstance(times, int):
            raise Refused("a string can only be repeated a whole number of times")
        if len(text) * max(times, 0) > MAX_STRING:
            raise Refused(f"result longer than {MAX_STRING} characters")
    elif op is ast.Mod and isinstance(left, str):
        raise Refused("% formatting of strings is not allowed")


def check_result(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise Refused(f"result larger than {MAX_BITS} bits")
    if isinstance(value, str) and len(value) > MAX_STRING:
        raise Refused(f"result longer than {MAX_STRING} characters")
    if isinstance(value, float) and not math.isfinite(value):
        raise Refused("result is not a finite number")
    if isinstance(value, complex):
        raise Refused("a complex result")
    return value


def format_value(value):
    """Results as a person writes them: 48/2 -> 24 (not 24.0), 7/3 -> 2.333333333."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.10g}"
    return str(value)


# -----------------------------------------------------------------------------
# the state machine the engine runs on each generated token

# how chat.py shows a call and its output in a reply: "hold [calculator:  37 * 24 -> 888] 888 pens."
TOOL_DISPLAY = {"<|python_start|>": "[calculator: ", "<|python_end|>": "", "<|output_start|>": " -> ",
                "<|output_end|>": "] "}


def shown_tokens(ids):
    """{token id: text} for Decoder's shown: the tool tokens of a tokenizer (special_ids) as TOOL_DISPLAY says."""
    return {ids[name]: text for name, text in TOOL_DISPLAY.items() if name in ids}


class ToolState:
    """Follows one reply token by token. step(token) says what the engine does after the model wrote token:
    a list of tokens to force into the sequence (the call's output), [] to go on sampling, or None when token
    ends the reply. Calls are <|python_start|> expr <|python_end|>; an unbalanced one (an end with no start, a
    start inside a call, an output the model writes itself) is answered with an error output, never a crash."""

    def __init__(self, enc, ids):
        self.enc = enc
        self.start, self.end = ids["<|python_start|>"], ids["<|python_end|>"]
        self.out_start, self.out_end = ids["<|output_start|>"], ids["<|output_end|>"]
        self.stops = set(ids.values()) - {self.start, self.end}  # any other special token ends the reply
        self.expr = None  # the call's tokens so far; None outside a call
        self.calls = 0

    def output(self, text):
        self.calls += 1
        return [self.out_start] + self.enc.encode_ordinary(text) + [self.out_end]

    def step(self, token):
        if token == self.start:
            if self.expr is not None:  # the call so far is dropped
                self.expr = None
                return self.output("error: <|python_start|> inside a call")
            self.expr = []
            return []
        if token == self.end:
            if self.expr is None:
                return self.output("error: <|python_end|> without <|python_start|>")
            expr, self.expr = self.enc.decode(self.expr), None
            return self.output(calculate(expr))
        if token in self.stops:
            return None
        if self.expr is not None:
            self.expr.append(token)
            if len(self.expr) > MAX_CHARS:  # a runaway call: answer it rather than let it fill the context
                self.expr = None
                return self.output(f"error: expression longer than {MAX_CHARS} characters")
        return []

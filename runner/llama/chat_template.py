"""Chat templates rendered in Jinja's sandbox with a time limit and size limits.

A GGUF's ``tokenizer.chat_template`` is a program written by whoever made the file. Jinja's
``ImmutableSandboxedEnvironment`` (what llama-cpp-python uses) keeps it away from files and
attributes, but not from the CPU or the memory: nested ``range(100000)`` loops run for hours, and
``'x' * 2000000000`` takes gigabytes; the stock sandbox even folds such constant expressions while
*compiling*, so llama-cpp-python's constructor pays for them before a single message is sent.

:class:`BoundedSandbox` is that same sandbox with every place where a template can spend time or
memory going through a check: calls, filters, attribute and item access, the intercepted operators,
``~`` concatenation, each loop's iteration and the joining of output. Each render carries a
:class:`RenderLimits` (a deadline, a cancel flag, a size limit for any one value and a budget for
all values built), so the render itself stops, with :class:`TemplateLimitExceeded`, wherever the
template spends. Pure-Python loops hold the GIL, so these checks inside the render are the reliable
place; nothing outside (a timer, a signal) could stop it as cleanly.

:class:`BoundedChatFormatter` is llama-cpp-python's ``Jinja2ChatFormatter`` on that environment, and
:func:`bounded_llama_templates` makes ``llama_cpp.Llama`` build its (unused by fitchat) formatters
the same way, without compiling anything.
"""

from __future__ import annotations

import contextlib
import re
import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateRuntimeError
from jinja2.runtime import Context
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment
from llama_cpp import llama_chat_format

#: One render of a chat template may take this long (real templates take about a millisecond).
RENDER_TIME_LIMIT_S = 2.0
#: Any one string or list a template builds, and its output, may hold this many characters (items)
#: beyond twice the size of the conversation it was given.
BASE_CHARS = 4 * 1024 * 1024
#: All the strings and lists one render builds, together, may hold this many times the value limit.
SPEND_FACTOR = 8
#: Integers passed to a call or a filter (widths, counts) stay at or below Jinja's own range limit.
INT_ARG_LIMIT = MAX_RANGE
#: Integers built by ``*`` and ``**`` stay below this many bits.
INT_BITS = 8192
#: A chat template longer than this is refused before it is compiled (real ones are a few KiB).
MAX_TEMPLATE_CHARS = 256 * 1024
#: The loop check looks at the clock once every this many items.
_ITER_CHECK_EVERY = 64


class TemplateLimitExceeded(SecurityError):
    """A chat template went past a time or size limit while rendering."""


class TemplateCancelled(TemplateRuntimeError):
    """The render was stopped by the user (the engine's cancel)."""


def _never() -> bool:
    return False


class RenderLimits:
    """The limits of the renders inside one :meth:`BoundedSandbox.limits`: a cancel flag they share (the
    engine's, while a reply is being prepared), and per render (:meth:`begin`) a deadline, a size limit
    for any one value and a budget for all the values built."""

    def __init__(
        self,
        *,
        seconds: float = RENDER_TIME_LIMIT_S,
        max_chars: int = BASE_CHARS,
        cancelled: Callable[[], bool] = _never,
    ) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.cancelled = cancelled
        self.max_chars = max_chars
        self.budget = max_chars * SPEND_FACTOR

    def begin(self, max_chars: int = BASE_CHARS) -> None:
        """Start one render: its own deadline, value limit and budget (the cancel flag stays)."""
        self.deadline = time.monotonic() + self.seconds
        self.max_chars = max_chars
        self.budget = max_chars * SPEND_FACTOR

    def check(self) -> None:
        """Raise once the deadline has passed or the user cancelled."""
        if time.monotonic() > self.deadline:
            raise TemplateLimitExceeded(f"rendering took longer than {self.seconds:g} s")
        if self.cancelled():
            raise TemplateCancelled("stopped while the chat template was rendering")

    def size(self, n: int, what: str = "a value") -> None:
        """Refuse a value of ``n`` characters (or items) before or after it is built."""
        if n > self.max_chars:
            raise TemplateLimitExceeded(f"it builds {what} of {n:,} characters (the limit is {self.max_chars:,})")

    def spend(self, n: int) -> None:
        """Count ``n`` characters (items) built against the render's budget."""
        self.size(n)
        self.budget -= n
        if self.budget < 0:
            raise TemplateLimitExceeded(f"it builds more than {self.max_chars * SPEND_FACTOR:,} characters in all")

    def integer(self, value: int) -> None:
        """Refuse an integer argument (a width, a count) above :data:`INT_ARG_LIMIT`."""
        if abs(value) > INT_ARG_LIMIT:
            raise TemplateLimitExceeded(f"it passes {_short_int(value)} to a call (the limit is {INT_ARG_LIMIT:,})")


def _short_int(value: int) -> str:
    return f"{value:,}" if value.bit_length() < 64 else f"an integer of {value.bit_length():,} bits"


def _sized(value: Any) -> int:
    """How many characters (items) a value holds, for the values whose size matters."""
    if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)):
        return len(value)
    return 0


def _text_size(value: Any, limit: int) -> int:
    """About how many characters ``str(value)`` makes, counted without making it, stopping past ``limit``.

    A list of a million references to one long string costs little memory but a huge text once printed,
    joined or turned into JSON; this walks the containers and adds up what their text would hold.
    """
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += 2 + len(item)
            if total <= limit:
                stack.extend(item)
        elif isinstance(item, Mapping):
            total += 2 + 2 * len(item)
            if total <= limit:
                for key, child in item.items():
                    stack.append(key)
                    stack.append(child)
        elif isinstance(item, int) and not isinstance(item, bool):
            total += item.bit_length() // 3 + 2
        else:
            total += 24
        if total > limit:
            return total
    return total


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


def _check_percent_format(fmt: str) -> None:
    """``'%2000000000d' % 1`` allocates the width: refuse widths and precisions above the limit, and ``*``."""
    for match in _PERCENT_SPEC.finditer(fmt):
        for part in match.groups():
            if part == "*":
                raise TemplateLimitExceeded("a '*' width in a %-format is not allowed in a chat template")
            if part is not None and int(part) > INT_ARG_LIMIT:
                raise TemplateLimitExceeded(f"a %-format width of {int(part):,} (the limit is {INT_ARG_LIMIT:,})")


def _check_brace_format(fmt: str) -> None:
    """``'{:2000000000}'.format(1)`` allocates the width: refuse large and nested (``{:{}}``) widths."""
    for _literal, _field, spec, _conversion in string.Formatter().parse(fmt):
        if not spec:
            continue
        if "{" in spec:
            raise TemplateLimitExceeded("a nested format width is not allowed in a chat template")
        for digits in _DIGITS.findall(spec):
            if int(digits) > INT_ARG_LIMIT:
                raise TemplateLimitExceeded(f"a format width of {int(digits):,} (the limit is {INT_ARG_LIMIT:,})")


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator with three more hooks: each ``for`` loop iterates through
    ``environment.bounded_iter``, each ``~`` joins through ``environment.bounded_concat``, and each
    ``{{ value }}`` is measured by ``environment.printable_value`` before it becomes text."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        node.iter = nodes.Call(nodes.EnvironmentAttribute("bounded_iter"), [node.iter], [], None, None)
        super().visit_For(node, frame)

    def _output_child_pre(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        super()._output_child_pre(node, frame, finalize)
        self.write("environment.printable_value(")

    def _output_child_post(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        self.write(")")
        super()._output_child_post(node, frame, finalize)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.bounded_concat({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with a time limit and size limits checked wherever a template spends.

    Limits come from the render in progress on this thread (:meth:`limits`); outside a render every
    hook refuses, which also keeps the compiler from folding filters on constants at compile time.
    """

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._local = threading.local()
        self.globals.pop("lipsum", None)  # a loop in Python no limit can reach into; no template needs it
        self.globals["range"] = self._range
        self.filters = {name: self._bounded_filter(name, f) for name, f in self.filters.items()}
        self.template_class = BoundedTemplate

    # ------------------------------------------------------------------ limits

    @contextlib.contextmanager
    def limits(self, limits: RenderLimits | None = None) -> Iterator[RenderLimits]:
        """Render under ``limits`` (default: a fresh :class:`RenderLimits`) on this thread.

        Nested use keeps the outer limits, so several renders can share one deadline.
        """
        outer = getattr(self._local, "limits", None)
        if outer is not None:
            yield outer
            return
        self._local.limits = current = limits or RenderLimits()
        try:
            yield current
        finally:
            self._local.limits = None

    def _limits(self) -> RenderLimits:
        current = getattr(self._local, "limits", None)
        if current is None:
            raise TemplateRuntimeError("chat template code runs only inside a bounded render")
        current.check()
        return current

    # ------------------------------------------------------------------ the hooks

    def add_filter(self, name: str, func: Callable[..., Any]) -> None:
        """Register a filter that goes through the same checks as Jinja's own."""
        self.filters[name] = self._bounded_filter(name, func)

    def _bounded_filter(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        limits_of = self._limits

        def bounded(*args: Any, **kwargs: Any) -> Any:
            limits = limits_of()
            _check_arguments(limits, name, None, args, kwargs)
            result = func(*args, **kwargs)
            limits.spend(_sized(result))
            return result

        for attr in ("jinja_pass_arg", "__name__", "__doc__", "__wrapped__"):
            if hasattr(func, attr):
                setattr(bounded, attr, getattr(func, attr))
        bounded.__wrapped__ = func  # type: ignore[attr-defined]
        return bounded

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        limits = self._limits()
        _check_arguments(limits, getattr(obj, "__name__", ""), getattr(obj, "__self__", None), args, kwargs)
        result = super().call(context, obj, *args, **kwargs)
        limits.spend(_sized(result))
        return result

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        limits = self._limits()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, bytes, list, tuple)) and isinstance(times, int):
                    limits.size(len(seq) * max(times, 0), "a repeated value")
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > INT_BITS:
                raise TemplateLimitExceeded(f"it multiplies integers past {INT_BITS} bits")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            if left.bit_length() * right > INT_BITS:
                raise TemplateLimitExceeded(f"it raises an integer to a power past {INT_BITS} bits")
        elif operator == "%" and isinstance(left, str):
            _check_percent_format(left)
            limits.size(len(left) + _text_size(right, limits.max_chars), "a formatted string")
        elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            limits.size(len(left) + len(right), "a joined value")
        result = super().call_binop(context, operator, left, right)
        limits.spend(_sized(result))
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        self._limits()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        limits = self._limits()
        result = super().getitem(obj, argument)
        if isinstance(argument, slice):
            limits.spend(_sized(result))
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__
        limits_of = self._limits

        def bounded(*args: Any, **kwargs: Any) -> str:
            limits = limits_of()
            _check_brace_format(fmt)
            _check_arguments(limits, "format", None, args, kwargs)
            limits.size(len(fmt) + _text_size((args, kwargs), limits.max_chars), "a formatted string")
            result = wrapped(*args, **kwargs)
            limits.spend(len(result))
            return result

        return bounded

    def bounded_iter(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """What every ``for`` loop iterates: the items, with the clock checked as they go."""
        limits = self._limits()
        for n, item in enumerate(iterable, 1):
            if n % _ITER_CHECK_EVERY == 0:
                limits.check()
            yield item

    def printable_value(self, value: Any) -> Any:
        """``{{ value }}``: a value whose text would be too long is refused before it is made."""
        if not isinstance(value, str):
            limits = self._limits()
            limits.size(_text_size(value, limits.max_chars), "an output")
        return value

    def bounded_concat(self, join: Callable[[Any], str], values: tuple[Any, ...]) -> str:
        """``a ~ b ~ c``: the sizes are known before the joined string is built."""
        limits = self._limits()
        for v in values:
            if not isinstance(v, str):
                limits.size(_text_size(v, limits.max_chars), "a joined string")
        parts = tuple(v if isinstance(v, str) else str(v) for v in values)
        total = sum(len(p) for p in parts)
        limits.size(total, "a joined string")
        limits.spend(total)
        return join(parts)

    def concat(self, pieces: Iterable[str]) -> str:
        """The output of a render, a macro or a ``{% set %}`` block, counted piece by piece as it comes."""
        limits = self._limits()
        out: list[str] = []
        total = 0
        for n, piece in enumerate(pieces):
            total += len(piece)
            if total > limits.max_chars:
                limits.size(total, "an output")
            if n % _ITER_CHECK_EVERY == 0:
                limits.check()
            out.append(piece)
        limits.spend(total)
        return "".join(out)

    def _range(self, *args: int) -> range:
        limits = self._limits()
        for value in args:
            if isinstance(value, int):
                limits.integer(value)
        rng = range(*args)
        if len(rng) > MAX_RANGE:
            raise TemplateLimitExceeded(f"range of {len(rng):,} items (the limit is {MAX_RANGE:,})")
        return rng


def _check_arguments(
    limits: RenderLimits, name: str, subject: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> None:
    """Checks before a call or a filter runs: integer arguments (widths, counts), and the calls whose
    output can grow much faster than their input (``replace``, ``join``, ``indent``, ``expandtabs``,
    ``translate``, ``%``-``format``, ``tojson`` with an indent). ``subject`` is a method's object
    (``text`` in ``text.replace(…)``); a filter gets its value as the first argument instead."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool):
            limits.integer(value)
    if subject is not None:
        args = (subject, *args)
    elif args and isinstance(args[0], (nodes.EvalContext, Context, jinja2.Environment)):
        args = args[1:]  # filters that take the evaluation context, the context or the environment first
    text = args[0] if args and isinstance(args[0], str) else None
    if name == "replace" and text is not None and len(args) >= 3 and isinstance(args[1], str) and isinstance(args[2], str):
        old, new = args[1], args[2]
        count = text.count(old) if old else len(text) + 1
        limits.size(len(text) + count * max(len(new) - len(old), 0), "a replaced string")
    elif name == "join" and args:
        if subject is not None:  # separator.join(items)
            if len(args) > 1:
                _check_join(limits, args[1], text or "")
        else:  # items|join(separator)
            sep = args[2] if len(args) > 2 else kwargs.get("d", "")
            _check_join(limits, args[0], sep if isinstance(sep, str) else str(sep))
    elif name == "indent" and text is not None:
        width = kwargs.get("width", args[1] if len(args) > 1 else 4)
        pad = len(width) if isinstance(width, str) else int(width) if isinstance(width, int) else 4
        limits.size(len(text) + (text.count("\n") + 1) * pad, "an indented string")
    elif name == "expandtabs" and text is not None:
        size = args[1] if len(args) > 1 else kwargs.get("tabsize", 8)
        limits.size(len(text) + text.count("\t") * max(int(size), 0), "a string with tabs expanded")
    elif name == "translate" and text is not None and len(args) > 1 and isinstance(args[1], Mapping):
        longest = max((len(v) for v in args[1].values() if isinstance(v, str)), default=1)
        limits.size(len(text) * max(longest, 1), "a translated string")
    elif name == "format" and text is not None and subject is None:
        _check_percent_format(text)
    elif name in _STRINGIFYING and subject is None and args:
        limits.size(_text_size(args[0], limits.max_chars), f"the text of a value ({name})")
    if name == "tojson":
        indent = kwargs.get("indent", args[2] if len(args) > 2 else None)
        if isinstance(indent, str) or (isinstance(indent, int) and indent > _MAX_JSON_INDENT):
            raise TemplateLimitExceeded(f"tojson with an indent over {_MAX_JSON_INDENT} is not allowed")


_MAX_JSON_INDENT = 16
#: Filters that turn their whole value into text.
_STRINGIFYING = frozenset({"string", "pprint", "tojson", "urlencode", "xmlattr", "forceescape", "escape", "e",
                           "safe", "trim", "upper", "lower", "capitalize", "title", "striptags", "wordcount"})


def _check_join(limits: RenderLimits, items: Any, sep: str) -> None:
    """Add up the parts of a join before it is built (a generator is checked after, by its result)."""
    if not isinstance(items, (list, tuple, str, dict, set, frozenset, range)):
        return
    total = 0
    for n, item in enumerate(items):
        total += (len(item) if isinstance(item, str) else _text_size(item, limits.max_chars)) + len(sep)
        limits.size(total, "a joined string")
        if n % _ITER_CHECK_EVERY == 0:
            limits.check()


class BoundedTemplate(jinja2.Template):
    """A template whose render runs under its environment's limits."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        env = self.environment
        assert isinstance(env, BoundedSandbox)
        with env.limits():
            return super().render(*args, **kwargs)


def _conversation_chars(messages: Any) -> int:
    total = 0
    for message in messages or ():
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            total += len(content)
    return total


class BoundedChatFormatter(llama_chat_format.Jinja2ChatFormatter):
    """llama-cpp-python's ``Jinja2ChatFormatter`` (same environment options, same ``tojson``, same
    render arguments) on :class:`BoundedSandbox`. The template is compiled on first use or by
    :meth:`compile`, so building one costs nothing and a broken template fails where it is used."""

    def __init__(
        self,
        template: str,
        eos_token: str,
        bos_token: str,
        add_generation_prompt: bool = True,
        stop_token_ids: list[int] | None = None,
    ) -> None:
        # Deliberately not super().__init__: that compiles the template in the stock sandbox.
        self.template = template
        self.eos_token = eos_token
        self.bos_token = bos_token
        self.add_generation_prompt = add_generation_prompt
        self.stop_token_ids = set(stop_token_ids) if stop_token_ids is not None else None
        self._compiled: jinja2.Template | None = None
        self._lock = threading.Lock()

    @property
    def environment(self) -> BoundedSandbox:
        env = self.compile().environment
        assert isinstance(env, BoundedSandbox)
        return env

    def compile(self) -> jinja2.Template:
        """Compile the template (once); raises jinja2's errors for a broken one."""
        with self._lock:
            if self._compiled is None:
                if len(self.template) > MAX_TEMPLATE_CHARS:
                    raise TemplateLimitExceeded(
                        f"the template is {len(self.template):,} characters long (the limit is {MAX_TEMPLATE_CHARS:,})"
                    )
                env = BoundedSandbox(
                    loader=jinja2.BaseLoader(),
                    trim_blocks=True,
                    lstrip_blocks=True,
                    extensions=[llama_chat_format.Jinja2ChatFormatter.IgnoreGenerationTags, jinja2.ext.loopcontrols],
                )
                env.add_filter("tojson", self.tojson)
                self._compiled = env.from_string(self.template)
                self._environment = self._compiled  # what Jinja2ChatFormatter.__call__ renders
            return self._compiled

    @contextlib.contextmanager
    def limits(self, *, seconds: float = RENDER_TIME_LIMIT_S, cancelled: Callable[[], bool] = _never) -> Iterator[None]:
        """Renders on this thread inside check ``cancelled`` and take ``seconds`` each at most."""
        with self.environment.limits(RenderLimits(seconds=seconds, cancelled=cancelled)):
            yield

    def __call__(self, *, messages: Any, **kwargs: Any) -> Any:
        with self.environment.limits() as limits:
            limits.begin(BASE_CHARS + 2 * _conversation_chars(messages))
            return super().__call__(messages=messages, **kwargs)


_patch_lock = threading.Lock()


@contextlib.contextmanager
def bounded_llama_templates() -> Iterator[None]:
    """While this is open, ``llama_cpp.Llama`` builds its chat formatters as :class:`BoundedChatFormatter`.

    ``Llama.__init__`` compiles every ``tokenizer.chat_template*`` in the file with the stock sandbox,
    which folds constant expressions such as ``'x' * 2000000000`` at compile time. fitchat renders
    through its own formatter, so Llama's are only built, never compiled.
    """
    with _patch_lock:
        original = llama_chat_format.Jinja2ChatFormatter
        llama_chat_format.Jinja2ChatFormatter = BoundedChatFormatter  # type: ignore[misc]
        try:
            yield
        finally:
            llama_chat_format.Jinja2ChatFormatter = original  # type: ignore[misc]

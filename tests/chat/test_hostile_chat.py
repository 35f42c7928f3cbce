"""Hostile and broken inputs around a chat: chat templates that loop, grow or do not parse (in real GGUFs
made from SmolLM2 by rewriting ``tokenizer.chat_template``), a history that cannot be written or read,
``/save`` over an existing file, and ctrl+c while something does not stop."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFReader
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from fitchat.chat.history import History
from fitchat.chat.session import ChatSession
from fitchat.cli.chat import Repl
from fitchat.cli.main import main
from fitchat.llama.chat_template import BoundedChatFormatter, TemplateLimitExceeded
from fitchat.llama.engine import ChatEngine, ChatTemplateError, SamplingSettings
from tests import REPO_ROOT
from tests.cli.test_chat import REPL_ARGS
from tests.gguf_factory import kv_str
from tests.processes import restore_ctrl_c

ROOT = REPO_ROOT
FAST = ["--threads", "1", "--temp", "0", "--seed", "1", "--ctx", "1024"]

NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
HUGE_STRING = "{% set s = 'x' * 2000000000 %}{{ s }}"
SYNTAX_ERROR = "{% for m in messages %}{{ m['content'] }"
ESCAPES_IN_ERROR = "{{ raise_exception('\x1b]0;PWNED\x07\x1b[2J bad [/] template') }}"


def with_chat_template(src: Path, dst: Path, template: str) -> Path:
    """``src`` (a real GGUF) with its ``tokenizer.chat_template`` replaced: the entry is re-encoded in
    place, the header padded to the file's alignment, and the tensor data copied unchanged."""
    reader = GGUFReader(src)
    field = reader.fields["tokenizer.chat_template"]
    start = field.offset
    end = start + sum(int(p.nbytes) for p in field.parts)
    header_end = max(t.field.offset + sum(int(p.nbytes) for p in t.field.parts) for t in reader.tensors)
    raw = src.read_bytes()
    head = raw[:start] + kv_str("tokenizer.chat_template", template) + raw[end:header_end]
    head += b"\0" * ((-len(head)) % reader.alignment)
    dst.write_bytes(head + raw[reader.data_offset:])
    return dst


@pytest.fixture(scope="module")
def hostile(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    folder = tmp_path_factory.mktemp("hostile-models")
    yield {
        name: with_chat_template(smollm2, folder / f"{name}.gguf", template)
        for name, template in (("nested-loops", NESTED_LOOPS), ("huge-string", HUGE_STRING),
                               ("syntax-error", SYNTAX_ERROR), ("escapes", ESCAPES_IN_ERROR))
    }


def run_child(argv: list[str], timeout: float = 60.0) -> tuple[int, str, str, float, int]:
    """``python -m fitchat ARGV`` in a child: (exit code, stdout, stderr, seconds, the child's own peak RSS in
    MiB, from ``wait4``). The outputs here are a few lines, well within a pipe's buffer."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "fitchat", *argv], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = t0 + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            os.waitpid(proc.pid, 0)
            raise AssertionError(f"fitchat {' '.join(argv)} did not finish in {timeout} s")
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stdout is not None and proc.stderr is not None
    return (proc.returncode, proc.stdout.read().decode(), proc.stderr.read().decode("utf-8", "replace"), elapsed,
            usage.ru_maxrss // 1024)


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert err.startswith("fitchat: error: "), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err and "internal error" not in err
    assert "\x1b" not in err and "\x07" not in err
    for fragment in fragments:
        assert fragment in err, err


# ---------------------------------------------------------------------- templates: the whole command


@pytest.mark.parametrize(("name", "why"), [("nested-loops", "longer than"), ("huge-string", "2,000,000,000")])
def test_runaway_template_fails_fast_in_bounded_memory(hostile: dict[str, Path], name: str, why: str) -> None:
    """Before: nested range(100000) loops hung `fitchat chat`; 'x' * 2000000000 took 10 GB at load."""
    rc, out, err, seconds, peak_mib = run_child(["chat", str(hostile[name]), "-p", "hi", *FAST])
    assert rc == 1
    assert out == ""
    assert_one_line_error(err, f"the chat template of {name}.gguf", why)
    assert seconds < 15  # a model load (about a second here) and at most the 2 s render limit
    assert peak_mib < 700, f"{peak_mib} MiB"  # the model and llama.cpp's buffers take about 270 MiB here


def test_template_syntax_error_is_one_line_naming_the_model(hostile: dict[str, Path]) -> None:
    rc, out, err, _seconds, _peak = run_child(["chat", str(hostile["syntax-error"]), "-p", "hi", *FAST])
    assert rc == 1 and out == ""
    assert_one_line_error(err, "the chat template of syntax-error.gguf is broken", "line 1")


def test_template_error_text_reaches_the_terminal_without_escape_sequences(hostile: dict[str, Path]) -> None:
    rc, _out, err, _seconds, _peak = run_child(["chat", str(hostile["escapes"]), "-p", "hi", *FAST])
    assert rc == 1
    assert_one_line_error(err, "escapes.gguf", "bad [/] template")


def test_engine_raises_a_named_error_and_stays_usable(hostile: dict[str, Path], smollm2: Path) -> None:
    with pytest.raises(ChatTemplateError, match="syntax-error.gguf is broken"):
        ChatEngine.load(hostile["syntax-error"], n_ctx=512, n_threads=1, calibrate=False)
    e = ChatEngine.load(hostile["nested-loops"], n_ctx=512, n_threads=1, calibrate=False)
    try:
        t0 = time.monotonic()
        with pytest.raises(ChatTemplateError, match="longer than 2 s"):
            "".join(e.stream([{"role": "user", "content": "hi"}], SamplingSettings(temperature=0.0, max_tokens=4)))
        assert time.monotonic() - t0 < 4
        with pytest.raises(ChatTemplateError):  # the engine is not left busy
            e.count_tokens([{"role": "user", "content": "hi"}])
    finally:
        e.close()


# ---------------------------------------------------------------------- templates: the sandbox itself


ATTACKS = {
    "nested loops": NESTED_LOOPS,
    "loops over a long string": "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "repeat": HUGE_STRING,
    "doubling with ~": "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                       "{% endfor %}{{ ns.s }}",
    "doubling with +": "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
                       "{% endfor %}{{ ns.s }}",
    "lines of ~": "{% set a = 'x' * 3000000 %}" + "{% set a = a ~ a %}" * 40 + "{{ a }}",
    "power": "{{ 7 ** 100000000 }}",
    "center": "{{ 'x'|center(2000000000) }}",
    "percent width": "{{ '%2000000000d' % 1 }}",
    "format width": "{{ '{:2000000000}'.format(1) }}",
    "nested format width": "{{ '{:{}}'.format(1, 2000000000) }}",
    "format filter": "{{ '%2000000000s'|format('x') }}",
    "replace ''": "{% set s = 'x' * 1000000 %}{{ s|replace('', s) }}",
    "replace method": "{% set s = 'x' * 1000000 %}{{ s.replace('x', s) }}",
    "join": "{% set s = 'x' * 1000000 %}{{ ([s] * 100000)|join }}",
    "join method": "{% set s = 'x' * 1000000 %}{{ s.join([s] * 100) }}",
    "indent": "{% set s = 'x\\n' * 1000000 %}{{ s|indent(100000) }}",
    "batch fill": "{{ 'x'|batch(2000000000, 'y')|list|length }}",
    "output": "{% set s = 'x' * 1000000 %}{% for i in range(100000) %}{{ s }}{% endfor %}",
    "many values": "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}"
                   "{% set ns.l = ns.l + ['x' * 1000000] %}{% endfor %}",
    "lipsum": "{{ lipsum(2000000000) }}",
    "print a list of references": "{% set l = ['x' * 1000000] * 4000000 %}{{ l }}",
    "a list in ~": "{% set l = ['x' * 1000000] * 4000000 %}{{ 'a' ~ l }}",
    "a list in tojson": "{% set l = ['x' * 1000000] * 4000000 %}{{ l|tojson }}",
    "a list in %": "{% set l = ['x' * 1000000] * 4000000 %}{{ '%s' % [l] }}",
    "a list in format": "{% set l = ['x' * 1000000] * 4000000 %}{{ '{}'.format(l) }}",
    "nested lists in join": "{% set l = ['x' * 1000000] * 4000000 %}{{ [l, l]|join }}",
    "recursive loop": "{% for m in [1, 2] recursive %}{{ loop([m, m]) }}{% endfor %}",
    "recursion": "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}",
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_sandbox_stops_each_attack_within_time_and_memory(attack: str) -> None:
    formatter = BoundedChatFormatter(ATTACKS[attack], "</s>", "<s>")
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(Exception) as caught:  # which of jinja2's errors depends on the attack
            formatter(messages=[{"role": "user", "content": "hi"}])
        seconds = time.monotonic() - t0
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(caught.value, (TemplateLimitExceeded, RecursionError)) or "undefined" in str(caught.value)
    assert seconds < 3.5, f"{attack}: {seconds:.1f} s"
    assert peak < 300 * 2**20, f"{attack}: {peak / 2**20:.0f} MiB"


ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ raise_exception.__globals__ }}",
    "{{ namespace.__init__.__globals__['sys'].modules['os'].system('touch /tmp/pwned') }}",
    "{{ messages.append(1) }}",
    "{{ self._TemplateReference__context.environment.globals }}",
    "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_the_sandbox_still_holds(template: str) -> None:
    formatter = BoundedChatFormatter(template, "</s>", "<s>")
    try:
        prompt = formatter(messages=[{"role": "user", "content": "hi"}]).prompt
    except Exception as exc:  # noqa: BLE001 - refused, as it should be
        assert type(exc).__name__ in ("SecurityError", "UndefinedError", "TemplateRuntimeError"), repr(exc)
    else:
        assert "subprocess" not in prompt and "uid=" not in prompt and "popen" not in prompt.lower()


def _chat_template(path: Path) -> str:
    field = GGUFReader(path).fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode()


def test_real_template_renders_as_llama_cpp_python_does_and_fast(smollm2: Path) -> None:
    template = _chat_template(smollm2)
    messages: list[Any] = [{"role": "system", "content": "Be brief."}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " * 20} for i in range(40)
    ]
    stock = Jinja2ChatFormatter(template, "<|im_end|>", "<|im_start|>")
    bounded = BoundedChatFormatter(template, "<|im_end|>", "<|im_start|>")
    assert bounded(messages=messages).prompt == stock(messages=messages).prompt
    assert bounded(messages=messages[1:3]).prompt == stock(messages=messages[1:3]).prompt
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        bounded(messages=messages)
        times.append(time.perf_counter() - t0)
    assert sorted(times)[15] < 0.005  # measured here: 0.4 ms (the stock sandbox: 0.12 ms)


def test_a_long_real_conversation_is_not_mistaken_for_a_runaway(smollm2: Path) -> None:
    bounded = BoundedChatFormatter(_chat_template(smollm2), "<|im_end|>", "<|im_start|>")
    big = "word " * 2_000_000  # 10 M characters: more than the base limit, the user's own
    assert len(bounded(messages=[{"role": "user", "content": big}]).prompt) > len(big)


# ---------------------------------------------------------------------- ctrl+c


def test_ctrl_c_stops_a_runaway_render_and_the_repl_goes_on(hostile: dict[str, Path], open_terminal: Any) -> None:
    term = open_terminal(["chat", str(hostile["nested-loops"]), *REPL_ARGS])
    mark = term.read_until(">>> ")
    term.type("hello\r")
    mark = term.read_until("hello", start=mark)
    time.sleep(0.3)  # the render is looping
    t0 = time.monotonic()
    term.type("\x03")
    mark = term.read_until("(stopped)", timeout=5, start=mark)
    assert time.monotonic() - t0 < 1.5  # well before the 2 s limit: ctrl+c reached the render
    term.read_until(">>> ", start=mark)
    term.type("\x04")
    assert term.wait() == 0
    assert "Traceback" not in term.buffer


HUNG_REPLY = textwrap.dedent(
    """
    import sys, time
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from fitchat.cli.chat import stream_to

    class Engine:  # what the REPL needs of an engine: a cancel that this reply never looks at
        def cancel(self):
            print("cancel asked", flush=True)

    def pieces():
        yield "thinking"
        # The old way: a render no limit reaches, in the unbounded stock sandbox.
        ImmutableSandboxedEnvironment().from_string(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
        ).render()
        yield "never"

    print("ready", flush=True)
    stream_to(pieces, Engine(), sys.stdout)
    print("returned", flush=True)
    """
)


def test_a_second_ctrl_c_ends_a_reply_that_does_not_stop(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", HUNG_REPLY], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True, cwd=tmp_path, preexec_fn=restore_ctrl_c)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # inside the render, holding the interpreter
        proc.send_signal(signal.SIGINT)
        assert "cancel asked" in proc.stdout.readline()
        time.sleep(0.5)
        assert proc.poll() is None  # the first ctrl+c asks; the reply does not stop
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=5)
        assert time.monotonic() - t0 < 2
        assert rc == -signal.SIGINT  # ended by the signal itself: a shell reports 130
        assert "Traceback" not in proc.stderr.read() if proc.stderr else True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------- history that cannot be written


def _full_disk_history(path: Path) -> History:
    """A real history whose next writes find the database at its page limit: SQLite's own 'disk is full'."""
    history = History(path)
    pages = history._db.execute("PRAGMA page_count").fetchone()[0]
    history._db.execute(f"PRAGMA max_page_count = {pages}")
    return history


def test_repl_warns_once_when_the_disk_is_full_and_goes_on(smollm2: Path, tmp_path: Path) -> None:
    engine = ChatEngine.load(smollm2, n_ctx=1024, n_threads=1, calibrate=False)
    history = _full_disk_history(tmp_path / "h.sqlite3")
    warnings: list[str] = []
    try:
        session = ChatSession(engine, history, settings=SamplingSettings(temperature=0.0, max_tokens=8),
                              model_name="smollm2 " * 2000, on_warning=warnings.append)  # a row that needs new pages
        lines = iter(["What is the capital of France?", "And of Italy?", f"/save {tmp_path / 'chat.md'}"])

        def read_line(prompt: str) -> str:
            try:
                return next(lines)
            except StopIteration:
                raise EOFError from None

        out, err = io.StringIO(), io.StringIO()
        assert Repl(session, out, err, read_line=read_line).loop() == 0
        assert len(warnings) == 1
        assert "disk" in warnings[0] and "full" in warnings[0] and "free some space" in warnings[0]
        assert "move the file aside" not in warnings[0] and "chat goes on, unsaved" in warnings[0]
        assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
        assert "fitchat: error" not in err.getvalue()
        assert (tmp_path / "chat.md").read_text().count("## Assistant") == 2  # nothing of the chat is lost
    finally:
        history.close()
        engine.close()


def test_repl_in_a_terminal_goes_on_when_history_writes_fail(smollm2: Path, private_home: Path,
                                                             open_terminal: Any) -> None:
    """Writes past 32 KiB fail in the child (RLIMIT_FSIZE): the history's write-ahead log soon cannot grow."""
    History().close()  # the file exists, so opening it needs no write
    term = open_terminal(["chat", str(smollm2), *REPL_ARGS, "--max-tokens", "8"], file_size_limit=32 * 1024)
    mark = term.read_until(">>> ")
    for question in ("What is the capital of France?", "And of Italy?", "And of Spain?", "And of Peru?"):
        term.type(question + "\r")
        mark = term.read_until(">>> ", start=mark)
    term.type("\x04")
    assert term.wait() == 0
    assert term.buffer.count("this chat goes on, unsaved") == 1
    assert "internal error" not in term.buffer and "Traceback" not in term.buffer


# ---------------------------------------------------------------------- damaged history files


def _truncated_history(path: Path) -> None:
    with History(path) as h:
        for i in range(30):
            conv = h.create(f"model {i}")
            h.add_message(conv.id, "user", "hello " * 200)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _foreign_schema(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE conversations (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, body BLOB)")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()


def _wrong_types(path: Path) -> None:
    with History(path) as h:
        conv = h.create("m")
        h.add_message(conv.id, "user", "hi")
    db = sqlite3.connect(path)
    db.execute("UPDATE conversations SET updated_at = 'yesterday', title = x'00ff'")
    db.commit()
    db.close()


DAMAGE = {
    "garbage": lambda p: p.write_bytes(os.urandom(8192)),
    "text": lambda p: p.write_bytes(b"this is not sqlite\n" * 200),
    "truncated": _truncated_history,
    "foreign schema": _foreign_schema,
    "wrong types": _wrong_types,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("argv", [["chat", "--list"], ["chat", "--export", "1"], ["chat", "--delete", "1"]])
def test_damaged_history_is_one_line_and_left_as_it_is(damage: str, argv: list[str], private_home: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = private_home / "data" / "fitchat" / "history.sqlite3"
    path.parent.mkdir(parents=True, exist_ok=True)
    DAMAGE[damage](path)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    before = path.read_bytes()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 1, (out, err)
    assert_one_line_error(err, "chat history" if damage != "wrong types" else "history")
    assert "move the file aside" in err
    assert path.read_bytes() == before


def test_open_failure_keeps_the_repl_unsaved_but_a_resume_is_an_error(hostile: dict[str, Path], smollm2: Path,
                                                                       private_home: Path) -> None:
    path = private_home / "data" / "fitchat" / "history.sqlite3"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a database" * 100)
    rc, _out, err, _s, _p = run_child(["chat", "--resume", "1", "-p", "hi", *FAST])
    assert rc == 1
    assert_one_line_error(err, "damaged")


# ---------------------------------------------------------------------- /save


def test_save_keeps_an_existing_file_unless_told(smollm2: Path, tmp_path: Path) -> None:
    engine = ChatEngine.load(smollm2, n_ctx=1024, n_threads=1, calibrate=False)
    try:
        session = ChatSession(engine, None, settings=SamplingSettings(temperature=0.0, max_tokens=8), model_name="m")
        target = tmp_path / "notes.md"
        target.write_text("my own notes\n")
        lines = iter(["Name a fruit.", f"/save {target}", f"/save! {target}", "/save"])

        def read_line(prompt: str) -> str:
            try:
                return next(lines)
            except StopIteration:
                raise EOFError from None

        out, err = io.StringIO(), io.StringIO()
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            Repl(session, out, err, read_line=read_line).loop()
        finally:
            os.chdir(cwd)
        log = err.getvalue()
        assert f"{target} exists: '/save! {target}' replaces it" in log
        assert f"saved to {target}" in log
        assert target.read_text().startswith("# Name a fruit.")
        assert (tmp_path / "fitchat-chat-unsaved.md").is_file()
        assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == [  # no temporary file is left
            "fitchat-chat-unsaved.md", "notes.md"]
    finally:
        engine.close()


def test_export_writes_whole_files_and_never_replaces_one(tmp_path: Path) -> None:
    from fitchat.chat.history import write_export
    from fitchat.tui.screens.chat import export_conversation

    kept = tmp_path / "fitchat-conversation-3.md"
    kept.write_text("keep me")
    first = export_conversation(tmp_path, "fitchat-conversation-3", "# one\n")
    second = export_conversation(tmp_path, "fitchat-conversation-3", "# two\n")
    assert (first.name, second.name) == ("fitchat-conversation-3-2.md", "fitchat-conversation-3-3.md")
    assert kept.read_text() == "keep me" and second.read_text() == "# two\n"
    with pytest.raises(FileExistsError):
        write_export(kept, "x")
    assert write_export(kept, "replaced", replace=True).read_text() == "replaced"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == [  # no temporary file is left
        "fitchat-conversation-3-2.md", "fitchat-conversation-3-3.md", "fitchat-conversation-3.md"]
    assert kept.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------- the TUI's chat screen


async def test_tui_chat_tells_a_failed_save_once_and_goes_on(smollm2: Path, tmp_path: Path,
                                                            unreachable_endpoint: str) -> None:
    from tests.tui.test_chat import ask, make_app, open_chat
    from tests.tui_support import link_starter, notifications

    link_starter(smollm2)
    app = make_app(tmp_path, unreachable_endpoint)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_chat(pilot, app)
        app.services.history()._db.execute("PRAGMA query_only = ON")  # every write now fails: read-only
        first = await ask(pilot, screen, "Hi")
        second = await ask(pilot, screen, "Bye")
        assert first.text and second.text
        told = [m for m in notifications(app) if "unsaved" in m]
        assert len(told) == 1 and "read-only" in told[0]
        assert [m["role"] for m in screen.messages] == ["user", "assistant", "user", "assistant"]

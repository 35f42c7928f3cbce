"""``fitchat chat``: one-shot replies for scripts, a line REPL on a terminal, and the saved history."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from fitchat.cli.options import add_load_settings_arguments, add_rpc_argument, settings_from_args
from fitchat.format import printable

if TYPE_CHECKING:
    from fitchat.chat.history import History

JSON_STATS = (
    "prompt_tokens", "completion_tokens", "ttft_s", "prompt_tokens_per_s",
    "decode_tokens_per_s", "n_threads", "gpu_layers", "moe_cpu_layers", "n_ctx",
)

REPL_HELP = """Commands:
  /system TEXT   set the system prompt (/system alone shows it, /system - removes it)
  /clear         start a new conversation (the old one stays in the history)
  /regen         answer the last message again
  /save [FILE]   write this conversation as Markdown (default: fitchat-chat-ID.md)
  /save! FILE    the same, replacing FILE if it exists
  /stats         figures for the last reply
  /help          this text
  /exit          leave (or ctrl+d)
Multi-line input: end a line with \\ to continue it, or wrap the text in triple quotes (\"\"\").
ctrl+c stops a reply; a second ctrl+c while it stops ends fitchat."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "chat",
        help="chat with a local model (one-shot with -p or stdin, a REPL on a terminal)",
        description="Chat with a local GGUF model. MODEL is a .gguf path, 'repo:QUANT' already "
        "downloaded, or 'starter'. With -p (or a prompt on stdin) the reply is streamed to stdout; "
        "on a terminal without a prompt, a REPL starts and the conversation is saved.",
    )
    p.add_argument("model", nargs="?", metavar="MODEL", help="a .gguf path, repo:QUANT or 'starter'")
    p.add_argument("-p", "--prompt", help="reply to this prompt and exit")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--ctx", type=int, help="context size in tokens (default: the fit plan's, 4096)")
    p.add_argument("--max-tokens", type=int, help="stop a reply after this many tokens")
    p.add_argument("--temp", type=float, help="temperature (0 = greedy; default 0.8)")
    p.add_argument("--top-p", type=float, help="nucleus sampling (default 0.95)")
    p.add_argument("--top-k", type=int, help="top-k sampling (default 40)")
    p.add_argument("--repeat-penalty", type=float, help="repeat penalty (default 1.1)")
    p.add_argument("--seed", type=int, help="random seed (default: random)")
    p.add_argument("--threads", type=int, help="CPU threads (default: measured)")
    p.add_argument("--gpu-layers", type=int, help="layers to offload (default: the fit plan's)")
    add_load_settings_arguments(p)
    add_rpc_argument(p)
    p.add_argument("--json", action="store_true", help='print {"reply", "stats"} instead of streaming')
    p.add_argument("--resume", type=int, metavar="ID", help="continue a saved conversation")
    p.add_argument("--no-save", action="store_true", help="do not save the REPL conversation")
    p.add_argument("--list", action="store_true", help="list saved conversations")
    p.add_argument("--delete", type=int, metavar="ID", help="delete a saved conversation")
    p.add_argument("--export", type=int, metavar="ID", help="print a saved conversation as Markdown")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fitchat.chat.history import History

    if args.list or args.delete is not None or args.export is not None:
        with History() as store:
            return _history_command(args, store)
    if args.model is None and args.resume is None:
        raise _usage("name a model: fitchat chat MODEL (a .gguf path, repo:QUANT or 'starter')")
    for name in ("ctx", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise _usage(f"--{name} must be at least 1")
    sampling = _sampling_overrides(args)  # checked by SamplingSettings itself, before any model loads
    if args.gpu_layers is not None and args.gpu_layers < -1:
        raise _usage("--gpu-layers must be -1 (all layers) or 0 or more")
    if args.resume is not None and args.no_save:
        raise _usage("--resume and --no-save cannot be combined: a resumed conversation is saved as it goes")

    prompt = _one_shot_prompt(args)
    history = None if (prompt is not None and args.resume is None) or args.no_save else _open_history(args)
    try:
        conversation = history.get(args.resume) if (history is not None and args.resume is not None) else None
        ref = args.model or (conversation.model_path if conversation else None)
        if not ref:
            raise _usage(f"conversation {args.resume} names no model file; give MODEL")
        model = _resolve(ref)
        if prompt is None:
            print(f"Loading {printable(model.name, 120, one_line=True)}…", file=sys.stderr, flush=True)
        with interrupt_ends_command():
            engine = _load(model, args)
        session = None
        try:
            session = _session(engine, history, model, args, sampling)
            if prompt is not None:
                return _one_shot(session, prompt, args)
            repl = Repl(session, sys.stdout, sys.stderr)
            repl.workers = tuple(args.rpc)
            repl.reload = lambda workers: _load(model, args, rpc=workers)
            return repl.loop()
        finally:
            with interrupt_ends_command():
                (session.engine if session is not None else engine).close()
    finally:
        if history is not None:
            history.close()


def _open_history(args: argparse.Namespace) -> History | None:
    """The history for a REPL; one that cannot be opened costs the saving, not the chat (unless resuming)."""
    from fitchat.chat.history import History
    from fitchat.errors import HistoryError

    try:
        return History()
    except HistoryError as exc:
        if args.resume is not None:
            raise
        warning(f"{exc}; this chat goes on, unsaved")
        return None


def warning(message: str) -> None:
    """A warning on stderr, one line."""
    print(f"fitchat: warning: {printable(message, 500, one_line=True)}", file=sys.stderr, flush=True)


def _usage(message: str) -> Exception:
    from fitchat.errors import FitchatError

    err = FitchatError(message)
    err.exit_code = 2
    return err


def notice(message: str) -> None:
    """Engine notices go to stderr, one line each (they can quote a model's file, so made printable)."""
    print(f"fitchat: {printable(message, 500, one_line=True)}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- history commands


def _history_command(args: argparse.Namespace, history: Any) -> int:
    if args.delete is not None:
        conv = history.get(args.delete)
        history.delete(args.delete)
        print(f"deleted conversation {conv.id} ({printable(conv.title, 80, one_line=True) or 'untitled'})")
        return 0
    if args.export is not None:
        text = history.export_markdown(args.export)
        sys.stdout.write(printable(text) if _is_terminal(sys.stdout) else text)
        return 0
    conversations = history.list_conversations()
    if args.json:
        print(json.dumps([
            {"id": c.id, "title": c.title, "model": c.model, "quant": c.quant, "model_path": c.model_path,
             "messages": c.message_count, "created_at": c.created_at, "updated_at": c.updated_at}
            for c in conversations
        ], indent=2))
        return 0
    if not conversations:
        print("no saved conversations yet; 'fitchat chat MODEL' starts one")
        return 0
    from datetime import datetime

    models = [printable(c.model + (f":{c.quant}" if c.quant and c.quant not in c.model else ""), 60, one_line=True)
              for c in conversations]
    width = min(60, max(5, *(len(m) for m in models)))
    print(f"{'ID':>4}  {'UPDATED':16}  {'MSGS':>4}  {'MODEL':{width}}  TITLE")
    for c, model in zip(conversations, models, strict=True):
        when = datetime.fromtimestamp(c.updated_at).strftime("%Y-%m-%d %H:%M")
        title = printable(c.title, 80, one_line=True)
        print(f"{c.id:>4}  {when:16}  {c.message_count:>4}  {model:{width}}  {title}")
    return 0


# ---------------------------------------------------------------- model and engine


class _Model:
    def __init__(self, path: Path, name: str, quant: str | None) -> None:
        self.path, self.name, self.quant = path, name, quant


def _resolve(ref: str) -> _Model:
    from fitchat.hub.store import resolve_model

    local = resolve_model(ref)
    return _Model(Path(local.path), local.repo or local.file, local.quant)


def _load(model: _Model, args: argparse.Namespace, rpc: Any = None) -> Any:
    from fitchat.llama.planned import engine_moe, plan_load
    from fitchat.llama.process import ProcessEngine

    workers = tuple(args.rpc if rpc is None else rpc)
    plan = plan_load(model.path, model.name, ctx=args.ctx, settings=settings_from_args(args), gpu_layers=args.gpu_layers,
                     moe_cpu_layers=args.cpu_moe, rpc=workers)
    model.quant = model.quant or plan.spec.quant
    # The model runs in its own process: a crash in llama.cpp is one line and exit status 1, not fitchat's end.
    return ProcessEngine.load(
        model.path, plan=plan, n_ctx=args.ctx, n_threads=args.threads, gpu_layers=args.gpu_layers, on_notice=notice,
        moe_cpu_layers=engine_moe(plan, args.cpu_moe),
    )


#: The command-line flag of each sampling setting, for usage errors.
SAMPLING_FLAGS = {
    "temperature": "--temp", "top_p": "--top-p", "top_k": "--top-k", "repeat_penalty": "--repeat-penalty",
    "seed": "--seed", "max_tokens": "--max-tokens", "system_prompt": "--system",
}


def _sampling_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling settings given on the command line, checked by :class:`SamplingSettings` (a usage error
    naming the flag when one is out of range)."""
    from fitchat.llama.engine import InvalidSampling, SamplingSettings

    given = {
        "temperature": args.temp, "top_p": args.top_p, "top_k": args.top_k, "repeat_penalty": args.repeat_penalty,
        "seed": args.seed, "max_tokens": args.max_tokens, "system_prompt": args.system,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    try:
        SamplingSettings(**overrides)
    except InvalidSampling as exc:
        raise _usage(f"{SAMPLING_FLAGS.get(exc.field, exc.field)} {exc.rule}") from None
    return overrides


def _session(engine: Any, history: Any, model: _Model, args: argparse.Namespace,
             overrides: dict[str, Any]) -> Any:
    from fitchat.chat.session import ChatSession
    from fitchat.llama.engine import SamplingSettings

    if history is not None and args.resume is not None:
        return ChatSession.resume(engine, history, args.resume, on_warning=warning, **overrides)
    return ChatSession(engine, history, settings=SamplingSettings(**overrides), model_name=model.name,
                       quant=model.quant, on_warning=warning)


# ---------------------------------------------------------------- streaming with ctrl+c


@contextlib.contextmanager
def interrupt_ends_command() -> Iterator[None]:
    """While this is open, ctrl+c ends fitchat at once (exit status 130, by the signal itself).

    For what cannot be stopped politely (loading or closing a model, a reply already asked to stop):
    the default action is taken by the kernel, so it works even while C code or a runaway Python
    loop holds the interpreter. What is saved stays saved: each history write is its own transaction.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def stream_to(pieces_factory: Any, engine: Any, out: TextIO | None) -> tuple[str, bool]:
    """Run a reply in a worker thread, writing pieces to ``out``; ctrl+c cancels it, a second ends fitchat.

    The main thread only moves pieces from a queue to ``out``, so SIGINT is handled at once even
    while llama.cpp is busy in C code; the handler asks the engine to cancel, and its abort callback
    stops the computation (or the chat template's limits stop the render). From then until the reply
    has stopped, ctrl+c has its default action (:func:`interrupt_ends_command`), so a second one always
    ends the command, whatever the worker is stuck in. Returns (text, interrupted).
    """
    q: queue.Queue[tuple[str, Any]] = queue.Queue()
    interrupted = threading.Event()

    def work() -> None:
        try:
            for piece in pieces_factory():
                q.put(("piece", piece))
            q.put(("done", None))
        except BaseException as exc:  # handed to the main thread
            q.put(("error", exc))

    def on_sigint(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # the next ctrl+c ends the command
        interrupted.set()
        engine.cancel()

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_sigint)
    worker = threading.Thread(target=work, name="fitchat-reply", daemon=True)
    parts: list[str] = []
    clean = out is not None and _is_terminal(out)
    try:
        worker.start()
        while True:
            kind, value = q.get()
            if kind == "piece":
                parts.append(value)
                if out is not None:
                    out.write(printable(value) if clean else value)
                    out.flush()
            elif kind == "error":
                raise value
            else:
                break
    except BaseException:  # a closed pipe, say: stop the reply before waiting for it
        engine.cancel()
        if previous is not None:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        raise
    finally:
        worker.join()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return "".join(parts), interrupted.is_set()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# ---------------------------------------------------------------- one-shot


def _stdin_has_input() -> bool:
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)


def _one_shot_prompt(args: argparse.Namespace) -> str | None:
    """The prompt for one-shot mode: stdin (when not a terminal) then -p; None means the REPL.

    With -p, stdin is read only when it is a pipe or a file, so an inherited idle stdin never blocks.
    """
    interactive = sys.stdin is not None and sys.stdin.isatty()
    piped = None
    if not interactive and sys.stdin is not None and (args.prompt is None or _stdin_has_input()):
        piped = sys.stdin.read()
    if args.prompt is None and not interactive and not (piped and piped.strip()):
        raise _usage("no prompt: give -p PROMPT or pipe one on stdin")
    if args.prompt is None and piped is None:
        return None
    parts = [p.strip("\n") for p in (piped, args.prompt) if p and p.strip()]
    if not parts:
        raise _usage("the prompt is empty")
    return "\n\n".join(parts)


def _one_shot(session: Any, prompt: str, args: argparse.Namespace) -> int:
    from fitchat.llama.process import EngineDied

    out = None if args.json else sys.stdout
    try:
        text, interrupted = stream_to(lambda: session.send(prompt), session.engine, out)
    except EngineDied as exc:
        if out is not None:
            out.write("\n")  # after the reply so far; the error follows on stderr
            out.flush()
        gone = lost_workers(args.rpc)
        if gone:
            raise worker_lost(gone) from exc
        raise
    stats = session.last_stats
    if args.json:
        payload = {"reply": text, "stats": json_stats(stats) if stats else None}
        print(json.dumps(payload, ensure_ascii=False))
    elif text and not text.endswith("\n"):
        sys.stdout.write("\n")
        sys.stdout.flush()
    return 130 if interrupted else 0


def json_stats(stats: Any) -> dict[str, Any]:
    """The ``chat --json`` stats: the figures of :data:`JSON_STATS` and the layers per device."""
    out = {k: getattr(stats, k) for k in JSON_STATS}
    out["devices"] = [{"name": name, "layers": layers} for name, layers in stats.devices]
    return out


def lost_workers(workers: Any) -> list[str]:
    """After the engine died: the workers among ``workers`` that went away with it (probed once)."""
    if not workers:
        return []
    from fitchat.llama.rpc import unreachable

    return unreachable(workers)


def worker_lost(gone: list[str]) -> Exception:
    """The one line for an engine that died because the workers ``gone`` went away."""
    from fitchat.errors import FitchatError
    from fitchat.llama.rpc import lost_message

    return FitchatError(f"{lost_message(gone)} (restart 'fitchat worker' there, or chat without it)")


# ---------------------------------------------------------------- REPL


def format_stats(stats: Any) -> str:
    """One readable line of reply figures."""
    if stats is None:
        return "no reply yet"
    return (
        f"{stats.prompt_tokens} prompt tokens ({stats.cached_tokens} cached) at {stats.prompt_tokens_per_s:.0f} tok/s, "
        f"{stats.completion_tokens} reply tokens at {stats.decode_tokens_per_s:.1f} tok/s, "
        f"TTFT {stats.ttft_s:.2f} s, context {stats.context_used}/{stats.n_ctx}, "
        f"threads {stats.n_threads}/{stats.n_threads_batch}, GPU layers {stats.gpu_layers}"
        + (f", {_experts_words(stats.moe_cpu_layers)}" if stats.moe_cpu_layers else "")
        + (f", {stats.finish_reason}" if stats.finish_reason != "stop" else "")
        + (f", {_layers_words(stats.devices)}" if len(stats.devices) > 1 else "")
    )


def _layers_words(devices: Any) -> str:
    """'layers RPC0[10.0.0.2:50052] 15, CPU 16': the devices holding layers (stats and the banner)."""
    return "layers " + ", ".join(f"{name} {n}" for name, n in devices if n)


def _experts_words(moe_cpu_layers: int) -> str:
    return "MoE experts of all layers in RAM" if moe_cpu_layers < 0 else \
        f"MoE experts of {moe_cpu_layers} layers in RAM"


class Repl:
    """The line REPL: multi-line input, slash commands, ctrl+c stops a reply, ctrl+d leaves."""

    def __init__(self, session: Any, out: TextIO, err: TextIO, read_line: Any = input) -> None:
        self.session = session
        self.out, self.err = out, err
        self.read_line = read_line
        self.workers: tuple[str, ...] = ()  # the --rpc workers the model is split over
        self.reload: Any = None  # reload(workers) -> a new engine, for a reload without a lost worker
        try:
            import readline  # noqa: F401 - line editing and history for input()
        except ImportError:
            pass

    def say(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def banner(self) -> None:
        s, e = self.session, self.session.engine
        name = printable(s.model_name + (f" ({s.quant})" if s.quant and s.quant not in s.model_name else ""), 120,
                         one_line=True)
        where = f"GPU layers {e.gpu_layers}" if e.gpu_layers else "CPU"
        devices = getattr(e, "devices", ())
        if any(name.startswith("RPC") for name, _ in devices):
            where = _layers_words(devices)
        if getattr(e, "moe_cpu_layers", 0):
            where += f", {_experts_words(e.moe_cpu_layers)}"
        self.say(
            f"Chatting with {name} · context {e.n_ctx} · {where} · threads {e.threads.n_threads} · "
            "/help for commands, ctrl+d to leave"
        )
        if s.conversation_id is not None:
            self.say(f"Resumed conversation {s.conversation_id} ({len(s.messages)} messages).")
            if s.unanswered:
                self.say("Its last message has no reply (the previous session ended mid-reply): /regen answers it.")

    def read(self) -> str | None:
        """One message; None at end of input."""
        try:
            line = self.read_line(">>> ")
        except EOFError:
            return None
        if line.lstrip().startswith('"""'):
            body = line.lstrip()[3:]
            lines = []
            while not body.rstrip().endswith('"""'):
                lines.append(body)
                try:
                    body = self.read_line("... ")
                except EOFError:
                    return "\n".join(lines)
            lines.append(body.rstrip()[:-3])
            return "\n".join(lines).strip("\n")
        lines = []
        while line.endswith("\\"):
            lines.append(line[:-1])
            try:
                line = self.read_line("... ")
            except EOFError:
                break
        lines.append(line)
        return "\n".join(lines)

    def loop(self) -> int:
        self.banner()
        while True:
            try:
                text = self.read()
            except KeyboardInterrupt:
                print(file=self.err)
                continue
            if text is None:
                print(file=self.err)
                return 0
            if not text.strip():
                continue
            if text.startswith("/"):
                if self.command(text) == "exit":
                    return 0
                continue
            self.reply(lambda t=text: self.session.send(t))

    def reply(self, factory: Any) -> None:
        from fitchat.errors import FitchatError
        from fitchat.llama.engine import RenderCancelled
        from fitchat.llama.process import EngineDied

        try:
            text, interrupted = stream_to(factory, self.session.engine, self.out)
        except RenderCancelled:
            self.say("(stopped)")
            return
        except EngineDied:
            self.out.write("\n")  # the partial reply is saved; the error ends the command (one line, status 1)
            self.out.flush()
            gone = lost_workers(self.workers)
            if not gone or self.reload is None:
                raise
            self.say(f"fitchat: error: {printable(worker_lost(gone), 500, one_line=True)}")
            self.offer_reload(gone)
            return
        except FitchatError as exc:
            self.say(f"fitchat: error: {printable(exc, 500, one_line=True)}")
            return
        if text and not text.endswith("\n"):
            self.out.write("\n")
        self.out.flush()
        if interrupted:
            self.say("(stopped)")

    def offer_reload(self, gone: list[str]) -> None:
        """After the workers ``gone`` were lost: offer to load the model again on what is left (the conversation
        stays)."""
        from fitchat.errors import FitchatError

        left = tuple(w for w in self.workers if w not in gone)
        where = f"the workers still up ({', '.join(left)}) and this machine" if left else "this machine alone"
        try:
            answer = self.read_line(f"Reload the model on {where}? The conversation is kept. [Y/n] ")
        except (EOFError, KeyboardInterrupt):
            answer = "n"
        if answer.strip().lower() not in ("", "y", "yes"):
            raise FitchatError("not reloaded: the model is gone with its worker; the conversation is saved "
                               "('fitchat chat --list' shows it, --resume ID continues it)")
        try:
            engine = self.reload(left)
        except FitchatError as exc:
            self.say(f"fitchat: error: {printable(exc, 500, one_line=True)}")
            raise
        self.session.engine = engine
        self.workers = left
        self.say(f"Reloaded on {where}; the conversation goes on.")

    def save(self, name: str, *, replace: bool = False) -> None:
        """``/save [FILE]``: write the conversation as Markdown; an existing file needs ``/save! FILE``."""
        from fitchat.chat.history import write_export

        s = self.session
        target = Path(name or f"fitchat-chat-{s.conversation_id or 'unsaved'}.md").expanduser()
        shown = printable(target, 200, one_line=True)
        try:
            write_export(target, s.export_markdown(), replace=replace)
        except FileExistsError:
            self.say(f"{shown} exists: '/save! {shown}' replaces it, or give another name")
        except OSError as exc:
            self.say(f"fitchat: error: cannot write {shown}: {exc.strerror or exc}")
        else:
            self.say(f"saved to {shown}")

    def command(self, text: str) -> str | None:
        name, _, rest = text.partition(" ")
        rest = rest.strip()
        s = self.session
        if name in ("/exit", "/quit", "/bye"):
            return "exit"
        if name in ("/help", "/?"):
            self.say(REPL_HELP)
        elif name == "/system":
            if not rest:
                self.say(f"system prompt: {printable(s.settings.system_prompt or '(none)')}")
            else:
                s.set_system(None if rest == "-" else rest)
                self.say("system prompt removed" if rest == "-" else "system prompt set")
        elif name == "/clear":
            s.clear()
            self.say("new conversation")
        elif name in ("/regen", "/retry"):
            if not s.messages:
                self.say("nothing to regenerate yet")
            else:
                self.reply(s.regenerate)
        elif name in ("/save", "/save!"):
            self.save(rest, replace=name == "/save!")
        elif name == "/stats":
            self.say(format_stats(s.last_stats))
        else:
            self.say(f"unknown command {name}; /help lists them")
        return None

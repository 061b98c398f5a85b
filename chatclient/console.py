"""Where typed lines come from and where printed lines go.

- `PipeConsole`: stdin and stdout are not both a terminal (a pipe, a file, a test): lines are read
  one by one on a thread of their own and printed lines are written as they come.
- `PromptConsole`: a terminal. prompt_toolkit keeps the input line, with its prompt `[room] nick> `,
  at the bottom of the screen and prints incoming lines above it, so they never land in the middle
  of what is being typed. It runs on the main thread: Ctrl-C there raises KeyboardInterrupt, as a
  SIGINT would, and Ctrl-D on an empty line ends the input.

Both are context managers (entered around the whole run) with `feed(on_line)`, `print(line)` and
`stop()` (no more lines are wanted: the connection ended for good); `print` and `stop` may be called
from any thread.
"""

import sys
import threading
from collections.abc import Callable


class PipeConsole:
    def __init__(self, stdin=None, out=None):
        self._stdin = stdin if stdin is not None else sys.stdin
        self._out = out

    def __enter__(self) -> "PipeConsole":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def feed(self, on_line: Callable[[str | None], bool]) -> None:
        """Call `on_line(line)` for each line on a reader thread, then `on_line(None)` at the end of
        input; stop early when it returns False. Returns at once: a pipe that stays open (`tail -f`)
        must not keep the client from ending."""
        def read() -> None:
            for line in self._stdin:
                if not on_line(line.rstrip("\r\n")):
                    return
            on_line(None)

        threading.Thread(target=read, name="stdin", daemon=True).start()

    def print(self, line: str) -> None:
        print(line, file=self._out or sys.stdout, flush=True)

    def stop(self) -> None:
        """Nothing to do: the reader thread is a daemon, and the run ends without waiting for it."""


class PromptConsole:
    def __init__(self, prompt: Callable[[], str]):
        from prompt_toolkit import PromptSession  # only a terminal needs it
        from prompt_toolkit.patch_stdout import patch_stdout

        self._prompt = prompt
        self._session = PromptSession()
        self._patch = patch_stdout()
        self._stopped = False

    def __enter__(self) -> "PromptConsole":
        self._patch.__enter__()  # from here on, printing goes above the input line
        return self

    def __exit__(self, *exc) -> None:
        self._patch.__exit__(*exc)

    def feed(self, on_line: Callable[[str | None], bool]) -> None:
        """Prompt for lines until `on_line` returns False or the input ends (Ctrl-D), then return.
        Raises KeyboardInterrupt on Ctrl-C."""
        while not self._stopped:
            try:
                line = self._session.prompt(self._prompt)
            except EOFError:
                on_line(None)
                return
            if not on_line(line):
                return

    def print(self, line: str) -> None:
        print(line, flush=True)  # sys.stdout is prompt_toolkit's proxy while the console is entered

    def stop(self) -> None:
        """End the prompt as Ctrl-D would, from any thread (the prompt's event loop runs the exit)."""
        self._stopped = True  # between two prompts: no next one
        app = self._session.app
        if app.is_running and app.loop is not None:
            app.loop.call_soon_threadsafe(lambda: app.is_running and app.exit(exception=EOFError()))

"""What a person sees: numbered steps with outcome and duration. Secrets never pass here."""

from __future__ import annotations

import sys
from typing import TextIO


class Reporter:
    """Prints step banners and results; ``quiet`` keeps stdout clean for --json."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.quiet = quiet

    def say(self, text: str = "") -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    def step(
        self, number: int, total: int, name: str, outcome: str, seconds: float, detail: str = ""
    ) -> None:
        tail = f"  {detail}" if detail else ""
        self.say(f"[{number:>2}/{total}] {name:<10} {outcome:<8} {seconds:6.2f} s{tail}")

    def command(self, text: str, when: str | None = None, note: str | None = None) -> None:
        first, *rest = text.splitlines() or [""]
        self.say(f"        $ {first}")
        for more in rest:  # a multi-line script (the probe) stays readable
            self.say(f"          {more}")
        if when:
            self.say(f"          (only when {when})")
        if note:
            self.say(f"          ({note})")

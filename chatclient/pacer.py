"""Pacing our own requests under the server's rate limit (PROTOCOL.md: a token bucket of
`rate_burst` at once and `rate_per_second` sustained, announced in `welcome.limits`)."""

import time


class Pacer:
    """A token bucket a little below the server's rate limit, so our own bursts (a pipe full of
    lines, a reconnect with many rooms) are paced instead of refused with rate_limited."""

    def __init__(self, burst: float, rate: float, clock=time.monotonic):
        self.burst = max(1.0, burst)
        self.rate = rate
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()

    @classmethod
    def for_limits(cls, limits: dict, clock=time.monotonic) -> "Pacer":
        """The server's bucket starts full when it accepts us, a moment before ours starts. Values
        that are not positive numbers (a broken server) fall back to the defaults."""
        def positive(name, default):
            value = limits.get(name)
            ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1e9
            return value if ok else default

        return cls(positive("rate_burst", 20) - 1, positive("rate_per_second", 5.0) * 0.9, clock)

    def delay(self) -> float:
        """Seconds until a request may go out (0 means now)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def take(self) -> None:
        self._tokens -= 1

"""One generous bound for every test that waits on a state.

A bound only exists so that a hung test ends; it is never a speed assertion. The machines
that run the suite are shared and loaded, so a test polls for the state it needs and gives
up only after ``WAIT_S``, well under CI's 90-minute limit for the whole run but far above
what any step takes on an idle machine.
"""

from __future__ import annotations

WAIT_S = 1200.0
WAIT_MS = int(WAIT_S * 1000)  # Playwright counts in milliseconds

"""`nakhon verify`: attack a freshly started platform and report what was lost or let in.

Each scenario is a function `run(root, size) -> Row` in one of the modules
below, registered in `harness.verify.scenarios.SCENARIOS`. `size` is "full"
(the figures the report quotes) or "quick" (the same attack, smaller, as
the test suite runs it on every change).
"""

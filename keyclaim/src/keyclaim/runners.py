"""The library's runners, for a program that adds its own start to them; a subclass keeps them.

`install` and `use_runner` select them by class name; a program that needs its own step as a
runner starts (the sample stores its runner's pid and says one line) derives from one and
selects its subclass by name instead (`custom_config(runner_cls=...)`): it still drains on a
stop and joins the fleet. Importing this imports pynenc.
"""

from keyclaim.drain import DrainingThreadRunner
from keyclaim.wake import WakeRunner

__all__ = ["DrainingThreadRunner", "WakeRunner"]

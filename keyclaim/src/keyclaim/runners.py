"""The library's runners, for a program that adds its own start to them; a subclass keeps them.

A program that needs its own step as a runner starts derives from one and selects its subclass
by name (`custom_config(runner_cls=...)`): it still drains and joins the fleet. Imports pynenc.
"""

from keyclaim.drain import DrainingThreadRunner
from keyclaim.wake import WakeRunner

__all__ = ["DrainingThreadRunner", "WakeRunner"]

"""What sample.py and enqueue.py run on: one module per job, listed in README "The files"."""

import sys

# `import httpx` imports its command line's click, rich and pygments too: 0.25 s of CPU in each
# process that calls the provider, as three boot at once (docs/speed.md). Nothing here runs
# httpx's command line; with this, httpx defines one that says it cannot run.
sys.modules.setdefault("httpx._main", None)  # type: ignore[assignment]
# FastAPI imports pydantic.v1 at the provider's first route, to refuse v1 models: 0.07 s of CPU as
# it boots. Its routes use none; with this, each is not one.
sys.modules.setdefault("pydantic.v1", None)  # type: ignore[assignment]

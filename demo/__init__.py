"""What sample.py and enqueue.py run on: the harness of the article's four files.

One module per job: the settings and the flags, the stack of child processes, the workers,
the scenarios, how a run goes, is judged and is shown. README "The files". The claim is a
package of its own (keyclaim/); the tools that measure the demo live beside it (tools/).
"""

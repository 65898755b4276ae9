"""Everything that serves the article's four files, one module per job: the settings and the
flags, the stack of child processes, the scenarios and how a run is shown and judged, the
benchmark, and the classes installed through pynenc's configuration. README "The files".
"""

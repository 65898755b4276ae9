"""Everything that serves the article's four files: settings, scenarios, the lane chart,
child processes, a private Redis, and the classes installed through pynenc's configuration.
"""

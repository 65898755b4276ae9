"""What sample.py and enqueue.py run on: one module per job, listed in README "The files"."""

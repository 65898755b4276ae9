"""The stand-in provider's own parts, beside api_server.py: its rules, fences, pause, client."""

# What the provider takes as an account id or an op in its URL path: no spaces, no control
# characters. stand_in/client.py refuses anything else before it calls.
NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"

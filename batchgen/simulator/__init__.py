"""The local stand-in for Segmind's API: the server in ``server.py``, its faults in ``faults.py``.

Nothing is imported here, so that the CLI can name the simulator's default key and fault kinds in its help without
loading aiohttp and PyAV (import ``server`` or ``faults`` for the rest).
"""

DEFAULT_KEY = "sim-key"  # the key the simulator accepts unless told otherwise

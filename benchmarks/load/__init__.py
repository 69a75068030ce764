"""The serving load benchmark of issue 5: `python -m benchmarks.load` (see `__main__` for how).

It measures, on this machine and in one run, what the HTTP service sustains and how fast it
answers, each figure beside two ceilings taken in the same run: the HTTP stack's (a minimal
Litestar app under the same ASGI server) and the store's (raw RediSearch KNN queries through
redis-py). The load comes from `wrk`, a C program, never from a Python client on the cores the
service uses; the CPU each process used during each run is read from /proc.
"""

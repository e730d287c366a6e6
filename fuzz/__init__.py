"""What tests: case generation, the float64 truth, tolerances, comparison, the fuzzer and its reports."""
import time as _time

STARTED = _time.monotonic()    # a run's budget counts from here: start-up and imports included

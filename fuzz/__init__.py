"""What tests: case generation, the float64 truth, tolerances, comparison, the fuzzer and its reports."""

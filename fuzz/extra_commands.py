"""Subcommands built on the fuzzer: mutants (kill table) and onboard (conformance report card)."""
COMMANDS = {}


def add_parsers(sub, common):
    pass

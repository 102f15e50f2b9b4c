"""The ``tensorprog`` command: argv, dispatch and exit codes, one module per command."""

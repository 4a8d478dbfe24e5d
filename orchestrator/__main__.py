"""`python -m orchestrator` is the `scenario-runner` command."""

from orchestrator.cli import main

main()

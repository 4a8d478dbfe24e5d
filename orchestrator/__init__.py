"""The coordinator.

CLI, scenario loader, cluster (agent handles, launchers), bus, event log, executor, assertions,
sampler and reports. It never runs agent code.
"""

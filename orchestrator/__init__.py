"""The coordinator.

CLI, scenario loader, supervisor and launchers, bus, event log, executor, assertions,
sampler and reports. It never runs agent code.
"""

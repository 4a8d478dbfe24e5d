"""The scenario format: its models (`spec`, `steps`, `assertions`, `schema`), the loader that
turns a YAML file into them with every problem located, and the reference checks."""

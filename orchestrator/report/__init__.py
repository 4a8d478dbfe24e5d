"""Reports: the report.json models, junit.xml, and the console."""

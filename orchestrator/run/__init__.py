"""A run: its composition root (`runner`), the step executor, the verdict, the coordinator's
self-measurement (`loopwatch`), and invocations of many runs (`session`)."""

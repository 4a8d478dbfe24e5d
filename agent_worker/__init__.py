"""One agent process: transport thread, runtime, memory store, message handler."""
